"""The data-preparation CLI: readers, cleaning, dedup, splits, tokenizer, shards, atomic output, errors."""

import collections
import json
import os
import re
import subprocess
import sys

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from lmjax.data import clean, dedup, prepare_lib, prepared, readers
from lmjax.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare.txt')


def _options(input_path, output_dir, **kw):
  kw = {'vocab_size': 512, 'doc_unit': 'paragraph', 'validation_fraction': 0.1, 'test_fraction': 0.1,
        'progress': False, **kw}
  return prepare_lib.Options(input=str(input_path), output_dir=str(output_dir), **kw)


def _split_docs(output_dir, split):
  """A split's documents as token arrays, read with grain's own ArrayRecord source."""
  files = prepared.split_files(str(output_dir), split)
  source = grain.sources.ArrayRecordDataSource(files)
  return [np.frombuffer(source[i], '<i4') for i in range(len(source))]


def _key(text):
  """The test's own notion of 'same text': lowercase, whitespace runs as one space."""
  return ' '.join(text.lower().split())


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """About 120 KB of English paragraphs (Python's own docs) in one text file."""
  import pydoc_data.topics as topics  # pylint: disable=g-import-not-at-top
  text = '\n\n'.join(topics.topics[k] for k in sorted(topics.topics))[:120_000]
  path = tmp_path_factory.mktemp('corpus') / 'docs.txt'
  path.write_text(text, encoding='utf-8')
  return path


