"""GPT-2 and BERT weights and tokenizers in and out of lmjax, checked against Hugging Face transformers
(PyTorch, CPU, offline); the python -m lmjax.convert CLI."""

import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch  # the [test] extra installs the CPU build
import transformers
from safetensors.numpy import load_file, save_file
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmjax import convert, fill_mask, sample, train
from lmjax.data import tokenizer as tokenizer_lib
from lmjax.models import hf as hf_lib
from lmjax.models.transformer import ModelConfig, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  cfg, params = hf_lib.import_gpt2(str(tmp_path / 'hf'))
  tokens = _tokens()
  ours = np.asarray(Transformer(cfg).apply({'params': params}, jnp.asarray(tokens), deterministic=True))
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_gpt2_export_reloads_in_transformers_with_the_same_logits(tmp_path):
  _hf_gpt2(tmp_path)
  cfg, params = hf_lib.import_gpt2(str(tmp_path / 'hf'))
  params['block_1']['mlp']['wi']['bias'] = params['block_1']['mlp']['wi']['bias'] + 0.5  # not just a copy back
  hf_lib.export_gpt2(cfg, params, str(tmp_path / 'out'))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'out').eval()
  tokens = _tokens()
  ours = np.asarray(Transformer(cfg).apply({'params': params}, jnp.asarray(tokens), deterministic=True))
  with torch.no_grad():
    theirs = reloaded(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_missing_files_are_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='config.json not found'):
    hf_lib.import_gpt2(str(tmp_path))


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
  jax.tree.map(np.testing.assert_array_equal, got, hf_lib.import_gpt2(str(tmp_path / 'gpt2'))[1])

  train.train_and_evaluate(tiny_config(corpus, **gpt2_shape, **{'train.init_from': str(tmp_path / 'from_gpt2')}),
                           str(tmp_path / 'from_lmjax'))
  jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path / 'from_lmjax'), got)

  with pytest.raises(ValueError, match=r'parameter block_0/mlp/wi/bias is float32\[64\] in '
                                       r'train.init_from=.* but float32\[128\] in this config'):
    train.train_and_evaluate(tiny_config(corpus, **gpt2_shape, **{'model.mlp_dim': 128,
                                                                  'train.init_from': str(tmp_path / 'gpt2')}),
                             str(tmp_path / 'bad'))


# --- BERT -------------------------------------------------------------------------------------------------------


def _hf_bert(directory, vocab_size=100, cls=transformers.BertForMaskedLM, **kw):
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=40, type_vocab_size=2,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
  model = cls(config).eval()
  with torch.no_grad():  # biases and norms start at 0/1: randomise them so a mix-up cannot hide
    for name, p in model.named_parameters():
      if 'bias' in name or 'LayerNorm' in name:
        p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(directory)
  return model


def _bert_inputs(vocab_size=100):
  rng = np.random.default_rng(1)
  return rng.integers(0, vocab_size, (2, 17)), rng.integers(0, 2, (2, 17))  # token ids, token types (both used)


def _lmjax_logits(cfg, params, tokens, types=None):
  return np.asarray(Transformer(cfg).apply({'params': params}, jnp.asarray(tokens), deterministic=True,
                                           type_ids_BL=None if types is None else jnp.asarray(types)))


def _bert_logits(model, tokens, types):
  with torch.no_grad():  # no padding: all-ones attention mask, as lmjax's all-ones segment ids
    out = model(torch.tensor(tokens), token_type_ids=torch.tensor(types), attention_mask=torch.ones(tokens.shape))
  return (out.logits if hasattr(out, 'logits') else out.prediction_logits).numpy()


@pytest.mark.parametrize('hidden_act', ['gelu', 'gelu_new'])
def test_bert_import_matches_transformers_logits(tmp_path, hidden_act):
  hf = _hf_bert(tmp_path / 'hf', hidden_act=hidden_act)
  cfg, params = hf_lib.import_hf(str(tmp_path / 'hf'))
  assert (cfg.norm_position, cfg.embed_norm, cfg.causal, cfg.mlm_head) == ('post', True, False, True)
  assert cfg.activation == {'gelu': 'gelu_exact', 'gelu_new': 'gelu'}[hidden_act]
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  tokens, types = _bert_inputs()
  np.testing.assert_allclose(_lmjax_logits(cfg, params, tokens, types), _bert_logits(hf, tokens, types),
                             atol=1e-4, rtol=0)


