"""Pretraining the shipped small models on the synthetic world's corpus.

PEFT adapts a *pretrained* model, and hub checkpoints cannot be downloaded everywhere a course
runs, so minipeft pretrains its own: three causal decoders (GPT-2 layout) spanning >8x in size,
for the "prompt tuning works at scale" and in-context-learning-vs-size figures, and one
bidirectional encoder (BERT layout, masked-LM objective) for BERT-style methods.

    minipeft pretrain --preset gpt2-m --steps 3000 --out data/checkpoints/gpt2-m

Objectives
- causal LM: predict token t+1 from tokens <= t on random windows of the token stream.
- masked LM (BERT): choose 15% of positions; replace 80% of them by <mask>, 10% by a random
  token, keep 10%; predict the original token at the chosen positions only.
Each run writes model.safetensors + config.json (+ metrics.json, train_log.jsonl) and is
reproducible from its seed.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace

from . import backend
from .autograd import no_grad
from .checkpoint import save_checkpoint, write_json_atomic
from .nn import Transformer, TransformerConfig
from .train import fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")

# the shipped sizes (vocabulary 2048, context 128)
PRESETS = {
    "gpt2-s": TransformerConfig(arch="gpt2", d_model=64, n_layer=2, n_head=2),
    "gpt2-m": TransformerConfig(arch="gpt2", d_model=128, n_layer=4, n_head=4),
    "gpt2-l": TransformerConfig(arch="gpt2", d_model=192, n_layer=6, n_head=6),
    "bert-m": TransformerConfig(arch="bert", d_model=128, n_layer=4, n_head=4),
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
    """BERT masking on host ids (B, T): returns (inputs, targets) with -100 at unchosen positions."""
    hostnp = backend.host()
    special = ids < 7                                            # ids 0..6 are the special tokens
    chosen = (gen.random(ids.shape) < p) & ~special
    targets = hostnp.where(chosen, ids, -100)
    r = gen.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = tokenizer.mask_id                # 80%: <mask>
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)                   # 10%: a random token
    inputs[rand_pos] = gen.integers(7, vocab_size, size=int(rand_pos.sum()))
    return inputs, targets                                       # 10%: unchanged


def mlm_batches(stream, tokenizer, batch_size: int, n_ctx: int, seed: int):
    """Endless random windows of n_ctx - 1 tokens after <cls>, masked for MLM."""
    hostnp = backend.host()
    gen = hostnp.random.default_rng(seed)
    vocab = tokenizer.vocab_size
    while True:
        starts = gen.integers(0, len(stream) - n_ctx, size=batch_size)
        win = hostnp.stack([stream[s:s + n_ctx - 1] for s in starts]).astype(hostnp.int64)
        win = hostnp.concatenate([hostnp.full((batch_size, 1), tokenizer.cls_id), win], axis=1)
        inputs, targets = mask_tokens(win, tokenizer, vocab, gen)
        yield {"ids": inputs, "targets": targets}


def lm_loss(model, batch):
    return model(batch["ids"], batch["targets"])[1]


def heldout_batches(stream, tokenizer, arch: str, n_ctx: int, max_windows: int = 64, batch_size: int = 16):
    """Fixed, non-overlapping windows of the validation stream (the same every evaluation)."""
    hostnp = backend.host()
    n = min(max_windows, (len(stream) - 1) // n_ctx)
    if arch == "gpt2":
        wins = [stream[i * n_ctx:i * n_ctx + n_ctx + 1] for i in range(n)]
        wins = hostnp.stack(wins).astype(hostnp.int64)
        return [{"ids": wins[i:i + batch_size, :-1], "targets": wins[i:i + batch_size, 1:]}
                for i in range(0, n, batch_size)]
    gen = hostnp.random.default_rng(1234)  # fixed masks for a comparable held-out MLM loss
    out = []
    for i in range(0, n, batch_size):
        win = hostnp.stack([stream[j * (n_ctx - 1):(j + 1) * (n_ctx - 1)] for j in range(i, min(i + batch_size, n))])
        win = hostnp.concatenate([hostnp.full((len(win), 1), tokenizer.cls_id), win], axis=1).astype(hostnp.int64)
        inputs, targets = mask_tokens(win, tokenizer, tokenizer.vocab_size, gen)
        out.append({"ids": inputs, "targets": targets})
    return out


def heldout_loss(model, batches) -> float:
    """Token-weighted mean cross-entropy (nats) over fixed held-out batches."""
    total, count = 0.0, 0
    for b in batches:
        n = int((b["targets"] != -100).sum())
        total += float(lm_loss(model, b).item()) * n
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
             eval_every: int = 250, progress: bool = True, init_from: str | None = None) -> dict:
    """Pretrain one preset and save it in out_dir. Returns the metrics that were written.

    init_from: a checkpoint directory of the same preset to continue from (a second stage with a
    fresh optimizer and its own warmup/cosine schedule); its metrics are kept under "stages"."""
    from .data.tokenizer import Tokenizer
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    for flag, value in (("--steps", steps), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value!r}: expected a whole number >= 1")
    tokenizer_path = tokenizer_path or os.path.join(DATA, "tokenizer.json")
    corpus_dir = corpus_dir or os.path.join(DATA, "pretrain")
    tok = Tokenizer.from_file(tokenizer_path)
    cfg = replace(PRESETS[preset], vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                  extra={"preset": preset, "tokenizer": "data/tokenizer.json"})
    train_stream = token_stream(tok, os.path.join(corpus_dir, "train.txt"))
    valid_stream = token_stream(tok, os.path.join(corpus_dir, "valid.txt"))

    backend.manual_seed(seed)
    model = Transformer(cfg)
    stages = []
    if init_from is not None:
        from .checkpoint import load_checkpoint
        state, _ = load_checkpoint(init_from)
        model.load_state_dict(state)
        with open(os.path.join(init_from, "metrics.json"), encoding="utf-8") as f:
            before = json.load(f)
        stages = before.pop("stages", []) + [before]
        seed = seed + len(stages)          # new batches in the new stage
    if cfg.arch == "gpt2":
        batches = lm_batches(train_stream, batch_size, cfg.n_ctx, seed)
    else:
        batches = mlm_batches(train_stream, tok, batch_size, cfg.n_ctx, seed)
    held = heldout_batches(valid_stream, tok, cfg.arch, cfg.n_ctx)
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train_log.jsonl" if not stages else f"train_log_stage{len(stages) + 1}.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    t0 = time.perf_counter()
    try:
        fit(model, lm_loss, batches, steps=steps, lr=lr, weight_decay=0.01, warmup=min(200, steps // 10),
            schedule="cosine", clip=1.0, eval_fn=lambda m: {"heldout_loss": heldout_loss(m, held)},
            eval_every=eval_every, log_path=log_path, progress=progress, desc=f"pretrain {preset}")
    except KeyboardInterrupt:
        raise PretrainInterrupted(f"interrupted: no checkpoint was written (a checkpoint in {out_dir} is as it "
                                  f"was); the log so far is in {log_path}") from None
    seconds = time.perf_counter() - t0
    model.eval()
    with no_grad():
        final = heldout_loss(model, held)
    metrics = {
        "preset": preset, "arch": cfg.arch, "params": model.num_parameters(), "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "train_tokens": int(len(train_stream)),
        "tokens_seen": steps * batch_size * cfg.n_ctx, "heldout_loss": final,
        "heldout_ppl": math.exp(final), "unigram_loss": unigram_entropy(train_stream, valid_stream, tok.vocab_size),
        "seconds": round(seconds, 1), "backend": backend.name,
    }
    if stages:
        metrics["stages"] = stages
        metrics["total_steps"] = steps + sum(st["steps"] for st in stages)
        metrics["total_seconds"] = round(seconds + sum(st["seconds"] for st in stages), 1)
    save_checkpoint(model, out_dir, cfg.to_dict())
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


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


def heldout_loss_of(name_or_dir: str) -> float:
    """The held-out loss of a saved checkpoint, measured as at the end of pretraining."""
    from .data.tokenizer import Tokenizer
    model = load_pretrained(name_or_dir)
    tok = Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))
    valid = token_stream(tok, os.path.join(DATA, "pretrain", "valid.txt"))
    with no_grad():
        return heldout_loss(model, heldout_batches(valid, tok, model.config.arch, model.config.n_ctx))


__all__ = ["PRESETS", "pretrain", "load_pretrained", "token_stream", "lm_batches", "mlm_batches",
           "heldout_loss", "heldout_loss_of", "unigram_entropy"]
