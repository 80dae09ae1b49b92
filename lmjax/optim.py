"""The optax optimizer: AdamW, linear warmup + cosine decay, global-norm clipping, non-finite skipping."""

from __future__ import annotations

import jax
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
  chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=lambda p: decay_mask(p, decay_embeddings)))
  # optax would apply updates again after max_consecutive_errors skips; never do that.
  return optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=2**30), schedule


def nonfinite_count(opt_state) -> jax.Array:
  """Updates skipped so far because of non-finite gradients (int32 scalar)."""
  return optax.tree_utils.tree_get(opt_state, 'total_notfinite')
