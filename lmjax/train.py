"""Training orchestration: wires config, data, tokenizer, mesh, model, checkpoints and metrics.

No math lives here (see steps.py / objectives.py) and no direct orbax or grain
calls (see checkpoint.py / data/).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lmjax import checkpoint as checkpoint_lib
from lmjax import evaluate as evaluate_lib
from lmjax import metrics as metrics_lib
from lmjax import objectives, optim, sharding, steps
from lmjax import state as state_lib
from lmjax.data import pipeline, prepared, sources
from lmjax.data import tokenizer as tokenizer_lib
from lmjax.models import hf
from lmjax.models.transformer import ModelConfig, Transformer

TOKENIZER_FILE = 'tokenizer.model'
CONFIG_FILE = 'config.json'


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  """The frozen model hyperparameters: config.model plus what the data decides."""
  objectives.row_len(config.objective, 1)  # validates the objective name
  mlm = config.objective == 'mlm'
  return ModelConfig(vocab_size=vocab_size, causal=not mlm, mlm_head=mlm, **config.model.to_dict())


def model_flops(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> tuple[float, str]:
  """(model FLOPs per token, the formula in words) for ``config``'s sequence length and objective: the output
  head counts on the tokens that are predicted, all of them for next-token, the masked share for masked LM."""
  fraction = config.mlm.mask_rate if config.objective == 'mlm' else 1.0
  return (model_cfg.flops_per_token(config.data.seq_len, fraction),
          model_cfg.flops_formula(config.data.seq_len, fraction))


def masking(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer) -> dict | None:
  """The MLM objective's masking arguments (``objectives.mask_tokens``); None for next-token."""
  if config.objective != 'mlm':
    return None
  g = config.mlm
  if not (0 < g.mask_rate < 1 and g.mask_token_prob >= 0 and g.random_token_prob >= 0
          and g.mask_token_prob + g.random_token_prob <= 1):
    raise ValueError(f'mlm.mask_rate={g.mask_rate} must be in (0, 1) and mlm.mask_token_prob='
                     f'{g.mask_token_prob} + mlm.random_token_prob={g.random_token_prob} in [0, 1]')
  return dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, special_ids_S=tokenizer.special_ids,
              mask_rate=g.mask_rate, mask_token_prob=g.mask_token_prob, random_token_prob=g.random_token_prob,
              word_starts_V=tokenizer.word_starts() if g.whole_word else None)


def load_data(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool):
  """(train records, validation records, tokenizer): raw text tokenized on the fly, or a prepared corpus.

  Records are ``{'tokens': int32 [bos, ..., eos]}`` per document (``lmjax.data.pipeline.encode``).
  A prepared corpus (``python -m lmjax.data.prepare``) brings its own split and tokenizer.
  """
  if config.data.source == 'prepared':
    if config.data.tokenizer_path:
      raise ValueError('data.source=prepared uses the tokenizer saved with the corpus; drop '
                       '--config.data.tokenizer_path')
    directory = config.data.paths
    tokenizer = load_or_train_tokenizer(config, workdir, None, resuming=resuming,
                                        source_path=prepared.tokenizer_path(directory))
    return prepared.split_source(directory, 'train'), prepared.split_source(directory, 'validation'), tokenizer
  docs = sources.load_documents(config.data.source, config.data.paths, config.data.text_field,
                                config.data.max_doc_chars, config.data.on_bad_file)
  train_docs, val_docs = sources.split_documents(docs, config.data.val_fraction, config.seed)
  tokenizer = load_or_train_tokenizer(config, workdir, train_docs, resuming=resuming)
  return pipeline.encode(train_docs, tokenizer), pipeline.encode(val_docs, tokenizer), tokenizer


