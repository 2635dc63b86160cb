"""Pretraining the shipped small models on the synthetic world's corpus.

PEFT adapts a *pretrained* model, and hub checkpoints cannot be downloaded everywhere a course
runs, so minipeft pretrains its own: three causal decoders (GPT-2 layout) spanning more than 10x
in size, for the "prompt tuning works at scale" and in-context-learning-vs-size figures, and one
bidirectional encoder (BERT layout) for BERT-style methods. Context 256 for all four.

    minipeft pretrain --preset gpt2-m --steps 2500 --patience 3       # into runs/pretrain-gpt2-m

Objectives
- causal LM: predict token t+1 from tokens <= t on random windows of the token stream.
- masked LM + next sentence (BERT): a pair <cls> A <sep> B <sep> where B continues A's document
  or, half of the time, comes from another one; choose 15% of the positions and replace 80% of
  them by <mask>, 10% by a random token, keep 10%; the loss is the cross-entropy of the original
  tokens at the chosen positions plus that of is_next predicted from the pooled [CLS] vector.
  The second term is what trains [CLS] and the pooler, so that frozen sentence features mean
  something (a model trained on masked tokens alone leaves them untrained).
Training stops when the held-out loss has not improved for `patience` evaluations, and the
weights of the best evaluation are shipped. Each run writes model.safetensors + config.json
(+ metrics.json, train_log.jsonl) and is reproducible from its seed.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace

from . import backend, ops
from .autograd import no_grad
from .checkpoint import save_checkpoint, write_json_atomic
from .data.tokenizer import ROLES, pad_rows
from .nn import Transformer, TransformerConfig
from .train import fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")

# the shipped sizes (vocabulary 2048, context 256: real E2E and WebNLG sources need it)
PRESETS = {
    "gpt2-s": TransformerConfig(arch="gpt2", d_model=64, n_layer=2, n_head=2, n_ctx=256),
    "gpt2-m": TransformerConfig(arch="gpt2", d_model=128, n_layer=4, n_head=4, n_ctx=256),
    "gpt2-l": TransformerConfig(arch="gpt2", d_model=192, n_layer=6, n_head=6, n_ctx=256),
    "bert-m": TransformerConfig(arch="bert", d_model=128, n_layer=4, n_head=4, n_ctx=256),
}


def token_stream(tokenizer, path: str):
    """The corpus as one host int32 array: each document (blank-line separated) as <bos> doc <eos>."""
    hostnp = backend.host()
    with open(path, encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    out = []
    for enc in tokenizer.hf.encode_batch(docs, add_special_tokens=False):
        out.append(bos)
        out.extend(enc.ids)
        out.append(eos)
    return hostnp.asarray(out, dtype=hostnp.int32)


def lm_batches(stream, batch_size: int, n_ctx: int, seed: int):
    """Endless random windows: ids (B, T) and targets (B, T) = ids shifted by one."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed)
    while True:
        starts = gen.integers(0, len(stream) - n_ctx - 1, size=batch_size)
        win = hostnp.stack([stream[s:s + n_ctx + 1] for s in starts]).astype(hostnp.int64)
        yield {"ids": win[:, :-1], "targets": win[:, 1:]}


def mask_tokens(ids, tokenizer, vocab_size: int, gen, p: float = 0.15):
    """BERT masking on host ids (B, T): returns (inputs, targets) with -100 at unchosen positions.
    The tokenizer's special tokens (padding included) are never chosen. A random replacement is a
    regular token: any id above the special ones where those come first (the shipped tokenizer's
    0..6), else any id of the vocabulary, as BERT draws (a WordPiece vocabulary's [CLS] is 101)."""
    hostnp = backend.host()
    specials = sorted(i for i in (tokenizer.special_id(r) for r in ROLES) if i is not None)
    low = len(specials) if specials == list(range(len(specials))) else 0
    special = hostnp.isin(ids, specials)
    chosen = (gen.random(ids.shape) < p) & ~special
    targets = hostnp.where(chosen, ids, -100)
    r = gen.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = tokenizer.mask_id                # 80%: <mask>
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)                   # 10%: a random token
    inputs[rand_pos] = gen.integers(low, vocab_size, size=int(rand_pos.sum()))
    return inputs, targets                                       # 10%: unchanged


