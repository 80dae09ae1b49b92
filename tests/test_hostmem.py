"""lmjax.hostmem: when a CPU run restarts itself with glibc's huge-page tunable, and that it pays."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from configs import gpt
from lmjax import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAN_HUGEPAGES = (sys.platform.startswith('linux') and (hostmem.glibc_version() or (0, 0)) >= (2, 35)
                 and hostmem.thp_mode() == 'madvise')


def _config(hugepages=True):
  c = gpt.get_config('tiny')
  c.mesh.cpu_hugepages = hugepages
  return c


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert hostmem.thp_mode(str(path)) == 'madvise'
  path.write_text('[always] madvise never\n')
  assert hostmem.thp_mode(str(path)) == 'always'
  assert hostmem.thp_mode(str(tmp_path / 'missing')) is None


@pytest.mark.parametrize('glibc,thp,env,hugepages,wanted', [
    ((2, 36), 'madvise', {}, True, True),
    ((2, 36), 'madvise', {}, False, False),              # mesh.cpu_hugepages=False
    ((2, 34), 'madvise', {}, True, False),               # no glibc.malloc.hugetlb before 2.35
    (None, 'madvise', {}, True, False),                  # musl, macOS
    ((2, 36), 'always', {}, True, False),                # every mapping gets huge pages already
    ((2, 36), 'never', {}, True, False),                 # the kernel refuses them
    ((2, 36), 'madvise', {'JAX_PLATFORMS': 'cuda'}, True, False),  # the step's memory is on the GPU
    ((2, 36), 'madvise', {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, True, False),  # the user chose
    ((2, 36), 'madvise', {hostmem.MARKER: '1'}, True, False),  # restarted already: never twice
])
def test_hugepages_wanted(monkeypatch, glibc, thp, env, hugepages, wanted):
  monkeypatch.setattr(hostmem, 'glibc_version', lambda: glibc)
  monkeypatch.setattr(hostmem, 'thp_mode', lambda: thp)
  monkeypatch.setattr(sys, 'platform', 'linux')
  environ = {'JAX_PLATFORMS': 'cpu', **env}
  assert hostmem.hugepages_wanted(_config(hugepages), environ) is wanted
  extra = hostmem.hugepages_environ(_config(hugepages), environ)
  assert bool(extra) is wanted
  if wanted:
    assert extra == {'GLIBC_TUNABLES': hostmem.TUNABLE, hostmem.MARKER: '1'}


def test_hugepages_environ_keeps_other_tunables(monkeypatch):
  monkeypatch.setattr(hostmem, 'hugepages_wanted', lambda config, environ: True)
  extra = hostmem.hugepages_environ(_config(), {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert extra['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:' + hostmem.TUNABLE


def _host(root, devices=(), pci=()):
  """A fake root: files under dev/ and PCI devices as (vendor, device) ids."""
  for name in devices:
    (root / 'dev' / name).parent.mkdir(parents=True, exist_ok=True)
    (root / 'dev' / name).write_text('')
  for i, (vendor, device) in enumerate(pci):
    d = root / 'sys/bus/pci/devices' / f'0000:00:0{i}.0'
    d.mkdir(parents=True)
    (d / 'vendor').write_text(vendor + '\n')
    (d / 'device').write_text(device + '\n')
  return str(root)


@pytest.mark.parametrize('devices,pci,attached', [
    ((), (), False),
    (('vfio/vfio',), [('0x1af4', '0x1041'), ('0x1ae0', '0x0042')], False),  # virtio, Google's gVNIC: a CPU VM
    (('accel0',), (), True),                                               # TPU v2-v4
    (('vfio/vfio', 'vfio/0'), (), True),                                   # v5e and later, any generation
    ((), [('0x1ae0', '0x0063')], True),                                    # a v5e chip on the PCI bus
])
def test_tpu_may_be_attached(tmp_path, devices, pci, attached):
  assert hostmem.tpu_may_be_attached(_host(tmp_path, devices, pci)) is attached


@pytest.mark.parametrize('env,libtpu,tpu,plugin,accelerator,cpu_set', [
    ({}, True, False, False, False, True),     # 'lmjax[tpu]' on a CPU machine: CPU at once, huge pages
    ({}, True, True, False, True, False),      # a TPU VM
    ({}, False, False, False, False, False),   # JAX picks the CPU itself
    ({}, True, False, True, True, False),      # a CUDA plugin too: JAX chooses
    ({'JAX_PLATFORMS': 'tpu'}, True, False, False, True, False),  # the user chose
])
def test_libtpu_counts_only_where_a_tpu_may_be(monkeypatch, env, libtpu, tpu, plugin, accelerator, cpu_set):
  find_spec = hostmem.importlib.util.find_spec
  monkeypatch.setattr(hostmem.importlib.util, 'find_spec',
                      lambda name: (object() if libtpu else None) if name == 'libtpu' else find_spec(name))
  monkeypatch.setattr(hostmem, 'tpu_may_be_attached', lambda: tpu)
  monkeypatch.setattr(hostmem, '_plugin_installed', lambda: plugin)
  assert hostmem.accelerator_possible(env) is accelerator
  environ = dict(env)
  assert hostmem.cpu_when_no_tpu(environ) is cpu_set
  assert environ == ({**env, 'JAX_PLATFORMS': 'cpu'} if cpu_set else env)


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None or hostmem.tpu_may_be_attached(),
                    reason='needs libtpu installed (the [test] extra has it) on a host without a TPU')
def test_importing_lmjax_keeps_jax_off_libtpu_without_a_tpu():
  """Without it JAX probes libtpu, prints its failures (TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES) and
  falls back to the CPU, and CPU runs went without huge pages (libtpu counted as an accelerator)."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  code = 'import jax, lmjax; print(jax.devices()[0].platform)'
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0 and out.stdout.split() == ['cpu'], out.stderr
  assert 'TPU' not in out.stderr, out.stderr[-2000:]
  assert hostmem.hugepages_wanted(_config(), env) == CAN_HUGEPAGES