def load_or_train_tokenizer(config, workdir: str, train_docs, *, resuming: bool = False,
                            source_path: str = '') -> tokenizer_lib.Tokenizer:
  """The workdir's tokenizer if present (resume), else a copy of ``source_path`` or data.tokenizer_path,
  else a new one trained on ``train_docs``."""
  path = workdir_tokenizer(workdir)
  source_path = source_path or config.data.tokenizer_path
  if os.path.exists(path) or resuming:
    try:
      tokenizer = tokenizer_lib.load(path)
    except ValueError as e:
      raise ValueError(f'{path} is missing or unreadable, and the checkpoints in {workdir} need the '
                       'tokenizer they were trained with; restore that file or start a new --workdir') from e
    if source_path:
      wanted = tokenizer_lib.load(source_path)
      if wanted.vocabulary() != tokenizer.vocabulary():
        raise ValueError(f'data.tokenizer_path={source_path} ({wanted.vocab_size} pieces) is not '
                         f'the tokenizer this workdir was trained with ({path}, {tokenizer.vocab_size} pieces); '
                         'drop --config.data.tokenizer_path to resume, or start a new --workdir')
    return tokenizer
  if source_path:
    tokenizer_lib.load(source_path)  # validates before copying
    path = os.path.join(workdir, tokenizer_lib.file_name(source_path))  # a tokenizer.json stays one
    _atomic_copy(source_path, path)
  else:
    # Deterministic, so every process may train its own copy (no shared filesystem needed).
    logging.info('training a %d-token %s tokenizer on %d documents', config.data.vocab_size,
                 config.data.tokenizer_type, len(train_docs))
    tokenizer_lib.train_tokenizer(train_docs, path, config.data.vocab_size, config.data.tokenizer_type)
  return tokenizer_lib.load(path)


def workdir_tokenizer(workdir: str) -> str:
  """The workdir's tokenizer file: lmjax's sentencepiece model, or a tokenizer.json that lmjax.convert imported."""
  imported = os.path.join(workdir, tokenizer_lib.HF_FILE)
  return imported if os.path.isfile(imported) else os.path.join(workdir, TOKENIZER_FILE)


def make_optimizer(config: ml_collections.ConfigDict):
  """(optax transformation, schedule); the schedule spans optim.schedule_steps or else train.max_steps."""
  kwargs = config.optim.to_dict()
  kwargs['schedule_steps'] = kwargs['schedule_steps'] or config.train.max_steps
  return optim.make_optimizer(**kwargs)


def _atomic_copy(src: str, dst: str):
  tmp = f'{dst}.tmp{os.getpid()}'
  shutil.copyfile(src, tmp)
  os.replace(tmp, dst)


def write_config(config, workdir: str):
  tmp = os.path.join(workdir, f'{CONFIG_FILE}.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (written at the start of training)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f'{path} not found: --workdir must be a directory written by lmjax.main')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


_INFERENCE_CLI = {'clm': 'python -m lmjax.sample', 'mlm': 'python -m lmjax.fill_mask'}


def load_for_inference(workdir: str, objective: str | None = None):
  """(config, model, params, tokenizer) from a training workdir's latest checkpoint.

  With ``objective``, a workdir trained with another objective is a clear error.
  """
  config = load_workdir_config(workdir)
  if objective and config.objective != objective:
    raise ValueError(f'{workdir} holds a {config.objective!r} model, not {objective!r}; '
                     f'use {_INFERENCE_CLI[config.objective]}')
  tokenizer = tokenizer_lib.load(workdir_tokenizer(workdir))
  model = Transformer(model_config(config, tokenizer.vocab_size))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=None)
  step = ckpt.latest_step()
  if step is None:
    raise ValueError(f'no checkpoint in {workdir}/checkpoints; train first with lmjax.main')
  tx, _ = make_optimizer(config)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  abstract, _ = state_lib.abstract_state(model, tx, jnp.zeros((1, 8), jnp.int32), mesh)
  state = ckpt.restore(step, abstract)
  ckpt.close()
  return config, model, state.params, tokenizer


def check_workdir(workdir: str):
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:  # os.access says yes to root on a read-only filesystem: really write
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w', encoding='utf-8') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'workdir {workdir} is not writable ({e.strerror}); pass a --workdir you can write to') from e


class _StopRequest:
  """First SIGINT/SIGTERM asks the loop to checkpoint and stop; a second one aborts."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains until ``config.train.max_steps`` (resuming from the workdir's last checkpoint).

  Bad input raises ``ValueError`` with a one-line message before anything in
  ``workdir`` is changed (a resumed run's config.json is rewritten only once
  its checkpoint has been restored).
  """
  workdir = os.path.abspath(workdir)
  _check_config(config)
  check_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), every=config.checkpoint.every,
                                     keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
  try:
    return _train(config, workdir, ckpt)
  finally:
    try:
      ckpt.wait()  # a pending asynchronous save finishes (or reports its failure) before exit
    finally:
      ckpt.close()