@pytest.fixture(scope='module')
def prepared_dir(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'out'
  report = prepare_lib.prepare(_options(corpus, out, seed=0))
  return out, report


# --- acceptance: tinyshakespeare with planted duplicates ---------------------------------------------------


def _word_shingles(text, n=5):
  words = _key(text).split()
  return {' '.join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def _greedy_near_count(paragraphs, threshold):
  """Exact all-pairs Jaccard (via an inverted index), first occurrence kept: what near dedup should remove."""
  sets, index, kept, removed = [_word_shingles(p) for p in paragraphs], collections.defaultdict(list), [], 0
  for i, s in enumerate(sets):
    candidates = {j for g in s for j in index[g]}
    if any(len(s & sets[j]) / len(s | sets[j]) >= threshold for j in candidates):
      removed += 1
      continue
    kept.append(i)
    for g in s:
      index[g].append(i)
  return removed


@pytest.mark.skipif(not os.path.isfile(SHAKESPEARE), reason='needs ../shared/data/tinyshakespeare.txt')
def test_acceptance_tinyshakespeare_removes_planted_duplicates(tmp_path):
  source = re.split(r'\n\s*\n', open(SHAKESPEARE, encoding='utf-8').read())
  source = [p for p in source if p.strip()]
  counts = collections.Counter(_key(p) for p in source)
  long_unique = [p for p in source if counts[_key(p)] == 1 and len(p.split()) >= 80]
  assert len(long_unique) >= 16
  # Exact copies (two with changed case and spacing), and near copies: a word changed early on, or one
  # changed and one added at the end.
  planted_exact = long_unique[:6] + [long_unique[6].upper(), long_unique[7].replace(' ', '   ')]
  planted_near = []
  for i, p in enumerate(long_unique[8:16]):
    words = p.split(' ')
    words[3] = 'zounderwick'
    planted_near.append(' '.join(words) + (' anon.' if i % 2 else ''))
  for original, copy in zip(long_unique[8:16], planted_near):
    jac = len(_word_shingles(original) & _word_shingles(copy)) / len(_word_shingles(original) | _word_shingles(copy))
    assert 0.8 <= jac < 1.0
  planted = tmp_path / 'planted.txt'
  planted.write_text('\n\n'.join(planted_exact + planted_near), encoding='utf-8')

  out = tmp_path / 'out'
  report = prepare_lib.prepare(_options(f'{SHAKESPEARE},{planted}', out, examples=1000,
                                        validation_fraction=0.05, test_fraction=0.05))

  everything = source + planted_exact + planted_near
  natural_exact = len(source) - len(counts)
  assert natural_exact > 0  # the source repeats itself ('GLOUCESTER:' ...): those go too
  assert report['dedup']['exact_dedup']['removed'] == natural_exact + len(planted_exact)
  distinct = list({_key(p): p for p in reversed(everything)}.values())[::-1]  # first occurrences, in order
  assert report['dedup']['near_dedup']['removed'] == _greedy_near_count(distinct, 0.8) >= len(planted_near)
  removed_near = {e['removed'] for e in report['dedup']['near_dedup']['examples']}
  for original, copy in zip(long_unique[8:16], planted_near):
    assert prepare_lib._truncate(copy) in removed_near
    pair = next(e for e in report['dedup']['near_dedup']['examples'] if e['removed'] == prepare_lib._truncate(copy))
    assert pair['kept'] == prepare_lib._truncate(original) and 0.8 <= pair['jaccard'] < 1

  kept = len(everything) - report['dedup']['exact_dedup']['removed'] - report['dedup']['near_dedup']['removed']
  assert report['splits']['validation']['docs'] == report['splits']['test']['docs'] == round(0.05 * kept)
  tok = tokenizer_lib.Tokenizer(str(out / 'tokenizer.model'))
  texts = {}
  for split in prepared.SPLITS:
    docs = _split_docs(out, split)
    assert len(docs) == report['splits'][split]['docs'] > 0
    assert sum(d.size for d in docs) == report['splits'][split]['tokens']
    assert all(d[0] == tok.bos_id and d[-1] == tok.eos_id for d in docs)
    texts[split] = {tok.decode(d) for d in docs}
  assert sum(len(t) for t in texts.values()) == kept  # every kept document once, none in two splits
  assert not (texts['train'] & texts['validation'] or texts['train'] & texts['test']
              or texts['validation'] & texts['test'])
  stages = report['stages']
  assert [s['step'] for s in stages] == ['read', 'cleaned', 'exact_dedup', 'near_dedup']
  assert stages[0]['docs'] == len(everything) and stages[-1]['docs'] == kept
  assert stages[-1]['tokens'] == sum(s['tokens'] for s in report['splits'].values())
  assert stages[1]['tokens'] > stages[2]['tokens'] > stages[3]['tokens']
  saved = json.loads((out / 'report.json').read_text())
  assert saved['dedup'] == report['dedup'] and saved['tokenizer']['vocab_size'] == 512
  assert 0.2 < saved['tokenizer']['tokens_per_char'] < 1


# --- cleaning ----------------------------------------------------------------------------------------------


def _only(**on):
  off = {'normalize': 'none', 'strip_control': False, 'collapse_whitespace': False}
  return clean.CleanOptions(**{**off, **on})


def test_normalization_forms():
  text = 'cafe\u0301 \ufb01ne \u2460'  # combining accent, 'fi' ligature, circled one
  assert clean.clean_text(text, _only(normalize='NFC'))[0] == 'caf\u00e9 \ufb01ne \u2460'
  assert clean.clean_text(text, _only(normalize='NFKC'))[0] == 'caf\u00e9 fine 1'
  assert clean.clean_text(text, _only())[0] == text
  assert clean.clean_text(text, _only(normalize='NFC'))[1] == [('normalize', 1)]


def test_control_characters_go_tabs_and_newlines_stay():
  text, changes = clean.clean_text('\ufeffa\x00b\r\nc\td\x1b\x85e\rf', _only(strip_control=True))
  assert text == 'ab\nc\tde\nf'
  assert changes == [('control', 5)]


def test_urls_and_emails():
  text = 'see https://example.com/a?b=1. or www.python.org/x), mail bob.s+x@mail.example.co.uk now'
  assert clean.clean_text(text, _only(strip_urls=True))[0] == 'see . or ), mail bob.s+x@mail.example.co.uk now'
  assert clean.clean_text(text, _only(strip_emails=True))[0] == (
      'see https://example.com/a?b=1. or www.python.org/x), mail  now')
  both = clean.CleanOptions(strip_urls=True, strip_emails=True)  # whitespace collapsing closes the gaps
  assert clean.clean_text(text, both)[0] == 'see . or ), mail now'
  assert clean.clean_text('no link in here: a.b, x@y', both)[0] == 'no link in here: a.b, x@y'


def test_whitespace_and_lowercase():
  text = '  Hello \t  World  \n \n\n\n  Next\u00a0 line  '
  assert clean.clean_text(text, _only(collapse_whitespace=True))[0] == 'Hello World\n\nNext line'
  assert clean.clean_text('MiXed Ünïcode', _only(lowercase=True))[0] == 'mixed ünïcode'
  assert clean.clean_text('already clean', clean.CleanOptions())[1] == []


def test_boilerplate_lines_by_count_and_fraction():
  docs = [f'Doc {i} says something.\nShare this page\nCopyright 2024' for i in range(3)]
  docs.append('Doc 3 stands alone.\nShare this page')
  keys = [clean.line_keys(d) for d in docs]
  share, copyright_ = clean.line_key('Share this page'), clean.line_key('Copyright 2024')
  assert set(clean.boilerplate_lines(keys, 3, 0.0)[0]) == {share, copyright_}
  assert clean.boilerplate_lines(keys, 4, 0.0)[0] == {share: 4}
  assert clean.boilerplate_lines(keys, 0, 0.75)[0] == {share: 4, copyright_: 3}
  assert clean.boilerplate_lines(keys, 0, 0.8)[0] == {share: 4}
  assert clean.boilerplate_lines(keys, 0, 0.0)[1] == 2  # a line in one document is never boilerplate
  flagged, _ = clean.boilerplate_lines(keys, 4, 0.0)
  assert clean.drop_lines(docs[0], flagged, collapse=True) == ('Doc 0 says something.\nCopyright 2024',
                                                               ['Share this page'])


def test_cleaning_and_filters_are_counted_in_the_report(prepared_dir, tmp_path):
  docs = [f'Article {i}: the quick brown fox number {i} jumps over the lazy dog {i} times.\n'
          f'Visit https://example.com/{i} for part {i}.\nAll rights reserved.' for i in range(40)]
  docs += ['tiny', 'x' * 5000]
  (tmp_path / 'a.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs), encoding='utf-8')
  report = prepare_lib.prepare(_options(
      tmp_path / 'a.jsonl', tmp_path / 'out', doc_unit='whole', clean=clean.CleanOptions(strip_urls=True),
      boilerplate_min_docs=30, min_chars=10, max_chars=1000,
      tokenizer_path=str(prepared_dir[0] / 'tokenizer.model')))  # too little text to train one
  url_chars = sum(len(f'https://example.com/{i}') for i in range(40))
  assert report['cleaning']['steps']['urls'] == {'docs_changed': 40, 'chars_removed': url_chars}
  assert report['cleaning']['steps']['whitespace'] == {'docs_changed': 40, 'chars_removed': 40}  # 'Visit  for'
  assert report['boilerplate']['lines_removed'] == 40 and report['boilerplate']['examples'] == [
      {'line': 'All rights reserved.', 'docs': 40}]
  assert report['length_filter'] == {'min_chars': 10, 'max_chars': 1000, 'too_short': 1, 'too_long': 1}
  assert [(s['step'], s['docs']) for s in report['stages']] == [
      ('read', 42), ('cleaned', 42), ('boilerplate', 42), ('length', 40), ('exact_dedup', 40), ('near_dedup', 40)]


# --- dedup -------------------------------------------------------------------------------------------------


def test_exact_keys_ignore_case_and_spacing_only():
  assert dedup.exact_key('Hello   World\n') == dedup.exact_key('hello world')
  assert dedup.exact_key('hello world!') != dedup.exact_key('hello world')
  deduper = dedup.Deduper(['a', 'b', 'A', ' a '])
  assert [deduper.check(i, k, None) for i, k in enumerate([b'a', b'b', b'a', b'a'])] == [
      None, None, ('exact', 0, None), ('exact', 0, None)]


@pytest.mark.parametrize('shingle', ['word', 'char'])
def test_near_dedup_threshold_is_exact(shingle):
  words = [f'w{i:03d}' for i in range(100)]
  a = ' '.join(words)
  b = ' '.join(words[:90] + [f'x{i:03d}' for i in range(10)])  # 90 of 110 distinct words shared
  opts = dedup.NearOptions(shingle=shingle, shingle_size=1 if shingle == 'word' else 4, num_perm=128)
  true_jaccard = dedup.jaccard(dedup.shingles(a, opts), dedup.shingles(b, opts))
  if shingle == 'word':
    assert true_jaccard == 90 / 110
  for threshold, removed in ((true_jaccard - 0.005, True), (true_jaccard + 0.005, False)):
    o = dedup.NearOptions(threshold=threshold, shingle=opts.shingle, shingle_size=opts.shingle_size)
    deduper = dedup.Deduper([a, b, b.upper()], exact=True, near=o)
    prints = dedup.fingerprint_chunk(o, [a, b, b.upper()])
    verdicts = [deduper.check(i, key, sig) for i, (key, sig) in enumerate(prints)]
    # The copy of b is an exact duplicate of b, whether or not b itself went as a near duplicate of a.
    assert verdicts == [None, ('near', 0, true_jaccard) if removed else None, ('exact', 1, None)]


# --- splits ------------------------------------------------------------------------------------------------


def test_split_indices_are_seeded_disjoint_and_sized():
  a = prepare_lib.split_indices(1000, 0.1, 0.05, seed=0)
  assert {k: len(v) for k, v in a.items()} == {'train': 850, 'validation': 100, 'test': 50}
  assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(1000))
  b = prepare_lib.split_indices(1000, 0.1, 0.05, seed=0)
  c = prepare_lib.split_indices(1000, 0.1, 0.05, seed=1)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert set(a['validation'].tolist()) != set(c['validation'].tolist())
  assert {k: len(v) for k, v in prepare_lib.split_indices(10, 0.01, 0.0, 0).items()} == {
      'train': 9, 'validation': 1, 'test': 0}
  with pytest.raises(ValueError, match='too few'):
    prepare_lib.split_indices(2, 0.5, 0.4, 0)


def _tree(path):
  return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), 'rb').read()
          for d, _, files in os.walk(path) for f in files if f != 'report.json'}


