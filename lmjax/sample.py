"""Text generation from a trained workdir, with a KV cache (past the model's context: ``in_windows``).

  python -m lmjax.sample --workdir=runs/default --prompt="The for statement" [--prompt=...] \
      [--max_new_tokens=200 --temperature=0.8 --top_k=0 --top_p=0.95 --seed=0 --num_samples=4 --stop=.]
"""

from __future__ import annotations

import functools
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lmjax import cli, train
from lmjax.models.transformer import Transformer


def sample_logits(logits_BV, rng, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Next token ids [B] from float32 logits: greedy at temperature 0, else top-k / nucleus sampling."""
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k > 0:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    # Smallest set whose mass reaches top_p: keep a token if the mass before it is < top_p.
    keep_BV = (cum_BV - jax.nn.softmax(sorted_BV, axis=-1)) < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _positions(start, length, batch):
  return jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k', 'top_p'))
def generate(model: Transformer, params, prompt_BP, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0):
  """Prompt [B, P] -> new tokens [B, max_new_tokens], decoding one token per step from a KV cache."""
  batch, prompt_len = prompt_BP.shape
  total = prompt_len + max_new_tokens
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch, total), jnp.int32), decode=True)['cache']))
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)

  logits_BPV, variables = model.apply({'params': params, 'cache': cache}, prompt_BP,
                                      _positions(0, prompt_len, batch), decode=True, mutable=['cache'])
  first_B = sample(logits_BPV[:, -1], jax.random.fold_in(rng, 0))

  def step(carry, i):
    cache, token_B = carry
    logits_B1V, variables = model.apply({'params': params, 'cache': cache}, token_B[:, None],
                                        _positions(prompt_len + i - 1, 1, batch), decode=True,
                                        mutable=['cache'])
    next_B = sample(logits_B1V[:, 0], jax.random.fold_in(rng, i))
    return (variables['cache'], next_B), next_B

  _, rest_TB = jax.lax.scan(step, (variables['cache'], first_B), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first_B[:, None], rest_TB.T], axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k', 'top_p'))
def generate_uncached(model: Transformer, params, prompt_BP, rng, *, max_new_tokens: int,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Reference decoder without a cache: re-runs the full causal forward pass for every new token."""
  batch, prompt_len = prompt_BP.shape
  buf_BT = jnp.concatenate([prompt_BP, jnp.zeros((batch, max_new_tokens), jnp.int32)], axis=1)
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)

  def step(buf_BT, i):
    logits_BTV = model.apply({'params': params}, buf_BT)
    next_B = sample(logits_BTV[:, prompt_len + i - 1], jax.random.fold_in(rng, i))
    return buf_BT.at[:, prompt_len + i].set(next_B), None

  buf_BT, _ = jax.lax.scan(step, buf_BT, jnp.arange(max_new_tokens))
  return buf_BT[:, prompt_len:]


