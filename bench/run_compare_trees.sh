#!/usr/bin/env bash
# The bench of two checkouts of minipeft, side by side: for each case, one run of BASE's bench and
# one of NEW's (each with PyTorch in the same process, so every line has its own ratio), alternating,
# REPEATS times. Each line of OUT is one run's JSON with "tree": "base" or "new" added.
# usage (from anywhere): bench/run_compare_trees.sh BASE_DIR NEW_DIR OUT.jsonl [python] [repeats]
#   e.g. git worktree add ../base <commit>; bench/run_compare_trees.sh ../base . bench/x.jsonl .venv/bin/python 3
set -euo pipefail
BASE=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); OUT=$3
PY=${4:-python}
REPEATS=${5:-3}
: > "$OUT"
for r in $(seq 1 "$REPEATS"); do
  for case in tiny:full small:full tiny:lora small:lora; do
    cfg=${case%:*}; method=${case#*:}
    for tree in base new; do
      dir=$BASE; [ "$tree" = new ] && dir=$NEW
      (cd "$dir" && PYTHONPATH=. "$PY" -m minipeft.bench --config "$cfg" --method "$method" --json) \
        | "$PY" -c 'import json, sys; d = json.loads(sys.stdin.read()); d["tree"] = sys.argv[1]; print(json.dumps(d))' "$tree" \
        | tee -a "$OUT"
    done
  done
done
