"""Every orbax call: model state and data-iterator position saved as one step.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. orbax writes each step
into ``<step>.orbax-checkpoint-tmp`` and renames it when complete, so a save cut
short by a crash (or a full disk) never becomes the restored step.
"""

from __future__ import annotations

import contextlib
import functools
import logging as std_logging
import os
import re

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

_INCOMPLETE = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')


@functools.cache  # once per process: the registry is orbax's, global
def _save_replicated_arrays_whole_on_cpu():
  """On CPU, orbax writes a replicated array from one replica, not a slice from each.

  orbax's replica-parallel save (its default off GPU) has every replica write a slice,
  cut with ``jax.lax.slice_in_dim``: one small program compiled per array shape and
  device, about 0.07 s each here, and a CPU "device transfer" is a copy in the same
  memory, so the split gains nothing. With 8 devices and a 1-layer model that was 48
  compiles, 3.4 s of a 19 s run, at the first save of every process. Other backends keep
  orbax's choice (on a TPU host it spreads the device-to-host copies over the chips).
  """
  if jax.default_backend() != 'cpu':
    return
  # Private modules (orbax-checkpoint is pinned to 0.12): the public register_type_handler logs a
  # warning on every override, a second line above a bad-input error.
  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.metadata import array_metadata_store
  from orbax.checkpoint._src.serialization import type_handler_registry
  # pylint: enable=g-import-not-at-top
  handler = ocp.type_handlers.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                           use_replica_parallel=False)  # otherwise orbax's default handler
  type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, handler, override=True, ignore_warnings=True)


@functools.cache  # one filter per process
def quiet_library_logs():
  """Keeps orbax's and grain's INFO lines (a page per save or restore) off the console; their warnings and
  errors still show, without the 60-line tracebacks: lmjax re-raises such failures as one line saying what
  to do."""
  def keep(record):
    library = any(lib in record.pathname for lib in ('/orbax/', '/grain/', 'xla_bridge', '/asyncio/'))
    if library and record.levelno >= std_logging.ERROR:
      record.exc_info, record.exc_text = None, None
      record.msg = str(record.msg).split('\n', 1)[0]  # asyncio puts the traceback in the message
    return record.levelno >= std_logging.WARNING or not library
  logging.get_absl_handler().addFilter(keep)  # the handler sees absl's records and the libraries' own loggers'


class Checkpointer:
  """Save every ``every`` steps (or when forced), keep the last ``keep``, optionally async."""

  def __init__(self, directory: str, *, every: int, keep: int | None, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    # Steps whose save was interrupted (kill -9, preemption, full disk): orbax removes them below.
    self.incomplete_steps = sorted(int(m.group(1)) for m in map(_INCOMPLETE.match, _listdir(self.directory))
                                   if m)
    self._every = every
    self._pending = None  # the step an asynchronous save is writing
    quiet_library_logs()  # every CLI that loads a checkpoint: sample, evaluate, fill_mask, convert, training
    _save_replicated_arrays_whole_on_cpu()
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
      registry.add('state', args, ocp.StandardCheckpointHandler)
    for args in (grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore):
      registry.add('data', args, grain.checkpoint.CheckpointHandler)
    # lmjax decides when to save (orbax's own policy would also save the first step it sees).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def due(self, step: int) -> bool:
    return step % self._every == 0

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Saves if ``step`` is a multiple of ``every`` (or ``force``); returns whether a save started.

    A failed write (full disk, lost permissions) raises ``ValueError`` naming the
    step and the last complete checkpoint, which the failure leaves untouched.
    """
    if (not force and step % self._every) or self._manager.latest_step() == step:
      return False  # not due, or already saved (a stop request at a checkpoint step)
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._failures(step):
      started = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._pending = step
    return started

  def check_compatible(self, step: int, abstract_state):
    """Raises ``ValueError`` naming the first parameter whose shape or dtype differs from the checkpoint's."""
    saved = self._manager.item_metadata(step)['state'].tree['params']
    check_same_params(saved, abstract_state.params, f'the checkpoint at step {step} in {self.directory}',
                      'resume with the config the run was trained with (its config.json) or start a new --workdir')

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state into ``abstract_state``'s shardings and, if given, the iterator in place."""
    self.check_compatible(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))['state']

  def wait(self):
    with self._failures(self._pending):
      self._manager.wait_until_finished()
    self._pending = None

  def close(self):
    self._manager.close()

  @contextlib.contextmanager
  def _failures(self, step):
    """Turns a failed (possibly background) write into one line that says what survived."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as error:
      # orbax reports a background failure at the next save or wait: that save is the one that failed.
      steps = self.all_steps()
      failed = self._pending if self._pending is not None and self._pending not in steps else step
      complete = [s for s in steps if s != failed]
      last = f'step {max(complete)}' if complete else 'none'
      raise ValueError(f'could not save the checkpoint at step {failed} in {self.directory} ({_reason(error)}); '
                       f'the last complete checkpoint ({last}) is intact: free disk space or fix the directory, '
                       'then run the same command to resume') from error


def check_same_params(source, wanted, where: str, fix: str):
  """Raises ``ValueError`` naming the first parameter of ``source`` (at ``where``) that ``wanted`` lacks
  or has with another shape or dtype, or the other way round."""
  saved, wanted = _flat(source), _flat(wanted)
  for name in sorted(saved.keys() | wanted.keys()):
    if name not in wanted:
      raise ValueError(f'{where} has parameter {name}, which this model lacks; {fix}')
    if name not in saved:
      raise ValueError(f'this model has parameter {name}, which {where} lacks; {fix}')
    (shape, dtype), (want_shape, want_dtype) = saved[name], wanted[name]
    if shape != want_shape or dtype != want_dtype:
      raise ValueError(f'parameter {name} is {dtype}{list(shape)} in {where} but {want_dtype}'
                       f'{list(want_shape)} in this config; {fix}')


def _reason(error: BaseException) -> str:
  text = str(error)
  for known in ('No space left on device', 'File too large', 'Permission denied', 'Read-only file system',
                'Disk quota exceeded'):
    if known in text:
      return known
  return text.splitlines()[0][:200] if text else type(error).__name__


def _flat(tree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path):
          (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in leaves}


def _listdir(directory: str) -> list[str]:
  return os.listdir(directory) if os.path.isdir(directory) else []
