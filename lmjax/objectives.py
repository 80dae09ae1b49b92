"""Training objectives. Each returns (mean loss to differentiate, metric sums).

Metrics are ``{name: (sum, count)}`` pairs so they add up exactly across
micro-batches, devices and eval batches; hosts divide at the end.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

OBJECTIVES = ('clm', 'mlm')
MASK_RATE = 0.15  # BERT's: the default fraction of tokens masked-LM predicts


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


def mask_tokens(rng, tokens_BL, segment_ids_BL, *, vocab_size: int, mask_id: int, special_ids_S,
                mask_rate: float = MASK_RATE, mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                word_starts_V=None):
  """BERT masking on device: (inputs_BL, targets_BL, weights_BL).

  Each non-special, non-padding token is selected with probability ``mask_rate``
  (with ``word_starts_V``, whole words are selected together); a selected token
  becomes ``mask_id`` with ``mask_token_prob``, a random non-special token with
  ``random_token_prob``, and stays itself otherwise. ``weights_BL`` marks the
  selected positions, the only ones the loss sees.
  """
  select_rng, action_rng, random_rng = jax.random.split(rng, 3)
  special_ids_S = jnp.asarray(special_ids_S, tokens_BL.dtype)
  eligible_BL = (segment_ids_BL != 0) & ~jnp.isin(tokens_BL, special_ids_S)
  draw_BL = jax.random.uniform(select_rng, tokens_BL.shape)
  if word_starts_V is not None:
    # A word starts at a word-start piece, a special or a segment change; every piece of
    # a word reads the draw made at its first piece.
    new_segment_BL = jnp.pad(segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1], ((0, 0), (1, 0)),
                             constant_values=True)
    starts_BL = jnp.asarray(word_starts_V)[tokens_BL] | new_segment_BL | ~eligible_BL
    word_BL = jnp.cumsum(starts_BL, axis=1) - 1
    draw_BL = jnp.take_along_axis(draw_BL, word_BL, axis=1)
  selected_BL = eligible_BL & (draw_BL < mask_rate)
  action_BL = jax.random.uniform(action_rng, tokens_BL.shape)
  # Random replacements are drawn from the non-special ids only.
  normal_ids = jnp.setdiff1d(jnp.arange(vocab_size), special_ids_S, size=vocab_size - special_ids_S.shape[0])
  random_BL = normal_ids[jax.random.randint(random_rng, tokens_BL.shape, 0, normal_ids.shape[0])]
  inputs_BL = jnp.where(selected_BL & (action_BL < mask_token_prob), mask_id, tokens_BL)
  replace_BL = selected_BL & (action_BL >= mask_token_prob) & (action_BL < mask_token_prob + random_token_prob)
  inputs_BL = jnp.where(replace_BL, random_BL.astype(tokens_BL.dtype), inputs_BL)
  return inputs_BL, tokens_BL, selected_BL


def masked_lm_loss(apply_fn: Callable, params, batch, rng, *, train: bool, masking: dict,
                   token_bytes_V=None, selected_only: bool = False):
  """Masked-LM loss on a packed batch of rows L long; loss and accuracy on the selected positions only.

  ``masking`` holds :func:`mask_tokens`' keyword arguments. The masks come from
  ``rng``, which the train step folds with the step number: a resumed run masks
  exactly as the uninterrupted one. Bits per byte are not defined for MLM (it is
  not a sequence model), so ``token_bytes_V`` is ignored. ``selected_only``
  computes the output head (MLM transform, vocabulary projection, softmax) at
  the selected positions only (:func:`selected_cross_entropy`): the same sums.
  """
  del token_bytes_V
  mask_rng, dropout_rng = jax.random.split(rng)
  inputs_BL, targets_BL, weights_BL = mask_tokens(mask_rng, batch['tokens'], batch['segment_ids'], **masking)
  args = (inputs_BL, batch['positions'], batch['segment_ids'])
  kwargs = dict(deterministic=not train, rngs={'dropout': dropout_rng})
  capacity = predict_capacity(inputs_BL.shape[1], masking.get('mask_rate', MASK_RATE))
  if selected_only and capacity < inputs_BL.shape[1]:
    hidden_BLD = apply_fn({'params': params}, *args, **kwargs, hidden_only=True)
    head = lambda hidden_BMD: apply_fn({'params': params}, None, hidden_BMD=hidden_BMD)
    metrics = selected_cross_entropy(head, hidden_BLD, targets_BL, weights_BL, capacity)
  else:
    metrics = cross_entropy(apply_fn({'params': params}, *args, **kwargs), targets_BL, weights_BL)
  nll, count = metrics['loss']
  return nll / jnp.maximum(count, 1.0), metrics


def predict_capacity(length: int, mask_rate: float) -> int:
  """Positions per row in the first pass of :func:`selected_cross_entropy`: the expected number of
  selected tokens plus 5 binomial standard deviations, rounded up to a multiple of 8, at most L."""
  mean = length * mask_rate
  wanted = math.ceil(mean + 5 * math.sqrt(mean * (1 - mask_rate)))
  return min(length, -(-wanted // 8) * 8)


def selected_cross_entropy(head: Callable, hidden_BLD, targets_BL, weights_BL, capacity: int):
  """:func:`cross_entropy` of ``head(hidden)`` at the weighted positions only, exactly.

  Masked-LM reads about 15% of the positions, but the output head over a 30K
  vocabulary is most of a small BERT's FLOPs, and its [B, L, V] logits most of the
  memory traffic (Hugging Face's BertForMaskedLM computes them everywhere). Each
  row's first ``capacity`` weighted positions go through ``head`` as [B, M, D];
  a row with more (about 1 in 3 million rows at the default capacity) sends
  the rest through a second pass under ``lax.cond``, rematerialised so that the
  untaken branch costs nothing. The sums are those of the full computation.
  """
  order_BL = jnp.argsort(~weights_BL.astype(bool), axis=1, stable=True)  # selected first, in position order

  def metrics_at(index_BM):
    pick = lambda x_BL: jnp.take_along_axis(x_BL, index_BM, axis=1)
    hidden_BMD = jnp.take_along_axis(hidden_BLD, index_BM[..., None], axis=1)
    return cross_entropy(head(hidden_BMD), pick(targets_BL), pick(weights_BL))

  metrics = metrics_at(order_BL[:, :capacity])
  rest_BR = order_BL[:, capacity:]
  overflow = jnp.take_along_axis(weights_BL, rest_BR, axis=1).any()
  rest = jax.lax.cond(overflow, lambda: jax.checkpoint(metrics_at)(rest_BR),
                      lambda: jax.tree.map(jnp.zeros_like, metrics))
  return jax.tree.map(jnp.add, metrics, rest)


def loss_fn(objective: str, masking: dict | None = None) -> Callable:
  """The objective's loss, ``(apply_fn, params, batch, rng, *, train, token_bytes_V=None)``."""
  if objective == 'mlm':
    return functools.partial(masked_lm_loss, masking=masking, selected_only=True)
  return {'clm': next_token_loss}[objective]
