"""LM-BFF's few-shot protocol (Gao, Fisch & Chen 2021, section 3): K labelled examples per class,
five data seeds, the mean and standard deviation of the test accuracy.

    from minipeft.fewshot import run
    from minipeft.prompting import Template, Verbalizer
    r = run("sst2", "bert-m", Template("<S1> It was <MASK> ."), Verbalizer(("terrible", "great")),
            k=16, seeds=5, steps=200, method="full")
    r["mean"], r["std"], r["per_seed"]

For each data seed s = 1..5:
    D_train, D_dev = K examples per class each, drawn with seed s from the task's training split
                     (the paper's D_dev has the size of D_train: model selection on more labelled
                     data than K would not be few-shot)
    steps = 0        the frozen model through the prompt (zero-shot, or in-context with demos)
    steps > 0        prompt-based fine-tuning through the LM head (prompting.prompt_loss_fn: no new
                     parameters) with any PEFT method ("full" is the paper's), evaluated on D_dev
                     every eval_every steps; the best evaluation's parameters are kept
    accuracy         on the task's dev split (the paper, too, tests on the original dev sets)
and the options of the paper's table 3: demonstrations (one per class from D_train, appended to
every input, in training and at test), automatic label words (search_label_words on D_train) and
an automatic template (search_templates on D_train; the paper fills spans with T5, this the model's
own LM, see prompting.py).

Tasks: sst2, sst5 (one sentence), mnli (two: templates with <S1> and <S2>, labels in the order
entailment, neutral, contradiction).
"""
from __future__ import annotations

import math
import random
import statistics

from . import backend
from .autograd import no_grad
from .prompting import (Example, Template, Verbalizer, accuracy, prompt_batches, prompt_loss_fn,
                        search_label_words, search_templates, single_token_ids)

TASKS = {"sst2": 2, "sst5": 5, "mnli": 3}
DEFAULTS = {                     # LM-BFF's manual prompts (table 1) in this corpus's words
    "sst2": ("<S1> It was <MASK> .", ("terrible", "great")),
    "sst5": ("<S1> It was <MASK> .", ("terrible", "bad", "okay", "good", "great")),
    "mnli": ("<S1> ? <MASK> , <S2>", ("Yes", "Maybe", "No")),
}


def examples(task: str, split: str, data_dir: str | None = None) -> list:
    """A task split as prompting.Example (s1, int label, s2)."""
    import os
    from .data.formats import read_glue_tsv
    from .pretrain import DATA
    if task not in TASKS:
        raise ValueError(f"unknown few-shot task {task!r}; choose one of {', '.join(TASKS)}")
    name = {"mnli": {"train": "train.tsv", "dev": "dev_matched.tsv"}}.get(task, {}).get(split, f"{split}.tsv")
    rows = read_glue_tsv(os.path.join(data_dir or DATA, task, name), task)
    if task == "mnli":
        return [Example(r.sentence1, r.label_id, r.sentence2) for r in rows]
    return [Example(r.sentence, r.label) for r in rows]