def test_output_is_the_same_for_any_worker_count_and_seed_decides_the_split(prepared_dir, corpus, tmp_path):
  out, report = prepared_dir
  two = prepare_lib.prepare(_options(corpus, tmp_path / 'two', seed=0, num_workers=2))
  assert _tree(tmp_path / 'two') == _tree(out)
  assert two['stages'] == report['stages'] and two['dedup'] == report['dedup']
  prepare_lib.prepare(_options(corpus, tmp_path / 'seed1', seed=1, tokenizer_path=str(out / 'tokenizer.model')))
  tok = tokenizer_lib.Tokenizer(str(out / 'tokenizer.model'))
  val0 = {tok.decode(d) for d in _split_docs(out, 'validation')}
  val1 = {tok.decode(d) for d in _split_docs(tmp_path / 'seed1', 'validation')}
  assert len(val0) == len(val1) == report['splits']['validation']['docs'] and val0 != val1


def test_prepared_reader_gives_random_access_documents(prepared_dir):
  out, report = prepared_dir
  manifest = prepared.load_manifest(str(out))
  assert manifest['dtype'] == 'int32' and manifest['tokenizer'] == 'tokenizer.model'
  for split in prepared.SPLITS:
    assert manifest['splits'][split]['docs'] == report['splits'][split]['docs']
  ds = prepared.split_source(str(out), 'train')
  assert len(ds) == report['splits']['train']['docs']
  first = ds[0]['tokens']
  assert first.dtype == np.int32 and first[0] == tokenizer_lib.BOS and first[-1] == tokenizer_lib.EOS
  np.testing.assert_array_equal(ds[len(ds) - 1]['tokens'], _split_docs(out, 'train')[-1])
  shuffled = ds.shuffle(seed=3)
  assert sorted(shuffled[i]['tokens'].tobytes() for i in range(len(ds))) == sorted(
      ds[i]['tokens'].tobytes() for i in range(len(ds)))
  with pytest.raises(ValueError, match='not a prepared corpus'):
    prepared.load_manifest(str(out / 'train'))


