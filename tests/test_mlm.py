"""The encoder and the masked-LM objective: attention pattern, masking statistics, loss positions."""

import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import objectives
from lmjax.models import layers, transformer
from lmjax.models.transformer import ModelConfig, Transformer

V = 1000
SPECIAL = (0, 2, 3, 4)  # pad, cls/bos, sep/eos, mask
MASKING = dict(vocab_size=V, mask_id=4, special_ids_S=SPECIAL)


def _model(causal, **kw):
  cfg = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, causal=causal,
                    mlm_head=not causal, **kw)
  model = Transformer(cfg)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))['params']


def _outputs_changed(model, params, tokens, segments, position):
  """Which output positions change when the token at ``position`` changes."""
  other = tokens.copy()
  other[0, position] = (other[0, position] + 7) % 64
  a = model.apply({'params': params}, tokens, None, segments)
  b = model.apply({'params': params}, other, None, segments)
  return np.abs(np.asarray(a - b)).max(axis=-1)[0] > 1e-6


def test_encoder_is_bidirectional_within_segments_only():
  model, params = _model(causal=False, type_vocab_size=2)
  tokens = np.arange(10, 22, dtype=np.int32)[None]
  segments = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]], np.int32)
  changed = _outputs_changed(model, params, tokens, segments, position=5)
  assert changed[:6].all()             # every token of segment 1 sees its last token (incl. earlier ones)
  assert not changed[6:10].any()       # segment 2 does not
  changed = _outputs_changed(model, params, tokens, segments, position=6)
  assert changed[6:10].all() and not changed[:6].any()
  changed = _outputs_changed(model, params, tokens, segments, position=11)  # padding
  assert not changed[:10].any()


def test_decoder_with_same_blocks_is_causal():
  model, params = _model(causal=True)
  tokens = np.arange(10, 22, dtype=np.int32)[None]
  changed = _outputs_changed(model, params, tokens, np.ones_like(tokens), position=5)
  assert not changed[:5].any() and changed[5:].all()


