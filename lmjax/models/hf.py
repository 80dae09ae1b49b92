"""Hugging Face GPT-2 and BERT checkpoints <-> lmjax parameters, offline (the weights, not the workdir).

A Hugging Face model directory is ``config.json`` + ``model.safetensors`` (what
``save_pretrained`` writes). Neither family needs model code of its own: GPT-2
is the lmjax decoder with learned positions, LayerNorm with biases, tanh GELU,
biases everywhere and tied embeddings; BERT is the encoder with the same options
plus post-norm blocks, an embedding LayerNorm, token types, exact GELU and the
masked-LM head; all ``ModelConfig`` fields. ``lmjax.convert`` turns these into
workdirs and back.

Layout notes: GPT-2's ``Conv1D`` weights are stored (in, out), the same
orientation as flax kernels; ``c_attn`` packs q, k and v along ``out``. BERT's
``nn.Linear`` weights are (out, in): transposed.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lmjax.models.transformer import ModelConfig

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'


def import_hf(hf_dir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a GPT-2 or BERT ``save_pretrained`` directory, by its ``model_type``."""
  model_type = _read_config(hf_dir).get('model_type')
  importers = {'gpt2': import_gpt2, 'bert': import_bert}
  if model_type not in importers:
    raise ValueError(f'{hf_dir}/{CONFIG} has model_type={model_type!r}; lmjax imports gpt2 and bert')
  try:
    return importers[model_type](hf_dir)
  except KeyError as e:  # a config key or tensor that this family always has
    raise ValueError(f'{hf_dir} is not a complete {model_type} checkpoint: no {e.args[0]!r} in its '
                     f'{CONFIG} or {WEIGHTS}') from e


def export_hf(cfg: ModelConfig, params, out_dir: str) -> str:
  """Writes ``cfg``/``params`` as GPT-2 or BERT (``hf_family``); returns which."""
  family = hf_family(cfg)
  (export_gpt2 if family == 'gpt2' else export_bert)(cfg, params, out_dir)
  return family


# What each family fixes in ModelConfig (beyond sizes); causal and mlm_head follow the objective.
_SHAPES = {
    'gpt2': dict(causal=True, mlm_head=False, norm_position='pre', embed_norm=False, type_vocab_size=0),
    'bert': dict(causal=False, mlm_head=True, norm_position='post', embed_norm=True),
}
_COMMON = dict(positions='learned', norm='layernorm', norm_bias=True, use_bias=True, tie_embeddings=True)


def shape_mismatches(cfg: ModelConfig, family: str) -> list[str]:
  """The ModelConfig fields that keep ``cfg`` from being a ``family`` ('gpt2' | 'bert') model."""
  out = [f'{k}={getattr(cfg, k)!r} (needs {v!r})' for k, v in {**_COMMON, **_SHAPES[family]}.items()
         if getattr(cfg, k) != v]
  if cfg.activation not in ('gelu', 'gelu_exact'):
    out.append(f"activation={cfg.activation!r} (needs 'gelu' or 'gelu_exact')")
  if family == 'bert' and cfg.type_vocab_size < 1:
    out.append('type_vocab_size=0 (needs >= 1)')
  return out


def hf_family(cfg: ModelConfig) -> str:
  """'gpt2' (a causal model) or 'bert' (an encoder) if ``cfg`` has that family's shape; else ValueError."""
  family = 'gpt2' if cfg.causal else 'bert'
  missing = shape_mismatches(cfg, family)
  if missing:
    kind = 'a causal model exports as GPT-2' if cfg.causal else 'an encoder exports as BERT'
    raise ValueError(f'this model matches neither GPT-2 nor BERT: {kind}, but it has {", ".join(missing)}; '
                     'train with those --config.model.* values to export')
  return family


def gpt2_model_config(hf: dict) -> ModelConfig:
  """The lmjax ModelConfig that computes what a Hugging Face GPT2Config describes."""
  activation = hf.get('activation_function', 'gelu_new')
  if activation not in ('gelu_new', 'gelu_pytorch_tanh', 'gelu'):
    raise ValueError(f'GPT-2 activation_function={activation!r} has no lmjax equivalent')
  d = hf['n_embd']
  return ModelConfig(vocab_size=hf['vocab_size'], max_len=hf['n_positions'], num_layers=hf['n_layer'],
                     embed_dim=d, num_heads=hf['n_head'], mlp_dim=hf.get('n_inner') or 4 * d, causal=True,
                     positions='learned', norm='layernorm', norm_eps=hf.get('layer_norm_epsilon', 1e-5),
                     activation='gelu_exact' if activation == 'gelu' else 'gelu', use_bias=True,
                     tie_embeddings=True)