# --- tokenizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['bpe', 'unigram', 'char'])
def test_tokenizer_has_the_special_ids_lmjax_expects(prepared_dir, corpus, tmp_path, kind):
  if kind == 'bpe':
    out, report = prepared_dir
    assert report['tokenizer']['trained_on_chars'] == report['splits']['train']['chars']
  else:  # and trained on a sample of the training split
    out = tmp_path / kind
    report = prepare_lib.prepare(_options(corpus, out, tokenizer_type=kind, tokenizer_max_chars=60_000))
    assert 60_000 <= report['tokenizer']['trained_on_chars'] < min(70_000, report['splits']['train']['chars'])
  tok = tokenizer_lib.Tokenizer(str(out / 'tokenizer.model'))
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
  # 'char': as many pieces as the sample has characters (512 only caps it), every one covered, no byte pieces
  assert tok.id_to_piece(tok.mask_id) == '<mask>' and (tok.vocab_size == 512) == (kind != 'char')
  assert ((report['tokenizer']['byte_fallback'], report['tokenizer']['character_coverage'])
          == ((False, 1.0) if kind == 'char' else (True, 0.9995)))
  assert report['tokenizer']['special_ids'] == {'pad': 0, 'unk': 1, 'bos': 2, 'eos': 3, 'mask': 4}
  assert report['tokenizer']['type'] == kind
  sp = spm.SentencePieceProcessor(model_file=str(out / 'tokenizer.model'))
  assert sp.IsControl(tok.mask_id) and sp.IsUnknown(tok.unk_id)


