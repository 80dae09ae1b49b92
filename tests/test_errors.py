"""Bad input and bad configuration: one line that names the problem and the fix; nothing damaged.

``MESSAGES`` is the table in docs/errors.md: every row is checked here against the
message the code really produces, and the table must hold each row verbatim.
"""

import errno
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config, write_pydoc_corpus
from lmjax import train
from lmjax.data import sources
from lmjax.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MESSAGES = {
    'data path missing': "data.paths='{path}' matched no files; set --config.data.paths to existing files or globs",
    'empty corpus': "data.source='text' data.paths='{path}' holds no text; point --config.data.paths at non-empty "
                    'files',
    'corpus too small for one batch': 'the training split holds {tokens} tokens, fewer than one batch of 264 '
                                      '(train.batch_size=8 rows of 33); add data, or lower --config.train.batch_size '
                                      'or --config.data.seq_len',
    'binary file': '{path} is binary (a NUL byte at offset 4); convert it, remove it from data.paths, or set '
                   '--config.data.on_bad_file=skip',
    'non-UTF-8 file': '{path} is not UTF-8 text (byte 6); convert it, remove it from data.paths, or set '
                      '--config.data.on_bad_file=skip',
    'JSONL line that is not JSON': '{path}:2 is not valid JSON (Expecting value); fix or remove that line',
    'JSONL line without the field': "{path}:1 has no string field 'text'; set --config.data.text_field",
    'tokenizer file missing': "tokenizer file {path} not found; fix --config.data.tokenizer_path or set it to '' "
                              'to train one',
    'tokenizer file corrupt': 'tokenizer file {path} is not a sentencepiece model; point '
                              '--config.data.tokenizer_path at a .model file or delete it to retrain',
    "tokenizer vocabulary different from the checkpoint's":
        'data.tokenizer_path={path} (384 pieces) is not the tokenizer this workdir was trained with '
        '({workdir}/tokenizer.model, 512 pieces); drop --config.data.tokenizer_path to resume, or start a new '
        '--workdir',
    "workdir tokenizer lost while checkpoints remain":
        '{workdir}/tokenizer.model is missing or unreadable, and the checkpoints in {workdir} need the tokenizer '
        'they were trained with; restore that file or start a new --workdir',
    "checkpoint from another config (shapes)":
        'parameter block_0/mlp/wi/kernel is float32[32, 64] in the checkpoint at step 2 in {workdir}/checkpoints '
        'but float32[32, 128] in this config; resume with the config the run was trained with (its config.json) '
        'or start a new --workdir',
    'sequence length above what the model supports': 'data.seq_len=2048 exceeds model.max_len=1024; lower '
                                                     '--config.data.seq_len or raise --config.model.max_len',
    'batch not divisible by the mesh': 'train.batch_size=6 must be divisible by the data-parallel size 8 (mesh '
                                       'data*fsdp) and by the 1 processes; change --config.train.batch_size or '
                                       '--config.mesh.*',
    'mesh that does not fit the devices': 'mesh: sizes data=3 fsdp=1 tensor=1 do not divide the 8 devices of a '
                                          'slice; set --config.mesh.* so their product is 8',
    'workdir not writable': 'workdir {workdir} is not writable ({reason}); pass a --workdir you can write to',
    'loss or gradients NaN/inf (train.nonfinite=stop)':
        'the loss or gradients were NaN/inf at {count} step(s) up to step {step}; those updates were skipped and '
        'training stopped without saving (last checkpoint: step {last}). Lower --config.optim.learning_rate or '
        'raise warmup, or set --config.train.nonfinite=skip to skip such steps and go on',
    'disk full during save': 'could not save the checkpoint at step 2 in {workdir}/checkpoints (No space left on '
                             'device); the last complete checkpoint (none) is intact: free disk space or fix the '
                             'directory, then run the same command to resume',
    'write failure during save': 'could not save the checkpoint at step 2 in {workdir}/checkpoints (File too '
                                 'large); the last complete checkpoint (none) is intact: free disk space or fix '
                                 'the directory, then run the same command to resume',
    'unknown config key': 'error: --config.train.not_a_key: no such config key; every key is declared in '
                          'configs/base.py',
    'misspelt config section': 'error: --config.trian.max_steps: no such config key (Did you mean "train" instead '
                               'of "trian"?); every key is declared in configs/base.py',
    'wrongly typed config value': "error: flag --config.train.max_steps=many: invalid literal for int() with base "
                                  "10: 'many'",
}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return write_pydoc_corpus(tmp_path_factory.mktemp('err_corpus'), parts=2, chars=40_000)


def _config(corpus, **overrides):
  return tiny_config(corpus, **{'train.max_steps': 2, 'train.eval_every': 2, 'train.eval_batches': 1,
                                'checkpoint.every': 2, **overrides})


@pytest.fixture(scope='module')
def trained(corpus, tmp_path_factory):
  """A workdir with a checkpoint at step 2."""
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(_config(corpus), workdir)
  return workdir


