"""lmjax.aot: the train step compiled for a TPU topology on this CPU host (libtpu's compiler; no TPU)."""

import os
import subprocess
import sys

import jax
import pytest

from configs import gpt
from lmjax import aot, sharding
from lmjax.models import layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = 'v5e:2x2'  # 4 chips of 16 GiB


def _config(**mesh):
  c = gpt.get_config('tiny')
  c.model.num_layers, c.model.embed_dim, c.model.num_heads, c.model.mlp_dim = 2, 64, 4, 256
  c.data.vocab_size, c.data.seq_len, c.train.batch_size = 256, 64, 8
  c.mesh.update(mesh)
  return c


@pytest.fixture(scope='module')
def tpu_devices():
  # conftest's compilation cache: JAX cannot read an XLA:TPU executable back without a TPU client
  saved = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  yield aot.topology_devices(TPU)
  jax.config.update('jax_enable_compilation_cache', saved)


def test_compiles_for_a_tpu_topology_and_accounts_for_its_memory(tpu_devices):
  assert len(tpu_devices) == 4 and {d.platform for d in tpu_devices} == {'tpu'}
  r = aot.compile_train_step(_config(), tpu_devices)
  assert r['device_kind'].startswith('TPU v5 lite') and r['hbm_bytes_per_device'] == 16 * 2**30
  assert r['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 1}
  # Data parallel: every chip holds all f32 parameters and both Adam moments (plus a few scalars).
  assert 12 * r['num_params'] <= r['state_bytes_per_device'] < 12 * r['num_params'] + 1024
  assert r['argument_bytes'] >= r['state_bytes_per_device']  # the state and the batch
  assert r['alias_bytes'] >= r['state_bytes_per_device']  # the donated state is updated in place
  assert r['total_bytes_per_device'] == (r['argument_bytes'] + r['output_bytes'] - r['alias_bytes']
                                         + r['temp_bytes'] + r['code_bytes'])
  assert 0 < r['total_bytes_per_device'] < r['hbm_bytes_per_device']
  assert r['ideal_step_s'] == pytest.approx(r['model_flops_per_step'] / (4 * 197e12))  # v5e: 197 TFLOP/s bf16


@pytest.mark.parametrize('topology, hbm_gib, peak', [('v4:2x2x1', 32, 275e12), ('v5p:2x2x1', 95, 459e12),
                                                     ('v6e:2x2', 32, 918e12)])
def test_other_chips_one_device_each(tpu_devices, topology, hbm_gib, peak):  # tpu_devices: cache off
  devices = aot.topology_devices(topology)
  assert len(devices) == 4  # v4 and v5p as megacore: one device per chip, as on their TPU VMs
  r = aot.compile_train_step(_config(), devices)
  assert r['hbm_bytes_per_device'] == hbm_gib * 2**30 and 0 < r['total_bytes_per_device'] < 2**30
  # the datasheet peak by device kind (a v5p reports 'TPU v5', which the table missed before)
  assert r['ideal_step_s'] == pytest.approx(r['model_flops_per_step'] / (4 * peak))


def test_fsdp_splits_the_state_over_the_chips(tpu_devices):
  replicated = aot.compile_train_step(_config(), tpu_devices)
  split = aot.compile_train_step(_config(data=1, fsdp=4), tpu_devices)
  assert split['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert split['state_bytes_per_device'] < 0.3 * replicated['state_bytes_per_device']


def test_two_slices_put_data_parallelism_across_them(tpu_devices):  # the fixture: cache off
  devices = aot.topology_devices(TPU, num_slices=2)
  assert len(devices) == 8 and sorted({d.slice_index for d in devices}) == [0, 1]
  r = aot.compile_train_step(_config(data=1, fsdp=-1, dcn_data=2), devices)
  assert r['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1}  # FSDP inside a slice, data across the two
  assert r['state_bytes_per_device'] < 0.3 * 12 * r['num_params']


def test_the_tpu_program_takes_none_of_the_cpu_paths(tpu_devices):
  # layers._cpu_matmul's backward pass puts optimization barriers around its transposes: CPU only.
  _, lowered = aot.lower_train_step(_config(), tpu_devices)
  assert 'optimization_barrier' not in lowered.as_text()
  _, lowered = aot.lower_train_step(_config(), jax.devices()[:4])
  assert 'optimization_barrier' in lowered.as_text()
  with sharding.activate(sharding.make_mesh(devices=tpu_devices)):
    assert not layers.compiling_for_cpu()
  assert layers.compiling_for_cpu()  # no mesh in context: this process's backend


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'lmjax.aot', '--config=configs/gpt.py:tiny', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_cli_reports_a_config_that_does_not_fit_in_one_line():
  proc = _cli(f'--topology={TPU}', '--config.train.batch_size=65536', '--config.data.seq_len=1024')
  assert proc.returncode == 2, proc.stderr[-2000:]
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith('error: does not fit: RESOURCE_EXHAUSTED') and 'HBM' in error, error


def test_cli_rejects_an_unknown_topology():
  proc = _cli('--topology=v9z:2x2')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --topology=v9z:2x2'), proc.stderr[-2000:]
