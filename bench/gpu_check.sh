#!/usr/bin/env bash
# The GPU check, in one go: the whole test suite on the CuPy backend, then the training-step bench
# on CuPy side by side with PyTorch on the same GPU. Run from the repository root on a machine with
# an NVIDIA GPU, CuPy and (for the side-by-side numbers) a CUDA build of PyTorch:
#
#     bash bench/gpu_check.sh                 # logs and results go to bench/results/gpu-<date>-<commit>/
#     OUT=/some/dir bash bench/gpu_check.sh   # or wherever OUT points (a folder that is empty or new)
#
# It uses the interpreter's own packages (no virtual environment: GPU machines often have no
# network), pytest-xdist when present (NPROC workers) and pytest-timeout when present.
# REPEATS=n runs the bench n times over (for medians and spread).
# Files written: env.txt, suite.log, junit.xml, bench.jsonl (one JSON object per bench run),
# where.jsonl (bench/gpu_where.py), bench.err, demo.log; every line of bench.jsonl and where.jsonl
# is stamped with commit, date and machine (bench/record.py). It refuses a folder that has files.
set -u
py=${PYTHON:-python3}
out=${OUT:-$($py bench/record.py --path gpu | sed 's/\.jsonl$//')}
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "gpu_check.sh: $out is not empty; set OUT to a new folder (results are never overwritten)" >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
import cupy
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
except ImportError:
    print("torch: not importable")
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# 1. the suite on CuPy: every test, the home backend of tests without the `backend` fixture too
args=(-q -p no:cacheprovider -rfE --junitxml="$out/junit.xml")
$py -c "import xdist" 2>/dev/null && args+=(-n "${NPROC:-8}")
$py -c "import pytest_timeout" 2>/dev/null && args+=(--timeout "${TEST_TIMEOUT:-120}")
start=$(date +%s)
MINIPEFT_BACKEND=cupy timeout "${SUITE_TIMEOUT:-330}" $py -m pytest "${args[@]}" >"$out/suite.log" 2>&1
echo "suite: exit $? after $(( $(date +%s) - start )) s"
tail -n 30 "$out/suite.log"

# 2. the bench: the two fixed configs (tiny: batch 16, small: batch 8), then the small config with
#    a batch that gives a GPU work
bench() { timeout "${BENCH_TIMEOUT:-150}" $py -m minipeft.bench --backend cupy --json "$@" 2>>"$out/bench.err" \
            | $py bench/record.py --out "$out/bench.jsonl" >/dev/null
          [ "${PIPESTATUS[0]}" = 0 ] || echo "bench $* failed (exit ${PIPESTATUS[0]})" | tee -a "$out/bench.err"; }
for repeat in $(seq "${REPEATS:-1}"); do
  for cfg in tiny small; do
    for method in full lora; do bench --config $cfg --method $method --steps "${STEPS:-30}"; done
  done
  for method in full lora; do bench --config small --method $method --batch 64 --steps "${STEPS:-30}"; done
done
cat "$out/bench.jsonl"

# 3. launch-bound or GPU-bound? (bench/gpu_where.py)
timeout "${BENCH_TIMEOUT:-150}" $py bench/gpu_where.py --steps 20 --batch 8 64 2>>"$out/bench.err" \
  | $py bench/record.py --out "$out/where.jsonl" >/dev/null
cat "$out/where.jsonl"

# 4. the demo (make demo's job) on the GPU
start=$(date +%s)
MINIPEFT_BACKEND=cupy timeout "${DEMO_TIMEOUT:-150}" $py -m minipeft.demo >"$out/demo.log" 2>&1
echo "demo: exit $? after $(( $(date +%s) - start )) s"
tail -n 15 "$out/demo.log"

