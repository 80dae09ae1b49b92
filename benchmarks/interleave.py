"""Run two trainers side by side, each in its own process, taking turns: a fair timing on a shared machine.

Each framework gets its own worker process: two thread pools in one process fight
for the cores (PyTorch's OpenMP threads ran 10x slower next to XLA's on 2 cores).
The workers take turns, ``chunk`` iterations at a time, so a change in machine
load hits both alike; the first in each turn alternates, and each turn waits
(a while) for other processes to leave the CPU idle. Timing excludes
evaluation and each runner's ``warm_up`` (compilation).

A runner is a class ``Runner(spec)`` named ``'module:Class'`` (importable in a
fresh process) with ``warm_up()``, ``train(it) -> handle`` (may be
asynchronous), ``finish(handle) -> loss`` (waits for the device) and
``evaluate() -> loss``; optionally ``wait(handle)``, called on step ``it - 1``'s
handle once step ``it`` is dispatched; optionally ``info``, a dict the results keep.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import time

import numpy as np


def _worker(target: str, spec: dict, conn):
  """Answers ('train', first, count) with (seconds, loss) and ('eval',) with a loss, until ('stop',)."""
  module, name = target.split(':')
  runner = getattr(importlib.import_module(module), name)(spec)
  start = time.perf_counter()
  runner.warm_up()
  conn.send(('ready', getattr(runner, 'version', ''), getattr(runner, 'info', {}), time.perf_counter() - start))
  while True:
    message = conn.recv()
    if message[0] == 'train':
      _, first, count = message
      start = time.perf_counter()
      wait, previous = getattr(runner, 'wait', None), None
      for it in range(first, first + count):
        handle = runner.train(it)
        if wait and previous is not None:
          wait(previous)  # one step queued at most, as lmjax.train's loop (deeper queues can deadlock XLA:CPU)
        previous = handle
      loss = runner.finish(handle)  # the chunk's time includes waiting for its last step
      conn.send((time.perf_counter() - start, loss))
    elif message[0] == 'eval':
      conn.send(runner.evaluate())
    else:
      return


@contextlib.contextmanager
def extra_environ(extra: dict[str, str]):
  """``os.environ`` with ``extra`` set for the duration (a spawned worker inherits it when it starts)."""
  saved = {k: os.environ.get(k) for k in extra}
  os.environ.update(extra)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def lmjax_environ(config) -> dict[str, str]:
  """The environment a ``python -m lmjax.main`` run of ``config`` trains in (``hostmem``'s restart)."""
  from lmjax import hostmem  # pylint: disable=g-import-not-at-top
  return hostmem.hugepages_environ(config)


def _idle_fraction(seconds: float) -> float | None:
  """Share of CPU time idle over ``seconds`` (Linux /proc/stat), or None where unknown."""
  def sample():
    with open('/proc/stat', encoding='ascii') as f:
      values = [int(v) for v in f.readline().split()[1:9]]
    return values[3] + values[4], sum(values)  # idle + iowait, total
  try:
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
  except OSError:
    return None
  return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.8) -> bool:
  """Waits (up to ``max_wait`` s) until other processes leave the CPU mostly idle; True if they did.

  Between turns both workers are blocked, so any load seen here is someone else's:
  a turn taken under it would be timed unfairly (PyTorch's OpenMP threads slow down
  far more than XLA's when a core is taken away).
  """
  deadline = time.monotonic() + max_wait
  while True:
    idle = _idle_fraction(0.3)
    if idle is None or idle >= threshold:
      return True
    if time.monotonic() > deadline:
      return False


def _recv(proc, conn):
  """The worker's next message; a worker that died is an error here, not a hang."""
  while not conn.poll(1.0):
    if not proc.is_alive():
      raise RuntimeError(f'the {proc.name} worker exited with code {proc.exitcode}; its error is above')
  return conn.recv()


def cpu_name() -> str:
  """The processor, as /proc/cpuinfo names it (vendor, family, model; the ratios move with it), else platform's."""
  import platform  # pylint: disable=g-import-not-at-top
  info = {}
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        key, _, value = line.partition(':')
        info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  if 'model name' not in info:
    return platform.processor() or platform.machine()
  return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def run_record(argv: list[str]) -> dict:
  """What a results file says of its run: the command line (a checkout's path as NANOGPT, the --json file by
  name, so the line reads the same on any machine), the processor, its CPU count and the date."""
  def clean(arg: str) -> str:
    if arg.startswith('--nanogpt_dir='):
      return '--nanogpt_dir=NANOGPT'
    if arg.startswith('--json='):
      return '--json=' + os.path.basename(arg.split('=', 1)[1])
    return arg
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.relpath(os.path.abspath(argv[0]), repo)  # as run from the repository's root
  return {'command': ' '.join(['python', script] + [clean(a) for a in argv[1:]]),
          'machine': cpu_name(), 'cpus': os.cpu_count(), 'date': time.strftime('%Y-%m-%d')}


