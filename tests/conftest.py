"""Test setup: 8 fake CPU devices (set before JAX starts) so sharding code runs everywhere."""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # configs/ is imported by path-loaded config files
  sys.path.insert(0, REPO)


def write_pydoc_corpus(root, parts: int, chars: int) -> str:
  """Real English (Python's own docs) as ``parts`` text files of at most ``chars`` each; returns their glob."""
  import pydoc_data.topics as topics  # pylint: disable=g-import-not-at-top
  names = sorted(topics.topics)
  for i in range(parts):
    text = '\n\n'.join(topics.topics[n] for n in names[i::parts])
    (root / f'part{i}.txt').write_text(text[:chars], encoding='utf-8')
  return str(root / '*.txt')