def _train(config: ml_collections.ConfigDict, workdir: str, ckpt: checkpoint_lib.Checkpointer):
  is_main = jax.process_index() == 0
  row_len = objectives.row_len(config.objective, config.data.seq_len)
  start_step = ckpt.latest_step()
  train_records, val_records, tokenizer = load_data(config, workdir, resuming=start_step is not None)
  pipeline.check_enough_tokens(train_records, batch_size=config.train.batch_size, row_len=row_len)
  model_cfg = model_config(config, tokenizer.vocab_size)
  model = Transformer(model_cfg)
  if is_main:
    logging.info('validation baselines without context: unigram perplexity %.1f, majority-token accuracy %.3f',
                 *pipeline.unigram_baselines(train_records, val_records, tokenizer.vocab_size).values())

  mesh = sharding.mesh_from_config(config.mesh)
  sharding.check_batch_size(config.train.batch_size, mesh)
  tx, schedule = make_optimizer(config)
  example_BL = jnp.zeros((1, config.data.seq_len), jnp.int32)
  abstract, shardings = state_lib.abstract_state(model, tx, example_BL, mesh)

  train_iter = pipeline.sharded_train_iterator(
      train_records, row_len=row_len, batch_size=config.train.batch_size, seed=config.seed,
      num_shards=config.data.shards or jax.process_count(), process_index=jax.process_index(),
      process_count=jax.process_count())
  eval_batches = _global_eval_batches(config, val_records, row_len, mesh)
  token_bytes_V = jax.device_put(tokenizer.token_bytes(), sharding.replicated(mesh))

  if start_step is not None:
    state = ckpt.restore(start_step, abstract, train_iter)
    skipped = [s for s in ckpt.incomplete_steps if s > start_step]
    logging.info('resumed from the checkpoint at step %d in %s%s', start_step, workdir,
                 f' (the interrupted save of step {skipped[-1]} was incomplete and is discarded)' if skipped else '')
  else:
    state = state_lib.create(model, tx, example_BL, mesh, jax.random.key(config.seed))[0]
    start_step = 0
    if config.train.init_from:  # continued pretraining: these weights, a fresh optimizer and schedule
      state = state.replace(params=jax.device_put(_initial_params(config.train.init_from, abstract.params),
                                                  shardings.params))
      logging.info('initialised the parameters from %s', config.train.init_from)
  if is_main:
    write_config(config, workdir)
  logging.info('model: %s parameters; mesh %s', f'{model_cfg.num_params():,}', dict(mesh.shape))
  if start_step >= config.train.max_steps:
    logging.warning('the checkpoint at step %d has reached train.max_steps=%d: nothing to train; raise '
                    '--config.train.max_steps to go on', start_step, config.train.max_steps)
    return {}

  loss_fn = functools.partial(objectives.loss_fn(config.objective, masking(config, tokenizer)), model.apply)
  train_fn, eval_fn = jit_steps(config, loss_fn, tx, shardings, mesh)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  flops_per_token, _ = model_flops(config, model_cfg)
  # Before the loop, so that the CPU's matmul probe is not timed as training.
  peak_flops, peak_source = metrics_lib.peak_flops_per_device(mesh.devices.flat[0], config.train.peak_flops,
                                                              quick=True)
  if is_main:  # a CPU's ceiling is measured once, now: a busy machine at this moment inflates every MFU after
    logging.info(peak_source if peak_flops is None else
                 f'MFU against {peak_flops / 1e12:.3g} TFLOP/s per device: {peak_source}')
  loop = _Loop(config, state, train_fn, eval_fn, train_iter, eval_batches, token_bytes_V, ckpt, writer,
               schedule, mesh, is_main, flops_per_token, peak_flops, workdir)
  try:
    return loop.run(start_step)
  finally:
    writer.close()


def _initial_params(path: str, abstract_params):
  """Parameters from an lmjax workdir's latest checkpoint or a Hugging Face GPT-2 or BERT directory,
  shape-checked. They are read whole on one device, then placed into this run's shardings.
  """
  hf_config = os.path.join(path, hf.CONFIG)
  if os.path.isfile(hf_config) and not os.path.isdir(os.path.join(path, 'checkpoints')):
    params = hf.import_hf(path)[1]
  else:
    params = load_for_inference(path)[2]
  checkpoint_lib.check_same_params(params, abstract_params, f'train.init_from={path}',
                                   'set --config.model.* (and data.vocab_size / tokenizer) to match it')
  return params


def _check_config(config: ml_collections.ConfigDict):
  """Config values that would otherwise fail deep inside JAX, or late."""
  if config.data.seq_len > config.model.max_len:
    raise ValueError(f'data.seq_len={config.data.seq_len} exceeds model.max_len={config.model.max_len}; '
                     'lower --config.data.seq_len or raise --config.model.max_len')
  if config.train.batch_size % config.train.grad_accum_steps:
    raise ValueError(f'train.batch_size={config.train.batch_size} must divide by '
                     f'train.grad_accum_steps={config.train.grad_accum_steps}')
  if config.train.nonfinite not in ('stop', 'skip'):
    raise ValueError(f"train.nonfinite={config.train.nonfinite!r}: use 'stop' or 'skip'")


