"""Raw documents from local files: text, JSONL, Parquet, Arrow and Hugging Face ``save_to_disk`` directories.

Everything is read with the standard library and pyarrow (no ``datasets``
import, no network). Files are read in the order given, each glob sorted, so
a corpus always yields the same documents in the same order.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ('auto', 'text', 'jsonl', 'parquet', 'arrow', 'hf')
DOC_UNITS = ('whole', 'paragraph', 'line')
_EXTENSIONS = {'.jsonl': 'jsonl', '.json': 'jsonl', '.ndjson': 'jsonl', '.parquet': 'parquet', '.arrow': 'arrow'}
_PARAGRAPH_BREAK = re.compile(r'\n(?:[^\S\n]*\n)+')  # blank (or whitespace-only) lines; indentation is kept


class BadFile(Exception):
  """A file that cannot be decoded; skipped or fatal depending on --on_bad_file."""


@dataclasses.dataclass
class Corpus:
  docs: list[str]
  files: list[str]
  bytes: int = 0
  skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)


def read_corpus(inputs: str, fmt: str = 'auto', text_field: str = 'text', doc_unit: str = 'whole',
                on_bad_file: str = 'fail') -> Corpus:
  """The documents of every input, in order; a file that cannot be decoded is skipped or raises ValueError."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {", ".join(FORMATS)}')
  if doc_unit not in DOC_UNITS:
    raise ValueError(f'--doc_unit={doc_unit!r} is not one of {", ".join(DOC_UNITS)}')
  corpus = Corpus(docs=[], files=expand_inputs(inputs))
  for path in corpus.files:
    kind = fmt if fmt != 'auto' else detect_format(path)
    try:
      records = _READERS[kind](path, text_field)
    except BadFile as e:
      if on_bad_file != 'skip':
        raise ValueError(f'{e}; fix or remove it, or pass --on_bad_file=skip') from e
      corpus.skipped.append({'path': path, 'reason': str(e)})
      continue
    corpus.bytes += _size(path)
    corpus.docs.extend(piece for record in records for piece in split_units(record, doc_unit))
  return corpus


def expand_inputs(inputs: str) -> list[str]:
  """Comma-separated files, globs and dataset directories -> existing paths, in order, without repeats."""
  patterns = [p.strip() for p in inputs.split(',') if p.strip()]
  if not patterns:
    raise ValueError('--input is empty; pass files, globs (e.g. "corpus/*.txt") or save_to_disk directories')
  paths = []
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    if glob.has_magic(pattern):
      found = [p for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p) or _is_hf_dir(p)]
      if not found:
        raise ValueError(f'--input pattern {pattern!r} matched no files; check the glob or the working directory')
    elif not os.path.exists(pattern):
      raise ValueError(f'--input {pattern!r} does not exist; pass existing files, globs or dataset directories')
    else:
      found = [pattern]
    paths.extend(p for p in found if p not in paths)
  return paths


def detect_format(path: str) -> str:
  if os.path.isdir(path):
    if not _is_hf_dir(path):
      raise ValueError(f'--input {path!r} is a directory without state.json or dataset_dict.json (not a '
                       f'save_to_disk dataset); pass its files with a glob such as "{path}/*.txt"')
    return 'hf'
  return _EXTENSIONS.get(os.path.splitext(path)[1].lower(), 'text')


def split_units(text: str, doc_unit: str) -> list[str]:
  """One record -> its documents: the whole record, its paragraphs, or its lines (blank ones dropped)."""
  if doc_unit == 'whole':
    return [text] if text.strip() else []
  text = text.replace('\r\n', '\n')
  pieces = _PARAGRAPH_BREAK.split(text) if doc_unit == 'paragraph' else text.split('\n')
  return [p for p in pieces if p.strip()]


def _read_text(path: str, text_field: str) -> list[str]:
  del text_field  # a text file is all text
  with open(path, 'rb') as f:
    return [_decode(f.read(), path)]


def _read_jsonl(path: str, text_field: str) -> list[str]:
  with open(path, 'rb') as f:
    lines = _decode(f.read(), path).split('\n')
  texts = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise BadFile(f'{path}:{n} is not valid JSON ({e.msg})') from e
    if not isinstance(record, dict) or text_field not in record:
      fields = ', '.join(record) if isinstance(record, dict) else type(record).__name__
      raise ValueError(f'{path}:{n} has no field {text_field!r} (it has: {fields}); set --text_field')
    value = record[text_field]
    if value is not None and not isinstance(value, str):
      raise ValueError(f'{path}:{n} field {text_field!r} is {type(value).__name__}, not text; set --text_field')
    texts.append(value or '')  # null text is an empty document: dropped
  return texts


def _read_parquet(path: str, text_field: str) -> list[str]:
  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError) as e:
    raise BadFile(f'{path} is not a readable Parquet file ({str(e).strip()})') from e
  return _text_column(table, text_field, path)


def _read_arrow(path: str, text_field: str) -> list[str]:
  # save_to_disk writes the Arrow IPC stream format; pyarrow's own writers often use the file format.
  with pa.memory_map(path) as source:
    for open_ipc in (pa.ipc.open_stream, pa.ipc.open_file):
      try:
        table = open_ipc(source).read_all()
        break
      except pa.ArrowInvalid as e:
        error = e
        source.seek(0)
    else:
      raise BadFile(f'{path} is not an Arrow IPC file ({str(error).strip()})')
    return _text_column(table, text_field, path)


def _read_hf(path: str, text_field: str) -> list[str]:
  """A ``Dataset.save_to_disk`` directory (state.json lists its Arrow files), or a DatasetDict's splits in order."""
  if os.path.isfile(os.path.join(path, 'dataset_dict.json')):
    with open(os.path.join(path, 'dataset_dict.json'), encoding='utf-8') as f:
      splits = json.load(f)['splits']
    return [t for split in splits for t in _read_hf(os.path.join(path, split), text_field)]
  with open(os.path.join(path, 'state.json'), encoding='utf-8') as f:
    files = [d['filename'] for d in json.load(f)['_data_files']]
  return [t for name in files for t in _read_arrow(os.path.join(path, name), text_field)]


_READERS = {'text': _read_text, 'jsonl': _read_jsonl, 'parquet': _read_parquet, 'arrow': _read_arrow,
            'hf': _read_hf}


def _text_column(table: pa.Table, text_field: str, path: str) -> list[str]:
  if text_field not in table.column_names:
    raise ValueError(f'{path} has no column {text_field!r} (it has: {", ".join(table.column_names)}); '
                     'set --text_field')
  column = table.column(text_field)
  if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
    raise ValueError(f'{path} column {text_field!r} is {column.type}, not text; set --text_field')
  return [t or '' for t in column.to_pylist()]


def _decode(data: bytes, path: str) -> str:
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadFile(f'{path} is not UTF-8 text (invalid byte at offset {e.start})') from e


def _is_hf_dir(path: str) -> bool:
  return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f))
                                      for f in ('state.json', 'dataset_dict.json'))


def _size(path: str) -> int:
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  return os.path.getsize(path)
