#!/usr/bin/env bash
# The GPU runs behind docs/BENCHMARKS.md: Llama-3.1-8B shapes with random fp16 weights (no download),
# every comparison inside one process where the tool can pair it.
#
#   bash scripts/bench_gpu.sh mt-bench   # all four mask implementations and the baseline, interleaved
#                                        # in one process, graphs on; question ids 81-90, 256 tokens
#   bash scripts/bench_gpu.sh repeat     # the same OUT_DIR again with REPEAT=1: rebuild and the
#                                        # baseline in a second process (reproducibility, drift)
#   bash scripts/bench_gpu.sh eager      # the same comparison with graphs off (fewer questions)
#   bash scripts/bench_gpu.sh sweep      # tree configurations, each profiled (graph segments)
#   bash scripts/bench_gpu.sh peer       # transformers' generate, static cache (compiled), same prompts
#   bash scripts/bench_gpu.sh masks      # the mask micro-benchmark: 60..1024 total tokens
#
# Environment: OUT_DIR [runs/gpu], QUESTION_END [10; eager 2; sweep 1], MAX_NEW_TOKEN [256; eager
# 128; sweep 64], ITERATIONS [200], PYTHON [python]. The tree sweep runs scripts/tree_sweep.sh,
# which also gives the tiny model's acceptance on the CPU (see its header).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT_DIR=${OUT_DIR:-runs/gpu}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT_DIR"
export PYTHON DEVICE=cuda DTYPE=float16 BASE_MODEL_PATH=preset:llama3.1-8b \
  MODEL_ID=llama31-8b-random MASK_IMPLS="incremental triton"

case ${1:-} in
  mt-bench | repeat)
    REPEAT=$([[ $1 == repeat ]] && echo 1 || echo 0) CUDA_GRAPH=on \
      QUESTION_END=${QUESTION_END:-10} MAX_NEW_TOKEN=${MAX_NEW_TOKEN:-256} \
      OUT_DIR="$OUT_DIR/graphs" bash scripts/run_mt_bench.sh
    ;;
  eager)
    CUDA_GRAPH=off QUESTION_END=${QUESTION_END:-2} MAX_NEW_TOKEN=${MAX_NEW_TOKEN:-128} \
      OUT_DIR="$OUT_DIR/eager" bash scripts/run_mt_bench.sh
    ;;
  sweep)
    CUDA_GRAPH=on QUESTION_END=${QUESTION_END:-1} MAX_NEW_TOKEN=${MAX_NEW_TOKEN:-64} \
      bash scripts/tree_sweep.sh "$OUT_DIR/sweep"
    ;;
  peer)
    "$PYTHON" -m benchmarks.peer_transformers --tokenizer checkpoints/tiny/base \
      --question-end "${QUESTION_END:-10}" --max-new-token "${MAX_NEW_TOKEN:-256}" \
      --out "$OUT_DIR/peer.json"
    ;;
  masks)
    "$PYTHON" -m evaluation.benchmark_masks --device cuda --total-tokens 60,128,256,512,1024 \
      --iterations "${ITERATIONS:-200}" --out-json "$OUT_DIR/masks.json" \
      --out-png "$OUT_DIR/masks.png" --markdown "$OUT_DIR/masks.md"
    ;;
  *)
    echo "usage: bash scripts/bench_gpu.sh mt-bench | repeat | eager | sweep | peer | masks" >&2
    exit 2
    ;;
esac