def compare(targets: dict[str, str], spec: dict, *, iters: int, chunk: int, eval_every: int = 0,
            on_eval=None, max_wait: float = 60.0, environ: dict[str, dict[str, str]] | None = None) -> dict:
  """Trains every target for ``iters`` iterations in turns; returns timings, losses and the machine load.

  Before each turn waits up to ``max_wait`` s for the CPU to be idle (0: never waits). ``environ``:
  extra environment variables of a target's worker, set when it starts (lmjax's huge-page tunable,
  which ``lmjax.main`` gives a training run: ``lmjax_environ``).
  """
  ctx = mp.get_context('spawn')
  workers = {}
  for name, target in targets.items():
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(target, spec, child), name=name, daemon=True)
    with extra_environ((environ or {}).get(name, {})):
      proc.start()
    workers[name] = (proc, parent)
  results = {}
  for name, (proc, conn) in workers.items():
    _, version, info, setup_s = _recv(proc, conn)
    results[name] = {'version': version, 'info': info, 'setup_s': setup_s, 'train_s': 0.0, 'chunk_ms': [],
                     'val_loss': {}, 'train_loss': {}}
  load_before = os.getloadavg()
  it, order, busy_turns = 0, list(workers), 0
  while it < iters:
    count = min(chunk, iters - it)
    if eval_every:
      count = min(count, eval_every - it % eval_every)
    for name in order:
      proc, conn = workers[name]
      if max_wait and not wait_for_idle(max_wait):
        busy_turns += 1
      conn.send(('train', it, count))
      seconds, loss = _recv(proc, conn)
      r = results[name]
      r['train_s'] += seconds
      r['chunk_ms'].append(1e3 * seconds / count)
      r['train_loss'][it + count] = loss
    order.reverse()
    it += count
    if eval_every and (it % eval_every == 0 or it == iters):
      for name in order:
        proc, conn = workers[name]
        conn.send(('eval',))
        results[name]['val_loss'][it] = _recv(proc, conn)
      if on_eval:
        on_eval(it, results)
  for proc, conn in workers.values():
    conn.send(('stop',))
    proc.join()
  for r in results.values():
    r['ms_per_iter'] = 1e3 * r['train_s'] / iters
    r['median_chunk_ms_per_iter'] = float(np.median(r['chunk_ms']))
  results['_load'] = {'loadavg_before': load_before, 'loadavg_after': os.getloadavg(), 'cpus': os.cpu_count(),
                      'turns': len(results[order[0]]['chunk_ms']) * len(workers), 'turns_under_load': busy_turns,
                      'max_wait_s': max_wait}
  return results


class LmjaxRunner:
  """What the lmjax runners share: ``lmjax.bench.build``'s training step (the one ``lmjax.train`` jits),
  fed rows as single packed segments. A subclass gives ``rows(it)``, the [batch, row_len] tokens of
  iteration ``it``; ``config.data.vocab_size`` and ``config.seed`` say the rest. ``info``: the model FLOPs
  per token (``lmjax.bench``'s count) and, on an accelerator, its datasheet peak, for MFU."""

  def __init__(self, config):
    import jax  # pylint: disable=g-import-not-at-top  (only the lmjax workers need it)
    from lmjax import bench, metrics, sharding, train  # pylint: disable=g-import-not-at-top
    self.jax, self.sharding, self.config = jax, sharding, config
    sharding.split_cpu_for(config)  # as lmjax.main and lmjax.bench do
    self.setup = bench.build(config, config.data.vocab_size)
    self.state, self.rng = self.setup.state, jax.random.key(config.seed)
    device = self.setup.mesh.devices.flat[0]
    self.version = f'jax {jax.__version__}, {self.setup.mesh.size} {device.device_kind} device(s)'
    flops_per_token, flops_formula = train.model_flops(config, self.setup.model_cfg)
    self.info = {'flops_per_token': flops_per_token, 'flops_formula': flops_formula,
                 'peak_flops_per_device': metrics.peak_flops(device), 'devices': self.setup.mesh.size,
                 'peak_source': f'datasheet, {device.device_kind}'}

  def rows(self, it: int) -> np.ndarray:
    raise NotImplementedError

  def batch(self, tokens) -> dict:
    """[batch, row_len] tokens as a global batch of one-segment rows."""
    tokens = tokens.astype(np.int32)
    host = {'tokens': tokens, 'segment_ids': np.ones_like(tokens),
            'positions': np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape).copy()}
    return self.sharding.host_to_global(host, self.setup.mesh)

  def warm_up(self):
    """Compiles the step ahead of time; nothing is updated."""
    with self.sharding.activate(self.setup.mesh):  # the model's logical constraints resolve at tracing
      self.train_fn = self.setup.train_fn.lower(self.state, self.batch(self.rows(0)), self.rng).compile()

  def train(self, it: int):
    # The learning rate follows the state's step; the host runs ahead of the device.
    self.state, metrics = self.train_fn(self.state, self.batch(self.rows(it)), self.rng)
    return metrics['loss']

  def wait(self, loss):
    self.jax.block_until_ready(loss)

  def finish(self, loss) -> float:
    loss_sum, count = self.jax.device_get(loss)
    return float(loss_sum / count)

  def evaluate(self) -> float:
    return float('nan')


def torch_update(model, optimizer, clip: float):
  """The end of a PyTorch runner's iteration, as nanoGPT and HF Trainer do it: clip, step, drop the grads."""
  import torch  # pylint: disable=g-import-not-at-top  (only the PyTorch workers need it)
  torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)


def load_note(results: dict) -> str:
  """One line on the machine's load during the run: other processes' work slows both sides unevenly."""
  load = results['_load']
  before, after = load['loadavg_before'][0], load['loadavg_after'][0]
  note = f"load average {before:.1f} before, {after:.1f} after, on {load['cpus']} CPUs; "
  if not load['max_wait_s']:
    return note + 'idle CPU not checked before turns (--max_wait=0)'
  note += f"{load['turns_under_load']} of {load['turns']} turns started with other work running"
  if load['turns_under_load']:
    note += ' (timings noisy: PyTorch suffers more under oversubscription)'
  return note
