#!/usr/bin/env bash
# Issue 7's GPU point in one call on a lent GPU (the device tool): lmjax's training step at GPT-2 124M shapes
# in bf16, sequence 1024 (step time, tokens/s, MFU against the datasheet peak: python -m lmjax.bench), then
# lmjax beside nanoGPT under torch.compile on the same GPU (benchmarks/nanogpt_compare.py --preset=gpt2).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh   # the same steps on this CPU at batch 2: checks the script
#
# Through the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".nanogpt"], timeout_s=540).
#
# Needs, beside the working tree: .whl/ (the wheels the device image lacks: grain, array-record, ml-collections,
# tensorboardX, portpicker, importlib_resources for Python 3.12; see the device README) and a karpathy/nanoGPT
# checkout at $NANOGPT (default .nanogpt/, never committed). The comparison is speed only, so it reads this
# README's characters (ids below 100 in nanoGPT's 50,304-token vocabulary), not a corpus from outside the repo.
# Results (JSON and the log) go to $OUT, else gpu_check_out/. About 5 minutes on an H100, compiles included
# (an estimate: no GPU has been lent since the script was written).
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
if [ -d .whl ] && [ "${GPU_CHECK_CPU:-0}" != 1 ]; then  # the CPU check runs in this venv
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nanogpt=${NANOGPT:-.nanogpt}
python=${PYTHON:-python3}

if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
  batches=(2); bench_steps=(--steps=1 --warmup=0); attention=xla  # cuDNN attention is GPU-only
  compare=(--device=cpu --compile=false --bf16=false --batch_size=2 --iters=2 --chunk=1 --max_wait=0)
else
  batches=(32); bench_steps=(--steps=20 --warmup=3); attention=cudnn
  compare=(--max_wait=0)
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
fi

{
  status=0
  "$python" -c 'import lmjax, jax; print("jax", jax.__version__, jax.devices())'
  for batch in "${batches[@]}"; do  # GPT-2 124M as nanoGPT pads it (vocabulary 50,304), bf16, cuDNN attention
    "$python" -m lmjax.bench --config=configs/gpt.py:gpt2 --config.data.vocab_size=50304 \
      --config.model.dtype=bfloat16 --config.model.attention_impl=$attention --config.train.batch_size="$batch" \
      "${bench_steps[@]}" --json="$out/bench_gpt2_b$batch.json" || status=1
  done
  # The lmjax worker shares the GPU with nanoGPT's: JAX takes 45% of its memory, not its default 75%.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$python" benchmarks/nanogpt_compare.py --nanogpt_dir="$nanogpt" \
    --preset=gpt2 --data=README.md "${compare[@]}" --json="$out/nanogpt_gpt2.json" || status=1
  exit $status
} 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
