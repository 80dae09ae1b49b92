"""Entry point: python -m lmjax.main --config=configs/default.py --workdir=DIR [--config.a.b=value ...]

Holds only flags. Multi-process runs call ``jax.distributed.initialize``:
automatically on TPU pods / SLURM / Open MPI (``--distributed=auto``), or with
an explicit coordinator for other clusters and local tests.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import cli, hostmem

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, tokenizer and metrics.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'off', ['off', 'auto', 'explicit'],
                                 "'auto': jax.distributed.initialize() detects the cluster; "
                                 "'explicit': use --coordinator/--num_processes/--process_id.")
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'host:port of process 0 (explicit mode).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (explicit mode).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index (explicit mode).')
flags.mark_flags_as_required(['config', 'workdir'])


def _init_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value != 'off':
    # CPU processes need a collectives backend to talk to each other (GPU/TPU ignore this).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if _DISTRIBUTED.value == 'auto':
    jax.distributed.initialize()
  elif _DISTRIBUTED.value == 'explicit':
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  if jax.process_index() != 0:  # one voice per run: other processes log only warnings and errors
    logging.set_verbosity(logging.WARNING)


def _split_cpu(config):
  """One JAX device per CPU core (``mesh.cpu_devices``), before JAX starts. Multi-process runs split
  only when asked: the per-process batch is not known yet."""
  from lmjax import sharding  # pylint: disable=g-import-not-at-top  (imports jax; backends stay unstarted)
  if config.mesh.cpu_devices or _DISTRIBUTED.value == 'off':
    sharding.split_cpu_for(config)


def parse_flags(argv):
  """absl's parser, plus a one-line error for a --config.key that the config does not declare.

  ml_collections raises KeyError/AttributeError (with a traceback) for those.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # e.g. a wrongly typed value: absl names the flag
    cli.fail(str(e))
  except (KeyError, AttributeError) as e:
    message = e.args[0] if e.args else str(e)
    if isinstance(message, KeyError):
      message = message.args[0]
    name, _, hint = str(message).partition('\n')
    name = name.strip('\'"')
    flag = next((a.split('=')[0] for a in argv if a.startswith('--config.') and name in a.split('=')[0]),
                f'--config...{name}')
    cli.fail(f'{flag}: no such config key{" (" + hint + ")" if hint else ""}; '
             'every key is declared in configs/base.py')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  hostmem.reexec_with_hugepages(_CONFIG.value)  # before JAX starts; returns in the restarted process
  from lmjax import checkpoint  # pylint: disable=g-import-not-at-top  (imports jax; backends stay unstarted)
  checkpoint.quiet_library_logs()
  _split_cpu(_CONFIG.value)
  _init_distributed()
  if os.environ.get(hostmem.MARKER):
    logging.info('host memory: malloc on transparent huge pages (GLIBC_TUNABLES=%s; mesh.cpu_hugepages)',
                 os.environ.get('GLIBC_TUNABLES'))
  from lmjax import train  # pylint: disable=g-import-not-at-top  (after distributed init)
  run = train.train_and_evaluate
  if _CONFIG.value.objective == 'classify':  # fine-tuning (configs/finetune.py)
    from lmjax import finetune  # pylint: disable=g-import-not-at-top
    run = finetune.train_and_evaluate
  with cli.bad_input_exits(threads_may_print=True):  # one line, exit 2, nothing damaged
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
