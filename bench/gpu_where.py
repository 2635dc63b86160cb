"""Is a GPU training step bound by the GPU or by Python? (run on a GPU machine, from the repo root)

    python bench/gpu_where.py [--steps 20] [--batch 8 64]

A GPU runs asynchronously: a step's Python code only *queues* kernels and returns, and the GPU
works through the queue. So for the small config, full and LoRA, at each --batch, we time, per
step (medians over --steps):
    issue_ms   from the start of the step until its Python code returns (no synchronisation)
    total_ms   until the GPU has finished the step too (synchronised)
When issue_ms is close to total_ms, the GPU waits for Python: the step is launch-bound, and only
fewer, larger kernels (fusion) or less Python per op would make it faster. When issue_ms is much
smaller, the GPU's kernels are the bottleneck. Caveat: issue_ms close to total_ms can also mean
that something in the step waits for the GPU (a host sync), or that the launch queue is full and
blocks Python; a per-Function profile (bench/profile_step.py) tells these apart.
PyTorch is measured the same way when it has CUDA.
Prints one JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, ".")
# minipeft before NumPy: it sets OpenBLAS's thread settings, which only count before NumPy loads
from minipeft import backend, bench, manual_seed  # noqa: E402



WARMUP = 3


def issue_and_total(step, sync, steps: int) -> tuple[float, float]:
    """Median ms of (step returns, step done on the device) over `steps` steps after WARMUP."""
    issue, total = [], []
    for i in range(steps + WARMUP):
        sync()
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        if i >= WARMUP:
            issue.append(t1 - t0)
            total.append(t2 - t0)
    return round(statistics.median(issue) * 1e3, 2), round(statistics.median(total) * 1e3, 2)


def measure(config: str, method: str, batch: int, steps: int) -> dict:
    cfg = bench.make_config(config, batch)
    manual_seed(0)
    model, opt = bench.build_minipeft(cfg, method)
    host = bench.token_batch(cfg)
    ids, targets = backend.to_device(host[:, :-1]), backend.to_device(host[:, 1:])
    issue, total = issue_and_total(lambda: bench.minipeft_step(model, opt, ids, targets),
                                   backend.synchronize, steps)
    out = {"config": config, "method": method, "batch": batch, "backend": backend.name,
           "issue_ms": issue, "total_ms": total}
    if bench.torch_device_for(backend.name) == "cuda":  # on the CPU nothing is asynchronous
        step, torch, _ = bench.torch_reference(cfg, method, os.cpu_count() or 1, "cuda")
        tids, ttg = (torch.from_numpy(a).to("cuda") for a in (host[:, :-1], host[:, 1:]))
        issue, total = issue_and_total(lambda: step(tids, ttg), torch.cuda.synchronize, steps)
        out.update({"torch_issue_ms": issue, "torch_total_ms": total})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cupy")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    args = p.parse_args()
    backend.use(args.backend)
    for batch in args.batch:
        for method in ("full", "lora"):
            print(json.dumps(measure("small", method, batch, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