def sample_k_shot(pool: list, k: int, n_labels: int, seed: int) -> tuple[list, list]:
    """(D_train, D_dev): k examples per class each, disjoint, drawn from `pool` with `seed`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: the number of training examples per class, a whole number >= 1 (LM-BFF: 16)")
    rng = random.Random(f"minipeft-k-shot:{seed}")
    train, dev = [], []
    for y in range(n_labels):
        mine = [e for e in pool if e.label == y]
        if len(mine) < 2 * k:
            raise ValueError(f"class {y} has {len(mine)} examples, fewer than the 2k = {2 * k} that D_train "
                             f"and D_dev need; choose a smaller k")
        drawn = rng.sample(mine, 2 * k)
        train += drawn[:k]
        dev += drawn[k:]
    rng.shuffle(train)
    return train, dev


def run(task: str, model_name: str, template: Template | None = None, verbalizer: Verbalizer | None = None,
        k: int = 16, seeds=5, steps: int = 0, method: str = "full", lr: float = 1e-5, batch_size: int = 8,
        eval_every: int = 50, demos: bool = False, auto_words: int = 0, auto_template=None,
        test_size: int | None = None, data_dir: str | None = None, progress: bool = False,
        standard: bool = False) -> dict:
    """The protocol above; returns {"mean", "std", "per_seed": [{seed, accuracy, template, words,
    train_accuracy (on D_train, before training), best_step}], options}. seeds: a count (1..n) or
    a list. auto_words: search the label words among each class's top `auto_words` (0: keep the
    given ones). auto_template: (before, after) template words to search (None: keep the template)."""
    from .hf import load_pretrained
    from .peft import apply
    from .peft.registry import config_from_options
    n_labels = TASKS.get(task)
    if n_labels is None:
        raise ValueError(f"unknown few-shot task {task!r}; choose one of {', '.join(TASKS)}")
    seeds = list(range(1, seeds + 1)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds: at least one data seed")
    for name, v, low in (("steps", steps, 0), ("batch_size", batch_size, 1), ("eval_every", eval_every, 1),
                         ("auto_words", auto_words, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}={v!r}: expected a whole number >= {low}")
    if standard and (steps == 0 or task == "mnli" or demos or auto_words or auto_template is not None):
        raise ValueError("standard=True trains a new head on a one-sentence task (sst2, sst5) with steps > 0; "
                         "it uses no template, label words or demonstrations")
    if standard:
        return _run_standard(task, model_name, n_labels, k, seeds, steps, method, lr, batch_size, eval_every,
                             test_size, data_dir, progress)
    template = template or Template(DEFAULTS[task][0])
    verbalizer = verbalizer or Verbalizer(DEFAULTS[task][1])
    if len(verbalizer.words) != n_labels:
        raise ValueError(f"{task} has {n_labels} labels, the verbalizer {len(verbalizer.words)} words")
    pool, test = examples(task, "train", data_dir), examples(task, "dev", data_dir)[:test_size]
    per_seed = []
    for s in seeds:
        train, dev = sample_k_shot(pool, k, n_labels, s)
        backend.manual_seed(s)
        model, tok = load_pretrained(model_name)
        arch, n_ctx = model.config.arch, model.config.n_ctx
        t, v = template, verbalizer
        with no_grad():
            if auto_template is not None:
                t = search_templates(model, tok, train, v, before=auto_template[0], after=auto_template[1])[0][0]
            if auto_words:
                v = Verbalizer(search_label_words(model, tok, t, train, n_labels, k=auto_words)[0])
        pm = apply(model, config_from_options(method))
        pool_demo = train if demos else ()

        def acc(m, queries):
            with no_grad():
                return accuracy(m, tok, t, v, queries, pool=pool_demo, per_class=demos, seed=s)
        row = {"seed": s, "template": t.text, "words": list(v.words), "train_accuracy": acc(pm, train),
               "best_step": 0}
        if steps:
            batches = prompt_batches(tok, t, v, train, min(batch_size, len(train)), arch, n_ctx, seed=s,
                                     demos_from=train if demos else None)
            row.update(_train_best_on_dev(pm, prompt_loss_fn(single_token_ids(tok, v)), batches, acc, dev, steps,
                                          lr, eval_every, progress))
        pm.eval()
        row["accuracy"] = acc(pm, test)
        per_seed.append(row)
    return _result(task, model_name, k, steps, test, per_seed, method=method if steps else None, demos=demos,
                   auto_words=auto_words, auto_template=auto_template)


def _run_standard(task, model_name, n_labels, k, seeds, steps, method, lr, batch_size, eval_every, test_size,
                  data_dir, progress) -> dict:
    """Standard fine-tuning under the same protocol: <cls> sentence <sep> -> pooled -> cls_head."""
    from types import SimpleNamespace
    from .hf import load_pretrained
    from .peft import apply
    from .peft.registry import config_from_options
    from .tasks import cls_batches, cls_loss_fn, evaluate_classification, head_scores
    pool, test = examples(task, "train", data_dir), examples(task, "dev", data_dir)[:test_size]
    rows = lambda es: [SimpleNamespace(sentence=e.s1, label=e.label) for e in es]   # noqa: E731
    per_seed = []
    for s in seeds:
        train, dev = sample_k_shot(pool, k, n_labels, s)
        backend.manual_seed(s)
        model, tok = load_pretrained(model_name, n_labels=n_labels)
        pm = apply(model, config_from_options(method, heads=("cls_head",)))
        n_ctx = model.config.n_ctx

        def acc(m, queries):
            was = m.training
            m.eval()
            with no_grad():
                out = evaluate_classification(m, tok, rows(queries), max_len=n_ctx)["accuracy"]
            m.train(was)
            return out
        row = {"seed": s, "template": None, "words": None, "train_accuracy": acc(pm, train), "best_step": 0}
        batches = cls_batches(tok, rows(train), min(batch_size, len(train)), n_ctx, seed=s)
        row.update(_train_best_on_dev(pm, cls_loss_fn(head_scores), batches, acc, dev, steps, lr, eval_every, progress))
        row["accuracy"] = acc(pm, test)
        per_seed.append(row)
    return _result(task, model_name, k, steps, test, per_seed, method=method, standard=True, demos=False,
                   auto_words=0, auto_template=None)


def _train_best_on_dev(pm, loss_fn, batches, acc, dev, steps, lr, eval_every, progress) -> dict:
    """Train `steps` steps, scoring D_dev every eval_every (the start counts, as step 0), and leave
    pm holding the best evaluation's parameters: {"best_step", "dev_accuracy"}."""
    from .train import fit
    best = {"acc": acc(pm, dev), "state": _trained_copy(pm)}

    def keep(step, metrics):
        best.update(acc=metrics["accuracy"], state=_trained_copy(pm), step=step)
    fit(pm, loss_fn, batches, steps=steps, lr=lr, eval_fn=lambda m: {"accuracy": acc(m, dev)}, eval_every=eval_every,
        select="accuracy", mode="max", on_best=keep, progress=progress, processes=1)
    _restore(pm, best["state"])
    return {"best_step": best.get("step", 0), "dev_accuracy": best["acc"]}


