"""A run that never loses work: SIGKILL at a random step resumes onto the uninterrupted loss curve,
and a kill during an asynchronous save leaves the previous checkpoint as the one restored.

Every run here is a real ``python -m lmjax.main`` process (or two, on gloo), killed from outside.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import write_pydoc_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS, EVERY = 12, 4


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return write_pydoc_corpus(tmp_path_factory.mktemp('resume_corpus'), parts=2, chars=40_000)


def _args(corpus, workdir, objective, *extra):
  # data.shards=2 gives 1 and 2 processes the same batches; saves are asynchronous (the default).
  return ['-m', 'lmjax.main', '--config=configs/gpt.py:tiny', f'--workdir={workdir}',
          f'--config.objective={objective}', '--config.data.source=text', f'--config.data.paths={corpus}',
          '--config.data.vocab_size=512', '--config.data.seq_len=64', '--config.data.shards=2',
          # Big enough for steps of tens of ms: the test must see step k before the run ends.
          '--config.model.num_layers=2', '--config.model.embed_dim=128', '--config.model.num_heads=4',
          '--config.model.mlp_dim=512', '--config.train.batch_size=16', f'--config.train.max_steps={MAX_STEPS}',
          '--config.train.log_every=1', f'--config.train.eval_every={MAX_STEPS}', '--config.train.eval_batches=1',
          f'--config.checkpoint.every={EVERY}', '--config.checkpoint.keep=5', '--config.mesh.fsdp=2', *extra]


def _start(corpus, workdir, objective, processes, *extra):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={8 // processes}')
  base = [sys.executable, *_args(corpus, workdir, objective, *extra)]
  if processes == 1:
    commands = [base]
  else:
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    commands = [base + ['--distributed=explicit', f'--coordinator=localhost:{port}',
                        f'--num_processes={processes}', f'--process_id={i}'] for i in range(processes)]
  return [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c in commands]


def _finish(procs):
  errs = [p.communicate(timeout=400)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  return errs


def _records(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.endswith('\n')]


def _losses(workdir):
  return {r['step']: r['loss'] for r in _records(workdir) if 'loss' in r}


def _wait_for_step(workdir, step, procs, timeout=300):
  deadline = time.time() + timeout
  while max(_losses(workdir), default=0) < step:
    assert time.time() < deadline and all(p.poll() is None for p in procs), 'run ended before the kill'
    time.sleep(0.005)


@pytest.mark.parametrize('objective,processes', [('clm', 1), pytest.param('mlm', 1, marks=pytest.mark.slow),
                                                pytest.param('clm', 2, marks=pytest.mark.slow),
                                                pytest.param('mlm', 2, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_step_resumes_onto_the_same_losses(corpus, tmp_path, objective, processes):
  """Bitwise: the same program on the same devices, the same data position and fold_in(rng, step)
  randomness (MLM masks included) has no reason to differ in a single bit."""
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  _finish(_start(corpus, straight, objective, processes))
  want = _losses(straight)
  assert sorted(want) == list(range(1, MAX_STEPS + 1))

  kill_at = random.Random(f'{objective}{processes}').choice([s for s in range(EVERY + 1, MAX_STEPS)
                                                             if s % EVERY])
  procs = _start(corpus, killed, objective, processes)
  _wait_for_step(killed, kill_at, procs)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate(timeout=60)
  assert max(_losses(killed)) < MAX_STEPS and all(p.returncode == -signal.SIGKILL for p in procs)

  errs = _finish(_start(corpus, killed, objective, processes))
  resumed_at = int(errs[0].split('resumed from the checkpoint at step ')[1].split()[0])
  assert EVERY <= resumed_at <= kill_at, (resumed_at, kill_at)  # a real data position was restored
  got = _losses(killed)
  assert sorted(got) == list(range(1, MAX_STEPS + 1))  # the killed run's later records were replaced
  assert got == want, {s: (got[s], want[s]) for s in got if got[s] != want[s]}


def test_sigterm_saves_the_current_step_and_exits_0(corpus, tmp_path):
  endless = ('--config.train.max_steps=1000000', '--config.checkpoint.every=1000000',
             '--config.train.eval_every=1000000')
  procs = _start(corpus, tmp_path, 'clm', 1, *endless)
  _wait_for_step(tmp_path, 3, procs)
  procs[0].send_signal(signal.SIGTERM)
  err = procs[0].communicate(timeout=120)[1]
  assert procs[0].returncode == 0, err[-2000:]
  stopped = int(err.split('stopped at step ')[1].split(';')[0])
  assert 'Run the same command again to resume' in err
  assert os.listdir(tmp_path / 'checkpoints') == [str(stopped)]  # no periodic save was due: the stop step's
  err = _finish(_start(corpus, tmp_path, 'clm', 1, *endless[1:], f'--config.train.max_steps={stopped + 2}'))[0]
  assert f'resumed from the checkpoint at step {stopped} ' in err
  assert sorted(_losses(tmp_path)) == list(range(1, stopped + 3))


_KILL_DURING_SAVE = textwrap.dedent('''
    import os, signal, sys
    import jax, numpy as np
    from lmjax import checkpoint
    from lmjax.state import TrainState
    ckpt = checkpoint.Checkpointer(sys.argv[1], every=1, keep=5, async_save=True)
    def state(step):  # 64 MB of noise, so that the background write takes a while
      w = np.random.default_rng(step).normal(size=(4096, 4096)).astype(np.float32)
      return TrainState(step=np.int32(step), params={'w': jax.numpy.asarray(w)}, opt_state=())
    ckpt.save(1, state(1))
    ckpt.wait()
    ckpt.save(2, state(2))  # returns once the arrays are copied off the device; the write goes on
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_kill_during_async_save_restores_the_previous_step(tmp_path):
  directory = tmp_path / 'checkpoints'
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  proc = subprocess.run([sys.executable, '-c', _KILL_DURING_SAVE, str(directory)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert any(n.startswith('2.orbax-checkpoint-tmp') for n in os.listdir(directory)), os.listdir(directory)

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lmjax import checkpoint  # pylint: disable=g-import-not-at-top
  from lmjax.state import TrainState  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(str(directory), every=1, keep=5, async_save=False)
  assert ckpt.latest_step() == 1 and ckpt.incomplete_steps == [2]
  abstract = TrainState(step=jax.ShapeDtypeStruct((), np.int32), opt_state=(),
                        params={'w': jax.ShapeDtypeStruct((4096, 4096), np.float32)})
  restored = ckpt.restore(1, abstract)
  ckpt.close()
  assert int(restored.step) == 1
  np.testing.assert_array_equal(restored.params['w'],
                                np.random.default_rng(1).normal(size=(4096, 4096)).astype(np.float32))
  assert not any('tmp' in n for n in os.listdir(directory))  # the debris is cleaned up


def test_cpu_save_of_replicated_arrays_compiles_nothing(tmp_path, caplog):
  """orbax's replica-parallel save cut each replica's slice with a program compiled per shape and device
  (48 compiles, 3.4 s of a tiny 8-device run); on CPU lmjax writes each replicated array whole."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from lmjax import checkpoint  # pylint: disable=g-import-not-at-top
  from lmjax.state import TrainState  # pylint: disable=g-import-not-at-top
  replicated = NamedSharding(jax.make_mesh((8,), ('data',)), P())
  values = {name: np.random.default_rng(i).normal(size=shape).astype(np.float32)
            for i, (name, shape) in enumerate({'w': (64, 16), 'b': (48,), 'k': (32, 2, 16)}.items())}
  state = TrainState(step=jax.device_put(np.int32(3), replicated), opt_state=(),
                     params={k: jax.device_put(v, replicated) for k, v in values.items()})
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), every=1, keep=2, async_save=False)
  with caplog.at_level('WARNING'), jax.log_compiles():
    assert ckpt.save(3, state)
    ckpt.wait()
  compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Compiling ')]
  assert not compiled, compiled[:3]
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
  restored = ckpt.restore(3, abstract)
  ckpt.close()
  assert int(restored.step) == 3
  for k, v in values.items():
    np.testing.assert_array_equal(restored.params[k], v)
    assert restored.params[k].sharding == replicated
