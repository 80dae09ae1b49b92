"""Sharding on 8 fake CPU devices: meshes give the same training as one device; golden layouts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmjax import objectives, optim, sharding, steps
from lmjax import state as state_lib
from lmjax.models.transformer import ModelConfig, Transformer

VOCAB = 128
LEARNING_RATE = 3e-3  # _tx's peak
MASKING = dict(vocab_size=VOCAB, mask_id=4, special_ids_S=(0, 2, 3, 4))


def _model(objective='clm', **kw):
  mlm = objective == 'mlm'
  cfg = dict(vocab_size=VOCAB, num_layers=2, embed_dim=64, num_heads=8, mlp_dim=128, max_len=64,
             causal=not mlm, mlm_head=mlm, use_bias=True, norm='layernorm')
  cfg.update(kw)
  return Transformer(ModelConfig(**cfg))


def _tx():
  return optim.make_optimizer(schedule_steps=10, learning_rate=LEARNING_RATE, warmup_steps=2, min_lr_ratio=0.1, b1=0.9,
                              b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, decay_embeddings=False)[0]


def _batches(objective, n=5, batch=8):
  rng = np.random.default_rng(0)
  length = 17 if objective == 'clm' else 16
  out = []
  for _ in range(n):
    tokens = rng.integers(5, VOCAB, (batch, length)).astype(np.int32)
    segments = np.where(np.arange(length) < length // 2, 1, 2)[None].repeat(batch, 0).astype(np.int32)
    positions = np.where(segments == 1, np.arange(length), np.arange(length) - length // 2).astype(np.int32)
    out.append({'tokens': tokens, 'segment_ids': segments, 'positions': positions})
  return out


def _train(mesh, objective, steps_=5, model=None, **step_kw):
  """Five jitted steps with the shardings train.py uses; returns (losses, params on host, all-reduces in the
  compiled step)."""
  model = model or _model(objective)
  tx = _tx()
  example = jnp.zeros((1, 16), jnp.int32)
  state, _, shardings = state_lib.create(model, tx, example, mesh, jax.random.key(0))
  loss_fn = functools.partial(objectives.loss_fn(objective, MASKING), model.apply)
  step = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx, **step_kw),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  losses = []
  batches = [sharding.host_to_global(b, mesh) for b in _batches(objective, steps_)]
  with sharding.activate(mesh):
    compiled = step.lower(state, batches[0], jax.random.key(1)).compile()
    for batch in batches:
      state, metrics = compiled(state, batch, jax.random.key(1))
      losses.append(float(metrics['loss'][0] / metrics['loss'][1]))
  return losses, jax.device_get(state.params), compiled.as_text().count(' all-reduce(')


def _assert_same_params(params, want_params):
  """Parameters after the same training: equal to float rounding, leaf by leaf.

  The gradients agree to ~1e-6 of each leaf's largest (a different summation order
  per mesh), but Adam divides each element's update by its own gradient's size, so an
  element whose gradient is near zero turns that rounding into up to a few 1e-5 of
  difference (seen once: one element of 4,096 in the MLM value kernel at 1.45e-5 on a
  (2, 2, 2) mesh, AMD Zen 4). So: at most one element in 1,000 of a leaf outside
  rtol 1e-4 / atol 1e-5, and none by more than 1/30 of the learning rate (one step moves an
  element by up to about the learning rate). A wrong gradient for a tensor moves most
  of its elements by the order of the learning rate and fails both.
  """
  def check(path, a, b):
    name = jax.tree_util.keystr(path)
    np.testing.assert_allclose(a, b, rtol=0, atol=LEARNING_RATE / 30, err_msg=name)
    outside = ~np.isclose(a, b, rtol=1e-4, atol=1e-5)
    assert outside.sum() <= outside.size // 1000, f'{name}: {outside.sum()} of {outside.size} elements differ'
  jax.tree_util.tree_map_with_path(check, params, want_params)


MESHES = [dict(data=8), dict(data=1, fsdp=8), dict(data=2, fsdp=2, tensor=2), dict(data=4, tensor=2)]


@pytest.fixture(scope='module')
def single_device():
  one = sharding.make_mesh(devices=jax.devices()[:1])
  return {obj: _train(one, obj)[:2] for obj in ('clm', 'mlm')}


def _mesh_cases():
  """Every mesh for both objectives; the default suite keeps pure data parallel and the mesh that uses all
  three axes (each ~8 s to compile on 8 fake devices), the rest run with -m slow."""
  default = {('data8', 'clm'), ('data2xfsdp2xtensor2', 'clm'), ('data2xfsdp2xtensor2', 'mlm')}
  for mesh_shape in MESHES:
    name = 'x'.join(f'{k}{v}' for k, v in mesh_shape.items())
    for objective in ('clm', 'mlm'):
      marks = () if (name, objective) in default else pytest.mark.slow
      yield pytest.param(mesh_shape, objective, id=f'{name}-{objective}', marks=marks)


@pytest.mark.parametrize('mesh_shape,objective', list(_mesh_cases()))
def test_mesh_matches_one_device(single_device, mesh_shape, objective):
  assert len(jax.devices()) == 8
  losses, params, _ = _train(sharding.make_mesh(**mesh_shape), objective)
  want_losses, want_params = single_device[objective]
  np.testing.assert_allclose(losses, want_losses, rtol=2e-5)
  _assert_same_params(params, want_params)


@pytest.mark.parametrize('grad_accum_steps', [1, 2])
def test_per_device_grads_match_one_device(single_device, grad_accum_steps):
  """Data parallel with the devices' gradients summed in one flat all-reduce (lmjax.train uses it on
  CPU): the same training as one device, and one all-reduce in the step, not one per parameter."""
  mesh = sharding.make_mesh(data=8 // grad_accum_steps, fsdp=1, tensor=1,
                            devices=jax.devices()[:8 // grad_accum_steps])  # 1 or 2 rows per device
  losses, params, all_reduces = _train(mesh, 'clm', per_device_grads=True, grad_accum_steps=grad_accum_steps)
  assert all_reduces == 1
  want_losses, want_params = single_device['clm']
  np.testing.assert_allclose(losses, want_losses, rtol=2e-5)
  _assert_same_params(params, want_params)


def _specs(model, mesh):
  _, shardings = state_lib.abstract_state(model, _tx(), jnp.zeros((1, 16), jnp.int32), mesh)
  return shardings


def _flat(tree):
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


GOLDEN_2x2x2 = {
    'token_embed': P('tensor', 'fsdp'),
    'final_norm/layernorm/scale': P('fsdp'),
    'final_norm/layernorm/bias': P('fsdp'),
    'block_0/attn_norm/layernorm/scale': P('fsdp'),
    'block_0/attn_norm/layernorm/bias': P('fsdp'),
    'block_0/attn/query/kernel': P('fsdp', 'tensor', None),
    'block_0/attn/query/bias': P('tensor', None),
    'block_0/attn/key/kernel': P('fsdp', 'tensor', None),
    'block_0/attn/key/bias': P('tensor', None),
    'block_0/attn/value/kernel': P('fsdp', 'tensor', None),
    'block_0/attn/value/bias': P('tensor', None),
    'block_0/attn/out/kernel': P('tensor', None, 'fsdp'),
    'block_0/attn/out/bias': P('fsdp'),
    'block_0/mlp_norm/layernorm/scale': P('fsdp'),
    'block_0/mlp_norm/layernorm/bias': P('fsdp'),
    'block_0/mlp/wi/kernel': P('fsdp', 'tensor'),
    'block_0/mlp/wi/bias': P('tensor'),
    'block_0/mlp/wo/kernel': P('tensor', 'fsdp'),
    'block_0/mlp/wo/bias': P('fsdp'),
}


def test_golden_partition_specs_on_2x2x2():
  shardings = _specs(_model(num_layers=1), sharding.make_mesh(data=2, fsdp=2, tensor=2))
  got = {k: v.spec for k, v in _flat(shardings.params).items()}
  assert got == GOLDEN_2x2x2
  # Adam's moments are laid out exactly like the parameters they track.
  for moment in ('mu', 'nu'):
    tree = [s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, moment))
            if hasattr(s, moment)][0]
    assert {k: v.spec for k, v in _flat(getattr(tree, moment)).items()} == GOLDEN_2x2x2


@pytest.mark.parametrize('objective', ['clm', 'mlm'])
def test_fsdp_shards_every_shardable_array(objective):
  """Under pure FSDP no parameter or optimizer-state array with a dim divisible by 8 is replicated."""
  mesh = sharding.make_mesh(data=1, fsdp=8)
  model = _model(objective, type_vocab_size=2 if objective == 'mlm' else 0)
  abstract, shardings = state_lib.abstract_state(model, _tx(), jnp.zeros((1, 16), jnp.int32), mesh)
  arrays = [(k, abstract_leaf.shape, s.spec) for (k, s), abstract_leaf in
            zip(_flat({'params': shardings.params, 'opt': shardings.opt_state}).items(),
                jax.tree.leaves({'params': abstract.params, 'opt': abstract.opt_state}))]
  checked = 0
  for name, shape, spec in arrays:
    if not shape or not any(d % 8 == 0 for d in shape) or 'count' in name:
      continue
    checked += 1
    assert 'fsdp' in jax.tree.leaves(tuple(spec)), (name, shape, spec)
  assert checked > 20


def test_indivisible_dims_stay_whole():
  """12 heads on a tensor axis of 8 cannot split: those dims stay whole instead of failing."""
  mesh = sharding.make_mesh(data=1, tensor=8)
  specs = _flat(_specs(_model(num_heads=4, embed_dim=48, mlp_dim=96), mesh).params)
  assert specs['block_0/attn/query/kernel'].spec == P(None, None, None)
  assert specs['block_0/mlp/wi/kernel'].spec == P(None, 'tensor')


def test_bad_mesh_and_batch_are_one_line_errors():
  with pytest.raises(ValueError, match='do not divide the 8 devices'):
    sharding.make_mesh(data=3)
  with pytest.raises(ValueError, match='at most one'):
    sharding.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match='train.batch_size=6 must be divisible by the data-parallel size 8'):
    sharding.check_batch_size(6, sharding.make_mesh(data=8))


class _FakeDevice:
  platform, device_kind = 'cpu', 'cpu'

  def __init__(self, i, per_slice, attr):
    self.id = i
    setattr(self, attr, i // per_slice)

  def __repr__(self):
    return f'd{self.id}'


@pytest.mark.parametrize('attr', ['slice_index', 'process_index'])
def test_hybrid_grid_keeps_each_slice_a_contiguous_block(attr):
  """2 slices x 4 devices, dcn_data=2: the data axis crosses slices; fsdp/tensor stay inside one."""
  devices = [_FakeDevice(i, 4, attr) for i in range(8)]
  grid = sharding.device_grid((1, 2, 2), (2, 1, 1), devices)
  assert grid.shape == (2, 2, 2)
  slice_of = np.vectorize(lambda d: getattr(d, attr))(grid)
  assert (slice_of[0] == 0).all() and (slice_of[1] == 1).all()
  with pytest.raises(ValueError, match='dcn_data\\*dcn_fsdp\\*dcn_tensor = 4 but there are 2'):
    sharding.device_grid((1, 1, 2), (4, 1, 1), devices)


def test_hybrid_mesh_on_one_process_is_a_clear_error():
  # 8 fake CPU devices in one process form one "slice": two are asked for.
  with pytest.raises(ValueError, match='= 2 but there are 1 processes'):
    sharding.make_mesh(data=-1, dcn_data=2)
  assert sharding.make_mesh(data=2, fsdp=4, dcn_data=1).shape == {'data': 2, 'fsdp': 4, 'tensor': 1}


@pytest.mark.parametrize('variant', [dict(remat='full'), dict(remat='dots'), dict(scan_layers=True),
                                     dict(scan_layers=True, remat='dots_no_batch')],
                         ids=lambda v: '+'.join(f'{k}={x}' for k, x in v.items()))
def test_remat_and_scan_match_the_plain_model(variant):
  plain, other = _model(num_layers=3), _model(num_layers=3, **variant)
  batch = _batches('clm', 1)[0]
  params = plain.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']
  params = nn.meta.unbox(params)
  if variant.get('scan_layers'):  # the same weights, stacked along a leading layer axis
    blocks = [params.pop(f'block_{i}') for i in range(3)]
    other_params = dict(params, blocks=jax.tree.map(lambda *xs: jnp.stack(xs), *blocks))
  else:
    other_params = params

  def loss_and_grads(model, p):
    loss_fn = functools.partial(objectives.next_token_loss, model.apply)
    return jax.value_and_grad(lambda q: loss_fn(q, batch, jax.random.key(0), train=True)[0])(p)

  want_loss, want_grads = jax.jit(functools.partial(loss_and_grads, plain))(dict(params, **{
      f'block_{i}': b for i, b in enumerate(blocks)}) if variant.get('scan_layers') else params)
  loss, grads = jax.jit(functools.partial(loss_and_grads, other))(other_params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  if variant.get('scan_layers'):
    grads = dict(grads, **{f'block_{i}': jax.tree.map(lambda x: x[i], grads['blocks']) for i in range(3)})
    del grads['blocks']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, want_grads)


def test_scanned_params_carry_the_layer_axis():
  model = _model(num_layers=3, scan_layers=True)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32)))
  kernel = boxed['params']['blocks']['attn']['query']['kernel']
  assert kernel.value.shape == (3, 64, 8, 8) and kernel.names == ('layers', 'embed', 'heads', 'kv')
