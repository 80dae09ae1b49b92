"""Data code: tokenizer, packing, iterator state, sharding of documents, baselines. No JAX here."""

import ast
import glob
import os

import numpy as np
import pytest

from lmjax.data import pipeline, sources
from lmjax.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def docs():
  return sources.load_documents('python_docs', max_doc_chars=2000)[:400]


@pytest.fixture(scope='module')
def tok(docs, tmp_path_factory):
  return tokenizer_lib.train_tokenizer(docs, str(tmp_path_factory.mktemp('tok') / 'tok.model'), 512)


def test_data_package_never_imports_jax():
  for path in glob.glob(os.path.join(REPO, 'lmjax', 'data', '*.py')):
    tree = ast.parse(open(path, encoding='utf-8').read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split('.')[0] in ('jax', 'flax') or n.startswith('lmjax.models')], path


def test_tokenizer_roundtrip_is_exact_and_bytes_add_up(docs, tok):
  token_bytes = tok.token_bytes()
  for doc in docs[:50] + ['  two  spaces\n\nand a tab\t, unicode: café ∑ 日本']:
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc
    assert token_bytes[ids].sum() == len(doc.encode('utf-8')) + 1  # + sentencepiece's leading word marker
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 2, 3, 4)
  assert tok.decode([tok.bos_id, *tok.encode('hello'), tok.mask_id, tok.eos_id]) == 'hello'


def test_char_tokenizer_is_one_token_per_character(tmp_path):
  """tokenizer_type='char' (nanoGPT's character vocabulary): a piece per character the corpus has, plus the
  special ids; vocab_size only caps it. Round trip exact, one token per character (+ the leading marker)."""
  docs = ['First Citizen:\nBefore we proceed any further, hear me speak.', 'All:\nSpeak, speak. 12 zebras!']
  tok = tokenizer_lib.train_tokenizer(docs, str(tmp_path / 'char.model'), 256, 'char')
  chars = set(''.join(docs)) - {'\n'}  # newline is a user-defined piece; the space becomes sentencepiece's marker
  assert tok.vocab_size == len(chars) + 6  # pad, unk, bos, eos, <mask>, newline
  for doc in docs:
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc and len(ids) == len(doc) + 1
  assert tok.token_bytes()[tok.encode(docs[0])].sum() == len(docs[0]) + 1
  assert tokenizer_lib.trainer_options('char') == (1.0, False)  # no 256 byte pieces
  assert tokenizer_lib.trainer_options('bpe') == (0.9995, True)
  with pytest.raises(ValueError, match="tokenizer_type='word'"):
    tokenizer_lib.train_tokenizer(docs, str(tmp_path / 'w.model'), 256, 'word')


def test_word_starts(tok):
  starts = tok.word_starts()
  for i in tok.special_ids:
    assert starts[i]
  ids = tok.encode('The interpreter reads statements')
  pieces = [tok.id_to_piece(i) for i in ids]
  assert [starts[i] for i in ids] == [p.startswith('\u2581') for p in pieces]
  assert sum(starts[i] for i in ids) == 4


def test_packing_marks_documents(docs, tok):
  it = pipeline.train_iterator(pipeline.encode(docs, tok), row_len=64, batch_size=4, seed=0)
  batch = next(it)
  assert {k: v.shape for k, v in batch.items()} == {k: (4, 64) for k in ('tokens', 'segment_ids', 'positions')}
  for tokens, segs, pos in zip(batch['tokens'], batch['segment_ids'], batch['positions']):
    assert (segs > 0).all() and (np.diff(segs) >= 0).all()  # no padding in training rows
    for s in np.unique(segs):
      p = pos[segs == s]
      np.testing.assert_array_equal(p, np.arange(p[0], p[0] + p.size))  # positions count within a document
      if s > segs[0]:
        assert p[0] == 0 and tokens[segs == s][0] == tok.bos_id   # a new document starts at bos, position 0


def test_iterator_state_restores_exactly(docs, tok):
  it = pipeline.train_iterator(pipeline.encode(docs, tok), row_len=32, batch_size=4, seed=3)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.train_iterator(pipeline.encode(docs, tok), row_len=32, batch_size=4, seed=3)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_shards_read_disjoint_documents(tok):
  """Within an epoch (each epoch is reshuffled) the two processes' documents do not overlap."""
  docs = [f'document number {i} says hello' for i in range(41)]  # odd: epochs do not align with the stride
  seen = []
  for shard in range(2):
    it = pipeline.train_iterator(pipeline.encode(docs, tok), row_len=80, batch_size=1, seed=0, shard_index=shard,
                                 shard_count=2)
    text = tok.decode(next(it)['tokens'][0])
    seen.append({i for i in range(41) if f'number {i} says' in text})
  assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_eval_batches_cover_every_token_once(docs, tok):
  val = docs[:30]
  batches = pipeline.eval_batches(pipeline.encode(val, tok), row_len=64, batch_size=8)
  tokens = np.concatenate([b['tokens'][b['segment_ids'] > 0] for b in batches])
  expected = np.concatenate([[tok.bos_id, *tok.encode(d), tok.eos_id] for d in val])
  np.testing.assert_array_equal(tokens, expected)
  last = batches[-1]
  assert (last['tokens'][last['segment_ids'] == 0] == tok.pad_id).all()


def test_unigram_baselines(tok):
  train = ['a a a b', 'a b c']
  val = ['a b', 'c a']
  result = pipeline.unigram_baselines(pipeline.encode(train, tok), pipeline.encode(val, tok), tok.vocab_size)
  counts = np.bincount(np.concatenate([tok.encode(d) for d in train]), minlength=tok.vocab_size) + 0.5
  ids = np.concatenate([tok.encode(d) for d in val])
  assert result['unigram_perplexity'] == pytest.approx(np.exp(-np.mean(np.log(counts[ids] / counts.sum()))))
  assert result['majority_accuracy'] == pytest.approx(np.mean(ids == counts.argmax()))
  assert 0 < result['majority_accuracy'] < 1 and result['unigram_perplexity'] > 1


def test_split_is_deterministic_and_disjoint(docs):
  a = sources.split_documents(docs, 0.1, seed=0)
  b = sources.split_documents(docs, 0.1, seed=0)
  assert a == b
  train, val = a
  assert len(val) == pytest.approx(0.1 * len(docs), abs=1) and len(train) + len(val) == len(docs)


def test_training_reads_at_most_one_epoch_ahead():
  """grain's read-ahead of 500 documents re-tokenized a small corpus ~24 times at start-up."""
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  reads, lock = [0], threading.Lock()

  def read(i):
    with lock:
      reads[0] += 1
    return {'tokens': np.arange(1, 41, dtype=np.int32) + i}

  records = grain.MapDataset.range(20).map(read)
  it = pipeline.train_iterator(records, row_len=16, batch_size=2, seed=0)
  first = next(it)
  # The read-ahead threads fill their buffer: wait until the count has stood still for 0.5 s (at most 30 s).
  seen, still_since, deadline = -1, time.monotonic(), time.monotonic() + 30
  while time.monotonic() - still_since < 0.5 and time.monotonic() < deadline:
    time.sleep(0.05)
    with lock:
      now = reads[0]
    if now != seen:
      seen, still_since = now, time.monotonic()
  assert first['tokens'].shape == (2, 16)
  assert reads[0] <= 2 * 20, reads[0]  # the documents consumed plus one epoch ahead (was 500)
