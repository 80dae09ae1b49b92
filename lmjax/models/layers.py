"""Transformer building blocks: embeddings, norms, positions, attention, MLP.

Every parameter is created with logical axis names (``lmjax.axes``) so that the
sharding rules, not this file, decide where it lives. Nothing here knows about
meshes, configs files or losses. Tensor names carry their shape letters
(legend in ``lmjax/axes.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax import axes

if TYPE_CHECKING:
  from lmjax.models.transformer import ModelConfig


def compiling_for_cpu() -> bool:
  """Whether the program being traced is for CPUs: the platform of the mesh in context (set by
  ``lmjax.sharding.activate``; ``lmjax.aot`` compiles for TPUs on a CPU-only host), else this process's
  default backend. The CPU-specific code paths below (``_cpu_matmul``, ``causal_attention_in_blocks``)
  must not go into a program for another platform."""
  device = jax.sharding.get_abstract_mesh().abstract_device  # None outside a mesh of real devices
  return (device.platform if device is not None else jax.default_backend()) == 'cpu'


def _constrain(x, names):
  """Logical sharding hint for an activation; a no-op outside a mesh context."""
  return nn.with_logical_constraint(x, names)


class Linear(nn.Module):
  """An einsum against one kernel (plus an optional bias), both logically named.

  ``equation`` uses the shape letters, e.g. ``'BLD,DHK->BLHK'``; the kernel is
  the second operand. The bias, if any, has the kernel's output dims
  (``bias_names``). Compute runs in ``dtype`` with the kernel cast from
  ``param_dtype``.
  """
  equation: str
  shape: tuple[int, ...]
  names: tuple[str | None, ...]
  bias_names: tuple[str | None, ...] | None = None
  std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.normal(self.std), self.names)
    kernel = self.param('kernel', init, self.shape, self.param_dtype)
    y = _flat_matmul(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.bias_names is not None:
      bias_shape = self.shape[-len(self.bias_names):]
      binit = nn.with_logical_partitioning(nn.initializers.zeros, self.bias_names)
      y = y + self.param('bias', binit, bias_shape, self.param_dtype).astype(self.dtype)
    return y


def _flat_matmul(equation: str, x, kernel):
  """``jnp.einsum(equation, x, kernel)`` as one 2-D matmul: [tokens, in] @ [in, out].

  The kernel's leading dims must be ``x``'s trailing ones, in order (every
  ``Linear`` here). Same products and sums as the einsum, but the backward pass's
  weight gradient is a plain 2-D dot contracting the token dim: with 3-D
  operands (two contracting dims, B and L), XLA:CPU transposes the activation
  gradient with a copy that also recomputes the fused elementwise backward
  (GELU's), and that copy took a quarter of the CPU step (docs/perf_notes.md).
  """
  lhs, rest = equation.split(',')
  rhs, out = rest.split('->')
  n = len([c for c in rhs if c in lhs])  # contracted dims
  assert lhs[-n:] == rhs[:n] and out == lhs[:-n] + rhs[n:], f'{equation}: not [.., in] x [in, out]'
  fan_in = math.prod(kernel.shape[:n])
  matmul = _cpu_matmul if compiling_for_cpu() else jnp.matmul
  y = matmul(x.reshape(-1, fan_in), kernel.reshape(fan_in, -1))
  return y.reshape(x.shape[:-n] + kernel.shape[n:])


@jax.custom_vjp
def _cpu_matmul(x_TI, w_IO):
  """``x @ w`` for XLA:CPU, whose weight gradient runs in YNNPACK rather than Eigen.

  The weight gradient ``x.T @ dy`` contracts the token dim, ``x``'s leading one. XLA
  folds the transpose into the dot, and XLA:CPU gives YNNPACK only dots whose left
  operand contracts its last dim; the rest run in Eigen, here at 55% of YNNPACK's
  speed (a third of the step's matmul time at nanoGPT's CPU shapes). Behind an
  optimization barrier the transpose stays a copy (a few microseconds) and the dot is
  YNNPACK's: the step is 4% faster (docs/perf_notes.md). Same products and sums.
  """
  return _cpu_dot(x_TI, w_IO)


def _cpu_matmul_fwd(x_TI, w_IO):
  return _cpu_dot(x_TI, w_IO), (x_TI, w_IO)


def _cpu_matmul_bwd(residuals, dy_TO):
  x_TI, w_IO = residuals
  if x_TI.dtype == jnp.float32:
    return _cpu_dot(dy_TO, w_IO.T), _cpu_dot(jax.lax.optimization_barrier(x_TI.T), dy_TO)
  return _cpu_dot(dy_TO, _transposed_copy(w_IO)), _cpu_dot(_transposed_copy(x_TI), dy_TO)


def _transposed_copy(x_AB):
  """``x.T`` as a row-major copy that XLA cannot fold back into the dot that reads it.

  YNNPACK's bf16 GEMM takes only [M, K] x [K, N] in row-major layout; XLA:CPU
  upcasts every other bf16 dot to an f32 one (its operand upcaster runs before
  layout assignment), 2.5x slower at the step's shapes on a Xeon with AMX. An
  optimization barrier on ``x.T`` alone keeps the transpose a column-major view
  (a bitcast); flattening it first forces the copy.
  """
  return _row_major(x_AB.T)


def _row_major(x):
  """``x`` as a row-major array of its own, so XLA cannot fold the transpose that made it into its reader."""
  return jax.lax.optimization_barrier(x.reshape(-1)).reshape(x.shape)


def _cpu_dot(a, b, equation: str | None = None, out_dtype=None):
  """``a @ b`` (or ``jnp.einsum(equation, a, b)``) on XLA:CPU; 16-bit operands accumulate into f32.

  A bf16 x bf16 -> bf16 dot runs in a slow generic kernel on XLA:CPU, while
  bf16 x bf16 -> f32 runs in YNNPACK's bf16 GEMM (AMX or AVX512-BF16 where the
  CPU has them): 3-4x faster at the step's shapes on a Xeon with AMX. With
  ``_transposed_copy`` in the backward pass the bf16 step at nanoGPT's
  shakespeare_char shapes ran 1.78x faster than the f32 one there (2.1-2.3x with
  ``_attention_16bit``), against 0.94x with bf16 results (docs/perf_notes.md). The result is rounded back to the
  operands' dtype (or to ``out_dtype``), so callers see the dtypes they did before.
  """
  kw = {} if a.dtype == jnp.float32 else {'preferred_element_type': jnp.float32}
  out = jnp.matmul(a, b, **kw) if equation is None else jnp.einsum(equation, a, b, **kw)
  return out.astype(out_dtype or a.dtype)


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def gelu(x, approximate: bool):
  """GELU: the tanh approximation, or exact as ``x * Phi(x)`` written with erf (PyTorch's formula).

  ``jax.nn.gelu(approximate=False)`` evaluates Phi through erfc, whose XLA:CPU
  lowering (two polynomials, an exp and selects) made the exact GELU a fifth of
  the CPU step; erf is one rational polynomial: 2.4x faster forward, 1.5x
  backward, within 1e-6 of it (docs/perf_notes.md).

  16-bit inputs are computed in f32 and rounded back: on XLA:CPU the bf16 GELU
  (its forward and autodiff's backward) ran 2.8x slower than the same in f32,
  its erf and exp expanded op by op in bf16 (docs/perf_notes.md).
  """
  x32 = x.astype(jnp.float32)
  if approximate:
    return nn.gelu(x32, approximate=True).astype(x.dtype)
  return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))).astype(x.dtype)


class Norm(nn.Module):
  """RMSNorm or LayerNorm (with or without its bias) over the last dim; statistics in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,))
    if cfg.norm == 'rmsnorm':
      return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        scale_init=scale_init, name='rmsnorm')(x_BLD)
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,))
    return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        use_bias=cfg.norm_bias, scale_init=scale_init, bias_init=bias_init,
                        name='layernorm')(x_BLD)


