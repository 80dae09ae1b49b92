#!/usr/bin/env bash
# Delete a TPU VM / pod slice, or the queued resource that created it (which deletes its TPU too).
#
# Usage: tpu_scripts/delete.sh --name=NAME --project=PROJECT --zone=ZONE [--queued] [--yes] [--dry-run]
#
#   --queued   it was made with create.sh --queued: delete the queued resource NAME (with --force,
#              which also deletes the TPU it holds)
#   --yes      no confirmation prompt (gcloud --quiet)
#   --dry-run  print the gcloud command instead of running it
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUEUED=0
YES=()

script_flag() {
  case "$1" in
    --queued) QUEUED=1 ;;
    --yes) YES=(--quiet) ;;
    *) return 1 ;;
  esac
}

main() {
  parse_args "$@"
  require_tpu
  ((${#PASSTHROUGH[@]} == 0)) || die "unexpected arguments after --: ${PASSTHROUGH[*]}"
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" --project="$PROJECT" --zone="$ZONE" \
      --force ${YES[@]+"${YES[@]}"}
  else
    run gcloud compute tpus tpu-vm delete "$NAME" --project="$PROJECT" --zone="$ZONE" \
      ${YES[@]+"${YES[@]}"}
  fi
}

main "$@"