def _snapshot(root):
  """Every file under ``root`` with its size and content hash: 'nothing damaged' means this is unchanged."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hash(f.read())
  return out


def _fails(row, config, run_dir, **fields):
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(config, str(run_dir))
  assert str(e.value) == MESSAGES[row].format(**fields)


def test_docs_table_lists_every_message():
  with open(os.path.join(REPO, 'docs', 'errors.md'), encoding='utf-8') as f:
    table = f.read()
  for row, message in MESSAGES.items():
    assert f'| {row} | `{message}` |' in table, row


def test_data_path_missing(tmp_path):
  pattern = str(tmp_path / 'nope' / '*.txt')
  _fails('data path missing', _config(pattern), tmp_path / 'run', path=pattern)


def test_empty_corpus(tmp_path):
  (tmp_path / 'empty.txt').write_text('  \n\n \n', encoding='utf-8')
  path = str(tmp_path / 'empty.txt')
  _fails('empty corpus', _config(path), tmp_path / 'run', path=path)


def test_corpus_too_small_for_one_batch(tmp_path, trained):
  (tmp_path / 'small.txt').write_text('A few words.\n\nAnd a few more.\n', encoding='utf-8')
  tokenizer_path = os.path.join(trained, 'tokenizer.model')
  tok = tokenizer_lib.Tokenizer(tokenizer_path)
  config = _config(str(tmp_path / 'small.txt'), **{'data.tokenizer_path': tokenizer_path, 'data.val_fraction': 0.0})
  tokens = sum(len(tok.encode(d)) + 2 for d in sources.load_documents('text', str(tmp_path / 'small.txt')))
  _fails('corpus too small for one batch', config, tmp_path / 'run', tokens=tokens)


@pytest.mark.parametrize('row,content', [('binary file', b'text\0\1\2 more'),
                                         ('non-UTF-8 file', b'caf\xc3\xa9 \xff\xfe')])
def test_bad_files_fail_or_are_skipped(corpus, tmp_path, row, content):
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(content)
  _fails(row, _config(f'{corpus},{bad}'), tmp_path / 'run', path=str(bad))
  kept = sources.load_documents('text', f'{corpus},{bad}', on_bad_file='skip')
  assert kept == sources.load_documents('text', corpus)


@pytest.mark.parametrize('row,lines', [('JSONL line that is not JSON', ['{"text": "fine"}', 'not json']),
                                       ('JSONL line without the field', ['{"body": "no text field"}'])])
def test_bad_jsonl(tmp_path, row, lines):
  path = tmp_path / 'data.jsonl'
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  _fails(row, _config(str(path), **{'data.source': 'jsonl'}), tmp_path / 'run', path=str(path))


def test_tokenizer_missing_or_corrupt(corpus, tmp_path):
  missing = str(tmp_path / 'none.model')
  _fails('tokenizer file missing', _config(corpus, **{'data.tokenizer_path': missing}), tmp_path / 'a', path=missing)
  corrupt = tmp_path / 'corrupt.model'
  corrupt.write_bytes(b'\x08\x01garbage' * 10)
  _fails('tokenizer file corrupt', _config(corpus, **{'data.tokenizer_path': str(corrupt)}), tmp_path / 'b',
         path=str(corrupt))
  assert not os.path.exists(tmp_path / 'a' / 'tokenizer.model')


def test_resume_with_another_tokenizer_or_shapes_changes_nothing(corpus, tmp_path, trained):
  other = str(tmp_path / 'other.model')
  docs = sources.load_documents('text', corpus)
  tokenizer_lib.train_tokenizer(docs, other, 384, 'bpe')
  before = _snapshot(trained)
  _fails("tokenizer vocabulary different from the checkpoint's",
         _config(corpus, **{'data.tokenizer_path': other, 'train.max_steps': 4}), trained, path=other,
         workdir=trained)
  _fails('checkpoint from another config (shapes)', _config(corpus, **{'model.mlp_dim': 128, 'train.max_steps': 4}),
         trained, workdir=trained)
  assert _snapshot(trained) == before  # config.json, checkpoints, metrics, tokenizer: untouched


def test_lost_workdir_tokenizer(corpus, tmp_path, trained):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained, workdir)
  os.remove(os.path.join(workdir, 'tokenizer.model'))
  _fails('workdir tokenizer lost while checkpoints remain', _config(corpus, **{'train.max_steps': 4}), workdir,
         workdir=workdir)


def test_config_values(corpus, tmp_path):
  _fails('sequence length above what the model supports', _config(corpus, **{'data.seq_len': 2048}), tmp_path / 'a')
  _fails('batch not divisible by the mesh', _config(corpus, **{'train.batch_size': 6}), tmp_path / 'b')
  _fails('mesh that does not fit the devices', _config(corpus, **{'mesh.data': 3}), tmp_path / 'c')


def test_workdir_not_writable(corpus, tmp_path):
  if os.geteuid() == 0:  # root writes through permissions: use a path that cannot be a directory
    (tmp_path / 'file').write_text('x')
    workdir, reason = tmp_path / 'file' / 'run', os.strerror(errno.ENOTDIR)
  else:
    (tmp_path / 'locked').mkdir(mode=0o500)
    workdir, reason = tmp_path / 'locked', os.strerror(errno.EACCES)
  _fails('workdir not writable', _config(corpus), workdir, workdir=workdir, reason=reason)


@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_nonfinite_loss(corpus, tmp_path, policy):
  """A learning rate of 1e30 blows the weights up at once; no update is ever applied from inf/NaN gradients."""
  config = _config(corpus, **{'optim.learning_rate': 1e30, 'optim.warmup_steps': 0, 'train.max_steps': 6,
                              'train.eval_every': 6, 'checkpoint.every': 1, 'train.nonfinite': policy})
  if policy == 'skip':
    train.train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
    assert records[-1]['nonfinite_steps'] >= 1
    params = jax.device_get(train.load_for_inference(str(tmp_path))[2])
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))  # skipped, never applied
    return
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl', encoding='utf-8')]
  step, count = records[-1]['step'], int(records[-1]['nonfinite_steps'])
  last = max(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert str(e.value) == MESSAGES['loss or gradients NaN/inf (train.nonfinite=stop)'].format(
      count=count, step=step, last=last)
  params = jax.device_get(train.load_for_inference(str(tmp_path))[2])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))  # the last checkpoint is good


# Runs lmjax.main with every file it writes capped at argv[1] bytes. Set in the child itself, not through
# subprocess's preexec_fn, which forks this multithreaded (JAX) process and runs Python in the fork.
_WITH_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
sys.argv = ['lmjax.main'] + sys.argv[2:]
runpy.run_module('lmjax.main', run_name='__main__', alter_sys=True)
"""


