#!/usr/bin/env bash
# Tree-configuration sweep: scripts/run_mt_bench.sh once per draft tree, profiled (PROFILE=1), then
# benchmarks/sweep_table.py over the results (step time, tree-buffer share and mean acceptance length per
# mask implementation; tokens/s at acceptance lengths 1/3/5/7 as arithmetic).
#
#   bash scripts/tree_sweep.sh OUT_DIR
#
# Trees (total_token/depth/top_k): 60/5/10 (upstream default), 60/8/10 (deeper), 128/5/10 (wider) and
# a chain, top_k 1 at depth 7 (8 tokens). Every other setting comes from the environment as
# run_mt_bench.sh reads it: with none, the trained tiny pair on the CPU (its acceptance is the point
# there; QUESTION_END=20 keeps it to a few minutes); scripts/bench_gpu.sh sweep runs the 8B preset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${1:?usage: bash scripts/tree_sweep.sh OUT_DIR}
PYTHON=${PYTHON:-python}
folders=()
for tree in 60/5/10 60/8/10 128/5/10 8/7/1; do
  IFS=/ read -r total depth top_k <<<"$tree"
  folder=$OUT/tt$total-d$depth-k$top_k
  TOTAL_TOKEN=$total DEPTH=$depth TOP_K=$top_k PROFILE=1 OUT_DIR=$folder \
    bash scripts/run_mt_bench.sh
  folders+=("$folder")
done
"$PYTHON" -m benchmarks.sweep_table "${folders[@]}" --markdown "$OUT/sweep.md"
