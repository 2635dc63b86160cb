"""Time one training step of minipeft, side by side with the same model in PyTorch.

    python -m minipeft.bench --config tiny --method full            # a readable summary
    python -m minipeft.bench --config small --method lora --json    # one JSON object (for tools)
    python -m minipeft.bench --config tiny --backend cupy --steps 50

A step is what training does: `logits, loss = model(ids, targets)`, `loss.backward()`, an AdamW
step and `zero_grad()`, on a batch of random token ids (seeded). After a few warm-up steps, the
median of `--steps` timed steps is reported.

When PyTorch is importable (it is never a dependency of minipeft), the same architecture, the
same GPT-2 initialisation (weights N(0, 0.02), biases 0), AdamW, float32 and the same number of
CPU threads are timed in the same process, ALTERNATING one minipeft step with one PyTorch step,
so that noise from other processes on the machine hits both. `ratio` = minipeft / torch.
With `--backend cupy`, PyTorch runs on the same GPU ("cuda"; both in plain float32, no TF32,
which is the default of both libraries), each step timed between two synchronisations.
Threads: PyTorch gets torch.set_num_threads(os.cpu_count()) and minipeft backend.get_threads()
threads (one per usable core; MINIPEFT_THREADS=1 = one core), or both `--threads N`. With
`--processes N` minipeft instead trains data-parallel (minipeft.parallel): N processes of one
thread each, one slice of the batch per process, and PyTorch gets N threads. In minipeft
OpenBLAS multiplies on one thread, and backend.matmul / backend.rows cut the products and the
fused elementwise work into blocks of rows for minipeft's own pool (see cpu.py). Before each
step the bench pauses 0.15 s (PAUSE_S; not on a GPU), and by default it makes glibc keep freed
memory (see keep_freed_memory).
PyTorch's OpenMP threads spin between kernels by default, which makes its many short kernels
cheaper to start; `--torch-omp-wait passive` makes them sleep instead (OMP_WAIT_POLICY=PASSIVE),
as minipeft's pool threads do between blocks (Python threads waiting on a lock).
Results and the method are recorded in bench/RESULTS.md.

Reported quantities (JSON keys):
    ms_per_step            median wall time of one step (minipeft)
    tokens_per_s           batch * seq / step time
    params, trainable      parameter counts (tied embeddings counted once)
    peak_rss_mb            peak resident memory of the process, read BEFORE PyTorch is imported
    processes              1, or n > 1 with --processes n: minipeft's data-parallel step
                           (minipeft.parallel), n processes of one thread, one slice of the batch each
    worker_peak_rss_mb     with --processes n: peak resident memory of the largest worker process
                           (peak_rss_mb is then the parent's; the parameters, in shared memory, count
                           in both)
    gflops                 matmul FLOPs of one step (see `step_flops`) / step time, in GFLOP/s
    peak_gflops            this machine's float32 matmul rate, measured in this run: the best of
                           a loop of n x n @ n x n products (2 n^3 FLOPs each; n = 1024 on the
                           CPU, 8192 on a GPU, which a smaller product leaves mostly idle)
    peak_fraction          gflops / peak_gflops
    optimizer_state_bytes  bytes held by the optimizer's state (AdamW: 2 moments per trainable)
    torch_ms_per_step, ratio, torch_version, torch_device
                           when PyTorch is importable (and not --no-torch)
    torch_skipped          why not, when PyTorch was asked for but could not run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time

from . import backend, cpu
from .pretrain import lm_loss  # the model's mean cross-entropy of a batch (for DataParallel)

numpy = backend.host()  # host-side arrays only (token ids, the peak-matmul inputs before xp.asarray)

CONFIGS = {
    # name: model shape + batch; the context is used in full (seq = n_ctx)
    "tiny": dict(vocab_size=2048, n_ctx=128, d_model=128, n_layer=4, n_head=4, batch=16),
    "small": dict(vocab_size=4096, n_ctx=256, d_model=256, n_layer=6, n_head=8, batch=8),
}
DEFAULT_STEPS = {"tiny": 20, "small": 10}
WARMUP = 3
PAUSE_S = 0.15      # between alternating minipeft / PyTorch steps (see `run`)
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16, ("q", "v")
LR, WEIGHT_DECAY = 3e-4, 0.01


# ----------------------------------------------------------------------------- FLOPs

def step_flops(cfg: dict, method: str, r: int = LORA_R) -> int:
    """Matmul FLOPs of one training step (forward + backward), counting 2 per multiply-add.

    Forward, per token: each layer's q, k, v, o (4 * 2 d^2) and MLP (2 * 2 d d_ff) products, the
    attention products S = Q K^T and A V over the full T x T score matrix (2 * 2 T d; the causal
    mask is applied after the product, so masked entries are computed too), and the tied LM head
    (2 d V). Backward: each product C = A B costs one more product per input that needs a gradient.
      full: every input needs one, so backward = 2 x forward: 3 x forward in all
            (the familiar "6 x matmul parameters x tokens", plus the attention terms).
      lora: frozen weights get no gradient, only their inputs do (1 x); the attention products
            still need both (2 x); the LoRA factors x A^T and (x A^T) B^T (2 * 2 d r per adapted
            matrix) need both (2 x). In layer 0 the block's input comes from the frozen
            embeddings and needs no gradient: its q, k, v products and the LoRA A input gradient
            are skipped, and so is dL/dK (k has no trainable parameter behind it).
    Elementwise work (layer norm, GELU, softmax, AdamW) is not counted. tests/test_bench.py checks
    this formula against the products that a step really runs.
    """
    d, L, V, T = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"], cfg["n_ctx"]
    dff = 4 * d
    layer = 4 * 2 * d * d + 2 * 2 * d * dff                      # per token and layer, forward
    attention = 2 * 2 * T * d
    head = 2 * d * V
    forward = L * (layer + attention) + head
    if method == "full":
        per_token = 3 * forward
    else:
        n_ad = len(LORA_TARGETS)
        lora = n_ad * 2 * 2 * d * r                              # per layer, forward
        backward = (L * layer - 3 * 2 * d * d) + head            # input gradients only
        backward += 2 * L * attention - 2 * T * d                # no dL/dK in layer 0
        backward += 2 * L * lora - n_ad * 2 * d * r              # no dL/dx into A in layer 0
        per_token = forward + L * lora + backward
    return per_token * cfg["batch"] * T


def matmul_peak_gflops(xp, sync, n: int = 1024, reps: int = 10) -> float:
    """Best float32 GFLOP/s of an n x n @ n x n product on this machine (`reps` timed products),
    multiplied as minipeft multiplies: backend.matmul, in blocks of rows on every thread."""
    a = xp.asarray(numpy.random.default_rng(0).standard_normal((n, n), dtype=numpy.float32))
    b = xp.asarray(numpy.random.default_rng(1).standard_normal((n, n), dtype=numpy.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    backend.matmul(a, b, out=c)
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        backend.matmul(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


keep_freed_memory = backend.keep_freed_memory   # (kept under this name for the scripts in bench/)


def make_config(name: str, batch: int | None = None) -> dict:
    """A copy of CONFIGS[name], with its batch replaced when `batch` is given."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; expected one of {sorted(CONFIGS)}")
    cfg = dict(CONFIGS[name])
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        cfg["batch"] = batch
    return cfg


