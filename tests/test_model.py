"""Model behaviour: causality, packing isolation, named sizes, parameter naming."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import objectives
from lmjax.models import layers
from lmjax.models.transformer import SIZES, ModelConfig, Transformer

SMALL = dict(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64, max_len=64)


def _init(cfg, length=16):
  model = Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))['params'])
  return model, params


def _tokens(batch, length, vocab=97, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


@pytest.mark.parametrize('positions', ['rope', 'learned'])
def test_decoder_is_causal(positions):
  """Perturbing token j never changes logits at positions < j; it does change positions >= j."""
  model, params = _init(ModelConfig(**SMALL, positions=positions))
  tokens = _tokens(1, 16)
  base = model.apply({'params': params}, tokens)
  for j in (0, 5, 15):
    changed = tokens.at[0, j].set((tokens[0, j] + 1) % 97)
    diff = jnp.abs(model.apply({'params': params}, changed) - base).max(axis=-1)[0]
    assert float(diff[:j].max(initial=0.0)) == 0.0, f'position < {j} saw token {j}'
    assert float(diff[j:].min()) > 0.0, f'positions >= {j} ignored token {j}'


def test_decoder_causal_by_gradient():
  """d logits[i] / d input embedding j is zero for every j > i (and non-zero on the diagonal)."""
  cfg = ModelConfig(**SMALL, tie_embeddings=False)  # untied: the table is only used as input
  model, params = _init(cfg)
  length = 12
  tokens = jnp.arange(10, 10 + length, dtype=jnp.int32)[None]  # distinct: row t <-> position t-10

  def out_L(table_VD):
    return model.apply({'params': dict(params, token_embed=table_VD)}, tokens)[0].sum(-1)
  jac_LVD = jax.jacrev(out_L)(params['token_embed'])
  dep_LL = np.asarray(jnp.abs(jac_LVD[:, 10:10 + length]).sum(-1))  # [output pos, input pos]
  assert np.all(np.triu(dep_LL, k=1) == 0), 'an output depends on a later input'
  assert np.all(np.diag(dep_LL) > 0)


def test_no_attention_across_packed_segments():
  """Two documents packed in one row give the same logits as each run alone."""
  model, params = _init(ModelConfig(**SMALL))
  a, b = _tokens(1, 7, seed=1), _tokens(1, 9, seed=2)
  packed = jnp.concatenate([a, b], axis=1)
  segs = jnp.asarray([[1] * 7 + [2] * 9], jnp.int32)
  pos = jnp.asarray([list(range(7)) + list(range(9))], jnp.int32)
  out = model.apply({'params': params}, packed, pos, segs)
  alone_a = model.apply({'params': params}, a)
  alone_b = model.apply({'params': params}, b)
  np.testing.assert_allclose(out[:, :7], alone_a, atol=1e-5)
  np.testing.assert_allclose(out[:, 7:], alone_b, atol=1e-5)
  # And changing document a never changes document b's outputs.
  out2 = model.apply({'params': params}, packed.at[0, 3].set((packed[0, 3] + 1) % 97), pos, segs)
  np.testing.assert_array_equal(out2[:, 7:], out[:, 7:])


def test_encoder_is_bidirectional():
  model, params = _init(ModelConfig(**SMALL, causal=False))
  tokens = _tokens(1, 16)
  base = model.apply({'params': params}, tokens)
  changed = model.apply({'params': params}, tokens.at[0, 15].set((tokens[0, 15] + 1) % 97))
  assert float(jnp.abs(changed - base)[0, 0].max()) > 0.0


@pytest.mark.parametrize('name', sorted(SIZES))
def test_eval_shape_every_named_size(name):
  layers, dim, heads, mlp = SIZES[name]
  cfg = ModelConfig(vocab_size=50257, num_layers=layers, embed_dim=dim, num_heads=heads, mlp_dim=mlp,
                    max_len=1024)
  model = Transformer(cfg)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params']))
  assert n == cfg.num_params()
  assert shapes['params']['token_embed'].shape == (50257, dim)


def test_gpt2_parameter_count():
  """The GPT-2 architecture options at 'gpt2' dims give the published 124M parameters."""
  layers, dim, heads, mlp = SIZES['gpt2']
  cfg = ModelConfig(vocab_size=50257, num_layers=layers, embed_dim=dim, num_heads=heads, mlp_dim=mlp,
                    max_len=1024, positions='learned', norm='layernorm', use_bias=True)
  assert cfg.num_params() == 124_439_808


def test_layernorm_without_bias_matches_nanogpt_count():
  """norm_bias=False with use_bias=False is nanoGPT's bias=False model: 804,096 parameters at its CPU
  config (torch: sum(p.numel()) of GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4,
  n_embd=128, bias=False)), wte tied to lm_head), and no LayerNorm has a bias leaf."""
  cfg = ModelConfig(vocab_size=65, num_layers=4, embed_dim=128, num_heads=4, mlp_dim=512, max_len=64,
                    positions='learned', norm='layernorm', norm_bias=False, use_bias=False)
  params = nn.meta.unbox(jax.eval_shape(
      lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))['params']
  names = ['/'.join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert not [n for n in names if n.endswith('bias')]
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == cfg.num_params() == 804_096
  assert ModelConfig(**{**dataclasses.asdict(cfg), 'norm_bias': True}).num_params() == 804_096 + 9 * 128
  # configs/nanogpt.py:cpu is that model (with nanoGPT's 65-character vocabulary, eps and exact GELU).
  from configs import nanogpt  # pylint: disable=g-import-not-at-top
  assert (ModelConfig(vocab_size=65, **nanogpt.get_config('cpu').model.to_dict())
          == dataclasses.replace(cfg, norm_eps=1e-5, activation='gelu_exact'))


def test_bert_base_encoder_shapes_and_count():
  """configs/bert.py:base as an encoder: eval_shape only, and BERT-base's 110M parameters."""
  layers, dim, heads, mlp = SIZES['gpt2']
  cfg = ModelConfig(vocab_size=30522, num_layers=layers, embed_dim=dim, num_heads=heads, mlp_dim=mlp,
                    max_len=512, positions='learned', norm='layernorm', use_bias=True, causal=False,
                    mlm_head=True, type_vocab_size=2, activation='gelu_exact')
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params']))
  assert n == cfg.num_params()
  # Hugging Face's BertForMaskedLM (no pooler) has 109,514,298. Pre-norm moves BERT's embedding
  # LayerNorm to the end of the stack (final_norm): same count.
  assert n == 109_514_298


