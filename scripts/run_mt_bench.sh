#!/usr/bin/env bash
# One command: MT-Bench answers with several tree-mask implementations and the vanilla baseline, then
# speed.py on each pair (tokens/s, speedup, acceptance, token-level equivalence audit).
#
# With no arguments and no environment it runs the embedded tiny default on the CPU: builds the tiny
# checkpoints (python -m eagle.tiny) under checkpoints/tiny if absent, obtains
# data/mt_bench/question.jsonl if absent, answers all 80 questions with `rebuild`, `vectorized` and the
# baseline, and compares rebuild vs vectorized and baseline vs rebuild (a few minutes on 2 cores).
# All of them answer in one process, interleaved (--mask-impl rebuild,vectorized --with-baseline:
# every turn answered by each in turn, the order rotating), so that speed.py pairs the same turn from
# the same process and drift of the machine cancels. Every setting is checked first, before anything
# is built, fetched or loaded. The last lines printed are a summary, one line per pair: the pair's
# name and speed.py's last line (its verdict).
#
# Environment (all optional):
#   MODEL            tiny | smollm2: the default checkpoints. smollm2 is SmolLM2-135M-Instruct with
#                    its shipped EAGLE-3 head, written under SMOLLM2_DIR by python -m eagle.smollm2
#                    if absent (needs the real extra, see the README)                      [tiny]
#   SMOLLM2_DIR      where the SmolLM2 checkpoints are found or built          [checkpoints/smollm2]
#   BASE_MODEL_PATH  base checkpoint dir, or preset:llama3.1-8b / preset:tiny [MODEL's dir/base]
#   EA_MODEL_PATH    EAGLE-3 head dir (ignored with a preset)                  [MODEL's dir/draft]
#   TOKENIZER_PATH   tokenizer with a Llama-3 chat template; a preset needs one
#                    [the base dir; for a preset checkpoints/tiny/base, built if absent]
#   MODEL_ID         prefix of the answer files and model ids: MODEL_ID-rebuild.jsonl, ... [MODEL]
#   MASK_IMPLS       extra mask implementations, space separated (rebuild, vectorized always run)
#   DEVICE           auto | cpu | cuda | cuda:N                                           [auto]
#   DTYPE            auto | float32 | float16 | bfloat16 (auto: fp16 on CUDA, fp32 on CPU)  [auto]
#   QUESTION_BEGIN   first question index (slice)                                        [0]
#   QUESTION_END     end question index (slice)                                          [all 80]
#   MAX_NEW_TOKEN    new tokens per turn at most (the generators' own default, without this
#                    script: 1024, as FastChat's and upstream EAGLE's)                   [32]
#   TOTAL_TOKEN DEPTH TOP_K   draft tree                                                 [60 5 10]
#   TEMPERATURE      0 = greedy                                                          [0.0]
#   ATTENTION_BACKEND  auto | math | efficient | cudnn | flash: pin the attention kernels  [auto]
#   CUDA_GRAPH       auto | on | off: replay captured decoding steps (auto: on with CUDA)  [auto]
#   PROFILE          1: per-step section profile (ANSWER.profile.json) for EAGLE runs, and
#                    all of them side by side in OUT_DIR/profile.md (.json, .png)          [0]
#   REPEAT           1: a control run: rebuild twice and the baseline answer once more, interleaved,
#                    in a second process (files *-repeat.jsonl). Rebuild against its second
#                    member there is an A/A control within one process: each A/B verdict is
#                    judged against its spread (speed.py's --control). Each file compared with
#                    the first process's shows the drift between processes (unpaired) and
#                    whether the outputs reproduce at all: required in float32, reported
#                    otherwise                                                            [0]
#   OUT_DIR          answers and reports                                                 [runs/mt_bench]
#   QUESTION_SOURCE  local question.jsonl to copy over the shipped data/mt_bench/question.jsonl
#                    when that one is missing or fails its sha256 check (else it is downloaded)  []
#   TINY_DIR         where the tiny checkpoints are found or built                       [checkpoints/tiny]
#   PYTHON           interpreter                                                         [python]
#   NPROC            processes sharing the model, tensor parallel (> 1: the generator runs under
#                    torchrun --standalone --nproc_per_node=NPROC: one GPU each with CUDA, gloo
#                    ranks on the CPU; rank 0 writes the answers)                           [1]
#   OMP_NUM_THREADS  torch CPU threads per process: the tiny model's small ops only pay for thread
#                    synchronisation, many times slower with 2 threads on 2 busy cores       [1]
#
# Answer files resume: a rerun with the same settings skips answered questions; a rerun with other
# settings stops and names the file (delete OUT_DIR or choose another). Mask-implementation pairs
# must match token for token (exit 1 otherwise); the baseline pair too in float32, while in
# float16/bfloat16 its differences are allowed where they are near-ties of two different computations:
# the referee (python -m evaluation.referee) judges each such pair, and a real difference (a side that
# departed from greedy decoding) fails the run; its verdicts are the last lines printed.
# Under sampling (TEMPERATURE > 0) the baseline and EAGLE draw from different random streams: their
# tokens are not expected to match, and the report compares tokens per step and lengths instead.
#
# Examples:
#   scripts/run_mt_bench.sh
#   MODEL=smollm2 scripts/run_mt_bench.sh
#   MASK_IMPLS="incremental triton" DEVICE=cuda BASE_MODEL_PATH=preset:llama3.1-8b \
#     QUESTION_END=10 MAX_NEW_TOKEN=256 PROFILE=1 OUT_DIR=runs/8b scripts/run_mt_bench.sh
#   NPROC=2 DEVICE=cuda BASE_MODEL_PATH=preset:llama3.3-70b QUESTION_END=10 OUT_DIR=runs/70b-tp2 \
#     scripts/run_mt_bench.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TINY_DIR=${TINY_DIR:-checkpoints/tiny}
SMOLLM2_DIR=${SMOLLM2_DIR:-checkpoints/smollm2}
MODEL=${MODEL:-tiny}
case $MODEL in
  tiny) MODEL_DIR=$TINY_DIR ;;
  smollm2) MODEL_DIR=$SMOLLM2_DIR ;;
  *) printf 'run_mt_bench: MODEL must be tiny or smollm2, got %s\n' "$MODEL" >&2; exit 2 ;;