def import_gpt2(hf_dir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a GPT-2 ``save_pretrained`` directory."""
  hf, weights = _read(hf_dir)
  if hf.get('model_type') != 'gpt2':
    raise ValueError(f'{hf_dir}/{CONFIG} has model_type={hf.get("model_type")!r}, not gpt2')
  cfg = gpt2_model_config(hf)
  w = {k.removeprefix('transformer.'): v for k, v in weights.items()}
  H, K = cfg.num_heads, cfg.head_dim
  params = {'token_embed': w['wte.weight'], 'pos_embed': w['wpe.weight'],
            'final_norm': _norm(w, 'ln_f')}
  for i in range(cfg.num_layers):
    p = f'h.{i}.'
    q, k, v = np.split(w[p + 'attn.c_attn.weight'], 3, axis=1)
    qb, kb, vb = np.split(w[p + 'attn.c_attn.bias'], 3)
    params[f'block_{i}'] = {
        'attn_norm': _norm(w, p + 'ln_1'), 'mlp_norm': _norm(w, p + 'ln_2'),
        'attn': {name: {'kernel': x.reshape(-1, H, K), 'bias': b.reshape(H, K)}
                 for name, x, b in (('query', q, qb), ('key', k, kb), ('value', v, vb))}
                | {'out': {'kernel': w[p + 'attn.c_proj.weight'].reshape(H, K, -1), 'bias': w[p + 'attn.c_proj.bias']}},
        'mlp': {'wi': {'kernel': w[p + 'mlp.c_fc.weight'], 'bias': w[p + 'mlp.c_fc.bias']},
                'wo': {'kernel': w[p + 'mlp.c_proj.weight'], 'bias': w[p + 'mlp.c_proj.bias']}}}
  return cfg, _as_f32(params)


def export_gpt2(cfg: ModelConfig, params, out_dir: str):
  """Writes a directory that ``transformers.GPT2LMHeadModel.from_pretrained`` loads."""
  p = _exportable(cfg, params, 'gpt2')
  w = {'wte.weight': p['token_embed'], 'wpe.weight': p['pos_embed'],
       'ln_f.weight': p['final_norm/layernorm/scale'], 'ln_f.bias': p['final_norm/layernorm/bias']}
  D = cfg.embed_dim
  for i in range(cfg.num_layers):
    b, h = f'block_{i}/', f'h.{i}.'
    w[h + 'ln_1.weight'], w[h + 'ln_1.bias'] = p[b + 'attn_norm/layernorm/scale'], p[b + 'attn_norm/layernorm/bias']
    w[h + 'ln_2.weight'], w[h + 'ln_2.bias'] = p[b + 'mlp_norm/layernorm/scale'], p[b + 'mlp_norm/layernorm/bias']
    qkv = ('query', 'key', 'value')
    w[h + 'attn.c_attn.weight'] = np.concatenate([p[f'{b}attn/{n}/kernel'].reshape(D, D) for n in qkv], axis=1)
    w[h + 'attn.c_attn.bias'] = np.concatenate([p[f'{b}attn/{n}/bias'].reshape(D) for n in qkv])
    w[h + 'attn.c_proj.weight'] = p[b + 'attn/out/kernel'].reshape(D, D)
    w[h + 'attn.c_proj.bias'] = p[b + 'attn/out/bias']
    for hf_name, name in (('c_fc', 'wi'), ('c_proj', 'wo')):
      w[f'{h}mlp.{hf_name}.weight'], w[f'{h}mlp.{hf_name}.bias'] = p[f'{b}mlp/{name}/kernel'], p[f'{b}mlp/{name}/bias']
  hf = {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': cfg.vocab_size,
        'n_positions': cfg.max_len, 'n_embd': D, 'n_layer': cfg.num_layers, 'n_head': cfg.num_heads,
        'n_inner': cfg.mlp_dim, 'layer_norm_epsilon': cfg.norm_eps, 'tie_word_embeddings': True,
        'activation_function': 'gelu_new' if cfg.activation == 'gelu' else 'gelu',
        'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0}
  _write(out_dir, hf, {f'transformer.{k}': v for k, v in w.items()})


def bert_model_config(hf: dict) -> ModelConfig:
  """The lmjax ModelConfig that computes what a Hugging Face BertConfig describes (as BertForMaskedLM)."""
  activation = hf.get('hidden_act', 'gelu')
  activations = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu'}
  if activation not in activations:
    raise ValueError(f"BERT hidden_act={activation!r} has no lmjax equivalent; lmjax has 'gelu' (exact) and "
                     "'gelu_new' (tanh)")
  if hf.get('position_embedding_type', 'absolute') != 'absolute' or hf.get('is_decoder'):
    raise ValueError('lmjax imports BERT encoders with absolute positions; this one has position_embedding_type='
                     f"{hf.get('position_embedding_type')!r}, is_decoder={hf.get('is_decoder')!r}")
  if not hf.get('tie_word_embeddings', True):
    raise ValueError('this BERT has untied output embeddings (tie_word_embeddings=false); lmjax imports tied ones')
  d = hf['hidden_size']
  return ModelConfig(vocab_size=hf['vocab_size'], max_len=hf.get('max_position_embeddings', 512),
                     num_layers=hf['num_hidden_layers'], embed_dim=d, num_heads=hf['num_attention_heads'],
                     mlp_dim=hf.get('intermediate_size', 4 * d), causal=False, mlm_head=True,
                     type_vocab_size=hf.get('type_vocab_size', 2), positions='learned', norm='layernorm',
                     norm_eps=hf.get('layer_norm_eps', 1e-12), norm_position='post', embed_norm=True,
                     activation=activations[activation], use_bias=True, tie_embeddings=True)


def import_bert(hf_dir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a BertForMaskedLM ``save_pretrained`` directory.

  A BertForPreTraining directory imports too: its pooler (``bert.pooler.dense``)
  and next-sentence head (``cls.seq_relationship``) are not part of the masked
  LM and are ignored. A bare BertModel has no masked-LM head: an error.
  """
  hf, weights = _read(hf_dir)
  if hf.get('model_type') != 'bert':
    raise ValueError(f'{hf_dir}/{CONFIG} has model_type={hf.get("model_type")!r}, not bert')
  cfg = bert_model_config(hf)
  w = {_bert_key(k): v for k, v in weights.items()}
  if 'cls.predictions.bias' not in w:
    raise ValueError(f'{hf_dir} has no masked-LM head (cls.predictions.*): lmjax imports BertForMaskedLM or '
                     'BertForPreTraining checkpoints, not a bare BertModel')
  H, K = cfg.num_heads, cfg.head_dim
  params = {'token_embed': w['embeddings.word_embeddings.weight'],
            'pos_embed': w['embeddings.position_embeddings.weight'],
            'type_embed': w['embeddings.token_type_embeddings.weight'],
            'embed_norm': _norm(w, 'embeddings.LayerNorm'),
            'mlm_head': {'dense': _dense(w, 'cls.predictions.transform.dense'),
                         'norm': _norm(w, 'cls.predictions.transform.LayerNorm')},
            'output_bias': w['cls.predictions.bias']}
  for i in range(cfg.num_layers):
    p = f'encoder.layer.{i}.'
    attn = {n: {'kernel': w[f'{p}attention.self.{n}.weight'].T.reshape(-1, H, K),
                'bias': w[f'{p}attention.self.{n}.bias'].reshape(H, K)} for n in ('query', 'key', 'value')}
    attn['out'] = {'kernel': w[p + 'attention.output.dense.weight'].T.reshape(H, K, -1),
                   'bias': w[p + 'attention.output.dense.bias']}
    # Post-norm: attn_norm follows the attention residual, mlp_norm the MLP's.
    params[f'block_{i}'] = {'attn': attn, 'attn_norm': _norm(w, p + 'attention.output.LayerNorm'),
                            'mlp': {'wi': _dense(w, p + 'intermediate.dense'), 'wo': _dense(w, p + 'output.dense')},
                            'mlp_norm': _norm(w, p + 'output.LayerNorm')}
  return cfg, _as_f32(params)


def export_bert(cfg: ModelConfig, params, out_dir: str):
  """Writes a directory that ``transformers.BertForMaskedLM.from_pretrained`` loads (no pooler)."""
  p = _exportable(cfg, params, 'bert')
  D = cfg.embed_dim
  w = {'bert.embeddings.word_embeddings.weight': p['token_embed'],
       'bert.embeddings.position_embeddings.weight': p['pos_embed'],
       'bert.embeddings.token_type_embeddings.weight': p['type_embed'],
       'cls.predictions.bias': p['output_bias']}
  _put_norm(w, 'bert.embeddings.LayerNorm', p, 'embed_norm')
  _put_dense(w, 'cls.predictions.transform.dense', p, 'mlm_head/dense')
  _put_norm(w, 'cls.predictions.transform.LayerNorm', p, 'mlm_head/norm')
  for i in range(cfg.num_layers):
    b, h = f'block_{i}/', f'bert.encoder.layer.{i}.'
    for n in ('query', 'key', 'value'):
      w[f'{h}attention.self.{n}.weight'] = p[f'{b}attn/{n}/kernel'].reshape(D, D).T
      w[f'{h}attention.self.{n}.bias'] = p[f'{b}attn/{n}/bias'].reshape(D)
    w[h + 'attention.output.dense.weight'] = p[b + 'attn/out/kernel'].reshape(D, D).T
    w[h + 'attention.output.dense.bias'] = p[b + 'attn/out/bias']
    _put_norm(w, h + 'attention.output.LayerNorm', p, b + 'attn_norm')
    _put_dense(w, h + 'intermediate.dense', p, b + 'mlp/wi')
    _put_dense(w, h + 'output.dense', p, b + 'mlp/wo')
    _put_norm(w, h + 'output.LayerNorm', p, b + 'mlp_norm')
  hf = {'model_type': 'bert', 'architectures': ['BertForMaskedLM'], 'vocab_size': cfg.vocab_size,
        'hidden_size': D, 'num_hidden_layers': cfg.num_layers, 'num_attention_heads': cfg.num_heads,
        'intermediate_size': cfg.mlp_dim, 'hidden_act': 'gelu' if cfg.activation == 'gelu_exact' else 'gelu_new',
        'max_position_embeddings': cfg.max_len, 'type_vocab_size': cfg.type_vocab_size,
        'layer_norm_eps': cfg.norm_eps, 'tie_word_embeddings': True, 'position_embedding_type': 'absolute',
        'hidden_dropout_prob': cfg.dropout_rate, 'attention_probs_dropout_prob': 0.0,  # lmjax has none
        'initializer_range': cfg.init_std}
  _write(out_dir, hf, w)


def _exportable(cfg: ModelConfig, params, family: str) -> dict[str, np.ndarray]:
  """The flat host params, once ``cfg`` has ``family``'s shape (else a ``ValueError`` naming what differs)."""
  missing = shape_mismatches(cfg, family)
  if missing:
    name = {'gpt2': 'GPT-2', 'bert': 'BERT'}[family]
    raise ValueError(f'only a {name}-shaped lmjax model exports to {name}; this one has {", ".join(missing)}')
  return _host_flat(params)


def _norm(w, prefix):
  return {'layernorm': {'scale': w[prefix + '.weight'], 'bias': w[prefix + '.bias']}}


def _dense(w, prefix):
  """A PyTorch nn.Linear (weight [out, in]) as a flax kernel [in, out] and bias."""
  return {'kernel': w[prefix + '.weight'].T, 'bias': w[prefix + '.bias']}


def _put_norm(w, prefix, p, name):
  w[prefix + '.weight'], w[prefix + '.bias'] = p[name + '/layernorm/scale'], p[name + '/layernorm/bias']


def _put_dense(w, prefix, p, name):
  w[prefix + '.weight'], w[prefix + '.bias'] = p[name + '/kernel'].T, p[name + '/bias']


def _bert_key(name: str) -> str:
  """A BERT tensor name without the 'bert.' prefix, with old checkpoints' LayerNorm gamma/beta renamed."""
  name = name.removeprefix('bert.')
  for old, new in (('LayerNorm.gamma', 'LayerNorm.weight'), ('LayerNorm.beta', 'LayerNorm.bias')):
    if name.endswith(old):
      name = name[:-len(old)] + new
  return name


def _as_f32(tree):
  return {k: _as_f32(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in tree.items()}


def _host_flat(params) -> dict[str, np.ndarray]:
  """'a/b/c' -> host array; a scanned stack ('blocks', leading layer axis) becomes 'block_<i>'."""
  p = {k: np.asarray(v) for k, v in _flat(params).items()}
  for name in [k for k in p if k.startswith('blocks/')]:
    stacked = p.pop(name)
    for i, x in enumerate(stacked):
      p[f'block_{i}/{name.removeprefix("blocks/")}'] = x
  return p


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


def _read_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, CONFIG)
  if not os.path.isfile(path):
    raise ValueError(f'{path} not found: point at a directory written by save_pretrained '
                     '(config.json + model.safetensors)')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} is not readable JSON ({e}); point at a directory written by save_pretrained') from e


def _read(hf_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  hf_config = _read_config(hf_dir)
  weights_path = os.path.join(hf_dir, WEIGHTS)
  if not os.path.isfile(weights_path):
    raise ValueError(f'{weights_path} not found: point at a directory written by save_pretrained '
                     '(config.json + model.safetensors)')
  try:
    return hf_config, load_file(weights_path)
  except Exception as e:  # safetensors raises its own SafetensorError for a damaged file
    raise ValueError(f'{weights_path} is not a readable safetensors file ({str(e).splitlines()[0][:200]})') from e


def _write(out_dir: str, hf_config: dict, weights: dict[str, np.ndarray]):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
            os.path.join(out_dir, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(out_dir, CONFIG), 'w', encoding='utf-8') as f:
    json.dump(hf_config, f, indent=2)
