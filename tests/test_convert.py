"""GPT-2 weights in and out of lmjax, checked against Hugging Face transformers (PyTorch, CPU, offline)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the [test] extra installs the CPU build
import transformers

from lmjax import convert
from lmjax.models.transformer import Transformer


def _hf_gpt2(tmp_path, **kw):
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=101, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # biases and norms start at 0/1: randomise them so a mix-up cannot hide
    for name, p in model.named_parameters():
      if 'bias' in name or 'ln' in name:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(tmp_path / 'hf')
  return model


def _tokens():
  return np.random.default_rng(0).integers(0, 101, (2, 17))


@pytest.mark.parametrize('activation', ['gelu_new', 'gelu'])
def test_gpt2_import_matches_transformers_logits(tmp_path, activation):
  hf = _hf_gpt2(tmp_path, activation_function=activation)
  cfg, params = convert.import_gpt2(str(tmp_path / 'hf'))
  tokens = _tokens()
  ours = np.asarray(Transformer(cfg).apply({'params': params}, jnp.asarray(tokens), deterministic=True))
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_gpt2_export_reloads_in_transformers_with_the_same_logits(tmp_path):
  _hf_gpt2(tmp_path)
  cfg, params = convert.import_gpt2(str(tmp_path / 'hf'))
  params['block_1']['mlp']['wi']['bias'] = params['block_1']['mlp']['wi']['bias'] + 0.5  # not just a copy back
  convert.export_gpt2(cfg, params, str(tmp_path / 'out'))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'out').eval()
  tokens = _tokens()
  ours = np.asarray(Transformer(cfg).apply({'params': params}, jnp.asarray(tokens), deterministic=True))
  with torch.no_grad():
    theirs = reloaded(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_missing_files_are_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='config.json not found'):
    convert.import_gpt2(str(tmp_path))


def test_training_starts_from_gpt2_or_lmjax_weights(tmp_path):
  """train.init_from: with a zero learning rate the run's parameters are exactly the ones loaded."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config, write_pydoc_corpus  # pylint: disable=g-import-not-at-top
  from lmjax import train  # pylint: disable=g-import-not-at-top
  corpus = write_pydoc_corpus(tmp_path, parts=1, chars=30_000)
  torch.manual_seed(0)
  hf = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=1, n_head=2, n_inner=64)
  transformers.GPT2LMHeadModel(hf).save_pretrained(tmp_path / 'gpt2')
  gpt2_shape = {'model.positions': 'learned', 'model.norm': 'layernorm', 'model.norm_eps': 1e-5,
                'model.use_bias': True, 'model.max_len': 64, 'train.max_steps': 1, 'train.eval_every': 1,
                'optim.learning_rate': 0.0}

  def params_of(workdir):
    return jax.tree.map(np.asarray, train.load_for_inference(str(workdir))[2])

  train.train_and_evaluate(tiny_config(corpus, **gpt2_shape, **{'train.init_from': str(tmp_path / 'gpt2')}),
                           str(tmp_path / 'from_gpt2'))
  got = params_of(tmp_path / 'from_gpt2')
  jax.tree.map(np.testing.assert_array_equal, got, convert.import_gpt2(str(tmp_path / 'gpt2'))[1])

  train.train_and_evaluate(tiny_config(corpus, **gpt2_shape, **{'train.init_from': str(tmp_path / 'from_gpt2')}),
                           str(tmp_path / 'from_lmjax'))
  jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path / 'from_lmjax'), got)

  with pytest.raises(ValueError, match=r'parameter block_0/mlp/wi/bias is float32\[64\] in '
                                       r'train.init_from=.* but float32\[128\] in this config'):
    train.train_and_evaluate(tiny_config(corpus, **gpt2_shape, **{'model.mlp_dim': 128,
                                                                  'train.init_from': str(tmp_path / 'gpt2')}),
                             str(tmp_path / 'bad'))
