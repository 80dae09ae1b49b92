"""Supervised sequence classification: fine-tune a pretrained lmjax decoder or encoder.

``python -m lmjax.main --config=configs/finetune.py --workdir=DIR --config.train.init_from=PRETRAINED
--config.finetune.data=FILE.csv`` (main dispatches ``objective='classify'`` here). The model shapes and
tokenizer come from the pretrained workdir; optimizer, mesh, shardings, checkpoints and metric
writers are pretraining's. The best validation checkpoint is kept in ``DIR/best``; its test metrics
go to ``DIR/test_metrics.json``. Batch ``i`` is a function of (seed, i), so a resumed run reads
exactly the data the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lmjax import checkpoint as checkpoint_lib
from lmjax import metrics as metrics_lib
from lmjax import optim, sharding, steps, train
from lmjax import state as state_lib
from lmjax.data import labelled
from lmjax.models import classifier
from lmjax.models.transformer import ModelConfig

BEST_METRICS = {'accuracy': max, 'macro_f1': max, 'loss': min}  # finetune.best_metric -> which is better
# Model fields this run may set (they change computation, not parameter shapes); the rest are the
# pretrained workdir's.
RUNTIME_MODEL_FIELDS = ('dtype', 'attention_impl', 'remat', 'dropout_rate')
LABELS_FILE, BEST_FILE, TEST_FILE = 'labels.json', 'best.json', 'test_metrics.json'


# --- loss and metric sums: pure and jit-able -----------------------------------------------------------------


def cross_entropy(logits_BC, labels_B, weights_B, class_weights_C):
  """({'loss', 'accuracy'}: (sum, count) pairs, confusion [true C, predicted C]), all float32.

  The loss weighs each example by its class's weight (``weights_B`` = 0 marks padding rows), and is
  normalised by the weights' sum; accuracy and the confusion matrix count examples.
  """
  logits_BC = logits_BC.astype(jnp.float32)
  num_classes = logits_BC.shape[-1]
  nll_B = jax.nn.logsumexp(logits_BC, axis=-1) - jnp.take_along_axis(logits_BC, labels_B[:, None], axis=-1)[:, 0]
  loss_weights_B = weights_B * jnp.asarray(class_weights_C, jnp.float32)[labels_B]
  predicted_B = jnp.argmax(logits_BC, axis=-1)
  confusion_CC = jnp.einsum('BC,BK->CK', jax.nn.one_hot(labels_B, num_classes) * weights_B[:, None],
                            jax.nn.one_hot(predicted_B, num_classes))
  metrics = {'loss': ((nll_B * loss_weights_B).sum(), loss_weights_B.sum()),
             'accuracy': (((predicted_B == labels_B) * weights_B).sum(), weights_B.sum())}
  return metrics, confusion_CC


def _logits(apply_fn, params, batch, rng, train_mode: bool):
  return apply_fn({'params': params}, batch['tokens'], batch['positions'], batch['segment_ids'],
                  deterministic=not train_mode, rngs={'dropout': rng})


def loss_fn(apply_fn, params, batch, rng, *, train: bool, class_weights_C):
  """``steps.train_step``'s loss: (mean weighted cross-entropy, (sum, count) metrics)."""
  logits_BC = _logits(apply_fn, params, batch, rng, train)
  metrics, _ = cross_entropy(logits_BC, batch['labels'], batch['weights'], class_weights_C)
  total, weight = metrics['loss']
  return total / jnp.maximum(weight, 1e-12), metrics


def eval_step(params, batch, *, apply_fn, class_weights_C):
  """Loss sums and the confusion matrix of one batch (no dropout)."""
  logits_BC = _logits(apply_fn, params, batch, jax.random.key(0), False)
  metrics, confusion_CC = cross_entropy(logits_BC, batch['labels'], batch['weights'], class_weights_C)
  return {'loss': jnp.stack(metrics['loss']), 'confusion': confusion_CC}