def doc_sentences(tokenizer, path: str) -> list:
    """The corpus as documents of sentences, each sentence a list of token ids (a sentence after
    the first keeps its leading space, so a document's sentences concatenate to its tokens)."""
    from .data.gen_pretrain import sentences
    with open(path, encoding="utf-8") as f:
        docs = [sentences(d.strip()) for d in f.read().split("\n\n") if d.strip()]
    flat = [(" " if i else "") + s for d in docs for i, s in enumerate(d)]
    ids = [e.ids for e in tokenizer.hf.encode_batch(flat, add_special_tokens=False)]
    out, k = [], 0
    for d in docs:
        out.append(ids[k:k + len(d)])
        k += len(d)
    return out


def nsp_pairs(docs, tokenizer, batch_size: int, n_ctx: int, gen, hard: float = 0.0, candidates: int = 32):
    """One batch of BERT sentence pairs: <cls> A <sep> B <sep>, token types 0 for A, 1 for B.

    A is the first k sentences of a document (k drawn), B the rest of it (is_next = 1) or, half
    of the time, the tail of another document (is_next = 0). Predicting is_next from the pooled
    [CLS] vector is what trains [CLS] and the pooler (Devlin et al. 2019, section 3.1, task 2).
    hard: the share of negatives that are HARD: of `candidates` random tails, the one whose tokens
    overlap most with the true continuation (Jaccard of the token sets), so that a negative often
    has the true one's genre and wording ("All in all, it was terrible." for "... great.") and
    topic alone cannot tell them apart (ALBERT's objection to NSP, Lan et al. 2020): [CLS] must
    encode what A says. Pairs longer than n_ctx lose tokens from the end of B, then of A."""
    hostnp = backend.host()
    multi = [d for d in docs if len(d) >= 2]
    rows, types, labels = [], [], []
    for _ in range(batch_size):
        d = multi[gen.integers(len(multi))]
        k = int(gen.integers(1, len(d)))
        a = [t for s in d[:k] for t in s]
        if gen.random() < 0.5:
            b, is_next = [t for s in d[k:] for t in s], 1
        else:
            tails = []
            for _ in range(candidates if gen.random() < hard else 1):
                other = multi[gen.integers(len(multi))]
                j = int(gen.integers(1, len(other)))
                tails.append((other, [t for s in other[j:] for t in s]))
            true_tail = [t for s in d[k:] for t in s]
            other, b = hardest(true_tail, tails, d) if len(tails) > 1 else tails[0]
            is_next = int(other is d or b == true_tail)      # (a tail equal to the true one is true)
        room = n_ctx - 3
        b = b[:max(room - len(a), room // 2)]
        a = a[:room - len(b)]
        rows.append([tokenizer.cls_id] + a + [tokenizer.sep_id] + b + [tokenizer.sep_id])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        labels.append(is_next)
    b = pad_rows(rows, tokenizer.pad_id, type_rows=types)
    inputs, targets = mask_tokens(b.ids, tokenizer, tokenizer.vocab_size, gen)
    return {"ids": inputs, "targets": targets, "token_type_ids": b.token_type_ids,
            "attention_mask": b.attention_mask,
            "is_next": hostnp.asarray(labels, dtype=hostnp.int64)}


def hardest(true_tail, tails, doc):
    """Of the candidate (document, tail) pairs, the one whose token set overlaps most (Jaccard)
    with the true continuation's; never a tail of `doc` itself nor a tail equal to the true one
    (either would be a true pair labelled false)."""
    true = set(true_tail)

    def jaccard(ot):
        other, tail = ot
        if other is doc or tail == true_tail:
            return -1.0
        return len(true & set(tail)) / max(len(true | set(tail)), 1)
    return max(tails, key=jaccard)


def nsp_batches(docs, tokenizer, batch_size: int, n_ctx: int, seed: int, hard: float = 0.0):
    """Endless NSP + MLM batches (see nsp_pairs)."""
    gen = backend.host().random.default_rng(seed)
    while True:
        yield nsp_pairs(docs, tokenizer, batch_size, n_ctx, gen, hard)


def mlm_doc_batches(docs, tokenizer, batch_size: int, n_ctx: int, seed: int):
    """Endless masked-LM batches of whole documents, <cls> doc <sep> (no second segment): the
    encoder's objective on a corpus of single sentences (TAPT on a task's text)."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed)
    while True:
        rows = []
        for i in gen.integers(0, len(docs), size=batch_size):
            toks = [t for s in docs[i] for t in s][:n_ctx - 2]
            rows.append([tokenizer.cls_id] + toks + [tokenizer.sep_id])
        b = pad_rows(rows, tokenizer.pad_id)
        inputs, targets = mask_tokens(b.ids, tokenizer, tokenizer.vocab_size, gen)
        yield {"ids": inputs, "targets": targets, "token_type_ids": hostnp.zeros_like(b.ids),
               "attention_mask": b.attention_mask}


def split_corpus_file(path: str, folder: str, every: int = 20) -> str:
    """Write `path`'s documents into folder/train.txt and folder/valid.txt (every `every`-th
    document held out, at least one), atomically; return the folder."""
    from .checkpoint import write_text_atomic
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--corpus {path}: no such file (a text file of documents separated by blank lines)")
    with open(path, encoding="utf-8") as f:
        docs = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    if len(docs) < 2:
        raise ValueError(f"--corpus {path}: {len(docs)} document(s); continued pretraining needs at least 2 "
                         f"(documents are separated by blank lines; one is held out)")
    valid = docs[::every] if len(docs) >= every else docs[:1]
    train = [d for i, d in enumerate(docs) if (i % every != 0 if len(docs) >= every else i != 0)]
    os.makedirs(folder, exist_ok=True)
    for name, part in (("train", train), ("valid", valid)):
        write_text_atomic(os.path.join(folder, f"{name}.txt"), "".join(d + "\n\n" for d in part))
    return folder


def lm_loss(model, batch):
    return model(batch["ids"], batch["targets"])[1]


def mlm_loss(model, batch):
    """The masked-LM cross-entropy alone (mean over the masked tokens)."""
    return model(batch["ids"], batch["targets"], batch["attention_mask"], batch["token_type_ids"])[1]


def mlm_nsp_loss(model, batch):
    """BERT's pretraining loss: masked-LM cross-entropy (mean over masked tokens) plus the
    next-sentence cross-entropy (mean over pairs) from cls_head on the pooled [CLS] vector."""
    h = model.encode(batch["ids"], batch["attention_mask"], batch["token_type_ids"])
    mlm = ops.cross_entropy(model.lm_logits(h), batch["targets"])
    nsp = ops.cross_entropy(model.cls_head(model.pooled(h, batch["attention_mask"])), batch["is_next"])
    return mlm + nsp


def nsp_accuracy(model, batches) -> float:
    """Fraction of held-out pairs whose is_next the pooled [CLS] vector predicts right."""
    right = total = 0
    for b in batches:
        logits = model.classify(b["ids"], b["attention_mask"], b["token_type_ids"])
        pred = backend.to_numpy(logits.data).argmax(axis=-1)
        right += int((pred == b["is_next"]).sum())
        total += len(pred)
    return right / max(total, 1)


def heldout_batches(stream, tokenizer, arch: str, n_ctx: int, max_windows: int = 64, batch_size: int = 16):
    """A decoder's fixed held-out set: non-overlapping windows of the validation stream (the same
    every evaluation). (The encoder's is `heldout_pairs`.)"""
    hostnp = backend.host()
    if arch != "gpt2":
        raise ValueError(f"heldout_batches is the decoders' held-out set; for arch {arch!r} use heldout_set")
    n = min(max_windows, (len(stream) - 1) // n_ctx)
    wins = [stream[i * n_ctx:i * n_ctx + n_ctx + 1] for i in range(n)]
    wins = hostnp.stack(wins).astype(hostnp.int64)
    return [{"ids": wins[i:i + batch_size, :-1], "targets": wins[i:i + batch_size, 1:]}
            for i in range(0, n, batch_size)]


def heldout_pairs(tokenizer, valid_path: str, n_ctx: int, n: int = 256, batch_size: int = 64) -> list:
    """The encoder's fixed held-out set: n NSP pairs of the validation documents, masked as in
    training (the same seed every time), so that its held-out MLM loss and NSP accuracy are
    measured on inputs like the ones it was trained on."""
    gen = backend.host().random.default_rng(4321)
    docs = doc_sentences(tokenizer, valid_path)
    if not has_pairs(docs):               # a corpus of single sentences: masked documents, no pairs
        batches = mlm_doc_batches(docs, tokenizer, batch_size, n_ctx, 4321)
        return [next(batches) for _ in range(n // batch_size)]
    return [nsp_pairs(docs, tokenizer, batch_size, n_ctx, gen) for _ in range(n // batch_size)]


def has_pairs(docs) -> bool:
    """Are at least half of the documents two sentences or more (enough for next-sentence pairs)?"""
    return sum(len(d) >= 2 for d in docs) >= len(docs) / 2


def heldout_loss(model, batches) -> float:
    """Token-weighted mean cross-entropy (nats) over fixed held-out batches (for the encoder
    the masked-LM part only, on its held-out pairs)."""
    total, count = 0.0, 0
    for b in batches:
        n = int((b["targets"] != -100).sum())
        loss = (model(b["ids"], b["targets"], b["attention_mask"], b["token_type_ids"])[1]
                if "token_type_ids" in b else lm_loss(model, b))
        total += float(loss.item()) * n
        count += n
    return total / max(count, 1)


def unigram_entropy(train_stream, valid_stream, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the validation stream under add-one unigram frequencies of
    the training stream: the loss of a model that ignores context. A pretrained model must beat it."""
    hostnp = backend.host()
    counts = hostnp.bincount(train_stream, minlength=vocab_size).astype(hostnp.float64) + 1.0
    logp = hostnp.log(counts / counts.sum())
    return float(-logp[valid_stream[1:]].mean())


def pretrain(preset: str, out_dir: str, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3,
             seed: int = 0, tokenizer_path: str | None = None, corpus_dir: str | None = None,
             eval_every: int = 250, progress: bool = True, init_from: str | None = None,
             patience: int | None = None, processes: int | None = None, corpus_file: str | None = None,
             nsp_hard: float = 0.5) -> dict:
    """Pretrain one preset and save it in out_dir. Returns the metrics that were written.

    steps: the most optimizer steps (the cosine schedule spans them). nsp_hard: the encoder's
    share of hard next-sentence negatives (nsp_pairs); the held-out pairs keep random negatives. patience: stop after this
    many evaluations (every eval_every steps) without a new best held-out loss, and keep the
    best; None trains all steps and keeps the last. processes: data-parallel processes (default:
    one per usable core, see parallel.default_processes).
    init_from: a checkpoint (a directory or a shipped name) of the same preset to continue from (a
    second stage with a fresh optimizer and its own warmup/cosine schedule); its metrics are kept
    under "stages". corpus_file: continue on this text instead (documents separated by blank lines:
    a domain corpus for DAPT, a task's unlabelled text for TAPT); every 20th document is held out,
    both splits are written into out_dir/corpus/, and the loss on the base corpus's held-out set
    is recorded too (what continued pretraining forgot)."""
    from .data.tokenizer import Tokenizer
    from .parallel import default_processes
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    for flag, value in (("--steps", steps), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value!r}: expected a whole number >= 1")
    tokenizer_path = tokenizer_path or os.path.join(DATA, "tokenizer.json")
    if init_from is not None and not os.path.isdir(init_from):
        init_from = os.path.join(DATA, "checkpoints", init_from)           # a shipped name
        if not os.path.isdir(init_from):
            raise FileNotFoundError(f"--init-from {os.path.basename(init_from)!r}: no such checkpoint directory or "
                                    f"shipped name ({sorted(os.listdir(os.path.join(DATA, 'checkpoints')))})")
    if corpus_file is not None:
        corpus_dir = split_corpus_file(corpus_file, os.path.join(out_dir, "corpus"))
    if corpus_dir is None:
        from .data.generate import pretrain_corpus
        corpus_dir = str(pretrain_corpus(DATA))      # written from the generator if missing
    tok = Tokenizer.from_file(tokenizer_path)
    cfg = replace(PRESETS[preset], vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                  extra={"preset": preset, "tokenizer": "data/tokenizer.json"})
    train_path, valid_path = (os.path.join(corpus_dir, f"{s}.txt") for s in ("train", "valid"))
    train_stream, valid_stream = token_stream(tok, train_path), token_stream(tok, valid_path)
    bert = cfg.arch == "bert"

    backend.manual_seed(seed)
    model = Transformer(replace(cfg, n_labels=2) if bert else cfg)   # bert: cls_head = the NSP head
    stages = []
    if init_from is not None:
        from .checkpoint import load_checkpoint
        state, config = load_checkpoint(init_from)
        wrong = {k: config.get(k) for k in ("arch", "d_model", "n_layer", "n_head", "n_ctx")
                 if config.get(k) != getattr(cfg, k)}
        if wrong:
            raise ValueError(f"--init-from {init_from}: its config {wrong} is not preset {preset}'s; "
                             f"pass the preset the checkpoint was trained as")
        model.load_state_dict(state, strict=not bert)
        with open(os.path.join(init_from, "metrics.json"), encoding="utf-8") as f:
            before = json.load(f)
        stages = before.pop("stages", []) + [before]
        seed = seed + len(stages)          # new batches in the new stage
    held = heldout_set(tok, cfg.arch, cfg.n_ctx, valid_path)
    if bert:
        docs = doc_sentences(tok, train_path)
        if has_pairs(docs):
            batches, loss_fn = nsp_batches(docs, tok, batch_size, cfg.n_ctx, seed, nsp_hard), mlm_nsp_loss
        else:                                 # one sentence each (a task's own text): no pairs to judge
            print("masked LM only: most documents of this corpus are one sentence, too few pairs for NSP")
            batches, loss_fn = mlm_doc_batches(docs, tok, batch_size, cfg.n_ctx, seed), mlm_loss
        weight = lambda b: len(b["ids"])          # noqa: E731  each slice: its own means
        evaluate = lambda m: {"heldout_loss": heldout_loss(m, held),           # noqa: E731
                              "nsp_accuracy": nsp_accuracy(m, held)}
        if loss_fn is mlm_loss:
            evaluate = lambda m: {"heldout_loss": heldout_loss(m, held)}      # noqa: E731
    else:
        batches = lm_batches(train_stream, batch_size, cfg.n_ctx, seed)
        loss_fn, weight = lm_loss, None
        evaluate = lambda m: {"heldout_loss": heldout_loss(m, held)}          # noqa: E731
    processes = default_processes(batch_size) if processes is None else processes
    best = {}

    def keep_best(step, metrics):
        best.update(step=step, state={k: backend.xp.array(v.data) for k, v in model.named_parameters()})

    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train_log.jsonl" if not stages else f"train_log_stage{len(stages) + 1}.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    t0 = time.perf_counter()
    try:
        hist = fit(model, loss_fn, batches, steps=steps, lr=lr, weight_decay=0.01, warmup=min(200, steps // 10),
                   schedule="cosine", clip=1.0, eval_fn=evaluate, eval_every=eval_every, log_path=log_path,
                   progress=progress, desc=f"pretrain {preset}", processes=processes, slice_weight=weight,
                   select="heldout_loss" if patience else None, mode="min", patience=patience,
                   on_best=keep_best if patience else None)
    except KeyboardInterrupt:
        raise PretrainInterrupted(f"interrupted: no checkpoint was written (a checkpoint in {out_dir} is as it "
                                  f"was); the log so far is in {log_path}") from None
    seconds = time.perf_counter() - t0
    steps_run = hist.records[-1]["step"] if hist.records else steps
    if best:                                  # early stopping: go back to the best evaluation
        model.load_state_dict(best["state"], strict=False)
    model.eval()
    with no_grad():
        final = evaluate(model)
    if bert:                                  # ship the encoder without the NSP head
        del model.cls_head
        cfg = replace(cfg, n_labels=0)
    metrics = {
        "preset": preset, "arch": cfg.arch, "params": model.num_parameters(), "steps": steps_run,
        "max_steps": steps, "best_step": best.get("step", steps_run), "patience": patience,
        "batch_size": batch_size, "lr": lr, "seed": seed, "train_tokens": int(len(train_stream)),
        "tokens_seen": steps_run * batch_size * cfg.n_ctx, "heldout_loss": final["heldout_loss"],
        "heldout_ppl": math.exp(final["heldout_loss"]),
        "unigram_loss": unigram_entropy(train_stream, valid_stream, tok.vocab_size),
        "seconds": round(seconds, 1), "backend": backend.name, "processes": processes,
        "machine": _machine(),
    }
    if bert:
        metrics["nsp_accuracy"] = final.get("nsp_accuracy")
        metrics["nsp_hard"] = nsp_hard
        metrics["tokens_seen"] = None         # pairs are padded to their batch's longest row
    if corpus_file is not None:               # continued pretraining: what it did to the base corpus
        base_valid = os.path.join(DATA, "pretrain", "valid.txt")
        with no_grad():
            metrics["base_heldout_loss"] = heldout_loss(model, heldout_set(tok, cfg.arch, cfg.n_ctx, base_valid))
        metrics["corpus"] = {"file": os.path.basename(corpus_file), "train_docs": _count_docs(train_path),
                             "valid_docs": _count_docs(valid_path)}
    if stages:
        metrics["stages"] = stages
        metrics["total_steps"] = steps_run + sum(st["steps"] for st in stages)
        metrics["total_seconds"] = round(seconds + sum(st["seconds"] for st in stages), 1)
    save_checkpoint(model, out_dir, cfg.to_dict())
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def _count_docs(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for d in f.read().split("\n\n") if d.strip())


def _machine() -> str:
    """Where a run was trained, in words (recorded in metrics.json)."""
    import platform
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {cpu}, {os.cpu_count()} cores, {backend.name}"


class PretrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during `pretrain`: args[0] says what was kept (the checkpoint is written only at the end)."""


def load_pretrained(name_or_dir: str, n_labels: int = 0):
    """Load a shipped checkpoint by preset name ("gpt2-m") or a directory; eval mode.

    n_labels > 0 adds a freshly initialised classification head `cls_head` (the only
    parameters the checkpoint may lack)."""
    from .checkpoint import load_checkpoint
    ckpts = os.path.join(DATA, "checkpoints")
    path = name_or_dir if os.path.isdir(name_or_dir) else os.path.join(ckpts, name_or_dir)
    if not os.path.isdir(path):
        shipped = sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else []
        raise FileNotFoundError(f"no checkpoint at {name_or_dir!r}; shipped checkpoints: {shipped} "
                                f"(or pass a directory holding model.safetensors and config.json)")
    state, config = load_checkpoint(path)
    config = dict(config, n_labels=n_labels or config.get("n_labels", 0))
    model = Transformer(TransformerConfig.from_dict(config))
    missing = {k for k, _ in model.named_parameters()} - set(state)
    if missing - {"cls_head.weight", "cls_head.bias"}:
        model.load_state_dict(state)               # strict: reports every problem
    model.load_state_dict(state, strict=False)
    return model.eval()


def heldout_set(tok, arch: str, n_ctx: int, valid_path: str) -> list:
    """The fixed held-out batches a model of `arch` is evaluated on: decoders, 64 windows of the
    validation stream; the encoder, 256 masked NSP pairs of the validation documents."""
    if arch == "bert":
        return heldout_pairs(tok, valid_path, n_ctx)
    return heldout_batches(token_stream(tok, valid_path), tok, arch, n_ctx)


def heldout_loss_of(name_or_dir: str, data_dir: str | None = None) -> float:
    """The held-out loss of a saved checkpoint, measured as at the end of pretraining."""
    from .data.tokenizer import Tokenizer
    data_dir = data_dir or DATA
    model = load_pretrained(name_or_dir)
    tok = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    held = heldout_set(tok, model.config.arch, model.config.n_ctx, os.path.join(data_dir, "pretrain", "valid.txt"))
    with no_grad():
        return heldout_loss(model, held)


def heldout_curve(ckpt_dir: str) -> list:
    """[(step, held-out loss)] of every evaluation in a checkpoint's training log(s)."""
    out, offset = [], 0
    logs = sorted(f for f in os.listdir(ckpt_dir) if f.startswith("train_log") and f.endswith(".jsonl"))
    for name in logs:
        with open(os.path.join(ckpt_dir, name), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out += [(offset + r["step"], r["eval"]["heldout_loss"]) for r in rows if "eval" in r]
        offset = out[-1][0] if out else offset
    return out


def plot_heldout_curves(ckpt_dirs: dict, path: str) -> None:
    """One panel per architecture: held-out loss against steps for each {name: checkpoint dir};
    the shipped (best) step is marked. Written atomically (a figure is not half-replaced)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, d in ckpt_dirs.items():
        curve = heldout_curve(d)
        with open(os.path.join(d, "metrics.json"), encoding="utf-8") as f:
            best = json.load(f)["best_step"]
        ax = axes[0] if name.startswith("gpt2") else axes[1]
        ax.plot(*zip(*curve), marker=".", label=name)
        ax.plot([best], [dict(curve)[best]], "k*", markersize=9)
    axes[0].set_title("decoders: held-out next-token loss")
    axes[1].set_title("encoder: held-out masked-token loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("nats per token")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


__all__ = ["PRESETS", "pretrain", "load_pretrained", "token_stream", "lm_batches", "nsp_batches",
           "heldout_loss", "heldout_loss_of", "heldout_set", "unigram_entropy"]
