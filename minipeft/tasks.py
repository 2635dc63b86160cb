"""Downstream tasks: data pipelines, losses and evaluation for fine-tuning.

Conditional generation (table-to-text "e2e", triples-to-text "webnlg"), as in Li & Liang and the
LoRA paper's GPT-2 experiments. A causal decoder reads

    <bos> source <sep> target <eos>

and the loss counts only the target tokens and the final <eos> (the source is given, not
predicted). Evaluation decodes the target from `<bos> source <sep>` and scores it with corpus
BLEU (all references of a source) and ROUGE-L.

Classification, two ways, scored by accuracy, macro F1 and Matthews correlation:
- "sst2": a head on the encoder: `<cls> sentence <sep>` -> pooled [CLS] vector -> cls_head.
- "sst2-lm": through label words of the decoder's LM head (the prompt-based way of PET and
  LM-BFF): `<bos> sentence All in all, it was` -> next-token logits of " terrible" / " great";
  no new parameters, and the pretrained model already has an opinion before any training.

`finetune(...)` runs one method on one task end to end: load the shipped checkpoint, apply the
PEFT config, evaluate before, train with `fit`, keep the best adapter by the dev score,
evaluate after, and save the adapter. `minipeft finetune` and `make demo` call it.

Every run writes into its own folder: without `out_dir`, a new one under runs/ (runs/e2e-lora,
then runs/e2e-lora-2, ...); a given `out_dir` that holds an earlier run is refused unless
`overwrite=True`. The folder gets the best adapter (adapter_config.json, adapter_model.safetensors),
task.json (the task, its prompt format and the base model: `minipeft generate --adapter DIR`
reads it), log.jsonl and result.json. Ctrl-C stops the run with one line saying what was kept.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace

from . import backend, ops
from .autograd import no_grad
from .metrics import accuracy, corpus_bleu, macro_f1, matthews_corrcoef, rouge_l
from .pretrain import DATA
from .train import fit

GEN_TASKS = ("e2e", "webnlg")
CLS_TASKS = ("sst2", "sst2-lm")
LM_TEMPLATE = "{} All in all, it was"          # sst2-lm: the pattern ...
LABEL_WORDS = (" terrible", " great")          # ... and the verbalizer (label 0, label 1)


@dataclass
class Seq2SeqExample:
    source: str
    refs: list
    category: str = ""
    seen: bool = True
    origin: str = ""            # where it was read from ("data/webnlg/dev.xml entry Id4"), for errors


def linearize_mr(mr: str) -> str:
    """E2E meaning representation -> the flat source Li & Liang feed GPT-2:
    'name[The Eagle], food[Chinese]' -> 'name : The Eagle | food : Chinese'. A repeated
    attribute (cleaned E2E: `eatType[pub], eatType[restaurant]`) gives one field per value."""
    from .data.formats import parse_mr
    fields = []
    for k, v in parse_mr(mr).items():
        fields += [f"{k} : {x}" for x in (v if isinstance(v, list) else [v])]
    return " | ".join(fields)


def linearize_triples(triples) -> str:
    """[(s, p, o), ...] -> 's : p : o | ...' with underscores read as spaces."""
    return " | ".join(" : ".join(x.replace("_", " ") for x in (t.s, t.p, t.o)) for t in triples)


# Where load_task finds a split, relative to the data folder: the layout of data/ first, then the
# names of the real releases (E2E's trainset.csv, devset.csv, testset_w_refs.csv; the cleaned
# E2E's *-fixed csv files; a WebNLG split as a folder of .xml files, as it is released).
SPLIT_FILES = {
    "e2e": {"train": ("e2e/train.csv", "e2e/trainset.csv", "e2e/train-fixed.no-ol.csv"),
            "dev": ("e2e/dev.csv", "e2e/devset.csv", "e2e/devel-fixed.no-ol.csv"),
            "test": ("e2e/test.csv", "e2e/testset_w_refs.csv", "e2e/test-fixed.csv")},
    "webnlg": {s: (f"webnlg/{s}.xml", f"webnlg/{s}") for s in ("train", "dev", "test")},
    "sst2": {s: (f"sst2/{s}.tsv",) for s in ("train", "dev", "test")},
}


def task_file(task: str, split: str, data_dir: str | None = None) -> str:
    """The file (or folder) holding a split of a task under `data_dir` (default: the shipped
    data/), found by the names in SPLIT_FILES; a clear error naming the paths it looked for."""
    root = data_dir or DATA
    files = SPLIT_FILES.get("sst2" if task == "sst2-lm" else task)
    if files is None:
        raise ValueError(f"unknown task {task!r}; choose one of {GEN_TASKS + CLS_TASKS}")
    if split not in files:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(files)}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root} does not exist (expected a folder laid out "
                                f"like data/, e.g. {os.path.join(root, files[split][0])})")
    paths = [os.path.join(root, rel) for rel in files[split]]
    for path in paths:
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"data folder {root} has no {task} {split} split: expected "
                            + " or ".join(paths))


def load_task(task: str, split: str, data_dir: str | None = None, labelled: bool = True) -> list:
    """Examples of a task split ('train', 'dev', 'test') from `data_dir` (default: the shipped
    files in data/; any folder laid out like it, see SPLIT_FILES).

    labelled=True (the default) needs references/labels: a file without them is an error, and
    WebNLG entries left without a reference are skipped with a DataWarning saying how many and
    which. labelled=False reads an unreferenced test file (refs == [], label None)."""
    from .data import formats
    path = task_file(task, split, data_dir)
    if task == "e2e":
        rows = formats.read_e2e_csv(path, labelled=labelled)
        return [Seq2SeqExample(linearize_mr(r.mr), list(r.refs), origin=f"{path} MR {r.mr!r}")
                for r in rows]
    if task == "webnlg":
        entries = formats.read_webnlg_xml(path, labelled=labelled)
        if labelled:
            entries = _drop_unreferenced(entries, path)
        seen = _seen_categories(data_dir)
        return [Seq2SeqExample(linearize_triples(e.triples), list(e.lexes), e.category,
                               e.category in seen, origin=f"{path} entry {e.eid}")
                for e in entries]
    return formats.read_glue_tsv(path, "sst2", labelled=labelled)


def _drop_unreferenced(entries: list, path) -> list:
    """The entries that have a reference; a DataWarning names the others (they cannot be trained
    on or scored)."""
    import warnings
    from .data.formats import DataWarning
    bare = [e.eid for e in entries if not e.lexes]
    if bare:
        warnings.warn(f"{path}: skipped {len(bare)} of {len(entries)} entries that have no "
                      f"reference: {', '.join(bare[:10])}{' ...' if len(bare) > 10 else ''}",
                      DataWarning, stacklevel=3)
    return [e for e in entries if e.lexes]


def _seen_categories(data_dir: str | None) -> set:
    """The WebNLG categories of the train split ("seen"; the others in test are "unseen")."""
    import warnings
    from .data import formats
    with warnings.catch_warnings():           # the train split's own load reports its problems
        warnings.simplefilter("ignore", formats.DataWarning)
        entries = formats.read_webnlg_xml(task_file("webnlg", "train", data_dir), labelled=False)
    return {e.category for e in entries}


# ----------------------------------------------------------------------------- generation tasks

FIELD_SEP = " | "               # between the fields of a linearized source (attributes, triples)


def fit_source(tok, source: str, room: int) -> tuple[list, bool]:
    """Token ids of `source` in at most `room` tokens, and whether it had to be cut.

    Cut where it loses least: a source made of fields (an E2E MR's attributes, WebNLG's
    triples, joined by FIELD_SEP) loses whole fields from its end, so the first ones survive
    (an E2E MR's `name` comes first; cutting tokens from the left would lose it first). A first
    field that is too long alone keeps its first tokens; a plain text keeps its beginning and its
    end and loses the middle. The <sep> that ends a prompt is added after, so it always stays."""
    ids = tok.encode(source)
    if len(ids) <= room:
        return ids, False
    fields = source.split(FIELD_SEP)
    for k in range(len(fields) - 1, 0, -1):          # drop whole fields from the end
        ids = tok.encode(FIELD_SEP.join(fields[:k]))
        if len(ids) <= room:
            return ids, True
    if len(fields) > 1:
        return ids[:room], True                       # the first field alone: keep its start
    head = (room + 1) // 2
    return ids[:head] + ids[len(ids) - (room - head):], True


def encode_seq2seq(tok, source: str, target: str | None, n_ctx: int):
    """ids = <bos> source <sep> [target <eos>]; labels -100 on everything but target and <eos>.
    If the pair does not fit in n_ctx, the source is cut by `fit_source` (whole fields from
    its end), the same way in training as at generation time."""
    tgt = tok.encode(target) + [tok.eos_id] if target is not None else []
    room = n_ctx - 2 - len(tgt)
    if room < 1:
        tgt = tgt[:n_ctx - 3]
        room = 1
    src, _ = fit_source(tok, source, room)
    ids = [tok.bos_id] + src + [tok.sep_id] + tgt
    labels = [-100] * (len(src) + 2) + tgt
    return ids, labels


def seq2seq_batches(tok, examples, batch_size: int, n_ctx: int, seed: int = 0):
    """Endless shuffled batches of (source, one reference) pairs, right-padded.

    Yields dict(ids (B, T-1), targets (B, T-1)): the causal LM shift of `<bos> src <sep> tgt <eos>`,
    targets -100 on the source and on padding."""
    hostnp = backend.host()
    pairs = [(e.source, r) for e in examples for r in e.refs]
    if not pairs:
        raise ValueError("no training pairs: the examples have no references")
    gen = hostnp.random.default_rng(seed)
    while True:
        for start in range(0, len(pairs) - batch_size + 1, batch_size):
            if start == 0:
                order = gen.permutation(len(pairs))
            rows = [encode_seq2seq(tok, *pairs[i], n_ctx + 1) for i in order[start:start + batch_size]]
            T = max(len(ids) for ids, _ in rows)
            ids = hostnp.full((len(rows), T), tok.pad_id, dtype=hostnp.int64)
            lab = hostnp.full((len(rows), T), -100, dtype=hostnp.int64)
            for i, (a, b) in enumerate(rows):
                ids[i, :len(a)], lab[i, :len(b)] = a, b
            yield {"ids": ids[:, :-1], "targets": lab[:, 1:]}


def lm_loss(model, batch):
    """Mean cross-entropy over the target tokens (targets != -100), as model(ids, targets) computes
    it, but the LM head (d x V, the costliest matmul) runs only at those positions: the source and
    the padding, about half of an E2E batch, predict nothing, so their logits are never formed."""
    logits, targets = target_logits(model, batch)
    if logits is None:
        return model(batch["ids"], batch["targets"])[1]
    return ops.cross_entropy(logits, targets)                             # logits (N, V) -> scalar


def target_logits(model, batch):
    """(logits (N, V) at the N target positions of a seq2seq batch, their targets (N,) host ints),
    or (None, None) when the batch has no target. What lm_loss scores, and what self-distillation
    matches on a generation task."""
    hostnp = backend.host()
    targets = hostnp.asarray(backend.to_numpy(batch["targets"]))
    rows, cols = hostnp.nonzero(targets != -100)                          # (N,), (N,) target positions
    if len(rows) == 0:
        return None, None
    h = model.encode(batch["ids"])                                        # (B, T, d)
    h_t = h[backend.to_device(rows), backend.to_device(cols)]             # (N, d)
    return model.lm_logits(h_t), targets[rows, cols]


def target_ids(batch):
    """The N target ids of a seq2seq batch, in target_logits' order (row by row), host ints."""
    targets = backend.host().asarray(backend.to_numpy(batch["targets"]))
    return targets[targets != -100]


def soft_prompt_length(model) -> int:
    """Context positions taken by the active soft prompts (prompt tuning) of a PeftModel; 0 otherwise.
    Batches and generation prompts must leave this much room in n_ctx."""
    cfgs = getattr(model, "peft_config", None)
    if not cfgs or getattr(model, "_disabled", False):
        return 0
    return model.context_positions()


def generation_prompts(model, tok, examples, max_new_tokens: int) -> tuple[list, int]:
    """`<bos> source <sep>` token ids for every example, and how many sources had to be cut
    (by `fit_source`) so that soft prompt + prompt + max_new_tokens fit in the model's n_ctx."""
    room = model.config.n_ctx - soft_prompt_length(model) - max_new_tokens - 2
    prompts, n_cut = [], 0
    for e in examples:
        src, cut = fit_source(tok, e.source, max(room, 1))
        prompts.append([tok.bos_id] + src + [tok.sep_id])
        n_cut += cut
    return prompts, n_cut


def _decode(model, tok, prompts, max_new_tokens, method, num_beams=4) -> list:
    from .generate import generate
    outs = generate(model, prompts, max_new_tokens=max_new_tokens, method=method, eos_id=tok.eos_id,
                    num_beams=num_beams)
    return [tok.decode([t for t in o if t != tok.eos_id]).strip() for o in outs]


def generate_targets(model, tok, examples, max_new_tokens: int = 60, method: str = "greedy",
                     num_beams: int = 4) -> list:
    """Decode a target text for every example from `<bos> source <sep>`."""
    prompts, _ = generation_prompts(model, tok, examples, max_new_tokens)
    return _decode(model, tok, prompts, max_new_tokens, method, num_beams)


def evaluate_generation(model, tok, examples, max_new_tokens: int = 60, method: str = "greedy") -> dict:
    """BLEU (sacrebleu, all references) and ROUGE-L (max over references) of decoded targets,
    and `sources_cut`: how many of the sources were too long for the context and were cut (see
    fit_source), so that a score on cut sources does not pass for one on whole ones. Every
    example must have a reference; one that has none is an error naming it."""
    bare = [e for e in examples if not e.refs]
    if bare:
        names = "; ".join(e.origin or repr(e.source) for e in bare[:5])
        raise ValueError(f"{len(bare)} of {len(examples)} examples have no reference and cannot be "
                         f"scored: {names}{' ...' if len(bare) > 5 else ''}. Load the split with "
                         "load_task(..., labelled=True), which skips them and says how many")
    prompts, n_cut = generation_prompts(model, tok, examples, max_new_tokens)
    hyps = _decode(model, tok, prompts, max_new_tokens, method)
    refs = [e.refs for e in examples]
    return {"bleu": corpus_bleu(hyps, refs), "rouge_l": rouge_l(hyps, refs), "sources_cut": n_cut,
            "outputs": hyps}


def dev_loss(model, batches) -> float:
    total, n = 0.0, 0
    for b in batches:
        k = int((b["targets"] != -100).sum())
        total += float(lm_loss(model, b).item()) * k
        n += k
    return total / max(n, 1)


# ----------------------------------------------------------------------------- classification

def cls_batches(tok, examples, batch_size: int, max_len: int, seed: int | None = 0, endless: bool = True,
                lm: bool = False):
    """Batches with attention masks and integer labels, shuffled when seed is given.
    Head: `<cls> sentence <sep>`; lm=True: `<bos> LM_TEMPLATE(sentence)` (right-padded)."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed) if seed is not None else None
    while True:
        order = gen.permutation(len(examples)) if gen is not None else hostnp.arange(len(examples))
        for start in range(0, len(examples), batch_size):
            chunk = [examples[i] for i in order[start:start + batch_size]]
            if endless and len(chunk) < batch_size:
                break
            yield _cls_encode(tok, chunk, max_len, lm)
        if not endless:
            return


def _cls_encode(tok, chunk, max_len, lm=False):
    hostnp = backend.host()
    if lm:
        rows = [[tok.bos_id] + tok.encode(LM_TEMPLATE.format(e.sentence))[-(max_len - 1):] for e in chunk]
    else:
        rows = [[tok.cls_id] + tok.encode(e.sentence)[:max_len - 2] + [tok.sep_id] for e in chunk]
    T = max(len(r) for r in rows)
    ids = hostnp.full((len(rows), T), tok.pad_id, dtype=hostnp.int64)
    mask = hostnp.zeros((len(rows), T), dtype=hostnp.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    labels = hostnp.asarray([e.label for e in chunk], dtype=hostnp.int64)
    return {"ids": ids, "attention_mask": mask, "labels": labels}


def label_word_ids(tok) -> list:
    """Token ids of the verbalizer's label words (each must be a single token)."""
    ids = [tok.encode(w) for w in LABEL_WORDS]
    bad = [w for w, i in zip(LABEL_WORDS, ids) if len(i) != 1]
    if bad:
        raise ValueError(f"label words {bad} are not single tokens of this tokenizer; choose other words")
    return [i[0] for i in ids]


def head_scores(model, batch):
    """(B, n_labels) logits of the classification head."""
    return model.classify(batch["ids"], batch["attention_mask"])


def label_word_scores(model, batch, word_ids):
    """(B, n_labels) next-token logits of the label words after the template's last token."""
    mask = batch["attention_mask"]
    h = model.encode(batch["ids"], mask)                                  # (B, T, d)
    last = backend.to_device(mask.sum(axis=1) - 1)                        # last real token of each row
    h_last = h[backend.xp.arange(h.shape[0]), last]                       # (B, d)
    logits = model.lm_logits(h_last)                                      # (B, V)
    return logits[:, backend.to_device(backend.host().asarray(word_ids))]  # (B, n_labels)


def cls_loss_fn(score_fn):
    return lambda model, batch: ops.cross_entropy(score_fn(model, batch), batch["labels"])


def evaluate_classification(model, tok, examples, score_fn=head_scores, max_len: int = 64,
                            batch_size: int = 64, lm: bool = False) -> dict:
    preds, golds, loss, n = [], [], 0.0, 0
    for b in cls_batches(tok, examples, batch_size, max_len, seed=None, endless=False, lm=lm):
        logits = score_fn(model, b)
        loss += float(ops.cross_entropy(logits, b["labels"]).item()) * len(b["labels"])
        n += len(b["labels"])
        preds.extend(backend.to_numpy(logits.data).argmax(axis=1).tolist())
        golds.extend(b["labels"].tolist())
    return {"accuracy": accuracy(preds, golds), "macro_f1": macro_f1(preds, golds),
            "mcc": matthews_corrcoef(preds, golds), "loss": loss / max(n, 1)}


# ----------------------------------------------------------------------------- one fine-tuning run

def _default_lr() -> dict:
    from .peft import METHODS
    return {name: m.DEFAULT_LR for name, m in METHODS.items()}


DEFAULT_LR = _default_lr()      # method -> learning rate, each method file's DEFAULT_LR


@dataclass
class FinetuneResult:
    task: str
    method: str
    before: dict
    after: dict
    trainable: int
    total: int
    seconds: float
    best_step: int | None
    examples: list = field(default_factory=list)   # (source, before, after) triples for generation
    averaged: dict | None = None                    # self_ensemble: dev metrics of the averaged parameters


def finetune(task: str, peft_config, model_name: str | None = None, steps: int = 300, batch_size: int = 16,
             lr: float | None = None, train_size: int | None = None, eval_size: int = 100,
             eval_every: int = 100, patience: int | None = None, out_dir: str | None = None,
             seed: int = 0, progress: bool = True, show: int = 0, verbose: bool = True,
             processes: int | None = None, data_dir: str | None = None,
             overwrite: bool = False, self_ensemble: int | None = None, self_distill: float | None = None,
             teacher: str = "average") -> FinetuneResult:
    """Fine-tune a shipped model on `task` with `peft_config`; keep and save the best adapter.
    processes: None (default) = one process per usable core where data parallelism is supported
    (parallel.default_processes: Linux, NumPy), the same result to rounding as 1; 1 = one process;
    n > 1: n processes (see train.fit and minipeft.parallel).
    data_dir: read the task's train and dev splits from this folder (laid out like data/, e.g.
    DIR/e2e/train.csv, or with the real releases' file names; see SPLIT_FILES) instead of the
    shipped data/.
    out_dir: where the run goes (default: a new folder under runs/, see new_run_dir); one that holds
    an earlier run is refused unless overwrite=True. Every bad option is reported before any work.
    self_ensemble: K, also evaluate the mean of the trained parameters over the last K steps as a
    model of its own (ensemble.py; result.averaged and result.json "averaged"); the saved adapter
    stays the best evaluation's.
    self_distill: lambda, add self-distillation (Xu et al. 2020): lambda times the mean squared
    difference between the model's outputs (the classifier's logits; on a generation task the
    logits at the target tokens) and a teacher's, the parameters averaged over the last K steps
    (teacher="average", BERT_SDA) or the average of those K models' outputs ("vote", BERT_SDV);
    K = self_ensemble, or 5. The teacher's forward passes run in this process: processes is 1."""
    from .hf import load_pretrained as load_model_and_tokenizer
    from .peft import apply
    from .peft.registry import method_of
    if task not in GEN_TASKS + CLS_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {GEN_TASKS + CLS_TASKS}")
    _check_run_options(steps, batch_size, train_size, eval_size, eval_every, patience)
    if self_ensemble is not None and (isinstance(self_ensemble, bool) or not isinstance(self_ensemble, int)
                                      or not 1 <= self_ensemble <= steps):
        raise ValueError(f"--self-ensemble {self_ensemble!r}: expected a whole number of steps from 1 to --steps ({steps})")
    distill = None
    if self_distill is not None:
        from .ensemble import SelfDistillation
        if isinstance(self_distill, bool) or not isinstance(self_distill, (int, float)) or not self_distill >= 0:
            raise ValueError(f"--self-distill {self_distill!r}: expected the weight lambda >= 0 of the distillation "
                             f"term (Xu et al. use 1.0)")
        if processes not in (None, 1):
            raise ValueError(f"--self-distill runs the teacher in this process: use --processes 1, not {processes}")
        distill = SelfDistillation(float(self_distill), lambda m, b: None, k=self_ensemble or 5, teacher=teacher)
        processes = 1
    from .parallel import check_supported, default_processes
    method = method_of(peft_config)
    if processes is None and getattr(method, "ONE_PROCESS", False):
        processes = 1                                  # its re-selection reads every gradient here
        print(f"training in one process: {peft_config.method} reads the whole step's gradients")
    processes = default_processes(batch_size) if processes is None else check_supported(processes)  # before loading
    train = load_task(task, "train", data_dir)[:train_size]     # a missing file fails fast
    dev = load_task(task, "dev", data_dir)[:eval_size]
    for split, got in (("train", train), ("dev", dev)):
        if not got:
            raise ValueError(f"the {task} {split} split ({task_file(task, split, data_dir)}) has no examples")
    out_dir = out_dir or new_run_dir(task, peft_config.method)
    prepare_out_dir(out_dir, overwrite)
    backend.manual_seed(seed)
    is_cls, is_lm = task in CLS_TASKS, task == "sst2-lm"
    default_model = "bert-m" if task == "sst2" else "gpt2-m"
    n_labels = 2 if task == "sst2" else 0
    # a shipped preset, a minipeft checkpoint, a Hugging Face folder or "minilm-l6": each with its tokenizer
    model, tok = load_model_and_tokenizer(model_name or default_model, n_labels=n_labels)
    pm = apply(model, peft_config)
    lr = lr if lr is not None else method.DEFAULT_LR
    _check_context_room(task, model.config.n_ctx, soft_prompt_length(pm))
    n_ctx = model.config.n_ctx - soft_prompt_length(pm)     # a soft prompt takes positions too

    if is_cls:
        if is_lm:
            words = label_word_ids(tok)
            score_fn = lambda m, b: label_word_scores(m, b, words)  # noqa: E731
        else:
            score_fn = head_scores
        batches = cls_batches(tok, train, batch_size, n_ctx, seed, lm=is_lm)
        loss_fn, select = cls_loss_fn(score_fn), "accuracy"
        evaluate = lambda m: evaluate_classification(m, tok, dev, score_fn, n_ctx, lm=is_lm)  # noqa: E731
        outputs_fn, task_loss = score_fn, lambda z, b: ops.cross_entropy(z, b["labels"])  # noqa: E731
    else:
        batches = seq2seq_batches(tok, train, batch_size, n_ctx, seed)
        loss_fn, select = lm_loss, "bleu"
        outputs_fn = lambda m, b: target_logits(m, b)[0]  # noqa: E731
        task_loss = lambda z, b: ops.cross_entropy(z, target_ids(b))  # noqa: E731
        dev_pairs = [Seq2SeqExample(e.source, e.refs[:1]) for e in dev]
        held = [next(seq2seq_batches(tok, dev_pairs[i:i + batch_size], min(batch_size, len(dev_pairs[i:i + batch_size])),
                                     n_ctx, seed=1)) for i in range(0, len(dev_pairs), batch_size)]

        def evaluate(m):
            r = evaluate_generation(m, tok, dev)
            r["loss"] = dev_loss(m, held)
            return r

    t0 = time.perf_counter()
    pm.eval()
    with no_grad():
        before = evaluate(pm)
    if verbose:
        pm.print_trainable_parameters()
        print("before: " + _fmt(before))
    from .checkpoint import write_json_atomic
    write_json_atomic(os.path.join(out_dir, TASK_FILE), {"task": task, "prompt_format": PROMPT_FORMATS[task],
                                                         "model": model_name or default_model})
    kept = {}

    def keep_best(step, metrics):
        pm.save_pretrained(out_dir)
        kept.update(step=step, score=metrics.get(select))

    if hasattr(method, "prepare"):   # a start that needs the data: FISH's Fisher mask, LT-SFT's full phase
        if verbose:
            print(f"{peft_config.method}: choosing what trains from the training data (prepare)")
        method.prepare(pm, "default", loss_fn, batches)
    params = None
    if getattr(peft_config, "layer_lr_decay", None):      # full fine-tuning with eta^{l-1} = xi * eta^l
        from .peft.full import param_groups
        params = param_groups(pm, lr, peft_config.layer_lr_decay)
    try:
        hist = fit(pm, loss_fn, batches, steps=steps, lr=lr, params=params, warmup=min(30, steps // 10),
                   schedule="linear", eval_fn=lambda m: {k: v for k, v in evaluate(m).items() if k != "outputs"},
                   eval_every=eval_every, select=select, mode="max", patience=patience, on_best=keep_best,
                   log_path=os.path.join(out_dir, "log.jsonl"), progress=progress,
                   desc=f"{task} {peft_config.method}", processes=processes, self_ensemble=self_ensemble,
                   self_distill=None if distill is None else replace(distill, outputs_fn=outputs_fn,
                                                                     task_loss=task_loss))
    except KeyboardInterrupt:
        if kept:
            raise FinetuneInterrupted(f"interrupted: kept the best adapter so far (step {kept['step']}, dev "
                                      f"{select} {kept['score']:.4f}) in {out_dir}") from None
        when = f"before the first evaluation (every {eval_every} steps)" if eval_every else "(no evaluation asked)"
        raise FinetuneInterrupted(f"interrupted {when}: no adapter was kept; the log so far is in "
                                  f"{os.path.join(out_dir, 'log.jsonl')}") from None
    if hist.best is None:                                  # eval_every=0: the last step is the adapter
        pm.save_pretrained(out_dir)
    # counted while training: the best adapter reloaded below comes back frozen (is_trainable=False)
    s = pm.trainable_summary() if pm.peft_config else {"trainable": 0, "total": pm.num_parameters()}
    averaged = None
    if hist.averaged is not None:        # the self-ensemble, evaluated as its own model
        from .train import apply_average
        last = {n: p.data for n, p in pm.named_parameters() if n in hist.averaged}
        apply_average(pm, hist.averaged)
        pm.eval()
        with no_grad():
            averaged = {k: v for k, v in evaluate(pm).items() if k != "outputs"}
        apply_average(pm, last)
        if verbose:
            print(f"self-ensemble (mean of the last {self_ensemble} steps): " + _fmt(averaged))
    # reload the best adapter (the last step is not necessarily the best)
    if hist.best is not None and hist.best["step"] != steps and not getattr(method, "EXCLUSIVE", False):
        from .peft import PeftModel
        pm = PeftModel.from_pretrained(load_model_and_tokenizer(model_name or default_model, n_labels=n_labels)[0],
                                       out_dir)
    pm.eval()
    with no_grad():
        after = evaluate(pm)
    summary = {k: v for k, v in after.items() if k != "outputs"}
    with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump({"task": task, "method": peft_config.method, "before": {k: v for k, v in before.items() if k != "outputs"},
                   "after": summary, "best": hist.best, "averaged": averaged,
                   "seconds": time.perf_counter() - t0}, f, indent=1)
    if verbose:
        print("after:  " + _fmt(after))
        best = f"best dev {select} at step {hist.best['step']}" if hist.best else "the last step"
        print(f"saved in {out_dir}: the adapter ({best}; adapter_config.json, adapter_model.safetensors), "
              f"{TASK_FILE}, log.jsonl, result.json")
    examples = []
    if not is_cls:
        examples = [(dev[i].source, before["outputs"][i], after["outputs"][i]) for i in range(min(show, len(dev)))]
    return FinetuneResult(task, peft_config.method, before, after, s["trainable"], s["total"],
                          time.perf_counter() - t0, hist.best["step"] if hist.best else None, examples, averaged)


# ----------------------------------------------------------------------------- the run folder

TASK_FILE = "task.json"          # in an adapter folder: the task it was trained on and its prompt format
RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", TASK_FILE, "log.jsonl", "result.json")
PROMPT_FORMATS = {               # how each task shows an example to the model (the ids, as text)
    "e2e": "<bos> {source} <sep>", "webnlg": "<bos> {source} <sep>",
    "sst2": "<cls> {sentence} <sep>", "sst2-lm": "<bos> " + LM_TEMPLATE.format("{sentence}"),
}


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during `finetune`: args[0] says what was kept (the best adapter so far, and where)."""


def new_run_dir(task: str, method: str, root: str = "runs") -> str:
    """root/TASK-METHOD, or root/TASK-METHOD-2, -3, ...: the first name not taken."""
    base = os.path.join(root, f"{task}-{method}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def prepare_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """Make `out_dir` for a run, or say why it cannot be, before any work starts: a file in its
    place or on its path, or an earlier run in it (refused unless overwrite=True; with it, the
    earlier run's files are removed, so that log.jsonl starts afresh)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder; choose another --out")
    up = os.path.abspath(out_dir)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise ValueError(f"--out {out_dir}: {up} is a file, so no folder can be made under it; "
                         "choose another --out")
    earlier = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if earlier and not overwrite:
        raise ValueError(f"--out {out_dir} holds an earlier run ({', '.join(earlier)}); pass --overwrite "
                         "(finetune(..., overwrite=True)) to replace it, or choose another --out "
                         "(without --out every run gets a new folder under runs/)")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out_dir}: cannot make this folder ({e.strerror}); choose another --out") from None
    for f in earlier:
        os.remove(os.path.join(out_dir, f))


def read_task_file(adapter_dir: str) -> dict | None:
    """The task.json that finetune wrote beside an adapter ({"task", "prompt_format", "model"}),
    or None for an adapter saved otherwise (save_pretrained alone)."""
    path = os.path.join(adapter_dir, TASK_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as JSON ({e}); delete it to use the adapter without its "
                         "task's prompt format") from None
    if not isinstance(info, dict) or info.get("task") not in GEN_TASKS + CLS_TASKS:
        raise ValueError(f"{path}: expected {{\"task\": one of {GEN_TASKS + CLS_TASKS}, ...}}, got {info!r}")
    return info


def task_prompts(tok, task: str, texts: list, room: int) -> list:
    """Token ids of each text shown as `task` shows its inputs (PROMPT_FORMATS), in at most
    `room` tokens: what `minipeft generate --adapter DIR` feeds an adapter that finetune trained."""
    if task in GEN_TASKS:
        return [[tok.bos_id] + fit_source(tok, t, max(room - 2, 1))[0] + [tok.sep_id] for t in texts]
    if task == "sst2-lm":
        return [[tok.bos_id] + tok.encode(LM_TEMPLATE.format(t))[-(room - 1):] for t in texts]
    raise ValueError(f"this adapter was trained on {task!r}, a classification with a head: it has no text to "
                     "generate (evaluate it with tasks.evaluate_classification)")


def _check_run_options(steps, batch_size, train_size, eval_size, eval_every, patience) -> None:
    """One clear error for each option out of range, before any work starts."""
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("eval_size", eval_size, 1),
                             ("eval_every", eval_every, 0), ("train_size", train_size, 1), ("patience", patience, 1)):
        if value is None and name in ("train_size", "patience"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value!r}: expected a whole number >= {low}"
                             + (" (all examples: leave it out)" if name == "train_size" else "")
                             + (" (0: no evaluation while training, the last step is kept)"
                                if name == "eval_every" else ""))


