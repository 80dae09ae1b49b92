"""grain input pipelines: documents -> tokens -> packed rows -> host-local batches.

Rows are built by concat-then-split packing: documents (``[bos] text [eos]``)
are laid end to end and cut every ``row_len`` tokens, so no token is padding.
``segment_ids`` (1, 2, ... per document within a row) let attention stay inside
a document; ``positions`` restart at 0 where a document (or its continuation
in a new row) starts. The training iterator is infinite, reshuffles every
epoch, and its ``get_state()`` is the exact data position for checkpoints.
"""

from __future__ import annotations

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from lmjax.data.tokenizer import Tokenizer

_RENAME = {'tokens': 'tokens', 'tokens_segment_ids': 'segment_ids', 'tokens_positions': 'positions'}


class _Encode(grain.transforms.Map):
  """Document text -> {'tokens': int32 [bos, ..., eos]}."""

  def __init__(self, tokenizer: Tokenizer):
    self._tokenizer = tokenizer

  def map(self, doc: str):
    ids = [self._tokenizer.bos_id, *self._tokenizer.encode(doc), self._tokenizer.eos_id]
    return {'tokens': np.asarray(ids, np.int32)}


def encode(docs: list[str], tokenizer: Tokenizer) -> grain.MapDataset:
  """Raw documents as the records every pipeline below reads: ``{'tokens': int32 [bos, ..., eos]}``.

  Lazy: a document is tokenized when it is read. A prepared corpus
  (``lmjax.data.prepared.split_source``) yields the same records from disk.
  """
  return grain.MapDataset.source(docs).map(_Encode(tokenizer))


def _pack(ds: grain.IterDataset, row_len: int) -> grain.IterDataset:
  packed = ConcatThenSplitIterDataset(ds, length_struct={'tokens': row_len})
  return packed.map(lambda row: {new: row[old].astype(np.int32) for old, new in _RENAME.items()})


def train_iterator(records: grain.MapDataset, *, row_len: int, batch_size: int, seed: int,
                   shard_index: int = 0, shard_count: int = 1) -> grain.DatasetIterator:
  """Infinite, checkpointable iterator of {'tokens','segment_ids','positions'}: int32 [batch_size, row_len].

  ``records`` are documents (see ``encode``). ``batch_size`` is this shard's share;
  a shard reads the documents ``shard_index::shard_count`` of every epoch's global
  shuffle (disjoint across shards).
  """
  if not len(records):
    raise ValueError('no training documents; check --config.data.paths and data.val_fraction')
  ds = records.shuffle(seed=seed).repeat(None)[shard_index::shard_count]
  # grain reads (tokenizes) up to 500 documents ahead; on a small corpus that is many epochs at once,
  # at start-up, on the cores compiling the step (1.3 s of a 15 s test run). At most one epoch ahead;
  # the data order does not depend on it.
  epoch = -(-len(records) // shard_count)
  read = grain.ReadOptions(prefetch_buffer_size=min(grain.ReadOptions().prefetch_buffer_size, epoch))
  ds = _pack(ds.to_iter_dataset(read), row_len).batch(batch_size, drop_remainder=True)
  return iter(ds)


class _ConcatShards(grain.DatasetIterator):
  """Rows of several shard iterators side by side: one batch, one checkpointable state."""

  def __init__(self, shards: list[grain.DatasetIterator]):
    super().__init__(shards)
    self._shards = shards

  def __next__(self):
    batches = [next(it) for it in self._shards]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self):
    return {'shards': [it.get_state() for it in self._shards]}

  def set_state(self, state):
    for it, s in zip(self._shards, state['shards'], strict=True):
      it.set_state(s)


