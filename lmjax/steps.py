"""Pure, jit-able train and eval steps. No I/O, no logging, no config reads.

``loss_fn(params, batch, rng, train=...) -> (mean loss, {name: (sum, count)})``
comes from ``lmjax.objectives`` with the model's apply function bound in.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from lmjax import optim
from lmjax.sharding import BATCH_AXES
from lmjax.state import TrainState


def _sum_tree(a, b):
  return jax.tree.map(jnp.add, a, b)


def _grads_and_metrics(loss_fn: Callable, params, batch, rng, grad_accum_steps: int):
  """Gradient of the mean loss; with accumulation, a scan over equal micro-batches.

  Micro-batch gradients are averaged with equal weight, which equals the
  full-batch gradient when every micro-batch has the same number of target
  tokens (true for packed pretraining rows).
  """
  grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(p, b, r, train=True), has_aux=True)
  if grad_accum_steps == 1:
    (_, metrics), grads = grad_fn(params, batch, rng)
    return grads, metrics

  def split(x):
    return x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:])
  micro = jax.tree.map(split, batch)

  def body(carry, xs):
    grads_acc, metrics_acc = carry
    mb, i = xs
    (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return (_sum_tree(grads_acc, grads), _sum_tree(metrics_acc, metrics)), None

  zeros_grads = jax.tree.map(jnp.zeros_like, params)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros_metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, first, rng)[0][1]))
  (grads, metrics), _ = jax.lax.scan(body, (zeros_grads, zeros_metrics),
                                     (micro, jnp.arange(grad_accum_steps)))
  return jax.tree.map(lambda g: g / grad_accum_steps, grads), metrics


def _per_device_grads_and_metrics(loss_fn: Callable, params, batch, rng, grad_accum_steps: int):
  """``_grads_and_metrics`` computed by each device on its rows, then summed in one flat all-reduce.

  For a data-parallel mesh (replicated parameters) and a step that draws no random
  numbers (the devices would draw from the same key). Each device's mean-loss gradient
  is weighted by its target-token count, so the sum is the gradient of the global mean
  loss, as XLA's partitioner computes it. The difference is the all-reduce: XLA
  combines the gradients into one all-reduce of one buffer per parameter, and XLA:CPU
  meets the other devices once per buffer (about 50 rendezvous a step at nanoGPT's CPU
  shapes, 10% of the step); one raveled buffer meets once (docs/perf_notes.md).
  """
  def local(params, batch):
    with nn.logical_axis_rules(()):  # inside shard_map activations are per device already
      grads, metrics = _grads_and_metrics(loss_fn, params, batch, rng, grad_accum_steps)
    count = metrics['loss'][1]
    flat, unravel = ravel_pytree((jax.tree.map(lambda g: g * count, grads), metrics))
    grad_sums, metrics = unravel(jax.lax.psum(flat, BATCH_AXES))
    total = jnp.maximum(metrics['loss'][1], 1.0)
    return jax.tree.map(lambda g: g / total, grad_sums), metrics

  # check_vma=False: with it, autodiff would already psum each parameter's gradient (the
  # parameters are replicated), one buffer at a time, which is what this avoids.
  return jax.shard_map(local, in_specs=(P(), P(BATCH_AXES)), out_specs=(P(), P()), check_vma=False)(params, batch)


def train_step(state: TrainState, batch, rng, *, loss_fn: Callable, tx: optax.GradientTransformation,
               grad_accum_steps: int = 1, per_device_grads: bool = False):
  """One optimizer update. Randomness is ``fold_in(rng, step)``: a resumed run draws the same.

  ``per_device_grads``: see ``_per_device_grads_and_metrics`` (needs the mesh in context, ``jax.set_mesh``).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  grads_fn = _per_device_grads_and_metrics if per_device_grads else _grads_and_metrics
  grads, metrics = grads_fn(loss_fn, state.params, batch, step_rng, grad_accum_steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  one = jnp.ones((), jnp.float32)
  metrics['grad_norm'] = (optax.tree.norm(grads), one)
  # Cumulative, so a skip between two logged steps still shows (and survives a resume).
  metrics['nonfinite_steps'] = (optim.nonfinite_count(opt_state).astype(jnp.float32), one)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


EVAL_SEED = 0


def eval_step(params, batch, index, token_bytes_V, *, loss_fn: Callable):
  """Metric sums on batch number ``index`` of the split, deterministic (no dropout).

  Any randomness in the objective (MLM masking) comes from ``fold_in(key(EVAL_SEED),
  index)``: every evaluation of every run sees the same masks, so numbers compare.
  Bits per byte come from ``token_bytes_V``.
  """
  rng = jax.random.fold_in(jax.random.key(EVAL_SEED), index)
  _, metrics = loss_fn(params, batch, rng, train=False, token_bytes_V=token_bytes_V)
  return metrics
