"""One Transformer stack: a causal decoder (next-token) or a bidirectional encoder.

``ModelConfig`` is a frozen dataclass: the model never sees the ml_collections
config, objectives or sharding rules.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax import axes
from lmjax.models import layers

# Named sizes: (num_layers, embed_dim, num_heads, mlp_dim). Architecture options
# (norm, positions, biases...) are separate fields, so e.g. 'gpt2' dims can be
# trained with a modern RMSNorm/RoPE block or with the original GPT-2 block.
SIZES = {
    'tiny': (2, 128, 4, 512),
    'mini': (4, 256, 4, 1024),
    'small': (6, 384, 6, 1536),      # nanoGPT's shakespeare_char shapes
    'gpt2': (12, 768, 12, 3072),     # GPT-2 124M / BERT-base
    'gpt2-medium': (24, 1024, 16, 4096),  # GPT-2 350M / BERT-large
    'gpt2-large': (36, 1280, 20, 5120),
    'gpt2-xl': (48, 1600, 25, 6400),
}


# What the backward pass may keep from the forward pass of each block (the rest is recomputed).
REMAT_POLICIES = {
    'none': None,                                             # no remat: keep everything
    'full': jax.checkpoint_policies.nothing_saveable,         # keep only block inputs: least memory
    'dots': jax.checkpoint_policies.checkpoint_dots,          # keep matmul outputs, recompute elementwise
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls only
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the Transformer; see configs/base.py for each field's meaning."""
  vocab_size: int
  max_len: int = 1024
  num_layers: int = 2
  embed_dim: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  causal: bool = True            # False: bidirectional encoder
  mlm_head: bool = False         # masked-LM head: dense + activation + norm before the output, plus a bias
  type_vocab_size: int = 0       # learned segment/type embeddings (BERT's token types); 0 = none
  positions: str = 'rope'        # 'rope' | 'learned'
  rope_base: float = 10_000.0
  norm: str = 'rmsnorm'          # 'rmsnorm' | 'layernorm'
  norm_eps: float = 1e-6
  norm_bias: bool = True         # LayerNorm's additive bias (rmsnorm has none)
  norm_position: str = 'pre'     # 'pre': x + f(norm(x)), final norm | 'post': norm(x + f(x)), no final norm (BERT)
  embed_norm: bool = False       # a norm on the summed embeddings (BERT's embedding LayerNorm)
  activation: str = 'gelu'       # 'gelu' (tanh approx.) | 'gelu_exact' | 'swiglu'
  use_bias: bool = False
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: str = 'float32'         # compute dtype
  param_dtype: str = 'float32'
  attention_impl: str = 'auto'   # 'auto' (JAX picks) | 'xla' | 'cudnn'
  remat: str = 'none'            # activation checkpointing policy, see REMAT_POLICIES
  scan_layers: bool = False      # one nn.scan over the blocks: compile time flat in depth

  def __post_init__(self):
    _check(self.embed_dim % self.num_heads == 0,
           f'embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}')
    _check(self.positions in ('rope', 'learned'), f"positions={self.positions!r}: use 'rope' or 'learned'")
    _check(self.norm in ('rmsnorm', 'layernorm'), f"norm={self.norm!r}: use 'rmsnorm' or 'layernorm'")
    _check(self.norm_position in ('pre', 'post'), f"norm_position={self.norm_position!r}: use 'pre' or 'post'")
    _check(self.activation in ('gelu', 'gelu_exact', 'swiglu'),
           f"activation={self.activation!r}: use 'gelu', 'gelu_exact' or 'swiglu'")
    _check(self.positions != 'rope' or self.head_dim % 2 == 0, f'rope needs an even head_dim, got {self.head_dim}')
    _check(self.remat in REMAT_POLICIES, f"remat={self.remat!r}: use one of {', '.join(REMAT_POLICIES)}")
    _check(self.attention_impl in ('auto', 'xla', 'cudnn'),
           f"attention_impl={self.attention_impl!r}: use 'auto', 'xla' or 'cudnn'")
    for name in ('dtype', 'param_dtype'):
      _check(getattr(self, name) in ('float32', 'bfloat16', 'float16'),
             f"{name}={getattr(self, name)!r}: use 'float32', 'bfloat16' or 'float16'")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count from the shapes (matches the initialized tree)."""
    D, F, V = self.embed_dim, self.mlp_dim, self.vocab_size
    bias = self.use_bias
    norm = D * (2 if self.norm == 'layernorm' and self.norm_bias else 1)
    attn = 4 * D * D + (4 * D if bias else 0)
    mlp = (3 if self.activation == 'swiglu' else 2) * D * F + ((F + D) if bias else 0)
    if self.activation == 'swiglu' and bias:
      mlp += F
    total = self.num_layers * (attn + mlp + 2 * norm)
    total += norm if self.norm_position == 'pre' else 0  # final_norm
    total += norm if self.embed_norm else 0
    if self.mlm_head:
      total += D * D + D + norm
    if include_embeddings:
      total += V * D * (1 if self.tie_embeddings else 2)
      total += self.max_len * D if self.positions == 'learned' else 0
      total += self.type_vocab_size * D
      total += V if self.mlm_head else 0
    return total

  def matmul_weights(self, predicted_fraction: float = 1.0) -> float:
    """Weights that multiply an activation, per token: projections, MLP, MLM head, output layer.

    Not counted: embedding lookups, norms and biases (no matmul; a few FLOPs per
    element at most). ``predicted_fraction``: the share of tokens the output head
    (MLM transform and vocabulary projection) runs on; the masked-LM loss runs it
    at the selected tokens only (``objectives.selected_cross_entropy``).
    """
    D, F = self.embed_dim, self.mlp_dim
    per_layer = 4 * D * D + (3 if self.activation == 'swiglu' else 2) * D * F  # q, k, v, out; MLP
    head = (D * D if self.mlm_head else 0) + self.vocab_size * D
    return self.num_layers * per_layer + predicted_fraction * head

  def attended_keys(self, seq_len: int) -> float:
    """Keys each query attends to on average: all L (encoder), or (L + 1) / 2 (causal: query i sees i + 1)."""
    return (seq_len + 1) / 2 if self.causal else float(seq_len)

  def flops_per_token(self, seq_len: int, predicted_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM-style, see ``flops_formula``.

    Weights: 2 FLOPs per weight forward, so 6 per weight in training. Attention: the
    score (QK^T) and value (AV) matmuls each take 2 * D FLOPs per (query, key) pair
    forward, so 12 * D * (keys attended) per layer in training. Causal attention
    counts only the keys a query may see (the masked half is not useful work, even
    where it is computed), so MFU is not inflated; an encoder counts all of them.
    """
    attention = 12 * self.num_layers * self.embed_dim * self.attended_keys(seq_len)
    return 6 * self.matmul_weights(predicted_fraction) + attention

  def flops_formula(self, seq_len: int, predicted_fraction: float = 1.0) -> str:
    """``flops_per_token`` written out with this model's numbers."""
    keys = '(L+1)/2' if self.causal else 'L'
    head = f' (output head on {predicted_fraction:g} of the tokens)' if predicted_fraction != 1.0 else ''
    return (f'6*N + 12*layers*D*S with N = {self.matmul_weights(predicted_fraction):,.0f} matmul weights per '
            f'token{head}, layers = {self.num_layers}, D = {self.embed_dim}, S = {keys} = '
            f'{self.attended_keys(seq_len):g} attended keys (L = {seq_len})')


