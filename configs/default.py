"""The built-in default: a small GPT on Python's own documentation, CPU, a few minutes.

Run: python -m lmjax.main --config=configs/default.py --workdir=runs/default
"""

from configs import base


def get_config():
  c = base.get_config()
  return c
