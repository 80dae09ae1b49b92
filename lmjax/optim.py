"""The optax optimizer: AdamW, linear warmup + cosine decay, global-norm clipping, non-finite skipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def lr_schedule(*, learning_rate: float, warmup_steps: int, total_steps: int, min_lr_ratio: float):
  """Linear warmup to ``learning_rate``, cosine down to ``min_lr_ratio * learning_rate`` at ``total_steps``.

  Step ``t < warmup_steps`` gets ``learning_rate * (t + 1) / (warmup_steps + 1)`` (nanoGPT's get_lr):
  the first update already moves the weights, where a warmup from 0 spends a step at lr 0.
  """
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=learning_rate / (warmup_steps + 1), peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * min_lr_ratio)


def decay_mask(params, decay_embeddings: bool = False):
  """Decay matrices only: not norms, biases, or (unless asked) embedding tables."""
  def decays(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name.endswith('embed'):  # token_embed, pos_embed
      return decay_embeddings
    return name in ('kernel', 'lm_head')
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(*, schedule_steps: int, learning_rate: float, warmup_steps: int, min_lr_ratio: float,
                   b1: float, b2: float, eps: float, weight_decay: float, clip_norm: float,
                   decay_embeddings: bool):
  """Returns (optax transformation, learning-rate schedule).

  An update whose gradients hold a NaN or inf is skipped (params and moments
  unchanged) and counted in the state's ``total_notfinite`` (see ``nonfinite_count``);
  whether training then goes on is the caller's policy.
  """
  schedule = lr_schedule(learning_rate=learning_rate, warmup_steps=warmup_steps,
                         total_steps=schedule_steps, min_lr_ratio=min_lr_ratio)
  chain = [clip_by_given_norm(clip_norm)] if clip_norm > 0 else []
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=lambda p: decay_mask(p, decay_embeddings)))
  return skip_nonfinite(optax.chain(*chain)), schedule


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``optax.apply_if_finite(inner, max_consecutive_errors=inf)``, judged by the gradient's global norm.

  The norm is NaN or inf exactly when a gradient entry is (or when the sum of squares
  overflows float32, an update worth skipping too), so one reduction serves the check,
  the clipping inside (``clip_by_given_norm`` reads it as the extra argument
  ``grad_norm``) and the step's ``grad_norm`` metric, which computes the same
  expression: XLA merges the three. optax's version checks every leaf apart, and its
  clip computes the norm again inside the skip's ``lax.cond``. The state is optax's
  ``ApplyIfFiniteState``, so checkpoints keep their layout; skipped updates are never
  applied after any number of skips (optax gives up after ``max_consecutive_errors``).
  """
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return optax.ApplyIfFiniteState(notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
                                    total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update(updates, state, params=None, **extra_args):
    grad_norm = optax.tree.norm(updates)
    finite = jnp.isfinite(grad_norm)
    updates, inner_state = jax.lax.cond(
        finite,
        lambda: inner.update(updates, state.inner_state, params, grad_norm=grad_norm, **extra_args),
        lambda: (jax.tree.map(jnp.zeros_like, updates), state.inner_state))
    return updates, skip_state(state, finite, inner_state)
  return optax.GradientTransformationExtraArgs(init, update)


def skip_state(state: optax.ApplyIfFiniteState, finite, inner_state) -> optax.ApplyIfFiniteState:
  """``state`` after an update that was applied (``finite``) or skipped, with the inner state given."""
  return optax.ApplyIfFiniteState(
      notfinite_count=jnp.where(finite, 0, optax.safe_increment(state.notfinite_count)), last_finite=finite,
      total_notfinite=jnp.where(finite, state.total_notfinite, optax.safe_increment(state.total_notfinite)),
      inner_state=inner_state)


def clip_by_given_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """``optax.clip_by_global_norm(max_norm)`` (the same arithmetic) with the norm passed in as ``grad_norm``."""
  def update(updates, state, params=None, *, grad_norm, **extra_args):
    del params, extra_args
    trigger = grad_norm < max_norm
    return jax.tree.map(lambda t: jax.lax.select(trigger, t, (t / grad_norm.astype(t.dtype)) * max_norm),
                        updates), state
  return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update)


def nonfinite_count(opt_state) -> jax.Array:
  """Updates skipped so far because of non-finite gradients (int32 scalar)."""
  return optax.tree_utils.tree_get(opt_state, 'total_notfinite')