def _global_eval_batches(config, val_records, row_len: int, mesh) -> list[dict[str, jax.Array]]:
  """This process's share of the validation split, as global batches; equal counts on every process."""
  host_batch = config.train.batch_size // jax.process_count()
  batches = pipeline.eval_batches(val_records, row_len=row_len, batch_size=host_batch,
                                  max_batches=config.train.eval_batches or None,
                                  shard_index=jax.process_index(), shard_count=jax.process_count())
  if jax.process_count() > 1:  # every process must run the same number of eval steps (collectives)
    most = int(multihost_utils.process_allgather(np.asarray(len(batches))).max())
    batches = pipeline.pad_batches(batches, most, batch_size=host_batch, row_len=row_len)
  return [sharding.host_to_global(b, mesh) for b in batches]


def per_device_grads(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> bool:
  """Whether the train step sums the devices' gradients in one flat all-reduce
  (``steps._per_device_grads_and_metrics``): on CPU, for a data-parallel mesh, when the
  step draws no random numbers (next-token loss without dropout), and each device's rows
  split into the micro-batches."""
  dp = sharding.data_parallel_size(mesh)
  return (mesh.devices.flat[0].platform == 'cpu' and dp > 1 and dp == mesh.size
          and config.objective == 'clm' and config.model.dropout_rate == 0
          and config.train.batch_size % (dp * config.train.grad_accum_steps) == 0)


def jit_steps(config: ml_collections.ConfigDict, loss_fn, tx, shardings, mesh: jax.sharding.Mesh):
  """(train_fn, eval_fn): ``steps.train_step`` and ``steps.eval_step`` jitted with the state's
  shardings, the batch split over the data-parallel axes, and the state donated."""
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx, grad_accum_steps=config.train.grad_accum_steps,
                        per_device_grads=per_device_grads(config, mesh)),
      in_shardings=(shardings, batch_sharding, replicated), out_shardings=(shardings, replicated),
      donate_argnums=0)
  eval_fn = jax.jit(functools.partial(steps.eval_step, loss_fn=loss_fn),
                    in_shardings=(shardings.params, batch_sharding, replicated, replicated),
                    out_shardings=replicated)
  return train_fn, eval_fn


class OneStepAhead:
  """Lets the host run one training step ahead of the device, not more.

  ``push(outputs)`` right after dispatching step t waits for step t-1's outputs: one
  step stays queued behind the running one, which keeps the device busy. Deeper
  queues can deadlock XLA:CPU: its devices run their programs on one shared thread
  pool, and with several steps queued the pool's threads can all hold programs whose
  all-reduce waits for a device program that no free thread is left to run; the
  process aborts at XLA's 40 s rendezvous timeout (2 CPU devices, 100 back-to-back
  steps: 1 run in 6 aborted; one step ahead: 0 in 10; docs/perf_notes.md).
  """

  def __init__(self):
    self._previous = None

  def push(self, outputs):
    if self._previous is not None:
      jax.block_until_ready(self._previous)
    self._previous = outputs


