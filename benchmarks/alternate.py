"""Probes of the CPU training step, A/B in one process: every variant compiled once, then timed in turns.

  python benchmarks/alternate.py --variants=lmjax,no_psum,lmjax --rounds=50
  python benchmarks/alternate.py --variants='lmjax,xla:xla_cpu_enable_fast_min_max=true'   # any XLA compile option
  python benchmarks/alternate.py --variants='lmjax,config:train.grad_accum_steps=8'  # any config key
  python benchmarks/alternate.py --vs_one_core      # the 2-device step against one pinned core on half the batch

On this shared machine the speed of a process moves by +-15% from one run to the
next, so variants timed in separate processes (``benchmarks/ablations.py``) need
large effects. Here each variant is built and compiled in one process, then every
round runs each variant for ``--steps`` synchronised steps (order reversed every
other round) and keeps its fastest; a variant's ratio is the median over rounds of
its time over the first variant's in the same round. Listing the baseline twice
shows the noise floor (two identical variants came out 1-3% apart over 40 rounds;
with 8 rounds the same variants moved by up to 6% between runs, so keep the default).

A variant patches lmjax (or passes XLA options) while its step is built and
compiled, and puts everything back after; a few only change how the step runs.
Probes (``no_psum``, ``no_finite_check``, ``sgd_update``) train differently and
are there to bound what a part of the step costs.

``--vs_one_core`` compares the 2-device step (both cores, one process) with a
second process pinned to one core that trains one device on half the batch; the
two take turns in 2-second windows, so the ratio says what running two devices
in one process costs over one core's work alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO, os.path.dirname(os.path.abspath(__file__))):
  if path not in sys.path:
    sys.path.insert(0, path)
import ablations  # pylint: disable=g-import-not-at-top,wrong-import-position  (benchmarks/, the script's dir)
import interleave  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {
    'lmjax': 'as shipped',
    'no_psum': 'probe: per-device gradients not summed (no all-reduce; trains each device alone)',
    'optax_skip': "the NaN/inf skip and clipping as optax's apply_if_finite and clip_by_global_norm (before 2026-12-02)",
    'no_finite_check': "probe: the optimizer without its NaN/inf skip (optim.skip_nonfinite)",
    'finite_by_select': "the NaN/inf skip made with jnp.where selects instead of a lax.cond",
    'sgd_update': 'probe: plain SGD in place of AdamW and clipping (finite check kept)',
    'apply_in_cond': "the NaN/inf skip's lax.cond returns the new parameters (apply_updates inside the branch)",
    'scores_vjp_ynn': "attention's dK = dS^T Q with dS^T copied behind an optimization barrier (YNNPACK, not Eigen)",
    'dy_transpose': "weight gradients as (dy^T x)^T where dy and the gradient are smaller than x (the MLP's wo)",
    'jax_gelu': "exact GELU through jax.nn.gelu (erfc), not layers.gelu's erf",
    'eigen_weight_grads': "Linear's weight gradient as XLA folds it (an Eigen dot), not layers._cpu_matmul's",
    'start_barrier': 'a scalar psum before the forward pass, so both devices start the step together',
    'pinned_pool': "XLA's intra-op pool threads pinned one per core while the step runs",
    'no_eigen_threads': 'XLA option xla_cpu_multi_thread_eigen=false',
    'no_parallel_tasks': "compiled while the process may use one core: XLA's loop fusions not split in 2 tasks",
    'ynn_dot': 'XLA option xla_cpu_experimental_ynn_fusion_type=dot',
    'ynn_individual_dot': 'XLA option xla_cpu_experimental_ynn_fusion_type=individual_dot',
    'ynn_eltwise': 'XLA option xla_cpu_experimental_ynn_fusion_type=eltwise',
    'ynn_reduce': 'XLA option xla_cpu_experimental_ynn_fusion_type=reduce',
    'bf16': "model.dtype='bfloat16': bf16 compute, f32 parameters (CPU dots accumulate in f32: layers._cpu_dot)",
    'bf16_out_dots': "model.dtype='bfloat16' with bf16 x bf16 -> bf16 CPU dots (as before 2026-12-03, but with "
                     "layers._transposed_copy's copies)",
    'bf16_folded_transposes': "model.dtype='bfloat16', Linear's backward dots on x.T / w.T views, which XLA "
                              'upcasts to f32 dots (no layers._transposed_copy)',
    'f32_row_major_attention': 'f32 attention through layers._attention_16bit (heads-first row-major copies, '
                               'its written-out backward) in place of the einsums on [B, L, H, K] operands',
    'bf16_gelu': "model.dtype='bfloat16', GELU computed in bf16 (before 2026-12-03: no f32 in layers.gelu)",
    'bf16_upcast_attention': "model.dtype='bfloat16', 16-bit attention as einsums on [B, L, H, K] operands, "
                             'which XLA upcasts to f32 dots (before 2026-12-03: no layers._attention_16bit)',
}

_CONFIG = {  # variants that change the config (as `lmjax.main --config.KEY=VALUE` would)
    v: {'model.dtype': 'bfloat16'} for v in ('bf16', 'bf16_out_dots', 'bf16_folded_transposes', 'bf16_upcast_attention',
                                             'bf16_gelu')}

_ALIASES = {  # named XLA-option variants, in the xla:NAME=VALUE form
    'no_eigen_threads': 'xla:xla_cpu_multi_thread_eigen=false',
    'ynn_dot': 'xla:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT',
    'ynn_individual_dot': 'xla:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
    'ynn_eltwise': 'xla:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE',
    'ynn_reduce': 'xla:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE',
}


_ABLATION_PATCHES = {  # variants that are ablations._patch's, by the lmjax.models.layers name it replaces
    'jax_gelu': 'gelu',
    'eigen_weight_grads': '_cpu_matmul',
}


def _value(text: str):
  """An option's value as given on the command line: bool or int where it reads so, else the string."""
  return {'true': True, 'false': False}.get(text.lower(), int(text) if text.lstrip('-').isdigit() else text)


