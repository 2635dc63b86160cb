"""The `minipeft` command line.

    minipeft count --arch roberta-large --method lora --r 8 --targets q,v --json
    minipeft pretrain --preset gpt2-m --steps 3000 --out data/checkpoints/gpt2-m
    minipeft generate --model gpt2-m --text "The Eagle is a"
    minipeft eval --model gpt2-m
    minipeft finetune --method lora --task e2e --model gpt2-m --steps 300 --out runs/e2e-lora
    minipeft capability gpt2-m                        # what the frozen model already knows (--write: capability.json)
    minipeft fewshot --task sst2 --model bert-m --k 16 --steps 200   # LM-BFF: K per class x 5 seeds, mean +- std
    minipeft assignment build lora --out /tmp/hw      # a student copy; then: cd /tmp/hw && make test
    minipeft grade /tmp/hw                            # the score table (--json FILE: Gradescope's format)

Bad arguments and missing files give one line on stderr (`minipeft: error: ...`) and exit
status 2, not a traceback; Ctrl-C gives one line saying what was kept and exit status 130.
Set MINIPEFT_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


# ----------------------------------------------------------------------------- count

def count_params(arch: str, method: str, r: int = 8, targets: str = "q,v", size: int = 64,
                 placement: str = "houlsby", length: int = 10, with_layernorm: bool = False,
                 top_k: int | None = None, density: float | None = None) -> dict:
    """Trainable and total parameters of a method on a real-size architecture, from formulas alone."""
    from .peft import registry
    from .peft.count import ARCHS, base_params
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cfg = ARCHS[arch]
    base = base_params(cfg, mlm_head=False)
    if method == "none":
        return {"arch": arch, "method": "none", "trainable": 0, "total": base, "base": base}
    if method not in registry.names():
        raise ValueError(f"unknown --method {method!r}; choose one of none, {', '.join(registry.names())}")
    mcfg = registry.config_from_options(method, r=r, targets=targets, size=size, placement=placement,
                                        length=length, with_layernorm=with_layernorm, top_k=top_k,
                                        density=density)
    module = registry.method_of(mcfg)
    in_place = getattr(module, "EXCLUSIVE", False)           # full, BitFit train base parameters
    f = module.formula(cfg, mcfg, mlm_head=False) if in_place else module.formula(cfg, mcfg)
    added = 0 if in_place else f["kept"]
    total = base + added
    # HF's "all params" is counted on the model being trained: an add-on method's trainable
    # parameters are all in it (for prefix tuning, the MLP that `eject` later replaces by `kept`).
    total_training = base + (0 if in_place else f["trainable"])
    out = {"arch": arch, "method": method, "trainable": f["trainable"], "kept": f["kept"], "base": base,
           "total": total, "total_training": total_training,
           "trainable_pct": 100.0 * f["trainable"] / total_training,
           "pct_of_base": 100.0 * f["trainable"] / base,
           "optimizer_state_bytes_fp32": 8 * f["trainable"]}
    for k in ("biases", "layernorm_gains", "nonzeros", "index_bytes"):    # parts; sparse: nonzeros, index bytes
        if k in f:
            out[k] = f[k]
    return out


def _cmd_count(a):
    res = count_params(a.arch, a.method, r=a.r, targets=a.targets, size=a.size, placement=a.placement,
                       length=a.length, with_layernorm=a.with_layernorm, top_k=a.top_k, density=a.density)
    if a.json:
        print(json.dumps(res))
    else:
        line = (f"{res['arch']} + {res['method']}: trainable params: {res['trainable']:,} || all params: "
                f"{res.get('total_training', res['total']):,} || trainable%: {res.get('trainable_pct', 0):.4f}")
        if res.get("kept", res["trainable"]) != res["trainable"]:
            line += f" || kept after training: {res['kept']:,} (all params then: {res['total']:,})"
        print(line)


# ----------------------------------------------------------------------------- pretrain / eval / generate

def _cmd_pretrain(a):
    from . import use
    from .pretrain import pretrain
    use(a.backend)
    from .tasks import new_run_dir
    out = a.out or new_run_dir("pretrain", a.preset)        # runs/pretrain-gpt2-m, -2, ...
    if os.path.exists(os.path.join(out, "model.safetensors")) and not a.overwrite:
        raise ValueError(f"{out} holds a checkpoint already (the shipped one, or an earlier run); pass "
                         "--overwrite to replace it, or leave out --out for a new folder under runs/")
    print(f"pretraining {a.preset} into {out}")
    m = pretrain(a.preset, out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                 eval_every=a.eval_every, progress=not a.quiet, init_from=a.init_from,
                 patience=a.patience, processes=a.processes, corpus_file=a.corpus)
    print(json.dumps(m, indent=1))


def _cmd_eval(a):
    from . import use
    from .pretrain import heldout_loss_of
    use(a.backend)
    loss = heldout_loss_of(a.model)
    print(json.dumps({"model": a.model, "heldout_loss": loss}))


def _cmd_generate(a):
    from . import use
    from .data.tokenizer import load_default
    from .generate import generate_text
    from .pretrain import load_pretrained
    use(a.backend)
    info = None
    if a.adapter:
        from .tasks import read_task_file
        info = read_task_file(a.adapter)          # finetune's task.json: the task's prompt format, the base
    model = load_pretrained(a.model or (info or {}).get("model") or "gpt2-m")
    if a.adapter:
        from .peft import PeftModel
        model = PeftModel.from_pretrained(model, a.adapter)
    tok = load_default()
    texts = a.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("no input text: pass --text \"...\" (repeatable) or lines on standard input")
    options = {"greedy": {}, "beam": {"num_beams": a.num_beams},
               "sample": {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "seed": a.seed}}
    if a.method not in options:
        raise ValueError(f"unknown --method {a.method!r}; choose greedy, beam or sample")
    if info is None:                              # plain text: print the text and its continuation
        outs = generate_text(model, tok, texts, max_new_tokens=a.max_new_tokens, method=a.method, **options[a.method])
        for t, o in zip(texts, outs):
            print(f"{t}{o}")
        return
    from .generate import generate
    from .tasks import soft_prompt_length, task_prompts
    room = model.config.n_ctx - soft_prompt_length(model) - a.max_new_tokens
    if room < 3:
        raise ValueError(f"--max-new-tokens {a.max_new_tokens} leaves no room for the input in the model's "
                         f"{model.config.n_ctx} context positions; use a smaller --max-new-tokens")
    prompts = task_prompts(tok, info["task"], texts, room)   # e.g. <bos> source <sep>, as in training
    outs = generate(model, prompts, a.max_new_tokens, method=a.method, eos_id=tok.eos_id, **options[a.method])
    for t, o in zip(texts, outs):
        print(f"{t}\n  -> {tok.decode([i for i in o if i != tok.eos_id]).strip()}")


def _cmd_finetune(a):
    from . import use
    from .tasks import finetune_cli
    use(a.backend)
    finetune_cli(a)


def _cmd_fewshot(a):
    from . import use
    from .fewshot import fewshot_cli
    use(a.backend)
    fewshot_cli(a)


def _cmd_capability(a):
    from . import use
    from .capability import capability_cli
    use(a.backend)
    capability_cli(a)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .peft import registry                     # the --method choices: every registered method
    p = argparse.ArgumentParser(prog="minipeft", description="Parameter-efficient fine-tuning from scratch.")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("count", help="parameter counts of a method on a real-size architecture")
    c.add_argument("--arch", required=True, help="bert-base, bert-large, roberta-base, roberta-large, gpt2, gpt2-medium, gpt2-large")
    c.add_argument("--method", required=True, help="none, " + ", ".join(registry.names()))
    c.add_argument("--r", type=int, default=8, help="LoRA rank")
    c.add_argument("--targets", default="q,v", help="LoRA targets, a comma list of q,k,v,o")
    c.add_argument("--size", type=int, default=64, help="adapter bottleneck size m")
    c.add_argument("--placement", default="houlsby", help="adapter placement: houlsby, pfeiffer, parallel")
    c.add_argument("--length", type=int, default=10, help="prefix / prompt length")
    c.add_argument("--with-layernorm", action="store_true", help="BitFit: also the LayerNorm gains")
    c.add_argument("--top-k", type=int, default=None, help="full: train only the top k layers")
    c.add_argument("--density", type=float, default=None,
                   help="sparse methods: the fraction of entries that train (default: the method's)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_cmd_count)

    def common(q):
        q.add_argument("--backend", default="numpy", help="numpy, cupy or auto")
        q.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("pretrain", help="pretrain a shipped model size on data/pretrain")
    t.add_argument("--preset", required=True, help="gpt2-s, gpt2-m, gpt2-l, bert-m")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--out", default=None, help="output directory (default: a new folder runs/pretrain-PRESET[-N]); "
                   "the shipped ones are data/checkpoints/PRESET, replaced only with --overwrite")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after this many evaluations without a better held-out loss, keep the best")
    t.add_argument("--processes", type=int, default=None,
                   help="data-parallel processes (default: one per usable core)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--init-from", default=None,
                   help="continue from this checkpoint (a directory or a shipped name: a second stage, DAPT/TAPT)")
    t.add_argument("--corpus", default=None,
                   help="continue on this text file instead of data/pretrain (documents separated by blank lines)")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    common(t)
    t.set_defaults(fn=_cmd_pretrain)

    e = sub.add_parser("eval", help="held-out loss of a checkpoint")
    e.add_argument("--model", default="gpt2-m", help="a shipped preset name or a checkpoint directory")
    common(e)
    e.set_defaults(fn=_cmd_eval)

    g = sub.add_parser("generate", help="continue text with a decoder checkpoint")
    g.add_argument("--model", default=None, help="shipped preset or checkpoint dir (default: the base model "
                   "the --adapter was trained on, else gpt2-m)")
    g.add_argument("--adapter", default=None, help="directory written by save_pretrained / finetune (finetune's "
                   "also records its task: each text is then shown as in training, e.g. <bos> TEXT <sep>)")
    g.add_argument("--text", action="append", help="input text (repeatable); default: lines of stdin")
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--method", default="greedy", help="greedy, beam or sample")
    g.add_argument("--num-beams", type=int, default=4)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    common(g)
    g.set_defaults(fn=_cmd_generate)

    f = sub.add_parser("finetune", help="fine-tune a shipped model on a task with a PEFT method")
    f.add_argument("--method", required=True, help=", ".join(registry.names()))
    f.add_argument("--task", required=True, help="e2e, webnlg, sst2")
    f.add_argument("--model", default=None, help="shipped preset, checkpoint dir, Hugging Face folder or minilm-l6 "
                   "(default: gpt2-m; bert-m for sst2)")
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=None, help="default depends on the method")
    f.add_argument("--r", type=int, default=8)
    f.add_argument("--alpha", type=float, default=16.0)
    f.add_argument("--targets", default="q,v")
    f.add_argument("--size", type=int, default=16)
    f.add_argument("--placement", default="houlsby")
    f.add_argument("--length", type=int, default=10)
    f.add_argument("--density", type=float, default=None,
                   help="sparse methods: the fraction of entries that train (default: the method's)")
    f.add_argument("--train-size", type=int, default=None, help="use only the first N training examples")
    f.add_argument("--eval-size", type=int, default=100)
    f.add_argument("--eval-every", type=int, default=100)
    f.add_argument("--patience", type=int, default=None)
    f.add_argument("--self-ensemble", type=int, default=None, metavar="K",
                   help="also evaluate the mean of the trained parameters over the last K steps (self-ensemble)")
    f.add_argument("--self-distill", type=float, default=None, metavar="LAMBDA",
                   help="add lambda * MSE to a teacher made of the last K steps (K = --self-ensemble or 5; "
                        "Xu et al. 2020: lambda 1.0); trains in one process")
    f.add_argument("--teacher", choices=("average", "vote"), default="average",
                   help="--self-distill's teacher: the averaged parameters (SDA) or the averaged outputs (SDV)")
    f.add_argument("--data", default=None, metavar="DIR",
                   help="read the task from DIR, a folder laid out like data/ (e.g. DIR/e2e/train.csv,"
                        " or the real releases' names: DIR/e2e/trainset.csv ...); default: data/")
    f.add_argument("--out", default=None, help="where the best adapter and the log go (default: a new "
                   "folder runs/TASK-METHOD[-N] for every run)")
    f.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--processes", type=int, default=None,
                   help="training processes, one thread each (default: one per usable core on Linux "
                        "with NumPy, else 1); 1 = one process using threads op by op")
    common(f)
    f.set_defaults(fn=_cmd_finetune)

    w = sub.add_parser("fewshot", help="LM-BFF's protocol: K examples per class, 5 data seeds, zero-shot or "
                       "prompt-based fine-tuning through the LM head, mean and std")
    w.add_argument("--task", default="sst2", help="sst2, sst5 or mnli")
    w.add_argument("--model", default="bert-m", help="shipped preset, checkpoint dir, Hugging Face folder, minilm-l6 or minilm-l6-mlm")
    w.add_argument("--template", default=None, help="e.g. '<S1> It was <MASK> .' (default: the task's in fewshot.DEFAULTS)")
    w.add_argument("--words", default=None, help="label words in label order, e.g. terrible,great")
    w.add_argument("--k", type=int, default=16, help="training examples per class (and as many for model selection)")
    w.add_argument("--seeds", type=int, default=5, help="data seeds 1..N")
    w.add_argument("--steps", type=int, default=0, help="prompt-based fine-tuning steps (0: no training)")
    w.add_argument("--method", default="full", help="the PEFT method that trains: " + ", ".join(registry.names()))
    w.add_argument("--lr", type=float, default=1e-5)
    w.add_argument("--batch-size", type=int, default=8)
    w.add_argument("--eval-every", type=int, default=50)
    w.add_argument("--demos", action="store_true", help="append one demonstration per class from D_train")
    w.add_argument("--standard", action="store_true",
                   help="standard fine-tuning instead: a new classification head, no template (LM-BFF's baseline)")
    w.add_argument("--auto-words", type=int, default=0, metavar="K",
                   help="search the label words among each class's top K (0: keep --words)")
    w.add_argument("--auto-template", default=None, metavar="BEFORE,AFTER",
                   help="search a template with this many words before and after the label word")
    w.add_argument("--test-size", type=int, default=None, help="evaluate on the first N dev examples")
    w.add_argument("--data", default=None, metavar="DIR", help="a folder laid out like data/")
    w.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    w.add_argument("--quiet", action="store_true")
    common(w)
    w.set_defaults(fn=_cmd_fewshot)

    k = sub.add_parser("capability", help="what a frozen checkpoint already knows: reference loss, linear "
                       "probe, zero-shot SST-2, in-context translation")
    k.add_argument("model", nargs="?", help="a shipped preset name or a checkpoint directory")
    k.add_argument("--card", action="store_true", help="print data/README.md's checkpoint tables, read from "
                   "every shipped checkpoint's metrics.json and capability.json")
    k.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    k.add_argument("--write", action="store_true", help="also write capability.json into the checkpoint folder")
    k.add_argument("--overwrite", action="store_true", help="--write: replace a capability.json in data/checkpoints")
    k.add_argument("--fast", action="store_true", help="smaller samples (capability.FAST), for a quick look")
    k.add_argument("--data", default=None, metavar="DIR", help="read the tokenizer, corpus and tasks from DIR, "
                   "a folder laid out like data/ (default: the checkpoint's tokenizer and data/)")
    common(k)
    k.set_defaults(fn=_cmd_capability)

    from . import course                       # the course kit: assignments and the autograder
    s = sub.add_parser("assignment", help="course assignments built from the reference code")
    s.add_argument("action", choices=("list", "build", "notebook"))
    s.add_argument("name", nargs="?", help="build: the assignment (see `minipeft assignment list`); "
                                           "notebook: a lecture notebook")
    s.add_argument("--out", help="the folder of the student copy (build: must not exist or be empty)")
    s.add_argument("--force", action="store_true", help="build: replace a non-empty --out")
    s.set_defaults(fn=course.cli_assignment)
    r = sub.add_parser("grade", help="run an assignment's tests and print the score table")
    r.add_argument("directory", nargs="?", default=".", help="a built assignment (default: here)")
    r.add_argument("--assignment", default=None, help="which one, where DIR has no .assignment.json")
    r.add_argument("--task", default=None, help="grade this task only")
    r.add_argument("--hidden-from", default=None, metavar="REPO", help="copy the hidden tests from here first")
    r.add_argument("--json", default=None, metavar="FILE", help="also write Gradescope's results.json here")
    r.set_defaults(fn=course.cli_grade)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError, ImportError) as e:
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"minipeft: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:                # Ctrl-C: finetune and pretrain say what they kept
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        print(f"\nminipeft: {e.args[0] if e.args else 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
