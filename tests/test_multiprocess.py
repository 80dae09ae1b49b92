"""Real multi-process training: 2 processes x 4 CPU devices on localhost (gloo collectives).

Two processes train, checkpoint and stop at step 2, then resume to step 4 on a
hybrid mesh (the data axis split across the two processes as if they were two
slices); their losses must equal one process driving all 8 devices.
``data.shards=2`` keeps the batches identical whatever the number of processes.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import write_pydoc_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return write_pydoc_corpus(tmp_path_factory.mktemp('mp_corpus'), parts=2, chars=40_000)


def _args(corpus, workdir, *extra):
  return ['-m', 'lmjax.main', '--config=configs/gpt.py:tiny', f'--workdir={workdir}',
          '--config.data.source=text', f'--config.data.paths={corpus}', '--config.data.vocab_size=512',
          '--config.data.seq_len=32', '--config.data.shards=2', '--config.model.num_layers=1',
          '--config.model.embed_dim=32', '--config.model.num_heads=2', '--config.model.mlp_dim=64',
          '--config.train.batch_size=8', '--config.train.max_steps=4', '--config.train.log_every=1',
          '--config.train.eval_every=4', '--config.train.eval_batches=1', '--config.checkpoint.every=2',
          '--config.checkpoint.async_save=false', '--config.mesh.fsdp=2', *extra]


def _env(devices):
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _two_processes(corpus, workdir, *extra):
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, *_args(corpus, workdir, *extra), '--distributed=explicit',
                             f'--coordinator=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
                            cwd=REPO, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in outs]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_two_processes_match_one_and_resume(corpus, tmp_path):
  single = subprocess.run([sys.executable, *_args(corpus, tmp_path / 'single', '--config.mesh.data=4')],
                          cwd=REPO, env=_env(8),
                          capture_output=True, text=True, timeout=400)
  assert single.returncode == 0, single.stderr[-3000:]

  multi = tmp_path / 'multi'
  _two_processes(corpus, multi, '--config.train.stop_at=2', '--config.mesh.data=4')
  assert sorted(os.listdir(multi / 'checkpoints')) == ['2']
  assert sorted(_losses(multi)) == [1, 2]
  # Resume onto a (data=2 per process x dcn_data=2, fsdp=2) mesh: the same axis sizes, new device order.
  errs = _two_processes(corpus, multi, '--config.mesh.data=2', '--config.mesh.dcn_data=2')
  # Only process 0 logs progress; the others keep to warnings and errors.
  assert 'resumed from the checkpoint at step 2' in errs[0]
  assert 'resumed from the checkpoint' not in errs[1] and 'model:' not in errs[1], errs[1][-2000:]
  # Process 0 alone writes metrics; the data state was saved per process.
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(multi / 'checkpoints' / '4' / 'data'))
  want, got = _losses(tmp_path / 'single'), _losses(multi)
  assert sorted(got) == [1, 2, 3, 4]
  for step in range(1, 5):
    assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got, want)
