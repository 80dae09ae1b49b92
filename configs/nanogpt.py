"""karpathy/nanoGPT's character-level Shakespeare recipe in lmjax: configs/nanogpt.py:<preset>.

Presets:
  shakespeare_char  nanoGPT's config/train_shakespeare_char.py: 6 layers, 6 heads, d=384, block 256, batch 64
                    (here in 16 micro-batches: the same update, faster on a CPU), dropout 0.2, 5,000 iterations.
  cpu               the same with nanoGPT README's CPU overrides: 4 layers, 4 heads, d=128, block 64, batch 12,
                    dropout 0, 2,000 iterations.

Both take nanoGPT's model with ``bias=False`` (learned positions, LayerNorm eps 1e-5 without bias, exact GELU,
no biases in the linear layers, tied embeddings), a character tokenizer (``data.tokenizer_type='char'``) and
its optimizer: AdamW(0.9, 0.99), learning rate 1e-3 with 100 warmup steps then cosine to 1e-4, weight decay
0.1 on every matrix including the embedding, gradient clip 1.0. benchmarks/nanogpt_compare.py trains this
config beside nanoGPT itself.

Run on Tiny Shakespeare (nanoGPT holds out the last 10% of the text; lmjax 10% of its 4,000-character pieces):
  python -m lmjax.main --config=configs/nanogpt.py:shakespeare_char --workdir=runs/shakespeare_char \
      --config.data.source=text --config.data.paths=tinyshakespeare.txt
"""

from configs import base

PRESETS = {  # layers, heads, width, block, batch, micro-batches, dropout, iterations
    'shakespeare_char': (6, 6, 384, 256, 64, 16, 0.2, 5000),
    'cpu': (4, 4, 128, 64, 12, 1, 0.0, 2000),
}


def get_config(arg: str = 'cpu'):
  if arg not in PRESETS:
    raise ValueError(f'configs/nanogpt.py:{arg}: unknown preset; use one of {", ".join(PRESETS)}')
  layers, heads, width, block, batch, micro_batches, dropout, iters = PRESETS[arg]
  c = base.get_config()
  c.data.seq_len, c.data.tokenizer_type, c.data.vocab_size = block, 'char', 256  # 256: the char vocab's cap
  c.data.val_fraction = 0.1
  m = c.model
  m.num_layers, m.num_heads, m.embed_dim, m.mlp_dim, m.max_len = layers, heads, width, 4 * width, block
  m.positions, m.norm, m.norm_eps, m.norm_bias, m.activation = 'learned', 'layernorm', 1e-5, False, 'gelu_exact'
  m.use_bias, m.tie_embeddings, m.dropout_rate = False, True, dropout
  o = c.optim
  o.learning_rate, o.min_lr_ratio, o.warmup_steps = 1e-3, 0.1, 100
  o.b1, o.b2, o.weight_decay, o.decay_embeddings, o.clip_norm = 0.9, 0.99, 0.1, True, 1.0
  t = c.train
  t.batch_size, t.grad_accum_steps, t.max_steps = batch, micro_batches, iters
  t.eval_every = 250 if arg == 'shakespeare_char' else 500  # nanoGPT's eval_interval (README's CPU run: 500)
  c.checkpoint.every = t.eval_every
  return c