@pytest.mark.parametrize('mlm', [False, True])
def test_every_param_has_logical_names(mlm):
  cfg = ModelConfig(**SMALL, use_bias=True, norm='layernorm', positions='learned', tie_embeddings=False,
                    activation='swiglu', causal=not mlm, mlm_head=mlm, type_vocab_size=2 if mlm else 0)
  boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  leaves = jax.tree.leaves(boxed['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == len(leaf.value.shape)


def test_bf16_compute_keeps_f32_params_and_logits():
  cfg = ModelConfig(**SMALL, dtype='bfloat16')
  model, params = _init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model.apply({'params': params}, _tokens(2, 8))
  assert logits.dtype == jnp.float32
  ref = Transformer(ModelConfig(**SMALL)).apply({'params': params}, _tokens(2, 8))
  np.testing.assert_allclose(logits, ref, atol=0.1)


def test_bad_model_config_is_one_line_error():
  with pytest.raises(ValueError, match='embed_dim=30 must be divisible by num_heads=4'):
    ModelConfig(**dict(SMALL, embed_dim=30))


# Speed work (docs/perf_notes.md): each faster path computes what the plain one does.

def test_flat_matmul_is_the_einsum():
  rng = np.random.default_rng(0)
  for equation, x_shape, k_shape in [('BLD,DHK->BLHK', (2, 5, 8), (8, 2, 4)), ('BLHK,HKD->BLD', (2, 5, 2, 4), (2, 4, 8)),
                                     ('BLD,DF->BLF', (2, 5, 8), (8, 16))]:
    x, kernel = rng.normal(size=x_shape).astype(np.float32), rng.normal(size=k_shape).astype(np.float32)
    np.testing.assert_allclose(layers._flat_matmul(equation, x, kernel), np.einsum(equation, x, kernel),
                               rtol=1e-5, atol=1e-5)
    # Its gradients too (on CPU the weight gradient is a custom backward pass: layers._cpu_matmul).
    cotangent = rng.normal(size=np.einsum(equation, x, kernel).shape).astype(np.float32)
    def pullback(f):
      return jax.vjp(f, x, kernel)[1](cotangent)
    got = jax.jit(lambda: pullback(functools.partial(layers._flat_matmul, equation)))()
    want = pullback(functools.partial(jnp.einsum, equation))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), got, want)


def _dot_dtypes(compiled_text):
  """(lhs, rhs, result) element types of every dot in compiled HLO text (instruction names are module-unique)."""
  types = dict(re.findall(r'%?([\w.\-]+) = (\w+)\[', compiled_text))
  types.update(re.findall(r'([\w.\-]+): (\w+)\[', compiled_text))  # fused computations' parameters
  return [(types[a], types[b], out)
          for out, a, b in re.findall(r'= (\w+)\[[^\]]*\]\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\)', compiled_text)]