def _cli(args, file_size_limit=None):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  command = ['-m', 'lmjax.main'] if file_size_limit is None else ['-c', _WITH_FILE_SIZE_LIMIT, str(file_size_limit)]
  return subprocess.run([sys.executable, *command, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def _cli_args(corpus, workdir, *extra):
  return ['--config=configs/gpt.py:tiny', f'--workdir={workdir}', '--config.data.source=text',
          f'--config.data.paths={corpus}', '--config.data.vocab_size=512', '--config.data.seq_len=32',
          '--config.model.num_layers=1', '--config.model.embed_dim=32', '--config.model.num_heads=2',
          '--config.model.mlp_dim=64', '--config.train.batch_size=8', '--config.train.eval_batches=1',
          '--config.train.max_steps=2', '--config.checkpoint.every=2', *extra]


@pytest.mark.parametrize('row,override', [('unknown config key', '--config.train.not_a_key=1'),
                                          ('misspelt config section', '--config.trian.max_steps=5'),
                                          ('wrongly typed config value', '--config.train.max_steps=many')])
def test_bad_config_keys(corpus, tmp_path, row, override):
  proc = _cli(_cli_args(corpus, tmp_path / 'run', override))
  assert proc.returncode == 2 and proc.stderr.strip() == MESSAGES[row]
  assert not os.path.exists(tmp_path / 'run')


def test_write_failure_during_save(corpus, tmp_path):
  """Every file is capped at 64 KB: the tokenizer and logs fit, the first checkpoint's data does not."""
  workdir = tmp_path / 'run'
  proc = _cli(_cli_args(corpus, workdir, '--config.model.embed_dim=64', '--config.model.mlp_dim=256'),
              file_size_limit=64_000)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == 'error: ' + MESSAGES['write failure during save'].format(
      workdir=workdir)
  assert not [n for n in os.listdir(workdir / 'checkpoints') if n.isdigit()]  # no half checkpoint passes for one
  proc = _cli(_cli_args(corpus, workdir, '--config.model.embed_dim=64', '--config.model.mlp_dim=256'))
  assert proc.returncode == 0 and os.listdir(workdir / 'checkpoints') == ['2'], proc.stderr[-3000:]


def test_disk_full_during_save(corpus, tmp_path):
  """A real full disk: a 1 MB tmpfs (needs mount permission; skipped where there is none)."""
  mnt = tmp_path / 'small_disk'
  mnt.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], capture_output=True).returncode:
    pytest.skip('cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)')
  try:
    workdir = mnt / 'run'
    proc = _cli(_cli_args(corpus, workdir, '--config.model.embed_dim=128', '--config.model.mlp_dim=512'))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == 'error: ' + MESSAGES['disk full during save'].format(
        workdir=workdir)
    assert not [n for n in os.listdir(workdir / 'checkpoints') if n.isdigit()]
    assert (workdir / 'tokenizer.model').exists() and (workdir / 'config.json').exists()
  finally:
    subprocess.run(['umount', str(mnt)], check=False)
