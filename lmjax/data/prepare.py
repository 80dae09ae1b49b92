r"""Prepares a corpus for training: python -m lmjax.data.prepare --input=... --output_dir=... [flags]

  python -m lmjax.data.prepare --input='corpus/*.txt' --output_dir=data/mycorpus \
      --doc_unit=paragraph --vocab_size=8000 --num_workers=4

Reads text/JSONL/Parquet/Arrow files and save_to_disk directories; cleans,
deduplicates (exact and MinHash near-duplicates), splits train/validation/test
by document, trains a sentencepiece tokenizer and writes tokenized ArrayRecord
shards, ``tokenizer.model``, ``prepared.json`` and ``report.json`` (format and
reader: lmjax.data.prepared; the steps: lmjax.data.prepare_lib). Holds only flags.
"""

from __future__ import annotations

import sys

from absl import app, flags

from lmjax import cli
from lmjax.data import clean as clean_lib

try:
  from lmjax.data import dedup, prepare_lib, readers  # pylint: disable=g-import-not-at-top
except ModuleNotFoundError as e:  # datasketch / pyarrow come with the [prepare] extra
  print(f"error: python -m lmjax.data.prepare needs {e.name}; install it with pip install 'lmjax[prepare]' "
        "(or pip install -e '.[prepare]' in a checkout)", file=sys.stderr)
  sys.exit(2)

flags.DEFINE_string('input', None, 'Comma-separated files, globs and save_to_disk directories.')
flags.DEFINE_string('output_dir', None, 'Where the prepared corpus goes (must be empty unless --overwrite).')
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --output_dir (only once the new one is complete).')
flags.DEFINE_enum('format', 'auto', readers.FORMATS, "'auto': by extension (.jsonl/.json, .parquet, .arrow, "
                  'a directory with state.json = save_to_disk, anything else = text).')
flags.DEFINE_string('text_field', 'text', 'JSONL key / Parquet or Arrow column holding the text.')
flags.DEFINE_enum('doc_unit', 'whole', readers.DOC_UNITS,
                  'A document is a whole file or record, each blank-line-separated paragraph, or each line.')
flags.DEFINE_enum('on_bad_file', 'fail', ['fail', 'skip'], 'Files that cannot be decoded (not UTF-8, bad JSON, '
                  'corrupt Parquet/Arrow): stop, or skip them and count them in the report.')
flags.DEFINE_enum('normalize', 'NFC', clean_lib.NORMALIZE_FORMS, 'Unicode normalization form.')
flags.DEFINE_bool('strip_control', True, 'Remove control characters (tab and newline stay; \\r\\n -> \\n).')
flags.DEFINE_bool('strip_urls', False, 'Remove http(s)/ftp/www URLs.')
flags.DEFINE_bool('strip_emails', False, 'Remove e-mail addresses.')
flags.DEFINE_bool('collapse_whitespace', True, 'One space per run, none at line ends, at most one blank line.')
flags.DEFINE_bool('lowercase', False, 'Lowercase everything.')
flags.DEFINE_integer('boilerplate_min_docs', 0, 'Drop lines found in at least this many documents (0: no limit).')
flags.DEFINE_float('boilerplate_min_fraction', 0.0, 'Drop lines found in at least this fraction of documents '
                   '(0: no limit). With both 0 the line filter is off; with both set, both must hold.')
flags.DEFINE_integer('min_chars', 0, 'Drop documents shorter than this after cleaning (0: keep all).')
flags.DEFINE_integer('max_chars', 0, 'Drop documents longer than this after cleaning (0: no limit).')
flags.DEFINE_bool('dedup_exact', True, 'Drop repeats of a document (same text up to case and whitespace).')
flags.DEFINE_bool('dedup_near', True, 'Drop near duplicates (MinHash + LSH, Jaccard verified exactly).')
flags.DEFINE_float('near_threshold', 0.8, 'Jaccard similarity of shingle sets at or above which a doc is dropped.')
flags.DEFINE_enum('shingle', 'word', dedup.SHINGLES, 'Near-dedup shingles: word or character n-grams.')
flags.DEFINE_integer('shingle_size', 5, 'n of the n-gram shingles.')
flags.DEFINE_integer('num_perm', 128, 'MinHash permutations (more: better LSH recall, slower).')
flags.DEFINE_float('validation_fraction', 0.01, 'Fraction of documents held out for validation.')
flags.DEFINE_float('test_fraction', 0.01, 'Fraction of documents held out for test.')
flags.DEFINE_integer('seed', 0, 'Seed of the document shuffle that makes the splits.')
flags.DEFINE_string('tokenizer_path', '', 'Use this lmjax sentencepiece model instead of training one.')
flags.DEFINE_integer('vocab_size', 8000, 'Vocabulary size of the trained tokenizer.')
flags.DEFINE_enum('tokenizer_type', 'bpe', ['bpe', 'unigram', 'char'],
                  "sentencepiece model type ('char': one token per character, as nanoGPT's shakespeare_char).")
