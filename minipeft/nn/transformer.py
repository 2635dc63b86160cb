"""One Transformer class, two layouts.

arch="gpt2": causal decoder, GPT-2 layout (Radford et al. 2019)
    x = wte[ids] + wpe[pos]
    per block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))          (pre-LN)
    h = ln_f(x);  logits = h wte^T                                      (tied LM head)

arch="bert": bidirectional encoder, BERT layout (Devlin et al. 2019)
    x = ln_emb(wte[ids] + wpe[pos] + wtt[types])
    per block:  x = ln_1(x + attn(x));  x = ln_2(x + mlp(x))          (post-LN)
    MLM head: logits = mlm_ln(gelu(mlm_dense(h))) wte^T + mlm_bias;  pooled = tanh(pooler(h[:, 0]))
    (the MLM head is optional: config.mlm_head=False for an encoder such as Hugging Face's BertModel)

GELU is the tanh approximation (GPT-2) or the exact erf form (BERT): config.gelu. Checkpoints of
Hugging Face BERT and GPT-2 load into this class exactly: see minipeft/hf.py.

Attention has separate q, k, v, o projections with biases (so LoRA can target "q" and "v"), and
accepts per-layer prefix key/value rows (prefix tuning) and a key/value cache (generation).
Module names (wte, wpe, h.{i}.ln_1, h.{i}.attn.q, h.{i}.mlp.fc, ...) follow GPT-2's so that a
GPT-2 or BERT checkpoint can be mapped onto them name by name.

Shapes: B batch, T tokens, d = d_model, H heads, D = d/H head size, V vocabulary, P prefix length.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, field

from .. import backend, ops
from ..autograd import Tensor, is_grad_enabled
from .layers import Dropout, Embedding, LayerNorm, Linear
from .module import Module, ModuleList, Parameter


@dataclass
class TransformerConfig:
    arch: str = "gpt2"          # "gpt2" (causal decoder) or "bert" (bidirectional encoder)
    vocab_size: int = 2048
    n_ctx: int = 128            # maximum sequence length (learned positions)
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 0               # MLP width; 0 means 4 * d_model
    n_types: int = 2            # token types (bert only)
    n_labels: int = 0           # > 0 adds a classification head `cls_head`
    dropout: float = 0.0        # on embeddings and on each residual branch
    ln_eps: float = 1e-5        # layer-norm epsilon (GPT-2 1e-5, BERT 1e-12)
    gelu: str = "tanh"          # "tanh" approximation (GPT-2) or "none": the exact erf GELU (BERT)
    mlm_head: bool = True       # bert only: False for an encoder without the MLM head (BertModel)
    pooling: str = "default"    # one vector per sequence: "default" ([CLS] + pooler for bert, the
                                # last real token for gpt2) or "mean" (mean over real tokens)
    tie_embeddings: bool = True
    pad_id: int = 0
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. tokenizer path), kept in config.json

    def __post_init__(self):
        if self.arch not in ("gpt2", "bert"):
            raise ValueError(f"TransformerConfig.arch must be 'gpt2' or 'bert', got {self.arch!r}")
        for k in ("vocab_size", "n_ctx", "d_model", "n_layer", "n_head"):
            if getattr(self, k) <= 0:
                raise ValueError(f"TransformerConfig.{k} must be positive, got {getattr(self, k)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.gelu not in ("tanh", "none"):
            raise ValueError(f"TransformerConfig.gelu must be 'tanh' or 'none' (exact erf), got {self.gelu!r}")
        if self.pooling not in ("default", "mean"):
            raise ValueError(f"TransformerConfig.pooling must be 'default' or 'mean', got {self.pooling!r}")
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model

    @property
    def causal(self) -> bool:
        return self.arch == "gpt2"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class SelfAttention(Module):
    def __init__(self, cfg: TransformerConfig):
        d = cfg.d_model
        self.n_head, self.causal = cfg.n_head, cfg.causal
        self.q, self.k, self.v, self.o = Linear(d, d), Linear(d, d), Linear(d, d), Linear(d, d)

    def forward(self, x, key_mask=None, prefix=None, cache=None):
        """x: (B, T, d). key_mask: (B, T_past + T) 1 = real token. prefix: (k_p, v_p) Tensors
        (B or 1, H, P, D), or (k_p, v_p, start) with start (B or 1, P) ints: the absolute position
        from which each prefix row is visible (see ops.attention; infix tuning). cache: dict with
        "k", "v" arrays (B, H, T_past, D), updated in place."""
        B, T, d = x.shape
        H = self.n_head
        D = d // H

        def heads(t):  # (B, T, d) -> (B, H, T, D)
            return t.reshape(B, T, H, D).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if cache is not None:  # generation: keys/values of earlier tokens come from the cache
            if is_grad_enabled() and (x.requires_grad or k.requires_grad):
                raise RuntimeError("the key/value cache stores plain arrays (no gradient flows into "
                                   "them): use it for generation, inside `with minipeft.no_grad():`")
            k, v = (Tensor(t) for t in cache_append(cache, k.data, v.data))  # (B, H, T_past + T, D)
        kp, vp, start = (tuple(prefix) + (None,))[:3] if prefix is not None else (None, None, None)
        y = ops.attention(q, k, v, kp, vp, causal=self.causal, key_mask=key_mask,
                          prefix_start=start)                                       # (B, H, T, D)
        y = y.permute(0, 2, 1, 3).reshape(B, T, d)                                  # (B, T, d)
        return self.o(y)


# ----------------------------------------------------------------------------- the key/value cache
# (speed machinery: what the cache holds is cache["k"], cache["v"], (B, H, T_past, D); how it grows
# is below. Generation asks for a capacity, the final length, so that nothing is copied per token.)

def cache_append(cache: dict, k, v):
    """Append this step's keys and values (B, H, T, D) to one layer's cache and return all of
    them, (B, H, T_past + T, D). A cache with a "capacity" (Transformer.new_cache(capacity))
    keeps buffers of that many positions, allocated at its first call: appending writes the new
    columns in place and cache["k"] is a view of the filled part, so no step copies the past.
    Without one (or beyond it) the past is concatenated, a copy of the whole cache per step."""
    past = cache["k"].shape[2] if "k" in cache else 0
    B, H, T, D = k.shape
    cap = cache.get("capacity")
    if cap is None or past + T > cap:
        if past:
            k = backend.xp.concatenate([cache["k"], k], axis=2)
            v = backend.xp.concatenate([cache["v"], v], axis=2)
        _drop_buffers(cache)
        cache["k"], cache["v"] = k, v
        return k, v
    if "k_buf" not in cache:          # first call, or the batch grew (beam search): the past moves in once
        cache["k_buf"] = backend.xp.empty((B, H, cap, D), k.dtype)
        cache["v_buf"] = backend.xp.empty((B, H, cap, D), v.dtype)
        if past:
            cache["k_buf"][:B, :, :past], cache["v_buf"][:B, :, :past] = cache["k"], cache["v"]
    kb, vb = cache["k_buf"], cache["v_buf"]
    kb[:B, :, past:past + T], vb[:B, :, past:past + T] = k, v
    cache["k"], cache["v"] = kb[:B, :, :past + T], vb[:B, :, :past + T]
    return cache["k"], cache["v"]


def cache_keep_rows(cache: dict, rows) -> None:
    """Keep these batch rows of one layer's cache, in this order (repeats allowed: beam search
    copies a parent's row into each of its children), rows a device int array. With buffers the
    filled part is gathered into a second buffer of the same size and the two are swapped."""
    if "k_buf" not in cache or cache["k_buf"].shape[0] < len(rows):   # no buffers, or more rows than they hold
        cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
        _drop_buffers(cache)          # (cache_append allocates buffers of the new row count)
        return
    n, (B, T) = len(rows), cache["k"].shape[::2]
    for name in ("k", "v"):
        buf = cache[name + "_buf"]
        spare = cache.get(name + "_spare")
        if spare is None:
            spare = cache[name + "_spare"] = backend.xp.empty_like(buf)
        # whole rows of the buffer, unfilled columns too: a copy between contiguous blocks is
        # several times faster than one into the strided view of the filled part
        backend.take_rows(buf[:B], rows, out=spare[:n])
        cache[name + "_buf"], cache[name + "_spare"] = spare, buf
        cache[name] = spare[:n, :, :T]


def _drop_buffers(cache: dict) -> None:
    for name in ("k_buf", "v_buf", "k_spare", "v_spare"):
        cache.pop(name, None)


class MLP(Module):
    """fc: d -> d_ff, GELU (tanh or exact, cfg.gelu), proj: d_ff -> d."""

    def __init__(self, cfg: TransformerConfig):
        self.fc = Linear(cfg.d_model, cfg.d_ff)
        self.proj = Linear(cfg.d_ff, cfg.d_model)
        self.gelu = cfg.gelu

    def forward(self, x):
        return self.proj(ops.gelu(self.fc(x), self.gelu))


class Block(Module):
    def __init__(self, cfg: TransformerConfig):
        self.pre_ln = cfg.arch == "gpt2"
        self.ln_1 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = SelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, key_mask=None, prefix=None, cache=None):
        if self.pre_ln:   # GPT-2: x + f(LN(x))
            x = x + self.drop(self.attn(self.ln_1(x), key_mask, prefix, cache))
            x = x + self.drop(self.mlp(self.ln_2(x)))
        else:             # BERT: LN(x + f(x))
            x = self.ln_1(x + self.drop(self.attn(x, key_mask, prefix, cache)))
            x = self.ln_2(x + self.drop(self.mlp(x)))
        return x


def _add_at_tokens(x, a):
    """x (B, P + T, d) + a (B or 1, T, d) on the last T positions (a soft prompt's P get nothing)."""
    P = x.shape[1] - a.shape[1]
    if P < 0 or a.shape[2] != x.shape[2]:
        raise ValueError(f"block_inputs entry has shape {tuple(a.shape)}; expected (B or 1, T, d) with "
                         f"T <= {x.shape[1]} tokens and d = {x.shape[2]}")
    if P:
        a = ops.concat([Tensor(backend.xp.zeros((a.shape[0], P, a.shape[2]), dtype=a.dtype)), a], axis=1)
    return x + a


class Transformer(Module):
    def __init__(self, cfg: TransformerConfig):
        self.config = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = Embedding(cfg.n_ctx, cfg.d_model)
        if cfg.arch == "bert":
            self.wtt = Embedding(cfg.n_types, cfg.d_model)
            self.ln_emb = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.drop = Dropout(cfg.dropout)
        self.h = ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        if cfg.arch == "gpt2":
            self.ln_f = LayerNorm(cfg.d_model, cfg.ln_eps)
        else:
            if cfg.mlm_head:
                self.mlm_dense = Linear(cfg.d_model, cfg.d_model)
                self.mlm_ln = LayerNorm(cfg.d_model, cfg.ln_eps)
                self.mlm_bias = Parameter(backend.xp.zeros(cfg.vocab_size, dtype=backend.default_dtype()))
            self.pooler = Linear(cfg.d_model, cfg.d_model)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.n_labels:
            self.cls_head = Linear(cfg.d_model, cfg.n_labels)

    # ------------------------------------------------------------------ inputs
    def _check_ids(self, ids, name="ids", high=None):
        """Validate token ids (in [0, high), default the vocabulary) on the host (CuPy wraps
        out-of-range indices silently) and move them."""
        hostnp = backend.host()
        high = self.config.vocab_size if high is None else high
        if isinstance(ids, Tensor):
            ids = ids.data
        if isinstance(ids, (list, tuple)) or isinstance(ids, hostnp.ndarray):
            ids = hostnp.asarray(ids)
            if ids.dtype.kind not in "iu":
                raise TypeError(f"{name} must be integers, got dtype {ids.dtype}")
            if ids.ndim != 2:
                raise ValueError(f"{name} must have shape (batch, tokens), got {ids.shape}")
            if name == "ids" and 0 in ids.shape:
                raise ValueError(f"ids has shape {ids.shape}: no {'rows' if ids.shape[0] == 0 else 'tokens'}; "
                                 f"give at least one sequence of at least one token")
            if ids.size and (ids.min() < 0 or ids.max() >= high):
                bad = int(ids[(ids < 0) | (ids >= high)][0])
                hint = {"ids": "the tokenizer and model vocabularies do not match",
                        "position_ids": f"the model has n_ctx={self.config.n_ctx} positions"}.get(
                            name, f"the model has n_types={self.config.n_types}")
                raise ValueError(f"{name} contains {bad}, outside [0, {high}); {hint}")
        return backend.to_device(ids)

    def embed(self, ids, token_type_ids=None, pos_offset: int = 0, prompt=None, position_ids=None):
        """Token (+ position, + type) embeddings: (B, T) ids -> (B, T', d).

        prompt: optional Tensor (B or 1, P, d) of soft-prompt vectors prepended to the token
        embeddings (prompt tuning); positions then count the prompt tokens too (T' = P + T).
        position_ids: optional (B, T) integers, each row's own token positions (a left-padded batch:
        a row's first real token is at position 0 whatever its padding); a soft prompt given here
        takes positions 0 .. P-1 before them, so the tokens get P + position_ids. Default:
        pos_offset, pos_offset + 1, ... for every row.
        """
        ids = self._check_ids(ids)
        B, T = ids.shape
        x = self.wte(ids)                                                   # (B, T, d)
        if prompt is not None:
            if prompt.shape[0] == 1 and B > 1:  # one prompt shared by the batch: repeat it B times
                prompt = prompt[backend.xp.zeros(B, dtype=backend.int64)]          # (B, P, d)
            x = ops.concat([prompt, x], axis=1)                              # (B, P + T, d)
        Tt = x.shape[1]
        if position_ids is not None:
            P = Tt - T
            position_ids = self._check_ids(position_ids, "position_ids", high=self.config.n_ctx - P)
            if position_ids.shape != (B, T):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected "
                                 f"(batch, tokens) = {(B, T)}")
            if P:                                                            # the soft prompt first
                xp = backend.xp
                position_ids = xp.concatenate([xp.broadcast_to(xp.arange(P, dtype=position_ids.dtype), (B, P)),
                                               position_ids + P], axis=1)    # (B, P + T)
            x = x + self.wpe(position_ids)                                   # (B, T', d): each row its own
        else:
            if pos_offset + Tt > self.config.n_ctx:
                raise ValueError(f"sequence of {pos_offset + Tt} tokens is longer than the model's "
                                 f"context n_ctx={self.config.n_ctx}; truncate the input")
            x = x + self.wpe.weight[pos_offset:pos_offset + Tt]              # (T', d) broadcast over B
        if self.config.arch == "bert":
            types = backend.xp.zeros((B, T), dtype=ids.dtype) if token_type_ids is None \
                else self._check_ids(token_type_ids, "token_type_ids", high=self.config.n_types)
            if prompt is not None:  # soft prompt tokens get type 0
                types = backend.xp.concatenate([backend.xp.zeros((B, Tt - T), dtype=types.dtype), types], axis=1)
            x = self.ln_emb(x + self.wtt(types))
        return self.drop(x)

    # ------------------------------------------------------------------ body
    def encode(self, ids, attention_mask=None, token_type_ids=None, prefix=None, cache=None, prompt=None,
               position_ids=None, block_inputs=None):
        """The transformer body: (B, T) ids -> hidden states (B, T', d) (after ln_f for gpt2).

        attention_mask: (B, T) 1 for real tokens, 0 for padding (with a cache: (B, T_past + T)).
        prefix: list of n_layer (k_p, v_p) pairs, each (B or 1, H, P, D) (prefix tuning), or None
                for a layer without; a pair may carry a third item, start (B or 1, P) (infix).
        cache:  list of n_layer dicts, filled and extended in place (incremental decoding).
        prompt: (B or 1, P, d) soft prompt prepended to the embeddings (prompt tuning).
        position_ids: (B, T) each row's token positions (see `embed`); with a left-padded batch, pass
                the attention_mask too, so that the padding keys are never attended.
        block_inputs: list of n_layer Tensors (B or 1, T, d) or None: added to the hidden state of
                the T token positions (after any soft prompt) before block i (PASTA's vectors at
                the special tokens). None (the default) adds nothing and costs nothing.
        """
        past = 0
        if cache is not None and "k" in cache[0]:
            past = cache[0]["k"].shape[2]
        x = self.embed(ids, token_type_ids, pos_offset=past, prompt=prompt, position_ids=position_ids)
        key_mask = None
        if attention_mask is not None:
            if isinstance(attention_mask, Tensor):
                attention_mask = attention_mask.data
            key_mask = backend.to_device(attention_mask)
            if prompt is not None:  # prompt tokens are always visible
                B, P = x.shape[0], prompt.shape[1]
                key_mask = backend.xp.concatenate([backend.xp.ones((B, P), dtype=key_mask.dtype), key_mask], axis=1)
        for i, block in enumerate(self.h):
            if block_inputs is not None and block_inputs[i] is not None:
                x = _add_at_tokens(x, block_inputs[i])                       # x_i <- x_i + a_i
            x = block(x, key_mask,
                      prefix[i] if prefix is not None else None,
                      cache[i] if cache is not None else None)
        if self.config.arch == "gpt2":
            x = self.ln_f(x)
        return x

    # ------------------------------------------------------------------ heads
    def lm_logits(self, h):
        """(B, T, d) -> (B, T, V). gpt2: tied output embedding; bert: the MLM head."""
        w = self.lm_head.weight if not self.config.tie_embeddings else self.wte.weight
        if self.config.arch == "bert":
            if not self.config.mlm_head:
                raise ValueError("this encoder has no MLM head (config.mlm_head=False: it was loaded "
                                 "from a BertModel checkpoint); use encode / pooled / classify")
            h = self.mlm_ln(ops.gelu(self.mlm_dense(h), self.config.gelu))
            return ops.linear(h, w, self.mlm_bias)
        return ops.linear(h, w)

    def mean_pooled(self, h, attention_mask=None):
        """Mean of the hidden states over the real tokens (sentence-transformers' pooling):
        (B, T, d) -> (B, d).  m = attention_mask (B, T);  pooled_b = sum_t m_bt h_bt / sum_t m_bt."""
        if attention_mask is None:
            return h.mean(axis=1)
        m = backend.to_device(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
        m = m.astype(h.dtype)                                        # (B, T)
        if m.shape[1] < h.shape[1]:                                  # soft-prompt rows count as real
            pad = backend.xp.ones((m.shape[0], h.shape[1] - m.shape[1]), dtype=h.dtype)
            m = backend.xp.concatenate([pad, m], axis=1)
        counts = backend.xp.maximum(m.sum(axis=1, keepdims=True), 1.0)  # (B, 1), never 0
        return (h * Tensor(m[:, :, None])).sum(axis=1) / Tensor(counts)  # (B, d)

    def pooled(self, h, attention_mask=None):
        """One vector per sequence: config.pooling "mean" -> mean_pooled; "default" -> bert
        tanh(pooler(h[:, 0])) ([CLS]), gpt2 the last real token."""
        if self.config.pooling == "mean":
            return self.mean_pooled(h, attention_mask)
        if self.config.arch == "bert":
            return ops.tanh(self.pooler(h[:, 0]))
        B, T = h.shape[0], h.shape[1]
        if attention_mask is None:
            return h[:, T - 1]
        xp = backend.xp
        mask = backend.to_device(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
        Tm = mask.shape[1]
        # (B,) index of the last real token: the largest j with mask[j] != 0 (right or left padding)
        last = ((mask != 0) * xp.arange(1, Tm + 1)).max(axis=1).astype(backend.int64) - 1 + (T - Tm)
        return h[xp.arange(B), last]

    def classify(self, ids, attention_mask=None, token_type_ids=None, **kw):
        """(B, T) ids -> (B, n_labels) logits of the classification head."""
        if not self.config.n_labels:
            raise ValueError("this model has no classification head: build it with n_labels > 0")
        h = self.encode(ids, attention_mask, token_type_ids, **kw)
        return self.cls_head(self.pooled(h, attention_mask))

    def forward(self, ids, targets=None, attention_mask=None, token_type_ids=None, **kw):
        """(B, T) ids -> logits (B, T', V); with targets (B, T') also the mean cross-entropy
        (positions whose target is -100 are ignored). Returns (logits, loss or None)."""
        logits = self.lm_logits(self.encode(ids, attention_mask, token_type_ids, **kw))
        return logits, (None if targets is None else ops.cross_entropy(logits, targets))

    def new_cache(self, capacity: int | None = None) -> list:
        """An empty key/value cache, one dict per layer (see SelfAttention.forward). capacity: the
        most positions it will hold (soft prompt + prompt + new tokens): its buffers are then
        allocated once and filled in place (cache_append)."""
        return [dict() if capacity is None else {"capacity": int(capacity)} for _ in range(self.config.n_layer)]
