"""Evaluation loops: loss, perplexity, accuracy and bits per byte over a fixed split.

For masked-LM the same figures are over the masked positions (masks drawn from a
fixed seed, see ``steps.eval_step``); bits per byte are next-token only.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import jax

from lmjax import metrics as metrics_lib


def evaluate(eval_fn: Callable, params, batches: Iterable, token_bytes_V) -> dict[str, float]:
  """Runs ``eval_fn(params, batch, index, token_bytes_V) -> {name: (sum, count)}`` over every batch.

  Sums are accumulated on the host in float64, so the result does not depend on
  how the split is cut into batches.
  """
  total = {}
  pending = None
  for index, batch in enumerate(batches):
    out = eval_fn(params, batch, index, token_bytes_V)
    if pending is not None:  # fetch the previous batch's sums while this one runs
      total = metrics_lib.accumulate(total, jax.device_get(pending))
    pending = out
  if pending is not None:
    total = metrics_lib.accumulate(total, jax.device_get(pending))
  if not total or total['loss'][1] == 0:
    raise ValueError('evaluation split has no target tokens; raise --config.data.val_fraction')
  return summary(total)


def summary(total) -> dict[str, float]:
  """(sum, count) totals -> the eval_* scalars that are logged."""
  means = metrics_lib.summarize(total)
  out = {'eval_loss': means['loss'], 'eval_perplexity': math.exp(min(means['loss'], 50.0)),
         'eval_accuracy': means['accuracy'], 'eval_tokens': total['loss'][1]}
  if 'bits_per_byte' in means:
    out['eval_bits_per_byte'] = means['bits_per_byte']
  return out
