"""lmjax.bench on a tiny model: the numbers it reports agree with each other; FLOPs per token by hand."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import gpt
from lmjax import bench, metrics, train
from lmjax.data import tokenizer as tokenizer_lib
from lmjax.models.transformer import ModelConfig, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--config.model.num_layers=1', '--config.model.embed_dim=32', '--config.model.num_heads=2',
        '--config.model.mlp_dim=64', '--config.data.seq_len=16', '--config.train.batch_size=8',
        '--config.data.vocab_size=64')


def _tiny_config(objective='clm'):
  c = gpt.get_config('tiny')
  c.objective = objective
  for flag in TINY:
    key, value = flag[len('--config.'):].split('=')
    section, name = key.split('.')
    c[section][name] = int(value)
  return c


def _check(r, objective):
  assert r['objective'] == objective
  assert r['tokens_per_step'] == 8 * 16
  assert r['tokens_per_sec'] == pytest.approx(8 * 16 / r['step_time_s'])
  assert r['step_time_min_s'] <= r['step_time_s'] <= r['step_time_max_s']
  # Masked LM: useful head work is on the predicted 15% of tokens only (the loss reads no others).
  fraction = 0.15 if objective == 'mlm' else 1.0
  assert r['flops_per_token'] == ModelConfig(**r['model']).flops_per_token(16, fraction)
  assert r['flops_per_sec'] == pytest.approx(r['tokens_per_sec'] * r['flops_per_token'])
  assert r['mfu'] == pytest.approx(r['flops_per_sec'] / r['num_devices'] / 1e11)
  assert r['compile_time_s'] > 0 and r['peak_memory_bytes'] > 0
  assert r['first_loss'] > 0 and r['last_loss'] > 0
  json.dumps(r)  # the JSON file holds exactly this
  assert 'S = ' + ('(L+1)/2' if objective == 'clm' else 'L') in r['flops_formula']


def test_bench_mlm_results_are_consistent():
  r = bench.run(_tiny_config('mlm'), steps_=3, warmup=1, peak_override=1e11, devices=jax.devices()[:1])
  _check(r, 'mlm')
  assert r['steps'] == 3 and r['num_devices'] == 1


def test_bench_cli_writes_consistent_json(tmp_path):
  out = tmp_path / 'bench.json'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'lmjax.bench', '--config=configs/gpt.py:tiny', *TINY, '--steps=2',
                         '--warmup=1', '--peak_flops=1e11', f'--json={out}'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'tokens/s' in proc.stdout and 'MFU' in proc.stdout
  r = json.loads(out.read_text())
  _check(r, 'clm')
  assert r['num_devices'] == 1


def test_vocab_is_the_tokenizer_files_when_one_is_given(tmp_path):
  # A char tokenizer's vocabulary is the corpus's characters; data.vocab_size is only its cap.
  path = str(tmp_path / 'char.model')
  tok = tokenizer_lib.train_tokenizer(['To be, or not to be: that is the question.'] * 20, path, 256, 'char')
  c = _tiny_config()
  c.data.tokenizer_type = 'char'
  assert bench.vocab_size(c) == 64
  c.data.tokenizer_path = path
  assert bench.vocab_size(c) == tok.vocab_size < 64
  c.data.tokenizer_path = str(tmp_path / 'missing.model')
  with pytest.raises(ValueError, match='missing.model not found'):
    bench.vocab_size(c)


@pytest.mark.parametrize('kind,peak', [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12),
                                       ('NVIDIA H100 NVL', 835e12), ('NVIDIA H200', 989e12),
                                       ('NVIDIA H200 NVL', 835e12), ('NVIDIA A100-SXM4-80GB', 312e12),
                                       ('TPU v5 lite', 197e12), ('TPU v5', 459e12), ('cpu', None)])
def test_datasheet_peak_by_device_kind(kind, peak):
  device = type('Device', (), {'device_kind': kind})()
  assert metrics.peak_flops(device) == peak


def test_no_datasheet_prefix_is_hidden_by_an_earlier_one():
  """The first matching prefix counts, so a longer name listed after its own prefix would never be read."""
  for table in (metrics._PEAK_FLOPS, metrics._HBM_GIB):  # pylint: disable=protected-access
    names = [name for name, _ in table]
    for i, name in enumerate(names):
      assert not [earlier for earlier in names[:i] if name.startswith(earlier)], name


def test_matmul_ceiling_is_positive():
  assert metrics.measure_matmul_flops(size=64, repeats=1, trials=1) > 0


# A tiny model's matmuls, written out one by one: (what, [M, K] x [K, N] per sequence of L tokens).
V, D, H, F, LAYERS, L = 11, 8, 2, 16, 2, 5
K = D // H


def _hand_count_forward(causal: bool) -> int:
  """Forward FLOPs of one sequence (2 per multiply-add), listing every matmul the model does."""
  per_layer = [
      ('query', L, D, D), ('key', L, D, D), ('value', L, D, D), ('out', L, D, D),
      ('mlp in', L, D, F), ('mlp out', L, F, D),
  ]
  matmuls = [m for _ in range(LAYERS) for m in per_layer] + [('logits', L, D, V)]
  flops = sum(2 * m * k * n for _, m, k, n in matmuls)
  # Attention per layer and head: query i meets key j for j <= i (causal) or every j; each
  # pair costs a K-long dot product for the score and a K-long weighted sum of values.
  pairs = L * (L + 1) // 2 if causal else L * L
  flops += LAYERS * H * pairs * (2 * K + 2 * K)
  return flops


@pytest.mark.parametrize('causal', [True, False])
def test_flops_per_token_matches_a_hand_count(causal):
  cfg = ModelConfig(vocab_size=V, num_layers=LAYERS, embed_dim=D, num_heads=H, mlp_dim=F, max_len=L,
                    causal=causal, positions='learned', norm='layernorm', use_bias=True)
  # Training = forward + backward (two matmuls per forward matmul) = 3x forward.
  assert cfg.flops_per_token(L) == pytest.approx(3 * _hand_count_forward(causal) / L)


def _dot_flops(jaxpr) -> int:
  """FLOPs of every dot_general in a jaxpr (and the jaxprs inside it)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      rhs_free = [d for i, d in enumerate(rhs) if i not in tuple(rhs_contract) + tuple(rhs_batch)]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)  # every lhs element meets every free rhs column
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          total += _dot_flops(inner)
  return total


