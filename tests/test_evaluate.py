"""python -m lmjax.evaluate: the training-time validation numbers again, and sliding-window text scoring."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, write_pydoc_corpus

from lmjax import evaluate, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  corpus = write_pydoc_corpus(tmp_path_factory.mktemp('eval_corpus'), parts=2, chars=40_000)
  workdir = str(tmp_path_factory.mktemp('eval_run'))
  train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 6, 'train.eval_every': 6}), workdir)
  return workdir


def test_validation_reproduces_the_training_time_eval(trained):
  with open(os.path.join(trained, 'metrics.jsonl'), encoding='utf-8') as f:
    logged = [r for r in map(json.loads, f) if 'eval_loss' in r][-1]
  got = evaluate.validation_metrics(trained)
  for k in ('eval_loss', 'eval_accuracy', 'eval_bits_per_byte'):
    assert got[k] == pytest.approx(logged[k], abs=1e-4), k
  assert got['eval_tokens'] == logged['eval_tokens']


def test_sliding_windows_score_every_target_once():
  doc = np.arange(1, 24)
  windows = list(evaluate.sliding_windows(doc, context=8, stride=3))
  scored = [t for tokens, mask, _ in windows for t in tokens[mask]]
  assert scored == list(doc[1:])  # each target once, in order
  for tokens, mask, length in windows[1:]:
    assert np.flatnonzero(mask)[0] >= 8 - 3  # at least context - stride tokens before the first scored one
    assert length <= 9


def _direct_nll(model, params, ids):
  """Sum of -log p(token | prefix), straight from the model on the whole document (no windows)."""
  logits = model.apply({'params': params}, jnp.asarray(ids[None, :-1]), deterministic=True)[0]
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  return -float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))


def test_text_metrics_match_the_model_directly(trained, tmp_path):
  config, model, params, tok = train.load_for_inference(trained)
  short = 'The with statement is used to wrap the execution of a block.'
  path = tmp_path / 'short.txt'
  path.write_text(short, encoding='utf-8')
  ids = np.asarray([tok.bos_id, *tok.encode(short), tok.eos_id], np.int32)
  assert len(ids) <= config.data.seq_len + 1  # one window holds it: no sliding
  got = evaluate.text_metrics(trained, str(path))
  nll = _direct_nll(model, params, ids)
  assert got['eval_tokens'] == len(ids) - 1
  assert got['eval_loss'] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
  assert got['word_perplexity'] == pytest.approx(np.exp(nll / len(short.split())), rel=1e-4)


def test_long_text_is_scored_in_windows_and_the_cli_prints_it(trained, tmp_path):
  config = train.load_workdir_config(trained)
  long_text = ' '.join(['The interpreter reads and executes statements one after another.'] * 40)
  path = tmp_path / 'long.txt'
  path.write_text(long_text, encoding='utf-8')
  tok = train.load_for_inference(trained)[3]
  n = len(tok.encode(long_text)) + 2
  assert n > 3 * config.data.seq_len
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'lmjax.evaluate', f'--workdir={trained}', f'--data={path}',
                         '--stride=8', f'--json={tmp_path / "out.json"}'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((tmp_path / 'out.json').read_text())
  assert result['eval_tokens'] == n - 1 and 'word_perplexity' in proc.stdout
  proc = subprocess.run([sys.executable, '-m', 'lmjax.evaluate', f'--workdir={trained}', f'--data={path}',
                         '--stride=999'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith('error: --stride=999')
