"""Is the input pipeline ever the bottleneck? Its tokens/s next to the model's, for one config.

    python benchmarks/input_pipeline.py [--config=configs/default.py] [--prepared=DIR] [--batches=200]

Measures, in one process on this machine:
- pipeline tokens/s: the training iterator exactly as ``lmjax.train`` builds it (raw text
  tokenized on the fly; and, with ``--prepared``, a corpus from ``python -m lmjax.data.prepare``),
  batches pulled on the host with nothing else running;
- model tokens/s: jitted training steps of the same config on the default devices.
The ratio pipeline/model must stay well above 1 (the pipeline also runs while the device works).
"""

from __future__ import annotations

import functools
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


def model_tokens_per_sec(config, workdir: str, steps_to_time: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lmjax import objectives, sharding, steps, train  # pylint: disable=g-import-not-at-top
  from lmjax import state as state_lib  # pylint: disable=g-import-not-at-top
  from lmjax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from lmjax.models.transformer import Transformer  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.Tokenizer(os.path.join(workdir, train.TOKENIZER_FILE))
  model = Transformer(train.model_config(config, tokenizer.vocab_size))
  tx, _ = train.make_optimizer(config)
  mesh = sharding.make_mesh(**config.mesh.to_dict())
  state, _, shardings = state_lib.create(model, tx, jnp.zeros((1, config.data.seq_len), jnp.int32), mesh,
                                         jax.random.key(0))
  loss_fn = functools.partial(objectives.loss_fn(config.objective, train.masking(config, tokenizer)), model.apply)
  step_fn = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx), donate_argnums=0)
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  tokens = np.random.default_rng(0).integers(5, tokenizer.vocab_size, (config.train.batch_size, row_len))
  batch = sharding.host_to_global({'tokens': tokens.astype(np.int32),
                                   'segment_ids': np.ones_like(tokens, np.int32),
                                   'positions': np.broadcast_to(np.arange(row_len, dtype=np.int32),
                                                                tokens.shape).copy()}, mesh)
  rng = jax.random.key(0)
  with sharding.activate(mesh):
    for _ in range(2):
      state, _ = step_fn(state, batch, rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps_to_time):
      state, _ = step_fn(state, batch, rng)
    jax.block_until_ready(state)
  del shardings
  return steps_to_time * config.train.batch_size * config.data.seq_len / (time.perf_counter() - start)


def main(argv):
  del argv
  config = _CONFIG.value
  results = {}
  with tempfile.TemporaryDirectory() as workdir:
    results['pipeline_text_tokens_per_sec'] = pipeline_tokens_per_sec(config, workdir, _BATCHES.value)
    results['model_tokens_per_sec'] = model_tokens_per_sec(config, workdir, _STEPS.value)
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
