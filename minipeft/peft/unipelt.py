"""UniPELT: a unified framework for parameter-efficient language model tuning (Mao et al., ACL 2022,
arXiv:2110.07577; official code morningmoni/UniPELT).

Three PELT methods are combined in every layer, each scaled by its own learned gate, a sigmoid of
a linear function of that sub-module's input, so the model learns which method to use where:

    adapter:  h <- h + G_A * f(h),   G_A = mean_t sigmoid(h W_A + b_A)      f: adapter.py's Bottleneck
    LoRA:     y  = W0 x + G_L * B A x,   G_L = sigmoid(x W_L + b_L)  (per token; replaces alpha / r)
    prefix:   K' = [G_P P_k ; K],  V' = [G_P P_v ; V],   G_P = mean_t sigmoid(x W_P + b_P)
              (x: the attention input; one gate per sample)

    W_A, W_P: (d, 1), W_L: (d_in, 1), biases scalars.  h, x: (B, T, d).  P_k, P_v: (P, d) per layer,
    used as (1, H, P, D); gated, (B, H, P, D).  A: (r, d_in), B: (d_out, r).  G_A, G_P: (B, 1, 1);
    G_L: (B, T, 1).

What is gated, exactly as in the official code (`adapters/modeling.py` for the adapter gate,
`lora_layers.py` for the LoRA gate, the prefix branch of `modeling_bert.py`): the adapter's output
f(h); LoRA's low-rank delta B A x, whose constant alpha / r the gate replaces; the prefix's KEY and
VALUE rows both. A gate of 0 removes the adapter and the LoRA delta exactly. The prefix gate cannot
remove the prefix exactly: zero keys still take attention mass (score 0, so exp(0) in the
softmax denominator) while contributing zero values; a gate of 0 equals a prefix of all-zero rows.
(Removing it exactly would need a change to the attention op, a log-gate on the scores.)

Which places of the model: attention keys/values (the prefix), a layer's output (the adapter, after
the MLP, one per block as in the paper: Pfeiffer's placement), existing weights through a delta
beside them (LoRA on q and v). Nothing of the base model trains. The pieces are those of
adapter.py (Bottleneck in a SequentialAdapter) and lora.py (LoraLinear, whose lora_A here is a
GatedA: A x * G_L(x)); the prefix lives in a wrapper of each block's attention,
GatedPrefixAttention, which computes G_P from the attention's input and appends the gated rows to
whatever prefix the block passes in (prefix tuning's, a caller's).

The prefix rows come, as in the official code (Li & Liang's prefix with mid_dim 512), from ONE
reparametrising MLP shared by all the adapted layers (prefix.py's PrefixEncoder):

    [P_k,1 ; P_v,1 ; ... ; P_k,n ; P_v,n] = W2 tanh(W1 P' + b1) + b2      P': (P, d), output (P, 2 n d)

and each layer's GatedPrefix reads its own key and value slices of that output (j-th adapted block:
slices 2j and 2j+1, the order of prefix.py). The MLP lives in pm.inputs[name] and runs once per
forward (`encode_inputs` hands its output to the layers). `eject` computes the rows once and keeps
only them, as prefix tuning's eject does; prefix_projection=False trains the rows directly
(P-tuning v2 style).

Parameters (L blocks, adapter width m, rank r on targets with (d_in, d_out), prefix length P, MLP
width mid, n = L adapted blocks):
    adapter: 2 m d + d + m  + (d + 1)   per block
    LoRA:    r (d_in + d_out) + (d_in + 1)   per target per block
    prefix:  (d + 1) per block (the gate), plus the rows: 2 P d per block (kept, and trained when
             prefix_projection=False) or, while the MLP trains, P d + (d mid + mid) + (mid 2nd + 2nd)
use_adapter / use_prefix / use_lora switch a part off (the paper's UniPELT (AP): use_lora=False).

Simplifications: dropout on the LoRA input is left out. Not mergeable: every gate depends on the
input. With a key/value cache the gates G_A, G_P average over the tokens of the current step only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from .. import backend, ops
from ..autograd import no_grad
from ..nn.layers import Linear
from ..nn.module import Module, ModuleDict, Parameter
from . import adapter as adapter_method
from . import lora as lora_method
from .common import block_indices, check_layers, n_blocks, positive_int, task_heads
from .prefix import NEVER, PrefixEncoder
from .routing import AdapterLayer

DEFAULT_LR = 2e-3


@dataclass
class UniPELTConfig:
    method: ClassVar[str] = "unipelt"
    use_adapter: bool = True
    use_prefix: bool = True
    use_lora: bool = True
    size: int = 48                       # adapter bottleneck m (the paper: 48, BERT-base)
    activation: str = "relu"             # adapter activation (Pfeiffer's adapter: ReLU)
    init_scale: float = 1e-3             # std of the adapter weights (near-identity start)
    r: int = 8                           # LoRA rank
    target_modules: tuple = ("q", "v")   # LoRA targets
    num_virtual_tokens: int = 10         # prefix length P
    prefix_projection: bool = True       # prefix rows from one shared MLP (official); False: trained directly
    encoder_hidden_size: int = 512       # that MLP's width mid (the official mid_dim)
    layers: tuple | None = None          # which blocks; None = all
    modules_to_save: tuple = ()

    def __post_init__(self):
        positive_int(self.size, "UniPELTConfig.size", "the adapter bottleneck width m")
        positive_int(self.r, "UniPELTConfig.r", "the LoRA rank")
        positive_int(self.num_virtual_tokens, "UniPELTConfig.num_virtual_tokens", "the prefix length P")
        positive_int(self.encoder_hidden_size, "UniPELTConfig.encoder_hidden_size", "the prefix MLP width, 512")
        if self.activation not in adapter_method.ACTIVATIONS:
            raise ValueError(f"UniPELTConfig.activation {self.activation!r}: choose one of "
                             f"{list(adapter_method.ACTIVATIONS)}")
        if self.init_scale < 0:
            raise ValueError(f"UniPELTConfig.init_scale must be >= 0, got {self.init_scale}")
        if not (self.use_adapter or self.use_prefix or self.use_lora):
            raise ValueError("UniPELTConfig.use_adapter, use_prefix and use_lora are all False; keep one")
        self.target_modules = tuple([self.target_modules] if isinstance(self.target_modules, str)
                                    else self.target_modules)
        bad = [t for t in self.target_modules if t not in lora_method.TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"UniPELTConfig.target_modules {list(self.target_modules)}: unknown {bad}; "
                             f"choose from {list(lora_method.TARGETS)}")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "UniPELTConfig")


CONFIG = UniPELTConfig


def from_options(o) -> UniPELTConfig:
    targets = tuple(t.strip() for t in o.targets.split(",") if t.strip())
    return UniPELTConfig(r=o.r, target_modules=targets, num_virtual_tokens=o.length, modules_to_save=o.heads)


def _gate(d: int) -> Linear:
    """A gate's linear part, d -> 1 (PyTorch's default init: uniform(+-1/sqrt(d)), as nn.Linear)."""
    g = Linear(d, 1)
    bound = 1.0 / math.sqrt(d)
    g.weight = Parameter(backend.rng.uniform((1, d), -bound, bound))
    return g


class GatedBottleneck(adapter_method.Bottleneck):
    """G_A f(h), G_A = mean_t sigmoid(h W_A + b_A): (B, T, d) -> (B, T, d)."""

    def __init__(self, d: int, m: int, activation: str, init_scale: float):
        super().__init__(d, m, activation, init_scale)
        self.gate = _gate(d)

    def forward(self, h):
        g = ops.sigmoid(self.gate(h)).mean(axis=1, keepdims=True)           # (B, 1, 1)
        return super().forward(h) * g


class GatedA(Module):
    """LoRA's A with the gate: A x * sigmoid(x W_L + b_L), (..., d_in) -> (..., r)."""

    def __init__(self, d_in: int, r: int):
        self.weight = Parameter(backend.rng.normal((r, d_in), std=1.0 / math.sqrt(d_in)))   # A (r, d_in)
        self.gate = _gate(d_in)

    def forward(self, x):
        return ops.linear(x, self.weight) * ops.sigmoid(self.gate(x))       # (..., r) * (..., 1)


