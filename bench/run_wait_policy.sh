#!/usr/bin/env bash
# Same bench, two settings of PyTorch's OpenMP threads: default (they spin between kernels) and
# --torch-omp-wait passive (they sleep between kernels, as minipeft's pool threads do between
# blocks). The four cases alternate with the two settings, REPEATS times. OUT ending in .jsonl gets
# one JSON object per line; otherwise one JSON list (the default, bench/wait_policy.json).
# usage (from the repository root): bench/run_wait_policy.sh [python] [repeats] [OUT]
set -euo pipefail
PY=${1:-python}
REPEATS=${2:-3}
OUT=${3:-bench/wait_policy.json}
tmp=$(mktemp)
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    for wait in default passive; do
      PYTHONPATH=. "$PY" -m minipeft.bench --config "$cfg" --method "$method" --torch-omp-wait $wait --json | tee -a "$tmp"
    done
  done
done
case "$OUT" in
  *.jsonl) cp "$tmp" "$OUT" ;;
  *) "$PY" -c 'import json, sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])], indent=1))' "$tmp" > "$OUT" ;;
esac
rm "$tmp"
