"""IA3: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu et al. 2022,
"Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
arXiv:2205.05638).

Three learned vectors rescale activations of every block, elementwise:

    k'  = l_k  ⊙ (W_k x + b_k)           l_k:  (d,)     the attention keys
    v'  = l_v  ⊙ (W_v x + b_v)           l_v:  (d,)     the attention values
    h'  = l_ff ⊙ γ(W_1 x + b_1)          l_ff: (d_ff,)  the FFN hidden activation, i.e. the
                                                        INPUT of the FFN's second projection:
    y   = W_2 h' + b_2                   (W_2 is `proj`, (d, d_ff))

- Where the vector acts: on a Linear layer's output (k, v: "scale the output") or on its input
  (proj: "scale the input", Hugging Face peft's `feedforward_modules`). A layer's input and
  output are the only two places, so any of the block's Linear layers can be a target.
- The vectors start at ones: l ⊙ y = y, so the adapted model starts exactly equal to the base
  model (no random part at all, unlike LoRA's A).
- Trainable parameters: one number per scaled channel. With the default targets k, v, proj on
  L blocks: |Theta| = L (d + d + d_ff) = L (2 d + d_ff); GPT-2 small: 12 (1536 + 3072) = 55,296.
- Mergeable, because a diagonal rescaling is linear:
      output scaled (k, v):  W' = diag(l) W,  b' = l ⊙ b        (row i of W times l_i)
      input scaled (proj):   W' = W diag(l),  b' = b            (column j of W times l_j)
  Unmerging divides again (exact up to rounding; a vector with a zero entry cannot be merged,
  since dividing by it would be impossible).
- Several active adapters multiply: l_a ⊙ l_b ⊙ y (as Hugging Face peft does). Per-sample
  routing (adapter_names=[...]) scales each sample by its own adapter's vector, ones elsewhere.

Place in the model: a layer's output (a wrapper around a Linear). Shapes: x (B, T, n_in) ->
(B, T, n_out). The base weight is frozen, so backward computes dL/dx through W but never dL/dW;
dL/dl = sum over (B, T) of g ⊙ y (output scaled) or of (W^T g) ⊙ x (input scaled).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from ..nn.layers import Linear
from ..nn.module import Module, ModuleDict, Parameter
from .common import block_indices, check_layers, n_blocks, task_heads
from .routing import AdapterLayer, routed_sum

TARGETS = ("q", "k", "v", "o", "fc", "proj")  # Linear layers of a block that IA3 can rescale
DEFAULT_LR = 3e-3                              # the paper's (T-Few: Adafactor, 3e-3)
STARTS_AT_BASE = True                          # l = 1: l ⊙ y = y at step 0


@dataclass
class IA3Config:
    method: ClassVar[str] = "ia3"
    target_modules: tuple = ("k", "v", "proj")
    feedforward_modules: tuple | None = None     # targets whose INPUT is scaled; None = proj if targeted
    layers: tuple | None = None                  # which blocks (indices); None = all
    modules_to_save: tuple = ()                  # e.g. ("cls_head",)

    def __post_init__(self):
        def as_tuple(v):
            return tuple([v] if isinstance(v, str) else v)
        self.target_modules = as_tuple(self.target_modules)
        bad = [t for t in self.target_modules if t not in TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"IA3Config.target_modules {list(self.target_modules)}: unknown {bad}; "
                             f"the Linear layers that exist in every block are {list(TARGETS)}")
        if self.feedforward_modules is None:
            self.feedforward_modules = tuple(t for t in self.target_modules if t == "proj")
        self.feedforward_modules = as_tuple(self.feedforward_modules)
        extra = [t for t in self.feedforward_modules if t not in self.target_modules]
        if extra:
            raise ValueError(f"IA3Config.feedforward_modules {list(self.feedforward_modules)} must be a subset of "
                             f"target_modules {list(self.target_modules)} (not targeted: {extra}); add them to "
                             f"target_modules or drop them")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "IA3Config")


class Vector(Module):
    """One learned vector l, (n,), starting at ones."""

    def __init__(self, n: int):
        self.weight = Parameter(backend.xp.ones(n, dtype=backend.default_dtype()))


class IA3Linear(AdapterLayer):
    """A frozen Linear whose output (or, feedforward, its input) is rescaled by one vector per
    adapter name (Hugging Face layout: base_layer, ia3_l)."""

    def __init__(self, base: Linear, feedforward: bool):
        self.base_layer = base
        self.is_feedforward = feedforward      # True: scale the input (n_in,); False: the output (n_out,)
        self.ia3_l = ModuleDict()              # name -> Vector
        self.merged: list = []                 # adapter names currently folded into base_layer

    def add(self, name: str):
        self.ia3_l[name] = Vector(self.base_layer.n_in if self.is_feedforward else self.base_layer.n_out)

    def scale(self, t):
        """t ⊙ l over the routed adapters: t (B, ..., n) -> (B, ..., n)."""
        route = [(n, r) for n, r in self.route if n in self.ia3_l and n not in self.merged]
        for name, rows in route:
            if rows is None:                   # every sample: the active adapters multiply
                t = t * self.ia3_l[name].weight
        per_sample = [(n, r) for n, r in route if r is not None]
        if per_sample:                         # each sample its own l; samples of no adapter unscaled
            s = routed_sum(t, per_sample, self.ia3_l, lambda n, ts: ts * self.ia3_l[n].weight, rest=lambda ts: ts)
            t = t if s is None else s
        return t

    def forward(self, x):
        if self.is_feedforward:
            return self.base_layer(self.scale(x))            # W (l ⊙ x) + b
        return self.scale(self.base_layer(x))                # l ⊙ (W x + b)

    def extra_repr(self):
        return f"adapters={self.ia3_l.keys()}, feedforward={self.is_feedforward}, merged={self.merged}"


# ----------------------------------------------------------------------------- the method's API

CONFIG = IA3Config


def from_options(o) -> IA3Config:
    """--targets is shared with LoRA and defaults to LoRA's "q,v": that default means "IA3's own
    default" (k, v, proj); any other list is read as IA3's targets (proj scaled at its input)."""
    from .registry import OPTIONS
    if o.targets == OPTIONS["targets"]:
        return IA3Config(modules_to_save=o.heads)
    targets = tuple(t.strip() for t in o.targets.split(",") if t.strip())
    return IA3Config(target_modules=targets, modules_to_save=o.heads)