def apply_rope(x_BLHK, positions_BL, base: float):
  """Rotary position embedding (rotate-half form), computed in float32."""
  half = x_BLHK.shape[-1] // 2
  inv_freq_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BLK = positions_BL[..., None].astype(jnp.float32) * inv_freq_K
  sin_BL1K, cos_BL1K = jnp.sin(angle_BLK)[:, :, None, :], jnp.cos(angle_BLK)[:, :, None, :]
  x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BL1K - x2 * sin_BL1K, x2 * cos_BL1K + x1 * sin_BL1K], axis=-1)
  return out.astype(x_BLHK.dtype)


def attention_mask(segment_ids_BL, causal: bool):
  """[B, 1, L, L] bool: same packed segment, and (if causal) not in the future.

  Padding (segment 0) attends only to padding, so no row is fully masked.
  """
  mask_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
  if causal:
    length = segment_ids_BL.shape[1]
    mask_BLL &= jnp.tril(jnp.ones((length, length), dtype=bool))[None]
  return mask_BLL[:, None]


ATTENTION_BLOCK = 128  # query rows per block of causal_attention_in_blocks


def causal_attention_in_blocks(q_BLHK, k_BLHK, v_BLHK, mask_B1LL, block: int = ATTENTION_BLOCK):
  """Causal attention that skips the key blocks no query of a block may see (CPU).

  Queries go in blocks of ``block`` rows; block ``i`` attends to keys
  ``[0, end of block i)`` only, under the matching slice of the full mask
  (causal and packed-segment terms alike). A skipped key is one the causal mask
  would have given weight exp(-large) = 0, so every output is the one
  ``jax.nn.dot_product_attention`` computes (up to float summation order), for
  about (n + 1) / 2n of its score and softmax work with n blocks. XLA:CPU has no
  fused attention; at sequence 256 the full L x L scores and their softmax were
  a third of the step (docs/perf_notes.md).
  """
  length = q_BLHK.shape[1]
  out = []
  for start in range(0, length, block):
    end = min(start + block, length)
    out.append(_xla_attention(q_BLHK[:, start:end], k_BLHK[:, :end], v_BLHK[:, :end],
                              mask_B1LL[:, :, start:end, :end]))
  return out[0] if len(out) == 1 else jnp.concatenate(out, axis=1)