flags.DEFINE_bool('byte_fallback', None, 'Unknown characters become UTF-8 byte tokens instead of <unk> '
                  '(default: on, off for --tokenizer_type=char).')
flags.DEFINE_float('character_coverage', None, 'Fraction of characters the vocabulary must cover '
                   '(default: 0.9995, 1 for --tokenizer_type=char).')
flags.DEFINE_integer('tokenizer_max_chars', 50_000_000, 'Train the tokenizer on at most this many characters '
                     'of the (shuffled) training split.')
flags.DEFINE_float('shard_mb', 128.0, 'Target size of one ArrayRecord shard, in MB of tokens.')
flags.DEFINE_integer('num_workers', 1, 'Processes for cleaning, fingerprinting and tokenizing (1: this one).')
flags.DEFINE_integer('examples', 5, 'Removed documents (and boilerplate lines) shown in the report per kind.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')


def options_from_flags() -> prepare_lib.Options:
  f = flags.FLAGS
  return prepare_lib.Options(
      input=f.input, output_dir=f.output_dir, overwrite=f.overwrite, format=f.format, text_field=f.text_field,
      doc_unit=f.doc_unit, on_bad_file=f.on_bad_file,
      clean=clean_lib.CleanOptions(normalize=f.normalize, strip_control=f.strip_control, strip_urls=f.strip_urls,
                                   strip_emails=f.strip_emails, collapse_whitespace=f.collapse_whitespace,
                                   lowercase=f.lowercase),
      boilerplate_min_docs=f.boilerplate_min_docs, boilerplate_min_fraction=f.boilerplate_min_fraction,
      min_chars=f.min_chars, max_chars=f.max_chars, dedup_exact=f.dedup_exact,
      near=dedup.NearOptions(threshold=f.near_threshold, shingle=f.shingle, shingle_size=f.shingle_size,
                             num_perm=f.num_perm) if f.dedup_near else None,
      validation_fraction=f.validation_fraction, test_fraction=f.test_fraction, seed=f.seed,
      tokenizer_path=f.tokenizer_path, vocab_size=f.vocab_size, tokenizer_type=f.tokenizer_type,
      byte_fallback=f.byte_fallback, character_coverage=f.character_coverage,
      tokenizer_max_chars=f.tokenizer_max_chars, shard_mb=f.shard_mb, num_workers=f.num_workers,
      examples=f.examples, progress=f.progress)


def summary(report: dict) -> str:
  """The report's headline numbers as a small table."""
  lines = [f'{"step / split":<13} {"docs":>10} {"chars":>13} {"tokens":>12}']
  for name, s in [(s['step'], s) for s in report['stages']] + list(report['splits'].items()):
    tokens = '-' if s['tokens'] is None else f'{s["tokens"]:,}'
    lines.append(f'{name:<13} {s["docs"]:>10,} {s["chars"]:>13,} {tokens:>12}')
  run = report['run']
  lines.append(f'{run["seconds"]["total"]:.1f} s, {run["input_mb_per_s"]:.2f} MB/s of input, '
               f'{run["num_workers"]} worker(s)')
  return '\n'.join(lines)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # e.g. a missing --input: absl names the flag
    cli.fail(str(e))


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; every option is a --flag')
  with cli.bad_input_exits():
    report = prepare_lib.prepare(options_from_flags())
  print(summary(report))
  print(f'wrote {flags.FLAGS.output_dir}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['input', 'output_dir'])
  app.run(main, flags_parser=_parse_flags)
