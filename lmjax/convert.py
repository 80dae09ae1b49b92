"""Hugging Face checkpoints in and out: GPT-2 <-> lmjax parameters, offline.

A Hugging Face model directory is ``config.json`` + ``model.safetensors``
(what ``save_pretrained`` writes). GPT-2 needs no model code of its own: it is
the lmjax decoder with learned positions, LayerNorm with biases, tanh GELU,
biases everywhere and tied embeddings, expressed as ``ModelConfig`` fields.

Layout notes: GPT-2's ``Conv1D`` weights are stored (in, out), the same
orientation as flax kernels; ``c_attn`` packs q, k and v along ``out``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lmjax.models.transformer import ModelConfig

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'


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
  if not (cfg.causal and cfg.positions == 'learned' and cfg.norm == 'layernorm' and cfg.use_bias
          and cfg.tie_embeddings and cfg.activation in ('gelu', 'gelu_exact') and not cfg.type_vocab_size):
    raise ValueError('only a GPT-2-shaped lmjax model exports to GPT-2: causal, learned positions, layernorm, '
                     'biases, tied embeddings, gelu, no token types')
  p = {k: np.asarray(v) for k, v in _flat(params).items()}
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


def _norm(w, prefix):
  return {'layernorm': {'scale': w[prefix + '.weight'], 'bias': w[prefix + '.bias']}}


def _as_f32(tree):
  return {k: _as_f32(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in tree.items()}


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


def _read(hf_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  config_path, weights_path = os.path.join(hf_dir, CONFIG), os.path.join(hf_dir, WEIGHTS)
  for path in (config_path, weights_path):
    if not os.path.isfile(path):
      raise ValueError(f'{path} not found: point at a directory written by save_pretrained '
                       '(config.json + model.safetensors)')
  with open(config_path, encoding='utf-8') as f:
    return json.load(f), load_file(weights_path)


def _write(out_dir: str, hf_config: dict, weights: dict[str, np.ndarray]):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
            os.path.join(out_dir, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(out_dir, CONFIG), 'w', encoding='utf-8') as f:
    json.dump(hf_config, f, indent=2)
