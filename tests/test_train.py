"""End-to-end training: learning, exact resume, the CLI, and errors."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config, write_pydoc_corpus
from lmjax import hostmem, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A few hundred KB of real English (Python's own docs) as plain text files."""
  return write_pydoc_corpus(tmp_path_factory.mktemp('corpus'), parts=4, chars=60_000)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def _latest_params(workdir):
  return jax.device_get(train.load_for_inference(workdir)[2])


def _baselines(config, workdir):
  from lmjax.data import pipeline, sources, tokenizer  # pylint: disable=g-import-not-at-top
  docs = sources.load_documents('text', config.data.paths, 'text', config.data.max_doc_chars)
  train_docs, val_docs = sources.split_documents(docs, config.data.val_fraction, config.seed)
  tok = tokenizer.Tokenizer(os.path.join(workdir, 'tokenizer.model'))
  return pipeline.unigram_baselines(pipeline.encode(train_docs, tok), pipeline.encode(val_docs, tok),
                                    tok.vocab_size)


def test_train_writes_artifacts_and_learns(corpus, tmp_path):
  c = tiny_config(corpus, **{'train.max_steps': 200, 'train.eval_every': 200, 'train.eval_batches': 0,
                             'checkpoint.every': 50, 'checkpoint.keep': 2, 'model.embed_dim': 64,
                             'model.mlp_dim': 256, 'model.num_layers': 2})
  result = train.train_and_evaluate(c, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints'), key=int) == ['150', '200']
  assert (tmp_path / 'tokenizer.model').exists() and (tmp_path / 'config.json').exists()
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tensorboard'))
  losses = _losses(str(tmp_path))
  assert np.mean([losses[s] for s in range(191, 201)]) < losses[1] - 1.0
  # Beating the unigram model on held-out text means the model uses context, not just token counts.
  assert result['eval_perplexity'] < 0.9 * _baselines(c, str(tmp_path))['unigram_perplexity']
  assert 0 < result['eval_bits_per_byte'] < 8
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  assert {'loss', 'learning_rate', 'tokens_per_sec', 'grad_norm'} <= set(records[0])
  assert 'eval_perplexity' in records[-1]


def test_tokens_per_sec_stays_steady_at_evaluations_and_saves(corpus, tmp_path):
  """The steps that end in an evaluation and a checkpoint save log the rate of the others. XLA:CPU copies a
  step's metrics to the host only after the next step has run: timed when its metrics were read, a step
  took two steps' time, and a step with an evaluation almost none (60x the others' rate)."""
  c = tiny_config(corpus, **{'train.max_steps': 8, 'train.eval_every': 4, 'checkpoint.every': 4,
                             'model.embed_dim': 256, 'model.mlp_dim': 1024, 'model.num_heads': 4,
                             'data.seq_len': 128, 'train.batch_size': 16})
  train.train_and_evaluate(c, str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  rates = {r['step']: round(r['tokens_per_sec']) for r in records}
  steady = [rates[s] for s in range(3, 9)]  # steps 1-2: compilation and the first writes
  assert max(steady) < 3 * min(steady), rates


def test_nanogpt_config_trains_a_character_model(corpus, tmp_path):
  """configs/nanogpt.py:cpu end to end: a character tokenizer trained into the workdir, and the model learns."""
  from configs import nanogpt  # pylint: disable=g-import-not-at-top
  from lmjax.data import tokenizer  # pylint: disable=g-import-not-at-top
  c = nanogpt.get_config('cpu')
  c.data.source, c.data.paths = 'text', corpus
  c.train.max_steps = c.train.eval_every = c.checkpoint.every = 200
  c.train.batch_size = 16  # 12 does not split over the suite's 8 CPU devices
  result = train.train_and_evaluate(c, str(tmp_path))
  tok = tokenizer.Tokenizer(str(tmp_path / 'tokenizer.model'))
  pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size) if i not in (*tok.special_ids, tokenizer.UNK)]
  assert 40 < tok.vocab_size < 256 and all(len(p) == 1 for p in pieces), pieces
  assert result['eval_perplexity'] < 0.9 * _baselines(c, str(tmp_path))['unigram_perplexity']


