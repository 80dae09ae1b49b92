"""GPT-style next-token pretraining at a named size: configs/gpt.py:<size>.

Sizes (lmjax/models/transformer.py SIZES): tiny, mini, small, gpt2 (124M),
gpt2-medium (350M), gpt2-large, gpt2-xl. The gpt2* sizes also use the original
GPT-2 block (LayerNorm with biases, learned positions, GELU, 1024 context);
the smaller ones a modern block (RMSNorm, RoPE, no biases).

Run: python -m lmjax.main --config=configs/gpt.py:tiny --workdir=runs/gpt_tiny
     python -m lmjax.main --config=configs/gpt.py:gpt2 --workdir=runs/gpt2 \
         --config.data.source=text --config.data.paths='corpus/*.txt' --config.data.vocab_size=32000
"""

from configs import base
from lmjax.models.transformer import SIZES


def get_config(arg: str = 'tiny'):
  if arg not in SIZES:
    raise ValueError(f'configs/gpt.py:{arg}: unknown size; use one of {", ".join(SIZES)}')
  c = base.get_config()
  m = c.model
  m.num_layers, m.embed_dim, m.num_heads, m.mlp_dim = SIZES[arg]
  if arg.startswith('gpt2'):
    m.positions, m.norm, m.norm_eps, m.use_bias = 'learned', 'layernorm', 1e-5, True
    c.data.seq_len = 1024
    c.optim.learning_rate = 6e-4
    c.optim.warmup_steps = 2000
    c.train.batch_size = 512
    c.train.max_steps = 600_000
    c.train.eval_every = 2000
    c.checkpoint.every = 2000
  return c
