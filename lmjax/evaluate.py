"""Evaluation: loss, perplexity, accuracy and bits per byte over a fixed split; the evaluate CLI.

For masked-LM the same figures are over the masked positions (masks drawn from a
fixed seed, see ``steps.eval_step``); bits per byte are next-token only.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import numpy as np
from absl import app, flags

from lmjax import cli
from lmjax import metrics as metrics_lib


def evaluate(eval_fn: Callable, params, batches: Iterable, token_bytes_V) -> dict[str, float]:
  """Runs ``eval_fn(params, batch, index, token_bytes_V) -> {name: (sum, count)}`` over every batch.

  Sums are accumulated on the host in float64, so the result does not depend on
  how the split is cut into batches.
  """
  total = {}
  pending = None
  for index, batch in enumerate(batches):
    out = eval_fn(params, batch, index, token_bytes_V)
    if pending is not None:  # fetch the previous batch's sums while this one runs
      total = metrics_lib.accumulate(total, jax.device_get(pending))
    pending = out
  if pending is not None:
    total = metrics_lib.accumulate(total, jax.device_get(pending))
  if not total or total['loss'][1] == 0:
    raise ValueError('evaluation split has no target tokens; raise --config.data.val_fraction')
  return summary(total)


def summary(total) -> dict[str, float]:
  """(sum, count) totals -> the eval_* scalars that are logged."""
  means = metrics_lib.summarize(total)
  out = {'eval_loss': means['loss'], 'eval_perplexity': math.exp(min(means['loss'], 50.0)),
         'eval_accuracy': means['accuracy'], 'eval_tokens': total['loss'][1]}
  if 'bits_per_byte' in means:
    out['eval_bits_per_byte'] = means['bits_per_byte']
  return out


# --- python -m lmjax.evaluate --workdir=DIR [--data=validation|PATH] ------------------------------------------


def validation_metrics(workdir: str) -> dict[str, float]:
  """The training run's own validation split, evaluated exactly as training does (same batches and masks)."""
  import functools  # pylint: disable=g-import-not-at-top
  from lmjax import objectives, sharding, steps, train  # pylint: disable=g-import-not-at-top  (train imports us)
  from lmjax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, model, params, tokenizer = train.load_for_inference(workdir)
  _, val_records, _ = train.load_data(config, workdir, resuming=True)
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  batches = pipeline.eval_batches(val_records, row_len=row_len, batch_size=config.train.batch_size,
                                  max_batches=config.train.eval_batches or None)
  loss_fn = functools.partial(objectives.loss_fn(config.objective, train.masking(config, tokenizer)), model.apply)
  eval_fn = jax.jit(functools.partial(steps.eval_step, loss_fn=loss_fn))
  with sharding.activate(sharding.make_mesh(devices=jax.devices()[:1])):
    return evaluate(eval_fn, params, batches, tokenizer.token_bytes())


def sliding_windows(doc_T, context: int, stride: int):
  """(tokens [context + 1], scored [context + 1]) windows over one document, each target scored once.

  A window holds up to ``context`` tokens of input; after the first, it starts
  ``stride`` tokens later and scores only the targets the previous one did not,
  so every token but the first is predicted once, with at least ``context - stride``
  tokens of context (as in Hugging Face's perplexity guide).
  """
  n, scored_until, begin = len(doc_T), 1, 0
  while True:
    end = min(begin + context + 1, n)
    tokens = np.zeros(context + 1, np.int32)
    tokens[:end - begin] = doc_T[begin:end]
    scored = np.zeros(context + 1, bool)
    scored[max(scored_until, begin + 1) - begin:end - begin] = True
    yield tokens, scored, end - begin
    scored_until = end
    if end == n:
      return
    begin += stride


def text_metrics(workdir: str, paths: str, *, stride: int = 0, batch_size: int = 8,
                 text_field: str = 'text') -> dict[str, float]:
  """Next-token loss, perplexity, bits per byte and word-level perplexity of text files (or JSONL).

  Each document is ``[bos] text [eos]``, read whole (not split) and scored with
  ``sliding_windows`` of the model's ``data.seq_len`` when longer. Word-level
  perplexity is exp(total NLL / whitespace-separated words), comparable across tokenizers.
  """
  from lmjax import objectives, train  # pylint: disable=g-import-not-at-top
  from lmjax.data import sources  # pylint: disable=g-import-not-at-top
  config, model, params, tokenizer = train.load_for_inference(workdir, objective='clm')
  context = config.data.seq_len
  stride = stride or context // 2
  if not 0 < stride <= context:
    raise ValueError(f'--stride={stride} must be in [1, {context}] (the model context data.seq_len)')
  source = 'jsonl' if paths.endswith('.jsonl') else 'text'
  docs = sources.load_documents(source, paths, text_field, max_doc_chars=2**62)
  windows = [w for d in docs for w in sliding_windows(
      np.asarray([tokenizer.bos_id, *tokenizer.encode(d), tokenizer.eos_id], np.int32), context, stride)]

  @jax.jit
  def window_sums(params, tokens_BL, scored_BL, length_B):
    positions_BL = np.arange(context + 1, dtype=np.int32)[None].repeat(tokens_BL.shape[0], 0)
    segments_BL = (positions_BL < length_B[:, None]).astype(np.int32)
    batch = {'tokens': tokens_BL, 'segment_ids': segments_BL, 'positions': positions_BL}
    inputs, targets_BL, weights_BL = objectives.next_token_targets(batch)
    logits_BLV = model.apply({'params': params}, **inputs, deterministic=True)
    return objectives.cross_entropy(logits_BLV, targets_BL, weights_BL & scored_BL[:, 1:], token_bytes_V)

  token_bytes_V = jax.numpy.asarray(tokenizer.token_bytes())
  total = {}
  for i in range(0, len(windows), batch_size):
    chunk = windows[i:i + batch_size]
    chunk += [(np.zeros(context + 1, np.int32), np.zeros(context + 1, bool), 0)] * (batch_size - len(chunk))
    tokens, scored, lengths = (np.stack(x) for x in zip(*chunk))
    total = metrics_lib.accumulate(total, jax.device_get(window_sums(params, tokens, scored, lengths)))
  out = summary(total)
  words = sum(len(d.split()) for d in docs)
  out['word_perplexity'] = math.exp(min(total['loss'][0] / max(words, 1), 50.0))
  out['words'] = words
  return out


def _define_flags():
  """Only when run as a CLI: lmjax.train imports this module, and lmjax.main owns --workdir."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config, tokenizer, checkpoints).', required=True)
  flags.DEFINE_string('data', 'validation', "'validation': the run's own validation split, as training "
                      'evaluates it; or text/JSONL files (comma-separated, globs), scored with a sliding window.')
  flags.DEFINE_integer('stride', 0, 'Sliding-window stride in tokens (0: half the context).')
  flags.DEFINE_string('text_field', 'text', 'JSONL field holding the text.')
  flags.DEFINE_string('json', '', 'Also write the metrics to this JSON file.')


def main(argv):
  del argv
  args = flags.FLAGS
  with cli.bad_input_exits():
    if args.data == 'validation':
      result = validation_metrics(args.workdir)
    else:
      result = text_metrics(args.workdir, args.data, stride=args.stride, text_field=args.text_field)
  metrics_lib.report('\n'.join(f'{name:20} {value:.6g}' for name, value in result.items()), result,
                     args.json)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
