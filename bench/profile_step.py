"""Where does one training step go? Time per autograd Function, forward and backward, on either backend.

    python bench/profile_step.py --backend cupy --config small --method full --batch 64
    python bench/profile_step.py --config tiny            # NumPy

Every Function's forward and backward is wrapped: synchronise, start the clock, run, synchronise,
stop. On a GPU this turns the asynchronous queue into one kernel group at a time, so the numbers
are each Function's own GPU time plus its Python/launch cost, and their sum is larger than a normal
step (which overlaps Python with the GPU). Good for "which op is expensive", not for "how fast is
a step" (that is python -m minipeft.bench). The optimizer step is timed the same way.
Prints one JSON object: ms per step for each "Name.forward" / "Name.backward", "optimizer",
"step_total" (the profiled step, wrapper included) and "unwrapped" (step_total minus the parts).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

sys.path.insert(0, ".")
# minipeft before NumPy: it sets OpenBLAS's thread settings, which only count before NumPy loads
from minipeft import backend, bench, manual_seed  # noqa: E402

from minipeft.autograd import Function  # noqa: E402


def _all_functions(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_functions(sub)


def _wrap(cls, kind, acc):
    original = cls.__dict__[kind].__func__        # the staticmethod's function

    def timed(*args, **kwargs):
        backend.synchronize()
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        backend.synchronize()
        acc[f"{cls.__name__}.{kind}"] += time.perf_counter() - t0
        return out
    setattr(cls, kind, staticmethod(timed))


def profile(config: str, method: str, batch: int | None, steps: int) -> dict:
    cfg = bench.make_config(config, batch)
    bench.keep_freed_memory()          # as the bench does by default (no page faults on reuse)
    manual_seed(0)
    model, opt = bench.build_minipeft(cfg, method)
    host = bench.token_batch(cfg)
    ids, targets = backend.to_device(host[:, :-1]), backend.to_device(host[:, 1:])
    for _ in range(3):                                           # warm-up (kernel compilation, pools)
        bench.minipeft_step(model, opt, ids, targets)
    acc = collections.defaultdict(float)
    originals = [(cls, kind, cls.__dict__[kind]) for cls in set(_all_functions())
                 for kind in ("forward", "backward") if kind in cls.__dict__]
    total = 0.0
    try:
        for cls, kind, _ in originals:
            _wrap(cls, kind, acc)
        for _ in range(steps):
            backend.synchronize()
            t0 = time.perf_counter()
            logits, loss = model(ids, targets)
            loss.backward()
            backend.synchronize()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad()
            backend.synchronize()
            t2 = time.perf_counter()
            acc["optimizer"] += t2 - t1
            total += t2 - t0
    finally:
        for cls, kind, original in originals:          # unwrap: the classes are shared
            setattr(cls, kind, original)
    parts = {k: round(v / steps * 1e3, 2) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    return {"config": config, "method": method, "batch": cfg["batch"], "backend": backend.name,
            "steps": steps, "step_total": round(total / steps * 1e3, 2),
            "unwrapped": round((total - sum(acc.values())) / steps * 1e3, 2), "ms": parts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--config", choices=sorted(bench.CONFIGS), default="tiny")
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    backend.use(args.backend)
    print(json.dumps(profile(args.config, args.method, args.batch, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
