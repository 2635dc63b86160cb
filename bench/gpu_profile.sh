#!/usr/bin/env bash
# Per-Function GPU profiles of a training step (bench/profile_step.py) for the configs recorded in
# bench/RESULTS.md, then the whole suite on both backends in one run (NumPy and CuPy cases side by
# side, the cross-backend agreement tests included). Run from the repository root on a GPU machine.
set -u
out=${OUT:-bench/gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for spec in "small full 64" "small lora 64" "small full 8" "tiny full 16"; do
  set -- $spec
  timeout 90 $py bench/profile_step.py --backend cupy --config $1 --method $2 --batch $3 --steps 5 >>"$out/profile.jsonl" 2>>"$out/profile.err"
done
cat "$out/profile.jsonl"
# does CuPy's choice of accelerators change a step? unset = CuPy's default; "" = none;
# "cub,cutensor" = both (one run each)
for acc in unset "" "cub,cutensor"; do
  if [ "$acc" = unset ]; then envset=(env -u CUPY_ACCELERATORS); else envset=(env CUPY_ACCELERATORS="$acc"); fi
  ( "${envset[@]}" timeout 60 $py -m minipeft.bench --backend cupy --config small --method full --batch 64 \
      --steps 30 --json ) 2>>"$out/profile.err" \
    | sed "s/^{/{\"cupy_accelerators\": \"$acc\", /" >>"$out/accelerators.jsonl"
done
cat "$out/accelerators.jsonl"
args=(-q -p no:cacheprovider -rfE)
$py -c "import xdist" 2>/dev/null && args+=(-n "${NPROC:-12}")
$py -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 120)
env -u MINIPEFT_BACKEND timeout "${SUITE_TIMEOUT:-150}" $py -m pytest "${args[@]}" >"$out/suite_both.log" 2>&1
echo "suite (both backends): exit $?"
tail -n 5 "$out/suite_both.log"
