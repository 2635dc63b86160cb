#!/usr/bin/env bash
# Both libraries on ONE core: the process is pinned to core 0 (taskset) and each library gets one
# thread (--threads 1). The ratio then measures the kernels and the Python overhead alone, without
# the cost of handing work to other threads. Four cases, REPEATS times. One JSON object per line,
# stamped with commit, date and machine (bench/record.py), appended to OUT (default
# bench/results/one_core-<date>-<commit>.jsonl); nothing is overwritten.
# usage (from the repository root): bench/run_one_core.sh [python] [repeats] [OUT]
set -euo pipefail
PY=${1:-python}
REPEATS=${2:-2}
OUT=${3:-$("$PY" bench/record.py --path one_core)}
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    PYTHONPATH=. taskset -c 0 "$PY" -m minipeft.bench --config "$cfg" --method "$method" --threads 1 --json \
      | "$PY" bench/record.py --out "$OUT"
  done
done
echo "results: $OUT" >&2