def test_decoder_and_encoder_share_the_block_code():
  """Same parameters (the MLM head aside), and with one layer the last position computes the same thing."""
  cfg = dict(vocab_size=64, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64)
  dec, enc = Transformer(ModelConfig(causal=True, **cfg)), Transformer(ModelConfig(causal=False, **cfg))
  tokens = jnp.arange(10, 22, dtype=jnp.int32)[None]
  params = dec.init(jax.random.key(0), tokens)['params']
  assert jax.tree.structure(params) == jax.tree.structure(enc.init(jax.random.key(0), tokens)['params'])
  # The last token attends to everything either way: identical logits prove identical block code.
  np.testing.assert_allclose(dec.apply({'params': params}, tokens)[0, -1],
                             enc.apply({'params': params}, tokens)[0, -1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(dec.apply({'params': params}, tokens)[0, 0], enc.apply({'params': params}, tokens)[0, 0])
  # One block class, instantiated in one place.
  blocks = [n for n in ast.walk(ast.parse(inspect.getsource(layers))) if isinstance(n, ast.ClassDef)]
  assert [b.name for b in blocks].count('Block') == 1
  assert inspect.getsource(transformer).count('layers.Block') == 1  # decoder and encoder alike


def test_mlm_head_params_and_count():
  model, params = _model(causal=False, type_vocab_size=2)
  assert {'mlm_head', 'output_bias', 'type_embed'} <= set(params)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == model.config.num_params()


def _batch(rng, batch=256, length=256):
  """Random packed rows: documents [bos] ... [eos] with padding at the end of every row."""
  tokens = rng.integers(5, V, (batch, length)).astype(np.int32)
  segments = np.zeros((batch, length), np.int32)
  for b in range(batch):
    pos, seg = 0, 1
    end = length - rng.integers(0, 40)
    while pos < end:
      n = min(int(rng.integers(5, 80)), end - pos)
      segments[b, pos:pos + n] = seg
      tokens[b, pos], tokens[b, pos + n - 1] = 2, 3
      pos, seg = pos + n, seg + 1
    tokens[b, end:] = 0
  return tokens, segments


def test_masking_statistics():
  tokens, segments = _batch(np.random.default_rng(0))
  inputs, targets, selected = map(np.asarray, objectives.mask_tokens(
      jax.random.key(1), jnp.asarray(tokens), jnp.asarray(segments), **MASKING))
  eligible = (segments != 0) & ~np.isin(tokens, SPECIAL)
  np.testing.assert_array_equal(targets, tokens)
  assert not selected[~eligible].any()                       # specials and padding never selected ...
  np.testing.assert_array_equal(inputs[~selected], tokens[~selected])  # ... and nothing else is changed
  assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005
  n = selected.sum()
  as_mask = (inputs[selected] == 4).sum() / n
  unchanged = (inputs[selected] == tokens[selected]).sum() / n
  random = 1 - as_mask - unchanged
  assert abs(as_mask - 0.8) < 0.01 and abs(random - 0.1) < 0.01 and abs(unchanged - 0.1) < 0.01
  replaced = inputs[selected & (inputs != 4) & (inputs != tokens)]
  assert not np.isin(replaced, SPECIAL).any() and replaced.max() < V


def test_masking_rate_is_configurable():
  tokens, segments = _batch(np.random.default_rng(1), batch=64)
  _, _, selected = objectives.mask_tokens(jax.random.key(0), tokens, segments, **MASKING, mask_rate=0.4,
                                          mask_token_prob=1.0, random_token_prob=0.0)
  eligible = (segments != 0) & ~np.isin(tokens, SPECIAL)
  assert abs(np.asarray(selected).sum() / eligible.sum() - 0.4) < 0.01


def test_whole_word_masking_selects_whole_words():
  rng = np.random.default_rng(2)
  tokens, segments = _batch(rng, batch=64)
  word_starts = rng.random(V) < 0.5
  word_starts[list(SPECIAL)] = True
  _, _, selected = objectives.mask_tokens(jax.random.key(3), jnp.asarray(tokens), jnp.asarray(segments),
                                          **MASKING, word_starts_V=word_starts)
  selected = np.asarray(selected)
  eligible = (segments != 0) & ~np.isin(tokens, SPECIAL)
  words, rate = 0, []
  for b in range(tokens.shape[0]):
    start = 0
    for i in range(1, tokens.shape[1] + 1):
      if i == tokens.shape[1] or word_starts[tokens[b, i]] or segments[b, i] != segments[b, i - 1]:
        piece = selected[b, start:i][eligible[b, start:i]]
        if piece.size:
          assert piece.all() or not piece.any(), (b, start, i)  # all pieces of a word, or none
          words += 1
          rate.append(piece[0])
        start = i
  assert words > 1000 and abs(np.mean(rate) - 0.15) < 0.02
  assert not selected[~eligible].any()


def test_masks_depend_only_on_the_rng():
  tokens, segments = _batch(np.random.default_rng(0), batch=8)
  key = jax.random.key(0)
  a = objectives.mask_tokens(jax.random.fold_in(key, 5), tokens, segments, **MASKING)
  b = objectives.mask_tokens(jax.random.fold_in(key, 5), tokens, segments, **MASKING)
  c = objectives.mask_tokens(jax.random.fold_in(key, 6), tokens, segments, **MASKING)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert (np.asarray(a[2]) != np.asarray(c[2])).any()


def test_loss_sees_masked_positions_only():
  tokens, segments = _batch(np.random.default_rng(0), batch=4, length=64)
  batch = {'tokens': tokens, 'segment_ids': segments, 'positions': np.zeros_like(tokens)}
  seen = {}

  def apply_fn(variables, inputs_BL, *args, **kwargs):  # "model" whose logits are its parameters
    seen['inputs'] = inputs_BL
    return variables['params']['logits'] + 0.0 * inputs_BL[..., None]

  logits = jax.random.normal(jax.random.key(0), tokens.shape + (V,))
  rng = jax.random.key(7)
  loss = lambda p: objectives.masked_lm_loss(apply_fn, p, batch, rng, train=True, masking=MASKING)
  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)({'logits': logits})
  _, _, selected = objectives.mask_tokens(jax.random.split(rng)[0], tokens, segments, **MASKING)
  touched = np.abs(np.asarray(grads['logits'])).max(-1) > 0
  np.testing.assert_array_equal(touched, np.asarray(selected))
  assert metrics['loss'][1] == np.asarray(selected).sum() > 0
  # The model saw mask tokens, and the loss compares against the original tokens.
  assert (np.asarray(seen['inputs'])[np.asarray(selected)] == 4).mean() > 0.6
  logp = jax.nn.log_softmax(logits)
  expected = -np.take_along_axis(np.asarray(logp), tokens[..., None], -1)[..., 0][np.asarray(selected)].mean()
  np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize('causal', [True, False])
def test_flops_per_token_counts_attention(causal):
  """GPT-2 124M shapes: 6 FLOPs per matmul weight, plus 12 * layers * D per attended key (causal: (L+1)/2)."""
  cfg = ModelConfig(vocab_size=50304, num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072, causal=causal)
  weights = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50304 * 768
  attention = 12 * 12 * 768 * (1025 / 2 if causal else 1024)
  assert cfg.flops_per_token(1024) == 6 * weights + attention