def token_batch(cfg: dict, seed: int = 0):
    """Seeded random token ids on the host, (batch, n_ctx + 1): inputs ids[:, :-1], targets ids[:, 1:]."""
    return numpy.random.default_rng(seed).integers(0, cfg["vocab_size"], size=(cfg["batch"], cfg["n_ctx"] + 1))


# ----------------------------------------------------------------------------- minipeft side

def build_minipeft(cfg: dict, method: str):
    """The GPT-2 model of `cfg` with `method` applied; returns (model, optimizer)."""
    from .nn import Transformer, TransformerConfig
    shape = {k: v for k, v in cfg.items() if k != "batch"}
    model = Transformer(TransformerConfig(arch="gpt2", **shape))
    if method == "lora":
        model = apply_lora(model)
    return model, make_optimizer(model.trainable_parameters())


def apply_lora(model):
    """Freeze the base model and add LoRA (r=8, alpha=16) on q and v: the one PEFT hook."""
    from .peft import LoraConfig, apply
    return apply(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS))


def make_optimizer(params):
    """minipeft.optim.AdamW with the benchmark's learning rate and weight decay."""
    from .optim import AdamW
    return AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)


def minipeft_step(model, opt, ids, targets, dp=None):
    """One training step; with `dp` (a parallel.DataParallel) each process runs a slice of the batch."""
    if dp is None:
        logits, loss = model(ids, targets)
        loss.backward()
    else:
        loss = dp.backward({"ids": ids, "targets": targets})
    opt.step()
    opt.zero_grad()
    return loss


