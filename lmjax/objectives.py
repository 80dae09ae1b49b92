"""Training objectives. Each returns (mean loss to differentiate, metric sums).

Metrics are ``{name: (sum, count)}`` pairs so they add up exactly across
micro-batches, devices and eval batches; hosts divide at the end.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

OBJECTIVES = ('clm',)


def row_len(objective: str, seq_len: int) -> int:
  """Tokens per packed data row: next-token rows carry one extra token for the shifted target."""
  if objective not in OBJECTIVES:
    raise ValueError(f'objective={objective!r} is not one of {OBJECTIVES}; set --config.objective')
  return seq_len + 1 if objective == 'clm' else seq_len


def cross_entropy(logits_BLV, targets_BL, weights_BL, token_bytes_V=None):
  """Weighted token-level cross-entropy and accuracy as (sum, count) pairs (float32).

  With ``token_bytes_V`` (UTF-8 bytes each vocabulary entry decodes to), also
  bits per byte: (total nats / ln 2, total target bytes), comparable across tokenizers.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  weights_BL = weights_BL.astype(jnp.float32)
  count = weights_BL.sum()
  nll = ((logz_BL - target_logit_BL) * weights_BL).sum()
  correct = ((jnp.argmax(logits_BLV, -1) == targets_BL) * weights_BL).sum()
  metrics = {'loss': (nll, count), 'accuracy': (correct, count)}
  if token_bytes_V is not None:
    num_bytes = (token_bytes_V[targets_BL] * weights_BL).sum()
    metrics['bits_per_byte'] = (nll / jnp.log(2.0), num_bytes.astype(jnp.float32))
  return metrics


def next_token_targets(batch):
  """Shift a packed row: predict token t+1 from tokens <= t, never across documents."""
  tokens, segs = batch['tokens'], batch['segment_ids']
  inputs = {'tokens_BL': tokens[:, :-1], 'positions_BL': batch['positions'][:, :-1],
            'segment_ids_BL': segs[:, :-1]}
  weights_BL = (segs[:, 1:] == segs[:, :-1]) & (segs[:, 1:] != 0)
  return inputs, tokens[:, 1:], weights_BL


def next_token_loss(apply_fn: Callable, params, batch, rng, *, train: bool, token_bytes_V=None):
  """Causal LM loss on a packed batch {'tokens','segment_ids','positions'} of rows L+1 long."""
  inputs, targets_BL, weights_BL = next_token_targets(batch)
  logits_BLV = apply_fn({'params': params}, **inputs, deterministic=not train, rngs={'dropout': rng})
  metrics = cross_entropy(logits_BLV, targets_BL, weights_BL, token_bytes_V)
  nll, count = metrics['loss']
  return nll / jnp.maximum(count, 1.0), metrics


def loss_fn(objective: str) -> Callable:
  return {'clm': next_token_loss}[objective]