# --- host-side metrics ---------------------------------------------------------------------------------------


def summarize(loss_sums, confusion_CC, names) -> dict[str, float]:
  """Loss, accuracy, macro-F1 and per-class precision and recall from summed (loss, weight) and confusion
  (rows: true class, columns: predicted). A class never predicted (or never present) scores 0 there; the
  macro-F1 averages the classes that are present or predicted (as scikit-learn's does)."""
  confusion_CC = np.asarray(confusion_CC, np.float64)
  correct_C, predicted_C, actual_C = np.diag(confusion_CC), confusion_CC.sum(0), confusion_CC.sum(1)
  ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)
  precision_C, recall_C = ratio(correct_C, predicted_C), ratio(correct_C, actual_C)
  f1_C = ratio(2 * precision_C * recall_C, precision_C + recall_C)
  out = {'loss': float(loss_sums[0] / max(loss_sums[1], 1e-12)),
         'accuracy': float(correct_C.sum() / max(confusion_CC.sum(), 1)),
         'macro_f1': float(f1_C[(actual_C + predicted_C) > 0].mean()), 'examples': float(confusion_CC.sum())}
  for name, p, r in zip(names, precision_C, recall_C):
    out[f'precision/{name}'], out[f'recall/{name}'] = float(p), float(r)
  return out


def evaluate(eval_fn, params, batches, names) -> dict[str, float]:
  """Sums over every batch on the host (float64), then the metrics of the whole split."""
  loss_sums, confusion_CC = np.zeros(2), 0.0
  for batch in batches:
    sums = jax.device_get(eval_fn(params, batch))
    loss_sums, confusion_CC = loss_sums + sums['loss'], confusion_CC + sums['confusion']
  return summarize(loss_sums, confusion_CC, names)


def is_better(metric: str, value: float, best: float | None) -> bool:
  return best is None or (value != best and BEST_METRICS[metric](value, best) == value)


# --- orchestration -------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Fine-tunes to ``train.max_steps`` (resuming from the workdir), then scores the best checkpoint on
  the test split. Returns the best validation metrics (``eval_*``) and its test metrics (``test_*``)."""
  workdir = os.path.abspath(workdir)
  _check_config(config)
  train.check_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=config.checkpoint.every,
                                     keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  best = checkpoint_lib.Checkpointer(os.path.join(workdir, 'best'), every=1, keep=1, async_save=False)
  try:
    return _Run.start(config, workdir, ckpt, best).run()
  finally:
    try:
      ckpt.wait()
    finally:
      ckpt.close()
      best.close()


def _check_config(config: ml_collections.ConfigDict):
  f = config.finetune
  if not config.train.init_from:
    raise ValueError('train.init_from is empty; set it to the --workdir of an lmjax pretraining run (its '
                     'tokenizer and model shapes are used; add --config.finetune.random_init=true to skip its weights)')
  if f.best_metric not in BEST_METRICS:
    raise ValueError(f"finetune.best_metric={f.best_metric!r}: use one of {', '.join(BEST_METRICS)}")
  classifier.resolve_pooling(f.pooling, causal=False)  # the name; 'first' on a decoder is checked later
  if config.data.tokenizer_path:
    raise ValueError('fine-tuning uses the tokenizer of train.init_from; drop --config.data.tokenizer_path')
  if config.train.batch_size % config.train.grad_accum_steps:
    raise ValueError(f'train.batch_size={config.train.batch_size} must divide by '
                     f'train.grad_accum_steps={config.train.grad_accum_steps}')


def pretrained_setup(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool):
  """(this run's config with the pretrained model section, ModelConfig, tokenizer) from train.init_from."""
  path = os.path.abspath(config.train.init_from)
  tokenizer_path = train.workdir_tokenizer(path)  # lmjax's sentencepiece model or an imported tokenizer.json
  if not (os.path.isfile(os.path.join(path, train.CONFIG_FILE)) and os.path.isfile(tokenizer_path)):
    raise ValueError(f'train.init_from={path} is not an lmjax workdir (it needs config.json and a tokenizer); '
                     'point it at the --workdir of a python -m lmjax.main (or lmjax.convert) run')
  pretrained = train.load_workdir_config(path)
  if pretrained.get('objective') not in ('clm', 'mlm'):  # a fine-tuned workdir, or a Hugging Face directory
    raise ValueError(f"train.init_from={path} holds no pretrained lmjax model (objective "
                     f"{pretrained.get('objective')!r}); point it at a clm or mlm --workdir, or import a Hugging "
                     'Face model first with python -m lmjax.convert --from_hf')
  model = {**config.model.to_dict(),
           **{k: v for k, v in pretrained.model.to_dict().items() if k not in RUNTIME_MODEL_FIELDS}}
  config = ml_collections.ConfigDict(config.to_dict())  # a copy: what config.json records
  config.model.update(model)
  if config.data.seq_len > config.model.max_len:
    raise ValueError(f'data.seq_len={config.data.seq_len} exceeds model.max_len={config.model.max_len} of '
                     f'train.init_from={path}; lower --config.data.seq_len')
  tokenizer = train.load_or_train_tokenizer(config, workdir, None, resuming=resuming, source_path=tokenizer_path)
  model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, causal=pretrained.objective != 'mlm', **model)
  classifier.resolve_pooling(config.finetune.pooling, model_cfg.causal)
  return config, model_cfg, tokenizer