esac
BASE_MODEL_PATH=${BASE_MODEL_PATH:-$MODEL_DIR/base}
EA_MODEL_PATH=${EA_MODEL_PATH:-$MODEL_DIR/draft}
TOKENIZER_PATH=${TOKENIZER_PATH:-}
MODEL_ID=${MODEL_ID:-$MODEL}
MASK_IMPLS=${MASK_IMPLS:-}
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-auto}
QUESTION_BEGIN=${QUESTION_BEGIN:-}
QUESTION_END=${QUESTION_END:-}
MAX_NEW_TOKEN=${MAX_NEW_TOKEN:-32}
TOTAL_TOKEN=${TOTAL_TOKEN:-60}
DEPTH=${DEPTH:-5}
TOP_K=${TOP_K:-10}
TEMPERATURE=${TEMPERATURE:-0.0}
ATTENTION_BACKEND=${ATTENTION_BACKEND:-auto}
CUDA_GRAPH=${CUDA_GRAPH:-auto}
PROFILE=${PROFILE:-0}
REPEAT=${REPEAT:-0}
OUT_DIR=${OUT_DIR:-runs/mt_bench}
QUESTION_SOURCE=${QUESTION_SOURCE:-}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
QUESTION_FILE=data/mt_bench/question.jsonl