def _options(variant: str, prefix: str) -> dict | None:
  """``PREFIX:NAME=VALUE[;NAME=VALUE]`` as {NAME: VALUE}; None where ``variant`` has another prefix."""
  if not variant.startswith(prefix + ':'):
    return None
  return {name: _value(value) for name, _, value in (item.partition('=') for item in variant[len(prefix) + 1:].split(';'))}


def _xla_option(variant: str) -> dict | None:
  """The compile options of ``variant``, ``xla:NAME=VALUE[;NAME=VALUE]`` or a name in ``_ALIASES`` (any XLA
  option); None for the other variants."""
  return _options(_ALIASES.get(variant, variant), 'xla')


def _config_change(variant: str) -> dict | None:
  """The config keys ``variant`` sets, ``config:KEY=VALUE[;KEY=VALUE]`` (as ``lmjax.main --config.KEY=VALUE``
  would) or a name in ``_CONFIG``; None for the other variants."""
  return _CONFIG.get(variant) or _options(variant, 'config')


def _check_options(variant: str):
  """Exits with one line, before anything is built, when XLA rejects ``variant``'s options."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=_xla_option(variant))
  except Exception as e:  # pylint: disable=broad-except  (XLA's error type varies by version)
    sys.exit(f"error: --variants={variant}: XLA says {str(e).splitlines()[0]!r}; fix the option's name or value")


def _changed(config, variant: str):
  """A locked copy of ``config`` with ``variant``'s keys set (a misspelt key raises KeyError, as in lmjax.main)."""
  config = config.copy_and_resolve_references()
  config.lock()
  config.update_from_flattened_dict(_config_change(variant))
  return config


def _check_config(variant: str, config):
  """Exits with one line, before anything is built, when ``variant``'s config keys or values do not fit."""
  try:
    _changed(config, variant)
  except (KeyError, TypeError, ValueError) as e:
    sys.exit(f"error: --variants={variant}: {e}; name an existing config key (configs/*.py) with a value of its type")


def _what(variant: str) -> str:
  for prefix, what in (('xla:', 'XLA options'), ('config:', 'config')):
    if variant.startswith(prefix):
      return f'{what} {variant[len(prefix):]}'
  return VARIANTS[variant]


@contextlib.contextmanager
def _setattr(obj, name, value):
  saved = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, saved)


@contextlib.contextmanager
def _finite_skip(replace):
  """lmjax's optimizer with ``replace(inner, skip_nonfinite)`` where ``optim.make_optimizer`` calls
  ``optim.skip_nonfinite(inner)``: the variant gets lmjax's own chain, whatever it is. The chain's
  clipping reads the gradient norm as the extra argument ``grad_norm``."""
  from lmjax import optim  # pylint: disable=g-import-not-at-top
  plain = optim.skip_nonfinite
  with _setattr(optim, 'skip_nonfinite', lambda inner: replace(inner, plain)):
    yield


