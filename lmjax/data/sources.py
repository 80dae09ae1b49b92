"""Document sources: the built-in offline corpus, text files and JSONL; the train/validation split."""

from __future__ import annotations

import ast
import collections
import glob
import json
import os
import sysconfig

import numpy as np
from absl import logging

SOURCES = ('python_docs', 'text', 'jsonl')
_SKIP_DIRS = {'site-packages', 'test', 'tests', 'idlelib', 'lib2to3', '__pycache__'}


def load_documents(source: str, paths: str = '', text_field: str = 'text', max_doc_chars: int = 4000,
                   on_bad_file: str = 'fail') -> list[str]:
  """Documents of a source, long ones split at paragraph boundaries, empty ones dropped.

  A binary or non-UTF-8 file is an error naming it, or with ``on_bad_file='skip'``
  is left out with a warning that counts the skipped files.
  """
  if on_bad_file not in ('fail', 'skip'):
    raise ValueError(f"data.on_bad_file={on_bad_file!r}: use 'fail' or 'skip'")
  if source == 'python_docs':
    docs = python_docs()
  elif source in ('text', 'jsonl'):
    docs, skipped = [], []
    for f in expand_paths(paths):
      try:
        docs.extend(_read_text(f) if source == 'text' else _read_jsonl(f, text_field))
      except BadFile as e:
        if on_bad_file == 'fail':
          raise
        skipped.append(f'{f} ({e.reason})')
    if skipped:
      logging.warning('data.on_bad_file=skip: skipped %d binary or non-UTF-8 file(s): %s', len(skipped),
                      ', '.join(skipped[:5]) + (' ...' if len(skipped) > 5 else ''))
  else:
    raise ValueError(f'data.source={source!r} is not one of {", ".join(SOURCES)}, prepared; set '
                     '--config.data.source')
  pieces = [p.rstrip() for d in docs for p in split_long(d, max_doc_chars) if p.strip()]
  if not pieces:
    raise ValueError(f'data.source={source!r} data.paths={paths!r} holds no text; point '
                     '--config.data.paths at non-empty files')
  return pieces


class BadFile(ValueError):
  """A file that is not UTF-8 text."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path} is {reason}; convert it, remove it from data.paths, or set '
                     '--config.data.on_bad_file=skip')
    self.reason = reason


def python_docs() -> list[str]:
  """English documentation that ships with every CPython: the pydoc topics and stdlib docstrings.

  About 1.7M characters; parsed with ``ast`` (nothing is imported), in sorted
  order, so the corpus is fixed for a given Python version.
  """
  import pydoc_data.topics  # pylint: disable=g-import-not-at-top
  docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
  root = sysconfig.get_paths()['stdlib']
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith('.py'):
        docs.extend(_docstrings(os.path.join(dirpath, name)))
  return docs


def _docstrings(path: str, min_chars: int = 200) -> list[str]:
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return []
  kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  found = (ast.get_docstring(n) for n in _statements(tree) if isinstance(n, kinds))
  return [d for d in found if d and len(d) >= min_chars]


def _statements(tree: ast.Module):
  """``ast.walk``'s breadth-first order, without descending into expressions (most of a module's nodes):
  a class or function definition is always a statement nested in statements, so the order is the same."""
  queue = collections.deque([tree])
  while queue:
    node = queue.popleft()
    queue.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case)))
    yield node


def expand_paths(paths: str) -> list[str]:
  """Comma-separated files and globs -> sorted, de-duplicated existing files."""
  patterns = [p.strip() for p in paths.split(',') if p.strip()]
  if not patterns:
    raise ValueError("data.paths is empty; set --config.data.paths to files or globs (e.g. 'corpus/*.txt')")
  files = sorted({f for p in patterns for f in glob.glob(os.path.expanduser(p), recursive=True)
                  if os.path.isfile(f)})
  if not files:
    raise ValueError(f'data.paths={paths!r} matched no files; set --config.data.paths to existing files or globs')
  return files


def _read_text(path: str) -> list[str]:
  return [_decode(path)]


def json_record(line: str, where: str):
  """One JSONL line, parsed; a line that is not JSON is a one-line error naming ``where`` (path:line)."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where} is not valid JSON ({e.msg}); fix or remove that line') from e


def _read_jsonl(path: str, field: str) -> list[str]:
  docs = []
  for n, line in enumerate(_decode(path).splitlines(), 1):
    if not line.strip():
      continue
    record = json_record(line, f'{path}:{n}')
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
      raise ValueError(f'{path}:{n} has no string field {field!r}; set --config.data.text_field')
    docs.append(record[field])
  return docs


def _decode(path: str) -> str:
  with open(path, 'rb') as f:
    raw = f.read()
  nul = raw.find(b'\0')
  if nul >= 0:  # may even be valid UTF-8, but not text: images, archives, arrays
    raise BadFile(path, f'binary (a NUL byte at offset {nul})')
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadFile(path, f'not UTF-8 text (byte {e.start})') from e


def split_long(doc: str, max_chars: int) -> list[str]:
  """Pieces of at most ~max_chars, cut at blank lines, else at lines, else hard."""
  if len(doc) <= max_chars:
    return [doc]
  pieces, current = [], ''
  for unit in _units(doc, max_chars):
    if current and len(current) + len(unit) > max_chars:
      pieces.append(current)
      current = ''
    current += unit
  if current:
    pieces.append(current)
  return pieces


def _units(doc: str, max_chars: int):
  """Paragraphs (with their trailing blank line) split further where one exceeds max_chars."""
  for para in doc.split('\n\n'):
    para += '\n\n'
    if len(para) <= max_chars:
      yield para
      continue
    for line in para.splitlines(keepends=True):
      for i in range(0, len(line), max_chars):
        yield line[i:i + max_chars]


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """Seeded train/validation split by document; both keep the original order."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'data.val_fraction={val_fraction} must be in [0, 1)')
  if val_fraction == 0.0:
    return list(docs), []
  if len(docs) < 2:
    raise ValueError(f'only {len(docs)} document(s): too few to hold out validation data; add data or '
                     'lower --config.data.max_doc_chars')
  num_val = min(max(1, round(val_fraction * len(docs))), len(docs) - 1)
  val_idx = set(np.random.default_rng(seed).permutation(len(docs))[:num_val].tolist())
  train = [d for i, d in enumerate(docs) if i not in val_idx]
  val = [d for i, d in enumerate(docs) if i in val_idx]
  return train, val