log() { printf '[run_mt_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

ensure_tiny() {
  if [[ -f $TINY_DIR/base/config.json && -f $TINY_DIR/draft/config.json ]]; then
    return
  fi
  log "building the tiny checkpoints in $TINY_DIR (python -m eagle.tiny)"
  "$PYTHON" -m eagle.tiny --out "$TINY_DIR"
}

ensure_smollm2() {
  if [[ -f $SMOLLM2_DIR/base/config.json && -f $SMOLLM2_DIR/draft/config.json ]]; then
    return
  fi
  log "writing the SmolLM2 checkpoints in $SMOLLM2_DIR (python -m eagle.smollm2)"
  "$PYTHON" -m eagle.smollm2 --out "$SMOLLM2_DIR" || die "python -m eagle.smollm2 failed (see above)"
}

ensure_questions() {
  if [[ -n $QUESTION_SOURCE ]]; then
    "$PYTHON" -m evaluation.mt_bench_data --out "$QUESTION_FILE" --from "$QUESTION_SOURCE"
  else
    "$PYTHON" -m evaluation.mt_bench_data --out "$QUESTION_FILE"
  fi
}

mask_impls() {  # rebuild, vectorized, then MASK_IMPLS, each once, comma separated
  local impls=() seen=" " impl
  for impl in rebuild vectorized $MASK_IMPLS; do
    [[ $seen == *" $impl "* ]] && continue
    seen+="$impl "
    impls+=("$impl")
  done
  local IFS=,
  echo "${impls[*]}"
}

common_args() {
  local args=(--base-model-path "$BASE_MODEL_PATH" --ea-model-path "$EA_MODEL_PATH"
              --question-file "$QUESTION_FILE" --max-new-token "$MAX_NEW_TOKEN"
              --total-token "$TOTAL_TOKEN" --depth "$DEPTH" --top-k "$TOP_K"
              --temperature "$TEMPERATURE" --device "$DEVICE" --dtype "$DTYPE"
              --attention-backend "$ATTENTION_BACKEND")
  [[ -n $TOKENIZER_PATH ]] && args+=(--tokenizer-path "$TOKENIZER_PATH")
  [[ $CUDA_GRAPH != auto ]] && args+=(--cuda-graph "$CUDA_GRAPH")
  [[ -n $QUESTION_BEGIN ]] && args+=(--question-begin "$QUESTION_BEGIN")
  [[ -n $QUESTION_END ]] && args+=(--question-end "$QUESTION_END")
  printf '%s\n' "${args[@]}"
}

LAUNCH=()  # how the generator starts: "$PYTHON" -m, or torchrun with NPROC ranks (main sets it)
answers() {  # answers IMPLS SUFFIX: one process (of NPROC ranks), the members interleaved, one file each
  local err rc=0
  log "answers, interleaved in one process (ranks: $NPROC): --mask-impl $1 --with-baseline${2:+ ($2)}; questions" \
      "every file already holds are skipped"
  err=$(mktemp)
  { "${LAUNCH[@]}" evaluation.gen_ea_answer_llama3chat "${args[@]}" "${profile[@]}" --mask-impl "$1" \
      --with-baseline --model-id "$MODEL_ID-{impl}$2" --answer-file "$OUT_DIR/$MODEL_ID-{impl}$2.jsonl" \
      2>&1 1>&3 3>&- | tee "$err" >&2; } 3>&1 || rc=$?
  if grep -q 'cannot resume: written with different settings' "$err"; then
    rm -f "$err"
    die "OUT_DIR ($OUT_DIR) holds answers written with other settings (see above): delete it," \
        "or set OUT_DIR to another folder"
  fi
  rm -f "$err"
  (( rc == 0 )) || exit "$rc"
}

FAILED=() ALLOWED=() UNEXPECTED=() SUMMARY=()
CONTROL=()  # REPEAT=1: the second process's rebuild pair, an A/A control for each A/B verdict
compare() {  # compare NAME BASELINE OPT STRICT(1/0) [WHY A DIFFERENCE IS ALLOWED WHEN NOT STRICT]
  local name=$1 base=$2 opt=$3 strict=$4 allowed=${5:-baseline vs EAGLE in reduced precision} rc=0
  local report=$OUT_DIR/speed-$name.txt control=()
  [[ $name == *-repeat ]] || control=("${CONTROL[@]}")
  log "speed.py: $name"
  "$PYTHON" -m evaluation.speed --baseline "$base" --opt "$opt" --json "$OUT_DIR/speed-$name.json" \
    --markdown "$OUT_DIR/speed-$name.md" --plot "$OUT_DIR/speed-$name.png" "${control[@]}" \
    >"$report" || rc=$?
  cat "$report"
  case $rc in
    0) if grep -q 'token identity not expected' "$report"; then
         UNEXPECTED+=("$name"); log "$name: token identity not expected (sampling by two methods; see the report)"
       else log "$name: outputs identical"; fi ;;
    1) if [[ $strict == 1 ]]; then FAILED+=("$name"); log "$name: OUTPUTS DIFFER";
       else ALLOWED+=("$name"); log "$name: outputs differ (allowed: $allowed)"; judge "$name" "$base" "$opt"; fi ;;
    *) die "speed.py failed on $name (exit $rc)" ;;
  esac
  SUMMARY+=("$name: $(grep -v '^[[:space:]]*$' "$report" | tail -n 1)")
}

JUDGED=()  # the referee's verdict on each pair that differs where a difference is allowed
judge() {  # judge NAME A B: near-ties (rounding) or real differences (a side left greedy decoding)
  local name=$1 report=$OUT_DIR/referee-$1.md rc=0
  log "referee: $name"
  "$PYTHON" -m evaluation.referee "$2" "$3" --question-file "$QUESTION_FILE" --device "$DEVICE" \
    --json "$OUT_DIR/referee-$name.json" >"$report" || rc=$?
  cat "$report"
  case $rc in
    0) ;;
    1) FAILED+=("$name (real differences)") ;;
    *) die "the referee failed on $name (exit $rc)" ;;
  esac
  JUDGED+=("$name: $(tail -n 1 "$report")")
}

check_settings() {  # every setting, before anything is built, fetched or loaded
  "$PYTHON" -m evaluation.check_settings "${args[@]}" --mask-impl "$1" --with-baseline \
    --answer-file "$OUT_DIR/$MODEL_ID-{impl}.jsonl" || die "settings refused (see above); nothing was run"
}

