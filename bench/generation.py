"""Generation speed: 32 prompts of mixed lengths (E2E dev sources, as the evaluations decode them)
on the shipped gpt2-m, greedy and beam search (4 beams), 40 new tokens, no early stop.

    .venv/bin/python bench/generation.py                           # appends to bench/results/generation-*.jsonl
    .venv/bin/python bench/generation.py --root /tmp/old-tree      # time another checkout's minipeft

--adapter prefix|lora times a PeftModel on gpt2-m (prefix tuning with its MLP reparametrisation,
10 virtual tokens; or LoRA r=8 on q, v) twice per repeat, alternating: as generate runs it (the
adapters' prefix and weights built once per call, PeftModel.inference_session) and with the
session switched off (rebuilt at every new token, as before), and reports the ratio.

--root imports minipeft from another checkout (a `git worktree` of an older commit), so that
before and after run the same prompts (written once to bench/generation_prompts.json) on the same
machine. Reports new tokens per second (prompts x 40 / seconds), median of --repeats runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = os.path.join(HERE, "generation_prompts.json")


def make_prompts(n: int = 32, new_tokens: int = 40):
    from minipeft.pretrain import load_pretrained
    from minipeft.data.tokenizer import load_default
    from minipeft.tasks import generation_prompts, load_task
    model, tok = load_pretrained("gpt2-m"), load_default()
    prompts, _ = generation_prompts(model, tok, load_task("e2e", "dev")[:n], new_tokens)
    return prompts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.dirname(HERE), help="checkout whose minipeft to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--adapter", choices=("prefix", "lora"), default=None,
                    help="time a PeftModel with and without its inference session, alternating")
    ap.add_argument("--out", default=None, help="append the result (one JSON line) to this file "
                                                "(default: bench/results/generation-<date>-<commit>.jsonl)")
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(a.root))
    import minipeft
    from minipeft.generate import generate
    from minipeft.pretrain import load_pretrained
    if not os.path.exists(PROMPTS):
        tmp = PROMPTS + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(make_prompts(new_tokens=a.new_tokens), f)
        os.replace(tmp, PROMPTS)
    with open(PROMPTS, encoding="utf-8") as f:
        prompts = json.load(f)
    model = load_pretrained("gpt2-m")
    sys.path.insert(0, HERE)
    import record
    result = {"timed_commit": _commit(a.root),                 # record.append adds commit, date, machine
              "minipeft_file": os.path.relpath(minipeft.__file__, a.root), "prompts": len(prompts),
              "lengths": sorted({len(p) for p in prompts}), "new_tokens": a.new_tokens, "cases": {}}
    if a.adapter:
        result["adapter"] = a.adapter
        result["cases"] = _session_ratio(adapted(model, a.adapter), prompts, a)
        record.append(a.out or record.default_path("generation"), result)
        return
    for method, kw in (("greedy", {}), ("beam", {"num_beams": 4})):
        generate(model, prompts[:2], 4, method=method, **kw)                    # warm-up
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            generate(model, prompts, a.new_tokens, method=method, eos_id=None, **kw)
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        result["cases"][method] = {"seconds": s, "all": times, "tokens_per_s": len(prompts) * a.new_tokens / s}
        print(f"{method:6s} {s:.2f} s   {len(prompts) * a.new_tokens / s:.0f} new tokens/s")
    record.append(a.out or record.default_path("generation"), result)


def adapted(model, kind: str):
    """gpt2-m wrapped in a prefix (MLP reparametrisation) or LoRA adapter with random weights of
    a trained adapter's size (speed does not depend on the values)."""
    import numpy as np
    from minipeft import backend
    from minipeft.peft import LoraConfig, PrefixConfig, apply
    cfg = (PrefixConfig(num_virtual_tokens=10, prefix_projection=True) if kind == "prefix"
           else LoraConfig(r=8, target_modules=("q", "v")))
    pm = apply(model, cfg)
    g = np.random.default_rng(0)
    for _, p in pm.named_parameters():
        if p.requires_grad:
            p.data = backend.to_device(g.normal(0, 0.02, p.shape).astype(np.float32))
    return pm


def _session_ratio(pm, prompts, a) -> dict:
    import contextlib
    from minipeft.generate import generate
    from minipeft.peft import PeftModel
    on = PeftModel.inference_session
    cases = {}
    for method, kw in (("greedy", {}), ("beam", {"num_beams": 4})):
        generate(pm, prompts[:2], 4, method=method, **kw)                       # warm-up
        times = {"session": [], "no_session": []}
        for _ in range(a.repeats):
            for case in times:
                PeftModel.inference_session = on if case == "session" else (lambda self: contextlib.nullcontext())
                try:
                    t = time.perf_counter()
                    generate(pm, prompts, a.new_tokens, method=method, eos_id=None, **kw)
                    times[case].append(time.perf_counter() - t)
                finally:
                    PeftModel.inference_session = on
        med = {c: statistics.median(v) for c, v in times.items()}
        cases[method] = {"seconds": med, "all": times, "speedup": med["no_session"] / med["session"]}
        print(f"{method:6s} session {med['session']:.2f} s, rebuilt every token {med['no_session']:.2f} s: "
              f"{cases[method]['speedup']:.2f}x")
    return cases


def _commit(root):
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=root, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    main()
