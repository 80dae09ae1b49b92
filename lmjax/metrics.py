"""Host-side metric handling: (sum, count) reduction, TensorBoard + metrics.jsonl, throughput, MFU, progress."""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np
import tqdm


def summarize(metric_sums) -> dict[str, float]:
  """{name: (sum, count)} (host or device arrays) -> {name: sum / count}."""
  return {k: float(np.asarray(s)) / max(float(np.asarray(c)), 1e-12) for k, (s, c) in metric_sums.items()}


def accumulate(total, metric_sums):
  """Adds (sum, count) pairs on the host."""
  out = dict(total)
  for k, (s, c) in metric_sums.items():
    s0, c0 = out.get(k, (0.0, 0.0))
    out[k] = (s0 + float(np.asarray(s)), c0 + float(np.asarray(c)))
  return out


class MetricWriter:
  """Writes scalars to TensorBoard event files and one JSON object per step to metrics.jsonl."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self._enabled = enabled
    if not enabled:
      return
    tensorboardX = _import_tensorboardx()  # lazily: only the writing process needs it
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    if resume_step is not None:
      _truncate_jsonl(self.jsonl_path, resume_step)
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')

  def write(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')
    self._jsonl.flush()

  def close(self):
    if self._enabled:
      self._tb.close()
      self._jsonl.close()


def _import_tensorboardx():
  """tensorboardX, without the PyTorch import its writer module makes for a type hint.

  ``tensorboardX.writer`` tries ``import torch`` only to name ``torch.Tensor`` in its
  annotations (and carries on without it); where PyTorch is installed that import was
  2.0 s of every run's start-up. lmjax logs floats. A process that has PyTorch loaded
  already imports tensorboardX as usual.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules['torch'] = None  # for this import, `import torch` raises ImportError
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return tensorboardX


def _truncate_jsonl(path: str, step: int):
  """On resume, drop records past the restored step: they are about to be re-run."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(tmp, path)


def report(text: str, results: dict, json_path: str | None):
  """A CLI's results: ``text`` on stdout and, where ``json_path`` is given, ``results`` as JSON there."""
  print(text)
  if json_path:
    with open(json_path, 'w', encoding='utf-8') as out:
      json.dump(results, out, indent=2)


class Throughput:
  """Training tokens per second over the steps finished between ``update`` calls, not counting ``exclude``d time.

  ``update`` takes the last step known to be finished, which need not be the step being logged: the host
  may run one step ahead of the device (async dispatch), or not (a dispatch that ran its step before
  returning). Where no step has finished since the last call, it returns the last rate.
  """

  def __init__(self, step: int):
    self._step, self._time, self._rate = step, time.perf_counter(), 0.0

  def exclude(self, seconds: float):
    """Leaves out time spent on other work (evaluation, checkpointing)."""
    self._time += seconds

  def update(self, finished_step: int, tokens_per_step: int) -> float:
    now = time.perf_counter()
    if finished_step > self._step:
      self._rate = (finished_step - self._step) * tokens_per_step / max(now - self._time, 1e-9)
      self._step, self._time = finished_step, now
    return self._rate


# Vendor figures by jax ``device_kind`` prefix, the first match counting (a v5p reports 'TPU v5', a v5e
# 'TPU v5 lite'; an H100 SXM 'NVIDIA H100 80GB HBM3', the PCIe card 'NVIDIA H100 PCIe'): dense bf16 peak
# FLOP/s per device, and HBM per TPU chip in GiB.
_PEAK_FLOPS = (
    ('NVIDIA H200 NVL', 835e12), ('NVIDIA H200', 989e12), ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H100 NVL', 835e12), ('NVIDIA H100', 989e12), ('NVIDIA GH200', 989e12), ('NVIDIA B200', 2250e12),
    ('NVIDIA A100', 312e12), ('NVIDIA L4', 121e12),
    ('NVIDIA A10', 125e12), ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12), ('TPU v5', 459e12), ('TPU v4', 275e12), ('TPU v3', 123e12),
)
_HBM_GIB = (('TPU v6 lite', 32), ('TPU v5p', 95), ('TPU v5 lite', 16), ('TPU v5', 95), ('TPU v4', 32))