# ----------------------------------------------------------------------------- PyTorch side

def torch_reference(cfg: dict, method: str, threads: int, device: str = "cpu"):
    """The same GPT-2 model, initialisation and AdamW in plain PyTorch on `device` ("cpu" or
    "cuda"); returns (step_fn, torch, (params, trainable)).

    Imported lazily: PyTorch is only a yardstick, never a dependency of minipeft.
    """
    import math

    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d, H, V, T = cfg["d_model"], cfg["n_head"], cfg["vocab_size"], cfg["n_ctx"]

    class LoRALinear(tnn.Module):  # y = x W^T + b + (alpha/r) x A^T B^T, W and b frozen
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.A = tnn.Parameter(torch.randn(LORA_R, base.in_features) / math.sqrt(base.in_features))
            self.B = tnn.Parameter(torch.zeros(base.out_features, LORA_R))

        def forward(self, x):
            return self.base(x) + (LORA_ALPHA / LORA_R) * (x @ self.A.T @ self.B.T)

    class Attn(tnn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (tnn.Linear(d, d) for _ in range(4))
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1))

        def forward(self, x):
            B_, T_, _ = x.shape
            q, k, v = (m(x).view(B_, T_, H, d // H).transpose(1, 2) for m in (self.q, self.k, self.v))
            s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // H))
            a = s.masked_fill(self.mask[:T_, :T_], -1e9).softmax(dim=-1)
            return self.o((a @ v).transpose(1, 2).reshape(B_, T_, d))

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = tnn.LayerNorm(d), Attn(), tnn.LayerNorm(d)
            self.fc, self.proj = tnn.Linear(d, 4 * d), tnn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, d), tnn.Embedding(T, d)
            self.h = tnn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.ln_f = tnn.LayerNorm(d)
            for m in self.modules():  # GPT-2 init: weights N(0, 0.02), biases 0
                if isinstance(m, (tnn.Linear, tnn.Embedding)):
                    tnn.init.normal_(m.weight, std=0.02)
                if isinstance(m, tnn.Linear):
                    tnn.init.zeros_(m.bias)

        def forward(self, ids, targets):
            x = self.wte(ids) + self.wpe.weight[: ids.shape[1]]
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T       # tied LM head
            return logits, F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

    model = GPT()
    if method == "lora":
        model.requires_grad_(False)
        for block in model.h:
            for name in LORA_TARGETS:
                setattr(block.attn, name, LoRALinear(getattr(block.attn, name)))
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)

    def step(ids, targets):
        logits, loss = model(ids, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    counts = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in trainable))
    return step, torch, counts


# ----------------------------------------------------------------------------- the run