class GatedPrefix(Module):
    """One layer's prefix rows P_k, P_v (P, d) and their gate W_P (d -> 1).

    The rows are its own parameters (`key`, `value`), or, with the shared MLP, slices j of the
    MLP's output: `source` = (the PrefixEncoder, j). The encoder is held in a tuple so that the
    module tree (and so counting and saving) finds it once, at pm.inputs[name]."""

    def __init__(self, P: int, d: int, source: tuple | None = None):
        if source is None:
            self.key = Parameter(backend.rng.normal((P, d), std=1.0))
            self.value = Parameter(backend.rng.normal((P, d), std=1.0))
        self.source = source
        self.shape = (P, d)
        self.gate = _gate(d)

    def key_value(self, route=None):
        """(P_k, P_v), each (P, d): its own, or its slices of the MLP's output. encode_inputs runs
        the MLP once per forward and leaves (route, output) on the encoder; this forward's `route`
        (a new list every forward) tells its output from an older one. Otherwise the MLP runs here."""
        if self.source is None:
            return self.key, self.value
        encoder, j = self.source
        P, d = self.shape
        route_then, theta = getattr(encoder, "ready", (None, None))
        if route is None or route_then is not route:
            theta = encoder()
        theta = theta.reshape(P, -1, d)                                     # (P, 2n, d): key 2j, value 2j+1
        return theta[:, 2 * j], theta[:, 2 * j + 1]

    def rows(self, x, n_head: int, route=None):
        """(G_P P_k, G_P P_v), each (B, H, P, D), from the attention input x (B, T, d)."""
        P, d = self.shape
        g = ops.sigmoid(self.gate(x)).mean(axis=1, keepdims=True)           # (B, 1, 1)
        g = g.reshape(x.shape[0], 1, 1, 1)
        heads = lambda t: t.reshape(1, P, n_head, d // n_head).permute(0, 2, 1, 3)   # noqa: E731
        k, v = self.key_value(route)
        return heads(k) * g, heads(v) * g


class GatedPrefixAttention(AdapterLayer):
    """A block's attention with each routed adapter's gated prefix rows appended to its prefix."""

    def __init__(self, base: Module, n_head: int):
        self.base_layer = base
        self.prefixes = ModuleDict()
        self.n_head = n_head

    def forward(self, x, key_mask=None, prefix=None, cache=None):
        mine = [(n, r) for n, r in self.route if n in self.prefixes]
        if not mine:
            return self.base_layer(x, key_mask, prefix, cache)
        hostnp, B = backend.host(), x.shape[0]
        ks, vs, starts = [], [], []
        if prefix is not None:                                   # rows from elsewhere join ours
            kp, vp, st = (tuple(prefix) + (None,))[:3]
            P0 = kp.shape[2]
            ks.append(kp if kp.shape[0] == B else ops.concat([kp] * B, axis=0))
            vs.append(vp if vp.shape[0] == B else ops.concat([vp] * B, axis=0))
            st = hostnp.zeros((1, P0), dtype=hostnp.int64) if st is None else hostnp.asarray(st)
            starts.append(hostnp.broadcast_to(st, (B, P0)))
        for n, rows in mine:
            k, v = self.prefixes[n].rows(x, self.n_head, self.route)   # (B, H, P, D)
            P = k.shape[2]
            s = hostnp.zeros((B, P), dtype=hostnp.int64)
            if rows is not None:                                 # samples of other adapters never see it
                s[:] = NEVER
                s[hostnp.asarray(rows, dtype=hostnp.int64)] = 0
            ks.append(k)
            vs.append(v)
            starts.append(s)
        start = hostnp.concatenate(starts, axis=1)
        k, v = ops.concat(ks, axis=2), ops.concat(vs, axis=2)
        return self.base_layer(x, key_mask, (k, v) if not start.any() else (k, v, start), cache)


def encode_inputs(pm, route, batch_size: int, ids=None, cache=None) -> dict:
    """Nothing for Transformer.encode: the MLP of each routed adapter with prefix_projection runs
    once here, and its output (P, 2 n d) is left on the MLP with this forward's route, for the
    adapter's GatedPrefix layers (GatedPrefix.key_value)."""
    for name, _ in route:
        cfg = pm.peft_config.get(name)
        if isinstance(cfg, UniPELTConfig) and cfg.use_prefix and cfg.prefix_projection:
            encoder = pm.inputs[name]
            encoder.ready = (route, encoder())
    return {}


def _attention(pm, i: int):
    """The SelfAttention of block i, under whatever wraps it."""
    m = pm.model.get_submodule(f"h.{i}.attn")
    while isinstance(m, AdapterLayer):
        m = m.base_layer
    return m


def add(pm, name: str, cfg: UniPELTConfig) -> None:
    mc = pm.config
    d = mc.d_model
    blocks = block_indices(mc, cfg.layers, "UniPELTConfig")
    if cfg.use_lora:                    # first: LoRA needs the plain Linear layers
        for i in blocks:
            att, mlp = _attention(pm, i), pm.model.get_submodule(f"h.{i}.mlp")
            for t in cfg.target_modules:
                owner = att if t in ("q", "k", "v", "o") else mlp
                layer = getattr(owner, t)
                if not isinstance(layer, lora_method.LoraLinear):
                    if isinstance(layer, AdapterLayer):
                        raise ValueError(f"h.{i}.{t} is already wrapped by {type(layer).__name__}; UniPELT's "
                                         f"LoRA needs the plain Linear layer: add it before the other method")
                    layer = lora_method.LoraLinear(layer)
                    setattr(owner, t, layer)
                d_in, d_out = layer.base_layer.n_in, layer.base_layer.n_out
                b = Linear(cfg.r, d_out, bias=False)
                b.weight = Parameter(backend.xp.zeros((d_out, cfg.r), dtype=backend.default_dtype()))
                layer.lora_A[name], layer.lora_B[name] = GatedA(d_in, cfg.r), b
                layer.scaling[name], layer.dropout[name] = 1.0, 0.0      # the gate replaces alpha / r
    if cfg.use_adapter:
        for i in blocks:
            path = f"h.{i}.mlp.proj"
            layer = pm.model.get_submodule(path)
            if not isinstance(layer, adapter_method.SequentialAdapter):
                layer = adapter_method.SequentialAdapter(layer)
                pm.model.set_submodule(path, layer)
            layer.adapters[name] = GatedBottleneck(d, cfg.size, cfg.activation, cfg.init_scale)
    if cfg.use_prefix:
        P, encoder = cfg.num_virtual_tokens, None
        if cfg.prefix_projection:           # one MLP for every adapted block's rows, (P, 2 n d)
            encoder = PrefixEncoder(P, d, cfg.encoder_hidden_size, 2 * len(blocks) * d)
            encoder.embedding.weight.data = backend.rng.normal((P, d), std=1.0)    # P' ~ N(0, 1), as prefix.py
            pm.inputs[name] = encoder
        for j, i in enumerate(blocks):
            path = f"h.{i}.attn"
            layer = pm.model.get_submodule(path)
            if not isinstance(layer, GatedPrefixAttention):
                layer = GatedPrefixAttention(layer, mc.n_head)
                pm.model.set_submodule(path, layer)
            layer.prefixes[name] = GatedPrefix(P, d, None if encoder is None else (encoder, j))


def remove(pm, name: str) -> None:
    for path, m in list(pm.model.named_modules()):
        if isinstance(m, lora_method.LoraLinear) and name in m.lora_A:
            del m.lora_A[name], m.lora_B[name]
            m.scaling.pop(name, None), m.dropout.pop(name, None)
            if not m.lora_A.keys():
                pm.model.set_submodule(path, m.base_layer)
    for path, m in list(pm.model.named_modules()):
        if isinstance(m, GatedPrefixAttention) and name in m.prefixes:
            del m.prefixes[name]
            if not m.prefixes.keys():
                pm.model.set_submodule(path, m.base_layer)
    if name in pm.inputs:                    # the shared prefix MLP
        del pm.inputs[name]
    adapter_method.remove(pm, name)          # the SequentialAdapters, and the task-head copies


def eject(pm, name: str = "default") -> None:
    """Drop the prefix MLP: compute the rows once and keep each layer's as its own parameters
    (2 P d per block). The outputs are unchanged; the config becomes prefix_projection=False."""
    pm._check_name(name)
    prefixes = [m.prefixes[name] for m in pm.model.modules()
                if isinstance(m, GatedPrefixAttention) and name in m.prefixes]
    if not prefixes or prefixes[0].source is None:
        raise ValueError(f"adapter {name!r} has no prefix MLP to drop (use_prefix=False, "
                         f"prefix_projection=False, or ejected before)")
    trainable = pm.inputs[name].embedding.weight.requires_grad
    with no_grad():
        for gp in prefixes:
            k, v = gp.key_value()
            gp.key = Parameter(k.data.copy(), requires_grad=trainable)
            gp.value = Parameter(v.data.copy(), requires_grad=trainable)
            gp.source = None
    del pm.inputs[name]
    pm.peft_config[name] = replace(pm.peft_config[name], prefix_projection=False)


def formula(model_cfg, cfg: UniPELTConfig) -> dict:
    """Per block: adapter 2md + d + m + (d + 1); LoRA r (d_in + d_out) + (d_in + 1) per target;
    prefix (d + 1) + 2 P d. While the shared prefix MLP trains, the 2 P d per block are replaced by
    the MLP once: P d + (d mid + mid) + (mid 2nd + 2nd); kept (after eject): the rows."""
    d, f, m, P, mid = model_cfg.d_model, model_cfg.d_ff, cfg.size, cfg.num_virtual_tokens, cfg.encoder_hidden_size
    n = n_blocks(model_cfg, cfg.layers)
    dims = [(d, f) if t == "fc" else (f, d) if t == "proj" else (d, d) for t in cfg.target_modules]
    per_block = ((2 * m * d + d + m + d + 1) if cfg.use_adapter else 0) \
        + (sum(cfg.r * (i + o) + i + 1 for i, o in dims) if cfg.use_lora else 0) \
        + ((d + 1) if cfg.use_prefix else 0)
    rows = n * 2 * P * d if cfg.use_prefix else 0
    mlp = P * d + (d * mid + mid) + (mid * 2 * n * d + 2 * n * d) if cfg.use_prefix and cfg.prefix_projection else rows
    kept = n * per_block + rows + task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": kept - rows + mlp, "kept": kept}