def _datasheet(table, device):
  kind = getattr(device, 'device_kind', '')
  return next((value for prefix, value in table if kind.startswith(prefix)), None)


def peak_flops(device) -> float | None:
  """The device's dense bf16 peak FLOP/s, or None where unknown (CPUs: see ``measure_matmul_flops``)."""
  return _datasheet(_PEAK_FLOPS, device)


def hbm_bytes(device) -> int | None:
  """A TPU chip's HBM in bytes (the datasheet's; XLA's usable limit is a little lower), or None."""
  gib = _datasheet(_HBM_GIB, device)
  return None if gib is None else gib * 2**30


def measure_matmul_flops(size: int = 1024, repeats: int = 4, trials: int = 5) -> float:
  """Best f32 FLOP/s of a jitted ``size`` x ``size`` matmul on the default device: the practical ceiling.

  Best of ``trials`` (not the mean) because other processes only ever slow a trial
  down. 1024 is the size that came out fastest on a 2-core CPU (512 ties; 2048
  falls out of cache); see docs/perf_notes.md.
  """
  import jax  # pylint: disable=g-import-not-at-top  (host-side module: jax only for this probe)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (size, size), jnp.float32) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
  matmul(a, b).block_until_ready()
  best = 0.0
  for _ in range(trials):
    start = time.perf_counter()
    for _ in range(repeats):
      matmul(a, b).block_until_ready()
    best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
  return best


@functools.cache
def _cpu_ceiling(size: int, repeats: int, trials: int) -> float:
  return measure_matmul_flops(size, repeats, trials)


def peak_flops_per_device(device, override: float = 0.0, quick: bool = False) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where it comes from): ``override``, the datasheet (GPU/TPU) or, on CPU, the
  matmul ceiling measured now (once per process; ``quick``: a 0.1 s probe instead of 0.3 s).

  On CPU the ceiling is that of the whole processor (one jitted matmul uses every
  core), shared equally by the process's CPU devices (one per core when
  ``sharding.split_cpu`` split it).
  """
  if override:
    return override, 'given (peak_flops)'
  peak = peak_flops(device)
  if peak:
    return peak, f'datasheet dense bf16 peak of {device.device_kind} (lmjax.metrics.peak_flops)'
  if device.platform == 'cpu':
    import jax  # pylint: disable=g-import-not-at-top  (host-side module: jax only for this probe)
    cpu_devices = len(jax.local_devices(backend='cpu'))
    ceiling = _cpu_ceiling(*((1024, 2, 3) if quick else (1024, 4, 5)))
    return ceiling / cpu_devices, (f'measured f32 matmul ceiling of the CPU, {ceiling / 1e9:.1f} GFLOP/s '
                                   f'(lmjax.metrics.measure_matmul_flops), / {cpu_devices} CPU device(s)')
  return None, f'unknown peak for {device.device_kind}: no MFU'


def flops_scalars(tokens_per_sec: float, flops_per_token: float, num_devices: int,
                  peak_per_device: float | None) -> dict[str, float]:
  """Achieved model TFLOP/s per device and, where the peak is known, model FLOPs utilisation."""
  per_device = tokens_per_sec * flops_per_token / num_devices
  out = {'tflops_per_device': per_device / 1e12}
  if peak_per_device:
    out['mfu'] = per_device / peak_per_device
  return out


def progress_bar(start: int, total: int, enabled: bool):
  """Console progress with step, ETA and a postfix for loss and tokens/s."""
  return tqdm.tqdm(total=total, initial=start, disable=not enabled, unit='step', dynamic_ncols=True,
                   smoothing=0.1, mininterval=1.0)