def _xla_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS):
  """``jax.nn.dot_product_attention(implementation='xla')``'s arithmetic: f32 scores and softmax (and, for
  16-bit inputs, every dot on 16-bit operands accumulated in f32: ``_attention_16bit``)."""
  if q_BLHK.dtype != jnp.float32:
    return _attention_16bit(q_BLHK, k_BSHK, v_BSHK, mask_B1LS)
  logits_BHLS = jnp.einsum('BLHK,BSHK->BHLS', q_BLHK, k_BSHK)
  probs_BHLS = _masked_softmax(logits_BHLS, mask_B1LS, q_BLHK.shape[-1])
  return jnp.einsum('BHLS,BSHK->BLHK', probs_BHLS, v_BSHK)


def _masked_softmax(logits_BHLS, mask_B1LS, head_dim: int):
  """Softmax over keys of the f32 scores scaled by 1/sqrt(head_dim), masked keys at -0.7 * f32 max."""
  logits_BHLS *= jnp.array(head_dim ** -0.5, jnp.float32)
  logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, -0.7 * jnp.finfo(jnp.float32).max)
  return jax.nn.softmax(logits_BHLS, axis=-1)


def _heads_first(x_BLHK):
  return _row_major(x_BLHK.transpose(0, 2, 1, 3))


def _swap(x):
  """The last two dims swapped, as a row-major copy (``_row_major``)."""
  return _row_major(jnp.swapaxes(x, -1, -2))


def _attention_probs(q_BHLK, kT_BHKS, mask_B1LS):
  """Softmax of the scaled, masked scores, in f32 (the scores a 16-bit dot accumulated in f32)."""
  logits_BHLS = _cpu_dot(q_BHLK, kT_BHKS, 'BHLK,BHKS->BHLS', out_dtype=jnp.float32)
  return _masked_softmax(logits_BHLS, mask_B1LS, q_BHLK.shape[-1])


@jax.custom_vjp
def _attention_16bit(q_BLHK, k_BSHK, v_BSHK, mask_B1LS):
  """``_xla_attention`` for 16-bit inputs on XLA:CPU, every dot [M, K] x [K, N] on row-major 16-bit operands.

  YNNPACK's bf16 GEMM (AMX on a Xeon that has it) takes only that form; XLA:CPU
  upcasts the other bf16 dots to f32 ones (``_transposed_copy``), which left the
  scores, probabilities x values and their gradients at ~50 GFLOP/s, a fifth of
  the Linear layers' bf16 dots, in the bf16 step at nanoGPT's shakespeare_char
  shapes (docs/perf_notes.md). So the heads go first in row-major copies, and the
  backward pass is written out with its transposes copied, as ``_cpu_matmul``'s.
  Scores, softmax and its gradient stay f32, as in ``jax.nn.dot_product_attention``.
  """
  return _attention_16bit_fwd(q_BLHK, k_BSHK, v_BSHK, mask_B1LS)[0]


