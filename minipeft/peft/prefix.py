"""Prefix-tuning (Li & Liang 2021, arXiv:2101.00190) and deep prompts (P-tuning v2, Liu et al. 2022).

Every layer l gets P trainable key and value rows ("virtual tokens") in front of the keys and
values that its attention computes from the input; the base model stays frozen:

    K'_l = [P_k,l ; K_l],   V'_l = [P_v,l ; V_l]                 P_k,l, P_v,l: (H, P, D),  d = H D
    head_l = softmax(Q_l K'_l^T / sqrt(D) + mask) V'_l            (ops.attention: k_prefix, v_prefix)

P_theta, all of them: |P_theta| = L_p * 2 * n_layer * d  (Li & Liang's count; GPT-2 M, L_p = 10:
491,520). Stored as Hugging Face peft stores it, one row per virtual token, (P, 2 n_layer d),
each row ordered (layer, key/value, head, head dim).

Reparametrisation (Sec. 4.3 and the official code): optimising P_theta directly is unstable, so
during training it is the output of an MLP, which is dropped afterwards (`eject`):

    P_theta = W2 tanh(W1 P' + b1) + b2       P': (P, d)   W1: (mid, d)   W2: (2 n_layer d, mid)

mid = encoder_hidden_size (the code's mid_dim; the paper's k = 512). Trainable while training:
P d + (d mid + mid) + (mid 2Ld + 2Ld); kept after `eject`: 2 L P d. prefix_projection=False
optimises P_theta directly (deep prompts / P-tuning v2).

Initialisation. "random": P' ~ N(0, 1) (torch's Embedding default, which the official code and HF
peft use), W1, W2 ~ N(0, 0.02), biases 0; without the MLP, P_theta ~ N(0, 1). "words" (Fig. 5):
run the frozen model on the tokens of init_text (repeated or cut to P tokens) and take each
layer's keys and values as P_theta. With the MLP, P' and W1 are drawn as for "random" and the
last layer, being linear, is SOLVED for: W2 = (pinv(tanh(W1 P')) P_theta)^T, b2 = 0, so the MLP
starts exactly at the words' activations (needs mid >= P).

Infix (Table 4, [x; INFIX; y]): the rows sit before the first `infix_token` of each sequence (the
separator between source and target): only queries at that position or later see them
(ops.attention's prefix_start; causal models only). With a KV cache the first chunk (the prompt)
must hold the separator; every later token comes after it and sees the infix.

Several active prefix adapters concatenate along P. Per-sample routing gathers each sample's own
rows; adapters of different lengths (or samples without an adapter) are padded with rows that no
query sees (start = NEVER). Prefix rows take no positions: the tokens keep positions 0, 1, ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from .. import backend, ops
from ..autograd import Tensor, no_grad
from ..nn.layers import Embedding, Linear
from ..nn.module import Module
from .common import TrainedRows, block_indices, check_layers, load_tokenizer, positive_int, task_heads

NEVER = 1 << 40    # a start position no query reaches: a row that is never visible (padding)
DEFAULT_LR = 2e-3


@dataclass
class PrefixConfig:
    method: ClassVar[str] = "prefix"
    num_virtual_tokens: int = 10          # L_p, the prefix length P
    prefix_projection: bool = True        # train through the MLP (Li & Liang); False: P_theta directly
    encoder_hidden_size: int = 512        # the MLP width mid (k)
    init: str = "random"                  # "random" | "words"
    init_text: str | None = None          # init="words": e.g. "table to text"
    tokenizer_path: str | None = None     # for init_text; None = the shipped data/tokenizer.json
    variant: str = "prefix"               # "prefix" | "infix"
    infix_token: int | None = None        # variant="infix": id of the source/target separator
    layers: tuple | None = None           # which blocks get a prefix; None = all
    modules_to_save: tuple = ()

    def __post_init__(self):
        P = positive_int(self.num_virtual_tokens, "PrefixConfig.num_virtual_tokens", "the prefix length L_p, e.g. 10")
        positive_int(self.encoder_hidden_size, "PrefixConfig.encoder_hidden_size", "the MLP width, 512 in Li & Liang")
        if self.init not in ("random", "words"):
            raise ValueError(f"PrefixConfig.init must be 'random' or 'words', got {self.init!r}")
        if self.init == "words" and not (isinstance(self.init_text, str) and self.init_text.strip()):
            raise ValueError("PrefixConfig(init='words') needs init_text, the words whose activations "
                             "start the prefix, e.g. init_text='table to text'")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("PrefixConfig.init_text is only used with init='words'; set init='words'")
        if self.init == "words" and self.prefix_projection and self.encoder_hidden_size < P:
            raise ValueError(f"init='words' with the MLP solves its last layer for the words' activations, "
                             f"which needs encoder_hidden_size >= num_virtual_tokens "
                             f"({self.encoder_hidden_size} < {P})")
        if self.variant not in ("prefix", "infix"):
            raise ValueError(f"PrefixConfig.variant must be 'prefix' or 'infix', got {self.variant!r}")
        if self.variant == "infix" and (not isinstance(self.infix_token, int) or self.infix_token < 0):
            raise ValueError("PrefixConfig(variant='infix') needs infix_token, the id of the token that "
                             "separates source and target (minipeft's <sep> is 3)")
        self.layers = check_layers(self.layers, "PrefixConfig")     # sorted: P_theta's order of layers
        if self.layers == ():
            raise ValueError("PrefixConfig.layers is empty; give block indices, or None for all")
        self.modules_to_save = tuple(self.modules_to_save)


class PrefixEncoder(Module):
    """The training-time MLP: P_theta = W2 tanh(W1 P' + b1) + b2, (P, 2 n_layer d)."""

    def __init__(self, P: int, d: int, mid: int, width: int):
        self.embedding = Embedding(P, d)                       # P'      (P, d)
        self.transform_in = Linear(d, mid)                     # W1, b1  (mid, d)
        self.transform_out = Linear(mid, width)                # W2, b2  (2 n_layer d, mid)

    def forward(self):
        h = ops.tanh(self.transform_in(self.embedding.weight))       # tanh(W1 P' + b1)   (P, mid)
        return self.transform_out(h)                                  # W2 h + b2          (P, 2Ld)


# P_theta itself, (P, 2 n_layer d), deep prompts or a prefix after `eject`, is a common.TrainedRows.

# ----------------------------------------------------------------------------- the method's API

CONFIG = PrefixConfig


def from_options(o) -> PrefixConfig:
    return PrefixConfig(num_virtual_tokens=o.length, modules_to_save=o.heads)


def _layers(model_cfg, cfg: PrefixConfig) -> list:
    return block_indices(model_cfg, cfg.layers, "PrefixConfig")


def add(pm, name: str, cfg: PrefixConfig) -> None:
    mc = pm.config
    layers = _layers(mc, cfg)
    if cfg.variant == "infix" and not mc.causal:
        raise ValueError("variant='infix' needs a causal model (arch='gpt2'): in a bidirectional encoder "
                         "every token sees every key, so an infix is the same as a prefix")
    P, d, width = cfg.num_virtual_tokens, mc.d_model, 2 * len(layers) * mc.d_model
    acts = _word_activations(pm, cfg, layers) if cfg.init == "words" else None     # (P, 2Ld) or None
    if cfg.prefix_projection:
        enc = PrefixEncoder(P, d, cfg.encoder_hidden_size, width)
        enc.embedding.weight.data = backend.rng.normal((P, d), std=1.0)            # P' ~ N(0, 1)
        if acts is not None:   # solve the linear last layer: tanh(W1 P' + b1) W2^T = P_theta
            with no_grad():
                h = ops.tanh(enc.transform_in(enc.embedding.weight)).data         # (P, mid)
            w2t = backend.xp.linalg.pinv(h.astype(backend.float64)) @ acts.astype(backend.float64)
            enc.transform_out.weight.data = w2t.T.astype(backend.default_dtype())  # (2Ld, mid)
        pm.inputs[name] = enc
    else:
        value = acts if acts is not None else backend.rng.normal((P, width), std=1.0)  # P_theta
        pm.inputs[name] = TrainedRows(value.astype(backend.default_dtype()))


def _word_activations(pm, cfg: PrefixConfig, layers):
    """Keys and values of the frozen model on the words of init_text, as P_theta (P, 2 n d)."""
    ids = load_tokenizer(cfg.tokenizer_path).encode(cfg.init_text)
    if not ids:
        raise ValueError(f"init_text {cfg.init_text!r} encodes to no tokens")
    P = cfg.num_virtual_tokens
    ids = (ids * math.ceil(P / len(ids)))[:P]                    # repeat or cut to P tokens
    model, cache = pm.model, pm.model.new_cache()
    with model.eval_mode(), no_grad():                           # no dropout in this pass
        model.encode([ids], cache=cache)                         # fills cache[l]["k"], ["v"]: (1, H, P, D)
    xp = backend.xp
    kv = xp.stack([xp.stack([cache[l]["k"][0], cache[l]["v"][0]]) for l in layers])   # (n, 2, H, P, D)
    return kv.transpose(3, 0, 1, 2, 4).reshape(P, -1)                                  # (P, 2 n H D)


def per_layer(pm, name: str) -> dict:
    """{layer: (k_p, v_p)} of one adapter, each (1, H, P, D), cut from P_theta (P, 2 n d)."""
    session = getattr(pm, "_session", None)         # PeftModel.inference_session: built once
    if session is not None and ("prefix", name) in session:
        return session["prefix", name]
    out = _per_layer(pm, name)
    if session is not None:
        session["prefix", name] = out
    return out


def _per_layer(pm, name: str) -> dict:
    cfg, mc = pm.peft_config[name], pm.config
    layers = _layers(mc, cfg)
    H, D, P = mc.n_head, mc.d_model // mc.n_head, cfg.num_virtual_tokens
    theta = pm.inputs[name]()                                                    # (P, 2 n d)
    rows = theta.reshape(P, 2 * len(layers), H, D).permute(1, 2, 0, 3)           # (2n, H, P, D)
    pieces = ops.split(rows, 2 * len(layers), axis=0)                            # 2n x (1, H, P, D)
    return {l: (pieces[2 * j], pieces[2 * j + 1]) for j, l in enumerate(layers)}  # key 2j, value 2j+1


def _starts(pm, name: str, ids, cache, rows):
    """(1 or B, P) host ints: the position from which each row is visible (0 for a prefix)."""
    hostnp, cfg = backend.host(), pm.peft_config[name]
    P = cfg.num_virtual_tokens
    past = cache[0]["k"].shape[2] if cache is not None and "k" in cache[0] else 0
    if cfg.variant == "prefix" or past:     # a later decoding step: every new token follows the infix
        return hostnp.zeros((1, P), dtype=hostnp.int64)
    if ids is None:
        raise ValueError("variant='infix' finds its position in the token ids; call it through PeftModel")
    ids = hostnp.asarray(backend.to_numpy(ids.data if isinstance(ids, Tensor) else ids))
    hit = ids == cfg.infix_token                                                  # (B, T)
    start = hostnp.where(hit.any(axis=1), hit.argmax(axis=1), NEVER)              # (B,) first separator
    missing = [int(b) for b in (hostnp.arange(len(ids)) if rows is None else rows) if start[b] == NEVER]
    if missing:
        raise ValueError(f"variant='infix' puts the virtual tokens before the first infix_token="
                         f"{cfg.infix_token} of each sequence (with a cache: of the prompt), but "
                         f"sample(s) {missing} have none")
    return hostnp.repeat(start[:, None], P, axis=1)                               # (B, P)


def encode_inputs(pm, route, batch_size: int, ids=None, cache=None) -> dict:
    """{"prefix": per layer (k_p, v_p) or (k_p, v_p, start), or None} for Transformer.encode."""
    mine = [(n, r) for n, r in route if isinstance(pm.peft_config.get(n), PrefixConfig)]
    if not mine:
        return {}
    hostnp = backend.host()
    kv = {n: per_layer(pm, n) for n, _ in mine}
    starts = {n: _starts(pm, n, ids, cache, r) for n, r in mine}
    out = []
    for l in range(pm.config.n_layer):
        have = [n for n, _ in mine if l in kv[n]]
        if not have:
            out.append(None)
        elif all(r is None for _, r in mine):        # active adapters: concatenate along P
            k = ops.concat([kv[n][l][0] for n in have], axis=2)                      # (1, H, sum P, D)
            v = ops.concat([kv[n][l][1] for n in have], axis=2)
            rows = max(len(starts[n]) for n in have)                                 # 1, or B for an infix
            start = hostnp.concatenate([hostnp.broadcast_to(starts[n], (rows, starts[n].shape[1]))
                                        for n in have], axis=1)                      # (1 or B, sum P)
            out.append((k, v) if not start.any() else (k, v, start))
        else:                                        # per sample: gather each sample's rows
            out.append(_gather(pm, mine, kv, starts, l, batch_size))
    return {"prefix": out}


def _gather(pm, mine, kv, starts, l: int, B: int):
    """(k_p, v_p, start) of layer l with each sample's own adapter rows: (B, H, Pmax, D), (B, Pmax)."""
    hostnp, xp = backend.host(), backend.xp
    mc = pm.config
    H, D = mc.n_head, mc.d_model // mc.n_head
    Pmax = max(pm.peft_config[n].num_virtual_tokens for n, _ in mine if l in kv[n])
    ks, vs = [], []
    sel = hostnp.full(B, len(mine), dtype=hostnp.int64)            # adapter of each sample; last = none
    start = hostnp.full((B, Pmax), NEVER, dtype=hostnp.int64)
    zeros = lambda n: Tensor(xp.zeros((1, H, n, D), dtype=backend.default_dtype()))  # noqa: E731
    for i, (n, rows) in enumerate(mine):
        if l in kv[n]:
            k, v = kv[n][l]
            P = k.shape[2]
            if P < Pmax:                                   # pad to Pmax with rows nobody sees
                k, v = ops.concat([k, zeros(Pmax - P)], axis=2), ops.concat([v, zeros(Pmax - P)], axis=2)
            s = starts[n]
            start[rows, :P] = s[rows] if len(s) > 1 else s[0]
        else:
            k, v = zeros(Pmax), zeros(Pmax)
        ks.append(k)
        vs.append(v)
        sel[rows] = i
    idx = backend.to_device(sel)
    k = ops.concat(ks + [zeros(Pmax)], axis=0)[idx]                 # (B, H, Pmax, D)
    v = ops.concat(vs + [zeros(Pmax)], axis=0)[idx]
    return (k, v) if not start.any() else (k, v, start)


def eject(pm, name: str = "default"):
    """Drop the MLP: compute P_theta once and keep only it (2 n_layer P d numbers). The outputs are
    unchanged; the adapter's config becomes prefix_projection=False. Returns the new Parameter."""
    pm._check_name(name)
    enc = pm.inputs[name]
    if not isinstance(enc, PrefixEncoder):
        raise ValueError(f"adapter {name!r} holds its prefix activations already (prefix_projection=False "
                         f"or ejected before); there is no MLP to drop")
    with no_grad():
        value = enc().data.copy()                                      # (P, 2 n d)
    pm.inputs[name] = TrainedRows(value)
    pm.inputs[name].prompt_embeddings.requires_grad = enc.embedding.weight.requires_grad
    pm.peft_config[name] = replace(pm.peft_config[name], prefix_projection=False, init="random",
                                   init_text=None)
    return pm.inputs[name].prompt_embeddings


def formula(model_cfg, cfg: PrefixConfig) -> dict:
    """kept = 2 n P d (Li & Liang's L_p * 2 * n_layer * d); trainable adds the MLP when it is used."""
    d, P, mid = model_cfg.d_model, cfg.num_virtual_tokens, cfg.encoder_hidden_size
    n = len(_layers(model_cfg, cfg))
    kept = 2 * n * P * d
    trainable = (P * d + (d * mid + mid) + (mid * 2 * n * d + 2 * n * d)) if cfg.prefix_projection else kept
    heads = task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": trainable + heads, "kept": kept + heads}
