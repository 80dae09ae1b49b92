"""Each CPU speed change in lmjax, measured by turning it off alone: docs/perf_notes.md's table.

  python benchmarks/ablations.py --shapes=nanogpt_cpu      # 4 layers, d=128, block 64, batch 12
  python benchmarks/ablations.py --shapes=shakespeare_char  # 6 layers, d=384, block 256, batch 64
  python benchmarks/ablations.py --shapes=bert_mini         # MLM, 4 layers, d=256, seq 128, batch 32, vocab 30522

Every variant runs ``lmjax.bench.run`` (the training step ``lmjax.train`` jits) in
a fresh process (the CPU device count is fixed when JAX starts), in rounds, so a
change in machine load hits all variants alike; the table gives each variant's
best round (median step time within the round) and its ratio to lmjax as it is.
A variant restores the plain code path it replaced, by patching lmjax in that
process only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
import interleave  # pylint: disable=g-import-not-at-top,wrong-import-position  (benchmarks/, the script's dir)

SHAPES = {
    'nanogpt_cpu': dict(objective='clm', layers=4, dim=128, heads=4, seq=64, batch=12, vocab=65, accum=1),
    'shakespeare_char': dict(objective='clm', layers=6, dim=384, heads=6, seq=256, batch=64, vocab=65, accum=16),
    'bert_mini': dict(objective='mlm', layers=4, dim=256, heads=4, seq=128, batch=32, vocab=30522, accum=1),
}

# name -> (what it turns off, the plain alternative)
VARIANTS = {
    'lmjax': 'every speed change on (as shipped)',
    'one_cpu_device': 'mesh.cpu_devices=1: one JAX device whose ops use both cores (no per-core data parallel)',
    'no_hugepages': "mesh.cpu_hugepages=False: XLA:CPU's step buffers on 4 KiB pages, faulted in every step "
                    '(lmjax/hostmem.py)',
    'einsum_linear': 'Linear as jnp.einsum over 3-D operands, not one 2-D matmul',
    'eigen_weight_grads': "Linear's weight gradient as XLA folds it (an Eigen dot), not layers._cpu_matmul's",
    'xla_grad_allreduce': "gradients all-reduced as XLA's partitioner does (one buffer per parameter), not "
                          'summed per device in one flat all-reduce (train.per_device_grads)',
    'jax_gelu': 'exact GELU through jax.nn.gelu (erfc), not erf',
    'full_attention': "attention_impl='xla': the full L x L causal scores (no key-block skipping)",
    'full_mlm_head': 'masked-LM output head at every position, not only the selected ones',
    'no_accum': 'train.grad_accum_steps=1: one big batch, not micro-batches',
    # Not speed changes of lmjax but probes of one that was tried (run them with --variants=...):
    'flat_adamw': 'probe: AdamW on one flattened parameter vector (optax.flatten), not per leaf',
    'sgd_update': "probe: plain SGD (no AdamW moments, decay or clipping): what the optimizer costs at most",
}
PROBES = ('flat_adamw', 'sgd_update')


def config_for(shape: dict, variant: str):
  """The block the peers are compared on at ``shape``: nanoGPT's bias=False one from configs/nanogpt.py, or
  BERT's from benchmarks/bert_compare.py."""
  if shape['objective'] == 'mlm':
    import bert_compare  # pylint: disable=g-import-not-at-top  (benchmarks/, the script's dir)
    c = bert_compare.lmjax_config(dict(layers=shape['layers'], dim=shape['dim'], heads=shape['heads'],
                                       mlp=4 * shape['dim'], seq=shape['seq'], vocab=shape['vocab'],
                                       batch=shape['batch'], lmjax_accum=shape['accum'], seed=0))
  else:
    from configs import nanogpt  # pylint: disable=g-import-not-at-top
    c = nanogpt.get_config('cpu')
    m = c.model
    m.num_layers, m.embed_dim, m.num_heads = shape['layers'], shape['dim'], shape['heads']
    m.mlp_dim, m.max_len = 4 * shape['dim'], shape['seq']
    c.data.seq_len, c.data.vocab_size, c.train.batch_size = shape['seq'], shape['vocab'], shape['batch']
  c.train.grad_accum_steps = 1 if variant == 'no_accum' else shape['accum']
  if variant == 'one_cpu_device':
    c.mesh.cpu_devices = 1
  if variant == 'full_attention':
    c.model.attention_impl = 'xla'
  if variant == 'no_hugepages':
    c.mesh.cpu_hugepages = False
  return c


def _patch(variant: str):
  """Puts back the plain code path that ``variant`` names, in this process."""
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lmjax import objectives  # pylint: disable=g-import-not-at-top
  from lmjax.models import layers  # pylint: disable=g-import-not-at-top
  from lmjax import train  # pylint: disable=g-import-not-at-top
  if variant == 'einsum_linear':
    layers._flat_matmul = jnp.einsum  # pylint: disable=protected-access
  elif variant == 'eigen_weight_grads':
    layers._cpu_matmul = jnp.matmul  # pylint: disable=protected-access
  elif variant == 'xla_grad_allreduce':
    train.per_device_grads = lambda config, mesh: False
  elif variant == 'jax_gelu':
    layers.gelu = lambda x, approximate: nn.gelu(x, approximate=approximate)
  elif variant in PROBES:
    _patch_optimizer(variant)
  elif variant == 'full_mlm_head':
    plain = objectives.loss_fn
    objectives.loss_fn = lambda objective, masking=None: (
        functools.partial(objectives.masked_lm_loss, masking=masking, selected_only=False)
        if objective == 'mlm' else plain(objective, masking))