def _attention_16bit_fwd(q_BLHK, k_BSHK, v_BSHK, mask_B1LS):
  q_BHLK, v_BHSK = _heads_first(q_BLHK), _heads_first(v_BSHK)
  kT_BHKS = _row_major(k_BSHK.transpose(0, 2, 3, 1))  # one copy, not heads-first then swapped
  probs_BHLS = _attention_probs(q_BHLK, kT_BHKS, mask_B1LS)
  out_BHLK = _cpu_dot(probs_BHLS.astype(v_BHSK.dtype), v_BHSK, 'BHLS,BHSK->BHLK')
  return out_BHLK.transpose(0, 2, 1, 3), (q_BHLK, kT_BHKS, v_BHSK, probs_BHLS, mask_B1LS)


def _attention_16bit_bwd(residuals, dout_BLHK):
  q_BHLK, kT_BHKS, v_BHSK, probs_BHLS, mask_B1LS = residuals
  dtype = q_BHLK.dtype
  dout_BHLK = _heads_first(dout_BLHK.astype(dtype))
  dv_BHSK = _cpu_dot(_swap(probs_BHLS.astype(dtype)), dout_BHLK, 'BHSL,BHLK->BHSK')
  dprobs_BHLS = _cpu_dot(dout_BHLK, _swap(v_BHSK), 'BHLK,BHKS->BHLS', out_dtype=jnp.float32)
  # softmax's VJP, then the scale (the masked scores are constants: their probabilities are 0)
  dlogits_BHLS = probs_BHLS * (dprobs_BHLS - jnp.sum(dprobs_BHLS * probs_BHLS, axis=-1, keepdims=True))
  dlogits_BHLS = (dlogits_BHLS * jnp.array(q_BHLK.shape[-1] ** -0.5, jnp.float32)).astype(dtype)
  dq_BHLK = _cpu_dot(dlogits_BHLS, _swap(kT_BHKS), 'BHLS,BHSK->BHLK')
  dk_BHSK = _cpu_dot(_swap(dlogits_BHLS), q_BHLK, 'BHSL,BHLK->BHSK')
  to_BLHK = lambda x: x.transpose(0, 2, 1, 3)
  return to_BLHK(dq_BHLK), to_BLHK(dk_BHSK), to_BLHK(dv_BHSK), None


_attention_16bit.defvjp(_attention_16bit_fwd, _attention_16bit_bwd)


