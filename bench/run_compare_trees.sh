#!/usr/bin/env bash
# The bench of two checkouts of minipeft, side by side: for each case, one run of BASE's bench and
# one of NEW's (each with PyTorch in the same process, so every line has its own ratio), alternating,
# REPEATS times: the way to measure what a change does to a training step. Each line of OUT is one
# run's JSON with "tree": "base" or "new" and that tree's "commit", stamped with date and machine
# (bench/record.py; its "dirty" is this checkout's), appended to OUT (default
# bench/results/compare_trees-<date>-<commit>.jsonl); nothing is overwritten.
# usage (from the repository root): bench/run_compare_trees.sh BASE_DIR NEW_DIR [OUT] [python] [repeats]
#   e.g. git worktree add ../base <commit>; bench/run_compare_trees.sh ../base . "" .venv/bin/python 3
set -euo pipefail
BASE=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd)
PY=${4:-python}
case $PY in */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") ;; esac   # it runs in both trees
REPEATS=${5:-3}
OUT=${3:-}
[ -n "$OUT" ] || OUT=$("$PY" bench/record.py --path compare_trees)
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    for tree in base new; do
      dir=$BASE; [ "$tree" = new ] && dir=$NEW
      commit=$(git -C "$dir" rev-parse --short HEAD)
      (cd "$dir" && PYTHONPATH=. "$PY" -m minipeft.bench --config "$cfg" --method "$method" --json) \
        | "$PY" bench/record.py --out "$OUT" --add tree=$tree --add commit="$commit"
    done
  done
done
echo "results: $OUT" >&2