def test_restart_keeps_the_process_and_happens_once():
  """The command runs again in the same process with the tunable set, and the second run goes on."""
  code = textwrap.dedent("""
      import os, sys
      sys.path.insert(0, %r)
      from configs import gpt
      from lmjax import hostmem
      print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), flush=True)
      hostmem.reexec_with_hugepages(gpt.get_config('tiny'))
      print('main', os.getpid(), flush=True)
  """ % REPO)
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', hostmem.MARKER)}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  lines = [line.split() for line in out.stdout.splitlines()]
  pids = {line[1] for line in lines}
  assert len(pids) == 1, lines  # exec keeps the process id
  if hostmem.hugepages_wanted(_config(), env):
    assert [line[0] for line in lines] == ['start', 'start', 'main'], lines
    assert lines[1][2] == hostmem.TUNABLE
  else:
    assert [line[0] for line in lines] == ['start', 'main'], lines


@pytest.mark.skipif(not CAN_HUGEPAGES, reason='needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode')
def test_tunable_stops_the_per_step_page_faults():
  """The premise: a large block malloc'd and freed by a non-main thread (as XLA:CPU's PJRT threads do)
  is mapped afresh each time and faulted in 4 KiB at a time; with the tunable, 2 MiB at a time."""
  code = textwrap.dedent("""
      import ctypes, resource, threading
      libc = ctypes.CDLL(None)
      libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
      libc.free.argtypes = [ctypes.c_void_p]
      size = 128 << 20
      def steps():
        for _ in range(4):
          block = libc.malloc(size)
          ctypes.memset(block, 1, size)
          libc.free(block)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      thread = threading.Thread(target=steps)
      thread.start()
      thread.join()
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  """)
  def faults(tunables):
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)
  plain, huge = faults(''), faults(hostmem.TUNABLE)
  assert plain > 4 * (128 << 20) // 4096 * 0.9, plain  # every 4 KiB page of every step
  assert huge * 20 < plain, (huge, plain)
