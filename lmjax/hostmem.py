"""Host memory for training on the CPU: XLA:CPU's per-step buffers on transparent huge pages.

XLA:CPU allocates each device's scratch memory for a step (activations, gradients:
172 MB per device for ``configs/default.py``) with malloc from its PJRT threads and
frees it when the step ends. glibc serves a block that large from a fresh ``mmap``
(a thread's own arena cannot hold more than 64 MB, whatever ``mallopt`` says) and
unmaps it on free, so every step faults its scratch memory in again, 4 KiB at a
time: 84,000 page faults a step there, and a step 1.3x slower (docs/perf_notes.md).

glibc's tunable ``glibc.malloc.hugetlb=1`` (2.35+) has malloc ask for transparent
huge pages (``madvise(MADV_HUGEPAGE)``) on the memory it maps: the same step then
faults ~900 times, 2 MiB at a time. Tunables are read when a process starts, so the
command-line entry points call ``reexec_with_hugepages`` first, which re-runs the
same command once with the tunable added to ``GLIBC_TUNABLES`` (same process id,
nothing imported yet but the config), and benchmark workers get it in their
environment. It applies where it can help: Linux with glibc 2.35+, transparent huge
pages in ``madvise`` mode (``always`` already gives them, ``never`` refuses them),
no GPU/TPU plugin installed or requested (an accelerator's step memory is on the
device), ``mesh.cpu_hugepages`` true, and the tunable not set already.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
MARKER = 'LMJAX_HUGEPAGES'  # set in the restarted process: never restart twice, whatever glibc does to its env
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library if it is glibc, else None (musl, macOS, Windows)."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  major, minor = version.split('.')[:2]
  return int(major), int(minor)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (the bracketed word: always / madvise / never), or None."""
  try:
    with open(path, encoding='ascii') as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def accelerator_possible(environ=os.environ) -> bool:
  """Whether JAX may run this process's steps on a GPU or TPU, decided without importing JAX.

  ``JAX_PLATFORMS`` when set, else whether a PJRT plugin (``jax_plugins``: CUDA,
  ROCm, ...) or libtpu is installed.
  """
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return True
  spec = importlib.util.find_spec('jax_plugins')
  if spec is not None and any(pkgutil.iter_modules(spec.submodule_search_locations or [])):
    return True
  return bool(importlib.metadata.entry_points(group='jax_plugins'))


def hugepages_wanted(config, environ=os.environ) -> bool:
  """Whether this process should restart with ``TUNABLE`` (see the module docstring)."""
  if (not config.mesh.cpu_hugepages or MARKER in environ
      or 'glibc.malloc.hugetlb' in environ.get('GLIBC_TUNABLES', '')):
    return False
  version = glibc_version()
  return (sys.platform.startswith('linux') and version is not None and version >= (2, 35)
          and thp_mode() == 'madvise' and not accelerator_possible(environ))


def hugepages_environ(config, environ=os.environ) -> dict[str, str]:
  """The variables a new process (a benchmark worker) needs for huge pages: ``GLIBC_TUNABLES`` with
  ``TUNABLE`` added (tunables are ':'-separated), or {} if ``hugepages_wanted`` says no."""
  if not hugepages_wanted(config, environ):
    return {}
  return {'GLIBC_TUNABLES': ':'.join(filter(None, [environ.get('GLIBC_TUNABLES', ''), TUNABLE])), MARKER: '1'}


def reexec_with_hugepages(config):
  """Re-runs this command (``sys.orig_argv``) with ``TUNABLE`` set, if ``hugepages_wanted``; else returns.

  Call it first thing in a program's main, before JAX starts: the new process image
  keeps the process id, open files and signal dispositions, and its own call here
  returns because the tunable is then set.
  """
  extra = hugepages_environ(config)
  if not extra:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, **extra})
