"""The notebooks run top to bottom on CPU (headless, nbclient) and are stored without outputs."""

import base64
import os
import time

import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = os.path.join(REPO, 'notebooks')
NAMES = ('quickstart', 'sharding')
TIMEOUT_S = 300  # per cell; each notebook takes about a minute on a 2-core CPU


def _read(name):
  return nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)


def _kernel_env(workdir):
  """The test process's environment without conftest's 8 fake devices: a notebook must set up its own,
  like a fresh Colab CPU runtime."""
  env = dict(os.environ, LMJAX_NOTEBOOK_WORKDIR=str(workdir), JAX_PLATFORMS='cpu', MPLBACKEND='Agg')
  flags = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
  return env


def _execute(name, workdir):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _read(name)
  client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name='python3', resources={'metadata': {'path': REPO}})
  start = time.perf_counter()
  client.execute(env=_kernel_env(workdir))  # raises CellExecutionError naming the failing cell
  print(f'{name}.ipynb executed in {time.perf_counter() - start:.1f} s')
  return nb


def _outputs(nb, output_type=None):
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
          if output_type is None or o.output_type == output_type]


def _text(nb):
  return ''.join(o.get('text', '') if o.output_type == 'stream' else o.get('data', {}).get('text/plain', '')
                 for o in _outputs(nb))


def _pngs(nb):
  return [base64.b64decode(o.data['image/png']) for o in _outputs(nb) if 'image/png' in o.get('data', {})]


@pytest.mark.parametrize('name', NAMES)
def test_stored_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4 and nb.metadata.kernelspec.name == 'python3'
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
  for before, cell in zip(nb.cells, nb.cells[1:]):  # every code cell says why, in markdown, just before it
    if cell.cell_type == 'code':
      assert before.cell_type == 'markdown', cell.source[:60]


def test_quickstart_trains_plots_samples_and_fills_masks(tmp_path):
  nb = _execute('quickstart', tmp_path)
  for run in ('clm', 'mlm'):
    assert (tmp_path / run / 'plots' / 'loss.png').stat().st_size > 10_000
    assert (tmp_path / run / 'metrics.jsonl').exists()
  pngs = _pngs(nb)
  assert len(pngs) == 2 and all(p.startswith(b'\x89PNG') for p in pngs)
  text = _text(nb)
  assert text.count('The with statement') >= 2  # the samples continue the prompt
  assert 'The result is returned as a [MASK] object. ->' in text
  assert 'eval_loss' in text


@pytest.mark.slow  # 20 s; tests/test_sharding.py covers the same library calls in the default suite
def test_sharding_lays_out_parameters_and_matches_one_device(tmp_path):
  nb = _execute('sharding', tmp_path)
  text = _text(nb)
  assert '8 devices' in text  # the notebook's own first cell made 8 fake CPU devices
  table = next(o.data['text/markdown'] for o in _outputs(nb, 'execute_result') if 'text/markdown' in o.data)
  assert '| `token_embed` | `(256, 64)` | `(None, None)` | `(None, \'fsdp\')` | `(\'tensor\', \'fsdp\')` |' in table
  for label in ('data=8', 'fsdp=8', 'data=2, fsdp=2, tensor=2'):
    assert f'{label}: loss' in text
