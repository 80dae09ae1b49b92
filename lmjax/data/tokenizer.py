"""sentencepiece tokenizer: training on the corpus, loading, and bytes per token.

Fixed special ids, for both objectives: pad 0, unk 1, bos 2 (also the
encoder's CLS), eos 3 (also SEP), and ``<mask>`` 4 for masked-LM.
"""

from __future__ import annotations

import io
import os

import numpy as np
import sentencepiece as spm

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
MASK_PIECE = '<mask>'


class Tokenizer:
  """A loaded sentencepiece model with lmjax's special ids."""

  def __init__(self, model_path: str):
    if not os.path.isfile(model_path):
      raise ValueError(f'tokenizer file {model_path} not found; fix --config.data.tokenizer_path '
                       "or set it to '' to train one")
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(model_path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f'tokenizer file {model_path} is not a sentencepiece model; point '
                       '--config.data.tokenizer_path at a .model file or delete it to retrain') from e
    if self._sp.pad_id() != PAD or self._sp.bos_id() != BOS or self._sp.eos_id() != EOS:
      raise ValueError(f'tokenizer {model_path} has pad/bos/eos ids {self._sp.pad_id()}/{self._sp.bos_id()}/'
                       f'{self._sp.eos_id()}, lmjax needs {PAD}/{BOS}/{EOS}; train it with lmjax')

  vocab_size = property(lambda self: self._sp.GetPieceSize())
  pad_id = property(lambda self: PAD)
  unk_id = property(lambda self: UNK)
  bos_id = property(lambda self: BOS)
  eos_id = property(lambda self: EOS)
  mask_id = property(lambda self: self._sp.PieceToId(MASK_PIECE))

  def vocabulary(self) -> tuple[str, ...]:
    """Every piece, in id order: two tokenizers with equal vocabularies give the same ids."""
    return tuple(self._sp.IdToPiece(i) for i in range(self.vocab_size))

  def encode(self, text: str) -> list[int]:
    return self._sp.EncodeAsIds(text)

  def id_to_piece(self, i: int) -> str:
    return self._sp.IdToPiece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.PieceToId(piece)

  def decode(self, ids) -> str:
    specials = {PAD, BOS, EOS, self.mask_id}
    return self._sp.DecodeIds([int(i) for i in ids if int(i) not in specials])

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids that are never masked or predicted by masked-LM: pad, cls/bos, sep/eos, mask."""
    return (PAD, BOS, EOS, self.mask_id)

  def word_starts(self) -> np.ndarray:
    """bool [vocab]: the piece begins a word (sentencepiece's '▁' marker, a newline or a special).

    Whole-word masking groups each word-start piece with the pieces that follow it.
    """
    out = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      piece = self._sp.IdToPiece(i)
      out[i] = piece.startswith('\u2581') or piece == '\n' or self._sp.IsControl(i) or self._sp.IsUnknown(i)
    return out

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to decoded text ('▁' = one space; byte pieces 1; specials 0)."""
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if self._sp.IsControl(i) or self._sp.IsUnknown(i):
        continue
      if self._sp.IsByte(i):
        out[i] = 1
      else:
        out[i] = len(self._sp.IdToPiece(i).replace('\u2581', ' ').encode('utf-8'))
    return out


def train_tokenizer(docs: list[str], model_path: str, vocab_size: int, model_type: str = 'bpe',
                    character_coverage: float = 0.9995, byte_fallback: bool = True) -> Tokenizer:
  """Trains a sentencepiece model on the documents' lines and writes it atomically to ``model_path``."""
  if model_type not in ('bpe', 'unigram'):
    raise ValueError(f"data.tokenizer_type={model_type!r}: use 'bpe' or 'unigram'")
  lines = [line for d in docs for line in d.splitlines() if line.strip()]
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=byte_fallback,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, control_symbols=[MASK_PIECE],
        user_defined_symbols=['\n'],  # lines are trained separately; keep newline one token
        # 'identity' keeps text byte-exact, so decode(encode(x)) == x and bits per byte are honest.
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=2, minloglevel=2)
  except RuntimeError as e:
    # Too small a vocabulary cannot hold the corpus's characters; too large needs more text.
    fix = ('raise --config.data.vocab_size' if 'required_chars' in str(e)
           else 'lower --config.data.vocab_size or add data')
    raise ValueError(f'could not train a {vocab_size}-token tokenizer on this corpus ({str(e).strip()}); '
                     f'{fix}') from e
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  tmp = f'{model_path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(model.getvalue())
  os.replace(tmp, model_path)  # a crash never leaves a half-written tokenizer
  return Tokenizer(model_path)
