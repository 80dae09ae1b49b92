"""The on-disk format of a prepared corpus (``python -m lmjax.data.prepare``): writing and reading it.

    <dir>/prepared.json                  manifest: format version, splits (files, docs, tokens), tokenizer, dtype
    <dir>/tokenizer.model                the sentencepiece model the ids belong to
    <dir>/report.json                    what cleaning and dedup did (not needed for reading)
    <dir>/{train,validation,test}/data-00000-of-0000N.array_record

Each ArrayRecord record is one document, ``[bos] ids [eos]``, as little-endian
int32 bytes (the framing lmjax.data.pipeline gives raw text). Files are
written with ``group_size:1`` so grain can read any record directly.
"""

from __future__ import annotations

import json
import os

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from lmjax.data.tokenizer import BOS, EOS, Tokenizer

FORMAT_VERSION = 1
MANIFEST = 'prepared.json'
TOKENIZER = 'tokenizer.model'
REPORT = 'report.json'
SPLITS = ('train', 'validation', 'test')
DTYPE = '<i4'  # little-endian int32 on disk, whatever the machine
_WRITER_OPTIONS = 'group_size:1'  # one record per chunk: random access without decoding neighbours
_TOKENIZERS: dict[tuple[str, int], Tokenizer] = {}  # per process: loaded once, reused by every chunk of a worker


def load_manifest(output_dir: str) -> dict:
  """The manifest of a prepared corpus, checked for a format this code reads."""
  path = os.path.join(output_dir, MANIFEST)
  if not os.path.isfile(path):
    raise ValueError(f'{path} not found: {output_dir!r} is not a prepared corpus; run '
                     'python -m lmjax.data.prepare --input=... --output_dir=... first')
  with open(path, encoding='utf-8') as f:
    manifest = json.load(f)
  if manifest.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{path} has format_version {manifest.get("format_version")}, this lmjax reads '
                     f'{FORMAT_VERSION}; prepare the corpus again')
  return manifest


def tokenizer_path(output_dir: str) -> str:
  return os.path.join(output_dir, load_manifest(output_dir)['tokenizer'])


def split_files(output_dir: str, split: str) -> list[str]:
  """Absolute paths of a split's ArrayRecord shards, in order (empty for an empty split)."""
  splits = load_manifest(output_dir)['splits']
  if split not in splits:
    raise ValueError(f'split {split!r} is not in {output_dir}; it has {", ".join(splits)}')
  return [os.path.join(output_dir, f) for f in splits[split]['files']]


def split_source(output_dir: str, split: str) -> grain.MapDataset:
  """Random-access dataset of ``{'tokens': int32 [n]}``, one per document, in the split's stored order.

  Length and indexing are exact, so ``.shuffle(seed)``, ``.repeat()``, slicing
  and checkpointed iterators resume at the same document.
  """
  files = split_files(output_dir, split)
  if not files:
    raise ValueError(f'split {split!r} of {output_dir} holds no documents; prepare again with a '
                     f'non-zero --{split}_fraction or read another split')
  return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files)).map(decode_record)


def decode_record(record: bytes) -> dict[str, np.ndarray]:
  return {'tokens': np.frombuffer(record, DTYPE).astype(np.int32)}


def encode_record(tokens: np.ndarray) -> bytes:
  return np.asarray(tokens).astype(DTYPE).tobytes()


def encode_chunk(model_path: str, docs: list[str]) -> list[np.ndarray]:
  """Worker: each document as int32 ``[bos] ids [eos]``, like lmjax.data.pipeline's encoding of raw text."""
  tok = _tokenizer(model_path)
  return [np.asarray([BOS, *tok.encode(d), EOS], np.int32) for d in docs]


def count_chunk(model_path: str, docs: list[str]) -> list[int]:
  """Worker: the number of tokens ``encode_chunk`` would give each document."""
  tok = _tokenizer(model_path)
  return [len(tok.encode(d)) + 2 for d in docs]


def _tokenizer(model_path: str) -> Tokenizer:
  key = (model_path, os.stat(model_path).st_mtime_ns)  # a new model at the same path is loaded afresh
  if key not in _TOKENIZERS:
    _TOKENIZERS[key] = Tokenizer(model_path)
  return _TOKENIZERS[key]


def write_split(output_dir: str, split: str, docs: list[np.ndarray], shard_bytes: int) -> list[str]:
  """Writes the documents, in order, into shards of about ``shard_bytes``; returns their relative paths.

  Shard boundaries depend only on document sizes, so the files are the same for any number of workers.
  """
  if not docs:
    return []
  sizes = np.array([d.size * 4 for d in docs], np.int64)
  num_shards = max(1, min(len(docs), int(np.ceil(sizes.sum() / shard_bytes))))
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  shard_of = np.minimum(starts * num_shards // max(1, sizes.sum()), num_shards - 1)
  _, shard_of = np.unique(shard_of, return_inverse=True)  # a document larger than a shard leaves no empty file
  num_shards = int(shard_of.max()) + 1
  os.makedirs(os.path.join(output_dir, split), exist_ok=True)
  names = [f'{split}/data-{s:05d}-of-{num_shards:05d}.array_record' for s in range(num_shards)]
  for s, name in enumerate(names):
    writer = ArrayRecordWriter(os.path.join(output_dir, name), _WRITER_OPTIONS)
    for i in np.flatnonzero(shard_of == s):
      writer.write(encode_record(docs[i]))
    writer.close()
  return names


def write_json(path: str, obj) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write('\n')
