# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts that source it
# Shared by the tpu_scripts: argument parsing, quoting, --dry-run, and the gcloud calls they share.
# Sourced, never run. Each script defines `script_flag` (its own flags; return 1 for "not mine")
# and a usage header (the leading comment block, printed by --help).

set -euo pipefail

# Flags win over these environment variables, so one shell can `export TPU_PROJECT=...` once.
PROJECT=${TPU_PROJECT:-}
ZONE=${TPU_ZONE:-}
NAME=${TPU_NAME:-}
ACCELERATOR=${TPU_ACCELERATOR:-}
VERSION=${TPU_VERSION:-}
DRY_RUN=0
INTERNAL_IP=0
REMOTE_DIR=lmjax   # the checkout on every worker, relative to the remote home directory
PASSTHROUGH=()     # everything after `--`, and the --config.* overrides (see lmjax_flag)

# One line on stderr and a non-zero exit: what a missing or wrong argument gets.
die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

# Quote one word for a POSIX shell: safe words stay bare (same set as Python's shlex.quote), and
# only the value of a --flag=value or VAR=value is quoted: reads better, means the same (words in
# command position are never of that form here).
quote() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$' flag='^(--[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.*)$'
  local word=$1
  if [[ $word =~ $safe ]]; then
    printf '%s' "$word"
    return
  elif [[ $word =~ $flag ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    word=${BASH_REMATCH[2]}
  fi
  printf "'%s'" "${word//\'/\'\\\'\'}"
}

# A command line as one string that a shell parses back into exactly these words.
join_quoted() {
  local out=() word
  for word in "$@"; do out+=("$(quote "$word")"); done
  printf '%s\n' "${out[*]}"
}

# --dry-run prints the command (pasteable) on stdout; otherwise echo it to stderr and run it.
run() {
  if ((DRY_RUN)); then
    join_quoted "$@"
  else
    echo "+ $(join_quoted "$@")" >&2
    "$@"
  fi
}

parse_args() {
  while (($#)); do
    case "$1" in
      --) shift; PASSTHROUGH+=("$@"); break ;;
      --project=*) PROJECT=${1#*=} ;;
      --zone=*) ZONE=${1#*=} ;;
      --name=*) NAME=${1#*=} ;;
      --accelerator=*) ACCELERATOR=${1#*=} ;;
      --version=*) VERSION=${1#*=} ;;
      --remote-dir=*) REMOTE_DIR=${1#*=} ;;
      --dry-run) DRY_RUN=1 ;;
      --internal-ip) INTERNAL_IP=1 ;;
      -h | --help) usage; exit 0 ;;
      --project | --zone | --name | --accelerator | --version | --remote-dir)
        die "$1 needs a value: $1=VALUE" ;;
      *) script_flag "$1" || die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
}

# The training command's own flags, shared by launch.sh and the GPU recipes. --config.* overrides
# keep their place among the pass-through flags; none of them is looked at here.
CONFIG=''
WORKDIR=''
lmjax_flag() {
  case "$1" in
    --config=*) CONFIG=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --config.*) PASSTHROUGH+=("$1") ;;
    *) return 1 ;;
  esac
}

# Sets LMJAX_ARGS to `-m lmjax.main ...` with the given --distributed flags placed before the
# pass-through flags, so that a user's own --distributed=... after `--` wins (absl: last one wins).
lmjax_args() {
  [[ -n $CONFIG ]] || die "missing --config=configs/FILE.py[:ARG]"
  [[ -n $WORKDIR ]] || die "missing --workdir=DIR (every process must see it: gs://... or shared)"
  LMJAX_ARGS=(-m lmjax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
    ${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"})
}

# The parameters every gcloud call needs; the message names both the flag and the variable.
require_tpu() {
  [[ -n $NAME ]] || die "missing --name=TPU_NAME (or set TPU_NAME)"
  [[ -n $PROJECT ]] || die "missing --project=PROJECT_ID (or set TPU_PROJECT)"
  [[ -n $ZONE ]] || die "missing --zone=ZONE (or set TPU_ZONE)"
}

# The runtime (software) version Google documents for JAX on each TPU generation.
default_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

# Run a shell command on TPU workers ("all", "0", "1,3", ...). gcloud starts it in the home directory.
tpu_ssh() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$NAME" --project="$PROJECT" --zone="$ZONE" --worker="$1")
  if ((INTERNAL_IP)); then cmd+=(--internal-ip); fi
  run "${cmd[@]}" --command="$2"
}

# Copy local paths into a directory on every worker.
tpu_scp_all() {
  local dest=$1
  shift
  local cmd=(gcloud compute tpus tpu-vm scp --recurse "$@" "$NAME:$dest"
    --project="$PROJECT" --zone="$ZONE" --worker=all)
  if ((INTERNAL_IP)); then cmd+=(--internal-ip); fi
  run "${cmd[@]}"
}

# launch.sh records the training process id here (in REMOTE_DIR on each worker); stop.sh and the
# launch guard read it, so only the process that launch.sh started is ever signalled.
PID_FILE=lmjax.pid