def _no_finite_check(inner, plain):
  import optax  # pylint: disable=g-import-not-at-top

  def update(updates, state, params=None):
    updates, inner_state = inner.update(updates, state.inner_state, params, grad_norm=optax.tree.norm(updates))
    return updates, state._replace(inner_state=inner_state)
  return optax.GradientTransformation(plain(inner).init, update)


def _finite_by_select(inner, plain):
  """skip_nonfinite's state and outcome, chosen elementwise."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from lmjax import optim  # pylint: disable=g-import-not-at-top

  def update(updates, state, params=None):
    grad_norm = optax.tree.norm(updates)
    finite = jnp.isfinite(grad_norm)
    new_updates, inner_state = inner.update(updates, state.inner_state, params, grad_norm=grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)
    return (jax.tree.map(lambda u: jnp.where(finite, u, 0), new_updates),
            optim.skip_state(state, finite, jax.tree.map(keep, inner_state, state.inner_state)))
  return optax.GradientTransformation(plain(inner).init, update)


@contextlib.contextmanager
def _sgd_update():
  """benchmarks/ablations.py's sgd_update probe, undone afterwards."""
  from lmjax import optim  # pylint: disable=g-import-not-at-top
  with _setattr(optim, 'make_optimizer', optim.make_optimizer):
    ablations._patch_optimizer('sgd_update')  # pylint: disable=protected-access
    yield


@contextlib.contextmanager
def _apply_in_cond():
  """``steps.train_step`` with the NaN/inf skip's cond around the update and its application."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from lmjax import optim, steps  # pylint: disable=g-import-not-at-top
  inner = {}

  def keep_inner(tx, plain):
    inner['tx'] = tx
    return plain(tx)

  def train_step(state, batch, rng, *, loss_fn, tx, grad_accum_steps=1, per_device_grads=False):
    del tx
    grads_fn = steps._per_device_grads_and_metrics if per_device_grads else steps._grads_and_metrics  # pylint: disable=protected-access
    grads, metrics = grads_fn(loss_fn, state.params, batch, jax.random.fold_in(rng, state.step), grad_accum_steps)
    s = state.opt_state
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm)

    def update(_):
      updates, inner_state = inner['tx'].update(grads, s.inner_state, state.params, grad_norm=grad_norm)
      return optax.apply_updates(state.params, updates), inner_state
    params, inner_state = jax.lax.cond(finite, update, lambda _: (state.params, s.inner_state), None)
    opt_state = optim.skip_state(s, finite, inner_state)
    one = jnp.ones((), jnp.float32)
    metrics['grad_norm'] = (grad_norm, one)
    metrics['nonfinite_steps'] = (optim.nonfinite_count(opt_state).astype(jnp.float32), one)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  with _finite_skip(keep_inner), _setattr(steps, 'train_step', train_step):
    yield


@contextlib.contextmanager
def _scores_vjp_ynn():
  """``layers._xla_attention`` whose q.k scores have a VJP giving dK's dot a last-dim-contracting left operand."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lmjax.models import layers  # pylint: disable=g-import-not-at-top

  @jax.custom_vjp
  def scores(q_BLHK, k_BSHK):
    return jnp.einsum('BLHK,BSHK->BHLS', q_BLHK, k_BSHK)

  def fwd(q_BLHK, k_BSHK):
    return scores(q_BLHK, k_BSHK), (q_BLHK, k_BSHK)

  def bwd(res, ds_BHLS):
    q_BLHK, k_BSHK = res
    ds_BHSL = jax.lax.optimization_barrier(jnp.swapaxes(ds_BHLS, 2, 3))
    return (jnp.einsum('BHLS,BSHK->BLHK', ds_BHLS, k_BSHK), jnp.einsum('BHSL,BLHK->BSHK', ds_BHSL, q_BLHK))
  scores.defvjp(fwd, bwd)

  def attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS):
    logits_BHLS = scores(q_BLHK, k_BSHK) * jnp.array(q_BLHK.shape[-1] ** -0.5, jnp.float32)
    logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, -0.7 * jnp.finfo(jnp.float32).max)
    return jnp.einsum('BHLS,BSHK->BLHK', jax.nn.softmax(logits_BHLS, axis=-1), v_BSHK)
  with _setattr(layers, '_xla_attention', attention):
    yield


