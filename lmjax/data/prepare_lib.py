"""Corpus preparation (the library behind ``python -m lmjax.data.prepare``): read, clean, deduplicate,
split, train a tokenizer, tokenize, shard.

The output is built in a temporary directory beside ``output_dir`` and renamed
into place only when complete, so a failed run leaves nothing behind and an
existing output intact. The corpus is held in memory. Results do not depend on
``num_workers``: workers clean, fingerprint and tokenize chunks, and everything
order-dependent (boilerplate counts, dedup, split) runs in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from lmjax.data import clean as clean_lib
from lmjax.data import dedup, prepared, readers
from lmjax.data import tokenizer as tokenizer_lib

_EXAMPLE_CHARS = 200
_CHUNK_DOCS = 256
_EMPTY_HINTS = {
    'read': 'check --input, --format and --doc_unit (and --on_bad_file if files were skipped)',
    'cleaned': 'every document was blank after cleaning; check --text_field and the cleaning flags',
    'boilerplate': 'raise --boilerplate_min_docs or --boilerplate_min_fraction',
    'length': 'relax --min_chars / --max_chars',
}


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on: lmjax.data.prepare's flags, one field each (cleaning, near dedup grouped)."""
  input: str
  output_dir: str
  overwrite: bool = False
  format: str = 'auto'
  text_field: str = 'text'
  doc_unit: str = 'whole'
  on_bad_file: str = 'fail'
  clean: clean_lib.CleanOptions = clean_lib.CleanOptions()
  boilerplate_min_docs: int = 0
  boilerplate_min_fraction: float = 0.0
  min_chars: int = 0
  max_chars: int = 0
  dedup_exact: bool = True
  near: dedup.NearOptions | None = dedup.NearOptions()  # None: no near dedup
  validation_fraction: float = 0.01
  test_fraction: float = 0.01
  seed: int = 0
  tokenizer_path: str = ''
  vocab_size: int = 8000
  tokenizer_type: str = 'bpe'
  byte_fallback: bool | None = None       # None: tokenizer.trainer_options' default for tokenizer_type
  character_coverage: float | None = None
  tokenizer_max_chars: int = 50_000_000
  shard_mb: float = 128.0
  num_workers: int = 1
  examples: int = 5
  progress: bool = True

  def __post_init__(self):
    fractions = (self.validation_fraction, self.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
      raise ValueError(f'--validation_fraction={fractions[0]} and --test_fraction={fractions[1]} must be >= 0 '
                       'and sum to less than 1')
    if not 0.0 <= self.boilerplate_min_fraction <= 1.0 or self.boilerplate_min_docs < 0:
      raise ValueError('--boilerplate_min_fraction must be in [0, 1] and --boilerplate_min_docs >= 0')
    if self.min_chars < 0 or self.max_chars < 0 or (self.max_chars and self.max_chars < self.min_chars):
      raise ValueError(f'--min_chars={self.min_chars} and --max_chars={self.max_chars} must be >= 0 and '
                       'max_chars (if set) >= min_chars')
    if self.num_workers < 1 or self.shard_mb <= 0:
      raise ValueError(f'--num_workers={self.num_workers} must be >= 1 and --shard_mb={self.shard_mb} > 0')


def prepare(opts: Options) -> dict:
  """Runs the whole preparation into ``opts.output_dir``; returns the report (also in report.json)."""
  output_dir = os.path.abspath(opts.output_dir)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(f'--output_dir={opts.output_dir} is a file; choose a directory')
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not opts.overwrite:
    raise ValueError(f'--output_dir={opts.output_dir} is not empty; pass --overwrite to replace it '
                     'or choose another directory')
  os.makedirs(os.path.dirname(output_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(output_dir)}.tmp-', dir=os.path.dirname(output_dir))
  try:
    with _pool(opts.num_workers) as pool:
      report = _Run(opts, tmp, pool).build()
    _replace_dir(tmp, output_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return report


def split_indices(n: int, validation_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
  """Document indices of each split after a seeded shuffle; disjoint, covering 0..n-1, train non-empty."""
  counts = [max(1, round(f * n)) if f > 0 else 0 for f in (validation_fraction, test_fraction)]
  if sum(counts) >= n:
    raise ValueError(f'only {n} documents remain after cleaning and dedup: too few for --validation_fraction='
                     f'{validation_fraction} and --test_fraction={test_fraction}; lower them or add data')
  order = np.random.default_rng(seed).permutation(n)
  num_val, num_test = counts
  return {'train': order[num_val + num_test:], 'validation': order[:num_val],
          'test': order[num_val:num_val + num_test]}


class _Run:
  """One preparation: the steps in order, each adding its part of the report."""

  def __init__(self, opts: Options, out_dir: str, pool):
    self.opts, self.out_dir, self.pool = opts, out_dir, pool
    self.report = {'format_version': prepared.FORMAT_VERSION, 'options': dataclasses.asdict(opts),
                   'stages': []}
    self.removed: dict[str, list[str]] = {}  # documents dropped by each document-level filter, for token counts
    self.seconds: dict[str, float] = {}

  def build(self) -> dict:
    start = time.perf_counter()
    with self._timed('read'):
      corpus = readers.read_corpus(self.opts.input, self.opts.format, self.opts.text_field,
                                   self.opts.doc_unit, self.opts.on_bad_file)
    self.report['input'] = {'files': len(corpus.files) - len(corpus.skipped), 'bytes': corpus.bytes,
                            'skipped_files': len(corpus.skipped), 'skipped': corpus.skipped}
    self._stage('read', corpus.docs)
    with self._timed('clean'):
      docs = self._boilerplate(self._clean(corpus.docs))
      docs = self._length(docs)
    with self._timed('dedup'):
      docs = self._dedup(docs)
    splits = {name: [docs[i] for i in idx] for name, idx in split_indices(
        len(docs), self.opts.validation_fraction, self.opts.test_fraction, self.opts.seed).items()}
    with self._timed('tokenizer'):
      model_path = self._tokenizer(splits['train'])
    with self._timed('tokenize_and_write'):
      self._write(splits, model_path)
    total = time.perf_counter() - start
    self.report['run'] = {'num_workers': self.opts.num_workers, 'seconds': {**self.seconds, 'total': total},
                          'input_mb_per_s': corpus.bytes / 1e6 / total}
    prepared.write_json(os.path.join(self.out_dir, prepared.REPORT), self.report)
    return self.report

  def imap(self, fn, items: list, desc: str):
    """``fn`` over chunks of ``items``, in workers when there are any; yields the results one by one, in order."""
    chunks = [items[i:i + _CHUNK_DOCS] for i in range(0, len(items), _CHUNK_DOCS)]
    results = self.pool.imap(fn, chunks) if self.pool else map(fn, chunks)
    with tqdm(total=len(items), desc=desc, unit='doc', disable=not self.opts.progress) as bar:
      for chunk in results:
        bar.update(len(chunk))
        yield from chunk

  def map(self, fn, items: list, desc: str) -> list:
    return list(self.imap(fn, items, desc))

  def _clean(self, docs: list[str]) -> list[tuple[str, list[bytes]]]:
    opts = dataclasses.replace(self.opts.clean, line_keys=self._boilerplate_on())
    results = self.map(functools.partial(clean_lib.clean_chunk, opts), docs, 'clean')
    steps = {name: {'docs_changed': 0, 'chars_removed': 0} for name in clean_lib.step_names(opts)}
    for _, changes, _ in results:
      for name, chars in changes:
        steps[name]['docs_changed'] += 1
        steps[name]['chars_removed'] += chars
    kept = [(text, keys) for text, _, keys in results if text.strip()]
    self.report['cleaning'] = {'steps': steps, 'blank_docs_removed': len(results) - len(kept)}
    self._stage('cleaned', [text for text, _ in kept])
    return kept

  def _boilerplate(self, docs: list[tuple[str, list[bytes]]]) -> list[str]:
    if not self._boilerplate_on():
      return [text for text, _ in docs]
    flagged, threshold = clean_lib.boilerplate_lines(
        [keys for _, keys in docs], self.opts.boilerplate_min_docs, self.opts.boilerplate_min_fraction)
    kept, lines_removed, docs_changed, first_seen = [], 0, 0, {}
    for text, keys in docs:
      if flagged and any(k in flagged for k in keys):
        text, removed = clean_lib.drop_lines(text, flagged, self.opts.clean.collapse_whitespace)
        lines_removed, docs_changed = lines_removed + len(removed), docs_changed + 1
        for line in removed:
          first_seen.setdefault(clean_lib.line_key(line.strip()), line.strip())
      if text.strip():
        kept.append(text)
    top = sorted(first_seen, key=lambda k: -flagged[k])[:self.opts.examples]  # stable: ties in corpus order
    self.report['boilerplate'] = {
        'min_docs_threshold': threshold, 'distinct_lines_flagged': len(flagged), 'lines_removed': lines_removed,
        'docs_changed': docs_changed, 'blank_docs_removed': len(docs) - len(kept),
        'examples': [{'line': _truncate(first_seen[k]), 'docs': flagged[k]} for k in top]}
    self._stage('boilerplate', kept)
    return kept

  def _length(self, docs: list[str]) -> list[str]:
    lo, hi = self.opts.min_chars, self.opts.max_chars or float('inf')
    if not (self.opts.min_chars or self.opts.max_chars):
      return docs
    kept = [d for d in docs if lo <= len(d) <= hi]
    self.removed['length'] = [d for d in docs if not lo <= len(d) <= hi]
    self.report['length_filter'] = {'min_chars': lo, 'max_chars': self.opts.max_chars,
                                    'too_short': sum(len(d) < lo for d in docs),
                                    'too_long': sum(len(d) > hi for d in docs)}
    self._stage('length', kept)
    return kept

  def _dedup(self, docs: list[str]) -> list[str]:
    near_opts = self.opts.near
    if not (self.opts.dedup_exact or near_opts):
      return docs
    # Decisions are made here, in order, while the workers fingerprint the documents that follow.
    deduper = dedup.Deduper(docs, self.opts.dedup_exact, near_opts)
    found = {'exact': [], 'near': []}
    prints = self.imap(functools.partial(dedup.fingerprint_chunk, near_opts), docs, 'dedup')
    for i, (key, signature) in enumerate(prints):
      verdict = deduper.check(i, key, signature)
      if verdict:
        found[verdict[0]].append((i, *verdict[1:]))
    self.report['dedup'], gone = {}, set()
    for step, kind, on in (('exact_dedup', 'exact', self.opts.dedup_exact), ('near_dedup', 'near', near_opts)):
      if on:
        gone |= self._removed(step, docs, found[kind])
        self._stage(step, [d for i, d in enumerate(docs) if i not in gone])
    if near_opts:
      self.report['dedup']['near_dedup'].update({
          **dataclasses.asdict(near_opts), 'lsh_bands': deduper.lsh.b, 'lsh_rows': deduper.lsh.r,
          'lsh_recall_at_threshold': dedup.lsh_recall(deduper.lsh, near_opts.threshold)})
    return [d for i, d in enumerate(docs) if i not in gone]

  def _removed(self, step: str, docs: list[str], triples: list) -> set[int]:
    """Reports (removed, kept, Jaccard or None) triples: counts and examples; returns the removed indices."""
    self.removed[step] = [docs[r] for r, _, _ in triples]
    examples = [{'kept': _truncate(docs[k]), 'removed': _truncate(docs[r]),
                 **({'jaccard': round(j, 4)} if j is not None else {})}
                for r, k, j in triples[:self.opts.examples]]
    self.report['dedup'][step] = {'removed': len(triples), 'examples': examples}
    return {r for r, _, _ in triples}

  def _tokenizer(self, train_docs: list[str]) -> str:
    """tokenizer.model in the output: the given one, checked, or one trained on the training split."""
    path, opts = os.path.join(self.out_dir, prepared.TOKENIZER), self.opts
    sample, chars = [], 0
    for doc in train_docs:  # already shuffled: a prefix is a random sample
      if chars >= opts.tokenizer_max_chars:
        break
      sample.append(doc)
      chars += len(doc)
    try:
      trained = tokenizer_lib.trainer_options(opts.tokenizer_type, opts.character_coverage, opts.byte_fallback)
      if opts.tokenizer_path:
        tokenizer_lib.Tokenizer(opts.tokenizer_path)  # checks it loads, with pad/bos/eos where lmjax needs them
        shutil.copyfile(opts.tokenizer_path, path)
      else:
        tokenizer_lib.train_tokenizer(sample, path, opts.vocab_size, opts.tokenizer_type, *trained)
    except ValueError as e:  # its hints name the training config's keys; here they are flags
      raise ValueError(str(e).replace('--config.data.', '--')) from e
    sp = spm.SentencePieceProcessor(model_file=path)
    ids = {'pad': sp.pad_id(), 'unk': sp.unk_id(), 'bos': sp.bos_id(), 'eos': sp.eos_id(),
           'mask': sp.PieceToId(tokenizer_lib.MASK_PIECE)}
    want = {'pad': tokenizer_lib.PAD, 'unk': tokenizer_lib.UNK, 'bos': tokenizer_lib.BOS,
            'eos': tokenizer_lib.EOS, 'mask': tokenizer_lib.MASK}
    if ids != want:
      raise ValueError(f'tokenizer {opts.tokenizer_path} has special ids {ids}, lmjax needs {want}; train one '
                       'with lmjax (leave --tokenizer_path empty)')
    self.report['tokenizer'] = {
        'file': prepared.TOKENIZER, 'source': opts.tokenizer_path or 'trained on the training split',
        'type': None if opts.tokenizer_path else opts.tokenizer_type, 'vocab_size': sp.GetPieceSize(),
        'byte_fallback': None if opts.tokenizer_path else trained[1],
        'character_coverage': None if opts.tokenizer_path else trained[0],
        'trained_on_chars': None if opts.tokenizer_path else chars, 'special_ids': ids}
    return path

  def _write(self, splits: dict[str, list[str]], model_path: str):
    manifest_splits, out_chars, out_tokens = {}, 0, 0
    for name in prepared.SPLITS:
      tokens = self.map(functools.partial(prepared.encode_chunk, model_path), splits[name], f'tokenize {name}')
      files = prepared.write_split(self.out_dir, name, tokens, int(self.opts.shard_mb * 1e6))
      count, chars = int(sum(t.size for t in tokens)), sum(len(d) for d in splits[name])
      manifest_splits[name] = {'files': files, 'docs': len(tokens), 'tokens': count}
      self.report.setdefault('splits', {})[name] = {**manifest_splits[name], 'chars': chars}
      out_chars, out_tokens = out_chars + chars, out_tokens + count - 2 * len(tokens)
    self.report['tokenizer'].update({'tokens_per_char': out_tokens / out_chars,
                                     'chars_per_token': out_chars / max(1, out_tokens)})
    self._stage_tokens(model_path, sum(s['tokens'] for s in manifest_splits.values()))
    prepared.write_json(os.path.join(self.out_dir, prepared.MANIFEST), {
        'format_version': prepared.FORMAT_VERSION, 'dtype': 'int32', 'byte_order': 'little',
        'record': 'one document per record: [bos] ids [eos]', 'tokenizer': prepared.TOKENIZER,
        'vocab_size': self.report['tokenizer']['vocab_size'],
        'special_ids': self.report['tokenizer']['special_ids'], 'splits': manifest_splits,
        'report': prepared.REPORT})

  def _stage_tokens(self, model_path: str, final_tokens: int):
    """Tokens after each step whose output text is final: the output plus what later filters removed.

    Before that step the text was still being rewritten, so those stages have no token count.
    """
    final_text_step = 'boilerplate' if self._boilerplate_on() else 'cleaned'
    tokens = final_tokens
    for stage in reversed(self.report['stages']):
      stage['tokens'] = tokens
      if stage['step'] == final_text_step:
        return
      removed = self.removed.get(stage['step'], [])
      tokens += sum(self.map(functools.partial(prepared.count_chunk, model_path), removed, f'count {stage["step"]}'))

  def _stage(self, step: str, docs: list[str]):
    previous = self.report['stages'][-1]['docs'] if self.report['stages'] else None
    if not docs:
      raise ValueError(f'the corpus is empty after step {step!r}'
                       f'{f" ({previous} documents before it)" if previous else ""}; {_EMPTY_HINTS[step]}')
    self.report['stages'].append({'step': step, 'docs': len(docs), 'chars': sum(map(len, docs)), 'tokens': None})

  def _boilerplate_on(self) -> bool:
    return bool(self.opts.boilerplate_min_docs or self.opts.boilerplate_min_fraction)

  @contextlib.contextmanager
  def _timed(self, name: str):
    start = time.perf_counter()
    yield
    self.seconds[name] = time.perf_counter() - start


@contextlib.contextmanager
def _pool(num_workers: int):
  if num_workers <= 1:
    yield None
    return
  # spawn, not fork: the caller may hold threads (JAX, grain) that a forked child would inherit broken.
  with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
    yield pool


def _replace_dir(new: str, target: str):
  """Moves ``new`` to ``target``; an existing ``target`` is set aside first and deleted only after."""
  old = None
  if os.path.exists(target):
    old = f'{new}.old'
    os.rename(target, old)
  try:
    os.rename(new, target)
  except OSError:
    if old:
      os.rename(old, target)
    raise
  if old:
    shutil.rmtree(old)


def _truncate(text: str) -> str:
  return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS] + '…'
