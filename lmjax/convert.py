"""Hugging Face checkpoints in and out as lmjax workdirs: the convert CLI (weights: ``lmjax.models.hf``).

  python -m lmjax.convert --from_hf=HF_DIR --workdir=OUT   # an lmjax workdir (sample, fill_mask, evaluate, init_from)
  python -m lmjax.convert --workdir=RUN --to_hf=OUT_DIR    # GPT2LMHeadModel or BertForMaskedLM, by the model's shape

A Hugging Face model directory is ``config.json`` + ``model.safetensors``
(what ``save_pretrained`` writes), plus a tokenizer (``tokenizer.json``, or a
sentencepiece ``*.model`` that lmjax trained). A workdir made from one serves
``lmjax.sample``, ``fill_mask``, ``evaluate`` and ``--config.train.init_from``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
from absl import app, flags, logging

from configs import base
from lmjax import checkpoint, cli, train
from lmjax import state as state_lib
from lmjax.data import tokenizer as tokenizer_lib
from lmjax.models import hf
from lmjax.models.transformer import ModelConfig


def to_workdir(hf_dir: str, workdir: str) -> ModelConfig:
  """Writes an lmjax workdir for the model in ``hf_dir`` and its tokenizer (``write_workdir``)."""
  _check_new_dir(workdir, '--workdir')
  cfg, params = hf.import_hf(hf_dir)
  tokenizer_path = tokenizer_lib.find(hf_dir)
  if tokenizer_path is None:
    raise ValueError(f'{hf_dir} has no tokenizer (tokenizer.json or a sentencepiece .model), which sampling and '
                     'evaluation need: save it there (tokenizer.save_pretrained), or give the directory itself to '
                     '--config.train.init_from')
  write_workdir(cfg, params, tokenizer_path, workdir)
  return cfg


def write_workdir(cfg: ModelConfig, params, tokenizer_path: str, workdir: str):
  """An lmjax workdir holding these weights: config.json, the tokenizer, a step-0 checkpoint.

  It serves lmjax.sample / fill_mask / evaluate and ``--config.train.init_from``
  (not resuming: it has no data position). Everything is checked before anything
  is written, and the workdir appears whole (written aside, then renamed).
  """
  _check_new_dir(workdir, '--workdir')
  tokenizer = tokenizer_lib.load(tokenizer_path)
  if tokenizer.vocab_size != cfg.vocab_size:
    raise ValueError(f'{tokenizer_path} has {tokenizer.vocab_size} tokens but the model has {cfg.vocab_size}; '
                     'lmjax needs them equal')
  if not cfg.causal:
    tokenizer.mask_id  # pylint: disable=pointless-statement  (masked LM needs one: fail now, not in fill_mask)
  config = base.get_config()
  config.objective = 'clm' if cfg.causal else 'mlm'
  for field in dataclasses.fields(ModelConfig):
    if field.name not in ('vocab_size', 'causal', 'mlm_head'):  # the tokenizer and objective decide these
      config.model[field.name] = getattr(cfg, field.name)
  config.data.vocab_size = cfg.vocab_size
  config.data.seq_len = min(config.data.seq_len, cfg.max_len)
  assert train.model_config(config, tokenizer.vocab_size) == cfg, 'config.model must rebuild the imported model'
  tx, _ = train.make_optimizer(config)
  params = jax.tree.map(jax.numpy.asarray, params)
  state = state_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params))

  def write(tmp):
    with open(os.path.join(tmp, train.CONFIG_FILE), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
    shutil.copyfile(tokenizer_path, os.path.join(tmp, tokenizer_lib.file_name(tokenizer_path)))
    ckpt = checkpoint.Checkpointer(os.path.join(tmp, 'checkpoints'), every=1, keep=None, async_save=False)
    try:
      ckpt.save(0, state, force=True)
      ckpt.wait()
    finally:
      ckpt.close()
  _write_aside(workdir, write)


def to_hf(workdir: str, out_dir: str) -> str:
  """Exports a workdir's latest checkpoint (and its tokenizer file) as GPT-2 or BERT; returns which."""
  _check_new_dir(out_dir, '--to_hf')
  _, model, params, tokenizer = train.load_for_inference(workdir)
  family = hf.hf_family(model.config)  # fails before anything is written

  def write(tmp):
    hf.export_hf(model.config, params, tmp)
    shutil.copyfile(tokenizer.model_path, os.path.join(tmp, tokenizer_lib.file_name(tokenizer.model_path)))
  _write_aside(out_dir, write)
  return family


def _check_new_dir(path: str, flag: str):
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ValueError(f'{flag}={path} exists and is not an empty directory; pick a new one (nothing was written)')


def _write_aside(path: str, write):
  """``write(tmp)`` into a sibling directory, renamed to ``path`` only once complete."""
  path = os.path.abspath(path)
  tmp = f'{path}.tmp{os.getpid()}'
  os.makedirs(tmp)
  try:
    write(tmp)
    os.replace(tmp, path)  # onto a missing or empty directory
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _define_flags():
  """Only when run as a CLI: lmjax.main owns --workdir when the tests import this module."""
  flags.DEFINE_string('from_hf', None, 'Hugging Face directory to import (config.json, model.safetensors, '
                      'tokenizer.json or a sentencepiece .model) into a new --workdir.')
  flags.DEFINE_string('to_hf', None, 'New directory to export --workdir to, as GPT-2 or BERT by the model shape.')
  flags.DEFINE_string('workdir', None, 'lmjax workdir: written by --from_hf, read by --to_hf.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore step at INFO
  with cli.bad_input_exits():
    if bool(args.from_hf) == bool(args.to_hf):
      raise ValueError('pass one of --from_hf=HF_DIR (import into --workdir) and --to_hf=OUT_DIR (export --workdir)')
    if args.from_hf:
      cfg = to_workdir(args.from_hf, args.workdir)
      print(f'wrote {args.workdir}: {"GPT-2" if cfg.causal else "BERT"}, {cfg.num_params():,} parameters')
    else:
      family = to_hf(args.workdir, args.to_hf)
      print(f'wrote {args.to_hf}: {"GPT2LMHeadModel" if family == "gpt2" else "BertForMaskedLM"}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