@contextlib.contextmanager
def _dy_transpose():
  """``layers._cpu_matmul`` with a backward rule that transposes dy and the result, not x, when those copy less
  (its own rule otherwise)."""
  import jax  # pylint: disable=g-import-not-at-top
  from lmjax.models import layers  # pylint: disable=g-import-not-at-top
  shipped = layers._cpu_matmul  # pylint: disable=protected-access

  def bwd(res, dy_TO):
    x_TI, w_IO = res
    (t, i), o = x_TI.shape, w_IO.shape[1]
    if t * i <= t * o + i * o:
      return shipped.bwd(res, dy_TO)
    dw_OI = jax.lax.optimization_barrier(jax.lax.optimization_barrier(dy_TO.T) @ x_TI)
    return dy_TO @ w_IO.T, dw_OI.T
  # A new custom_vjp, not a new .bwd on the shipped one: JAX caches what it traced of that one.
  matmul = jax.custom_vjp(shipped.fun)
  matmul.defvjp(shipped.fwd, bwd)
  with _setattr(layers, '_cpu_matmul', matmul):
    yield


def _upcast_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS):
  """16-bit attention as layers._xla_attention computed it before layers._attention_16bit (autodiff's backward)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lmjax.models import layers  # pylint: disable=g-import-not-at-top
  logits_BHLS = jnp.einsum('BLHK,BSHK->BHLS', q_BLHK, k_BSHK, preferred_element_type=jnp.float32)
  logits_BHLS *= jnp.array(q_BLHK.shape[-1] ** -0.5, jnp.float32)
  logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, -0.7 * jnp.finfo(jnp.float32).max)
  probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSHK.dtype)
  return layers._cpu_dot(probs_BHLS, v_BSHK, 'BHLS,BSHK->BLHK')  # pylint: disable=protected-access


@contextlib.contextmanager
def building(variant: str):
  """What ``variant`` changes while its step is built and compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lmjax import steps  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    if variant == 'optax_skip':
      from lmjax import optim  # pylint: disable=g-import-not-at-top
      import optax  # pylint: disable=g-import-not-at-top
      stack.enter_context(_setattr(optim, 'skip_nonfinite', lambda inner: optax.apply_if_finite(inner, 2**30)))
      stack.enter_context(_setattr(optim, 'clip_by_given_norm', optax.clip_by_global_norm))
    elif variant == 'no_psum':
      stack.enter_context(_setattr(steps.jax.lax, 'psum', lambda x, axes: x))
    elif variant == 'no_finite_check':
      stack.enter_context(_finite_skip(_no_finite_check))
    elif variant == 'finite_by_select':
      stack.enter_context(_finite_skip(_finite_by_select))
    elif variant == 'sgd_update':
      stack.enter_context(_sgd_update())
    elif variant == 'apply_in_cond':
      stack.enter_context(_apply_in_cond())
    elif variant == 'scores_vjp_ynn':
      stack.enter_context(_scores_vjp_ynn())
    elif variant == 'dy_transpose':
      stack.enter_context(_dy_transpose())
    elif variant == 'bf16_out_dots':
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top

      def plain_dot(a, b, equation=None):
        return a @ b if equation is None else jnp.einsum(equation, a, b)
      stack.enter_context(_setattr(layers, '_cpu_dot', plain_dot))
    elif variant == 'bf16_folded_transposes':
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top
      stack.enter_context(_setattr(layers, '_transposed_copy', lambda x: jax.lax.optimization_barrier(x.T)))
    elif variant == 'f32_row_major_attention':
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top
      stack.enter_context(_setattr(layers, '_xla_attention', layers._attention_16bit))  # pylint: disable=protected-access
    elif variant == 'bf16_gelu':
      import math  # pylint: disable=g-import-not-at-top
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top

      def gelu_16bit(x, approximate):
        assert not approximate, 'bf16_gelu: the exact GELU only'
        return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
      stack.enter_context(_setattr(layers, 'gelu', gelu_16bit))
    elif variant == 'bf16_upcast_attention':
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top
      stack.enter_context(_setattr(layers, '_attention_16bit', _upcast_attention))
    elif variant in _ABLATION_PATCHES:  # benchmarks/ablations.py's, undone afterwards
      from lmjax.models import layers  # pylint: disable=g-import-not-at-top
      name = _ABLATION_PATCHES[variant]
      stack.enter_context(_setattr(layers, name, getattr(layers, name)))
      ablations._patch(variant)  # pylint: disable=protected-access
    elif variant == 'start_barrier':
      plain = steps._grads_and_metrics  # pylint: disable=protected-access

      def grads_and_metrics(loss_fn, params, batch, rng, grad_accum_steps):
        zero = jax.lax.psum(jnp.zeros((), jnp.int32), steps.BATCH_AXES)
        return plain(loss_fn, params, dict(batch, tokens=batch['tokens'] + zero), rng, grad_accum_steps)
      stack.enter_context(_setattr(steps, '_grads_and_metrics', grads_and_metrics))
    elif variant == 'no_parallel_tasks':  # XLA's parallel task assignment asks the affinity for its core count
      saved = os.sched_getaffinity(0)
      os.sched_setaffinity(0, {min(saved)})
      stack.callback(os.sched_setaffinity, 0, saved)
    yield


