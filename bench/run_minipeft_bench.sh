#!/usr/bin/env bash
# Record the numbers of bench/RESULTS.md: tiny and small x full and lora, each side by side with
# PyTorch in one process, REPEATS times (the repeats of the four cases alternate, so that a busy
# minute hits all of them); then the tiny full step with --malloc default (glibc as it comes), and
# the tiny and small full steps with MINIPEFT_THREADS=1 (elementwise work on one thread).
# Each bench/<config>_<method>.json is a JSON list with one object per repeat.
# usage (from the repository root): bench/run_minipeft_bench.sh [python] [repeats]
set -euo pipefail
PY=${1:-python}
REPEATS=${2:-3}
tmp=$(mktemp -d)
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    PYTHONPATH=. "$PY" -m minipeft.bench --config "$cfg" --method "$method" --json | tee -a "$tmp/${cfg}_${method}.jsonl"
  done
  PYTHONPATH=. "$PY" -m minipeft.bench --config tiny --method full --malloc default --json | tee -a "$tmp/tiny_full_malloc_default.jsonl"
  for cfg in tiny small; do
    MINIPEFT_THREADS=1 PYTHONPATH=. "$PY" -m minipeft.bench --config $cfg --method full --json | tee -a "$tmp/${cfg}_full_1thread.jsonl"
  done
done
for f in "$tmp"/*.jsonl; do
  "$PY" -c 'import json, sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])], indent=1))' "$f" \
    > "bench/$(basename "$f" .jsonl).json"
done
rm -r "$tmp"