def _check(ok: bool, message: str):
  if not ok:
    raise ValueError(f'model: {message}')


class Transformer(nn.Module):
  """Token ids -> float32 logits over the vocabulary.

  ``causal=True`` is a GPT-style decoder; ``False`` a BERT-style encoder (same
  blocks, bidirectional mask; with ``mlm_head``, BERT's output transform). Packed
  sequences pass ``segment_ids_BL`` (0 = padding) so tokens attend only within
  their own document, and ``positions_BL`` so positions restart per document.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, type_ids_BL=None, *,
               deterministic: bool = True, decode: bool = False, hidden_only: bool = False, hidden_BMD=None):
    """Logits [B, L, V]. ``hidden_only``: stop before the output head and return its input [B, L, D]
    (after the final norm; post-norm: the last block's output). ``hidden_BMD`` (with ``tokens_BL=None``):
    run only the output head, on such states gathered at the M positions a loss reads; the masked-LM
    loss uses the pair."""
    cfg = self.config
    embed_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (axes.VOCAB, axes.EMBED))
    embedding_VD = self.param('token_embed', embed_init, (cfg.vocab_size, cfg.embed_dim), cfg.weight_dtype)
    if hidden_BMD is not None:
      return self._head(embedding_VD, hidden_BMD)
    x_BLD = self._encode(embedding_VD, tokens_BL, positions_BL, segment_ids_BL, type_ids_BL, deterministic,
                         decode)
    return x_BLD if hidden_only else self._head(embedding_VD, x_BLD)

  def _encode(self, embedding_VD, tokens_BL, positions_BL, segment_ids_BL, type_ids_BL, deterministic: bool,
              decode: bool):
    """Embeddings (and their norm), the blocks and the final norm (pre-norm only): [B, L, D]."""
    cfg = self.config
    batch, length = tokens_BL.shape
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((batch, length), jnp.int32)
    x_BLD = embedding_VD.astype(cfg.compute_dtype)[tokens_BL]
    if cfg.positions == 'learned':
      pos_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (None, axes.EMBED))
      pos_embed_LD = self.param('pos_embed', pos_init, (cfg.max_len, cfg.embed_dim), cfg.weight_dtype)
      x_BLD = x_BLD + pos_embed_LD.astype(cfg.compute_dtype)[positions_BL]
    if cfg.type_vocab_size:
      type_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (None, axes.EMBED))
      type_embed_TD = self.param('type_embed', type_init, (cfg.type_vocab_size, cfg.embed_dim), cfg.weight_dtype)
      if type_ids_BL is None:
        type_ids_BL = jnp.zeros((batch, length), jnp.int32)
      x_BLD = x_BLD + type_embed_TD.astype(cfg.compute_dtype)[type_ids_BL]
    if cfg.embed_norm:
      x_BLD = layers.Norm(cfg, name='embed_norm')(x_BLD)
    x_BLD = nn.Dropout(cfg.dropout_rate)(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))

    # In decode mode each attention layer builds its mask from its cache.
    mask_B1LS = None if decode else layers.attention_mask(segment_ids_BL, cfg.causal)
    x_BLD = self._blocks(x_BLD, positions_BL, mask_B1LS, deterministic, decode)
    # Post-norm blocks end in a norm already (BERT has no final one).
    return x_BLD if cfg.norm_position == 'post' else layers.Norm(cfg, name='final_norm')(x_BLD)

  def _head(self, embedding_VD, x_BLD):
    """The MLM transform (if any), the output projection (tied or not) and the MLM output bias."""
    cfg = self.config
    if cfg.mlm_head:
      x_BLD = layers.MlmTransform(cfg, name='mlm_head')(x_BLD)
    if cfg.tie_embeddings:
      out_VD = embedding_VD
    else:
      head_init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), (axes.VOCAB, axes.EMBED))
      out_VD = self.param('lm_head', head_init, (cfg.vocab_size, cfg.embed_dim), cfg.weight_dtype)
    # Low-precision inputs, float32 accumulation and output: the softmax and loss stay exact. One 2-D
    # matmul over the tokens, for the same reason as layers.Linear's.
    batch, length, dim = x_BLD.shape
    logits_NV = jnp.dot(x_BLD.reshape(batch * length, dim), out_VD.astype(cfg.compute_dtype).T,
                        preferred_element_type=jnp.float32)
    logits_BLV = logits_NV.reshape(batch, length, cfg.vocab_size)
    if cfg.mlm_head:
      bias_init = nn.with_logical_partitioning(nn.initializers.zeros, (axes.VOCAB,))
      logits_BLV = logits_BLV + self.param('output_bias', bias_init, (cfg.vocab_size,), cfg.weight_dtype)
    return nn.with_logical_constraint(logits_BLV, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_VOCAB))

  def _blocks(self, x_BLD, positions_BL, mask_B1LS, deterministic: bool, decode: bool):
    """The layer stack: a Python loop ('block_<i>'), or one ``nn.scan`` over stacked params ('blocks').

    Scan compiles one block whatever the depth; its parameters gain a leading
    LAYERS axis. Remat recomputes activations in the backward pass per ``cfg.remat``.
    """
    cfg = self.config
    block = layers.Block
    if cfg.remat != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    kw = dict(deterministic=deterministic, decode=decode)
    if not cfg.scan_layers:
      for i in range(cfg.num_layers):
        x_BLD = block(cfg, **kw, name=f'block_{i}')(x_BLD, positions_BL, mask_B1LS)
      return x_BLD
    stack = nn.scan(block, variable_axes={'params': 0, 'cache': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x_BLD, _ = stack(cfg, **kw, scanned=True, name='blocks')(x_BLD, positions_BL, mask_B1LS)
    return x_BLD
