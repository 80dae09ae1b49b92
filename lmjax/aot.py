"""The training step compiled ahead of time for TPUs this machine does not have: does a config fit?

  pip install -e '.[tpu]'    # libtpu, XLA:TPU's compiler; no TPU needed
  python -m lmjax.aot --config=configs/gpt.py:gpt2 --topology=v5e:4x4 \\
      --config.train.batch_size=128 --config.data.seq_len=1024 [--num_slices=2] [--json=aot.json]

Builds the jitted ``train_step`` that ``lmjax.train`` runs (``lmjax.bench.build``: the same model,
optimizer, shardings and donation) on a mesh of the topology's compile-only devices
(``jax.experimental.topologies``), from abstract shapes alone, and compiles it with XLA:TPU. It
reports, per device, what the compiled program needs in HBM (the train state and the batch, the
temporaries, outputs that do not reuse a donated input, the code), and the step's model FLOPs with the
time they take at the chips' datasheet peak. A config that does not fit fails here, in a minute or two
on a laptop, with XLA's account of how far over it is, rather than
after a pod has been created. (MaxText's ``train_compile.py`` does the same.)

The config's ``mesh`` section lays the devices out as ``lmjax.main`` would on the pod, ``mesh.dcn_*``
across slices included; the vocabulary is ``data.vocab_size`` (or ``data.tokenizer_path``'s).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lmjax import bench, cli, objectives, sharding, train
from lmjax import metrics as metrics_lib

# One TPU VM host of each chip, as Cloud TPU names it (TPU_ACCELERATOR_TYPE).
_ONE_HOST = {'v4': 'v4-8', 'v5p': 'v5p-8', 'v5e': 'v5litepod-4', 'v6e': 'v6e-4'}


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of ``num_slices`` slices of a TPU ``topology`` ('v5e:4x4', 'v4:2x2x2', ...)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Compile-only devices touch no chip, so libtpu's one-process-per-host lock (/tmp/libtpu_lockfile) is not
  # needed: without this, a second process that has loaded libtpu (another compile, a test worker) makes
  # this one fail.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # This host as libtpu's start-up would find it on one TPU VM of that chip (no metadata server to ask):
  # without these it prints a page of warnings; the compiled program is the same either way (checked).
  chip = topology.split(':')[0]
  if chip in _ONE_HOST:
    for name, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                        ('TPU_ACCELERATOR_TYPE', _ONE_HOST[chip])):
      os.environ.setdefault(name, value)
  kwargs = {'num_slices': num_slices} if num_slices > 1 else {}
  if chip in ('v4', 'v5p'):  # one JAX device per chip (its two cores as one), as on those TPU VMs
    kwargs['chip_config_name'] = 'megacore'
  try:
    return topologies.get_topology_desc(topology_name=topology, platform='tpu', **kwargs).devices
  except RuntimeError as e:  # libtpu missing, or a name it does not know (JaxRuntimeError)
    if 'not installed' in str(e):
      raise ValueError("compiling for TPUs needs libtpu: pip install -e '.[tpu]'") from e
    raise ValueError(f'--topology={topology} (--num_slices={num_slices}): {str(e).splitlines()[0]}; '
                     "use <chip>:<shape>, e.g. v5e:4x4, v4:2x2x2, v5p:2x2x1, v6e:2x2") from e


def abstract_inputs(config: ml_collections.ConfigDict, mesh) -> tuple[dict, jax.ShapeDtypeStruct]:
  """(batch, rng) as shapes with the shardings the jitted step takes: the pipeline's packed rows."""
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  rows = jax.ShapeDtypeStruct((config.train.batch_size, row_len), jnp.int32,
                              sharding=sharding.batch_sharding(mesh))
  rng = jax.eval_shape(jax.random.key, 0)
  return ({'tokens': rows, 'segment_ids': rows, 'positions': rows},
          jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding.replicated(mesh)))


def lower_train_step(config: ml_collections.ConfigDict, devices):
  """(``bench.Setup`` with an abstract state, ``lmjax.train``'s step lowered for ``devices``, any platform)."""
  setup = bench.build(config, bench.vocab_size(config), devices=devices, abstract=True)
  batch, rng = abstract_inputs(config, setup.mesh)
  with sharding.activate(setup.mesh):  # the model's constraints and its platform checks read this mesh
    return setup, setup.train_fn.lower(setup.state, batch, rng)


