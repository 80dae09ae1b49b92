"""Document cleaning: per-document text steps and the corpus-wide boilerplate-line filter.

Every step is optional and reports what it changed, so ``report.json`` can say
how much text each one removed. Steps run in a fixed order (``STEPS``):
Unicode normalization first, so the later patterns see one spelling of each
character; URL stripping before e-mail stripping, so ``user@host`` inside a
URL goes with the URL; whitespace after the strippers, to close the gaps they leave.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
import unicodedata

STEPS = ('normalize', 'control', 'urls', 'emails', 'whitespace', 'lowercase')
NORMALIZE_FORMS = ('NFC', 'NFKC', 'none')

# C0/C1 control characters except tab and newline (carriage returns become newlines first), and the
# byte-order mark that Windows editors put at the start of files.
_CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]')
# The last character may not be sentence punctuation: 'see https://a.org/x.' keeps its full stop.
_URL = re.compile(r'\b(?:(?:https?|ftp)://|www\.)[^\s<>"]*[^\s<>"\'.,;:!?)\]}]', re.IGNORECASE)
_EMAIL = re.compile(r'\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b', re.IGNORECASE)
_SPACES = re.compile(r'[^\S\n]+')          # any whitespace run except newlines
_SPACE_AT_NEWLINE = re.compile(r' ?\n ?')  # after _SPACES, at most one space either side
_BLANK_LINES = re.compile(r'\n{3,}')       # keep at most one blank line: paragraphs stay paragraphs


@dataclasses.dataclass(frozen=True)
class CleanOptions:
  normalize: str = 'NFC'
  strip_control: bool = True
  strip_urls: bool = False
  strip_emails: bool = False
  collapse_whitespace: bool = True
  lowercase: bool = False
  line_keys: bool = False  # also return each document's line keys, for the boilerplate filter

  def __post_init__(self):
    if self.normalize not in NORMALIZE_FORMS:
      raise ValueError(f'--normalize={self.normalize!r} is not one of {", ".join(NORMALIZE_FORMS)}')


def clean_text(text: str, opts: CleanOptions) -> tuple[str, list[tuple[str, int]]]:
  """The cleaned text and, for each step that changed it, (step, characters removed)."""
  changes = []
  for name, step in _enabled_steps(opts):
    new = step(text)
    if new != text:
      changes.append((name, len(text) - len(new)))
      text = new
  return text, changes


def clean_chunk(opts: CleanOptions, docs: list[str]) -> list[tuple[str, list[tuple[str, int]], list[bytes]]]:
  """Worker: (text, changes, line keys) for each document (keys empty unless ``opts.line_keys``)."""
  out = []
  for doc in docs:
    text, changes = clean_text(doc, opts)
    out.append((text, changes, line_keys(text) if opts.line_keys else []))
  return out


def step_names(opts: CleanOptions) -> list[str]:
  return [name for name, _ in _enabled_steps(opts)]


def _enabled_steps(opts: CleanOptions):
  if opts.normalize != 'none':
    yield 'normalize', lambda t: unicodedata.normalize(opts.normalize, t)
  if opts.strip_control:
    yield 'control', lambda t: _CONTROL.sub('', t.replace('\r\n', '\n').replace('\r', '\n'))
  if opts.strip_urls:
    yield 'urls', lambda t: _URL.sub('', t)
  if opts.strip_emails:
    yield 'emails', lambda t: _EMAIL.sub('', t)
  if opts.collapse_whitespace:
    yield 'whitespace', collapse_whitespace
  if opts.lowercase:
    yield 'lowercase', str.lower


def collapse_whitespace(text: str) -> str:
  """One space for each run of spaces/tabs, none at line ends, at most one blank line, no outer whitespace."""
  text = _SPACE_AT_NEWLINE.sub('\n', _SPACES.sub(' ', text))
  return _BLANK_LINES.sub('\n\n', text).strip()


def line_keys(text: str) -> list[bytes]:
  """Distinct 8-byte hashes of the document's non-blank lines (stripped): the boilerplate filter's unit."""
  lines = {line.strip() for line in text.split('\n')}
  lines.discard('')
  return sorted(line_key(line) for line in lines)


def line_key(line: str) -> bytes:
  return hashlib.blake2b(line.encode('utf-8'), digest_size=8).digest()


def boilerplate_lines(keys_per_doc: list[list[bytes]], min_docs: int,
                      min_fraction: float) -> tuple[dict[bytes, int], int]:
  """Lines in at least ``min_docs`` documents and at least ``min_fraction`` of them -> {key: doc count}, threshold.

  A zero disables that condition; a line in a single document is never boilerplate.
  """
  threshold = max(2, min_docs, math.ceil(min_fraction * len(keys_per_doc)))
  counts = collections.Counter(k for keys in keys_per_doc for k in keys)
  return {k: c for k, c in counts.items() if c >= threshold}, threshold


def drop_lines(text: str, flagged: dict[bytes, int], collapse: bool) -> tuple[str, list[str]]:
  """The text without its flagged lines, and the lines removed."""
  kept, removed = [], []
  for line in text.split('\n'):
    stripped = line.strip()
    (removed if stripped and line_key(stripped) in flagged else kept).append(line)
  if not removed:
    return text, []
  text = '\n'.join(kept)
  return (_BLANK_LINES.sub('\n\n', text).strip() if collapse else text), removed
