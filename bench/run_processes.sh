#!/usr/bin/env bash
# minipeft's two ways to use the cores, each against PyTorch in its own run: --processes 1 (one
# process, minipeft's pool of threads op by op) and --processes 2 (data-parallel: two processes of
# one thread, one slice of the batch each; minipeft.parallel). PyTorch gets 2 threads in both
# (--threads 2). The four cases alternate with the two settings, REPEATS times. One JSON object per
# line, stamped with commit, date and machine (bench/record.py), appended to OUT (default
# bench/results/processes-<date>-<commit>.jsonl); nothing is overwritten.
# usage (from the repository root): bench/run_processes.sh [python] [repeats] [OUT]
set -euo pipefail
PY=${1:-python}
REPEATS=${2:-3}
OUT=${3:-$("$PY" bench/record.py --path processes)}
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    for n in 1 2; do
      PYTHONPATH=. "$PY" -m minipeft.bench --config "$cfg" --method "$method" --threads 2 --processes $n --json \
        | "$PY" bench/record.py --out "$OUT"
    done
  done
done
echo "results: $OUT" >&2