@dataclasses.dataclass
class _Loop:
  """The step loop: dispatch step t, then read step t-1's metrics so the host never stalls the device."""
  config: ml_collections.ConfigDict
  state: state_lib.TrainState
  train_fn: object
  eval_fn: object
  train_iter: object
  eval_batches: list
  token_bytes_V: jax.Array
  ckpt: checkpoint_lib.Checkpointer
  writer: metrics_lib.MetricWriter
  schedule: object
  mesh: jax.sharding.Mesh
  is_main: bool
  flops_per_token: float
  peak_flops: float | None  # per device, for MFU
  workdir: str

  def run(self, start_step: int) -> dict[str, float]:
    cfg = self.config.train
    rng = jax.random.key(self.config.seed)
    tokens_per_step = cfg.batch_size * self.config.data.seq_len
    throughput = metrics_lib.Throughput(start_step)
    bar = metrics_lib.progress_bar(start_step, cfg.max_steps, self.is_main)
    pending, last_eval, queue = None, {}, OneStepAhead()
    self._nonfinite_before = int(jax.device_get(optim.nonfinite_count(self.state.opt_state)))
    self._tracing = False
    with sharding.activate(self.mesh), _StopRequest() as stop:
      for step in range(start_step + 1, cfg.max_steps + 1):
        self._profile(step)
        batch = sharding.host_to_global(next(self.train_iter), self.mesh)
        self.state, metrics = self.train_fn(self.state, batch, rng)
        queue.push(metrics)
        if pending is not None:
          # Step - 1 is finished (and step too where the dispatch ran it). Timed before reading the metrics:
          # on XLA:CPU that copy to the host waits behind the step now running.
          finished = step if all(x.is_ready() for x in jax.tree.leaves(metrics)) else step - 1
          self._write(*self._train_scalars(*pending, throughput.update(finished, tokens_per_step)), bar)
          pending = None
        if step % cfg.log_every == 0 or step == cfg.max_steps:
          pending = (step, metrics)
        bar.update(1)
        is_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
        if is_eval or self.ckpt.due(step) or stop.requested or step == cfg.stop_at:
          # The host runs ahead of the device: finish the queued training steps first, so
          # that only evaluation and checkpointing count as other work in tokens/s.
          jax.block_until_ready(self.state)
        other_work = time.perf_counter()
        if is_eval:
          # One metrics.jsonl record per step: this step's training scalars and the evaluation.
          scalars = self._train_scalars(*pending, throughput.update(step, tokens_per_step))[1] if pending else {}
          pending = None
          other_work = time.perf_counter()
          last_eval = evaluate_lib.evaluate(self.eval_fn, self.state.params, self.eval_batches,
                                            self.token_bytes_V)
          self._write(step, {**scalars, **last_eval}, bar)
          bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.4g}' for k, v in last_eval.items()))
        self.ckpt.save(step, self.state, self.train_iter, force=step == cfg.max_steps)
        if step == cfg.stop_at or self._stop_requested(step, stop):
          self.ckpt.save(step, self.state, self.train_iter, force=True)
          bar.write(f'stopped at step {step}; checkpoint saved. Run the same command again to resume.',
                    file=sys.stderr)
          break
        throughput.exclude(time.perf_counter() - other_work)
      if pending is not None:  # stopped early, after waiting for the state
        self._write(*self._train_scalars(*pending, throughput.update(pending[0], tokens_per_step)), bar)
      if self._tracing:  # the run ended inside the profiled window
        jax.profiler.stop_trace()
    bar.close()
    return last_eval

  def _profile(self, step: int):
    """A jax.profiler trace of steps profile_start .. profile_start + profile_steps - 1 (TensorBoard / Perfetto)."""
    first, count = self.config.train.profile_start, self.config.train.profile_steps
    if not first or step not in (first, first + count):
      return
    jax.block_until_ready(self.state)  # the trace holds exactly these steps' device work
    if step == first:
      jax.profiler.start_trace(os.path.join(self.workdir, 'profile'))
      self._tracing = True
    elif self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info('profiled steps %d-%d into %s/profile', first, step - 1, self.workdir)

  def _stop_requested(self, step: int, stop: _StopRequest) -> bool:
    """Ctrl-C / SIGTERM. With several processes all must stop at the same step: they agree
    at every log step (a small all-gather), so a signal to any one of them stops them all."""
    if jax.process_count() == 1:
      return stop.requested
    if step % self.config.train.log_every:
      return False
    return bool(multihost_utils.process_allgather(np.asarray(stop.requested)).any())

  def _train_scalars(self, step, metrics, tokens_per_sec):
    scalars = metrics_lib.summarize(jax.device_get(metrics))
    scalars['learning_rate'] = float(self.schedule(step - 1))
    scalars['tokens_per_sec'] = tokens_per_sec
    scalars.update(metrics_lib.flops_scalars(scalars['tokens_per_sec'], self.flops_per_token, self.mesh.size,
                                             self.peak_flops))
    return step, scalars

  def _write(self, step, scalars, bar):
    self.writer.write(step, scalars)
    if 'loss' in scalars:
      bar.set_postfix(loss=f"{scalars['loss']:.3f}", tok_s=f"{scalars['tokens_per_sec']:,.0f}", refresh=False)
    skipped = int(scalars.get('nonfinite_steps', 0)) - self._nonfinite_before
    if skipped > 0 and self.config.train.nonfinite == 'stop':
      # The bad updates were skipped, so the state (and every checkpoint) is still finite.
      raise ValueError(f'the loss or gradients were NaN/inf at {skipped} step(s) up to step {step}; those updates '
                       f'were skipped and training stopped without saving (last checkpoint: step '
                       f'{self.ckpt.latest_step()}). Lower --config.optim.learning_rate or raise warmup, or set '
                       '--config.train.nonfinite=skip to skip such steps and go on')
