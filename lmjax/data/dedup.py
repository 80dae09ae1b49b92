"""Deduplication: exact (hash of normalized text) and near-duplicate (MinHash + LSH, verified exactly).

The first occurrence of a document is kept; a later one is removed when its
normalized text equals a kept one (exact), or when the Jaccard similarity of
its shingle set with a kept one's is at least the threshold (near). LSH only
proposes candidates: each candidate pair's Jaccard is computed exactly from
the two texts, so nothing below the threshold is ever removed. The LSH bands
are tuned for recall (false positives cost one exact comparison each).
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

SHINGLES = ('word', 'char')
_LSH_WEIGHTS = (0.05, 0.95)  # (false positive, false negative): see the module docstring
_SCHEME = 'affine32'         # datasketch's default since 2.0, named so the sketches and the index agree


@dataclasses.dataclass(frozen=True)
class NearOptions:
  threshold: float = 0.8
  shingle: str = 'word'
  shingle_size: int = 5
  num_perm: int = 128
  seed: int = 1

  def __post_init__(self):
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f'--near_threshold={self.threshold} must be in (0, 1]')
    if self.shingle not in SHINGLES:
      raise ValueError(f'--shingle={self.shingle!r} is not one of {", ".join(SHINGLES)}')
    if self.shingle_size < 1 or self.num_perm < 2:
      raise ValueError(f'--shingle_size={self.shingle_size} and --num_perm={self.num_perm} must be >= 1 and >= 2')


def normalized(text: str) -> str:
  """What 'the same text' means for dedup: NFKC, case-folded, whitespace runs as one space."""
  return ' '.join(unicodedata.normalize('NFKC', text).casefold().split())


def exact_key(text: str) -> bytes:
  return hashlib.blake2b(normalized(text).encode('utf-8'), digest_size=16).digest()


def shingles(text: str, opts: NearOptions) -> set[bytes]:
  """Word or character n-grams of the normalized text; a text shorter than n is one shingle."""
  units = normalized(text)
  if opts.shingle == 'word':
    units = units.split()
  n = opts.shingle_size
  joiner = ' ' if opts.shingle == 'word' else ''
  grams = {joiner.join(units[i:i + n]) for i in range(max(1, len(units) - n + 1))}
  return {g.encode('utf-8') for g in grams}


def jaccard(a: set, b: set) -> float:
  return len(a & b) / len(a | b) if a or b else 1.0


def fingerprint_chunk(opts: NearOptions | None, docs: list[str]) -> list[tuple[bytes, np.ndarray | None]]:
  """Worker: (exact key, MinHash signature or None when near dedup is off) for each document."""
  out = []
  # Drawing the permutations costs as much as hashing a paragraph: draw them once per chunk.
  permutations = MinHash(num_perm=opts.num_perm, seed=opts.seed, scheme=_SCHEME).permutations if opts else None
  for doc in docs:
    signature = None
    if opts is not None:
      sketch = MinHash(num_perm=opts.num_perm, seed=opts.seed, permutations=permutations, scheme=_SCHEME)
      sketch.update_batch(list(shingles(doc, opts)))  # a minimum: the order does not matter
      signature = sketch.hashvalues
    out.append((exact_key(doc), signature))
  return out


def lsh_recall(lsh: MinHashLSH, jaccard_value: float) -> float:
  """Probability that a pair with this Jaccard similarity becomes a candidate: 1 - (1 - J^r)^b."""
  return 1.0 - (1.0 - jaccard_value ** lsh.r) ** lsh.b


class Deduper:
  """Decides, document by document in corpus order, whether each repeats an earlier one.

  The same decisions as exact dedup over the whole corpus followed by near dedup
  over what remains (a document's key is remembered even if it then goes as a near
  duplicate), made in one pass so that it can run while workers still fingerprint.
  """

  def __init__(self, docs: list[str], exact: bool = True, near: NearOptions | None = None):
    self._docs, self._exact, self._near = docs, exact, near
    self._first: dict[bytes, int] = {}
    self.lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm, weights=_LSH_WEIGHTS) if near else None

  def check(self, i: int, key: bytes, signature: np.ndarray | None) -> tuple[str, int, float | None] | None:
    """('exact', kept index, None), ('near', kept index, Jaccard) or None (document ``i`` is kept)."""
    if self._exact:
      if key in self._first:
        return 'exact', self._first[key], None
      self._first[key] = i
    if self.lsh is None:
      return None
    sketch = LeanMinHash(seed=self._near.seed, hashvalues=signature, scheme=_SCHEME)
    candidates = self.lsh.query(sketch)
    if candidates:  # of several kept matches, name the most similar, then the earliest
      mine = shingles(self._docs[i], self._near)
      best, j = min((-jaccard(mine, shingles(self._docs[j], self._near)), j) for j in candidates)
      if -best >= self._near.threshold:
        return 'near', j, -best
    self.lsh.insert(i, sketch, check_duplication=False)
    return None