def torch_device_for(backend_name: str) -> str | None:
    """Where PyTorch runs opposite minipeft: "cpu" beside NumPy, "cuda" beside CuPy; None when
    PyTorch is not importable (or, beside CuPy, was built without CUDA)."""
    try:
        import torch
    except ImportError:
        return None
    if backend_name == "numpy":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def run(config: str = "tiny", method: str = "full", backend_name: str = "numpy", steps: int | None = None,
        with_torch: bool = True, threads: int | None = None, tune_malloc: bool = True,
        pause: float | None = None, warmup: int = WARMUP, seed: int = 0, batch: int | None = None,
        processes: int = 1) -> dict:
    """Build, warm up and time both libraries; returns the dict that `--json` prints.
    threads: None = PyTorch gets os.cpu_count() threads and minipeft keeps its own setting;
    n = both get n (minipeft's is restored afterwards).
    processes: n > 1 = minipeft trains data-parallel (minipeft.parallel): n processes of one thread
    each, one slice of the batch per process; PyTorch gets n threads unless `threads` says otherwise."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes={processes!r}: need a whole number >= 1")
    if processes > 1 and threads is None:
        threads = processes

    saved = backend.get_threads()
    if threads is not None:
        backend.set_threads(threads)
    try:
        return _run(config=config, method=method, backend_name=backend_name, steps=steps,
                    with_torch=with_torch, threads=threads or os.cpu_count() or 1, tune_malloc=tune_malloc,
                    pause=pause, warmup=warmup, seed=seed, batch=batch, processes=int(processes))
    finally:
        if threads is not None:
            backend.set_threads(saved)


def _run(*, config, method, backend_name, steps, with_torch, threads, tune_malloc, pause, warmup, seed, batch,
         processes):
    cfg = make_config(config, batch)
    if method not in ("full", "lora"):
        raise ValueError(f"unknown method {method!r}; expected 'full' or 'lora'")
    from . import manual_seed, use
    use(backend_name)
    steps = steps or DEFAULT_STEPS[config]
    if pause is None:  # the pause is for threads that spin after a step (PyTorch's); a GPU has none
        pause = PAUSE_S if backend.name == "numpy" else 0.0
    malloc_tuned = keep_freed_memory() if tune_malloc else False

    manual_seed(seed)
    model, opt = build_minipeft(cfg, method)
    host_ids = token_batch(cfg, seed)
    ids, targets = backend.to_device(host_ids[:, :-1]), backend.to_device(host_ids[:, 1:])
    # fork the workers now, before PyTorch starts threads of its own; `with` stops them, also on an error
    from .parallel import DataParallel
    with DataParallel(model, lm_loss, processes) if processes > 1 else contextlib.nullcontext() as dp:
        xp, sync = backend.xp, backend.synchronize

        def timed_minipeft():
            sync()
            t0 = time.perf_counter()
            minipeft_step(model, opt, ids, targets, dp)
            sync()                                   # the GPU runs asynchronously: wait before reading the clock
            return time.perf_counter() - t0

        for _ in range(warmup):
            timed_minipeft()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
        # a GPU needs a big product to reach its peak
        peak = matmul_peak_gflops(xp, sync, n=1024 if backend.name == "numpy" else 8192)

        torch_device = torch_device_for(backend.name) if with_torch else None
        if torch_device is None:
            timed_torch = None
        else:
            torch_step, torch, torch_counts = torch_reference(cfg, method, threads, torch_device)
            tids = torch.from_numpy(host_ids[:, :-1]).to(torch_device)
            ttargets = torch.from_numpy(host_ids[:, 1:]).to(torch_device)
            tsync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)

            def timed_torch():
                tsync()
                t0 = time.perf_counter()
                torch_step(tids, ttargets)
                tsync()
                return time.perf_counter() - t0

            for _ in range(warmup):
                timed_torch()

        # Alternate one minipeft step with one PyTorch step, so that noise from the rest of the
        # machine hits both. Before each step, pause: the worker threads of the library that just ran
        # may keep spinning after its last kernel (PyTorch's OpenMP threads by default; OpenBLAS's
        # when it runs threads of its own, ~25 us with backend.OPENBLAS_THREAD_TIMEOUT, ~0.1 s without)
        # and would take a core from the other.
        times, torch_times = [], []
        for _ in range(steps):
            if timed_torch is not None:
                time.sleep(pause)
            times.append(timed_minipeft())
            if timed_torch is not None:
                time.sleep(pause)
                torch_times.append(timed_torch())

        sec = statistics.median(times)
        tokens = cfg["batch"] * cfg["n_ctx"]
        flops = step_flops(cfg, method)
        out = {
            "config": config, "method": method, "backend": backend.name, "steps": steps, "warmup": warmup,
            "batch": cfg["batch"], "seq": cfg["n_ctx"], "tokens_per_step": tokens,
            "ms_per_step": round(sec * 1e3, 2),
            "ms_min": round(min(times) * 1e3, 2),
            "tokens_per_s": round(tokens / sec, 1),
            "params": model.num_parameters(),
            "trainable": model.num_parameters(trainable_only=True),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "step_gflop": round(flops / 1e9, 3),
            "gflops": round(flops / sec / 1e9, 2),
            "peak_gflops": round(peak, 1),
            "peak_fraction": round(flops / sec / 1e9 / peak, 4),
            "optimizer_state_bytes": opt.state_bytes(),
            "optimizer": type(opt).__module__ + "." + type(opt).__name__,
            "threads": threads,
            "processes": 1 if dp is None else dp.processes,   # > 1: data-parallel (minipeft.parallel)
            "row_threads": backend.get_threads(),   # backend.rows (with processes > 1: the parent's AdamW only)
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
            "openblas_num_threads": backend.OPENBLAS_NUM_THREADS,
            "products_in_blocks": (cpu.SPLIT_PRODUCTS and backend.name == "numpy" and backend.get_threads() > 1
                                   and dp is None),
            "malloc_tuned": malloc_tuned,
            "numpy_version": numpy.__version__,
            "python": platform.python_version(),
        }
        if backend.name == "cupy":  # the pool keeps what it allocated: its size is the peak
            out["gpu_pool_mb"] = round(xp.get_default_memory_pool().total_bytes() / 2**20, 1)
        if with_torch and timed_torch is None:  # say why there is no PyTorch line
            out["torch_skipped"] = ("PyTorch is not importable (pip install torch)" if backend.name == "numpy"
                                    else "PyTorch is not importable or has no CUDA")
        if timed_torch is not None:
            tsec = statistics.median(torch_times)
            out.update({
                "torch_ms_per_step": round(tsec * 1e3, 2),
                "torch_ms_min": round(min(torch_times) * 1e3, 2),
                "ratio": round(sec / tsec, 3),
                "torch_version": torch.__version__,
                "torch_device": torch_device,
                "torch_threads": torch.get_num_threads(),
                "torch_params": torch_counts[0], "torch_trainable": torch_counts[1],
                "pause_s": pause,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            })
    if dp is not None:  # the largest worker, as it reported when stopped (the shared parameters count in both)
        out["worker_peak_rss_mb"] = round(dp.worker_maxrss_kb / 1024, 1)
    return out

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minipeft.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--backend", default="numpy", help="numpy (default), cupy or auto")
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed steps after {WARMUP} warm-up steps (default: tiny 20, small 10)")
    p.add_argument("--batch", type=int, default=None,
                   help="override the config's batch size (e.g. to fill a GPU); the default is the "
                        "config's own (tiny 16, small 8)")
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"untimed steps first (default {WARMUP})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-torch", action="store_true", help="do not time the PyTorch reference")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both libraries: minipeft's pool (backend.set_threads) and "
                        "torch.set_num_threads (default: every core). 1 = one thread each")
    p.add_argument("--processes", type=int, default=1,
                   help="n > 1: minipeft trains data-parallel, n processes of one thread each, one slice "
                        "of the batch per process (minipeft.parallel); PyTorch gets n threads "
                        "unless --threads says otherwise. Default 1: one process, minipeft's pool of threads")
    p.add_argument("--torch-omp-wait", choices=["default", "passive"], default="default",
                   help="passive: PyTorch's OpenMP threads sleep between kernels instead of spinning "
                        "(OMP_WAIT_POLICY=PASSIVE), as minipeft's pool threads sleep between blocks "
                        "(see backend.rows). default: leave PyTorch as it is")
    p.add_argument("--malloc", choices=["keep", "default"], default="keep",
                   help="keep: glibc keeps freed memory for reuse (default, see keep_freed_memory); "
                        "default: leave malloc as it is")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    if args.torch_omp_wait == "passive":
        if "torch" in sys.modules:  # OpenMP reads the variable when PyTorch's runtime starts
            p.error("--torch-omp-wait passive: PyTorch was imported before the bench started")
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        backend.use(args.backend)
    except (RuntimeError, ValueError) as e:  # e.g. --backend cupy without a GPU: say what to install
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = run(args.config, args.method, args.backend, args.steps, with_torch=not args.no_torch,
              tune_malloc=args.malloc == "keep", warmup=args.warmup, batch=args.batch, threads=args.threads,
              processes=args.processes)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"minipeft bench: config={res['config']} method={res['method']} backend={res['backend']} "
          f"steps={res['steps']} (batch {res['batch']} x {res['seq']} tokens)"
          + (f", data-parallel over {res['processes']} processes" if res["processes"] > 1 else ""))
    print(f"  params {res['params']:,}  trainable {res['trainable']:,}  "
          f"optimizer state {res['optimizer_state_bytes'] / 2**20:.1f} MiB  peak RSS {res['peak_rss_mb']:.0f} MB")
    print(f"  minipeft  {res['ms_per_step']:8.1f} ms/step  {res['tokens_per_s']:9.0f} tokens/s  "
          f"{res['gflops']:6.1f} GFLOP/s = {100 * res['peak_fraction']:.0f}% of the measured "
          f"{res['peak_gflops']:.0f} GFLOP/s matmul peak")
    if "torch_skipped" in res:
        print(f"  pytorch   not timed: {res['torch_skipped']}")
    if "torch_ms_per_step" in res:
        print(f"  pytorch   {res['torch_ms_per_step']:8.1f} ms/step  (torch {res['torch_version']}, "
              f"{res['torch_device']}, {res['torch_threads']} threads)   "
              f"ratio minipeft/torch = {res['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
