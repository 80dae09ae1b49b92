#!/usr/bin/env bash
# Stream the training log that launch.sh writes on the workers (tail -F over ssh; Ctrl-C to stop
# watching: the run goes on).
#
# Usage: tpu_scripts/logs.sh --name=NAME --project=PROJECT --zone=ZONE
#            [--worker=0|all|N] [--lines=100] [--no-follow] [--log=lmjax.log] [--remote-dir=lmjax]
#            [--internal-ip] [--dry-run]
#
#   --worker     which worker's log (default 0, the one that logs metrics); "all" prefixes each
#                line with the worker's hostname
#   --lines      how many earlier lines to show first (default 100)
#   --no-follow  print those lines and return
#   --log        the same --log as launch.sh, relative to --remote-dir (default lmjax.log)
#   --dry-run    print the gcloud command instead of running it
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=0
LINES=100
FOLLOW=1
LOG=lmjax.log

script_flag() {
  case "$1" in
    --worker=*) WORKER=${1#*=} ;;
    --lines=*) LINES=${1#*=} ;;
    --no-follow) FOLLOW=0 ;;
    --log=*) LOG=${1#*=} ;;
    *) return 1 ;;
  esac
}

remote_command() {
  local tail=(tail -n "$LINES")
  # -F, not -f: keeps following when a new launch replaces the file.
  if ((FOLLOW)); then tail+=(-F); fi
  local cmd
  cmd="cd $(quote "$REMOTE_DIR") || exit 1; $(join_quoted "${tail[@]}" "$LOG")"
  # Lines from several workers arrive interleaved; the hostname (...-w-N on TPU VMs) tells them apart.
  if [[ $WORKER == all ]]; then cmd+=" | sed -u \"s/^/\$(hostname): /\""; fi
  echo "$cmd"
}

main() {
  parse_args "$@"
  require_tpu
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines needs a number, got '$LINES'"
  ((${#PASSTHROUGH[@]} == 0)) || die "unexpected arguments after --: ${PASSTHROUGH[*]}"
  tpu_ssh "$WORKER" "$(remote_command)"
}

main "$@"
