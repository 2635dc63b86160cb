#!/usr/bin/env bash
# Both libraries on ONE core: the process is pinned to core 0 (taskset) and each library gets one
# thread (--threads 1). The ratio then measures the kernels and the Python overhead alone, without
# the cost of handing work to other threads. Four cases, REPEATS times, one JSON object per line.
# usage (from the repository root): bench/run_one_core.sh OUT.jsonl [python] [repeats]
set -euo pipefail
OUT=$1
PY=${2:-python}
REPEATS=${3:-2}
: > "$OUT"
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    PYTHONPATH=. taskset -c 0 "$PY" -m minipeft.bench --config "$cfg" --method "$method" --threads 1 --json | tee -a "$OUT"
  done
done
