"""BERT-style masked-LM pretraining at a named size: configs/bert.py:<size>.

Sizes: tiny, mini, small (modern block: RMSNorm, RoPE, no biases; CPU-friendly),
base (BERT-base, 110M at a 30K vocabulary) and large (BERT-large, 340M), which
use BERT's own choices: LayerNorm with biases, learned positions, exact GELU,
two token types, 512 positions. Training from scratch keeps pre-norm blocks for
every size (stabler than BERT's post-norm; the same blocks as the decoder). An
imported Hugging Face BERT (python -m lmjax.convert) uses BERT's own layout:
model.norm_position='post' and model.embed_norm=True.

Run: python -m lmjax.main --config=configs/bert.py:tiny --workdir=runs/bert_tiny
     python -m lmjax.fill_mask --workdir=runs/bert_tiny --text="The [MASK] statement is used in a loop."
"""

from configs import base
from lmjax.models.transformer import SIZES

_SIZES = {'tiny': 'tiny', 'mini': 'mini', 'small': 'small', 'base': 'gpt2', 'large': 'gpt2-medium'}


def get_config(arg: str = 'tiny'):
  if arg not in _SIZES:
    raise ValueError(f'configs/bert.py:{arg}: unknown size; use one of {", ".join(_SIZES)}')
  c = base.get_config()
  c.objective = 'mlm'
  m = c.model
  m.num_layers, m.embed_dim, m.num_heads, m.mlp_dim = SIZES[_SIZES[arg]]
  if arg in ('base', 'large'):
    m.positions, m.norm, m.norm_eps, m.use_bias = 'learned', 'layernorm', 1e-12, True
    m.activation, m.type_vocab_size, m.max_len = 'gelu_exact', 2, 512
    c.data.vocab_size = 30_522
    c.mlm.whole_word = True
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 10_000
    c.train.batch_size = 256
    c.train.max_steps = 1_000_000
    c.train.eval_every = 10_000
    c.checkpoint.every = 10_000
  return c
