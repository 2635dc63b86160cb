"""What would running the batch in slices on separate threads buy? A prototype, not the library.

(Kept as the record of the fourth session's measurement. The library now trains data-parallel
over PROCESSES, which the GIL does not slow down: minipeft.parallel, `bench --processes 2`.)

    python bench/what_if_data_parallel.py --config tiny --method full     # needs PyTorch (CPU build)

minipeft's training step hands work to its pool of threads op by op: a tiny step makes 120
hand-offs, and waking a sleeping Python thread costs ~0.1 ms on a small virtual machine
(bench/RESULTS.md, "Now: one pool of threads"). This script tries the other way round: cut the
batch into one slice per thread, and let each thread run forward and backward of its slice from
start to finish (every op in it runs in that thread: backend.rows runs nested calls inline).

Each thread works on a replica of the model: a deep copy whose Parameters are new Tensor objects
that share the SAME arrays as the model's (no weights are copied), so each replica collects its own
`.grad`. Slice i's loss is the mean over its rows, so its backward is seeded with n_i / N; the
model's gradient is the sum of the replicas' (in a fixed order). The script first checks that one
step gives the gradients of the ordinary step (to float32 rounding), then times three things
alternating in one process, pausing 0.15 s before each as the bench does: the ordinary step
(bench.minipeft_step), the sliced step, and the PyTorch reference (bench.torch_reference).

What a real version would need beyond this prototype: every per-sample input sliced with the batch
(padding masks, routed adapter ids, prefix starts), one random stream per slice for dropout, and
PEFT methods that touch gradients (masks, hooks) applied to the summed gradient.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

sys.path.insert(0, ".")
import minipeft  # noqa: E402,F401  (first: sets OpenBLAS's thread settings before NumPy loads)
from minipeft import backend, bench  # noqa: E402

import numpy  # noqa: E402


def replicate(model):
    """A copy of `model` whose parameters are new Tensors over the same arrays (shared weights)."""
    return copy.deepcopy(model, {id(p.data): p.data for p in model.parameters()})


def sliced_backward(model, replicas, ids, targets):
    """Forward and backward of len(replicas) slices of the batch, one per thread of the pool;
    leaves the summed gradient in model's parameters' `.grad`."""
    n, k = ids.shape[0], len(replicas)
    cuts = numpy.linspace(0, n, k + 1).astype(int)

    def run_slice(index):                               # index: a block of rows of arange(k)
        i = int(index[0])
        lo, hi = cuts[i], cuts[i + 1]
        _, loss = replicas[i](ids[lo:hi], targets[lo:hi])
        loss.backward(backend.xp.asarray((hi - lo) / n, dtype=loss.dtype))   # mean over N rows

    backend.rows(run_slice, numpy.arange(k), min_size=0)
    per_replica = [r.parameters() for r in replicas]
    for j, p in enumerate(model.parameters()):
        if p.requires_grad:
            grads = [ps[j].grad for ps in per_replica]
            p.grad = sum(grads[1:], grads[0])
            for ps in per_replica:
                ps[j].grad = None


def sliced_step(model, replicas, opt, ids, targets):
    sliced_backward(model, replicas, ids, targets)
    opt.step()
    opt.zero_grad()


def check_gradients(model, replicas, ids, targets) -> float:
    """Largest |difference| between the sliced and the ordinary gradients, relative to the largest
    gradient entry of the model."""
    _, loss = model(ids, targets)
    loss.backward()
    plain = [None if p.grad is None else p.grad.copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    sliced_backward(model, replicas, ids, targets)
    sliced = [p.grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    scale = max(float(numpy.abs(g).max()) for g in plain if g is not None)
    return max(float(numpy.abs(a - b).max()) for a, b in zip(plain, sliced) if a is not None) / scale


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(bench.CONFIGS), default="tiny")
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    bench.keep_freed_memory()
    cfg = bench.make_config(args.config)
    model, opt = bench.build_minipeft(cfg, args.method)
    replicas = [replicate(model) for _ in range(backend.get_threads())]
    host = bench.token_batch(cfg)
    ids, targets = host[:, :-1], host[:, 1:]
    grad_error = check_gradients(model, replicas, ids, targets)
    torch_step, torch, _ = bench.torch_reference(cfg, args.method, backend.get_threads())
    tids, ttargets = torch.from_numpy(ids), torch.from_numpy(targets)
    steps = {"ordinary": lambda: bench.minipeft_step(model, opt, ids, targets),
             "sliced": lambda: sliced_step(model, replicas, opt, ids, targets),
             "torch": lambda: torch_step(tids, ttargets)}
    for step in steps.values():
        for _ in range(bench.WARMUP):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            time.sleep(bench.PAUSE_S)
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "config": args.config, "method": args.method, "threads": backend.get_threads(), "steps": args.steps,
        "grad_rel_error": grad_error,
        "ms_ordinary": round(ms["ordinary"], 1), "ms_sliced": round(ms["sliced"], 1), "ms_torch": round(ms["torch"], 1),
        "ratio_ordinary": round(ms["ordinary"] / ms["torch"], 3), "ratio_sliced": round(ms["sliced"] / ms["torch"], 3),
    }))


if __name__ == "__main__":
    main()
