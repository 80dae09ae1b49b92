"""Every orbax call: model state and data-iterator position saved as one step.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. orbax writes each step
into a temporary directory and renames it when complete, so a save cut short
by a crash never becomes the restored step.
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Save every ``every`` steps (or when forced), keep the last ``keep``, optionally async."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    # lmjax decides when to save (orbax's own policy would also save the first step it sees).
    self._every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def due(self, step: int) -> bool:
    return step % self._every == 0

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Saves if ``step`` is a multiple of ``every`` (or ``force``); returns whether a save started."""
    if (not force and step % self._every) or self._manager.latest_step() == step:
      return False  # not due, or already saved (a stop request at a checkpoint step)
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state into ``abstract_state``'s shardings and, if given, the iterator in place."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))['state']

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
