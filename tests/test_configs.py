"""Every config in configs/ loads, locks, and builds a valid model config."""

import glob
import importlib.util
import os
import re

import pytest
from ml_collections import config_dict

from lmjax.models.transformer import SIZES, ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                      if not p.endswith('__init__.py'))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(path):
  """A config file's get_config args: its named sizes where it has them, none otherwise."""
  module = _load(path)
  name = os.path.basename(path)
  if name == 'gpt.py':
    return [(module, s) for s in SIZES]
  if name == 'nanogpt.py':
    return [(module, s) for s in module.PRESETS]
  if name == 'bert.py':
    return [(module, s) for s in module._SIZES]  # pylint: disable=protected-access
  return [(module, None)]


def _keys(c, prefix=''):
  out = set()
  for k, v in c.items():
    out |= _keys(v, f'{prefix}{k}.') if isinstance(v, config_dict.ConfigDict) else {prefix + k}
  return out


CASES = [(os.path.basename(p), m, a) for p in CONFIG_FILES for m, a in _variants(p)]


@pytest.mark.parametrize('name,module,arg', CASES, ids=[f'{n}:{a}' if a else n for n, _, a in CASES])
def test_config_loads_and_locks(name, module, arg):
  c = module.get_config(arg) if arg else module.get_config()
  assert isinstance(c, config_dict.ConfigDict)
  c.lock()
  with pytest.raises(AttributeError):
    c.not_a_key = 1
  with pytest.raises(TypeError):
    c.train.max_steps = 'many'
  ModelConfig(vocab_size=c.data.vocab_size, **c.model.to_dict())  # validates the model fields
  assert c.data.seq_len <= c.model.max_len, name
  # Experiments only override: a key base.py does not declare would be a silent typo.
  assert _keys(c) == _keys(_load(os.path.join(REPO, 'configs', 'base.py')).get_config()), name


def test_every_base_key_has_a_comment():
  """base.py declares each key once, each with a comment saying what it means."""
  lines = open(os.path.join(REPO, 'configs', 'base.py'), encoding='utf-8').read().splitlines()
  assigns = [l for l in lines if re.match(r'\s*[a-z]\.\w+\s*=', l) and 'ConfigDict()' not in l]
  assert assigns
  for line in assigns:
    assert '#' in line, f'undocumented config key: {line.strip()}'
  keys = [l.split('=')[0].strip() for l in assigns]
  assert len(keys) == len(set(keys))