@pytest.mark.parametrize('mlm', [False, True])
def test_hand_count_matches_the_model_program(mlm):
  """The hand list above is what the model really computes: count the dots in its forward jaxpr."""
  cfg = ModelConfig(vocab_size=V, num_layers=LAYERS, embed_dim=D, num_heads=H, mlp_dim=F, max_len=L,
                    causal=not mlm, mlm_head=mlm, positions='learned', norm='layernorm', use_bias=True)
  model = Transformer(cfg)
  tokens = jnp.zeros((1, L), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)  # shapes are all a jaxpr needs
  counted = _dot_flops(jax.make_jaxpr(lambda p: model.apply(p, tokens))(params).jaxpr)
  # XLA computes the whole score matrix, masked half included: the honest count leaves it out.
  full = _hand_count_forward(causal=False) + (2 * L * D * D if mlm else 0)  # + the MLM head's dense layer
  assert counted == full
  assert cfg.flops_per_token(L) == pytest.approx(3 * (counted - (LAYERS * H * L * (L - 1) // 2 * 4 * K
                                                                  if not mlm else 0)) / L)


def test_results_files_record_a_command_that_reads_the_same_on_any_machine(monkeypatch):
  """benchmarks/interleave.run_record: the nanoGPT checkout as NANOGPT, the --json file by name, the CPU named."""
  monkeypatch.syspath_prepend(os.path.join(REPO, 'benchmarks'))
  import interleave  # pylint: disable=g-import-not-at-top
  r = interleave.run_record([os.path.join(REPO, 'benchmarks', 'nanogpt_compare.py'), '--nanogpt_dir=/home/me/nanoGPT',
                             '--json=/tmp/out/cpu.json', '--preset=cpu'])
  assert r['command'] == 'python benchmarks/nanogpt_compare.py --nanogpt_dir=NANOGPT --json=cpu.json --preset=cpu'
  assert r['machine'] and r['cpus'] == os.cpu_count() and len(r['date']) == 10


def test_comparison_mfu_counts_each_side_on_its_own_devices(monkeypatch):
  """benchmarks/nanogpt_compare.add_rates: the same model FLOPs per token for both; nanoGPT's runner on one
  device, lmjax's on every device its worker found; no MFU without a datasheet peak (a CPU)."""
  monkeypatch.syspath_prepend(os.path.join(REPO, 'benchmarks'))
  import nanogpt_compare  # pylint: disable=g-import-not-at-top
  spec = dict(iters=10, batch_size=4, block_size=8)  # 320 tokens
  info = {'flops_per_token': 1e6, 'peak_flops_per_device': 1e9, 'devices': 2}
  results = {'nanogpt': {'train_s': 2.0}, 'lmjax': {'train_s': 0.5, 'info': info}}
  nanogpt_compare.add_rates(spec, results)
  assert results['nanogpt']['tokens_per_sec'] == 160 and results['lmjax']['tokens_per_sec'] == 640
  assert results['nanogpt']['mfu'] == pytest.approx(0.16) and results['lmjax']['mfu'] == pytest.approx(0.32)
  results = {'nanogpt': {'train_s': 2.0}, 'lmjax': {'train_s': 0.5, 'info': dict(info, peak_flops_per_device=None)}}
  nanogpt_compare.add_rates(spec, results)
  assert 'mfu' not in results['nanogpt'] and 'mfu' not in results['lmjax']


def test_lmjax_runner_reports_the_bench_flop_count_and_no_cpu_peak(monkeypatch):
  """benchmarks/interleave.LmjaxRunner.info, which the comparisons' MFU reads: lmjax.bench's FLOPs per token
  for the config, and no datasheet peak on a CPU (so no MFU there)."""
  monkeypatch.syspath_prepend(os.path.join(REPO, 'benchmarks'))
  import interleave  # pylint: disable=g-import-not-at-top
  from configs import nanogpt  # pylint: disable=g-import-not-at-top
  config = nanogpt.get_config('cpu')
  config.data.vocab_size, config.train.batch_size = 65, 16  # 16: divisible by the 8 test devices
  info = interleave.LmjaxRunner(config).info
  cfg = train.model_config(config, 65)
  assert info['flops_per_token'] == cfg.flops_per_token(config.data.seq_len, 1.0) > 0
  assert info['flops_formula'] == cfg.flops_formula(config.data.seq_len, 1.0)
  assert info['peak_flops_per_device'] is None and info['devices'] >= 1