def test_bert_export_reloads_in_transformers_with_the_same_logits(tmp_path):
  _hf_bert(tmp_path / 'hf')
  cfg, params = hf_lib.import_bert(str(tmp_path / 'hf'))
  params['block_1']['mlp']['wi']['bias'] = params['block_1']['mlp']['wi']['bias'] + 0.5  # not just a copy back
  params['type_embed'] = params['type_embed'][::-1].copy()
  assert hf_lib.export_hf(cfg, params, str(tmp_path / 'out')) == 'bert'
  reloaded, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / 'out', output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
  tokens, types = _bert_inputs()
  np.testing.assert_allclose(_lmjax_logits(cfg, params, tokens, types), _bert_logits(reloaded.eval(), tokens, types),
                             atol=1e-4, rtol=0)
  # A scan_layers model stacks the blocks along a leading layer axis: it exports to the same file.
  scanned = {k: v for k, v in params.items() if not k.startswith('block_')}
  scanned['blocks'] = jax.tree.map(lambda *xs: np.stack(xs), *[params[f'block_{i}'] for i in range(cfg.num_layers)])
  hf_lib.export_hf(dataclasses.replace(cfg, scan_layers=True), scanned, str(tmp_path / 'scanned'))
  jax.tree.map(np.testing.assert_array_equal, load_file(tmp_path / 'scanned' / hf_lib.WEIGHTS),
               load_file(tmp_path / 'out' / hf_lib.WEIGHTS))


def test_bert_pretraining_checkpoint_imports_without_its_pooler(tmp_path):
  """BertForPreTraining: the pooler and next-sentence head are ignored; old gamma/beta names are read;
  a bare BertModel (no masked-LM head) is a clear error."""
  hf = _hf_bert(tmp_path / 'pt', cls=transformers.BertForPreTraining)
  weights = load_file(tmp_path / 'pt' / hf_lib.WEIGHTS)
  assert any('pooler' in k for k in weights)
  cfg, params = hf_lib.import_hf(str(tmp_path / 'pt'))
  tokens, types = _bert_inputs()
  np.testing.assert_allclose(_lmjax_logits(cfg, params, tokens, types), _bert_logits(hf, tokens, types),
                             atol=1e-4, rtol=0)
  old = {k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'): v
         for k, v in weights.items()}
  save_file(old, tmp_path / 'pt' / hf_lib.WEIGHTS)
  jax.tree.map(np.testing.assert_array_equal, hf_lib.import_hf(str(tmp_path / 'pt'))[1], params)

  _hf_bert(tmp_path / 'base', cls=transformers.BertModel)
  with pytest.raises(ValueError, match='no masked-LM head'):
    hf_lib.import_hf(str(tmp_path / 'base'))
  _hf_bert(tmp_path / 'relu', hidden_act='relu')
  with pytest.raises(ValueError, match="BERT hidden_act='relu' has no lmjax equivalent"):
    hf_lib.import_hf(str(tmp_path / 'relu'))


def test_export_needs_a_gpt2_or_bert_shaped_model():
  bert = hf_lib.bert_model_config({'vocab_size': 10, 'hidden_size': 8, 'num_hidden_layers': 1,
                                    'num_attention_heads': 2})
  assert hf_lib.hf_family(bert) == 'bert'
  assert hf_lib.hf_family(hf_lib.gpt2_model_config({'vocab_size': 10, 'n_positions': 8, 'n_embd': 8,
                                                      'n_layer': 1, 'n_head': 2})) == 'gpt2'
  pre_norm = ModelConfig(**{**bert.__dict__, 'norm_position': 'pre', 'embed_norm': False})  # configs/bert.py:base
  with pytest.raises(ValueError, match=r"^this model matches neither GPT-2 nor BERT: an encoder exports as BERT, "
                                       r"but it has norm_position='pre' \(needs 'post'\), embed_norm=False"):
    hf_lib.hf_family(pre_norm)
  with pytest.raises(ValueError, match=r"positions='rope' \(needs 'learned'\)"):
    hf_lib.export_gpt2(ModelConfig(vocab_size=10), {}, '/nonexistent')


# --- tokenizers -------------------------------------------------------------------------------------------------

_TEXT = ['the cat sat on the mat', 'a dog ran in the park', 'the quick brown fox jumps over the lazy dog'] * 5


def _wordpiece(path, specials=('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')):
  """A BERT-style WordPiece tokenizer.json, trained here on a few lines."""
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  tok.train_from_iterator(_TEXT, trainers.WordPieceTrainer(vocab_size=80, special_tokens=list(specials)))
  if '[CLS]' in specials:
    tok.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', special_tokens=[(s, tok.token_to_id(s)) for s in ('[CLS]', '[SEP]')])
  tok.save(str(path))
  return tok.get_vocab_size()