def sharded_train_iterator(records: grain.MapDataset, *, row_len: int, batch_size: int, seed: int,
                           num_shards: int, process_index: int, process_count: int) -> grain.DatasetIterator:
  """This process's rows of every global batch, the same whatever the number of processes.

  The documents are cut into ``num_shards`` disjoint streams and every global
  batch of ``batch_size`` rows takes ``batch_size / num_shards`` from each, in
  shard order. Process ``i`` of ``P`` reads only shards ``i*S/P ... (i+1)*S/P - 1``,
  so a 2-process run and a 1-process run with the same ``num_shards`` see the same batches.
  """
  if num_shards % process_count or batch_size % num_shards:
    raise ValueError(f'data.shards={num_shards} must be a multiple of the {process_count} processes and '
                     f'divide train.batch_size={batch_size}; set --config.data.shards')
  per_process = num_shards // process_count
  shards = [train_iterator(records, row_len=row_len, batch_size=batch_size // num_shards, seed=seed,
                           shard_index=s, shard_count=num_shards)
            for s in range(process_index * per_process, (process_index + 1) * per_process)]
  return shards[0] if len(shards) == 1 else _ConcatShards(shards)


def check_enough_tokens(records: grain.MapDataset, *, batch_size: int, row_len: int):
  """A clear error when the documents cannot fill one global batch (they would repeat within it)."""
  need, have = batch_size * row_len, 0
  for record in records:
    have += len(record['tokens'])
    if have >= need:
      return
  raise ValueError(f'the training split holds {have} tokens, fewer than one batch of {need} '
                   f'(train.batch_size={batch_size} rows of {row_len}); add data, or lower '
                   '--config.train.batch_size or --config.data.seq_len')


def eval_batches(records: grain.MapDataset, *, row_len: int, batch_size: int,
                 max_batches: int | None = None, shard_index: int = 0,
                 shard_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Every document of this shard once, in order, packed like training; the last row and batch padded.

  Padding rows are all pad tokens with segment id 0, so they carry no targets.
  """
  rows = _pack(records[shard_index::shard_count].to_iter_dataset(), row_len)
  batches = []
  for batch in rows.batch(batch_size, drop_remainder=False):
    if max_batches is not None and len(batches) == max_batches:
      break
    missing = batch_size - batch['tokens'].shape[0]
    batches.append({k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()})
  return batches


def pad_batches(batches: list[dict[str, np.ndarray]], count: int, *, batch_size: int,
                row_len: int) -> list[dict[str, np.ndarray]]:
  """``batches`` followed by all-padding batches (no targets) up to ``count``."""
  empty = {k: np.zeros((batch_size, row_len), np.int32) for k in _RENAME.values()}
  return list(batches) + [dict(empty) for _ in range(count - len(batches))]


def unigram_baselines(train_records: grain.MapDataset, val_records: grain.MapDataset, vocab_size: int, *,
                      max_tokens: int = 2_000_000) -> dict[str, float]:
  """Context-free reference points for the validation split, from training-split token counts.

  ``unigram_perplexity``: perplexity of the token frequencies (add-0.5 smoothing);
  ``majority_accuracy``: accuracy of always guessing the most frequent token. A model
  that beats them uses context, not just counts. bos/eos are left out. Each split is
  read up to ``max_tokens`` (exact for small corpora, an estimate that costs seconds
  for large ones).
  """
  counts_V = np.bincount(_prefix(train_records, max_tokens), minlength=vocab_size) + 0.5
  val = _prefix(val_records, max_tokens)
  return {'unigram_perplexity': float(np.exp(-np.log(counts_V[val] / counts_V.sum()).mean())),
          'majority_accuracy': float(np.mean(val == counts_V.argmax()))}


def _prefix(records: grain.MapDataset, max_tokens: int) -> np.ndarray:
  """The tokens (without bos/eos) of the leading documents holding at most ``max_tokens`` (at least one)."""
  kept, total = [], 0
  for record in records:
    tokens = record['tokens'][1:-1]
    if kept and total + len(tokens) > max_tokens:
      break
    kept.append(tokens)
    total += len(tokens)
  return np.concatenate(kept)