def compile_train_step(config: ml_collections.ConfigDict, devices) -> dict:
  """Compiles ``lmjax.train``'s step for ``devices`` and returns what it needs per device.

  Raises ValueError with XLA's message when the program does not fit the devices' memory.
  """
  start = time.perf_counter()
  setup, lowered = lower_train_step(config, devices)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    xla = str(e).splitlines()[0].rstrip('.')
    raise ValueError(f'does not fit: {xla}; lower --config.train.batch_size, '
                     'raise --config.train.grad_accum_steps, set --config.model.remat=full or shard more '
                     '(--config.mesh.fsdp)') from e
  compile_s = time.perf_counter() - start
  device = setup.mesh.devices.flat[0]
  memory = compiled.memory_analysis()
  state_bytes = sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
                    for leaf in jax.tree.leaves(setup.state))
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  peak = metrics_lib.peak_flops(device)
  hbm = metrics_lib.hbm_bytes(device)
  tokens = config.train.batch_size * config.data.seq_len
  model_flops = train.model_flops(config, setup.model_cfg)[0] * tokens
  return {
      'platform': device.platform, 'device_kind': device.device_kind, 'num_devices': setup.mesh.size,
      'mesh': dict(setup.mesh.shape), 'objective': config.objective, 'num_params': setup.model_cfg.num_params(),
      'vocab_size': setup.model_cfg.vocab_size, 'batch_size': config.train.batch_size,
      'seq_len': config.data.seq_len,
      'grad_accum_steps': config.train.grad_accum_steps, 'compile_time_s': compile_s,
      'state_bytes_per_device': state_bytes, 'argument_bytes': memory.argument_size_in_bytes,
      'output_bytes': memory.output_size_in_bytes, 'alias_bytes': memory.alias_size_in_bytes,
      'temp_bytes': memory.temp_size_in_bytes, 'code_bytes': memory.generated_code_size_in_bytes,
      'total_bytes_per_device': total, 'hbm_bytes_per_device': hbm,
      'model_flops_per_step': model_flops,
      # XLA's cost analysis is not used: it counts a loop's body once (scanned layers, micro-batches).
      'ideal_step_s': model_flops / (setup.mesh.size * peak) if peak else None,
  }


def format_report(r: dict) -> str:
  gib = lambda b: f'{b / 2**30:,.2f} GiB'
  hbm = r['hbm_bytes_per_device']
  fits = f" of {gib(hbm)} HBM ({100 * r['total_bytes_per_device'] / hbm:.0f}%)" if hbm else ''
  mesh = ' x '.join(f'{k} {v}' for k, v in r['mesh'].items())
  lines = [
      f"{r['objective']} model, {r['num_params']:,} params, vocab {r['vocab_size']:,}; batch {r['batch_size']} x "
      f"seq {r['seq_len']} in {r['grad_accum_steps']} micro-batch(es); {r['num_devices']} x {r['device_kind']} "
      f"({mesh})",
      f"lower+compile:   {r['compile_time_s']:.1f} s",
      f"per device:      {gib(r['total_bytes_per_device'])}{fits}",
      f"  state:         {gib(r['state_bytes_per_device'])} (params and optimizer moments, this device's shards)",
      f"  arguments:     {gib(r['argument_bytes'])} (state and batch; the state is donated)",
      f"  temporaries:   {gib(r['temp_bytes'])} (activations, gradients, XLA's scratch)",
      f"  outputs:       {gib(r['output_bytes'] - r['alias_bytes'])} not in donated buffers",
      f"  code:          {gib(r['code_bytes'])}",
      f"model FLOPs:     {r['model_flops_per_step']:.3e} per step",
  ]
  if r['ideal_step_s']:
    lines.append(f"ideal step:      {1e3 * r['ideal_step_s']:,.3g} ms (those FLOPs at the chips' datasheet bf16 peak: "
                 'the step cannot be faster)')
  return '\n'.join(lines)


def _define_flags():
  """Flags exist only when this module is the program."""
  config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
  flags.DEFINE_string('topology', None, 'TPU topology to compile for, <chip>:<shape>: v5e:4x4, v4:2x2x2, ...')
  flags.DEFINE_integer('num_slices', 1, 'Slices of that topology (multi-slice over DCN: set mesh.dcn_*).')
  flags.DEFINE_string('json', None, 'Also write the report to this JSON file.')
  flags.mark_flags_as_required(['config', 'topology'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # This process only compiles: its own runtime is the CPU (it claims none of the host's accelerators, if
  # any), and JAX cannot read XLA:TPU executables compiled without a TPU client back from its cache.
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_enable_compilation_cache', False)
  with cli.bad_input_exits():
    report = compile_train_step(f.config, topology_devices(f.topology, f.num_slices))
  metrics_lib.report(format_report(report), report, f.json)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