def _check_context_room(task: str, n_ctx: int, prompt_len: int) -> None:
    """A soft prompt must leave room in the context for the task's inputs (and, for generation,
    the 60 tokens evaluate_generation decodes)."""
    need = 63 if task in GEN_TASKS else 3
    if prompt_len and n_ctx - prompt_len < need:
        raise ValueError(f"--length {prompt_len}: the soft prompt takes {prompt_len} of the model's {n_ctx} "
                         f"context positions and leaves {max(n_ctx - prompt_len, 0)}; {task} needs {need} "
                         f"(its input and what it generates): use --length {n_ctx - need} or less")


def _fmt(metrics: dict) -> str:
    """`bleu 0.1234, rouge_l 0.5678, sources_cut 3`: the numbers of an evaluation."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items() if isinstance(v, (int, float)))


def config_from_args(a):
    """A PEFT config from the `minipeft finetune` options."""
    from .peft.registry import config_from_options
    return config_from_options(a.method, r=a.r, alpha=a.alpha, targets=a.targets, size=a.size,
                               placement=a.placement, length=a.length, density=a.density,
                               heads=("cls_head",) if a.task == "sst2" else ())


def finetune_cli(a) -> None:
    cfg = config_from_args(a)
    res = finetune(a.task, cfg, a.model, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                   train_size=a.train_size, eval_size=a.eval_size, eval_every=a.eval_every,
                   patience=a.patience, out_dir=a.out, seed=a.seed, progress=not a.quiet, show=3,
                   processes=a.processes, data_dir=a.data, overwrite=a.overwrite,
                   self_ensemble=a.self_ensemble, self_distill=a.self_distill, teacher=a.teacher)
    for src, b, c in res.examples:
        print(f"\n{src}\n  before: {b}\n  after:  {c}")
