"""`make demo`: LoRA fine-tuning of the shipped decoder on table-to-text, with a before/after.

1. load data/checkpoints/gpt2-m (pretrained on the synthetic world's corpus; it has never seen
   the `name : ... | food : ...` input format),
2. print its outputs for a few dev meaning representations and its dev BLEU,
3. wrap it with LoRA (r=8, alpha=16 on q and v; everything else frozen) and train on E2E,
4. print the trainable-parameter report, the dev BLEU after, the same examples' new outputs,
5. save the adapter (adapter_config.json + adapter_model.safetensors) to runs/demo-lora.

Under a minute on a 2-core CPU: it trains with one process per core (minipeft.parallel; --processes 1
for one process, about a minute). Options: python -m minipeft.demo --steps N --eval-size N --processes N.
"""
from __future__ import annotations

import argparse
import os
import time


WHAT_NEXT = """\
What you are looking at: after under a minute of training only {{q, v}}'s low-rank updates, the model has learnt
the task's format (a fluent sentence about a venue) but not yet to copy the input, so an "after" output
often names another venue or drops an attribute: compare each one with its input line above. Try next:
train longer and see whether the names come right (python -m minipeft.demo --steps 2000), run the adapter
on an input of your own (.venv/bin/minipeft generate --adapter {out} --text "{src}"), or open
lectures/02_lora.ipynb (make lab)."""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-size", type=int, default=60)
    ap.add_argument("--out", default=os.path.join("runs", "demo-lora"))
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--processes", type=int, default=None,
                    help="training processes (default: one per usable core on Linux with NumPy; "
                         "1 = one process; see minipeft.parallel)")
    a = ap.parse_args(argv)

    from . import use
    from .peft import LoraConfig
    from .tasks import finetune
    use(a.backend)
    t0 = time.perf_counter()
    print("minipeft demo: LoRA on table-to-text (E2E format) with the shipped gpt2-m decoder\n")
    res = finetune("e2e", LoraConfig(r=8, lora_alpha=16, target_modules=("q", "v")), "gpt2-m",
                   steps=a.steps, batch_size=16, eval_size=a.eval_size, eval_every=max(a.steps // 2, 1),
                   out_dir=a.out, show=3, processes=a.processes, overwrite=True)   # the demo's own folder
    print("\nThe same dev inputs, before and after fine-tuning:")
    for src, before, after in res.examples:
        print(f"\n  input:  {src}\n  before: {before[:160]}\n  after:  {after[:160]}")
    print(f"\ndev BLEU {res.before['bleu']:.1f} -> {res.after['bleu']:.1f}, ROUGE-L "
          f"{res.before['rouge_l']:.3f} -> {res.after['rouge_l']:.3f}, training "
          f"{res.trainable:,} of {res.total:,} parameters ({100 * res.trainable / res.total:.2f}%)")
    print(f"total time {time.perf_counter() - t0:.0f} s\n")
    print(WHAT_NEXT.format(out=a.out, src=res.examples[0][0] if res.examples else "name : The Eagle | food : Chinese"))


if __name__ == "__main__":
    main()