main() {
  local start=$SECONDS impl impls args=() flag
  for flag in PROFILE REPEAT; do
    [[ ${!flag} == [01] ]] || die "$flag must be 0 or 1, got '${!flag}'"
  done
  [[ $NPROC =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive number of processes, got '$NPROC'"
  LAUNCH=("$PYTHON" -m)
  (( NPROC == 1 )) || LAUNCH=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" -m)
  impls=$(mask_impls)
  mapfile -t args < <(common_args)
  check_settings "$impls"
  if [[ $BASE_MODEL_PATH == "$TINY_DIR/base" || ( $BASE_MODEL_PATH == preset:* && -z $TOKENIZER_PATH ) ]]; then
    ensure_tiny
  fi
  [[ $BASE_MODEL_PATH == "$SMOLLM2_DIR/base" ]] && ensure_smollm2
  if [[ $BASE_MODEL_PATH == preset:* && -z $TOKENIZER_PATH ]]; then
    TOKENIZER_PATH=$TINY_DIR/base
    mapfile -t args < <(common_args)
  fi
  [[ -f $QUESTION_FILE ]] || ensure_questions
  mkdir -p "$OUT_DIR"
  log "mask implementations: $impls and the baseline; answers in $OUT_DIR"
  local profile=()
  [[ $PROFILE == 1 ]] && profile=(--profile)
  answers "$impls" ""
  if [[ $REPEAT == 1 ]]; then
    log "control: rebuild twice and the baseline once more, in a second process"
    answers rebuild,rebuild -repeat
  fi

  local ref=$OUT_DIR/$MODEL_ID-rebuild.jsonl base=$OUT_DIR/$MODEL_ID-baseline.jsonl strict=0
  [[ $REPEAT == 1 ]] && CONTROL=(--control "$OUT_DIR/$MODEL_ID-rebuild-repeat.jsonl"
                                 "$OUT_DIR/$MODEL_ID-rebuild-2-repeat.jsonl")
  for impl in ${impls//,/ }; do
    [[ $impl == rebuild ]] || compare "rebuild-vs-$impl" "$ref" "$OUT_DIR/$MODEL_ID-$impl.jsonl" 1
  done
  [[ $("$PYTHON" -m evaluation.settings_of "$ref" dtype) == float32 ]] && strict=1
  compare "baseline-vs-rebuild" "$base" "$ref" "$strict"
  if [[ $REPEAT == 1 ]]; then
    local why="the same command in another process; in reduced precision the GPU kernels need not reproduce bit for bit"
    compare "rebuild-vs-rebuild-repeat" "$ref" "$OUT_DIR/$MODEL_ID-rebuild-repeat.jsonl" "$strict" "$why"
    compare "baseline-vs-baseline-repeat" "$base" "$OUT_DIR/$MODEL_ID-baseline-repeat.jsonl" "$strict" "$why"
  fi

  if [[ $PROFILE == 1 ]]; then
    local profiles=()
    for impl in ${impls//,/ }; do profiles+=("$OUT_DIR/$MODEL_ID-$impl.jsonl.profile.json"); done
    [[ $REPEAT == 1 ]] && profiles+=("$OUT_DIR/$MODEL_ID-rebuild-repeat.jsonl.profile.json")
    log "step profiles side by side: $OUT_DIR/profile.md (.json, .png)"
    "$PYTHON" -m evaluation.profile_table "${profiles[@]}" --markdown "$OUT_DIR/profile.md" \
      --json "$OUT_DIR/profile.json" --plot "$OUT_DIR/profile.png" >/dev/null
  fi
  local extra=""
  [[ $PROFILE == 1 ]] && extra=", $OUT_DIR/profile.md (.json, .png)"
  log "reports: $OUT_DIR/speed-*.md (.json, .png, .txt)$extra; $((SECONDS - start)) s in all"
  if (( ${#FAILED[@]} )); then
    log "token ids differ in: ${FAILED[*]}"
  elif (( ${#ALLOWED[@]} + ${#UNEXPECTED[@]} )); then
    log "outputs identical where required${ALLOWED[*]:+; they differ, as allowed, in: ${ALLOWED[*]}}"
  else
    log "all compared outputs identical"
  fi
  if (( ${#UNEXPECTED[@]} )); then
    log "not expected to match token for token (sampling, temperature $TEMPERATURE: plain decoding and EAGLE draw from different random streams): ${UNEXPECTED[*]}; their reports compare tokens per step and lengths instead"
  fi
  printf '\nsummary (pair: speed.py verdict)\n'
  printf '%s\n' "${SUMMARY[@]}"
  if (( ${#JUDGED[@]} )); then
    printf '\nreferee (pairs that differ where allowed: near-ties or real differences)\n'
    printf '%s\n' "${JUDGED[@]}"
  fi
  (( ${#FAILED[@]} == 0 )) || exit 1
}

main "$@"