def pretrained_params(path: str, abstract_transformer):
  """train.init_from's parameters without its LM head, shape-checked against the classifier's Transformer."""
  params = classifier.transformer_params(train.load_for_inference(path)[2])
  checkpoint_lib.check_same_params(params, abstract_transformer, f'train.init_from={path}',
                                   'point --config.train.init_from at the pretraining workdir')
  return params


def _write_json(path: str, value):
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _check_labels(workdir: str, names: list[str], resuming: bool):
  """A resumed run must map labels to the ids its checkpoint was trained with."""
  saved = _read_json(os.path.join(workdir, LABELS_FILE))
  if resuming and saved and saved['labels'] != names:
    raise ValueError(f"the labels of finetune.data ({', '.join(names)}) are not the ones {workdir} was "
                     f"trained with ({', '.join(saved['labels'])}); use the same data or a new --workdir")


def _best_record(workdir: str, metric: str) -> dict | None:
  record = _read_json(os.path.join(workdir, BEST_FILE))
  if record and record['metric'] != metric:
    raise ValueError(f"finetune.best_metric={metric!r} but {workdir}/best was chosen by {record['metric']!r}; "
                     f"keep --config.finetune.best_metric={record['metric']} or start a new --workdir")
  return record


class _Params(flax.struct.PyTreeNode):
  """What DIR/best keeps: the parameters only (no optimizer state)."""
  params: Any


