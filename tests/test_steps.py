"""The jitted train step on its own: it can memorise one batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
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
