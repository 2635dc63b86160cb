"""Every registered PEFT method's training step against LoRA's, on one config, in one process.

    python bench/methods.py --config small --steps 15          # a table, and a record in bench/results/

For each method (its config's defaults; a sparse method at density 0.01) the same GPT-2 model of
`--config` is built twice, once with LoRA (r 8 on q and v) and once with the method, and their
training steps on n_ctx - 32 tokens (forward, backward, the method's before_step hook, AdamW, zero_grad) are timed
ALTERNATING one LoRA step with one method step, so that the machine's noise hits both; the
median of each is reported, and ratio = method / LoRA. Optimizer memory is AdamW's state after
the first step (two float32 moments per trained number), and trainable is the counted number.
One thread (MINIPEFT_THREADS is left as the caller set it), no PyTorch: this compares the
methods with each other, not with another library (python -m minipeft.bench does that).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import record                                                     # noqa: E402
from minipeft import backend                                                 # noqa: E402
from minipeft.bench import CONFIGS, make_config, make_optimizer, token_batch  # noqa: E402
from minipeft.nn import Transformer, TransformerConfig                       # noqa: E402
from minipeft.peft import LoraConfig, apply, registry                        # noqa: E402


ROOM = 32          # every method's sequence is n_ctx - ROOM tokens: prompt tuning's rows need positions


def build(cfg: dict, method: str):
    """(model, optimizer, step) of the config's GPT-2 with `method` (its defaults) applied."""
    backend.manual_seed(0)
    shape = {k: v for k, v in cfg.items() if k != "batch"}
    model = Transformer(TransformerConfig(arch="gpt2", **shape))
    conf = LoraConfig(r=8, lora_alpha=16, target_modules=("q", "v")) if method == "lora-ref" else \
        registry.config_from_options(method, density=0.01 if "density" in _fields(method) else None)
    pm = apply(model, conf)
    opt = make_optimizer(pm.trainable_parameters())
    ids = token_batch(cfg)[:, :cfg["n_ctx"] - ROOM + 1]      # room for a soft prompt's positions
    ids[:, 0], ids[:, 16::16] = 4, 3                         # a [CLS] and some [SEP]s (PASTA acts there)

    def step(n):
        logits, loss = pm(ids[:, :-1], ids[:, 1:])
        aux = pm.aux_loss()
        (loss if aux is None else loss + aux).backward()
        pm.before_step(n, opt)
        opt.step()
        opt.zero_grad()
    return pm, opt, step


def _fields(method: str) -> set:
    import dataclasses
    return {f.name for f in dataclasses.fields(registry.discover()[method].CONFIG)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="small")
    ap.add_argument("--steps", type=int, default=15, help="timed steps of each (after 2 warm-up steps)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--out", default=None, help="append the records here (default bench/results/methods-...)")
    a = ap.parse_args(argv)
    cfg = make_config(a.config)
    methods = a.methods.split(",") if a.methods else [m for m in registry.names()]
    out = a.out or record.default_path("methods")
    print(f"{a.config}: d {cfg['d_model']}, {cfg['n_layer']} layers, batch {cfg['batch']} x {cfg['n_ctx']}; "
          f"{a.steps} alternating steps each; records -> {os.path.relpath(out)}")
    print(f"{'method':<14} {'ms/step':>9} {'LoRA ms':>9} {'ratio':>6} {'trainable':>11} {'optimizer MB':>13}")
    for method in methods:
        try:
            pm, opt, step = build(cfg, method)
            _, lopt, lstep = build(cfg, "lora-ref")
        except (ValueError, TypeError, RuntimeError) as e:
            print(f"{method:<14} skipped: {e}")
            continue
        mine, ref = [], []
        for n in range(1, a.steps + 3):
            for fn, times in ((lstep, ref), (step, mine)):
                t = time.perf_counter()
                fn(n)
                backend.synchronize()
                if n > 2:
                    times.append(time.perf_counter() - t)
        row = {"config": a.config, "method": method, "ms_per_step": 1e3 * statistics.median(mine),
               "lora_ms_per_step": 1e3 * statistics.median(ref),
               "ratio_to_lora": statistics.median(mine) / statistics.median(ref),
               "trainable": pm.trainable_summary()["trainable"], "optimizer_state_bytes": opt.state_bytes(),
               "lora_optimizer_state_bytes": lopt.state_bytes(), "steps": a.steps}
        record.append(out, row)
        print(f"{method:<14} {row['ms_per_step']:9.1f} {row['lora_ms_per_step']:9.1f} {row['ratio_to_lora']:6.2f} "
              f"{row['trainable']:11,} {row['optimizer_state_bytes'] / 2**20:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
