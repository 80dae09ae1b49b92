"""Training curves from one or several workdirs' metrics.jsonl, as PNGs.

  python -m lmjax.plot --workdir=runs/default [--compare runs/other ...] [--output_dir=DIR]

Writes one PNG per quantity (loss.png, perplexity.png, learning_rate.png, tokens_per_sec.png, mfu.png, ...)
and a summary.png grid of them all, to ``<workdir>/plots`` unless --output_dir says otherwise. Runs are
overlaid, coloured by run and named by the workdir's basename. A quantity that no run logged (MFU on CPU,
evaluation before the first eval step) gets no PNG and a note.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from absl import app, flags
# Figures are built object-oriented on an Agg canvas, never through pyplot: no display is needed, no
# global backend is switched (notebooks keep theirs), and no figure outlives the call.
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmjax import cli

Series = tuple[np.ndarray, np.ndarray]  # (steps int64, values float64), sorted by step, one value per step


@dataclasses.dataclass(frozen=True)
class Panel:
  """One quantity: which metrics.jsonl keys it draws and how its y axis reads."""
  name: str  # the PNG's stem
  title: str
  ylabel: str
  pattern: str  # full-match regex over metric names: MLM and CLM runs log the same names, variants also match
  yaxis: str  # 'log' (log scale where the data spans enough), 'linear', 'percent' (fractions), 'eng', 'sci'
  missing: str  # why no run might have it


PANELS = (
    Panel('loss', 'Loss', 'cross-entropy (nats / target token)', r'(\w+_)?loss', 'log',
          'no run logged a loss yet'),
    Panel('perplexity', 'Perplexity (eval)', 'perplexity = exp(eval loss)', r'(\w+_)?perplexity', 'log',
          'no evaluation record yet (one every --config.train.eval_every steps)'),
    Panel('accuracy', 'Top-1 accuracy', 'accuracy (% of target tokens)', r'(\w+_)?accuracy', 'percent',
          'no run logged an accuracy yet'),
    Panel('bits_per_byte', 'Bits per byte (eval)', 'bits / UTF-8 byte', r'(\w+_)?bits_per_byte', 'linear',
          'no next-token evaluation record (bits per byte are not defined for MLM)'),
    Panel('learning_rate', 'Learning rate', 'learning rate', r'learning_rate', 'sci',
          'no run logged a learning rate yet'),
    Panel('grad_norm', 'Gradient norm', 'global L2 norm, before clipping', r'grad_norm', 'log',
          'no run logged grad_norm'),
    Panel('tokens_per_sec', 'Training throughput', 'tokens / s (all devices)', r'tokens_per_sec', 'eng',
          'no run logged tokens_per_sec yet'),
    Panel('tflops', 'Model FLOP/s', 'TFLOP/s per device', r'tflops_per_device', 'linear',
          'no run logged tflops_per_device yet'),
    Panel('mfu', 'Model FLOPs utilisation', "MFU (% of the run's peak FLOP/s)", r'mfu',
          'percent', 'no run logged mfu (it needs a known peak: a GPU/TPU datasheet figure, a CPU\'s measured '
          'matmul ceiling, or train.peak_flops)'),
)

_DPI = 120
_PANEL_SIZE = (7.0, 4.2)  # inches: one quantity, 840 x 504 px at _DPI
_GRID_CELL = (5.0, 3.4)  # inches per summary panel


def read_metrics(workdir) -> dict[str, Series]:
  """``<workdir>/metrics.jsonl`` -> {metric name: (steps, values)}, sorted by step.

  A resumed run may append a step again: the later record replaces the earlier one whole (a key the later
  record lacks is then absent at that step). A last line cut short by a run still writing is ignored.
  Raises FileNotFoundError for a missing workdir or file, ValueError for a file without records.
  """
  path = _jsonl_path(workdir)
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  records = {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record['step'])
    except (ValueError, KeyError, TypeError) as e:
      if number == len(lines):  # a writer caught mid-line
        break
      raise ValueError(f'{path}:{number}: not a metrics record ({e}); fix or delete that line') from None
    records[step] = record
  if not records:
    raise ValueError(f'{path} has no records yet; the first is written at step --config.train.log_every')
  series = {}
  for step in sorted(records):
    for key, value in records[step].items():
      # Plot numbers only (json NaN/Infinity included); bools are ints to Python but not metrics.
      if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
        series.setdefault(key, ([], []))
        series[key][0].append(step)
        series[key][1].append(float(value))
  return {k: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in series.items()}


def run_names(workdirs) -> list[str]:
  """Legend names: each workdir's basename, with parent folders added until the names differ."""
  parts = [Path(os.path.abspath(w)).parts for w in workdirs]
  for depth in range(1, max(map(len, parts)) + 1):
    names = [os.path.join(*p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [os.path.abspath(w) for w in workdirs]


def build_figures(runs: dict[str, dict[str, Series]]) -> dict[str, Figure]:
  """{run name: read_metrics(...)} -> {panel name: Figure} for every panel some run has, plus 'summary'.

  Every plotted line carries ``gid = '<run name>/<metric name>'``, so callers (tests) can find it.
  """
  figures, present = {}, []
  for panel in PANELS:
    if not _keys(panel, runs):
      continue
    present.append(panel)
    fig = _figure(_PANEL_SIZE)
    _draw(fig.add_subplot(), panel, runs, fontsize=9)
    figures[panel.name] = fig
  if present:
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig = _figure((_GRID_CELL[0] * cols, _GRID_CELL[1] * rows + 0.4))
    for i, panel in enumerate(present):
      _draw(fig.add_subplot(rows, cols, i + 1), panel, runs, fontsize=7)
    fig.suptitle(' vs '.join(runs) + ': training curves', fontsize=13, fontweight='bold')
    figures['summary'] = fig
  return figures


def plot_runs(workdirs, output_dir=None) -> dict[str, Path]:
  """Reads each workdir's metrics.jsonl and writes the PNGs; returns {panel name: path}, 'summary' included.

  ``output_dir`` defaults to ``<first workdir>/plots``. Panels no run has are left out of the result (see
  ``PANELS[...].missing`` for why). Raises FileNotFoundError / ValueError on bad input.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = list(dict.fromkeys(os.path.abspath(w) for w in workdirs))  # the same run twice is one run
  if not workdirs:
    raise ValueError('no workdir given')
  runs = {name: read_metrics(w) for name, w in zip(run_names(workdirs), workdirs)}
  out = Path(output_dir) if output_dir else Path(workdirs[0]) / 'plots'
  if out.exists() and not out.is_dir():
    raise ValueError(f'{out} is a file, not a directory; pass another --output_dir')
  out.mkdir(parents=True, exist_ok=True)
  paths = {}
  for name, fig in build_figures(runs).items():
    paths[name] = out / f'{name}.png'
    fig.savefig(paths[name], dpi=_DPI)
  return paths


def _jsonl_path(workdir) -> Path:
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: no such directory; pass the --workdir a training run '
                            '(python -m lmjax.main) wrote to')
  path = workdir / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found; is {workdir} a training workdir? metrics.jsonl appears at '
                            'the first log step of python -m lmjax.main --workdir=' + str(workdir))
  return path


def _keys(panel: Panel, runs) -> list[str]:
  """The panel's metric names present in any run: training first, then eval_*, each alphabetical."""
  found = {k for metrics in runs.values() for k in metrics if re.fullmatch(panel.pattern, k)}
  return sorted(found, key=lambda k: (k.startswith('eval_'), k))


def _figure(size) -> Figure:
  fig = Figure(figsize=size, dpi=_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


_COLORS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown', 'tab:pink',
           'tab:gray', 'tab:olive', 'tab:cyan')
# Training metrics (logged often) as lines; eval_* metrics (a few points) dashed with markers.
_TRAIN_STYLES = ({'linestyle': '-'}, {'linestyle': '-.'}, {'linestyle': (0, (1, 1))})
_EVAL_STYLES = ({'linestyle': '--', 'marker': 'o'}, {'linestyle': ':', 'marker': 's'},
                {'linestyle': '-.', 'marker': '^'})


def _style(key: str, keys: list[str]) -> dict:
  group = [k for k in keys if k.startswith('eval_') == key.startswith('eval_')]
  styles = _EVAL_STYLES if key.startswith('eval_') else _TRAIN_STYLES
  return dict(styles[group.index(key) % len(styles)])


def _draw(ax, panel: Panel, runs, fontsize: int):
  """One panel: colour = run, line style = metric (training solid, eval dashed with markers)."""
  keys = _keys(panel, runs)
  values, drawn = [], []
  for r, (run, metrics) in enumerate(runs.items()):
    for key in keys:
      if key not in metrics:
        continue
      steps, ys = metrics[key]
      style = _style(key, keys)
      if len(steps) == 1:  # a lone point draws no line
        style.setdefault('marker', 'o')
      # Thinner lines once there are many points, or noisy curves of several runs hide each other.
      ax.plot(steps, ys, color=_COLORS[r % len(_COLORS)], linewidth=1.4 if len(steps) < 200 else 0.8,
              markersize=3.5, gid=f'{run}/{key}', label=f'{run}: {key}', **style)
      values.append(ys)
      if r not in drawn:
        drawn.append(r)
  last_step = max(int(m[k][0][-1]) for m in runs.values() for k in m)
  _format_axes(ax, panel, np.concatenate(values), last_step, fontsize)
  # A legend of runs (colours; those with a line here) and of metrics (line styles), not their product:
  # it stays short. A run keeps its colour across panels.
  names = list(runs)
  run_style = _style(keys[0], keys) if len(keys) == 1 else {'linewidth': 2}
  handles = [Line2D([], [], color=_COLORS[r % len(_COLORS)], label=names[r], **run_style)
             for r in drawn] if len(runs) > 1 else []
  if len(keys) > 1 or len(runs) == 1:
    color = 'black' if len(runs) > 1 else _COLORS[0]
    handles += [Line2D([], [], color=color, label=key, **_style(key, keys)) for key in keys]
  ax.legend(handles=handles, title=next(iter(runs)) if len(runs) == 1 else None, fontsize=fontsize - 1,
            title_fontsize=fontsize - 1, framealpha=0.85)


def _format_axes(ax, panel: Panel, ys, last_step: int, fontsize: int):
  ax.set_title(panel.title, fontsize=fontsize + 2)
  ax.set_xlabel('training step', fontsize=fontsize)
  ax.set_ylabel(panel.ylabel, fontsize=fontsize)
  ax.tick_params(labelsize=fontsize - 1)
  ax.grid(True, which='major', alpha=0.35)
  # Every panel spans step 0 to the last step of any run, so eval-only panels line up with the others.
  ax.set_xlim(0, max(last_step, 1) * 1.02)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10], integer=True))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(_step_label))
  finite = ys[np.isfinite(ys)]
  if panel.yaxis == 'log' and finite.size and finite.min() > 0 and finite.max() / finite.min() > 2:
    # Log scale once the curve spans more than 2x, so the first steps do not flatten the rest; ticks
    # at round values with plain labels rather than 10^x.
    ax.set_yscale('log')
    ax.yaxis.set_major_locator(ticker.FixedLocator(_log_ticks(finite.min(), finite.max())))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
  elif panel.yaxis == 'percent':
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{100 * v:.3g}%'))
  elif panel.yaxis == 'eng':
    ax.yaxis.set_major_formatter(ticker.EngFormatter(sep=''))
  elif panel.yaxis == 'sci':
    formatter = ticker.ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((-2, 3))
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.get_offset_text().set_fontsize(fontsize - 1)


