"""sentencepiece tokenizer: training on the corpus, loading, and bytes per token.

Fixed special ids, for both objectives: pad 0, unk 1, bos 2 (also the
encoder's CLS), eos 3 (also SEP), and ``<mask>`` 4 for masked-LM.

An imported Hugging Face ``tokenizer.json`` (GPT-2's byte-level BPE, BERT's
WordPiece) is read through the ``tokenizers`` library behind the same interface
(``HfTokenizer``); ``load`` picks the class from the file name.
"""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import sentencepiece as spm

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
MASK_PIECE = '<mask>'
SENTENCEPIECE_FILE, HF_FILE = 'tokenizer.model', 'tokenizer.json'  # their names in a workdir


def load(path: str) -> Tokenizer | HfTokenizer:
  """A ``tokenizer.json`` (Hugging Face ``tokenizers``) or a sentencepiece model, by the file name."""
  return HfTokenizer(path) if path.endswith('.json') else Tokenizer(path)


def file_name(path: str) -> str:
  """The name a copy of the tokenizer file at ``path`` gets in a workdir (or an exported model directory)."""
  return HF_FILE if path.endswith('.json') else SENTENCEPIECE_FILE


def find(directory: str) -> str | None:
  """The tokenizer file in a workdir or Hugging Face directory: ``tokenizer.json``, else one ``*.model``."""
  if os.path.isfile(os.path.join(directory, HF_FILE)):
    return os.path.join(directory, HF_FILE)
  models = sorted(glob.glob(os.path.join(glob.escape(directory), '*.model')))
  if len(models) > 1:
    raise ValueError(f'{directory} holds several sentencepiece models ({", ".join(map(os.path.basename, models))}); '
                     'keep the one that goes with the weights')
  return models[0] if models else None


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


# Special tokens by role, as the GPT-2, BERT and RoBERTa families name them; the first one present wins.
HF_SPECIALS = {'bos': ('[CLS]', '<s>', '<|endoftext|>'), 'eos': ('[SEP]', '</s>', '<|endoftext|>'),
               'pad': ('[PAD]', '<pad>'), 'mask': ('[MASK]', '<mask>'), 'unk': ('[UNK]', '<unk>', '<|endoftext|>')}


class HfTokenizer:
  """A Hugging Face ``tokenizer.json`` with lmjax's Tokenizer interface.

  Roles come from the special tokens' names (``HF_SPECIALS``): bos doubles as
  CLS and eos as SEP, as in lmjax's own tokenizers. bos and eos are required;
  pad, mask and unk only where they are used (masked LM needs mask).
  ``encode`` adds no special tokens: lmjax adds bos/eos itself.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=g-import-not-at-top  (only for imported tokenizers)
    if not os.path.isfile(path):
      raise ValueError(f'tokenizer file {path} not found; fix --config.data.tokenizer_path')
    self.model_path = path
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises plain Exceptions for bad JSON
      raise ValueError(f'{path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:200]})') from e
    self._ids = {}
    for role, names in HF_SPECIALS.items():
      ids = [i for i in map(self._tok.token_to_id, names) if i is not None]
      if ids:
        self._ids[role] = ids[0]
    self._special_id('bos')  # every document is [bos] text [eos]
    self._special_id('eos')
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    # WordPiece marks a word's later pieces ('##'); byte-level BPE and sentencepiece mark word starts.
    self._continuation = getattr(self._tok.model, 'continuing_subword_prefix', None) or ''

  bos_id = property(lambda self: self._special_id('bos'))
  eos_id = property(lambda self: self._special_id('eos'))
  pad_id = property(lambda self: self._special_id('pad'))
  mask_id = property(lambda self: self._special_id('mask'))
  unk_id = property(lambda self: self._special_id('unk'))

  def _special_id(self, role: str) -> int:
    if role not in self._ids:
      raise ValueError(f'tokenizer {self.model_path} has no {role} token (one of '
                       f'{", ".join(HF_SPECIALS[role])}); lmjax needs it here: add it to the tokenizer')
    return self._ids[role]

  def vocabulary(self) -> tuple[str, ...]:
    return tuple(self._tok.id_to_token(i) for i in range(self.vocab_size))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def piece_to_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    return self.unk_id if i is None else i

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  @property
  def special_ids(self) -> tuple[int, ...]:
    """pad, cls/bos, sep/eos and mask, those present, each once."""
    return tuple(sorted({self._ids[r] for r in ('pad', 'bos', 'eos', 'mask') if r in self._ids}))

  def _specials(self) -> set[int]:
    added = self._tok.get_added_tokens_decoder()
    return {i for i, token in added.items() if token.special} | set(self._ids.values())

  def word_starts(self) -> np.ndarray:
    """bool [vocab]: the piece begins a word (WordPiece: no '##'; else a leading space or newline
    marker) or is special."""
    specials = self._specials()
    out = np.zeros(self.vocab_size, bool)
    for i, piece in enumerate(self.vocabulary()):
      if self._continuation:
        out[i] = not piece.startswith(self._continuation)
      else:
        out[i] = piece.startswith(('\u0120', '\u2581', '\u010a', '\n'))  # byte-level space/newline, sp word
      out[i] |= i in specials
    return out

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to decoded (normalised) text; specials 0.

    Byte-level BPE: one byte per character of the piece (GPT-2 maps each byte to
    one character). WordPiece: the piece without its '##', plus the space before
    a word (an estimate: the decoder drops it before punctuation and at the start).
    """
    specials = self._specials()
    byte_level = type(self._tok.decoder).__name__ == 'ByteLevel'
    out = np.zeros(self.vocab_size, np.int32)
    for i, piece in enumerate(self.vocabulary()):
      if i in specials:
        continue
      if byte_level:
        out[i] = len(piece)
      elif self._continuation:
        word = not piece.startswith(self._continuation)
        out[i] = len(piece.removeprefix(self._continuation).encode('utf-8')) + word
      else:
        out[i] = len(piece.replace('\u2581', ' ').encode('utf-8'))
    return out


TOKENIZER_TYPES = ('bpe', 'unigram', 'char')


def trainer_options(model_type: str, character_coverage: float | None = None,
                    byte_fallback: bool | None = None) -> tuple[float, bool]:
  """(character coverage, byte fallback), the defaults filled in: 0.9995 and on for 'bpe' and 'unigram'; for
  'char', nanoGPT's character vocabulary, every character of the corpus and no byte pieces."""
  if model_type not in TOKENIZER_TYPES:
    raise ValueError(f"data.tokenizer_type={model_type!r}: use one of {', '.join(TOKENIZER_TYPES)}")
  char = model_type == 'char'
  return (character_coverage if character_coverage is not None else 1.0 if char else 0.9995,
          byte_fallback if byte_fallback is not None else not char)


def train_tokenizer(docs: list[str], model_path: str, vocab_size: int, model_type: str = 'bpe',
                    character_coverage: float | None = None, byte_fallback: bool | None = None) -> Tokenizer:
  """Trains a sentencepiece model on the documents' lines and writes it atomically to ``model_path``.

  ``model_type`` 'char' makes one piece per character (plus the special ids and the newline);
  ``vocab_size`` is then an upper bound, not the size. Defaults: ``trainer_options``.
  """
  character_coverage, byte_fallback = trainer_options(model_type, character_coverage, byte_fallback)
  lines = [line for d in docs for line in d.splitlines() if line.strip()]
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=byte_fallback,
        hard_vocab_limit=model_type != 'char',  # char: as many pieces as the corpus has characters
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
