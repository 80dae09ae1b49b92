"""lmjax vs karpathy/nanoGPT (PyTorch), side by side on this machine, in one invocation.

  python benchmarks/nanogpt_compare.py --nanogpt_dir=/tmp/nanogpt --preset=cpu
  python benchmarks/nanogpt_compare.py --nanogpt_dir=/tmp/nanogpt --preset=shakespeare_char
  python benchmarks/nanogpt_compare.py --nanogpt_dir=/tmp/nanogpt --preset=gpt2      # one GPU

Get a nanoGPT checkout outside this repository (its code is never copied here), e.g.
  git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt

Both train the same GPT shapes on the same character-level Tiny Shakespeare
(vocabulary = its 65 characters, first 90% train / last 10% validation, as
nanoGPT's data/shakespeare_char/prepare.py) from the same batches: batch ``i`` is
drawn from ``numpy.random.default_rng((seed, i))`` in each. nanoGPT runs its own
``model.py`` (``GPT``, ``GPTConfig``, ``configure_optimizers``) with the AdamW
settings, gradient clipping and warmup+cosine ``get_lr`` of its train.py;
lmjax runs its own training step (``lmjax.bench.build``: the one ``lmjax.train``
jits) with the same hyperparameters through its config.

Each runs in its own process and they take turns, ``--chunk`` iterations at a
time (benchmarks/interleave.py), so a change in machine load hits both alike.
With ``--same_init`` lmjax starts from nanoGPT's initial weights (the same
tensors, mapped onto its parameter tree), so that the validation losses differ
by the training alone, not by the luck of two random initializations.

Timing excludes evaluation and compilation (a first forward/backward pass
without an update). The table's ratio is nanoGPT time / lmjax time: above 1,
lmjax is faster.

Presets:
  cpu: nanoGPT README's CPU run (config/train_shakespeare_char.py with --device=cpu
       --compile=False --eval_iters=20 --block_size=64 --batch_size=12 --n_layer=4
       --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0),
       validation loss every 500 iterations.
  shakespeare_char: nanoGPT's default shapes (6 layers, 6 heads, d=384, block 256,
       batch 64); speed only, a few dozen iterations. lmjax takes the 64 rows as 16
       micro-batches (train.grad_accum_steps=16: the same update; on CPU smaller
       micro-batches keep their activations nearer the cores: 16 ran 1.07-1.09x
       faster than 8, and 8 1.58x faster than one batch of 64); nanoGPT runs its
       config as is (gradient_accumulation_steps=1). nanoGPT gains from micro-batches
       too: pass --nanogpt_accum=16 for the comparison at equal micro-batches
       (docs/perf_notes.md, 2026-12-02).
  gpt2: GPT-2 124M shapes (12 layers, 12 heads, d=768, block 1024, vocabulary 50,304
       as nanoGPT's train.py pads it; the characters use its first 65 ids) on one GPU, as
       nanoGPT's train.py runs there: batch 12, bf16 autocast, torch.compile, fused AdamW,
       TF32 matmuls; lmjax in bf16 with cuDNN attention. Speed only; the table adds each
       side's MFU: lmjax's model FLOPs per token (causal attention counted as computed,
       ``ModelConfig.flops_formula``) at the GPU's datasheet bf16 peak.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'tinyshakespeare.txt')
for _path in (REPO, os.path.join(REPO, 'benchmarks')):  # lmjax, configs/ and interleave, in the workers too
  if _path not in sys.path:
    sys.path.insert(0, _path)

import interleave  # pylint: disable=g-import-not-at-top,wrong-import-position

# nanoGPT's config/train_shakespeare_char.py with the README's CPU overrides (cpu), or as is (shakespeare_char).
PRESETS = {
    'cpu': dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, iters=2000, eval_every=500,
                eval_iters=20, lmjax_accum=1, nanogpt_accum=1),
    'shakespeare_char': dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, iters=24,
                             eval_every=0, eval_iters=0, lmjax_accum=16, nanogpt_accum=1),
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=12, iters=60, eval_every=0,
                 eval_iters=0, lmjax_accum=1, nanogpt_accum=1, vocab=50304, device='cuda', bf16=True,
                 compile=True, chunk=10),
}
# What a preset may leave out: nanoGPT's CPU run (character vocabulary, f32, eager, turns of 25 iterations).
DEFAULTS = dict(device='cpu', bf16=False, compile=False, chunk=25)
# Shared by both presets (train_shakespeare_char.py and nanoGPT train.py defaults).
OPTIM = dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.9, beta2=0.99, weight_decay=0.1,
             grad_clip=1.0)

def load_chars(path: str):
  """(train ids, val ids, vocab size) exactly as nanoGPT's shakespeare_char/prepare.py makes them."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  chars = sorted(set(text))
  lookup = np.zeros(max(map(ord, chars)) + 1, np.uint16)
  lookup[[ord(c) for c in chars]] = np.arange(len(chars))
  ids = lookup[np.frombuffer(text.encode('utf-32-le'), np.uint32)]
  split = int(len(ids) * 0.9)
  return ids[:split], ids[split:], len(chars)


