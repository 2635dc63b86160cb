"""MiniLM (all-MiniLM-L6-v2) on this machine: forward, LoRA step and full step, minipeft beside
PyTorch + transformers (+ peft) in the same process when they are installed.

    .venv/bin/python bench/minilm.py                 # minipeft alone
    /tmp/oracle/bin/python bench/minilm.py           # side by side (a Python with torch + transformers)

Batch: 32 sequences x 64 tokens, every token real (ids drawn from the vocabulary, seeded), a
2-label classification head on the mean-pooled hidden states, cross-entropy, AdamW (lr 1e-4).
LoRA: r = 8, alpha = 16 on q and v, the head trained too. Median of --repeats timed runs after
--warmup untimed ones; the two libraries alternate, one run each, case by case. The result is
appended, stamped with commit, date and machine (bench/record.py), to --out (default
bench/results/minilm-<date>-<commit>.jsonl).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import minipeft  # noqa: E402  (first: it sets the BLAS threads before NumPy loads)
from minipeft import hf, ops  # noqa: E402
from minipeft.optim import AdamW  # noqa: E402
from minipeft.peft import LoraConfig, get_peft_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import record  # noqa: E402  (bench/record.py)

import numpy as np  # noqa: E402

B, T = 32, 64


def minipeft_cases(ids, mask, labels):
    def fresh():
        model, _ = hf.load_pretrained("minilm-l6", n_labels=2)
        return model

    model = fresh()

    def forward():
        with minipeft.no_grad():
            model.encode(ids, attention_mask=mask)

    def stepper(m, params):
        opt = AdamW(params, lr=1e-4)

        def step():
            loss = ops.cross_entropy(m.classify(ids, mask), labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return step

    lora = get_peft_model(fresh(), LoraConfig(r=8, lora_alpha=16, target_modules=("q", "v"),
                                              modules_to_save=("cls_head",)))
    lora.train()
    full = fresh().train()
    return {"forward": forward,
            "lora_step": stepper(lora, [p for p in lora.parameters() if p.requires_grad]),
            "full_step": stepper(full, list(full.parameters()))}


def torch_cases(ids, mask, labels):
    import torch
    import peft
    from transformers import BertModel
    torch.set_num_threads(2)
    d = hf.minilm_dir()
    tid, tmask, tlab = torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(d, attn_implementation="eager")
            self.cls_head = torch.nn.Linear(384, 2)

        def forward(self, i, m):
            h = self.bert(input_ids=i, attention_mask=m).last_hidden_state
            w = m[:, :, None].float()
            return self.cls_head((h * w).sum(1) / w.sum(1))

    base = BertModel.from_pretrained(d, attn_implementation="eager").eval()

    def forward():
        with torch.no_grad():
            base(input_ids=tid, attention_mask=tmask)

    def stepper(m):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

        def step():
            loss = torch.nn.functional.cross_entropy(m(tid, tmask), tlab)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return step

    full = Classifier().train()
    full.bert.config.hidden_dropout_prob = 0.0
    lora = peft.get_peft_model(Classifier(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                             modules_to_save=["cls_head"]))
    for mod in list(full.modules()) + list(lora.modules()):
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0           # minipeft runs without dropout: compare the same arithmetic
    lora.train()
    return {"forward": forward, "lora_step": stepper(lora), "full_step": stepper(full)}, torch.__version__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None,
                    help="append the result (JSON) here (default: bench/results/minilm-<date>-<commit>.jsonl)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (B, T)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102                                 # [CLS] ... [SEP]
    mask = np.ones((B, T), np.int64)
    labels = rng.integers(0, 2, B).astype(np.int64)
    ours = minipeft_cases(ids, mask, labels)
    try:
        theirs, torch_version = torch_cases(ids, mask, labels)
    except ImportError as e:
        theirs, torch_version = {}, f"not installed ({e.name})"
    result = {"numpy": np.__version__, "torch": torch_version, "batch": [B, T], "repeats": a.repeats,
              "cases": {}}                    # record.append adds commit, date and machine
    for case in ours:
        sides = {"minipeft": ours[case]}
        if case in theirs:
            sides["torch"] = theirs[case]
        for fn in sides.values():
            for _ in range(a.warmup):
                fn()
        times = {k: [] for k in sides}
        for _ in range(a.repeats):            # alternate: a slow moment of the machine hits both
            for k, fn in sides.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        row = {}
        for k, ts in times.items():
            row[f"{k}_s"], row[f"{k}_all"] = statistics.median(ts), ts
        if "torch_s" in row:
            row["ratio"] = row["minipeft_s"] / row["torch_s"]
        result["cases"][case] = row
        print(f"{case:10s} minipeft {row['minipeft_s']:.3f} s" +
              (f"   torch {row['torch_s']:.3f} s   ratio {row['ratio']:.2f}" if "torch_s" in row else ""))
    lr = result["cases"]["lora_step"]["minipeft_s"] / result["cases"]["full_step"]["minipeft_s"]
    print(f"LoRA step / full step (minipeft): {lr:.2f}")
    path = a.out or record.default_path("minilm")
    record.append(path, result)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