def _patch_optimizer(variant: str):
  import optax  # pylint: disable=g-import-not-at-top
  from lmjax import optim  # pylint: disable=g-import-not-at-top
  plain = optim.make_optimizer

  def make(**kw):
    tx, schedule = plain(**kw)
    if variant == 'sgd_update':
      tx = optim.skip_nonfinite(optax.sgd(schedule))  # keeps the skip and its counter
    else:
      decay = optax.add_decayed_weights(kw['weight_decay'], lambda p: optim.decay_mask(p, kw['decay_embeddings']))
      flat = optax.flatten(optax.chain(optax.clip_by_global_norm(kw['clip_norm']),
                                       optax.scale_by_adam(b1=kw['b1'], b2=kw['b2'], eps=kw['eps'])))
      tx = optim.skip_nonfinite(optax.chain(flat, decay, optax.scale_by_learning_rate(schedule)))
    return tx, schedule
  optim.make_optimizer = make


def _worker(shape: dict, variant: str, steps: int, conn):
  from lmjax import bench, sharding  # pylint: disable=g-import-not-at-top
  config = config_for(shape, variant)
  sharding.split_cpu_for(config)
  _patch(variant)
  r = bench.run(config, steps_=steps, warmup=2)
  conn.send({k: r[k] for k in ('step_time_s', 'tokens_per_sec', 'mfu', 'num_devices', 'peak_source',
                               'flops_per_token', 'compile_time_s', 'last_loss')})


def measure(shape: dict, variant: str, steps: int) -> dict:
  ctx = mp.get_context('spawn')
  parent, child = ctx.Pipe()
  proc = ctx.Process(target=_worker, args=(shape, variant, steps, child))
  with interleave.extra_environ(interleave.lmjax_environ(config_for(shape, variant))):  # as lmjax.main trains
    proc.start()
  result = parent.recv()
  proc.join()
  return result


def _define_flags():
  """Flags exist only when this script is the program, so benchmarks/alternate.py can import it."""
  flags.DEFINE_enum('shapes', 'nanogpt_cpu', list(SHAPES), 'Model and batch shapes.')
  flags.DEFINE_list('variants', None, f'Variants to run (default: those that apply): {", ".join(VARIANTS)}')
  flags.DEFINE_integer('steps', 20, 'Timed steps per round.')
  flags.DEFINE_integer('rounds', 2, 'Rounds over the variants (the best is kept).')
  flags.DEFINE_string('json', None, 'Results file (default benchmarks/results/ablations_<shapes>.json).')


def main(argv):
  del argv
  f = flags.FLAGS
  shape = SHAPES[f.shapes]
  applies = {'full_attention': shape['objective'] == 'clm', 'full_mlm_head': shape['objective'] == 'mlm',
             'xla_grad_allreduce': shape['objective'] == 'clm',
             'no_accum': shape['accum'] > 1}
  variants = f.variants or [v for v in VARIANTS if applies.get(v, True) and v not in PROBES]
  best = {}
  for round_ in range(f.rounds):
    for variant in variants if round_ % 2 == 0 else variants[::-1]:
      r = measure(shape, variant, f.steps)
      print(f"round {round_}: {variant:18s} {1e3 * r['step_time_s']:8.1f} ms/step", flush=True)
      if variant not in best or r['step_time_s'] < best[variant]['step_time_s']:
        best[variant] = r
  base = best.get('lmjax')
  print(f"\n{f.shapes}: {shape}")
  w = max(map(len, variants))
  print(f"| {'variant':{w}s} | {'ms/step':>8s} | {'tokens/s':>9s} | {'MFU':>6s} | {'vs lmjax':>8s} | what it turns off")
  print(f"|{'-' * (w + 2)}|{'-' * 10}|{'-' * 11}|{'-' * 8}|{'-' * 10}|{'-' * 20}")
  for variant in variants:
    r = best[variant]
    ratio = f"{r['step_time_s'] / base['step_time_s']:.2f}x" if base else ''
    mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] else 'n/a'
    print(f"| {variant:{w}s} | {1e3 * r['step_time_s']:8.1f} | {r['tokens_per_sec']:9,.0f} | {mfu:>6s} | {ratio:>8s} | "
          f"{VARIANTS[variant]}")
  print('(vs lmjax: the variant\'s step time over lmjax\'s; above 1x, the change it turns off speeds lmjax up)')
  path = f.json or os.path.join(REPO, 'benchmarks', 'results', f'ablations_{f.shapes}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as out:
    json.dump({'shapes': shape, 'results': best, **interleave.run_record(sys.argv)}, out, indent=2)
  print(f'wrote {path}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
