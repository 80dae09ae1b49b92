r"""Throughput of the data-preparation CLI: MB/s of raw text with 1 and 2 worker processes.

  python benchmarks/prepare_throughput.py [--input=FILES --doc_unit=paragraph] [--target_mb=4] \
      [--workers=1,2] [--vocab_size=4096] [--json=/tmp/prepare_throughput.json]

Without --input it builds about --target_mb of text: tinyshakespeare.txt (from
../shared/data, if present) and copies of it with the words of every line
shuffled (seeded), so that dedup keeps nearly everything and every stage does
its full work; else the built-in python_docs corpus. Each worker count runs the
whole preparation (read, clean, dedup, split, tokenizer training, tokenize,
write) once into a temporary directory; the table shows the wall time of each
stage and checks that the outputs are identical. With --num_workers=1 all work
runs in this process; with N > 1 in N spawned processes (their start-up is counted).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'tinyshakespeare.txt')
if REPO not in sys.path:  # lmjax from this checkout, in the workers too
  sys.path.insert(0, REPO)

from lmjax.data import prepare_lib, sources  # pylint: disable=g-import-not-at-top  (after the path fix)

_INPUT = flags.DEFINE_string('input', '', 'Files/globs to prepare; empty: build --target_mb of text.')
_DOC_UNIT = flags.DEFINE_enum('doc_unit', 'paragraph', ['whole', 'paragraph', 'line'], 'As in the CLI.')
_TARGET_MB = flags.DEFINE_float('target_mb', 4.0, 'Size of the built input, in MB.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts to time.')
_VOCAB = flags.DEFINE_integer('vocab_size', 4096, 'Tokenizer vocabulary size.')
_JSON = flags.DEFINE_string('json', os.path.join(tempfile.gettempdir(), 'prepare_throughput.json'),
                            'Where the results go.')

_STAGES = ('read', 'clean', 'dedup', 'tokenizer', 'tokenize_and_write')


def build_input(path: str, target_mb: float) -> str:
  """About ``target_mb`` of distinct English-like text in one file; returns its path."""
  if os.path.isfile(DATA):
    base = open(DATA, encoding='utf-8').read()
  else:
    base = '\n\n'.join(sources.python_docs())
  copies, k = [base], 1
  while sum(len(c.encode('utf-8')) for c in copies) < target_mb * 1e6:
    rng = np.random.default_rng(k)
    copies.append('\n'.join(' '.join(rng.permutation(line.split(' '))) for line in base.split('\n')))
    k += 1
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n\n'.join(copies))
  return path


def _tree(path: str) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), 'rb').read()
          for d, _, files in os.walk(path) for f in files if f != 'report.json'}


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    inputs = _INPUT.value or build_input(os.path.join(tmp, 'input.txt'), _TARGET_MB.value)
    rows, trees = [], []
    for workers in map(int, _WORKERS.value):
      out = os.path.join(tmp, f'out{workers}')
      report = prepare_lib.prepare(prepare_lib.Options(
          input=inputs, output_dir=out, doc_unit=_DOC_UNIT.value, vocab_size=_VOCAB.value,
          num_workers=workers, progress=False))
      seconds = report['run']['seconds']
      rows.append({'workers': workers, 'input_mb': report['input']['bytes'] / 1e6, 'seconds': seconds,
                   'mb_per_s': report['run']['input_mb_per_s'], 'docs_out': report['stages'][-1]['docs'],
                   'tokens_out': report['stages'][-1]['tokens']})
      trees.append(_tree(out))
  identical = all(t == trees[0] for t in trees)
  header = f'{"workers":>7} {"MB":>6} {"total s":>8} {"MB/s":>6} ' + ' '.join(f'{s:>18}' for s in _STAGES)
  print(header)
  for r in rows:
    print(f'{r["workers"]:>7} {r["input_mb"]:>6.2f} {r["seconds"]["total"]:>8.2f} {r["mb_per_s"]:>6.2f} '
          + ' '.join(f'{r["seconds"][s]:>18.2f}' for s in _STAGES))
  print(f'outputs identical across worker counts: {identical}; {rows[0]["docs_out"]:,} documents, '
        f'{rows[0]["tokens_out"]:,} tokens; {os.cpu_count()} CPUs')
  with open(_JSON.value, 'w', encoding='utf-8') as f:
    json.dump({'input': _INPUT.value or f'built: {_TARGET_MB.value} MB', 'doc_unit': _DOC_UNIT.value,
               'vocab_size': _VOCAB.value, 'cpus': os.cpu_count(), 'python': platform.python_version(),
               'outputs_identical': identical, 'runs': rows}, f, indent=2)
  print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  app.run(main)
