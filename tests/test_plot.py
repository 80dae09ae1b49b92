"""lmjax.plot: one PNG per quantity; plotted lines equal metrics.jsonl (a step's last record wins); errors."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lmjax import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_KEYS = ('loss', 'accuracy', 'grad_norm', 'learning_rate', 'tokens_per_sec', 'tflops_per_device')
EVAL_KEYS = ('eval_loss', 'eval_perplexity', 'eval_accuracy', 'eval_tokens', 'eval_bits_per_byte')


def _records(seed: int, *, mfu: bool = False, bits_per_byte: bool = True):
  """A short CLM-like run logged every 5 steps, evaluated every 10, resumed from step 10 after step 20."""
  rng = np.random.default_rng(seed)

  def record(step):
    r = {'step': step, **{k: float(rng.uniform(0.1, 5.0)) for k in TRAIN_KEYS}}
    if mfu:
      r['mfu'] = float(rng.uniform(0.2, 0.5))
    if step % 10 == 0:
      r.update({k: float(rng.uniform(1.0, 50.0)) for k in EVAL_KEYS if bits_per_byte or 'bits' not in k})
    return r

  first = [record(s) for s in (5, 10, 15, 20)]
  resumed = [record(s) for s in (15, 20, 25, 30)]
  del resumed[1]['eval_loss']  # the later record of step 20 replaces the earlier one whole
  return first + resumed


def _write(workdir, records, tail=''):
  workdir.mkdir(parents=True, exist_ok=True)
  text = ''.join(json.dumps(r) + '\n' for r in records) + tail
  (workdir / 'metrics.jsonl').write_text(text, encoding='utf-8')
  return workdir


def _expected(records):
  """{key: (steps, values)} straight from the records: later record of a step wins, sorted by step."""
  last = {}
  for r in records:
    last[r['step']] = r
  keys = {k for r in last.values() for k in r} - {'step'}
  return {k: ([s for s in sorted(last) if k in last[s]], [last[s][k] for s in sorted(last) if k in last[s]])
          for k in keys}


def _lines(fig):
  return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def test_read_metrics_dedupes_sorts_and_skips_a_cut_last_line(tmp_path):
  records = _records(0)
  records.insert(0, {'step': 40, 'loss': float('nan')})  # out of order, and a diverged loss
  _write(tmp_path, records, tail='{"step": 45, "loss": 1.')  # a writer caught mid-line
  got = plot.read_metrics(tmp_path)
  want = _expected(records)
  assert sorted(got) == sorted(want)
  for key, (steps, values) in want.items():
    np.testing.assert_array_equal(got[key][0], steps)
    np.testing.assert_array_equal(got[key][1], values)  # NaN compares equal here
  assert 20 not in got['eval_loss'][0] and 20 in got['eval_accuracy'][0]
  assert list(got['loss'][0]) == [5, 10, 15, 20, 25, 30, 40]


def test_read_metrics_rejects_a_broken_line_inside(tmp_path):
  _write(tmp_path, _records(0), tail='not json\n{"step": 50, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl:9: not a metrics record'):
    plot.read_metrics(tmp_path)


def test_one_workdir_writes_every_panel_to_workdir_plots(tmp_path):
  workdir = _write(tmp_path / 'run', _records(0))
  paths = plot.plot_runs(str(workdir))
  assert set(paths) == {'loss', 'perplexity', 'accuracy', 'bits_per_byte', 'learning_rate', 'grad_norm',
                        'tokens_per_sec', 'tflops', 'summary'}  # no mfu: these records have none
  for path in paths.values():
    assert path.parent == workdir / 'plots'
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_several_workdirs_overlaid_and_named_by_basename(tmp_path):
  a = _write(tmp_path / 'a', _records(0))
  b = _write(tmp_path / 'lr1e-3', _records(1, mfu=True))
  paths = plot.plot_runs([a, b, a], tmp_path / 'out')  # a run given twice is plotted once
  assert 'mfu' in paths and all(p.is_file() and p.parent == tmp_path / 'out' for p in paths.values())
  figures = plot.build_figures({name: plot.read_metrics(w) for name, w in zip(plot.run_names([a, b]), [a, b])})
  loss = figures['loss'].axes[0]
  assert {t.get_text() for t in loss.get_legend().get_texts()} == {'a', 'lr1e-3', 'loss', 'eval_loss'}
  assert set(_lines(figures['loss'])) == {'a/loss', 'a/eval_loss', 'lr1e-3/loss', 'lr1e-3/eval_loss'}
  assert set(_lines(figures['mfu'])) == {'lr1e-3/mfu'}
  # Same basename in different folders: the parent folder tells them apart.
  assert plot.run_names(['x/run', 'y/run/']) == ['x/run', 'y/run']


def test_plotted_lines_equal_metrics_jsonl(tmp_path):
  runs = {'clm': _write(tmp_path / 'clm', _records(0, mfu=True)),
          'mlm': _write(tmp_path / 'mlm', _records(1, bits_per_byte=False))}
  figures = plot.build_figures({name: plot.read_metrics(w) for name, w in runs.items()})
  for name, workdir in runs.items():
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    want = _expected(records)
    for panel in plot.PANELS:
      lines = _lines(figures[panel.name])
      summary = _lines(figures['summary'])
      keys = [k for k in want if re.fullmatch(panel.pattern, k)]
      for key in keys:
        for line in (lines[f'{name}/{key}'], summary[f'{name}/{key}']):
          np.testing.assert_array_equal(line.get_xdata(), want[key][0])
          np.testing.assert_array_equal(line.get_ydata(), want[key][1])
      assert {g for g in lines if g.startswith(name + '/')} == {f'{name}/{k}' for k in keys}
  assert not any(g.endswith('/eval_tokens') for g in _lines(figures['summary'])), 'a count is not a curve'
  assert set(_lines(figures['bits_per_byte'])) == {'clm/eval_bits_per_byte'}
  legend = figures['bits_per_byte'].axes[0].get_legend()
  assert [t.get_text() for t in legend.get_texts()] == ['clm'], 'only runs with a line here'


def test_masked_and_eval_only_names_find_their_panels(tmp_path):
  workdir = _write(tmp_path / 'bert', [{'step': 10, 'masked_loss': 3.0, 'eval_masked_accuracy': 0.2}])
  figures = plot.build_figures({'bert': plot.read_metrics(workdir)})
  assert set(figures) == {'loss', 'accuracy', 'summary'}
  assert set(_lines(figures['accuracy'])) == {'bert/eval_masked_accuracy'}
  assert _lines(figures['loss'])['bert/masked_loss'].get_marker() == 'o'  # a lone point stays visible


def test_log_scale_only_when_the_loss_spans_more_than_2x(tmp_path):
  flat = _write(tmp_path / 'flat', [{'step': s, 'loss': 4.0 + s / 100} for s in range(1, 50)])
  steep = _write(tmp_path / 'steep', [{'step': s, 'loss': 10 * math.exp(-s / 10)} for s in range(1, 50)])
  assert plot.build_figures({'f': plot.read_metrics(flat)})['loss'].axes[0].get_yscale() == 'linear'
  ax = plot.build_figures({'s': plot.read_metrics(steep)})['loss'].axes[0]
  assert ax.get_yscale() == 'log' and 1 <= len(ax.get_yticks()) <= 8


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'lmjax.plot', *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)


def test_cli_compares_runs_listed_after_compare(tmp_path):
  a, b, c = (_write(tmp_path / n, _records(i, mfu=n == 'c')) for i, n in enumerate('abc'))
  proc = _cli(f'--workdir={a}', '--compare', str(b), str(c), f'--output_dir={tmp_path / "out"}')
  assert proc.returncode == 0, proc.stderr
  assert str(tmp_path / 'out' / 'summary.png') in proc.stdout.split()
  assert len(proc.stdout.split()) == 10, 'mfu.png too: only c, the last run, logged mfu'
  assert 'note:' not in proc.stderr, proc.stderr


@pytest.mark.parametrize('case', ['no_dir', 'no_metrics'])
def test_cli_bad_workdir_is_one_line_exit_2(tmp_path, case):
  workdir = tmp_path / 'missing' if case == 'no_dir' else tmp_path
  proc = _cli(f'--workdir={workdir}')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and str(workdir) in lines[0], proc.stderr
  assert ('no such directory' if case == 'no_dir' else 'metrics.jsonl not found') in lines[0]
