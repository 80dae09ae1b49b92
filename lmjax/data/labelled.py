"""Labelled examples for classification fine-tuning: CSV / JSONL reading, splits, encoding, batches.

Host-side numpy only (``lmjax.data`` never imports jax). An example is
``(text, label, where)`` where ``where`` is ``path:line`` for error messages.
Labels are strings (integers in JSONL become their decimal string); class ids
follow their sorted order (numeric when every label is an integer), so the same
training file always gives the same mapping.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from lmjax.data import sources

SPLITS = ('train', 'validation', 'test')
_INT = re.compile(r'-?\d+')


def read_examples(path: str, text_field: str = 'text', label_field: str = 'label',
                  key: str = 'finetune.data') -> list[tuple[str, str, str]]:
  """Every row of a .csv / .tsv (header row names the columns) or .jsonl file, as (text, label, where)."""
  if not os.path.isfile(path):
    raise ValueError(f'{key}={path} not found; set --config.{key} to a .csv or .jsonl file')
  ext = os.path.splitext(path)[1].lower()
  try:
    with open(path, encoding='utf-8-sig', newline='') as f:
      if ext in ('.csv', '.tsv'):
        rows = _csv_rows(f, path, '\t' if ext == '.tsv' else ',', text_field, label_field)
      elif ext in ('.jsonl', '.json'):
        rows = _jsonl_rows(f, path, text_field, label_field)
      else:
        raise ValueError(f'{key}={path}: unknown format {ext!r}; use a .csv, .tsv or .jsonl file')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8') from e
  for text, label, where in rows:
    if not text.strip():
      raise ValueError(f'{where}: the {text_field!r} text is empty; fill it in or remove that line')
    if not label.strip():
      raise ValueError(f'{where}: the {label_field!r} label is empty; fill it in or remove that line')
  if not rows:
    raise ValueError(f'{path} holds no examples; point --config.{key} at a file with rows')
  return rows


def _csv_rows(f, path, delimiter, text_field, label_field):
  reader = csv.DictReader(f, delimiter=delimiter)
  columns = reader.fieldnames or []
  for field, option in ((text_field, 'text_field'), (label_field, 'label_field')):
    if field not in columns:
      raise ValueError(f'{path} has no column {field!r} (columns: {", ".join(columns) or "none"}); '
                       f'set --config.finetune.{option}')
  # line_num is the physical line where the row ends (a quoted field may span lines).
  return [(row[text_field] or '', (row[label_field] or '').strip(), f'{path}:{reader.line_num}')
          for row in reader]


def _jsonl_rows(f, path, text_field, label_field):
  rows = []
  for n, line in enumerate(f, 1):
    if not line.strip():
      continue
    record = sources.json_record(line, f'{path}:{n}')
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise ValueError(f'{path}:{n} has no string field {text_field!r}; set --config.finetune.text_field')
    label = record.get(label_field)
    if isinstance(label, bool) or not isinstance(label, (str, int)):
      raise ValueError(f'{path}:{n} has no string or integer field {label_field!r}; '
                       'set --config.finetune.label_field')
    rows.append((record[text_field], str(label).strip(), f'{path}:{n}'))
  return rows


def class_names(examples, path: str) -> list[str]:
  """The sorted distinct labels (numerically if all are integers); at least two."""
  names = sorted({label for _, label, _ in examples})
  if all(_INT.fullmatch(n) for n in names):
    names.sort(key=int)
  if len(names) < 2:
    raise ValueError(f'the training split of {path} has {len(names)} class ({", ".join(names)}); '
                     'classification needs examples of at least 2 labels')
  return names


def load_splits(data: str, validation: str = '', test: str = '', *, validation_fraction: float,
                test_fraction: float, seed: int, text_field: str = 'text', label_field: str = 'label'):
  """({split: examples}, class names). A split given as a file replaces its fraction of ``data``."""
  if not data:
    raise ValueError('finetune.data is empty; set --config.finetune.data to a .csv or .jsonl file '
                     'with text and label columns')
  for name, fraction in (('validation', validation_fraction), ('test', test_fraction)):
    if not 0.0 <= fraction < 1.0:
      raise ValueError(f'finetune.{name}_fraction={fraction} must be in [0, 1)')
  read = lambda path, key: read_examples(path, text_field, label_field, key)
  examples = read(data, 'finetune.data')
  fractions = (0.0 if validation else validation_fraction, 0.0 if test else test_fraction)
  splits = dict(zip(SPLITS, split_examples(examples, *fractions, seed)))
  for name, path in (('validation', validation), ('test', test)):
    if path:
      splits[name] = read(path, f'finetune.{name}')
  names = class_names(splits['train'], data)
  for name in ('validation', 'test'):
    for _, label, where in splits[name]:
      if label not in names:
        raise ValueError(f'{where} has label {label!r}, which the training split lacks ({", ".join(names)}); '
                         'fix that label or add training examples of it')
  if not splits['validation']:
    raise ValueError('the validation split is empty; set --config.finetune.validation to a file or raise '
                     '--config.finetune.validation_fraction')
  return splits, names


def split_examples(examples, validation_fraction: float, test_fraction: float, seed: int):
  """(train, validation, test), stratified by label and seeded: each label keeps at least one training
  example, so every label of a held-out split is known. Each split keeps the file order."""
  if validation_fraction + test_fraction >= 1.0:
    raise ValueError(f'finetune.validation_fraction + finetune.test_fraction = '
                     f'{validation_fraction + test_fraction} must be below 1')
  rng = np.random.default_rng(seed)
  by_label = {}
  for i, (_, label, _) in enumerate(examples):
    by_label.setdefault(label, []).append(i)
  held = {}  # example index -> 1 (validation) or 2 (test)
  for label in sorted(by_label):
    order = rng.permutation(by_label[label])
    num_val = round(validation_fraction * len(order))
    num_test = min(round(test_fraction * len(order)), len(order) - 1 - num_val)
    held.update({int(i): 1 for i in order[:num_val]})
    held.update({int(i): 2 for i in order[num_val:num_val + max(num_test, 0)]})
  return tuple([e for i, e in enumerate(examples) if held.get(i, 0) == k] for k in range(3))


def class_weights(spec: str, labels_N: np.ndarray, names: list[str]) -> np.ndarray:
  """float32 [C] loss weights: 'none' (all 1), 'balanced' (N / (C * count), as scikit-learn), or one
  comma-separated number per class in class-id order."""
  num = len(names)
  if spec == 'none':
    return np.ones(num, np.float32)
  if spec == 'balanced':
    counts_C = np.bincount(labels_N, minlength=num)
    return (len(labels_N) / (num * np.maximum(counts_C, 1))).astype(np.float32)
  try:
    weights_C = np.array([float(w) for w in spec.split(',')], np.float32)
  except ValueError:
    weights_C = None
  if weights_C is None or len(weights_C) != num or (weights_C < 0).any() or not weights_C.any():
    raise ValueError(f"finetune.class_weights={spec!r}: use 'none', 'balanced' or {num} non-negative numbers "
                     f"separated by commas, one per class in this order: {', '.join(names)}")
  return weights_C


def encode(examples, tokenizer, seq_len: int, names: list[str]) -> dict[str, np.ndarray]:
  """Rows of ``[bos] text [eos]`` as in pretraining, right-padded with segment id 0 (truncated texts
  keep their eos, so a decoder's last token is always the end of the text). Labels are class ids.
  ``tokenizer``: lmjax's sentencepiece ``Tokenizer`` or an imported one with the same interface."""
  if seq_len < 3:
    raise ValueError(f'data.seq_len={seq_len} leaves no room for text between bos and eos; raise it')
  num = len(examples)
  tokens_NL, segment_ids_NL = np.zeros((num, seq_len), np.int32), np.zeros((num, seq_len), np.int32)
  for i, (text, _, _) in enumerate(examples):
    ids = [tokenizer.bos_id, *tokenizer.encode(text)[:seq_len - 2], tokenizer.eos_id]
    tokens_NL[i, :len(ids)], segment_ids_NL[i, :len(ids)] = ids, 1  # id 0 pads: segment 0 hides it
  index = {n: i for i, n in enumerate(names)}
  return {'tokens': tokens_NL, 'segment_ids': segment_ids_NL,
          'positions': np.arange(seq_len, dtype=np.int32) * segment_ids_NL,
          'labels': np.array([index[label] for _, label, _ in examples], np.int32),
          'weights': np.ones(num, np.float32)}


def train_batch(data: dict[str, np.ndarray], step: int, batch_size: int, seed: int,
                rows: slice = slice(None)) -> dict[str, np.ndarray]:
  """Batch number ``step`` (0-based) of an endless stream of seeded per-epoch shuffles; ``rows`` picks
  this process's share. A function of (seed, step) only, so a resumed run reads exactly the same data."""
  num = len(data['labels'])
  positions = np.arange(step * batch_size, (step + 1) * batch_size)[rows]
  epochs_B, offsets_B = positions // num, positions % num
  index_B = np.empty_like(positions)
  for epoch in np.unique(epochs_B):
    order = np.random.default_rng([seed, int(epoch)]).permutation(num)
    index_B[epochs_B == epoch] = order[offsets_B[epochs_B == epoch]]
  return {k: v[index_B] for k, v in data.items()}


def eval_batches(data: dict[str, np.ndarray], batch_size: int, rows: slice = slice(None),
                 max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch padded with weight-0 rows. ``rows`` as in train_batch."""
  num = len(data['labels'])
  batches = []
  for start in range(0, num, batch_size):
    if max_batches is not None and len(batches) == max_batches:
      break
    batch = {k: v[start:start + batch_size] for k, v in data.items()}
    missing = batch_size - len(batch['labels'])
    batches.append({k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1))[rows] for k, v in batch.items()})
  return batches