def test_cpu_bf16_matmuls_accumulate_in_f32():
  # On CPU, bf16 dots ask for f32 results (layers._cpu_dot: YNNPACK's bf16 GEMM, not XLA's generic bf16 dot),
  # forward and backward, on bf16 operands that XLA does not upcast to f32 (layers._transposed_copy), and hand
  # back bf16 as before.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16)
  f = functools.partial(layers._flat_matmul, 'BLD,DF->BLF')
  loss = lambda x, k: f(x, k).astype(jnp.float32).sum()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
  assert _dot_dtypes(compiled) == [('bf16', 'bf16', 'f32')] * 3, compiled
  y = f(x, kernel)
  assert y.dtype == jnp.bfloat16
  want = np.einsum('BLD,DF->BLF', np.asarray(x, np.float32), np.asarray(kernel, np.float32))
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=1e-2, atol=1e-2)
  dx, dk = jax.grad(loss, argnums=(0, 1))(x, kernel)
  assert dx.dtype == dk.dtype == jnp.bfloat16


def test_cpu_bf16_attention_dots_stay_bf16_and_match_f32():
  # layers._attention_16bit: the scores, probabilities x values and the four backward dots, on bf16 operands
  # XLA does not upcast (row-major [M, K] x [K, N]), with f32 results; values and gradients as f32 attention's
  # up to bf16 rounding, packed rows included.
  batch, length, heads, dim, block = 2, 24, 2, 8, 16
  q, k, v = (jax.random.normal(key, (batch, length, heads, dim)) for key in jax.random.split(jax.random.key(1), 3))
  segments = jnp.asarray([[1] * 10 + [2] * 11 + [0] * 3, [1] * 24], jnp.int32)
  mask = layers.attention_mask(segments, causal=True)
  weights = jnp.cos(jnp.arange(dim))

  def loss(attend, dtype, q, k, v):
    return (attend(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32) * weights).sum()
  blocked = lambda q, k, v: layers.causal_attention_in_blocks(q, k, v, mask, block)
  full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')
  grad16 = jax.jit(jax.value_and_grad(functools.partial(loss, blocked, jnp.bfloat16), argnums=(0, 1, 2)))
  # two query blocks, the second's keys twice the first's: 2 x 6 dots
  assert _dot_dtypes(grad16.lower(q, k, v).compile().as_text()) == [('bf16', 'bf16', 'f32')] * 12
  y16 = jax.jit(blocked)(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), full(q, k, v), atol=2e-2)
  (value16, got), (value, want) = grad16(q, k, v), jax.value_and_grad(
      functools.partial(loss, full, jnp.float32), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(value16, value, rtol=1e-2)
  for g16, g in zip(got, want):
    np.testing.assert_allclose(g16, g, atol=0.01 * float(jnp.abs(g).max()) + 1e-2)


def test_exact_gelu_matches_jax():
  x = jnp.linspace(-8, 8, 1001)
  np.testing.assert_allclose(layers.gelu(x, approximate=False), jax.nn.gelu(x, approximate=False), atol=2e-6)
  grad = jax.vmap(jax.grad(lambda v: layers.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=2e-6)


@pytest.mark.parametrize('approximate', [False, True])
def test_bf16_gelu_computes_in_f32(approximate):
  # layers.gelu upcasts 16-bit inputs (XLA:CPU's bf16 erf/exp ran 2.8x slower), then rounds back to bf16
  x = jnp.linspace(-6, 6, 2001).astype(jnp.bfloat16)
  f = functools.partial(layers.gelu, approximate=approximate)
  lowered = jax.jit(jax.grad(lambda x: f(x).astype(jnp.float32).sum())).lower(x).as_text()
  assert re.search(r'(erf|tanh).*tensor<2001xf32>', lowered) and not re.search(r'(erf|tanh).*xbf16>', lowered)
  y = f(x)
  assert y.dtype == jnp.bfloat16
  want = jax.nn.gelu(x.astype(jnp.float32), approximate=approximate)
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2 ** -8, atol=1e-6)


@pytest.mark.parametrize('block', [4, 7, 64])
def test_causal_attention_in_blocks_matches_full_attention(block):
  """Skipped key blocks are ones the causal mask zeroes: same outputs and gradients, packed rows included."""
  batch, length, heads, dim = 2, 24, 2, 8
  q, k, v = (jax.random.normal(key, (batch, length, heads, dim)) for key in jax.random.split(jax.random.key(0), 3))
  segments = jnp.asarray([[1] * 10 + [2] * 11 + [0] * 3, [1] * 24], jnp.int32)
  mask = layers.attention_mask(segments, causal=True)

  def loss(attend, q, k, v):
    return (attend(q, k, v) * jnp.arange(dim)).sum()
  full = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')
  blocked = lambda q, k, v: layers.causal_attention_in_blocks(q, k, v, mask, block)
  np.testing.assert_allclose(jax.jit(blocked)(q, k, v), full(q, k, v), atol=1e-6)
  grad = lambda attend: jax.jit(jax.grad(functools.partial(loss, attend), argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grad(blocked), grad(full)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_output_head_on_gathered_states_gives_the_same_logits():
  cfg = ModelConfig(**SMALL, causal=False, mlm_head=True, type_vocab_size=2)
  model, params = _init(cfg)
  tokens = _tokens(2, 16)
  logits = model.apply({'params': params}, tokens)
  hidden = model.apply({'params': params}, tokens, hidden_only=True)
  index = jnp.asarray([[0, 5, 15], [3, 3, 9]])
  head = model.apply({'params': params}, None, hidden_BMD=jnp.take_along_axis(hidden, index[..., None], axis=1))
  np.testing.assert_allclose(head, jnp.take_along_axis(logits, index[..., None], axis=1), atol=1e-5)


@pytest.mark.parametrize('capacity', [16, 4])  # 4: rows select about 9 of 32, so they overflow into the second pass
def test_masked_lm_loss_at_selected_positions_equals_the_full_loss(capacity, monkeypatch):
  cfg = ModelConfig(**SMALL, causal=False, mlm_head=True)
  model, params = _init(cfg)
  tokens = np.asarray(_tokens(4, 32, seed=3))
  batch = {'tokens': tokens, 'segment_ids': np.ones_like(tokens), 'positions': np.tile(np.arange(32), (4, 1))}
  masking = dict(vocab_size=97, mask_id=4, special_ids_S=(0, 2, 3, 4), mask_rate=0.3)
  monkeypatch.setattr(objectives, 'predict_capacity', lambda length, rate: capacity)

  def loss(selected_only):
    fn = lambda p: objectives.masked_lm_loss(model.apply, p, batch, jax.random.key(1), train=True, masking=masking,
                                             selected_only=selected_only)
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
  (value, metrics), grads = loss(True)
  (want_value, want_metrics), want_grads = loss(False)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  assert float(metrics['loss'][1]) == float(want_metrics['loss'][1]) > 0  # every selected token counted
  assert float(metrics['accuracy'][0]) == float(want_metrics['accuracy'][0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, want_grads)


def test_post_norm_block_with_embedding_norm():
  """BERT's layout (norm_position='post', embed_norm): no final norm, an embedding norm, exact counts."""
  cfg = ModelConfig(**SMALL, causal=False, mlm_head=True, norm='layernorm', use_bias=True, positions='learned',
                    type_vocab_size=2, norm_position='post', embed_norm=True)
  model, params = _init(cfg)
  assert 'final_norm' not in params and 'embed_norm' in params
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  assert boxed['params']['embed_norm']['layernorm']['scale'].names == ('embed',)  # sharded like every norm
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  tokens = _tokens(2, 16)
  # hidden_only returns the last block's output (post-norm has no final norm), which the head consumes.
  hidden = model.apply({'params': params}, tokens, hidden_only=True)
  np.testing.assert_allclose(model.apply({'params': params}, None, hidden_BMD=hidden),
                             model.apply({'params': params}, tokens), atol=1e-5)
  _, state = model.apply({'params': params}, tokens, hidden_only=True, capture_intermediates=True)
  np.testing.assert_array_equal(hidden, state['intermediates'][f'block_{cfg.num_layers - 1}']['__call__'][0])

  layers_, dim, heads, mlp = SIZES['gpt2']
  bert_base = ModelConfig(vocab_size=30522, num_layers=layers_, embed_dim=dim, num_heads=heads, mlp_dim=mlp,
                          max_len=512, positions='learned', norm='layernorm', use_bias=True, causal=False,
                          mlm_head=True, type_vocab_size=2, activation='gelu_exact', norm_position='post',
                          embed_norm=True)
  assert bert_base.num_params() == 109_514_298  # Hugging Face's BertForMaskedLM, no pooler
  assert bert_base.matmul_weights() == ModelConfig(**{**bert_base.__dict__, 'norm_position': 'pre',
                                                      'embed_norm': False}).matmul_weights()
  with pytest.raises(ValueError, match=r"^model: norm_position='sandwich': use 'pre' or 'post'$"):
    ModelConfig(**SMALL, norm_position='sandwich')
