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
no GPU plugin installed nor GPU/TPU requested, no libtpu where a TPU may be attached
(an accelerator's step memory is on the device), ``mesh.cpu_hugepages`` true, and the
tunable not set already.

It also decides where libtpu is installed without a TPU (``lmjax[tpu]`` for
``lmjax.aot``; ``lmjax[test]``): ``cpu_when_no_tpu`` has JAX start on the CPU at once.
"""

from __future__ import annotations

import glob
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


def _read(path: str) -> str:
  """A small text file's contents, stripped, or '' where it cannot be read."""
  try:
    with open(path, encoding='ascii') as f:
      return f.read().strip()
  except OSError:
    return ''


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (the bracketed word: always / madvise / never), or None."""
  text = _read(path)
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


# Google's PCI vendor id and its TPU chips' device ids (v3, -, v4, v5p, v5e, v6e, 7x), as JAX's hardware_utils.
_GOOGLE_PCI_VENDOR, _TPU_PCI_DEVICES = '0x1ae0', ('0x0027', '0x0056', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076')


def tpu_may_be_attached(root: str = '/') -> bool:
  """Whether this host may have TPU chips: their device files (``/dev/accel*`` up to v4, ``/dev/vfio/N`` from
  v5e on, so a later generation counts too) or a TPU among its PCI devices."""
  if glob.glob(os.path.join(root, 'dev/accel*')) or any(
      name.isdigit() for name in _listdir(os.path.join(root, 'dev/vfio'))):
    return True
  for vendor in glob.glob(os.path.join(root, 'sys/bus/pci/devices/*/vendor')):
    device = os.path.join(os.path.dirname(vendor), 'device')
    if _read(vendor) == _GOOGLE_PCI_VENDOR and _read(device) in _TPU_PCI_DEVICES:
      return True
  return False


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def _plugin_installed() -> bool:
  """A PJRT plugin (``jax_plugins``: CUDA, ROCm, ...) is installed."""
  spec = importlib.util.find_spec('jax_plugins')
  if spec is not None and any(pkgutil.iter_modules(spec.submodule_search_locations or [])):
    return True
  return bool(importlib.metadata.entry_points(group='jax_plugins'))


def accelerator_possible(environ=os.environ) -> bool:
  """Whether JAX may run this process's steps on a GPU or TPU, decided without importing JAX.

  ``JAX_PLATFORMS`` when set, else whether a PJRT plugin (``jax_plugins``: CUDA,
  ROCm, ...) is installed, or libtpu on a host that may have TPU chips (``pip install
  'lmjax[tpu]'`` puts libtpu on CPU machines too, for ``lmjax.aot``).
  """
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('cpu', '') for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None and tpu_may_be_attached():
    return True
  return _plugin_installed()


def cpu_when_no_tpu(environ=os.environ) -> bool:
  """Sets ``JAX_PLATFORMS=cpu`` where libtpu is installed but no TPU is attached and no other plugin is.

  JAX would try libtpu first there, print a page of its failed probes (accelerator type, worker hostnames)
  and fall back to the CPU; with this it starts on the CPU at once. Where JAX is imported but has not
  started, its config is set too. Returns whether it set anything (``lmjax/__init__.py`` calls it).
  """
  if (environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None or tpu_may_be_attached()
      or _plugin_installed()):
    return False
  jax = sys.modules.get('jax') if environ is os.environ else None
  if jax is not None:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (no public "backends started?")
    if xla_bridge.backends_are_initialized():
      return False
    jax.config.update('jax_platforms', 'cpu')
  environ['JAX_PLATFORMS'] = 'cpu'
  return True


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
