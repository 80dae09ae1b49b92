"""Test setup: 8 fake CPU devices (set before JAX starts) so sharding code runs everywhere, and one
persistent compilation cache for the session, shared with the subprocesses the tests start."""

import atexit
import csv
import os
import shutil
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests (and their `python -m lmjax.main` subprocesses) compile the same tiny programs; a run that
# finds them on disk starts in about half the time. Every entry is written and read by this session only.
# Compiles under 0.1 s (eager op-by-op dispatch) are left out: writing those costs more than it saves.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='lmjax-test-jax-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# A size limit turns on JAX's file lock: processes that run side by side write the same entries.
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/ is imported by path-loaded config files
  sys.path.insert(0, REPO)


def write_pydoc_corpus(root, parts: int, chars: int) -> str:
  """Real English (Python's own docs) as ``parts`` text files of at most ``chars`` each; returns their glob."""
  import pydoc_data.topics as topics  # pylint: disable=g-import-not-at-top
  names = sorted(topics.topics)
  for i in range(parts):
    text = '\n\n'.join(topics.topics[n] for n in names[i::parts])
    (root / f'part{i}.txt').write_text(text[:chars], encoding='utf-8')
  return str(root / '*.txt')


def tiny_config(corpus, **overrides):
  """A 1-layer model on ``corpus`` that trains in seconds; ``overrides`` are {'section.key': value}."""
  from configs import gpt  # pylint: disable=g-import-not-at-top
  c = gpt.get_config('tiny')
  c.data.source, c.data.paths, c.data.vocab_size, c.data.seq_len = 'text', corpus, 512, 32
  c.model.num_layers, c.model.embed_dim, c.model.num_heads, c.model.mlp_dim = 1, 32, 2, 64
  c.train.batch_size, c.train.max_steps, c.train.log_every = 8, 6, 1
  c.train.eval_every, c.train.eval_batches = 3, 2
  c.checkpoint.every, c.checkpoint.async_save = 3, False
  c.optim.warmup_steps, c.optim.learning_rate = 2, 1e-2
  return _override(c, overrides)


def write_csv(path, rows, header=('text', 'label')) -> str:
  """A labelled-data CSV (``header`` then ``rows``); returns its path."""
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def finetune_config(pretrained, data, **overrides):
  """configs/finetune.py from ``pretrained`` on ``data``, small, validated and saved every 2 steps."""
  from configs import finetune  # pylint: disable=g-import-not-at-top
  c = finetune.get_config()
  c.train.init_from, c.finetune.data = pretrained, data
  c.data.seq_len, c.train.batch_size, c.train.max_steps, c.train.log_every = 32, 8, 8, 1
  c.train.eval_every, c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 2, 2, 4, False
  return _override(c, overrides)


def _override(config, overrides: dict):
  """Sets {'section.key': value} (or {'key': value}) in ``config``; returns it."""
  for k, v in overrides.items():
    section, _, key = k.rpartition('.')
    setattr(config[section] if section else config, key, v)
  return config