def _byte_level_bpe(path):
  """A GPT-2-style byte-level BPE tokenizer.json with <|endoftext|>."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(_TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=['<|endoftext|>'],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path))


def test_tokenizer_json_encodes_like_transformers(tmp_path):
  _wordpiece(tmp_path / 'wp.json')
  _byte_level_bpe(tmp_path / 'bpe.json')
  wordpiece, bpe = tokenizer_lib.load(str(tmp_path / 'wp.json')), tokenizer_lib.load(str(tmp_path / 'bpe.json'))
  hf_wordpiece = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'wp.json'))
  hf_bpe = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'bpe.json'))

  text = 'the lazy cat jumps over the quick dog'
  ids = wordpiece.encode(text)
  assert any(wordpiece.id_to_piece(i).startswith('##') for i in ids)  # words split into pieces
  assert ids == hf_wordpiece(text, add_special_tokens=False)['input_ids']
  assert [wordpiece.bos_id, *ids, wordpiece.eos_id] == hf_wordpiece(text)['input_ids']  # CLS / SEP roles
  assert wordpiece.decode(ids) == text
  assert (wordpiece.pad_id, wordpiece.mask_id) == (hf_wordpiece.convert_tokens_to_ids('[PAD]'),
                                                   hf_wordpiece.convert_tokens_to_ids('[MASK]'))
  assert set(wordpiece.special_ids) == {hf_wordpiece.convert_tokens_to_ids(t) for t in
                                        ('[PAD]', '[CLS]', '[SEP]', '[MASK]')}
  starts = wordpiece.word_starts()
  assert [bool(starts[i]) for i in ids] == [not wordpiece.id_to_piece(i).startswith('##') for i in ids]
  assert int(wordpiece.token_bytes()[ids].sum()) == len(' ' + text)  # each word counts the space before it

  text = 'héllo wörld, the cat ✓\nnew line'
  ids = bpe.encode(text)
  assert ids == hf_bpe(text)['input_ids']
  assert bpe.decode(ids) == text  # byte-level BPE is lossless
  assert int(bpe.token_bytes()[ids].sum()) == len(text.encode('utf-8'))  # exact for byte-level pieces
  assert bpe.bos_id == bpe.eos_id == hf_bpe.convert_tokens_to_ids('<|endoftext|>')
  with pytest.raises(ValueError, match=r'bpe.json has no mask token \(one of \[MASK\], <mask>\)'):
    bpe.mask_id  # pylint: disable=pointless-statement

  _wordpiece(tmp_path / 'bare.json', specials=('[UNK]',))
  with pytest.raises(ValueError, match=r'bare.json has no bos token'):
    tokenizer_lib.load(str(tmp_path / 'bare.json'))
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match='is not a Hugging Face tokenizer.json'):
    tokenizer_lib.load(str(tmp_path / 'bad.json'))


# --- python -m lmjax.convert ------------------------------------------------------------------------------------


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'lmjax.convert', *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, timeout=120, check=False)


def _spm_tokenizer(path) -> int:
  """An lmjax (sentencepiece) tokenizer, trained here: what an exported lmjax model carries."""
  import pydoc_data.topics as topics  # pylint: disable=g-import-not-at-top
  docs = [topics.topics[n] for n in sorted(topics.topics)[:20]]
  return tokenizer_lib.train_tokenizer(docs, str(path), 400).vocab_size


def test_cli_round_trip_gpt2_with_a_sentencepiece_tokenizer(tmp_path):
  """HF dir -> workdir (greedy samples as transformers') -> HF dir with the same logits and tokenizer."""
  (tmp_path / 'hf').mkdir()
  vocab = _spm_tokenizer(tmp_path / 'hf' / 'tokenizer.model')
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2,
                                                            n_head=2)).eval()
  hf.save_pretrained(tmp_path / 'hf')
  result = _cli(f'--from_hf={tmp_path / "hf"}', f'--workdir={tmp_path / "run"}')
  assert result.returncode == 0, result.stderr
  assert 'GPT-2' in result.stdout

  _, model, params, tokenizer = train.load_for_inference(str(tmp_path / 'run'), objective='clm')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params),
               hf_lib.import_gpt2(str(tmp_path / 'hf'))[1])
  prompt = [tokenizer.bos_id] + tokenizer.encode('The for statement')
  ours = np.asarray(sample.generate(model, params, jnp.asarray([prompt]), jax.random.key(0), max_new_tokens=6,
                                    temperature=0.0))
  with torch.no_grad():
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)[:, len(prompt):]
  np.testing.assert_array_equal(ours, theirs.numpy())

  result = _cli(f'--workdir={tmp_path / "run"}', f'--to_hf={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr
  tokens = _tokens() % vocab
  with torch.no_grad():
    want = hf(torch.tensor(tokens)).logits.numpy()
    got = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'out').eval()(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  assert (tmp_path / 'out' / 'tokenizer.model').read_bytes() == (tmp_path / 'hf' / 'tokenizer.model').read_bytes()


def test_cli_round_trip_bert_with_a_tokenizer_json(tmp_path):
  """HF dir -> workdir (fill-mask as transformers'; init_from reads both) -> HF dir with the same logits."""
  (tmp_path / 'hf').mkdir()
  vocab = _wordpiece(tmp_path / 'hf' / 'tokenizer.json')
  hf = _hf_bert(tmp_path / 'hf', vocab_size=vocab)
  result = _cli(f'--from_hf={tmp_path / "hf"}', f'--workdir={tmp_path / "run"}')
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path / 'run')) == ['checkpoints', 'config.json', 'tokenizer.json']

  _, model, params, tokenizer = train.load_for_inference(str(tmp_path / 'run'), objective='mlm')
  text = 'the quick brown [MASK] jumps over the lazy dog'
  candidates = fill_mask.fill_mask(model, params, tokenizer, text, top_k=3)[0]
  ids = fill_mask.encode_with_masks(tokenizer, text, '[MASK]')
  logits = _bert_logits(hf, np.asarray([ids]), np.zeros((1, len(ids)), int))[0, ids.index(tokenizer.mask_id)]
  assert [piece for piece, _ in candidates] == [tokenizer.id_to_piece(i) for i in np.argsort(-logits)[:3]]

  # --config.train.init_from takes the Hugging Face directory or the converted workdir alike.
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))
  for source in ('hf', 'run'):
    initial = train._initial_params(str(tmp_path / source), shapes['params'])  # pylint: disable=protected-access
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, initial), jax.tree.map(np.asarray, params))

  result = _cli(f'--workdir={tmp_path / "run"}', f'--to_hf={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr
  tokens, types = _bert_inputs(vocab)
  reloaded = transformers.BertForMaskedLM.from_pretrained(tmp_path / 'out').eval()
  np.testing.assert_allclose(_bert_logits(reloaded, tokens, types), _bert_logits(hf, tokens, types), atol=1e-5, rtol=0)
  assert (tmp_path / 'out' / 'tokenizer.json').read_bytes() == (tmp_path / 'hf' / 'tokenizer.json').read_bytes()


def test_cli_errors_are_one_line_and_write_nothing(tmp_path):
  (tmp_path / 'tok').mkdir()
  vocab = _wordpiece(tmp_path / 'tok' / 'tokenizer.json')
  # A pre-norm RoPE encoder (configs/bert.py:tiny's block) is neither GPT-2 nor BERT.
  cfg = ModelConfig(vocab_size=vocab, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32, max_len=16, causal=False,
                    mlm_head=True)
  shapes = nn.meta.unbox(jax.eval_shape(Transformer(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes['params'])
  convert.write_workdir(cfg, params, str(tmp_path / 'tok' / 'tokenizer.json'), str(tmp_path / 'modern'))
  result = _cli(f'--workdir={tmp_path / "modern"}', f'--to_hf={tmp_path / "out"}')
  assert result.returncode == 2
  assert result.stderr.startswith('error: this model matches neither GPT-2 nor BERT: an encoder exports as BERT, '
                                  "but it has positions='rope' (needs 'learned')"), result.stderr
  assert "norm_position='pre' (needs 'post'), embed_norm=False (needs True)" in result.stderr
  assert result.stderr.count('\n') == 1 and not (tmp_path / 'out').exists()
  assert not [p for p in os.listdir(tmp_path) if '.tmp' in p]

  with pytest.raises(ValueError, match='config.json not found'):
    convert.to_workdir(str(tmp_path / 'missing'), str(tmp_path / 'new'))
  _hf_bert(tmp_path / 'hf')  # vocabulary 100, and no tokenizer yet
  with pytest.raises(ValueError, match=r'has no tokenizer \(tokenizer.json or a sentencepiece .model\)'):
    convert.to_workdir(str(tmp_path / 'hf'), str(tmp_path / 'new'))
  (tmp_path / 'hf' / 'tokenizer.json').write_bytes((tmp_path / 'tok' / 'tokenizer.json').read_bytes())
  with pytest.raises(ValueError, match=f'tokenizer.json has {vocab} tokens but the model has 100'):
    convert.to_workdir(str(tmp_path / 'hf'), str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()
  before = sorted(os.listdir(tmp_path / 'modern'))
  with pytest.raises(ValueError, match='--workdir=.*modern exists and is not an empty directory'):
    convert.to_workdir(str(tmp_path / 'hf'), str(tmp_path / 'modern'))
  assert sorted(os.listdir(tmp_path / 'modern')) == before
