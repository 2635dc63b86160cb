"""Prompt tuning (Lester, Al-Rfou & Constant 2021, arXiv:2104.08691).

A soft prompt P_e of p vectors is prepended to the input embeddings; the model stays frozen:

    X = [x_1 ... x_n] -> E = wte[X] (n, e)  ->  [P_e ; E]  (p + n, e)      P_e: (p, e), e = d_model

Only P_e trains: |Theta| = p * e (20 x 1024 = 20,480 on a 24-layer d=1024 model). The prompt
vectors play the role of token embeddings: positions (and BERT's token types and embedding
LayerNorm) are added after the concatenation (Transformer.embed), so the prompt takes positions
0..p-1 and the tokens p..p+n-1. PeftModel drops the p prompt positions from the outputs.

Initialisation (Lester Sec. 3, Fig. 3b):
- "random": P_e ~ U[-0.5, 0.5].
- "vocab": rows of the embedding matrix of p distinct tokens sampled uniformly (Lester: among the
  5,000 most frequent SentencePiece tokens). A BPE vocabulary has no frequency list unless one is
  computed: here the candidates are the non-special tokens (minipeft's tokenizers put their 7
  special tokens at ids 0..6). vocab_top_k = 5,000 exceeds minipeft's 2,048 tokens, so by default
  every non-special token is a candidate; a smaller vocab_top_k needs vocab_corpus (a text file,
  e.g. data/pretrain/train.txt) whose token counts rank the vocabulary.
- "text" (class labels): init_text holds the label words, a tuple of labels (a string is split on
  whitespace, one label per word). Slot i gets the mean embedding of label i's tokens (multi-token
  labels are averaged); the slots left over are filled with sampled vocabulary, as in the paper.
  Byte-level BPE encodes " great" and "great" differently: write labels as they appear in text.

Several active prompt adapters concatenate along p. Per-sample routing gives each sample its own
adapter's P_e; every sample must then have a prompt of the same length (the tokens' positions
start after it), so mixed lengths, or samples without an adapter, raise a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend, ops
from .common import TrainedRows, load_tokenizer, positive_int, task_heads

N_SPECIAL = 7       # <pad> <bos> <eos> <sep> <cls> <mask> <unk>: ids 0..6 in minipeft's tokenizers
DEFAULT_LR = 3e-2


@dataclass
class PromptConfig:
    method: ClassVar[str] = "prompt"
    num_virtual_tokens: int = 20          # p, the prompt length
    init: str = "random"                  # "random" | "vocab" | "text"
    init_text: str | tuple | None = None  # init="text": the class-label words
    vocab_top_k: int = 5000               # sampled vocab: among the top-k most frequent tokens
    vocab_corpus: str | None = None       # a text file to count token frequencies in
    tokenizer_path: str | None = None     # for init_text / vocab_corpus; None = data/tokenizer.json
    modules_to_save: tuple = ()

    def __post_init__(self):
        p = positive_int(self.num_virtual_tokens, "PromptConfig.num_virtual_tokens", "the prompt length p, e.g. 20")
        if self.init not in ("random", "vocab", "text"):
            raise ValueError(f"PromptConfig.init must be 'random', 'vocab' or 'text', got {self.init!r}")
        if isinstance(self.init_text, list):
            self.init_text = tuple(self.init_text)
        if self.init == "text":
            if not self.labels():
                raise ValueError("PromptConfig(init='text') needs init_text, the class-label words, "
                                 "e.g. init_text=('terrible', 'great')")
            if len(self.labels()) > p:
                raise ValueError(f"PromptConfig: {len(self.labels())} labels in init_text but only "
                                 f"num_virtual_tokens={p} slots; lengthen the prompt or drop labels")
        elif self.init_text is not None:
            raise ValueError("PromptConfig.init_text is only used with init='text'; set init='text'")
        positive_int(self.vocab_top_k, "PromptConfig.vocab_top_k")
        self.modules_to_save = tuple(self.modules_to_save)

    def labels(self) -> tuple:
        t = self.init_text
        labels = tuple(t.split()) if isinstance(t, str) else tuple(t or ())
        return tuple(s for s in labels if isinstance(s, str) and s.strip())


# ----------------------------------------------------------------------------- initialisation

def token_counts(tokenizer, path) -> "backend.host().ndarray":
    """How often each token id occurs in a text file (host int64 array of the vocabulary's size)."""
    hostnp = backend.host()
    counts = hostnp.zeros(tokenizer.vocab_size, dtype=hostnp.int64)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                counts += hostnp.bincount(tokenizer.encode(line.rstrip("\n")), minlength=len(counts))
    return counts


def sample_vocab(n: int, vocab_size: int, top_k: int, counts=None):
    """n token ids (host ints) drawn uniformly, without repeats while possible, from the non-special
    tokens, or from the top_k most frequent of them when `counts` ranks them."""
    hostnp = backend.host()
    cand = hostnp.arange(N_SPECIAL, vocab_size)
    if counts is not None:
        cand = cand[hostnp.argsort(-counts[N_SPECIAL:vocab_size], kind="stable")][:top_k]
    elif top_k < len(cand):
        raise ValueError(f"vocab_top_k={top_k} is smaller than the {len(cand)} non-special tokens, but "
                         f"there is no frequency list to pick the most frequent from: give "
                         f"vocab_corpus=<text file> (e.g. data/pretrain/train.txt)")
    return backend.rng.gen.choice(cand, size=n, replace=n > len(cand))


def initial_prompt(pm, cfg: PromptConfig):
    """P_e at step 0, (p, d), as described in the module docstring."""
    p, d, V = cfg.num_virtual_tokens, pm.config.d_model, pm.config.vocab_size
    if cfg.init == "random":
        return backend.rng.uniform((p, d), low=-0.5, high=0.5)                # U[-0.5, 0.5]
    wte = pm.model.wte.weight.data                                            # (V, d)
    tok = load_tokenizer(cfg.tokenizer_path) if (cfg.init == "text" or cfg.vocab_corpus) else None
    counts = token_counts(tok, cfg.vocab_corpus) if cfg.vocab_corpus else None
    rows = []
    if cfg.init == "text":
        for label in cfg.labels():
            ids = tok.encode(label)
            if not ids or max(ids) >= V:
                raise ValueError(f"label {label!r} encodes to {ids}, not tokens of this model (vocab {V})")
            rows.append(wte[backend.to_device(ids)].mean(axis=0))              # average its tokens
    if len(rows) < p:                                                         # sampled vocabulary
        ids = sample_vocab(p - len(rows), V, cfg.vocab_top_k, counts)
        rows.extend(wte[backend.to_device(ids)])
    return backend.xp.stack(rows).astype(backend.default_dtype())


# ----------------------------------------------------------------------------- the method's API

CONFIG = PromptConfig


def from_options(o) -> PromptConfig:
    return PromptConfig(num_virtual_tokens=o.length, modules_to_save=o.heads)


def add(pm, name: str, cfg: PromptConfig) -> None:
    pm.inputs[name] = TrainedRows(initial_prompt(pm, cfg))          # the soft prompt P_e, (p, d)


def context_positions(cfg: PromptConfig) -> int:
    """The prompt takes p positions of n_ctx (the tokens' positions start after it)."""
    return cfg.num_virtual_tokens


def encode_inputs(pm, route, batch_size: int, ids=None, cache=None) -> dict:
    """{"prompt": (1, p, d) shared, or (B, p, d) one per sample} for Transformer.encode."""
    mine = [(n, r) for n, r in route if isinstance(pm.peft_config.get(n), PromptConfig)]
    if not mine:
        return {}
    if all(r is None for _, r in mine):                     # active adapters, concatenated along p
        pe = ops.concat([pm.inputs[n]() for n, _ in mine], axis=0) if len(mine) > 1 else pm.inputs[mine[0][0]]()
        return {"prompt": pe.reshape(1, pe.shape[0], pe.shape[1])}                     # (1, p, d)
    lengths = {n: pm.peft_config[n].num_virtual_tokens for n, _ in mine}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"per-sample routing with soft prompts of different lengths {lengths}: the tokens' "
                         f"positions start after the prompt, so one batch needs one length; batch the "
                         f"samples of each length separately")
    hostnp = backend.host()
    sel = hostnp.full(batch_size, -1, dtype=hostnp.int64)
    for i, (_, rows) in enumerate(mine):
        sel[rows] = i
    if (sel < 0).any():
        raise ValueError(f"sample(s) {hostnp.flatnonzero(sel < 0).tolist()} have no adapter in a batch whose "
                         f"other samples get a soft prompt; their positions would differ: run them in a "
                         f"separate batch")
    stacked = ops.stack([pm.inputs[n]() for n, _ in mine], axis=0)                    # (A, p, d)
    return {"prompt": stacked[backend.to_device(sel)]}                                # (B, p, d)


def formula(model_cfg, cfg: PromptConfig) -> dict:
    """p * d (Lester's p x e), plus any task head trained with it."""
    n = cfg.num_virtual_tokens * model_cfg.d_model
    n += task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": n, "kept": n}