def _log_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
  """The densest of 1-2-5-like series of round values with at most ``most`` ticks in [lo, hi]."""
  decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
  series = ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 7),
            (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8))
  best = []
  for subs in series:
    ticks = [s * 10.0 ** d for d in decades for s in subs if lo <= s * 10.0 ** d <= hi]
    if best and len(ticks) > most:
      break
    best = ticks
  return best


def _step_label(step, _):
  return f'{step / 1000:g}k' if abs(step) >= 10_000 else f'{step:g}'


def _define_flags():
  """Only when run as a CLI: importing lmjax.plot (tests, notebooks) must not claim --workdir."""
  flags.DEFINE_string('workdir', None, 'Training workdir whose metrics.jsonl is plotted.', required=True)
  flags.DEFINE_multi_string('compare', [], 'More workdirs to overlay (repeat the flag, or list them after it '
                            'as positional arguments).')
  flags.DEFINE_string('output_dir', None, 'Where the PNGs go; default <workdir>/plots.')


def main(argv):
  args = flags.FLAGS
  # `--compare a b` leaves b as a positional argument: take it as one more run to compare.
  workdirs = [args.workdir, *args.compare, *argv[1:]]
  try:
    paths = plot_runs(workdirs, args.output_dir)
  except (OSError, ValueError) as e:  # a missing workdir as well as bad records
    cli.fail(str(e))
  for panel in PANELS:
    if panel.name not in paths:
      print(f'note: no {panel.name} plot: {panel.missing}', file=sys.stderr)
  for path in paths.values():
    print(path)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
