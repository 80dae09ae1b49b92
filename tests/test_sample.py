"""Generation: the KV-cache decoder must match the full re-forward decoder token for token."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.models.transformer import ModelConfig, Transformer
from lmjax.sample import cut_at_stop, generate, generate_uncached, in_windows, sample_logits


def _model(positions, max_len=64, **kw):
  cfg = ModelConfig(vocab_size=61, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64, max_len=max_len,
                    positions=positions, init_std=0.2, **kw)  # large init: peaked, non-trivial distributions
  model = Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))['params'])
  return model, params


@pytest.mark.parametrize('positions', ['rope', 'learned'])
@pytest.mark.parametrize('temperature,top_k,top_p', [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 10, 0.9)])
def test_kv_cache_equals_uncached(positions, temperature, top_k, top_p):
  model, params = _model(positions)
  prompt = jnp.asarray(np.random.default_rng(0).integers(5, 61, (3, 7)), jnp.int32)
  kw = dict(max_new_tokens=20, temperature=temperature, top_k=top_k, top_p=top_p)
  cached = generate(model, params, prompt, jax.random.key(3), **kw)
  uncached = generate_uncached(model, params, prompt, jax.random.key(3), **kw)
  assert cached.shape == (3, 20)
  np.testing.assert_array_equal(cached, uncached)
  if temperature:  # the samples are not all one token: the comparison has teeth
    assert len(np.unique(np.asarray(cached))) > 3


def test_kv_cache_with_scanned_layers():
  """The cache is stacked along the layer axis under nn.scan; decoding is unchanged."""
  model, params = _model('rope', scan_layers=True, remat='full')
  prompt = jnp.asarray(np.random.default_rng(0).integers(5, 61, (2, 5)), jnp.int32)
  kw = dict(max_new_tokens=12, temperature=1.0)
  np.testing.assert_array_equal(generate(model, params, prompt, jax.random.key(3), **kw),
                                generate_uncached(model, params, prompt, jax.random.key(3), **kw))


def test_top_k_and_top_p_restrict_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.key(0), 1)[0]
  top2 = np.asarray(sample_logits(logits, keys, temperature=1.0, top_k=2))
  assert set(np.unique(top2)) == {0, 1}
  nucleus = np.asarray(sample_logits(logits, keys, temperature=1.0, top_p=0.9))
  assert set(np.unique(nucleus)) == {0, 1, 2}  # 0.5 + 0.3 < 0.9 <= 0.5 + 0.3 + 0.15
  assert (np.asarray(sample_logits(logits, keys, temperature=0.0)) == 0).all()
  full = np.asarray(sample_logits(logits, keys, temperature=1.0))
  np.testing.assert_allclose(np.bincount(full, minlength=4) / len(full), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_stop_strings_cut_at_the_earliest():
  assert cut_at_stop('abc. def\n\nghi', ('\n\n', '.')) == 'abc'
  assert cut_at_stop('abc def', ('.', '')) == 'abc def'


def test_generation_past_the_context_slides_half_a_window_at_a_time():
  """in_windows: 50 new tokens from a 16-token context. Window 0 continues the prompt to the full context; each
  later one continues the last 8 tokens, re-encoded from position 0 (learned positions: nothing past 16)."""
  model, params = _model('learned', max_len=16)
  prompt = np.random.default_rng(0).integers(5, 61, (2, 5)).astype(np.int32)
  calls = []

  def run(context_BP, rng, n):
    calls.append((context_BP.shape, n))
    return generate(model, params, jnp.asarray(context_BP), rng, max_new_tokens=n, temperature=1.0)

  new = in_windows(run, prompt, jax.random.key(0), max_new_tokens=50, max_len=16)
  assert new.shape == (2, 50)
  assert calls == [((2, 5), 11)] + [((2, 8), 8)] * 5  # 11 + 5 * 8 >= 50; one shape after the first
  tokens = np.concatenate([prompt, new], axis=1)
  for w in range(1, 6):  # each window is generate() on the 8 tokens before it, with its own key
    start = 5 + 11 + 8 * (w - 1)
    want = generate(model, params, jnp.asarray(tokens[:, start - 8:start]), jax.random.fold_in(jax.random.key(0), w),
                    max_new_tokens=8, temperature=1.0)
    got = tokens[:, start:start + 8]  # the last window is cut at 50 new tokens
    np.testing.assert_array_equal(got, np.asarray(want)[:, :got.shape[1]])
  # a prompt longer than the context keeps its last max_len - 1 tokens
  calls.clear()
  in_windows(run, np.zeros((1, 40), np.int32), jax.random.key(0), max_new_tokens=3, max_len=16)
  assert calls == [((1, 15), 1), ((1, 8), 8)]