def _threads(name: str) -> list[int]:
  tids = []
  for tid in os.listdir('/proc/self/task'):
    with open(f'/proc/self/task/{tid}/comm', encoding='utf-8') as f:
      if f.read().strip() == name:
        tids.append(int(tid))
  return sorted(tids)


def running(variant: str):
  """Sets what ``variant`` changes while its steps run (thread placement), undoing the other variants'."""
  cores = sorted(os.sched_getaffinity(0))
  for i, tid in enumerate(_threads('tf_XLAEigen')):
    os.sched_setaffinity(tid, {cores[i % len(cores)]} if variant == 'pinned_pool' else cores)


def _step(config, variant: str):
  """[compiled step, state, device batches, rng, mesh] for ``variant``."""
  import jax  # pylint: disable=g-import-not-at-top
  from lmjax import bench, sharding  # pylint: disable=g-import-not-at-top
  vocab = bench.vocab_size(config)
  if _config_change(variant):
    config = _changed(config, variant)
  with building(variant):
    setup = bench.build(config, vocab)
    batches = [sharding.host_to_global(b, setup.mesh) for b in bench.random_batches(config, vocab, 4)]
    rng = jax.random.key(config.seed)
    with sharding.activate(setup.mesh):
      compiled = setup.train_fn.lower(setup.state, batches[0], rng).compile(
          compiler_options=_xla_option(variant))
  return [compiled, setup.state, batches, rng, setup.mesh]


def _timed(run, steps: int, first: int) -> float:
  """The fastest of ``steps`` synchronised steps of ``run`` (updated in place)."""
  import jax  # pylint: disable=g-import-not-at-top
  from lmjax import sharding  # pylint: disable=g-import-not-at-top
  compiled, state, batches, rng, mesh = run
  best = float('inf')
  with sharding.activate(mesh):
    for i in range(steps):
      start = time.perf_counter()
      state, metrics = compiled(state, batches[(first + i) % len(batches)], rng)
      jax.block_until_ready((state, metrics))
      best = min(best, time.perf_counter() - start)
  run[1] = state
  return best


def alternate(config, variants: list[str], rounds: int, steps: int) -> dict:
  from lmjax import sharding  # pylint: disable=g-import-not-at-top
  sharding.split_cpu_for(config)
  names = [f'{v}#{i}' if variants.count(v) > 1 else v for i, v in enumerate(variants)]
  copies = {}
  for n, v in zip(names, variants):  # a repeated variant is built again: its own state (the step donates it)
    copies[n] = _step(config, v)
    running(v)
    _timed(copies[n], 2, 0)  # warm-up: the first steps of a program run slow
    print(f'compiled {n}', flush=True)
  times = {n: [] for n in names}
  for r in range(rounds):
    order = list(zip(names, variants))
    for n, v in order if r % 2 == 0 else order[::-1]:
      running(v)
      times[n].append(_timed(copies[n], steps, r * steps))
  running('lmjax')
  base = names[0]
  return {n: {'variant': v, 'what': _what(v), 'median_ms': 1e3 * statistics.median(times[n]),
              'ratio': statistics.median(a / b for a, b in zip(times[n], times[base]))}
          for n, v in zip(names, variants)}