@pytest.mark.slow  # 300 steps; MLM training is also covered by resume and sharding tests
def test_mlm_learns_beyond_the_unigram_baseline(corpus, tmp_path):
  c = tiny_config(corpus, **{'objective': 'mlm', 'train.max_steps': 300, 'train.eval_every': 300,
                             'train.eval_batches': 0, 'model.embed_dim': 64, 'model.mlp_dim': 256,
                             'model.num_layers': 2, 'train.batch_size': 32, 'data.seq_len': 64,
                             'mlm.whole_word': True, 'optim.learning_rate': 3e-3,
                             'optim.warmup_steps': 20})
  result = train.train_and_evaluate(c, str(tmp_path))
  baseline = _baselines(c, str(tmp_path))['majority_accuracy']
  assert result['eval_accuracy'] > baseline + 0.05, (result, baseline)
  assert 'eval_bits_per_byte' not in result  # not defined for a masked LM
  losses = _losses(str(tmp_path))
  assert np.mean([losses[s] for s in range(291, 301)]) < losses[1] - 1.0


# clm is in the slow suite: tests/test_resume.py kills and resumes a clm run bitwise by default.
@pytest.mark.parametrize('objective', [pytest.param('clm', marks=pytest.mark.slow), 'mlm'])
def test_resume_reproduces_uninterrupted_run(corpus, tmp_path, objective):
  """Train 6 steps; drop the step-6 checkpoint; rerun: resumes at 3 and lands on the same params.

  For MLM, equal losses at steps 4-6 also mean equal masks (they are drawn from fold_in(rng, step)).
  """
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(corpus, objective=objective), workdir)
  straight_params, straight_losses = _latest_params(workdir), _losses(workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))
  train.train_and_evaluate(tiny_config(corpus, objective=objective), workdir)
  resumed_losses = _losses(workdir)
  assert sorted(resumed_losses) == list(range(1, 7))  # steps 4-6 re-logged once, not duplicated
  for step in (4, 5, 6):
    assert resumed_losses[step] == straight_losses[step]
  jax.tree.map(np.testing.assert_array_equal, _latest_params(workdir), straight_params)


def test_profile_window_writes_a_trace(corpus, tmp_path):
  train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 4, 'train.eval_every': 4,
                                                  'train.profile_start': 2, 'train.profile_steps': 2}),
                           str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / 'profile') for f in files if f.endswith('.xplane.pb')]
  assert len(traces) == 1


def test_loop_queues_at_most_one_step(corpus, tmp_path, monkeypatch):
  """The host may run one step ahead of the device, never more (deeper queues can deadlock
  XLA:CPU's devices: lmjax.train._Loop). A model slow enough that an unbounded host gets ahead."""
  queued = []  # at each dispatch: earlier steps' metrics not yet computed, the last one excepted
  outputs = []

  class Watched(train._Loop):  # pylint: disable=protected-access
    def __init__(self, *args):
      super().__init__(*args)
      step = self.train_fn

      def watched(*args):
        queued.append(sum(not leaf.is_ready() for out in outputs[:-1] for leaf in jax.tree.leaves(out)))
        state, metrics = step(*args)
        outputs.append(metrics)
        return state, metrics
      self.train_fn = watched

  monkeypatch.setattr(train, '_Loop', Watched)
  train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 6, 'train.log_every': 6,
                                                  'train.eval_every': 6, 'checkpoint.every': 6,
                                                  'model.num_layers': 1, 'model.embed_dim': 256,
                                                  'model.mlp_dim': 1024, 'model.num_heads': 4,
                                                  'data.seq_len': 128}), str(tmp_path))
  assert len(queued) == 6 and max(queued) == 0, queued


def test_grad_accumulation_matches_full_batch(corpus, tmp_path):
  a = train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 3}), str(tmp_path / 'a'))
  b = train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 3, 'train.grad_accum_steps': 2}),
                               str(tmp_path / 'b'))
  np.testing.assert_allclose(a['eval_loss'], b['eval_loss'], rtol=1e-5)


def _main(args, **kw):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'lmjax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, **kw)


def _cli_args(corpus, workdir, *extra):
  return ['--config=configs/gpt.py:tiny', f'--workdir={workdir}', '--config.data.source=text',
          f'--config.data.paths={corpus}', '--config.data.vocab_size=512', '--config.data.seq_len=32',
          '--config.model.num_layers=1', '--config.model.embed_dim=32', '--config.model.num_heads=2',
          '--config.model.mlp_dim=64', '--config.train.batch_size=8', '--config.train.eval_batches=2',
          *extra]