def _targets(model_cfg, cfg: IA3Config):
    """(module path, feedforward?) for every layer the config rescales."""
    for i in block_indices(model_cfg, cfg.layers, "IA3Config"):
        for t in cfg.target_modules:
            sub = "attn" if t in ("q", "k", "v", "o") else "mlp"
            yield f"h.{i}.{sub}.{t}", t in cfg.feedforward_modules


def add(pm, name: str, cfg: IA3Config) -> None:
    for path, ff in _targets(pm.config, cfg):
        layer = pm.model.get_submodule(path)
        if isinstance(layer, IA3Linear) and layer.is_feedforward != ff:
            raise ValueError(f"{path} is rescaled at its {'input' if layer.is_feedforward else 'output'} by "
                             f"adapter(s) {layer.ia3_l.keys()}; adapter {name!r} would scale its "
                             f"{'input' if ff else 'output'}: give both the same feedforward_modules")
        if not isinstance(layer, IA3Linear):
            if isinstance(layer, AdapterLayer):
                raise ValueError(f"{path} is already wrapped by {type(layer).__name__}; IA3 needs the plain "
                                 f"Linear layer: add the IA3 adapter before the other method's adapter")
            layer = IA3Linear(layer, ff)
            pm.model.set_submodule(path, layer)
        layer.add(name)


def formula(model_cfg, cfg: IA3Config) -> dict:
    """One number per scaled channel: n_out for an output-scaled layer, n_in for an input-scaled
    one (q/k/v/o: d -> d, fc: d -> d_ff, proj: d_ff -> d). Defaults: L (2 d + d_ff)."""
    d, f = model_cfg.d_model, model_cfg.d_ff
    n_in = {"q": d, "k": d, "v": d, "o": d, "fc": d, "proj": f}
    n_out = {"q": d, "k": d, "v": d, "o": d, "fc": f, "proj": d}
    per_layer = sum(n_in[t] if t in cfg.feedforward_modules else n_out[t] for t in cfg.target_modules)
    total = n_blocks(model_cfg, cfg.layers) * per_layer + task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": total, "kept": total}


def _layers(pm, name):
    return [(p, m) for p, m in pm.model.named_modules() if isinstance(m, IA3Linear) and name in m.ia3_l]


def state(pm, name: str) -> dict:
    """Hugging Face peft's keys: base_model.model.<path>.ia3_l (the adapter name dropped), plus
    the task-head copies of modules_to_save."""
    out = {f"base_model.model.{p}.ia3_l": m.ia3_l[name].weight for p, m in _layers(pm, name)}
    out.update({k: v for k, v in pm._owned_parameters(name).items() if ".ia3_l." not in k})
    return out


def merge(pm, name: str) -> None:
    """W <- diag(l) W, b <- l ⊙ b (output scaled) or W <- W diag(l) (input scaled)."""
    layers = [(p, m) for p, m in _layers(pm, name) if name not in m.merged]
    for path, m in layers:                              # check them all before changing any
        if not bool((m.ia3_l[name].weight.data != 0).all()):
            raise ValueError(f"adapter {name!r} has a zero entry in its vector at {path}: merging it could not be "
                             f"undone (unmerge divides by l); use merge_and_unload() on a copy instead")
    for _, m in layers:
        w, b, l = m.base_layer.weight, m.base_layer.bias, m.ia3_l[name].weight.data.astype(m.base_layer.weight.dtype)
        if m.is_feedforward:
            w.data = w.data * l[None, :]                # column j of W times l_j: W diag(l)
        else:
            w.data = w.data * l[:, None]                # row i of W times l_i: diag(l) W
            if b is not None:
                b.data = b.data * l
        m.merged.append(name)


def unmerge(pm, name: str) -> None:
    """Divide by l again (exact up to floating-point rounding)."""
    for _, m in _layers(pm, name):
        if name not in m.merged:
            continue
        w, b, l = m.base_layer.weight, m.base_layer.bias, m.ia3_l[name].weight.data.astype(m.base_layer.weight.dtype)
        if m.is_feedforward:
            w.data = w.data / l[None, :]
        else:
            w.data = w.data / l[:, None]
            if b is not None:
                b.data = b.data / l
        m.merged.remove(name)


def unload(pm, name: str) -> None:
    """Put the plain (possibly merged) Linear layers back where no IA3 adapter is left."""
    for path, m in _layers(pm, name):
        del m.ia3_l[name]
        if not m.ia3_l.keys():
            pm.model.set_submodule(path, m.base_layer)


def remove(pm, name: str) -> None:
    """delete_adapter: unmerge it if it was merged, drop its vectors (and the wrappers that hold no
    other adapter) and its task-head copies."""
    unmerge(pm, name)
    unload(pm, name)
    pm._remove_generic(name)
