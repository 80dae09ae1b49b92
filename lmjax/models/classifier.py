"""Sequence classifier: the lmjax ``Transformer`` without its LM head, pooled states, a linear head.

The Transformer's parameters live under ``params['transformer']`` with the names a
pretraining checkpoint uses, so pretrained weights drop in as they are (less the LM
head, which the classifier never builds: see ``LM_HEAD_PARAMS``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lmjax import axes
from lmjax.models.transformer import ModelConfig, Transformer

# Pretraining-only parameters (MLM transform and output bias, untied output projection): a
# classifier reads the hidden states before them, so they are dropped when loading.
LM_HEAD_PARAMS = ('mlm_head', 'output_bias', 'lm_head')


POOLINGS = ('auto', 'first', 'last', 'mean')


def resolve_pooling(pooling: str, causal: bool) -> str:
  """'auto' is the first token (bos, BERT's CLS) for an encoder and the last non-padding token for a
  causal decoder, the only one that has seen the whole text."""
  if pooling not in POOLINGS:
    raise ValueError(f"finetune.pooling={pooling!r}: use one of {', '.join(POOLINGS)}")
  if pooling == 'first' and causal:
    raise ValueError("finetune.pooling='first' on a causal decoder reads bos, which sees none of the text; "
                     "use 'last' or 'mean'")
  return ('last' if causal else 'first') if pooling == 'auto' else pooling


def pool(x_BLD, segment_ids_BL, pooling: str):
  """[B, D] from right-padded rows (segment id 0 = padding): the 'first' token, the 'last' non-padding
  one, or the 'mean' of the non-padding ones."""
  real_BL = segment_ids_BL != 0
  if pooling == 'first':
    return x_BLD[:, 0]
  if pooling == 'last':
    last_B = jnp.maximum(real_BL.sum(axis=1) - 1, 0)
    return jnp.take_along_axis(x_BLD, last_B[:, None, None], axis=1)[:, 0]
  weights_BL1 = real_BL[..., None].astype(jnp.float32)
  return ((x_BLD * weights_BL1).sum(axis=1) / jnp.maximum(weights_BL1.sum(axis=1), 1.0)).astype(x_BLD.dtype)


class Classifier(nn.Module):
  """Token ids [B, L] -> float32 class logits [B, C]."""
  config: ModelConfig
  num_classes: int
  pooling: str = 'auto'      # see resolve_pooling
  dropout_rate: float = 0.0  # on the pooled state, before the linear head

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, *, deterministic: bool = True):
    cfg = self.config
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones(tokens_BL.shape, jnp.int32)
    x_BLD = Transformer(cfg, name='transformer')(tokens_BL, positions_BL, segment_ids_BL,
                                                 deterministic=deterministic, hidden_only=True)
    x_BD = pool(x_BLD, segment_ids_BL, resolve_pooling(self.pooling, cfg.causal))
    x_BD = nn.Dropout(self.dropout_rate)(x_BD, deterministic=deterministic)
    kernel_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (axes.EMBED, axes.CLASSES))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, (axes.CLASSES,))
    kernel_DC = self.param('kernel', kernel_init, (cfg.embed_dim, self.num_classes), cfg.weight_dtype)
    bias_C = self.param('bias', bias_init, (self.num_classes,), cfg.weight_dtype)
    # float32 accumulation and logits, as the LM head: the softmax and loss stay exact.
    logits_BC = jnp.einsum('BD,DC->BC', x_BD, kernel_DC.astype(cfg.compute_dtype),
                           preferred_element_type=jnp.float32)
    return logits_BC + bias_C.astype(jnp.float32)


def transformer_params(pretrained_params) -> dict:
  """A pretraining checkpoint's parameters without the LM head: what ``params['transformer']`` holds."""
  return {k: v for k, v in pretrained_params.items() if k not in LM_HEAD_PARAMS}
