"""The built-in default: a small GPT on Python's own documentation, CPU, a few minutes.

The corpus is the pydoc topic text that ships inside every CPython installation
(``pydoc_data.topics``), so this runs offline on any machine. Tuned to finish in
about 6 minutes on a 2-core CPU.

Run: python -m lmjax.main --config=configs/default.py --workdir=runs/default
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.num_layers = 4
  c.optim.warmup_steps = 50
  c.train.max_steps = 600
  c.train.eval_every = 200
  c.checkpoint.every = 100
  return c
