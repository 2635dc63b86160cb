"""What per-sample adapter routing costs: one batch, several LoRA adapters, one per sample.

The LoRA slides say samples of different tasks cannot share a batch. minipeft routes each sample
to its own adapter (`pm(ids, adapter_names=[...])`): every adapter runs once on its rows and one
permutation puts the results back. This script times a training step (forward + backward) and an
inference forward of the tiny config with LoRA r=8 on q and v, side by side in one run:

    one      every sample uses the same adapter (the usual case)
    routed   the batch is split evenly over K adapters, per sample
    split    the same K groups run as K separate smaller batches (what you would do without routing)

    python bench/routing.py [--adapters 4] [--repeats 15] [--out FILE]

Medians over --repeats runs, interleaved so that machine noise hits all three alike. The result is
printed and appended, stamped with commit, date and machine (bench/record.py), to FILE (default
bench/results/routing-<date>-<commit>.jsonl).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import minipeft  # before NumPy: it sets OpenBLAS's thread settings, which only count before NumPy loads
from minipeft import backend
from minipeft.nn import Transformer, TransformerConfig
from minipeft.peft import LoraConfig, apply

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (bench/record.py)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--out", default=None, help="append the result here (default: bench/results/routing-<date>-<commit>.jsonl)")
    a = ap.parse_args(argv)
    minipeft.use(a.backend)
    backend.manual_seed(0)
    B, T = 16, 128
    model = Transformer(TransformerConfig(vocab_size=2048, n_ctx=T, d_model=128, n_layer=4, n_head=4))
    names = [f"task{i}" for i in range(a.adapters)]
    pm = apply(model, LoraConfig(r=8, lora_alpha=16), name=names[0])
    for n in names[1:]:
        pm.add_adapter(n, LoraConfig(r=8, lora_alpha=16))
    g = np.random.default_rng(0)
    ids, tgt = g.integers(0, 2048, (B, T)), g.integers(0, 2048, (B, T))
    per_sample = [names[i % a.adapters] for i in range(B)]
    groups = [[i for i in range(B) if per_sample[i] == n] for n in names]

    def train_one():
        pm.set_adapter(names[0])
        pm(ids, tgt)[1].backward()

    def train_routed():
        pm(ids, tgt, adapter_names=per_sample)[1].backward()

    def train_split():
        for n, rows in zip(names, groups):
            pm.set_adapter(n)
            pm(ids[rows], tgt[rows])[1].backward()

    def infer(fn):
        def run():
            with minipeft.no_grad():
                fn()
        return run

    cases = {"train_one": train_one, "train_routed": train_routed, "train_split": train_split}
    cases.update({"infer_one": infer(lambda: (pm.set_adapter(names[0]), pm(ids))),
                  "infer_routed": infer(lambda: pm(ids, adapter_names=per_sample)),
                  "infer_split": infer(lambda: [(pm.set_adapter(n), pm(ids[r])) for n, r in zip(names, groups)])})
    times = {k: [] for k in cases}
    for fn in cases.values():   # warm-up
        fn()
        pm.zero_grad()
    for _ in range(a.repeats):
        for k, fn in cases.items():
            backend.synchronize()
            t = time.perf_counter()
            fn()
            backend.synchronize()
            times[k].append((time.perf_counter() - t) * 1000)
            pm.zero_grad()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"config": "tiny (vocab 2048, ctx 128, d 128, 4 layers, batch 16)", "lora": "r=8 on q,v",
           "adapters": a.adapters, "backend": backend.name, "repeats": a.repeats,
           "ms_median": {k: round(v, 1) for k, v in med.items()},
           "routed_over_one": {"train": round(med["train_routed"] / med["train_one"], 3),
                               "infer": round(med["infer_routed"] / med["infer_one"], 3)},
           "split_over_one": {"train": round(med["train_split"] / med["train_one"], 3),
                              "infer": round(med["infer_split"] / med["infer_one"], 3)},
           "machine": f"{platform.processor() or platform.machine()}, numpy {np.__version__}"}
    path = a.out or record.default_path("routing")
    print(json.dumps(record.append(path, out), indent=1))
    print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
