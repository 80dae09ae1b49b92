"""Is the input pipeline ever the bottleneck? Its tokens/s next to the model's, for one config.

    python benchmarks/input_pipeline.py [--config=configs/default.py] [--prepared=DIR] [--batches=200]

Measures, in one process on this machine:
- pipeline tokens/s: the training iterator exactly as ``lmjax.train`` builds it (raw text
  tokenized on the fly; and, with ``--prepared``, a corpus from ``python -m lmjax.data.prepare``),
  batches pulled on the host with nothing else running;
- model tokens/s: the same config's training step on the devices training would use (``lmjax.bench``).
The ratio pipeline/model must stay well above 1 (the pipeline also runs while the device works).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/default.py', 'Training config.', lock_config=False)
_PREPARED = flags.DEFINE_string('prepared', '', 'A prepared corpus directory to time as well.')
_BATCHES = flags.DEFINE_integer('batches', 200, 'Batches pulled from each pipeline.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps (after 2 warm-up steps).')
_JSON = flags.DEFINE_string('json', '', 'Also write the figures here.')


def pipeline_tokens_per_sec(config, workdir: str, batches: int) -> float:
  from lmjax import objectives, train  # pylint: disable=g-import-not-at-top
  from lmjax.data import pipeline  # pylint: disable=g-import-not-at-top
  records, _, _ = train.load_data(config, workdir, resuming=False)
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  it = pipeline.sharded_train_iterator(records, row_len=row_len, batch_size=config.train.batch_size,
                                       seed=config.seed, num_shards=config.data.shards or 1, process_index=0,
                                       process_count=1)
  next(it)  # the first batch starts grain's machinery
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.train.batch_size * config.data.seq_len / (time.perf_counter() - start)


def model_tokens_per_sec(config, steps_to_time: int) -> float:
  """The training step as ``lmjax.train`` builds it, timed by ``lmjax.bench`` (random tokens)."""
  from lmjax import bench  # pylint: disable=g-import-not-at-top
  return bench.run(config, steps_=steps_to_time, warmup=2)['tokens_per_sec']


def main(argv):
  del argv
  config = _CONFIG.value
  from lmjax import hostmem, sharding  # pylint: disable=g-import-not-at-top
  hostmem.reexec_with_hugepages(config)  # as lmjax.main does: before JAX starts
  sharding.split_cpu_for(config)
  results = {}
  with tempfile.TemporaryDirectory() as workdir:
    results['pipeline_text_tokens_per_sec'] = pipeline_tokens_per_sec(config, workdir, _BATCHES.value)
  results['model_tokens_per_sec'] = model_tokens_per_sec(config, _STEPS.value)
  if _PREPARED.value:
    prepared = config.copy_and_resolve_references()
    prepared.data.source, prepared.data.paths = 'prepared', _PREPARED.value
    with tempfile.TemporaryDirectory() as workdir:
      results['pipeline_prepared_tokens_per_sec'] = pipeline_tokens_per_sec(prepared, workdir, _BATCHES.value)
  model = results['model_tokens_per_sec']
  print(f'{"":34}{"tokens/s":>12}{"x model":>10}')
  for name, value in results.items():
    print(f'{name:34}{value:12,.0f}{value / model:10.1f}')
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
