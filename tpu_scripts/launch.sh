#!/usr/bin/env bash
# Launch `python -m lmjax.main ... --distributed=auto` on every worker of a TPU VM / pod slice.
# In the background by default (nohup, output to a log file on each worker), or in the foreground.
#
# Usage: tpu_scripts/launch.sh --name=NAME --project=PROJECT --zone=ZONE
#            --config=configs/FILE.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]
#            [--foreground] [--log=lmjax.log] [--env=VAR=VALUE ...] [--remote-dir=lmjax]
#            [--internal-ip] [--dry-run] [-- MORE_LMJAX_FLAGS...]
#
#   --config, --workdir, --config.*  passed to lmjax.main untouched (a pod needs a workdir that
#                  every worker sees: gs://BUCKET/... or a shared filesystem)
#   -- FLAGS       passed to lmjax.main untouched too (after --distributed=auto, so they win)
#   --foreground   stream every worker's log here until the run ends (Ctrl-C stops watching only;
#                  stop.sh stops the run)
#   --log          log file on each worker, relative to --remote-dir (default lmjax.log)
#   --env          environment variable for the training process (repeatable),
#                  e.g. --env=LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true
#   --dry-run      print the gcloud command instead of running it
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

FOREGROUND=0
LOG=lmjax.log
ENV_VARS=()

script_flag() {
  case "$1" in
    --foreground) FOREGROUND=1 ;;
    --log=*) LOG=${1#*=} ;;
    --env=*=*) ENV_VARS+=("${1#--env=}") ;;
    *) lmjax_flag "$1" ;;
  esac
}

# The shell command each worker runs. Words are quoted for the remote shell, so overrides with
# spaces or glob characters arrive as typed.
remote_command() {
  local train=() log pid guard start
  if ((${#ENV_VARS[@]})); then train+=(env "${ENV_VARS[@]}"); fi
  # The venv that setup.sh made; --distributed=auto lets jax find the pod's other workers.
  lmjax_args --distributed=auto
  train+=(.venv/bin/python "${LMJAX_ARGS[@]}")
  log=$(quote "$LOG") pid=$(quote "$PID_FILE")
  # A second run cannot get the TPU, and on a pod it would hang the others: refuse instead.
  guard="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2> /dev/null; then"
  guard+=" echo \"\$(hostname): lmjax.main is already running (stop.sh stops it)\" >&2; exit 1; fi"
  # Always started detached (nohup, no stdin/stdout tied to ssh, own process group for stop.sh):
  # the run outlives this ssh session, also in the foreground, where Ctrl-C only stops watching.
  start="nohup setsid $(join_quoted "${train[@]}") > $log 2>&1 < /dev/null & echo \$! > $pid"
  if ((FOREGROUND)); then
    # Follow the log until the process ends, then exit with its status.
    start+="; tail -n +1 -F --pid=\$! $log; wait \$!"
  else
    start+="; echo \"\$(hostname): started lmjax.main (pid \$!), log $log\""
  fi
  echo "cd $(quote "$REMOTE_DIR") || exit 1; $guard; $start"
}

main() {
  parse_args "$@"
  require_tpu
  local remote
  remote=$(remote_command)  # not inline: a die() in there must stop this script
  tpu_ssh all "$remote"
}

main "$@"
