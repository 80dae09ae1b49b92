#!/usr/bin/env bash
# Install lmjax on every worker of a TPU VM / pod slice: copy this checkout (or git clone a URL),
# then make a Python venv in it and `pip install -e . 'jax[tpu]'` there. Safe to re-run after edits.
#
# Usage: tpu_scripts/setup.sh --name=NAME --project=PROJECT --zone=ZONE
#            [--repo-url=URL [--ref=BRANCH_OR_TAG]] [--remote-dir=lmjax] [--python=3.12]
#            [--internal-ip] [--dry-run]
#
#   (default)      copy setup.py, README.md, lmjax/ and configs/ of this checkout (uncommitted
#                  edits included) to ~/REMOTE_DIR on every worker with `gcloud ... scp`
#   --repo-url     git clone URL into ~/REMOTE_DIR on every worker instead (or fetch, if there)
#   --ref          branch, tag or commit to check out (default: the remote's default branch)
#   --remote-dir   checkout directory on the workers, relative to the home directory (default lmjax)
#   --python       Python version of the venv (REMOTE_DIR/.venv; default 3.12)
#   --internal-ip  reach the workers by internal IP (from a VM in the same VPC)
#   --dry-run      print the gcloud commands instead of running them
#
# Environment: TPU_NAME, TPU_PROJECT, TPU_ZONE (flags win).

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# What `pip install -e .` and `python -m lmjax.main --config=configs/...` need; not runs/ or .git.
COPY_PATHS=(setup.py README.md lmjax configs)
REPO_URL=''
REF=HEAD
PYTHON_VERSION=3.12

script_flag() {
  case "$1" in
    --repo-url=*) REPO_URL=${1#*=} ;;
    --ref=*) REF=${1#*=} ;;
    --python=*) PYTHON_VERSION=${1#*=} ;;
    *) return 1 ;;
  esac
}

# Fetch the code on the worker: clone once, then always check out the fetched ref (detached),
# so re-running moves every worker to the same commit whatever it had.
clone_command() {
  local dir url ref
  dir=$(quote "$REMOTE_DIR") url=$(quote "$REPO_URL") ref=$(quote "$REF")
  echo "{ [ -d $dir/.git ] || git clone $url $dir; } && git -C $dir fetch origin $ref" \
    "&& git -C $dir checkout --detach FETCH_HEAD"
}

# TPU runtime images ship Python 3.10 and lmjax's jax (>=0.10) needs >=3.11, so the venv's Python
# comes from uv. One pip resolve for both keeps jax inside setup.py's pin and libtpu matching it.
# PIP_BREAK_SYSTEM_PACKAGES lets a --user install through on images whose system Python is
# "externally managed" (PEP 668); older pips ignore the variable.
install_command() {
  echo "cd $(quote "$REMOTE_DIR") && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --user --upgrade uv" \
    "&& python3 -m uv venv --allow-existing --python $(quote "$PYTHON_VERSION") .venv" \
    "&& python3 -m uv pip install --python .venv/bin/python -e . \"jax[tpu]\"" \
    "&& .venv/bin/python -c \"import jax, lmjax\" && echo \"\$(hostname): lmjax installed\""
}

main() {
  parse_args "$@"
  require_tpu
  ((${#PASSTHROUGH[@]} == 0)) || die "unexpected arguments after --: ${PASSTHROUGH[*]}"
  if [[ -n $REPO_URL ]]; then
    tpu_ssh all "$(clone_command)"
  else
    local sources=() path
    for path in "${COPY_PATHS[@]}"; do sources+=("$REPO/$path"); done
    # scp copies several sources into an existing directory only.
    tpu_ssh all "mkdir -p $(quote "$REMOTE_DIR")"
    tpu_scp_all "$REMOTE_DIR" "${sources[@]}"
  fi
  tpu_ssh all "$(install_command)"
}

main "$@"
