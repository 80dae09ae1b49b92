"""The jitted train step on its own: it can memorise one batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmjax import objectives, optim, sharding, steps
from lmjax import state as state_lib
from lmjax.models.transformer import ModelConfig, Transformer


def test_overfits_a_tiny_batch():
  vocab = 64
  model = Transformer(ModelConfig(vocab_size=vocab, num_layers=2, embed_dim=64, num_heads=4, mlp_dim=128,
                                  max_len=32))
  tx, _ = optim.make_optimizer(schedule_steps=150, learning_rate=1e-2, warmup_steps=10, min_lr_ratio=0.1, b1=0.9,
                               b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=1.0,
                               decay_embeddings=False)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  state = state_lib.create(model, tx, jnp.zeros((1, 16), jnp.int32), mesh, jax.random.key(0))[0]
  rows = np.random.default_rng(0).integers(5, vocab, (4, 17)).astype(np.int32)
  batch = {'tokens': rows, 'segment_ids': np.ones_like(rows), 'positions': np.tile(np.arange(17), (4, 1))}
  loss_fn = functools.partial(objectives.next_token_loss, model.apply)
  step = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx))
  losses = []
  with sharding.activate(mesh):
    for _ in range(150):
      state, metrics = step(state, batch, jax.random.key(0))
      losses.append(float(metrics['loss'][0] / metrics['loss'][1]))
  assert losses[0] > np.log(vocab) - 0.5  # starts near uniform over the vocabulary
  assert losses[-1] < 0.1, losses[::10]   # random tokens: only memorisation gets here
  assert int(state.step) == 150


def test_lr_schedule_is_nanogpts_get_lr():
  """Warmup (t + 1) / (warmup + 1), then cosine to min_lr at the end: no update runs at lr 0."""
  def get_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay=2000):  # nanoGPT train.py
    if it < warmup:
      return lr * (it + 1) / (warmup + 1)
    if it > decay:
      return min_lr
    return min_lr + 0.5 * (1.0 + np.cos(np.pi * (it - warmup) / (decay - warmup))) * (lr - min_lr)
  schedule = optim.lr_schedule(learning_rate=1e-3, warmup_steps=100, total_steps=2000, min_lr_ratio=0.1)
  steps_T = np.arange(2100)
  np.testing.assert_allclose(np.asarray(jax.vmap(schedule)(steps_T)), [get_lr(t) for t in steps_T], rtol=1e-5)
  no_warmup = optim.lr_schedule(learning_rate=1e-3, warmup_steps=0, total_steps=10, min_lr_ratio=0.1)
  assert float(no_warmup(0)) == pytest.approx(1e-3)


def test_skip_nonfinite_is_optaxs_apply_if_finite_with_clipping():
  """lmjax's one-norm skip + clip updates as optax.apply_if_finite(chain(clip_by_global_norm, adamw)), bit for bit:
  finite steps (clipped or not), a NaN step and an inf step (skipped, counted); the state keeps optax's layout."""
  params = {'a': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), 'b': {'kernel': jnp.arange(5.0)}}
  adamw = lambda: optax.adamw(1e-2, b1=0.9, b2=0.99, weight_decay=0.1)
  ours = optim.skip_nonfinite(optax.chain(optim.clip_by_given_norm(1.0), adamw()))
  theirs = optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), adamw()), max_consecutive_errors=2**30)
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
  rng = np.random.default_rng(0)
  for scale, poison in [(0.01, None), (10.0, None), (1.0, np.nan), (1.0, np.inf), (0.1, None), (5.0, -np.inf)]:
    grads = jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32), params)
    if poison is not None:
      grads['b']['kernel'] = grads['b']['kernel'].at[2].set(poison)
    u_ours, s_ours = jax.jit(ours.update)(grads, s_ours, params)
    u_theirs, s_theirs = jax.jit(theirs.update)(grads, s_theirs, params)
    jax.tree.map(np.testing.assert_array_equal, (u_ours, s_ours), (u_theirs, s_theirs))
    if poison is not None:
      assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(u_ours))  # skipped: a zero update
    params = optax.apply_updates(params, u_ours)
  assert int(optim.nonfinite_count(s_ours)) == 3