def test_cli_trains_and_samples(corpus, tmp_path):
  proc = _main(_cli_args(corpus, tmp_path, '--config.train.max_steps=20', '--config.train.eval_every=20'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / 'checkpoints') == ['20']
  # The peak its MFU is against, with where it comes from: on a CPU, the ceiling measured at the start.
  assert re.search(r'MFU against [\d.]+ TFLOP/s per device: measured f32 matmul ceiling of the CPU, [\d.]+ '
                   r'GFLOP/s', proc.stderr), proc.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  # The run restarted itself with malloc on huge pages exactly where lmjax.hostmem says it should.
  from configs import gpt  # pylint: disable=g-import-not-at-top
  assert ('malloc on transparent huge pages' in proc.stderr) == hostmem.hugepages_wanted(gpt.get_config('tiny'), env)
  out = subprocess.run([sys.executable, '-m', 'lmjax.sample', f'--workdir={tmp_path}', '--prompt=The',
                        '--prompt=A list', '--num_samples=2', '--max_new_tokens=20', '--seed=1'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith('The') and len(out.stdout.split()) > 3
  samples = out.stdout.split('-' * 40 + '\n')[:-1]
  assert len(samples) == 4 and samples[2].startswith('A list')
  assert re.search(r'80 new tokens at [\d,]+ tokens/s', out.stderr), out.stderr[-1000:]
  assert 'CheckpointManager' not in out.stderr, out.stderr[-3000:]  # orbax's page of INFO lines per restore


def test_cli_fill_mask(corpus, tmp_path):
  proc = _main(_cli_args(corpus, tmp_path, '--config.objective=mlm', '--config.train.max_steps=10',
                         '--config.train.eval_every=10'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  run = lambda module, *a: subprocess.run([sys.executable, '-m', module, f'--workdir={tmp_path}', *a], cwd=REPO,
                                          env=env, capture_output=True, text=True, timeout=300)
  out = run('lmjax.fill_mask', '--text=The <M> statement and the <M>.', '--mask_marker=<M>', '--top_k=3')
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[1].startswith('<M> #1: ') and lines[2].startswith('<M> #2: ') and len(lines) == 3
  assert len(re.findall(r'\((0\.\d+|1\.000)\)', lines[1])) == 3
  last_line = lambda out: out.stderr.strip().splitlines()[-1]
  out = run('lmjax.fill_mask', '--text=no marker here')  # bad input: one line and exit 2, as every CLI (lmjax.cli)
  assert out.returncode == 2 and last_line(out).startswith('error: ') and 'mask marker' in last_line(out)
  out = run('lmjax.sample', '--prompt=The')
  assert out.returncode == 2 and last_line(out).startswith('error: ') and 'fill_mask' in last_line(out)


_WRITE_SCALARS = r'''
import struct, sys
from lmjax import metrics
writer = metrics.MetricWriter(sys.argv[1])
writer.write(7, {'loss': 2.5})
writer.close()
print('torch imported' if 'torch' in sys.modules else 'torch not imported')
import torch  # still importable afterwards
import glob
from tensorboardX.proto import event_pb2
(path,) = glob.glob(sys.argv[1] + '/tensorboard/events.out.tfevents*')
data, values = open(path, 'rb').read(), []
while data:  # TFRecord: length, its crc, the record, its crc
  (n,) = struct.unpack('<Q', data[:8])
  event = event_pb2.Event.FromString(data[12:12 + n])
  values += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  data = data[12 + n + 4:]
print(values)
'''


def test_metric_writer_logs_scalars_without_importing_torch(tmp_path):
  """tensorboardX's writer module imports PyTorch for a type hint (2 s of start-up where it is installed)."""
  pytest.importorskip('torch')
  proc = subprocess.run([sys.executable, '-c', _WRITE_SCALARS, str(tmp_path)], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines() == ['torch not imported', "[(7, 'loss', 2.5)]"]
  assert json.loads((tmp_path / 'metrics.jsonl').read_text()) == {'step': 7, 'loss': 2.5}
