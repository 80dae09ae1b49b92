"""Training-step benchmark: the step that training runs, timed, with FLOPs and MFU.

  python -m lmjax.bench --config=configs/gpt.py:small --config.data.seq_len=256 \
      --config.train.batch_size=64 [--steps=20 --warmup=3 --json=bench.json]

Builds the model, optimizer, state and jitted ``train_step`` the way
``lmjax.train`` does (same helpers, shardings and donation), feeds random token
batches of the config's shapes (no data pipeline, no checkpoints: only the step
is timed), compiles once and reports: step time (each step synchronised with
``block_until_ready``; the median), tokens/s, model FLOPs per token (see
``ModelConfig.flops_per_token``), achieved FLOP/s, MFU against the device peak
(CPU: a matmul ceiling measured here, ``metrics.measure_matmul_flops``; GPU/TPU:
the datasheet table ``metrics.peak_flops``), compile time and peak memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import statistics
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmjax import metrics as metrics_lib
from lmjax import cli, hostmem, objectives, sharding, train
from lmjax import state as state_lib
from lmjax.data import tokenizer as tokenizer_lib
from lmjax.models.transformer import ModelConfig, Transformer

# Special ids of lmjax tokenizers (lmjax/data/tokenizer.py); the bench has no tokenizer.
_PAD, _BOS, _EOS, _MASK = 0, 2, 3, 4


@dataclasses.dataclass
class Setup:
  """What training builds before its loop: the model, the jitted steps and a fresh state."""
  model_cfg: ModelConfig
  model: Transformer
  mesh: jax.sharding.Mesh
  state: state_lib.TrainState
  train_fn: object
  eval_fn: object
  schedule: object


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The bench's vocabulary: the tokenizer's at ``data.tokenizer_path`` if one is given (the one training
  would use), else ``data.vocab_size`` (what a trained tokenizer would have; with ``tokenizer_type='char'``
  only a cap, since the corpus's characters decide: point ``tokenizer_path`` at a run's tokenizer.model)."""
  if config.data.tokenizer_path:
    return tokenizer_lib.load(config.data.tokenizer_path).vocab_size  # ValueError: a one-line error in main
  return config.data.vocab_size


def _stub_tokenizer(vocab: int):
  """The parts of a Tokenizer that ``train.masking`` reads: every piece starts a word."""
  return types.SimpleNamespace(vocab_size=vocab, mask_id=_MASK, special_ids=(_PAD, _BOS, _EOS, _MASK),
                               word_starts=lambda: np.ones(vocab, bool))


def build(config: ml_collections.ConfigDict, vocab: int, *, devices=None, abstract: bool = False) -> Setup:
  """The model, optimizer, state and jitted train/eval steps exactly as ``lmjax.train`` builds them
  (on ``devices``, default all, like training). ``abstract``: the state as shapes with their shardings,
  nothing initialised (to compile for devices this process cannot run on: ``lmjax.aot``)."""
  model_cfg = train.model_config(config, vocab)
  model = Transformer(model_cfg)
  mesh = sharding.mesh_from_config(config.mesh, devices=devices)
  sharding.check_batch_size(config.train.batch_size, mesh)
  tx, schedule = train.make_optimizer(config)
  example_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
  if abstract:
    state, shardings = state_lib.abstract_state(model, tx, example_BL, mesh)
  else:
    state, _, shardings = state_lib.create(model, tx, example_BL, mesh, jax.random.key(config.seed))
  loss_fn = functools.partial(
      objectives.loss_fn(config.objective, train.masking(config, _stub_tokenizer(vocab))), model.apply)
  train_fn, eval_fn = train.jit_steps(config, loss_fn, tx, shardings, mesh)
  return Setup(model_cfg, model, mesh, state, train_fn, eval_fn, schedule)


def random_batches(config: ml_collections.ConfigDict, vocab: int, count: int, seed: int = 0):
  """``count`` host batches of uniform random tokens, one segment per row, in the pipeline's format."""
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  batch = config.train.batch_size
  rng = np.random.default_rng(seed)
  positions = np.broadcast_to(np.arange(row_len, dtype=np.int32), (batch, row_len))
  # Ids >= 5 keep the specials out, so MLM selects ~mask_rate of every row.
  return [{'tokens': rng.integers(5, vocab, (batch, row_len)).astype(np.int32),
           'segment_ids': np.ones((batch, row_len), np.int32), 'positions': positions.copy()}
          for _ in range(count)]


