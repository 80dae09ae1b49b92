"""lmjax masked-LM vs Hugging Face ``BertForMaskedLM`` (PyTorch, CPU): training tokens/s, side by side.

  pip install torch transformers   # CPU builds; not lmjax dependencies
  python benchmarks/bert_compare.py [--layers=4 --dim=256 --heads=4 --mlp=1024 --vocab=30522 \
      --seq=128 --batch=32 --iters=12]

Both train the same BERT encoder (learned positions, two token types, LayerNorm
with biases, exact GELU, BERT's MLM head with the output layer tied to the token
embedding, no pooler, dropout 0) with AdamW and gradient clipping, on the same
random token rows (batch ``i`` from ``numpy.random.default_rng((seed, i))``).
Masking: 15% of tokens, 80/10/10 (mask / random / kept); lmjax masks on the
device inside its train step (``objectives.mask_tokens``), the PyTorch side on
the host like ``DataCollatorForLanguageModeling``. The blocks are the same
(post-norm, embedding LayerNorm: ``norm_position='post'``, ``embed_norm=True``).
One difference is lmjax's design, not the setup: ``BertForMaskedLM`` computes
the output head (transform + 30K-way projection) at every position and then
ignores 85% of them; lmjax computes it at the selected positions only
(``objectives.selected_cross_entropy``; the same loss and gradients, tested).
``benchmarks/ablations.py --shapes=bert_mini`` times lmjax with the full head too.
The runs take turns (benchmarks/interleave.py); timing excludes compilation.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO, os.path.join(REPO, 'benchmarks')):  # lmjax, configs/ and interleave, in the workers too
  if _path not in sys.path:
    sys.path.insert(0, _path)

import interleave  # pylint: disable=g-import-not-at-top,wrong-import-position

# lmjax's special ids (lmjax/data/tokenizer.py): pad 0, bos/cls 2, eos/sep 3, mask 4; rows use ids >= 5.
MASK_ID, FIRST_ID = 4, 5
OPTIM = dict(learning_rate=1e-4, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip=1.0)


def rows(spec: dict, it: int) -> np.ndarray:
  """Training batch ``it``: [batch, seq] token ids, identical on both sides."""
  rng = np.random.default_rng((spec['seed'], it))
  return rng.integers(FIRST_ID, spec['vocab'], (spec['batch'], spec['seq'])).astype(np.int64)


class HFBert:
  """transformers' BertForMaskedLM with torch.optim.AdamW (Trainer's defaults: clip 1.0, no decay on biases/norms)."""

  def __init__(self, spec: dict):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.torch, self.spec = torch, spec
    torch.manual_seed(spec['seed'])
    config = transformers.BertConfig(
        vocab_size=spec['vocab'], hidden_size=spec['dim'], num_hidden_layers=spec['layers'],
        num_attention_heads=spec['heads'], intermediate_size=spec['mlp'], hidden_act='gelu',
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512, type_vocab_size=2,
        pad_token_id=0)
    self.model = transformers.BertForMaskedLM(config)
    self.model.train()
    decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
    self.optimizer = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': OPTIM['weight_decay']}, {'params': no_decay, 'weight_decay': 0.0}],
        lr=OPTIM['learning_rate'], betas=(OPTIM['b1'], OPTIM['b2']), eps=OPTIM['eps'])
    self.version = (f'torch {torch.__version__} ({torch.get_num_threads()} threads), transformers '
                    f'{transformers.__version__}, attention {self.model.config._attn_implementation}')  # pylint: disable=protected-access

  def _masked(self, it: int):
    """80/10/10 masking of 15% of the tokens, on the host (DataCollatorForLanguageModeling's recipe)."""
    tokens = rows(self.spec, it)
    rng = np.random.default_rng((self.spec['seed'], 1, it))
    selected = rng.random(tokens.shape) < 0.15
    action = rng.random(tokens.shape)
    inputs = np.where(selected & (action < 0.8), MASK_ID, tokens)
    replace = selected & (action >= 0.8) & (action < 0.9)
    inputs = np.where(replace, rng.integers(FIRST_ID, self.spec['vocab'], tokens.shape), inputs)
    labels = np.where(selected, tokens, -100)
    return self.torch.from_numpy(inputs), self.torch.from_numpy(labels)

  def warm_up(self):
    inputs, labels = self._masked(0)
    self.model(input_ids=inputs, labels=labels).loss.backward()
    self.optimizer.zero_grad(set_to_none=True)

  def train(self, it: int):
    inputs, labels = self._masked(it)
    loss = self.model(input_ids=inputs, labels=labels).loss
    loss.backward()
    interleave.torch_update(self.model, self.optimizer, OPTIM['clip'])
    return loss

  def finish(self, loss) -> float:
    return float(loss.item())

  def evaluate(self) -> float:
    return float('nan')


def lmjax_config(spec: dict):
  """BERT's block exactly (post-norm, embedding LayerNorm: as lmjax.convert imports BERT) at the spec's sizes."""
  from configs import bert  # pylint: disable=g-import-not-at-top
  c = bert.get_config('tiny')
  m = c.model
  m.num_layers, m.embed_dim, m.num_heads, m.mlp_dim = spec['layers'], spec['dim'], spec['heads'], spec['mlp']
  m.positions, m.norm, m.norm_eps, m.use_bias = 'learned', 'layernorm', 1e-12, True
  m.activation, m.type_vocab_size, m.max_len = 'gelu_exact', 2, 512
  m.norm_position, m.embed_norm = 'post', True  # BERT's own block (what lmjax.convert imports)
  c.data.seq_len, c.data.vocab_size = spec['seq'], spec['vocab']
  c.train.batch_size, c.train.grad_accum_steps, c.seed = spec['batch'], spec['lmjax_accum'], spec['seed']
  o = c.optim
  o.learning_rate, o.weight_decay, o.b1, o.b2 = OPTIM['learning_rate'], OPTIM['weight_decay'], OPTIM['b1'], OPTIM['b2']
  o.eps, o.clip_norm, o.warmup_steps = OPTIM['eps'], OPTIM['clip'], 0
  return c


class LmjaxMlm(interleave.LmjaxRunner):
  """lmjax's jitted masked-LM train step (lmjax.bench.build) on the same rows, one segment each."""

  def __init__(self, spec: dict):
    super().__init__(lmjax_config(spec))
    self.spec = spec

  def rows(self, it: int) -> np.ndarray:
    return rows(self.spec, it)


def _define_flags():
  """Flags exist only in the main process: the workers import this module to find their runner."""
  flags.DEFINE_integer('layers', 4, 'Encoder layers.')
  flags.DEFINE_integer('dim', 256, 'Hidden size.')
  flags.DEFINE_integer('heads', 4, 'Attention heads.')
  flags.DEFINE_integer('mlp', 1024, 'Intermediate (MLP) size.')
  flags.DEFINE_integer('vocab', 30522, "Vocabulary (BERT's WordPiece size by default).")
  flags.DEFINE_integer('seq', 128, 'Sequence length.')
  flags.DEFINE_integer('batch', 32, 'Sequences per step.')
  flags.DEFINE_integer('iters', 12, 'Timed training iterations.')
  flags.DEFINE_float('max_wait', 60.0, 'Seconds each turn may wait for other processes to leave the CPU idle.')
  flags.DEFINE_integer('chunk', 3, 'Iterations a worker runs before the other takes its turn.')
  flags.DEFINE_integer('lmjax_accum', 1, "lmjax's train.grad_accum_steps (the same update, in micro-batches).")
  flags.DEFINE_integer('seed', 0, 'Data and init seed.')
  flags.DEFINE_string('json', os.path.join(REPO, 'benchmarks', 'results', 'bert_mlm.json'), 'Results file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  spec = {k: f[k].value for k in ('layers', 'dim', 'heads', 'mlp', 'vocab', 'seq', 'batch', 'seed', 'lmjax_accum')}
  results = interleave.compare({'transformers': 'bert_compare:HFBert', 'lmjax': 'bert_compare:LmjaxMlm'}, spec,
                               iters=f.iters, chunk=f.chunk, max_wait=f.max_wait,
                               environ={'lmjax': interleave.lmjax_environ(lmjax_config(spec))})
  tokens = f.iters * f.batch * f.seq
  hf, jx = results['transformers'], results['lmjax']
  for r in (hf, jx):
    r['tokens_per_sec'] = tokens / r['train_s']
    del r['chunk_ms'], r['val_loss']
  print(f"MLM, {f.layers} layers, d={f.dim}, {f.heads} heads, mlp {f.mlp}, vocab {f.vocab}, seq {f.seq}, "
        f"batch {f.batch}, {f.iters} iterations")
  print(f"| {'':22s} | {'BertForMaskedLM':>15s} | {'lmjax':>10s} | {'lmjax/HF':>9s} |")
  print(f"|{'-' * 24}|{'-' * 17}|{'-' * 12}|{'-' * 11}|")
  print(f"| {'ms/iteration':22s} | {hf['ms_per_iter']:>15,.1f} | {jx['ms_per_iter']:>10,.1f} | "
        f"{hf['ms_per_iter'] / jx['ms_per_iter']:>8.2f}x |")
  print(f"| {'tokens/s':22s} | {hf['tokens_per_sec']:>15,.0f} | {jx['tokens_per_sec']:>10,.0f} | "
        f"{jx['tokens_per_sec'] / hf['tokens_per_sec']:>8.2f}x |")
  last = max(hf['train_loss'])
  print(f"| {f'train loss @ {last}':22s} | {hf['train_loss'][last]:>15.4f} | {jx['train_loss'][last]:>10.4f} | "
        f"{'':>9s} |")
  print(f"transformers: {hf['version']}; lmjax: {jx['version']}; {interleave.load_note(results)}")
  os.makedirs(os.path.dirname(f.json), exist_ok=True)
  with open(f.json, 'w', encoding='utf-8') as out:
    json.dump({'spec': spec, 'results': results, **interleave.run_record(sys.argv)}, out, indent=2)
  print(f'wrote {f.json}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