@dataclasses.dataclass
class _Run:
  """One fine-tuning run: the step loop, evaluation, best-checkpoint keeping and the final test."""
  config: ml_collections.ConfigDict
  workdir: str
  names: list
  data: dict
  mesh: Any
  state: Any
  abstract: Any
  start_step: int
  train_fn: Any
  eval_fn: Any
  schedule: Any
  ckpt: checkpoint_lib.Checkpointer
  best: checkpoint_lib.Checkpointer
  best_record: dict | None  # what DIR/best.json says: step, metric, value, validation metrics
  nonfinite_before: int = 0  # updates skipped for NaN/inf before this run started (train.nonfinite)

  @classmethod
  def start(cls, config, workdir, ckpt, best):
    """Data, model and state (restored, pretrained or random); nothing in the workdir changes before
    the inputs have been checked and a resumed state restored."""
    start_step = ckpt.latest_step()
    resuming = start_step is not None
    config, model_cfg, tokenizer = pretrained_setup(config, workdir, resuming=resuming)
    f = config.finetune
    splits, names = labelled.load_splits(f.data, f.validation, f.test, validation_fraction=f.validation_fraction,
                                         test_fraction=f.test_fraction, seed=config.seed,
                                         text_field=f.text_field, label_field=f.label_field)
    _check_labels(workdir, names, resuming)
    best_record = _best_record(workdir, f.best_metric)
    data = {k: labelled.encode(v, tokenizer, config.data.seq_len, names) for k, v in splits.items() if v}
    class_weights_C = labelled.class_weights(f.class_weights, data['train']['labels'], names)
    model = classifier.Classifier(model_cfg, len(names), f.pooling, f.dropout_rate)
    mesh = sharding.mesh_from_config(config.mesh)
    sharding.check_batch_size(config.train.batch_size, mesh)
    tx, schedule = train.make_optimizer(config)
    example_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
    abstract, shardings = state_lib.abstract_state(model, tx, example_BL, mesh)
    if resuming:
      state = ckpt.restore(start_step, abstract)
      logging.info('resumed from the checkpoint at step %d in %s', start_step, workdir)
    else:
      state, start_step = state_lib.create(model, tx, example_BL, mesh, jax.random.key(config.seed))[0], 0
      if not f.random_init:
        params = pretrained_params(config.train.init_from, abstract.params['transformer'])
        state = state.replace(params={**state.params, 'transformer': jax.device_put(
            params, shardings.params['transformer'])})
    logging.info('fine-tuning a %s (%s parameters) %s %s: %d classes (%s); examples: %s; class weights %s',
                 'decoder' if model_cfg.causal else 'encoder', f'{model_cfg.num_params():,}',
                 'shaped like (random init)' if f.random_init else 'from', config.train.init_from,
                 len(names), ', '.join(names), {k: len(v) for k, v in splits.items()},
                 np.round(class_weights_C, 3).tolist())
    if jax.process_index() == 0:
      _write_json(os.path.join(workdir, LABELS_FILE), {'labels': names})
      train.write_config(config, workdir)
    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    train_fn = jax.jit(functools.partial(steps.train_step, tx=tx, grad_accum_steps=config.train.grad_accum_steps,
                                         loss_fn=functools.partial(loss_fn, model.apply,
                                                                   class_weights_C=class_weights_C)),
                       in_shardings=(shardings, batch_sharding, replicated), out_shardings=(shardings, replicated),
                       donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, apply_fn=model.apply, class_weights_C=class_weights_C),
                      in_shardings=(shardings.params, batch_sharding), out_shardings=replicated)
    return cls(config, workdir, names, data, mesh, state, abstract, start_step, train_fn, eval_fn, schedule,
               ckpt, best, best_record)

  def _rows(self) -> slice:
    """This process's rows of every global batch."""
    share = self.config.train.batch_size // jax.process_count()
    return slice(jax.process_index() * share, (jax.process_index() + 1) * share)

  def _eval_batches(self, split: str, max_batches: int | None = None):
    host = labelled.eval_batches(self.data[split], self.config.train.batch_size, self._rows(), max_batches)
    return [sharding.host_to_global(b, self.mesh) for b in host]

  def run(self) -> dict[str, float]:
    cfg, is_main = self.config.train, jax.process_index() == 0
    writer = metrics_lib.MetricWriter(self.workdir, enabled=is_main, resume_step=self.start_step)
    val_batches = self._eval_batches('validation', cfg.eval_batches or None)
    rng = jax.random.key(self.config.seed)
    self.nonfinite_before = int(jax.device_get(optim.nonfinite_count(self.state.opt_state)))
    throughput, bar = metrics_lib.Throughput(self.start_step), metrics_lib.progress_bar(
        self.start_step, cfg.max_steps, is_main)
    queue = train.OneStepAhead()
    try:
      with sharding.activate(self.mesh):
        for step in range(self.start_step + 1, cfg.max_steps + 1):
          host = labelled.train_batch(self.data['train'], step - 1, cfg.batch_size, self.config.seed, self._rows())
          self.state, metrics = self.train_fn(self.state, sharding.host_to_global(host, self.mesh), rng)
          queue.push(metrics)
          bar.update(1)
          scalars = {}
          if step % cfg.log_every == 0 or step == cfg.max_steps:
            scalars = self._train_scalars(step, metrics, throughput)
            bar.set_postfix(loss=f"{scalars['loss']:.3f}", refresh=False)
          if step % cfg.eval_every == 0 or step == cfg.max_steps:
            started = time.perf_counter()
            scalars.update({f'eval_{k}': v for k, v in self._evaluate_and_keep(step, val_batches).items()})
            throughput.exclude(time.perf_counter() - started)
            bar.write(f"step {step}: eval_loss {scalars['eval_loss']:.4g}, eval_accuracy "
                      f"{scalars['eval_accuracy']:.4f}, eval_macro_f1 {scalars['eval_macro_f1']:.4f}")
          if scalars:
            writer.write(step, scalars)
          self.ckpt.save(step, self.state, force=step in (cfg.max_steps, cfg.stop_at))
          if step == cfg.stop_at:
            bar.write(f'stopped at step {step}; checkpoint saved. Run the same command again to resume.')
            return {}
      bar.close()
      return self._test()
    finally:
      bar.close()
      writer.close()

  def _train_scalars(self, step, metrics, throughput):
    scalars = metrics_lib.summarize(jax.device_get(metrics))
    scalars['learning_rate'] = float(self.schedule(step - 1))
    scalars['examples_per_sec'] = throughput.update(step, self.config.train.batch_size)
    skipped = int(scalars['nonfinite_steps']) - self.nonfinite_before  # those before a resume were allowed
    if skipped > 0 and self.config.train.nonfinite == 'stop':
      raise ValueError(f'the loss or gradients were NaN/inf at {skipped} step(s) up to step {step}; those updates '
                       'were skipped. Lower --config.optim.learning_rate, or set --config.train.nonfinite=skip')
    return scalars

  def _evaluate_and_keep(self, step: int, val_batches) -> dict[str, float]:
    """Validation metrics; a checkpoint that beats the best so far replaces it in DIR/best."""
    metrics = evaluate(self.eval_fn, self.state.params, val_batches, self.names)
    name, best = self.config.finetune.best_metric, self.best_record
    # After a resume, the steps up to the saved best re-run and reproduce their metrics: none is better.
    if (best is None or step > best['step']) and is_better(name, metrics[name], best and best['value']):
      self.best.save(step, _Params(self.state.params), force=True)
      self.best.wait()
      self.best_record = {'step': step, 'metric': name, 'value': metrics[name], 'validation': metrics}
      if jax.process_index() == 0:
        _write_json(os.path.join(self.workdir, BEST_FILE), self.best_record)
    return metrics

  def _test(self) -> dict[str, float]:
    """The best checkpoint's metrics on the test split (if there is one), also in DIR/test_metrics.json."""
    best = self.best_record
    out = {'best_step': best['step'], **{f'eval_{k}': v for k, v in best['validation'].items()}}
    if 'test' not in self.data:
      logging.info('no test split (finetune.test and finetune.test_fraction): no test metrics')
      return out
    params = self.best.restore(best['step'], _Params(self.abstract.params)).params
    with sharding.activate(self.mesh):
      test = evaluate(self.eval_fn, params, self._eval_batches('test'), self.names)
    if jax.process_index() == 0:
      _write_json(os.path.join(self.workdir, TEST_FILE), {'step': best['step'], 'metric': best['metric'],
                                                          'test': test})
    logging.info('test metrics of the best checkpoint (step %d, by validation %s): %s', best['step'],
                 best['metric'], ', '.join(f'{k} {v:.4g}' for k, v in test.items()))
    return {**out, **{f'test_{k}': v for k, v in test.items()}}
