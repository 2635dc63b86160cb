"""What would fused elementwise kernels buy minipeft on the CPU? An upper-bound experiment.

    python bench/what_if_fused.py --config tiny     # needs PyTorch (CPU build)
    python bench/what_if_fused.py --config small --omp-wait default

minipeft runs GELU and layer norm as several NumPy passes; PyTorch runs each as one fused,
vectorised, multi-threaded kernel. To learn how much of the step-time gap those kernels explain
*before* deciding on a dependency that could write them (numba, numexpr, a C extension), this
script swaps minipeft's GELU and LayerNorm Functions for PyTorch's kernels (zero-copy on the same
NumPy arrays, `torch.from_numpy`) and times three things alternating in one process: minipeft as
it is, minipeft with the swapped kernels, and the PyTorch reference model (bench.torch_reference).
Everything else (matmuls, attention, cross-entropy, AdamW, autograd) stays minipeft's. Not part of
the library and never used by it: PyTorch is only a yardstick.

PyTorch's OpenMP threads spin between kernels by default. Mixed into minipeft's step they then take
the cores from OpenBLAS and the swapped step gets slower than the original, which says nothing
about fused kernels. So the script runs PyTorch with sleeping threads (OMP_WAIT_POLICY=PASSIVE, set
before PyTorch is imported) unless --omp-wait default is given. The PyTorch reference model is then
slower than PyTorch as it comes (bench/RESULTS.md, "Threads that spin").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, ".")
import minipeft  # noqa: E402,F401  (first: sets OpenBLAS's thread settings before NumPy loads)
from minipeft import backend, bench, manual_seed  # noqa: E402
from minipeft.ops import activations, fused  # noqa: E402

import numpy  # noqa: E402


def torch_kernels():
    """forward/backward staticmethods that call PyTorch's fused GELU and layer-norm kernels."""
    import torch
    aten = torch.ops.aten

    def gelu_forward(ctx, x):
        tx = torch.from_numpy(x)
        ctx.save_for_backward(tx)
        return aten.gelu(tx, approximate="tanh").numpy()

    def gelu_backward(ctx, g):
        (tx,) = ctx.saved
        tg = torch.from_numpy(numpy.ascontiguousarray(g))
        return aten.gelu_backward(tg, tx, approximate="tanh").numpy()

    def ln_forward(ctx, x, w, b, eps=1e-5):
        tx, tw, tb = (torch.from_numpy(numpy.ascontiguousarray(a)) for a in (x, w, b))
        y, mean, rstd = aten.native_layer_norm(tx, [x.shape[-1]], tw, tb, eps)
        ctx.save_for_backward(tx, tw, tb, mean, rstd)
        return y.numpy()

    def ln_backward(ctx, g):
        tx, tw, tb, mean, rstd = ctx.saved
        need = list(ctx.needs_input_grad)
        gx, gw, gb = aten.native_layer_norm_backward(torch.from_numpy(numpy.ascontiguousarray(g)), tx,
                                                     [tx.shape[-1]], mean, rstd, tw, tb, need)
        return tuple(None if t is None else t.numpy() for t in (gx, gw, gb))

    return {(activations.GELU, "forward"): gelu_forward, (activations.GELU, "backward"): gelu_backward,
            (fused.LayerNorm, "forward"): ln_forward, (fused.LayerNorm, "backward"): ln_backward}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(bench.CONFIGS), default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--omp-wait", choices=["passive", "default"], default="passive",
                   help="PyTorch's OpenMP threads: passive = sleep between kernels (default here)")
    args = p.parse_args()
    if args.omp_wait == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"     # before PyTorch is imported (torch_reference)
    cfg = bench.CONFIGS[args.config]
    threads = os.cpu_count() or 1
    bench.keep_freed_memory()
    manual_seed(0)
    model, opt = bench.build_minipeft(cfg, "full")
    host = bench.token_batch(cfg)
    ids, targets = host[:, :-1], host[:, 1:]
    torch_step, torch, _ = bench.torch_reference(cfg, "full", threads)
    tids, ttargets = torch.from_numpy(ids), torch.from_numpy(targets)

    originals = {key: key[0].__dict__[key[1]] for key in torch_kernels()}
    swapped = {key: staticmethod(fn) for key, fn in torch_kernels().items()}

    def use(table):
        for (cls, kind), fn in table.items():
            setattr(cls, kind, fn)

    def timed(fn):
        time.sleep(bench.PAUSE_S)                     # let the other library's BLAS threads go idle
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def mp_step():
        bench.minipeft_step(model, opt, ids, targets)

    times = {"minipeft": [], "minipeft_fused": [], "torch": []}
    for i in range(args.steps + 3):
        use(originals)
        a = timed(mp_step)
        use(swapped)
        b = timed(mp_step)
        use(originals)
        c = timed(lambda: torch_step(tids, ttargets))
        if i >= 3:
            for k, v in zip(times, (a, b, c)):
                times[k].append(v)
    ms = {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}
    print(json.dumps({"config": args.config, "steps": args.steps, "ms_per_step": ms,
                      "ratio": round(ms["minipeft"] / ms["torch"], 3),
                      "ratio_with_fused_gelu_layernorm": round(ms["minipeft_fused"] / ms["torch"], 3),
                      "threads": threads, "row_threads": backend.get_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                      "torch_version": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