def _result(task, model_name, k, steps, test, per_seed, **options) -> dict:
    """A run's record: the settings, the test accuracy's mean and std over the data seeds, each seed's row."""
    accs = [r["accuracy"] for r in per_seed]
    return {"task": task, "model": model_name, "k": k, "steps": steps, **options, "test_size": len(test),
            "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
            "per_seed": per_seed}


def _trained_copy(pm) -> dict:
    return {n: p.data.copy() for n, p in pm.named_parameters() if p.requires_grad}


def _restore(pm, state: dict) -> None:
    for n, p in pm.named_parameters():
        if n in state:
            p.data = state[n]


def fewshot_cli(a) -> None:
    template = Template(a.template) if a.template else None
    verbalizer = Verbalizer(tuple(w.strip() for w in a.words.split(","))) if a.words else None
    auto_template = None
    if a.auto_template:
        try:
            auto_template = tuple(int(x) for x in a.auto_template.split(","))
            assert len(auto_template) == 2
        except (ValueError, AssertionError):
            raise ValueError(f"--auto-template {a.auto_template!r}: expected BEFORE,AFTER, the numbers of "
                             f"template words before and after the label word, e.g. 2,0") from None
    r = run(a.task, a.model, template, verbalizer, k=a.k, seeds=a.seeds, steps=a.steps, method=a.method,
            lr=a.lr, batch_size=a.batch_size, eval_every=a.eval_every, demos=a.demos, auto_words=a.auto_words,
            auto_template=auto_template, test_size=a.test_size, data_dir=a.data, progress=not a.quiet,
            standard=a.standard)
    for row in r["per_seed"]:
        extra = f"  best step {row['best_step']}" if a.steps else ""
        how = "a new head" if a.standard else f"{row['template']!r}  {'/'.join(row['words'])}"
        print(f"seed {row['seed']}: {100 * row['accuracy']:.1f}%   {how}"
              f"   (D_train before training {100 * row['train_accuracy']:.1f}%){extra}")
    std = "" if math.isnan(r["std"]) else f" +- {100 * r['std']:.1f}"
    kind = ("standard " if a.standard else "prompt-based ") + a.method if a.steps else "no training"
    print(f"{a.task} K={a.k} x {len(r['per_seed'])} seeds, {kind}"
          f"{', demonstrations' if a.demos else ''}: {100 * r['mean']:.1f}%{std} on {r['test_size']} dev examples")
    if a.json:
        from .checkpoint import write_json_atomic
        write_json_atomic(a.json, r)
        print(f"wrote {a.json}")