class Attention(nn.Module):
  """Multi-head self-attention through ``jax.nn.dot_product_attention``.

  With ``decode=True`` keys and values go to a 'cache' collection sized by the
  input used at cache creation; each call appends its tokens (a whole prompt or
  one token) and attends causally to everything cached so far.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_B1LS, *, decode: bool):
    cfg = self.cfg
    D, H, K = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    bias = (axes.HEADS, axes.KV) if cfg.use_bias else None
    proj = dict(equation='BLD,DHK->BLHK', shape=(D, H, K), names=(axes.EMBED, axes.HEADS, axes.KV),
                bias_names=bias, std=cfg.init_std, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    q_BLHK = Linear(**proj, name='query')(x_BLD)
    k_BLHK = Linear(**proj, name='key')(x_BLD)
    v_BLHK = Linear(**proj, name='value')(x_BLD)
    if cfg.positions == 'rope':
      q_BLHK = apply_rope(q_BLHK, positions_BL, cfg.rope_base)
      k_BLHK = apply_rope(k_BLHK, positions_BL, cfg.rope_base)
    q_BLHK = _constrain(q_BLHK, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS, None))

    if decode:
      k_BLHK, v_BLHK, mask_B1LS = self._update_cache(k_BLHK, v_BLHK)

    if cfg.causal and not decode and cfg.attention_impl == 'auto' and compiling_for_cpu():
      out_BLHK = causal_attention_in_blocks(q_BLHK, k_BLHK, v_BLHK, mask_B1LS)
    else:
      out_BLHK = jax.nn.dot_product_attention(
          q_BLHK, k_BLHK, v_BLHK, mask=mask_B1LS,
          implementation=None if cfg.attention_impl == 'auto' else cfg.attention_impl)
    out_bias = (axes.EMBED,) if cfg.use_bias else None
    # GPT-2 style scaled init of residual projections keeps the residual stream's variance flat.
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    return Linear('BLHK,HKD->BLD', (H, K, D), (axes.HEADS, axes.KV, axes.EMBED), out_bias, out_std,
                  cfg.compute_dtype, cfg.weight_dtype, name='out')(out_BLHK)

  def _update_cache(self, k_BLHK, v_BLHK):
    """Append this call's keys/values; return the full cache and its causal mask."""
    initialized = self.has_variable('cache', 'cached_key')
    key = self.variable('cache', 'cached_key', jnp.zeros, k_BLHK.shape, k_BLHK.dtype)
    value = self.variable('cache', 'cached_value', jnp.zeros, v_BLHK.shape, v_BLHK.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
    length = k_BLHK.shape[1]
    if not initialized:  # cache creation: plain causal attention over the input
      return k_BLHK, v_BLHK, attention_mask(jnp.ones(k_BLHK.shape[:2], jnp.int32), True)
    start = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BLHK, (0, start, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BLHK, (0, start, 0, 0))
    index.value = start + length
    query_pos_L = start + jnp.arange(length)
    key_pos_S = jnp.arange(key.value.shape[1])
    mask_B1LS = (key_pos_S[None, :] <= query_pos_L[:, None])[None, None]
    return key.value, value.value, mask_B1LS


class Mlp(nn.Module):
  """Position-wise feed-forward: GELU (tanh or exact) or SwiGLU."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    D, F = cfg.embed_dim, cfg.mlp_dim
    kw = dict(std=cfg.init_std, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    up = dict(equation='BLD,DF->BLF', shape=(D, F), names=(axes.EMBED, axes.MLP),
              bias_names=(axes.MLP,) if cfg.use_bias else None, **kw)
    h_BLF = Linear(**up, name='wi')(x_BLD)
    if cfg.activation == 'swiglu':
      h_BLF = nn.silu(h_BLF) * Linear(**up, name='wi_gate')(x_BLD)
    else:
      h_BLF = gelu(h_BLF, approximate=cfg.activation == 'gelu')
    h_BLF = _constrain(h_BLF, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP))
    kw['std'] = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    return Linear('BLF,FD->BLD', (F, D), (axes.MLP, axes.EMBED),
                  (axes.EMBED,) if cfg.use_bias else None, name='wo', **kw)(h_BLF)


class Block(nn.Module):
  """Transformer block. Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)); post-norm (BERT, the
  original Transformer): norm(x + attn(x)), then norm(x + mlp(x)). Same parameters either way.

  The mode flags are fields, not call arguments, so ``nn.remat`` and ``nn.scan``
  see only arrays; ``scanned`` returns ``(x, None)``, the (carry, output) pair scan wants.
  """
  cfg: ModelConfig
  deterministic: bool = True
  decode: bool = False
  scanned: bool = False

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_B1LS):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    attn_norm, mlp_norm = Norm(cfg, name='attn_norm'), Norm(cfg, name='mlp_norm')
    pre = cfg.norm_position == 'pre'
    h_BLD = Attention(cfg, name='attn')(attn_norm(x_BLD) if pre else x_BLD, positions_BL, mask_B1LS,
                                        decode=self.decode)
    x_BLD = x_BLD + drop(h_BLD) if pre else attn_norm(x_BLD + drop(h_BLD))
    h_BLD = Mlp(cfg, name='mlp')(mlp_norm(x_BLD) if pre else x_BLD)
    x_BLD = x_BLD + drop(h_BLD) if pre else mlp_norm(x_BLD + drop(h_BLD))
    x_BLD = _constrain(x_BLD, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
    return (x_BLD, None) if self.scanned else x_BLD


class MlmTransform(nn.Module):
  """BERT's masked-LM head transform: dense D -> D (with bias), activation, norm.

  The Transformer applies it before the (tied) output projection, whose bias it adds.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    D = cfg.embed_dim
    # Laid out like the MLP's output projection (input dim split by tensor parallelism, output by
    # FSDP), so the bias is sharded too. (The transposed layout, (EMBED, MLP), gave wrong
    # gradients on a (2, 2, 2) CPU mesh with jax 0.10.2: tests/test_sharding.py catches it.)
    h_BLD = Linear('BLD,DE->BLE', (D, D), (axes.MLP, axes.EMBED), (axes.EMBED,), cfg.init_std,
                   cfg.compute_dtype, cfg.weight_dtype, name='dense')(x_BLD)
    h_BLD = gelu(h_BLD, approximate=cfg.activation == 'gelu')
    return Norm(cfg, name='norm')(h_BLD)
