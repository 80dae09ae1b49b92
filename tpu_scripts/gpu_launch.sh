#!/usr/bin/env bash
# Run lmjax on one node of a multi-node GPU cluster without SLURM: start it on every node (by ssh,
# pdsh, a Kubernetes pod spec, ...) with the same flags and that node's NODE_RANK. One process per
# node, which uses all of the node's GPUs; node 0 hosts the jax.distributed coordinator.
#
# Usage: MASTER_ADDR=HOST0 NNODES=N NODE_RANK=I [MASTER_PORT=12345] \
#            tpu_scripts/gpu_launch.sh --config=configs/FILE.py[:ARG] --workdir=DIR \
#            [--config.KEY=VALUE ...] [--dry-run] [-- MORE_LMJAX_FLAGS...]
#
#   --master-addr, --master-port, --nnodes, --node-rank   the same, as flags (flags win)
#   --config, --workdir, --config.*, -- FLAGS            passed to lmjax.main untouched
#   --dry-run   print the command instead of running it
#
# Environment: PYTHON (default python: the one with lmjax installed). Under SLURM use
# gpu_slurm.sbatch instead.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON=${PYTHON:-python}
MASTER_ADDR=${MASTER_ADDR:-}
MASTER_PORT=${MASTER_PORT:-12345}
NNODES=${NNODES:-}
NODE_RANK=${NODE_RANK:-}

script_flag() {
  case "$1" in
    --master-addr=*) MASTER_ADDR=${1#*=} ;;
    --master-port=*) MASTER_PORT=${1#*=} ;;
    --nnodes=*) NNODES=${1#*=} ;;
    --node-rank=*) NODE_RANK=${1#*=} ;;
    *) lmjax_flag "$1" ;;
  esac
}

main() {
  parse_args "$@"
  [[ -n $MASTER_ADDR ]] || die "missing --master-addr=HOST of node 0 (or set MASTER_ADDR)"
  [[ $MASTER_PORT =~ ^[0-9]+$ ]] || die "--master-port needs a port number, got '$MASTER_PORT'"
  [[ $NNODES =~ ^[1-9][0-9]*$ ]] || die "missing --nnodes=N, the number of nodes (or set NNODES)"
  [[ $NODE_RANK =~ ^[0-9]+$ ]] || die "missing --node-rank=I, this node's index (or set NODE_RANK)"
  ((NODE_RANK < NNODES)) || die "--node-rank=$NODE_RANK must be below --nnodes=$NNODES"
  lmjax_args --distributed=explicit --coordinator="$MASTER_ADDR:$MASTER_PORT" \
    --num_processes="$NNODES" --process_id="$NODE_RANK"
  run "$PYTHON" "${LMJAX_ARGS[@]}"
}

main "$@"