def test_existing_tokenizer_is_reused_and_a_foreign_one_refused(prepared_dir, corpus, tmp_path):
  out, _ = prepared_dir
  report = prepare_lib.prepare(_options(corpus, tmp_path / 'reuse', tokenizer_path=str(out / 'tokenizer.model')))
  assert (tmp_path / 'reuse' / 'tokenizer.model').read_bytes() == (out / 'tokenizer.model').read_bytes()
  assert report['tokenizer']['source'] == str(out / 'tokenizer.model')
  foreign = tmp_path / 'foreign'
  spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(foreign), vocab_size=300, minloglevel=2)
  with pytest.raises(ValueError, match='pad/bos/eos'):
    prepare_lib.prepare(_options(corpus, tmp_path / 'x', tokenizer_path=f'{foreign}.model'))


# --- readers -----------------------------------------------------------------------------------------------


def _write_save_to_disk(path, table, num_shards=1):
  """The layout of datasets.Dataset.save_to_disk: Arrow IPC stream shards listed in state.json."""
  os.makedirs(path)
  names, rows = [], -(-table.num_rows // num_shards)
  for s in range(num_shards):
    names.append(f'data-{s:05d}-of-{num_shards:05d}.arrow')
    with pa.OSFile(os.path.join(path, names[-1]), 'wb') as sink, pa.ipc.new_stream(sink, table.schema) as w:
      w.write_table(table.slice(s * rows, rows))
  state = {'_data_files': [{'filename': n} for n in names], '_fingerprint': '0', '_format_columns': None,
           '_format_kwargs': {}, '_format_type': None, '_output_all_columns': False, '_split': None}
  with open(os.path.join(path, 'state.json'), 'w') as f:
    json.dump(state, f)
  with open(os.path.join(path, 'dataset_info.json'), 'w') as f:
    json.dump({'features': {'body': {'dtype': 'string', '_type': 'Value'}}}, f)


def test_reads_jsonl_parquet_arrow_and_save_to_disk(tmp_path):
  texts = [f'document number {i}' for i in range(7)]
  table = pa.table({'id': list(range(7)), 'body': texts})
  (tmp_path / 'a.jsonl').write_text(''.join(json.dumps({'id': i, 'body': t}) + '\n' for i, t in enumerate(texts)))
  pq.write_table(table, tmp_path / 'b.parquet')
  with pa.OSFile(str(tmp_path / 'c.arrow'), 'wb') as sink, pa.ipc.new_file(sink, table.schema) as w:
    w.write_table(table)
  _write_save_to_disk(str(tmp_path / 'hf'), table, num_shards=3)
  os.makedirs(tmp_path / 'dd')
  _write_save_to_disk(str(tmp_path / 'dd' / 'train'), table.slice(0, 4))
  _write_save_to_disk(str(tmp_path / 'dd' / 'test'), table.slice(4))
  (tmp_path / 'dd' / 'dataset_dict.json').write_text(json.dumps({'splits': ['train', 'test']}))
  for name in ('a.jsonl', 'b.parquet', 'c.arrow', 'hf', 'dd'):
    corpus = readers.read_corpus(str(tmp_path / name), text_field='body')
    assert corpus.docs == texts, name
  both = readers.read_corpus(f'{tmp_path / "b.parquet"},{tmp_path / "h*"}', text_field='body')
  assert both.docs == texts + texts and both.files == [str(tmp_path / 'b.parquet'), str(tmp_path / 'hf')]


def test_document_units_of_text_files(tmp_path):
  (tmp_path / 'a.txt').write_text('Para one\nline two\n\n \n  Para two, indented\r\n\r\nPara three\n')
  path = str(tmp_path / 'a.txt')
  assert readers.read_corpus(path, doc_unit='whole').docs == [(tmp_path / 'a.txt').read_bytes().decode()]
  assert readers.read_corpus(path, doc_unit='paragraph').docs == [
      'Para one\nline two', '  Para two, indented', 'Para three\n']
  assert readers.read_corpus(path, doc_unit='line').docs == [
      'Para one', 'line two', '  Para two, indented', 'Para three']


# --- atomic output -----------------------------------------------------------------------------------------


def test_a_failed_run_leaves_the_existing_output_intact(prepared_dir, corpus, tmp_path, monkeypatch):
  out, _ = prepared_dir
  before = {**_tree(out), 'report.json': (out / 'report.json').read_bytes()}
  siblings = sorted(os.listdir(out.parent))
  with pytest.raises(ValueError, match='not empty; pass --overwrite'):
    prepare_lib.prepare(_options(corpus, out))

  def fail(*args):
    raise OSError('disk full')
  monkeypatch.setattr(prepared, 'write_json', fail)  # fails after the shards and tokenizer are written
  with pytest.raises(OSError, match='disk full'):
    prepare_lib.prepare(_options(corpus, out, overwrite=True, doc_unit='line'))
  assert {**_tree(out), 'report.json': (out / 'report.json').read_bytes()} == before
  assert sorted(os.listdir(out.parent)) == siblings  # no temporary directory left behind
  monkeypatch.undo()
  target = tmp_path / 'target'
  target.mkdir()
  (target / 'old.txt').write_text('old')
  prepare_lib.prepare(_options(corpus, target, overwrite=True))
  assert not (target / 'old.txt').exists() and prepared.load_manifest(str(target))['format_version'] == 1
  assert sorted(os.listdir(tmp_path)) == ['target']


# --- bad input ---------------------------------------------------------------------------------------------


def test_bad_inputs_get_one_clear_line(tmp_path, corpus):
  (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{"text": oops}\n')
  (tmp_path / 'nofield.jsonl').write_text('{"text": "ok"}\n{"body": "x"}\n')
  (tmp_path / 'latin1.txt').write_bytes('caf\u00e9 cr\u00e8me'.encode('latin-1'))
  (tmp_path / 'blank.txt').write_text(' \x00\x01 \n\n\t\n')
  cases = {
      str(tmp_path / 'missing.txt'): 'does not exist',
      str(tmp_path / 'nothing*.txt'): 'matched no files',
      str(tmp_path / 'bad.jsonl'): r'bad.jsonl:2 is not valid JSON .*--on_bad_file=skip',
      str(tmp_path / 'nofield.jsonl'): r"nofield.jsonl:2 has no field 'text' \(it has: body\); set --text_field",
      str(tmp_path / 'latin1.txt'): r'latin1.txt is not UTF-8 text .*--on_bad_file=skip',
      str(tmp_path / 'blank.txt'): "empty after step 'cleaned'",
      str(tmp_path): 'is a directory without state.json',
  }
  for path, message in cases.items():
    with pytest.raises(ValueError, match=message):
      prepare_lib.prepare(_options(path, tmp_path / 'out'))
    assert sorted(os.listdir(tmp_path)) == sorted(['bad.jsonl', 'nofield.jsonl', 'latin1.txt', 'blank.txt'])
  with pytest.raises(ValueError, match='not found; fix --tokenizer_path'):
    prepare_lib.prepare(_options(corpus, tmp_path / 'out', tokenizer_path=str(tmp_path / 'none.model')))
  report = prepare_lib.prepare(_options(f'{corpus},{tmp_path / "latin1.txt"}', tmp_path / 'out',
                                        on_bad_file='skip'))
  assert report['input']['skipped_files'] == 1 and report['input']['files'] == 1
  assert 'latin1.txt is not UTF-8' in report['input']['skipped'][0]['reason']


def test_cli_runs_and_fails_with_exit_2(corpus, tmp_path):
  cmd = [sys.executable, '-m', 'lmjax.data.prepare', f'--input={corpus}', '--doc_unit=paragraph',
         '--vocab_size=400', '--validation_fraction=0.1', '--test_fraction=0', '--progress=false',
         '--shard_mb=0.05', '--num_perm=64']
  ok = subprocess.run(cmd + [f'--output_dir={tmp_path / "out"}'], cwd=REPO, capture_output=True, text=True,
                      timeout=120)
  assert ok.returncode == 0, ok.stderr
  manifest = prepared.load_manifest(str(tmp_path / 'out'))
  assert len(manifest['splits']['train']['files']) > 1 and manifest['splits']['test'] == {
      'files': [], 'docs': 0, 'tokens': 0}
  assert manifest['vocab_size'] == 400 and 'near_dedup' in ok.stdout
  bad = subprocess.run(cmd + [f'--output_dir={tmp_path / "out"}'], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f'error: --output_dir={tmp_path / "out"} is not empty; pass --overwrite to replace it or choose '
      'another directory']
  with pytest.raises(ValueError, match='holds no documents'):
    prepared.split_source(str(tmp_path / 'out'), 'test')


# --- training from a prepared corpus ------------------------------------------------------------------------


def test_training_reads_a_prepared_corpus_and_resumes_exactly(prepared_dir, tmp_path):
  """data.source=prepared: no tokenization at train time; its tokenizer is used; a resume matches."""
  import shutil  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from lmjax import train  # pylint: disable=g-import-not-at-top
  out, report = prepared_dir
  config = tiny_config(str(out), **{'data.source': 'prepared', 'train.max_steps': 6})
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'tokenizer.model'), 'rb') as a, open(out / 'tokenizer.model', 'rb') as b:
    assert a.read() == b.read()
  assert np.isfinite(result['eval_loss'])

  def losses():
    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
      return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}
  straight = losses()
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6'))
  train.train_and_evaluate(config, workdir)
  assert losses() == straight
  with pytest.raises(ValueError, match='uses the tokenizer saved with the corpus'):
    train.train_and_evaluate(tiny_config(str(out), **{'data.source': 'prepared',
                                                      'data.tokenizer_path': str(out / 'tokenizer.model')}),
                             str(tmp_path / 'other'))
