"""Check of the bench's method: time each library ALONE, in its own process.

`python -m minipeft.bench` alternates one minipeft step with one PyTorch step in the same process.
Could sharing a process bias the ratio (caches, allocator, thread pools)? This script runs, in
separate processes and alternating, minipeft alone (`bench.run(..., with_torch=False)`, steps back
to back) and PyTorch alone (the step of `bench.torch_reference`, the same warm-up and number of
steps, back to back), and reports the medians and their ratio.

    python bench/alone.py [--configs tiny small] [--method full] [--repeats 3] [--json out.json]

Needs PyTorch (`pip install torch`; never a dependency of minipeft).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# what each child process runs: `python -c CHILD <who> <config> <method>` prints one JSON line
CHILD = r"""
import json, os, statistics, sys, time
from minipeft import bench
who, config, method = sys.argv[1:4]
if who == "minipeft":
    ms = bench.run(config, method, with_torch=False)["ms_per_step"]
else:
    cfg, steps = bench.CONFIGS[config], bench.DEFAULT_STEPS[config]
    bench.keep_freed_memory()                     # as bench.run does for both libraries
    step, torch, _ = bench.torch_reference(cfg, method, os.cpu_count() or 1)
    ids = bench.token_batch(cfg)
    x, y = torch.from_numpy(ids[:, :-1]), torch.from_numpy(ids[:, 1:])
    for _ in range(bench.WARMUP):
        step(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t)
    ms = round(1000 * statistics.median(times), 2)
print(json.dumps({"who": who, "config": config, "method": method, "ms": ms}))
"""


def one(who: str, config: str, method: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CHILD, who, config, method], capture_output=True, text=True,
                         env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "small"])
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    times = {(c, w): [] for c in a.configs for w in ("minipeft", "torch")}
    for _ in range(a.repeats):                   # alternate, so that machine noise hits both
        for c in a.configs:
            for who in ("minipeft", "torch"):
                times[c, who].append(one(who, c, a.method))
    rows = []
    for c in a.configs:
        m, t = statistics.median(times[c, "minipeft"]), statistics.median(times[c, "torch"])
        rows.append({"config": c, "method": a.method, "minipeft_ms": times[c, "minipeft"], "torch_ms": times[c, "torch"],
                     "minipeft_median_ms": m, "torch_median_ms": t, "ratio": round(m / t, 3)})
        print(f"{c} {a.method}: minipeft {m:.0f} ms, PyTorch {t:.0f} ms alone (medians of {a.repeats}); ratio {m / t:.2f}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
