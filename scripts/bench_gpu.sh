#!/usr/bin/env bash
# The GPU benchmark behind docs/BENCHMARKS.md: Llama-3.1-8B shapes with random fp16 weights (no
# download), an MT-Bench subset answered with every mask implementation (profiled) and the vanilla
# baseline, speed.py on each pair, and the mask micro-benchmark sweep.
#
#   bash scripts/bench_gpu.sh masks        # micro-benchmark: 60..1024 total tokens, all impls
#   bash scripts/bench_gpu.sh mt-bench 60  # MT-Bench subset with total_token 60 (depth 5, top_k 10)
#   bash scripts/bench_gpu.sh mt-bench 128 # the same with a larger tree
#
# Environment: OUT_DIR [runs/gpu], QUESTION_END [6], MAX_NEW_TOKEN [128], ITERATIONS [200],
# REPEAT [0; 1 adds the control runs of run_mt_bench.sh], PYTHON [python]. Each step writes under
# OUT_DIR (with profile.md/.json/.png, the step profiles side by side); docs/BENCHMARKS.md quotes
# those files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT_DIR=${OUT_DIR:-runs/gpu}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT_DIR"

case ${1:-} in
  masks)
    "$PYTHON" -m evaluation.benchmark_masks --device cuda --total-tokens 60,128,256,512,1024 \
      --iterations "${ITERATIONS:-200}" --out-json "$OUT_DIR/masks.json" \
      --out-png "$OUT_DIR/masks.png" --markdown "$OUT_DIR/masks.md"
    ;;
  mt-bench)
    total=${2:?usage: bench_gpu.sh mt-bench TOTAL_TOKEN}
    PYTHON=$PYTHON DEVICE=cuda DTYPE=float16 BASE_MODEL_PATH=preset:llama3.1-8b \
      MODEL_ID=llama31-8b-random MASK_IMPLS="incremental triton" PROFILE=1 \
      QUESTION_END=${QUESTION_END:-6} MAX_NEW_TOKEN=${MAX_NEW_TOKEN:-128} \
      TOTAL_TOKEN=$total DEPTH=5 TOP_K=10 OUT_DIR="$OUT_DIR/tt$total" \
      bash scripts/run_mt_bench.sh
    ;;
  *)
    echo "usage: bash scripts/bench_gpu.sh masks | mt-bench TOTAL_TOKEN" >&2
    exit 2
    ;;
esac
