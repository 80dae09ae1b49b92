"""What lmjax's command-line programs share: bad input ends the run with one line and exit status 2.

Every program raises ``ValueError`` for bad input (a missing file, a config that cannot work) with a
message that says what is wrong and how to fix it; its ``main`` runs inside ``bad_input_exits()``, which
prints that message as ``error: ...`` and exits with status 2 (docs/errors.md lists the messages). Never
imports JAX: lmjax.data.prepare uses it too.
"""

from __future__ import annotations

import contextlib
import os
import sys


def fail(message: str, *, threads_may_print: bool = False):
  """Ends the process with ``error: message`` as the last line of stderr and exit status 2.

  After a failed asynchronous checkpoint, orbax/tensorstore threads go on printing tracebacks to file
  descriptor 2 (and would print more at shutdown). With ``threads_may_print`` the descriptor is pointed at
  /dev/null first, so nothing follows the line, and the line starts on a fresh one, so a traceback line
  cut off half way cannot run into it.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  out = 2
  if threads_may_print:
    out = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
  os.write(out, f'{chr(10) if threads_may_print else ""}error: {message}\n'.encode())
  os._exit(2)  # pylint: disable=protected-access


@contextlib.contextmanager
def bad_input_exits(*, threads_may_print: bool = False):
  """A ``ValueError`` raised inside ends the process through ``fail``."""
  try:
    yield
  except ValueError as e:
    fail(str(e), threads_may_print=threads_may_print)