def windows(data, seed_key, batch: int, block: int) -> np.ndarray:
  """[batch, block + 1] int64 windows at random offsets: inputs [:, :-1], targets [:, 1:]."""
  starts = np.random.default_rng(seed_key).integers(0, len(data) - block, batch)
  return np.stack([data[s:s + block + 1] for s in starts]).astype(np.int64)


def get_lr(it: int, iters_decay: int) -> float:
  """nanoGPT train.py's get_lr: linear warmup, cosine to min_lr at lr_decay_iters."""
  o = OPTIM
  if it < o['warmup_iters']:
    return o['learning_rate'] * (it + 1) / (o['warmup_iters'] + 1)
  if it > iters_decay:
    return o['min_lr']
  ratio = (it - o['warmup_iters']) / (iters_decay - o['warmup_iters'])
  return o['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o['learning_rate'] - o['min_lr'])


class _Data:
  """Both sides' batches: train batch ``it`` and the fixed validation batches, from the same seeds."""

  def __init__(self, spec: dict):
    self.train_ids, val_ids, _ = load_chars(spec['data'])
    self.spec = spec
    self.val = [windows(val_ids, (spec['seed'], 1, j), spec['batch_size'], spec['block_size'])
                for j in range(spec['eval_iters'])]

  def train(self, it: int) -> np.ndarray:
    return windows(self.train_ids, (self.spec['seed'], 0, it), self.spec['batch_size'], self.spec['block_size'])


def nanogpt_model(spec: dict):
  """(torch, nanoGPT's GPT) as its train.py builds it for ``spec``: seeded, bias=False."""
  if spec['nanogpt_dir'] not in sys.path:
    sys.path.insert(0, spec['nanogpt_dir'])
  import torch  # pylint: disable=g-import-not-at-top
  from model import GPT, GPTConfig  # pylint: disable=g-import-not-at-top  (nanoGPT's model.py)
  torch.manual_seed(spec['init_seed'])
  return torch, GPT(GPTConfig(block_size=spec['block_size'], vocab_size=spec['vocab'], n_layer=spec['n_layer'],
                              n_head=spec['n_head'], n_embd=spec['n_embd'], dropout=spec['dropout'], bias=False))


def nanogpt_init_params(spec: dict) -> dict:
  """nanoGPT's initial weights for ``spec`` (the same seed, so the very tensors its runner starts from) as an
  lmjax params tree. torch's Linear stores [out, in]; c_attn is query, key and value stacked."""
  _, model = nanogpt_model(spec)
  w = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  D, H = spec['n_embd'], spec['n_head']
  heads = lambda x: x.T.reshape(D, H, D // H)  # [D out, D in] -> [D in, H, K]
  ln = lambda name: {'layernorm': {'scale': w[name + '.weight']}}
  params = {'token_embed': w['transformer.wte.weight'], 'pos_embed': w['transformer.wpe.weight'],
            'final_norm': ln('transformer.ln_f')}
  for i in range(spec['n_layer']):
    p = f'transformer.h.{i}.'
    q, k, v = np.split(w[p + 'attn.c_attn.weight'], 3)
    params[f'block_{i}'] = {
        'attn_norm': ln(p + 'ln_1'), 'mlp_norm': ln(p + 'ln_2'),
        'attn': {'query': {'kernel': heads(q)}, 'key': {'kernel': heads(k)}, 'value': {'kernel': heads(v)},
                 'out': {'kernel': w[p + 'attn.c_proj.weight'].T.reshape(H, D // H, D)}},
        'mlp': {'wi': {'kernel': w[p + 'mlp.c_fc.weight'].T}, 'wo': {'kernel': w[p + 'mlp.c_proj.weight'].T}}}
  return params


class NanoGPT:
  """nanoGPT's model, optimizer and training iteration as in its train.py (CPU: no autocast, no scaler; with
  --bf16, its forward passes under torch.autocast(dtype=bfloat16), as train.py runs on a GPU with dtype='bfloat16';
  on a GPU also TF32 matmuls and its fused AdamW, which configure_optimizers picks for device_type 'cuda')."""

  def __init__(self, spec: dict):
    self.spec, self.data = spec, _Data(spec)
    torch, self.model = nanogpt_model(spec)
    self.torch, self.device = torch, spec['device']
    if self.device == 'cuda':
      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as its train.py
    self.model.to(self.device)
    self.optimizer = self.model.configure_optimizers(OPTIM['weight_decay'], OPTIM['learning_rate'],
                                                     (OPTIM['beta1'], OPTIM['beta2']), self.device)
    forward = torch.compile(self.model) if spec['compile'] else self.model
    if spec['bf16']:
      def autocast_forward(*args):
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16):
          return forward(*args)
      self.forward = autocast_forward
    else:
      self.forward = forward
    where = torch.cuda.get_device_name() if self.device == 'cuda' else f'{torch.get_num_threads()} threads'
    self.version = f'torch {torch.__version__}, {where}'

  def warm_up(self):
    """One forward/backward (torch.compile compiles here), then the gradients are dropped: no update."""
    _, loss = self.forward(*self._xy(self.data.train(0)))
    loss.backward()
    self.optimizer.zero_grad(set_to_none=True)

  def train(self, it: int):
    for group in self.optimizer.param_groups:
      group['lr'] = get_lr(it, self.spec['lr_decay_iters'])
    accum = self.spec['nanogpt_accum']  # train.py's gradient_accumulation_steps loop
    for micro in np.split(self.data.train(it), accum):
      _, loss = self.forward(*self._xy(micro))
      (loss / accum).backward()
    interleave.torch_update(self.model, self.optimizer, OPTIM['grad_clip'])
    return loss

  def finish(self, loss) -> float:
    return float(loss.item())

  def evaluate(self) -> float:
    self.model.eval()
    with self.torch.no_grad():
      losses = [float(self.forward(*self._xy(w))[1].item()) for w in self.data.val]
    self.model.train()
    return float(np.mean(losses))

  def _xy(self, window):
    window = self.torch.from_numpy(window)
    x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    if self.device == 'cuda':  # as its train.py's get_batch
      x, y = (t.pin_memory().to(self.device, non_blocking=True) for t in (x, y))
    return x, y


def lmjax_config(spec: dict):
  """configs/nanogpt.py (nanoGPT's bias=False model and optimizer: the same 804,096 parameters at the cpu
  preset, with nanoGPT's 65-character vocabulary) at the spec's shapes, schedule, seed and dtype."""
  from configs import nanogpt  # pylint: disable=g-import-not-at-top
  c = nanogpt.get_config('cpu')
  m = c.model
  m.num_layers, m.embed_dim, m.num_heads = spec['n_layer'], spec['n_embd'], spec['n_head']
  m.mlp_dim, m.max_len, m.dropout_rate = 4 * spec['n_embd'], spec['block_size'], spec['dropout']
  c.data.seq_len, c.data.vocab_size = spec['block_size'], spec['vocab']
  c.train.batch_size, c.train.max_steps, c.seed = spec['batch_size'], spec['iters'], spec['init_seed']
  c.train.grad_accum_steps, c.optim.schedule_steps = spec['lmjax_accum'], spec['lr_decay_iters']
  o = c.optim  # nanoGPT's side takes OPTIM: the two must not drift apart
  assert (o.learning_rate, o.learning_rate * o.min_lr_ratio, o.warmup_steps, o.b1, o.b2, o.weight_decay,
          o.clip_norm) == tuple(OPTIM[k] for k in ('learning_rate', 'min_lr', 'warmup_iters', 'beta1', 'beta2',
                                                   'weight_decay', 'grad_clip')), 'configs/nanogpt.py != OPTIM'
  if spec['bf16']:
    m.dtype = 'bfloat16'
  if spec['device'] == 'cuda':
    m.attention_impl = 'cudnn'
  for override in spec['lmjax']:
    apply_override(c, override)
  return c


def apply_override(config, override: str):
  """``'model.remat=full'`` onto a ConfigDict, parsed as the key's type."""
  key, _, value = override.partition('=')
  *path, leaf = key.split('.')
  node = config
  for p in path:
    node = node[p]
  node[leaf] = value.lower() in ('1', 'true') if isinstance(node[leaf], bool) else type(node[leaf])(value)


class Lmjax(interleave.LmjaxRunner):
  """lmjax's jitted training step (lmjax.bench.build), fed the same windows as packed single-segment rows."""

  def __init__(self, spec: dict):
    super().__init__(lmjax_config(spec))
    self.data = _Data(spec)
    jax = self.jax
    if spec['same_init']:  # nanoGPT's initial weights, placed as lmjax's own were
      params = nanogpt_init_params(spec)
      if jax.tree.structure(params) != jax.tree.structure(self.state.params):
        raise ValueError("--same_init: nanoGPT's weights do not map onto this lmjax model; drop the --lmjax "
                         'overrides that change its parameters')
      self.state = self.state.replace(params=jax.tree.map(
          lambda old, new: jax.device_put(new, old.sharding), self.state.params, params))
    self.token_bytes_V = jax.numpy.ones((spec['vocab'],), jax.numpy.int32)

  def rows(self, it: int) -> np.ndarray:
    return self.data.train(it)

  def warm_up(self):
    """Compiles the step and the eval step ahead of time; nothing is updated."""
    super().warm_up()
    with self.sharding.activate(self.setup.mesh):
      self.eval_fn = self.setup.eval_fn.lower(self.state.params, self.batch(self.rows(0)), 0,
                                              self.token_bytes_V).compile()

  def evaluate(self) -> float:
    sums = [self.jax.device_get(self.eval_fn(self.state.params, self.batch(w), i, self.token_bytes_V)['loss'])
            for i, w in enumerate(self.data.val)]
    return float(sum(s for s, _ in sums) / sum(c for _, c in sums))


def add_rates(spec: dict, results: dict):
  """Each side's tokens/s and, where lmjax's worker found a datasheet peak (an accelerator), its MFU: the same
  model FLOPs per token (lmjax's count) over that peak, on one device for nanoGPT's runner and on all the
  devices JAX found for lmjax's."""
  tokens = spec['iters'] * spec['batch_size'] * spec['block_size']
  info = results['lmjax']['info']
  for name in ('nanogpt', 'lmjax'):
    results[name]['tokens_per_sec'] = tokens / results[name]['train_s']
    if info.get('peak_flops_per_device'):
      results[name]['mfu'] = (results[name]['tokens_per_sec'] * info['flops_per_token']
                              / info['peak_flops_per_device'] / (info['devices'] if name == 'lmjax' else 1))


def table(spec: dict, results: dict) -> str:
  n, j = results['nanogpt'], results['lmjax']
  rows = [('ms/iteration (mean)', n['ms_per_iter'], j['ms_per_iter'], n['ms_per_iter'] / j['ms_per_iter']),
          ('ms/iteration (median chunk)', n['median_chunk_ms_per_iter'], j['median_chunk_ms_per_iter'],
           n['median_chunk_ms_per_iter'] / j['median_chunk_ms_per_iter']),
          ('tokens/s', n['tokens_per_sec'], j['tokens_per_sec'], j['tokens_per_sec'] / n['tokens_per_sec'])]
  if 'mfu' in j:
    rows.append(('MFU (%)', 100 * n['mfu'], 100 * j['mfu'], j['mfu'] / n['mfu']))
  for it in sorted(n['val_loss']):
    rows.append((f'val loss @ {it}', n['val_loss'][it], j['val_loss'][it], None))
  init = "nanoGPT's weights" if spec['same_init'] else 'its own draw'
  lines = [f"{spec['preset']}: {spec['n_layer']} layers, {spec['n_head']} heads, d={spec['n_embd']}, "
           f"block {spec['block_size']}, batch {spec['batch_size']}, {spec['iters']} iterations, "
           f"dropout {spec['dropout']}, {'bf16 compute' if spec['bf16'] else 'f32'}, "
           f"vocabulary {spec['vocab']}, nanoGPT compile={spec['compile']}, micro-batches "
           f"per step: nanoGPT {spec['nanogpt_accum']}, lmjax {spec['lmjax_accum']}; seed {spec['seed']}, init seed "
           f"{spec['init_seed']}, lmjax init: {init}",
           f"| {'':28s} | {'nanoGPT':>10s} | {'lmjax':>10s} | {'lmjax/nanoGPT':>13s} |",
           f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 15}|"]
  for name, a, b, ratio in rows:
    fmt = '.4f' if 'loss' in name else ',.1f'
    lines.append(f"| {name:28s} | {a:>10{fmt}} | {b:>10{fmt}} | {'' if ratio is None else f'{ratio:.2f}x':>13s} |")
  lines.append(f"nanoGPT: {n['version']}; lmjax: {j['version']}; {interleave.load_note(results)}")
  if 'mfu' in j:
    info = j['info']
    lines.append(f"MFU: both sides' tokens/s x {info['flops_per_token'] / 1e6:,.1f} MFLOP/token ("
                 f"{info['flops_formula']}) / {info['peak_flops_per_device'] / 1e12:,.0f} TFLOP/s per device "
                 f"({info['peak_source']}) / devices (nanoGPT 1, lmjax {info['devices']})")
  return '\n'.join(lines)


def _define_flags():
  """Flags exist only in the main process: the workers import this module to find their runner."""
  flags.DEFINE_string('nanogpt_dir', None, 'A karpathy/nanoGPT checkout (holds model.py).')
  flags.DEFINE_enum('preset', 'cpu', list(PRESETS), 'Model shapes and run length.')
  flags.DEFINE_integer('iters', None, "Training iterations (default: the preset's).")
  flags.DEFINE_integer('eval_every', None, 'Iterations between validation losses; 0 = none.')
  flags.DEFINE_integer('eval_iters', None, 'Validation batches per evaluation (the same for both).')
  flags.DEFINE_integer('lr_decay_iters', 2000, 'End of the cosine (nanoGPT lr_decay_iters).')
  flags.DEFINE_integer('lmjax_accum', None, "lmjax's train.grad_accum_steps (default: the preset's): the same "
                       'update from micro-batches, whose activations stay in cache on CPU.')
  flags.DEFINE_integer('nanogpt_accum', None, "nanoGPT's gradient_accumulation_steps (default: 1, its config's).")
  flags.DEFINE_float('max_wait', 60.0, 'Seconds each turn may wait for other processes to leave the CPU idle.')
  flags.DEFINE_integer('chunk', None, "Iterations a worker runs before the other takes its turn (default: the "
                       "preset's, else 25).")
  flags.DEFINE_integer('batch_size', None, "Rows per iteration (default: the preset's).")
  flags.DEFINE_enum('device', None, ['cpu', 'cuda'], "Where nanoGPT trains (default: the preset's); lmjax "
                    'trains on the devices JAX finds.')
  flags.DEFINE_float('dropout', 0.0, 'Dropout in both (lmjax has no attention-probability dropout).')
  flags.DEFINE_bool('compile', None, "torch.compile nanoGPT's model (default: the preset's; its CPU run does "
                    'not).')
  flags.DEFINE_bool('bf16', None, "bf16 compute in both: nanoGPT under torch.autocast(bfloat16), lmjax "
                    "model.dtype='bfloat16' (f32 weights and optimizer in both). Default: the preset's.")
  flags.DEFINE_integer('seed', 1337, "Batch-order seed (and both models' init seed unless --init_seed).")
  flags.DEFINE_integer('init_seed', None, "Both models' init seed (torch.manual_seed, lmjax's config.seed); "
                       'default --seed. Several init seeds on one batch order tell the init draw from the data.')
  flags.DEFINE_bool('same_init', False, "lmjax starts from nanoGPT's initial weights (not its own draw): "
                    'what is left between the two is the training itself.')
  flags.DEFINE_multi_string('lmjax', [], 'Extra lmjax config overrides, e.g. model.remat=full.')
  flags.DEFINE_string('data', DATA, 'Tiny Shakespeare text.')
  flags.DEFINE_string('json', None, 'Results file; default benchmarks/results/nanogpt_<preset>.json.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.nanogpt_dir or not os.path.exists(os.path.join(f.nanogpt_dir, 'model.py')):
    raise app.UsageError('--nanogpt_dir must be a karpathy/nanoGPT checkout (with model.py)')
  spec = dict(DEFAULTS, vocab=load_chars(f.data)[2])
  spec.update(PRESETS[f.preset], preset=f.preset, nanogpt_dir=os.path.abspath(f.nanogpt_dir), data=f.data,
              dropout=f.dropout, seed=f.seed, lmjax=list(f.lmjax), lr_decay_iters=f.lr_decay_iters,
              same_init=f.same_init, init_seed=f.seed if f.init_seed is None else f.init_seed)
  for key in ('iters', 'eval_every', 'eval_iters', 'lmjax_accum', 'nanogpt_accum', 'chunk', 'batch_size', 'device',
              'compile', 'bf16'):
    if f[key].value is not None:
      spec[key] = f[key].value
  if spec['device'] == 'cuda':
    import torch  # pylint: disable=g-import-not-at-top  (the check only; the workers train)
    if not torch.cuda.is_available():
      raise app.UsageError(f'--preset={f.preset} trains nanoGPT on a GPU, and torch sees none here; run it where '
                           'one is (benchmarks/gpu_check.sh) or pass --device=cpu')
  def on_eval(it, results):
    print(f"iter {it}: val loss nanoGPT {results['nanogpt']['val_loss'][it]:.4f}, "
          f"lmjax {results['lmjax']['val_loss'][it]:.4f}", flush=True)
  results = interleave.compare({'nanogpt': 'nanogpt_compare:NanoGPT', 'lmjax': 'nanogpt_compare:Lmjax'}, spec,
                               iters=spec['iters'], chunk=spec['chunk'], eval_every=spec['eval_every'],
                               on_eval=on_eval, max_wait=f.max_wait,
                               environ={'lmjax': interleave.lmjax_environ(lmjax_config(spec))})
  add_rates(spec, results)
  print(table(spec, results))
  path = f.json or os.path.join(REPO, 'benchmarks', 'results', f'nanogpt_{f.preset}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  for name in ('nanogpt', 'lmjax'):
    del results[name]['chunk_ms']  # keep the file small
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'spec': spec, 'results': results, **interleave.run_record(sys.argv)}, f, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