def _one_core_child(shape: dict, start: float, seconds: float, window: float, steps_out: str):
  """The pinned half-batch process of --vs_one_core: runs in the odd windows."""
  config = ablations.config_for(dict(shape, batch=shape['batch'] // 2), 'lmjax')
  config.mesh.cpu_devices = 1
  _windows(config, start, seconds, window, odd=True, out=steps_out)


def _windows(config, start: float, seconds: float, window: float, odd: bool, out: str | None = None):
  from lmjax import sharding  # pylint: disable=g-import-not-at-top
  sharding.split_cpu_for(config)
  run = _step(config, 'lmjax')
  _timed(run, 2, 0)
  times = []
  while time.time() < start:
    time.sleep(0.01)
  while time.time() < start + seconds:
    def mine():
      return int((time.time() - start) / window) % 2 == int(odd)
    if not mine():
      time.sleep(0.002)
      continue
    t = _timed(run, 1, len(times))
    if mine():  # the step ended in its own window
      times.append(t)
  if out:
    with open(out, 'w', encoding='utf-8') as f:
      json.dump(times, f)
  return times


def vs_one_core(shape: dict, seconds: float = 40.0, window: float = 2.0) -> dict:
  """The 2-device step's time against one pinned core's, on half the batch, in alternate windows."""
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    raise ValueError('--vs_one_core needs two cores')
  start = time.time() + 45  # both processes compile first
  out = os.path.join(tempfile.gettempdir(), f'alternate_one_core_{os.getpid()}.json')
  child = subprocess.Popen(
      ['taskset', '-c', str(cores[-1]), sys.executable, os.path.abspath(__file__),
       f'--shapes={_SHAPES.value}', f'--_child={start},{seconds},{window},{out}'])  # inherits main's huge-page restart
  two = _windows(ablations.config_for(shape, 'lmjax'), start, seconds, window, odd=False)
  child.wait()
  with open(out, encoding='utf-8') as f:
    one = json.load(f)
  os.remove(out)
  return {'two_devices_ms': 1e3 * statistics.median(two), 'one_core_half_batch_ms': 1e3 * statistics.median(one),
          'ratio': statistics.median(two) / statistics.median(one), 'steps': [len(two), len(one)]}


_SHAPES = flags.DEFINE_enum('shapes', 'nanogpt_cpu', list(ablations.SHAPES), 'Model and batch shapes.')
_VARIANTS = flags.DEFINE_list('variants', 'lmjax,lmjax', 'Variants, the first is the baseline: '
                               f'{", ".join(VARIANTS)}, or xla:NAME=VALUE[;NAME=VALUE] (XLA compile options) or '
                               'config:KEY=VALUE[;KEY=VALUE] (config keys)')
_ROUNDS = flags.DEFINE_integer('rounds', 40, 'Rounds over the variants.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Steps per variant per round (its fastest counts).')
_VS_ONE_CORE = flags.DEFINE_bool('vs_one_core', False, 'Compare the 2-device step with one pinned core instead.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
_CHILD = flags.DEFINE_string('_child', None, 'Internal: run as the pinned one-core process of --vs_one_core.')


def main(argv):
  del argv
  shape = ablations.SHAPES[_SHAPES.value]
  from lmjax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.reexec_with_hugepages(ablations.config_for(shape, 'lmjax'))  # as lmjax.main trains (the child inherits it)
  if _CHILD.value:
    start, seconds, window, out = _CHILD.value.split(',')
    _one_core_child(shape, float(start), float(seconds), float(window), out)
    return
  if _VS_ONE_CORE.value:
    try:
      r = vs_one_core(shape)
    except ValueError as e:
      sys.exit(f'error: {e}')
    print(f"{_SHAPES.value}: 2 devices, batch {shape['batch']}: {r['two_devices_ms']:.1f} ms/step; one pinned core, "
          f"batch {shape['batch'] // 2}: {r['one_core_half_batch_ms']:.1f} ms/step; ratio {r['ratio']:.3f}")
    results = {'vs_one_core': r}
  else:
    unknown = [v for v in _VARIANTS.value if v not in VARIANTS and not v.startswith(('xla:', 'config:'))]
    if unknown:
      raise app.UsageError(f'unknown variants {unknown}; choose from {", ".join(VARIANTS)}')
    config = ablations.config_for(shape, 'lmjax')
    for v in _VARIANTS.value:
      if v.startswith('xla:'):
        _check_options(v)
      if _config_change(v):
        _check_config(v, config)
    results = alternate(config, _VARIANTS.value, _ROUNDS.value, _STEPS.value)
    print(f"\n{_SHAPES.value}: {shape}; {_ROUNDS.value} rounds of {_STEPS.value} steps")
    print(f"| {'variant':22s} | ms/step (median) | vs {_VARIANTS.value[0]} | what")
    print(f"|{'-' * 24}|{'-' * 18}|{'-' * 10}|------")
    for n, r in results.items():
      print(f"| {n:22s} | {r['median_ms']:16.1f} | {r['ratio']:7.3f}x | {r['what']}")
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'shapes': shape, 'results': results, **interleave.run_record(sys.argv)}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