def in_windows(run, prompt_BP: np.ndarray, rng, *, max_new_tokens: int, max_len: int) -> np.ndarray:
  """[B, max_new_tokens] new tokens past the model's context, ``run(prompt_BP, rng, n)`` giving n at a time.

  As nanoGPT's sample.py crops its context to block_size, but half a window at a
  time so that the KV cache still does the work: the first window holds the
  prompt (its last ``max_len - 1`` tokens at most) and fills the context; every
  later one re-encodes the last ``max_len // 2`` tokens from position 0 and adds
  ``max_len - max_len // 2``. So every token sees between half a context and a
  full one, in the positions training used.
  """
  context_BP, new, count = prompt_BP[:, -(max_len - 1):], [], 0
  for window in itertools.count():
    n = max_len - context_BP.shape[1]  # one shape per later window: one compilation
    new.append(np.asarray(run(context_BP, jax.random.fold_in(rng, window), n)))
    count += n
    if count >= max_new_tokens:
      return np.concatenate(new, axis=1)[:, :max_new_tokens]
    context_BP = np.concatenate([context_BP, new[-1]], axis=1)[:, -(max_len // 2):]


def complete(model: Transformer, params, tokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1,
             stop: tuple[str, ...] = ()) -> tuple[list[list[str]], dict[str, float]]:
  """``num_samples`` completions of each prompt (one batch per prompt), cut at EOS or the first stop string.

  A prompt and ``max_new_tokens`` longer than the model's context are generated
  ``in_windows``. Returns (texts per prompt, {'tokens_per_sec', 'compile_sec',
  'new_tokens'}): throughput counts every generated token of every sample, timed
  after compilation.
  """
  out, new_tokens, timer, compiled = [], 0, {'run': 0.0, 'compile': 0.0}, {}

  def run(prompt_BP, rng, n: int):
    prompt_BP = jnp.asarray(prompt_BP, jnp.int32)
    if (prompt_BP.shape, n) not in compiled:
      start = time.perf_counter()
      compiled[prompt_BP.shape, n] = generate.lower(model, params, prompt_BP, rng, max_new_tokens=n,
                                                    temperature=temperature, top_k=top_k, top_p=top_p).compile()
      timer['compile'] += time.perf_counter() - start
    start = time.perf_counter()
    new_BN = np.asarray(compiled[prompt_BP.shape, n](params, prompt_BP, rng))  # np.asarray waits for the device
    timer['run'] += time.perf_counter() - start
    return new_BN

  max_len = model.config.max_len
  for n, text in enumerate(prompts):
    prompt = [tokenizer.bos_id] + tokenizer.encode(text)
    prompt_BP = np.tile(np.asarray(prompt, np.int32), (num_samples, 1))
    rng = jax.random.fold_in(jax.random.key(seed), n)
    if len(prompt) + max_new_tokens <= max_len:
      new_BT = run(prompt_BP, rng, max_new_tokens)
    else:
      new_BT = in_windows(run, prompt_BP, rng, max_new_tokens=max_new_tokens, max_len=max_len)
    new_tokens += new_BT.size
    texts, prompt_text = [], tokenizer.decode(prompt[1:])
    for row in new_BT.tolist():
      if tokenizer.eos_id in row:  # a document ends at EOS
        row = row[:row.index(tokenizer.eos_id)]
      full = tokenizer.decode(prompt[1:] + row)
      if full.startswith(prompt_text):  # stop strings apply to the new text only
        full = prompt_text + cut_at_stop(full[len(prompt_text):], stop)
      texts.append(full)
    out.append(texts)
  return out, {'tokens_per_sec': new_tokens / timer['run'], 'compile_sec': timer['compile'], 'new_tokens': new_tokens}


def cut_at_stop(text: str, stop) -> str:
  """``text`` up to (not including) the earliest of the stop strings."""
  cuts = [text.find(s) for s in stop if s and s in text]
  return text[:min(cuts)] if cuts else text


def _define_flags():
  """Only when run as a CLI, so that notebooks and tests can import this module beside lmjax.fill_mask."""
  flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints + tokenizer).', required=True)
  flags.DEFINE_multi_string('prompt', [''], 'Text to continue (repeat the flag for several prompts).')
  flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate.')
  flags.DEFINE_float('temperature', 0.8, 'Softmax temperature; 0 = greedy.')
  flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens (0 = all).')
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1 = off).')
  flags.DEFINE_integer('seed', 0, 'Sampling seed.')
  flags.DEFINE_integer('num_samples', 1, 'Independent completions of each prompt (one batch).')
  flags.DEFINE_multi_string('stop', [], 'Cut a completion at this string (repeatable).')


def main(argv):
  del argv
  args = flags.FLAGS
  with cli.bad_input_exits():
    _, model, params, tokenizer = train.load_for_inference(args.workdir, objective='clm')
    texts, stats = complete(model, params, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, num_samples=args.num_samples, stop=tuple(args.stop))
  for samples in texts:
    for text in samples:
      print(text)
      print('-' * 40)
  print(f"{stats['new_tokens']} new tokens at {stats['tokens_per_sec']:,.0f} tokens/s "
        f"(after {stats['compile_sec']:.1f} s of compilation)", file=sys.stderr)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