def peak_memory(device) -> tuple[int, str]:
  """(bytes, what was measured): the device's peak allocation where it reports one, else the process's max RSS."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS (host; includes the runtime)'


def run(config: ml_collections.ConfigDict, *, steps_: int = 20, warmup: int = 3, peak_override: float = 0.0,
        devices=None) -> dict:
  """Compiles the train step once, runs ``warmup`` then ``steps_`` synchronised steps; returns the results."""
  vocab = vocab_size(config)
  setup = build(config, vocab, devices=devices)
  device = setup.mesh.devices.flat[0]
  host_batches = random_batches(config, vocab, min(steps_ + warmup, 4))
  batches = [sharding.host_to_global(b, setup.mesh) for b in host_batches]
  rng = jax.random.key(config.seed)
  state = setup.state
  with sharding.activate(setup.mesh):
    start = time.perf_counter()
    compiled = setup.train_fn.lower(state, batches[0], rng).compile()
    compile_s = time.perf_counter() - start
    times, losses = [], []
    for i in range(warmup + steps_):
      start = time.perf_counter()
      state, metrics = compiled(state, batches[i % len(batches)], rng)
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - start)
      loss_sum, loss_count = jax.device_get(metrics['loss'])
      losses.append(float(loss_sum) / max(float(loss_count), 1.0))
  step_s = statistics.median(times)
  tokens_per_step = config.train.batch_size * config.data.seq_len
  flops_per_token, flops_formula = train.model_flops(config, setup.model_cfg)
  num_devices = setup.mesh.size
  peak, peak_source = metrics_lib.peak_flops_per_device(device, peak_override)
  memory, memory_source = peak_memory(device)
  tokens_per_sec = tokens_per_step / step_s
  achieved = tokens_per_sec * flops_per_token
  return {
      'objective': config.objective, 'platform': device.platform, 'device_kind': device.device_kind,
      'num_devices': num_devices, 'batch_size': config.train.batch_size, 'seq_len': config.data.seq_len,
      'vocab_size': vocab, 'num_params': setup.model_cfg.num_params(),
      'model': {k: v for k, v in dataclasses.asdict(setup.model_cfg).items()},
      'steps': steps_, 'warmup': warmup, 'compile_time_s': compile_s,
      'step_time_s': step_s, 'step_time_mean_s': statistics.fmean(times), 'step_time_min_s': min(times),
      'step_time_max_s': max(times), 'tokens_per_step': tokens_per_step, 'tokens_per_sec': tokens_per_sec,
      'flops_per_token': flops_per_token, 'flops_formula': flops_formula,
      'flops_per_sec': achieved, 'flops_per_sec_per_device': achieved / num_devices,
      'peak_flops_per_device': peak, 'peak_source': peak_source,
      'mfu': achieved / num_devices / peak if peak else None,
      'peak_memory_bytes': memory, 'peak_memory_source': memory_source,
      'first_loss': losses[0], 'last_loss': losses[-1],
      'jax_version': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def format_results(r: dict) -> str:
  mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] is not None else 'n/a'
  return '\n'.join([
      f"{r['objective']} model, {r['num_params']:,} params, vocab {r['vocab_size']:,}; batch {r['batch_size']} x "
      f"seq {r['seq_len']} on {r['num_devices']} x {r['device_kind']} ({r['platform']})",
      f"compile:        {r['compile_time_s']:.2f} s",
      f"step time:      {1e3 * r['step_time_s']:.2f} ms median of {r['steps']} (min {1e3 * r['step_time_min_s']:.2f}, "
      f"mean {1e3 * r['step_time_mean_s']:.2f})",
      f"tokens/s:       {r['tokens_per_sec']:,.0f}",
      f"FLOPs/token:    {r['flops_per_token']:,.0f}  = {r['flops_formula']}",
      f"achieved:       {r['flops_per_sec'] / 1e9:,.2f} GFLOP/s ({r['flops_per_sec_per_device'] / 1e9:,.2f} per device)",
      f"peak/device:    {(r['peak_flops_per_device'] or 0) / 1e9:,.1f} GFLOP/s: {r['peak_source']}",
      f"MFU:            {mfu}",
      f"peak memory:    {r['peak_memory_bytes'] / 2**20:,.0f} MiB ({r['peak_memory_source']})",
      f"loss:           {r['first_loss']:.4f} -> {r['last_loss']:.4f}",
  ])


def _define_flags():
  """Flags exist only when this module is the program, so other scripts can import it with their own."""
  config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
  flags.DEFINE_integer('steps', 20, 'Timed training steps.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
  flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device for MFU; 0 = measured (CPU) or datasheet.')
  flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  c = f.config  # as lmjax.main does: before JAX starts
  hostmem.reexec_with_hugepages(c)
  with cli.bad_input_exits():
    sharding.split_cpu_for(c)
    results = run(f.config, steps_=f.steps, warmup=f.warmup, peak_override=f.peak_flops)
  metrics_lib.report(format_results(results), results, f.json)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
