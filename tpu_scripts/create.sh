#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice (directly, or through a queued resource).
#
# Usage: tpu_scripts/create.sh --name=NAME --project=PROJECT --zone=ZONE --accelerator=TYPE
#            [--version=RUNTIME] [--queued] [--dry-run] [-- EXTRA_GCLOUD_FLAGS...]
#
#   --accelerator  e.g. v5litepod-8 (v5e, one host), v5p-64 (v5p pod, 8 hosts), v4-8, v6e-8
#   --version      TPU runtime version; default by family: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                  v5e (v5litepod) v2-alpha-tpuv5-lite, v2/v3/v4 tpu-ubuntu2204-base
#   --queued       request it as a queued resource (same id as the TPU) instead of `tpu-vm create`,
#                  which fails at once when the zone has no capacity; the TPU appears when the
#                  request becomes ACTIVE
#   --dry-run      print the gcloud command instead of running it
#   -- FLAGS       passed to gcloud unchanged, e.g. -- --spot  or  -- --reserved
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE, TPU_ACCELERATOR, TPU_VERSION (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUEUED=0
script_flag() {
  case "$1" in
    --queued) QUEUED=1 ;;
    *) return 1 ;;
  esac
}

main() {
  parse_args "$@"
  require_tpu
  [[ -n $ACCELERATOR ]] || die "missing --accelerator=TYPE, e.g. v5litepod-8 (or set TPU_ACCELERATOR)"
  if [[ -z $VERSION ]]; then
    VERSION=$(default_version "$ACCELERATOR") ||
      die "no default runtime version for accelerator '$ACCELERATOR'; pass --version=RUNTIME"
  fi

  if ((QUEUED)); then
    # The queued resource and its node share the name, so delete.sh --queued needs only --name.
    run gcloud compute tpus queued-resources create "$NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" --node-id="$NAME" \
      ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}
    # On stderr, so that --dry-run's stdout holds only the command.
    echo "Queued. Watch its state (ACTIVE = ready) with:" \
      "$(join_quoted gcloud compute tpus queued-resources describe "$NAME" --project="$PROJECT" \
        --zone="$ZONE" '--format=value(state.state)')" >&2
  else
    run gcloud compute tpus tpu-vm create "$NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}
  fi
}

main "$@"
