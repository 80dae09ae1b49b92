#!/usr/bin/env bash
# Stop the lmjax training process on every worker. SIGTERM first: lmjax then saves a checkpoint at
# its next log step and exits (all workers agree on that step); SIGKILL after a grace period.
#
# Usage: tpu_scripts/stop.sh --name=NAME --project=PROJECT --zone=ZONE
#            [--grace=300] [--internal-ip] [--dry-run]
#
#   --grace    seconds to wait for the checkpoint before SIGKILL (default 300; 0 kills at once)
#   --dry-run  print the gcloud command instead of running it
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GRACE=300

script_flag() {
  case "$1" in
    --grace=*) GRACE=${1#*=} ;;
    *) return 1 ;;
  esac
}

# Signals only the process whose id launch.sh recorded. SIGKILL goes to its whole process group
# (launch.sh starts it with setsid), so data-loader worker processes go too.
remote_command() {
  local pid kill_all running
  pid=$(quote "$PID_FILE")
  # shellcheck disable=SC2016  # expanded by the worker's shell, not here
  kill_all='kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid"'
  running="cd $(quote "$REMOTE_DIR") || exit 1; pid=\$(cat $pid 2> /dev/null) && kill -0 \"\$pid\""
  running+=" 2> /dev/null || { echo \"\$(hostname): lmjax.main is not running\"; exit 0; }"
  if ((GRACE == 0)); then
    echo "$running; $kill_all"
    return
  fi
  echo "$running; kill -TERM \"\$pid\"; for _ in \$(seq $GRACE); do kill -0 \"\$pid\" 2> /dev/null" \
    "|| { echo \"\$(hostname): stopped\"; exit 0; }; sleep 1; done;" \
    "echo \"\$(hostname): still running after ${GRACE}s, sending SIGKILL\"; $kill_all"
}

main() {
  parse_args "$@"
  require_tpu
  [[ $GRACE =~ ^[0-9]+$ ]] || die "--grace needs a number of seconds, got '$GRACE'"
  ((${#PASSTHROUGH[@]} == 0)) || die "unexpected arguments after --: ${PASSTHROUGH[*]}"
  tpu_ssh all "$(remote_command)"
}

main "$@"
