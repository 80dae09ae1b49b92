"""Fill-mask inference from a masked-LM workdir: top-k candidates for every masked position.

  python -m lmjax.fill_mask --workdir=runs/bert_tiny --text="The [MASK] statement is used to leave a loop." \
      [--mask_marker=[MASK] --top_k=5]

Each marker stands for one token. Spaces around a marker are the predicted
token's business (sentencepiece pieces carry their leading space), so
"a [MASK] b" asks for a word between "a" and " b".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lmjax import cli, train
from lmjax.data.tokenizer import Tokenizer
from lmjax.models.transformer import Transformer

_WORDSEP = '\u2581'


def encode_with_masks(tokenizer: Tokenizer, text: str, marker: str) -> list[int]:
  """[cls] tokens [sep] with ``tokenizer.mask_id`` wherever ``marker`` is; raises if there is none."""
  parts = text.split(marker)
  if len(parts) < 2:
    raise ValueError(f'--text has no {marker!r}; put the mask marker (--mask_marker) where a token is missing')
  ids = [tokenizer.bos_id]
  for i, part in enumerate(parts):
    if i:
      ids.append(tokenizer.mask_id)
    if i < len(parts) - 1:
      part = part.rstrip(' ')  # the masked token carries its own leading space
    if not part:
      continue
    if i and part.startswith(' '):
      ids.extend(tokenizer.encode(part[1:]))  # sentencepiece's word marker restores the space
    else:
      ids.extend(_glued(tokenizer, part) if i else tokenizer.encode(part))
  ids.append(tokenizer.eos_id)
  return ids


def _glued(tokenizer: Tokenizer, part: str) -> list[int]:
  """Encodes text that follows a marker with no space: without sentencepiece's leading word marker."""
  ids = tokenizer.encode(part)
  first = tokenizer.id_to_piece(ids[0])
  if first == _WORDSEP:
    return ids[1:]
  if first.startswith(_WORDSEP) and tokenizer.piece_to_id(first[1:]) != tokenizer.unk_id:
    return [tokenizer.piece_to_id(first[1:])] + ids[1:]
  return ids


@functools.partial(jax.jit, static_argnames=('model', 'top_k'))
def top_candidates(model: Transformer, params, tokens_1L, *, top_k: int):
  """(probabilities [1, L, k], ids [1, L, k]) of the k most likely tokens at every position."""
  logits_1LV = model.apply({'params': params}, tokens_1L)
  return jax.lax.top_k(jax.nn.softmax(logits_1LV, axis=-1), top_k)


def fill_mask(model: Transformer, params, tokenizer: Tokenizer, text: str, *, marker: str = '[MASK]',
              top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each marker in ``text``, in order: [(candidate text, probability)] best first."""
  ids = encode_with_masks(tokenizer, text, marker)
  if len(ids) > model.config.max_len:
    raise ValueError(f'--text is {len(ids)} tokens, more than the model max_len {model.config.max_len}; shorten it')
  probs, cand = jax.device_get(top_candidates(model, params, jnp.asarray([ids], jnp.int32), top_k=top_k))
  return [[(tokenizer.id_to_piece(int(c)).replace(_WORDSEP, ' '), float(p)) for p, c in zip(probs[0, i], cand[0, i])]
          for i in np.flatnonzero(np.asarray(ids) == tokenizer.mask_id)]


def _define_flags():
  """Only when run as a CLI, so that notebooks and tests can import this module beside lmjax.sample."""
  flags.DEFINE_string('workdir', None, 'Masked-LM training workdir (checkpoints + tokenizer).', required=True)
  flags.DEFINE_string('text', None, 'Text with one or more mask markers.', required=True)
  flags.DEFINE_string('mask_marker', '[MASK]', 'The string in --text that marks a masked token.')
  flags.DEFINE_integer('top_k', 5, 'Candidates printed per masked position.')


def main(argv):
  del argv
  args = flags.FLAGS
  with cli.bad_input_exits():
    _, model, params, tokenizer = train.load_for_inference(args.workdir, objective='mlm')
    results = fill_mask(model, params, tokenizer, args.text, marker=args.mask_marker, top_k=args.top_k)
  print(args.text)
  for i, candidates in enumerate(results):
    print(f'{args.mask_marker} #{i + 1}: ' + '  '.join(f'{t.strip() or repr(t)!s} ({p:.3f})' for t, p in candidates))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
