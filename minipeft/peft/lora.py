"""LoRA: Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685).

A frozen weight W0 (d_out x d_in) is adapted by a trainable low-rank product:

    h = W0 x + (alpha / r) * B A dropout(x)            A: (r, d_in), B: (d_out, r), r << d

- A starts Gaussian, B starts at zero, so B A = 0 and the adapted model equals the base model
  at step 0.
- alpha / r keeps the update's scale roughly independent of r (rsLoRA, Kalajdzievski 2023:
  alpha / sqrt(r), which keeps it stable as r grows).
- Trainable parameters per adapted matrix: r (d_in + d_out); on q and v of L layers with
  d_in = d_out = d: |Theta| = 2 * L * 2 * d * r  (the paper's 4 L d r).
- Merging: W = W0 + (alpha/r) B A gives the same outputs with no extra cost at inference;
  unmerging subtracts it again.

Shapes: x (B, T, d_in) -> (B, T, d_out). The delta costs two thin matmuls, and because W0 is
frozen, backward computes dL/dx through W0 but never dL/dW0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .. import backend, ops
from ..nn.layers import Linear
from ..nn.module import ModuleDict, Parameter
from .common import block_indices, check_layers, n_blocks, positive_int, task_heads
from .routing import AdapterLayer, routed_sum

TARGETS = ("q", "k", "v", "o", "fc", "proj")  # Linear layers of a block that LoRA can adapt
DEFAULT_LR = 3e-3
STARTS_AT_BASE = True                          # B = 0: B A = 0 at step 0


@dataclass
class LoraConfig:
    method: ClassVar[str] = "lora"
    r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple = ("q", "v")
    lora_dropout: float = 0.0
    use_rslora: bool = False
    layers: tuple | None = None          # which blocks (indices); None = all
    modules_to_save: tuple = ()          # e.g. ("cls_head",): a task head trained and saved with it

    def __post_init__(self):
        self.target_modules = tuple([self.target_modules] if isinstance(self.target_modules, str)
                                    else self.target_modules)
        positive_int(self.r, "LoraConfig.r", "the rank")
        if self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig.lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        bad = [t for t in self.target_modules if t not in TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"LoraConfig.target_modules {list(self.target_modules)}: unknown {bad}; "
                             f"the Linear layers that exist in every block are {list(TARGETS)}")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "LoraConfig")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoraLinear(AdapterLayer):
    """A frozen Linear plus one low-rank delta per adapter name (HF layout: base_layer, lora_A, lora_B)."""

    def __init__(self, base: Linear):
        self.base_layer = base
        self.lora_A = ModuleDict()         # name -> Linear(d_in, r, bias=False):  weight A (r, d_in)
        self.lora_B = ModuleDict()         # name -> Linear(r, d_out, bias=False): weight B (d_out, r)
        self.scaling: dict = {}
        self.dropout: dict = {}
        self.merged: list = []             # adapter names currently folded into base_layer.weight

    def add(self, name: str, cfg: LoraConfig):
        d_in, d_out = self.base_layer.n_in, self.base_layer.n_out
        a, b = Linear(d_in, cfg.r, bias=False), Linear(cfg.r, d_out, bias=False)
        # A ~ N(0, 1/d_in) (random Gaussian, as in the paper); B = 0, so that B A = 0 at the start
        a.weight = Parameter(backend.rng.normal((cfg.r, d_in), std=1.0 / math.sqrt(d_in)))
        b.weight = Parameter(backend.xp.zeros((d_out, cfg.r), dtype=backend.default_dtype()))
        self.lora_A[name], self.lora_B[name] = a, b
        self.scaling[name], self.dropout[name] = cfg.scaling, cfg.lora_dropout

    def delta(self, name: str, x):
        """(alpha/r) B A dropout(x):  (..., d_in) -> (..., d_out)."""
        # BEGIN SOLUTION lora_delta
        x = ops.dropout(x, self.dropout[name], self.training)
        # the scaling goes on the thin (..., r) activation: one pass over r columns, not d_out
        return self.lora_B[name](self.lora_A[name](x) * self.scaling[name])
        # END SOLUTION

    def forward(self, x):
        y = self.base_layer(x)                                   # W0 x + b  (frozen)
        route = [(n, r) for n, r in self.route if n not in self.merged]
        d = routed_sum(x, route, self.lora_A, self.delta)        # + sum over routed adapters
        return y if d is None else y + d

    def delta_weight(self, name: str):
        """Delta W = (alpha/r) B A, shape (d_out, d_in), as a raw array."""
        # BEGIN SOLUTION lora_merge
        return backend.matmul(self.lora_B[name].weight.data, self.lora_A[name].weight.data) * self.scaling[name]
        # END SOLUTION

    def extra_repr(self):
        return f"adapters={self.lora_A.keys()}, merged={self.merged}"


# ----------------------------------------------------------------------------- the method's API

CONFIG = LoraConfig


def from_options(o) -> LoraConfig:
    targets = tuple(t.strip() for t in o.targets.split(",") if t.strip())       # "q,v" -> ("q", "v")
    return LoraConfig(r=o.r, lora_alpha=o.alpha, target_modules=targets, modules_to_save=o.heads)


def _targets(pm, cfg: LoraConfig):
    for i in block_indices(pm.config, cfg.layers, "LoraConfig"):
        for t in cfg.target_modules:
            sub = "attn" if t in ("q", "k", "v", "o") else "mlp"
            yield f"h.{i}.{sub}.{t}"


def add(pm, name: str, cfg: LoraConfig) -> None:
    for path in _targets(pm, cfg):
        layer = pm.model.get_submodule(path)
        if not isinstance(layer, LoraLinear):
            if isinstance(layer, AdapterLayer):
                raise ValueError(f"{path} is already wrapped by {type(layer).__name__}; LoRA needs the plain "
                                 f"Linear layer: add the LoRA adapter before the other method's adapter")
            layer = LoraLinear(layer)
            pm.model.set_submodule(path, layer)
        layer.add(name, cfg)


def formula(model_cfg, cfg: LoraConfig) -> dict:
    """r (d_in + d_out) per adapted matrix; q/k/v/o are d x d, fc is d -> d_ff, proj d_ff -> d."""
    d, f = model_cfg.d_model, model_cfg.d_ff
    # BEGIN SOLUTION count_formulas
    per_layer = sum(cfg.r * ((d + f) if t in ("fc", "proj") else 2 * d) for t in cfg.target_modules)
    total = n_blocks(model_cfg, cfg.layers) * per_layer + task_heads(model_cfg, cfg.modules_to_save)
    # END SOLUTION
    return {"trainable": total, "kept": total}


def _layers(pm, name):
    return [m for m in pm.modules() if isinstance(m, LoraLinear) and name in m.lora_A]


def merge(pm, name: str) -> None:
    """W0 <- W0 + (alpha/r) B A for every layer of adapter `name`."""
    for layer in _layers(pm, name):
        if name in layer.merged:
            continue
        if layer.training and layer.dropout[name] > 0:
            raise ValueError(f"adapter {name!r} uses lora_dropout={layer.dropout[name]}: merging in training "
                             f"mode would drop the dropout the unmerged layer applies; call model.eval() first")
        w = layer.base_layer.weight
        # BEGIN SOLUTION lora_merge
        w.data = w.data + layer.delta_weight(name).astype(w.dtype)
        # END SOLUTION
        layer.merged.append(name)


def unmerge(pm, name: str) -> None:
    """W0 <- W - (alpha/r) B A (exact up to floating-point rounding)."""
    for layer in _layers(pm, name):
        if name not in layer.merged:
            continue
        w = layer.base_layer.weight
        # BEGIN SOLUTION lora_merge
        w.data = w.data - layer.delta_weight(name).astype(w.dtype)
        # END SOLUTION
        layer.merged.remove(name)


def unload(pm, name: str) -> None:
    """Put the plain (possibly merged) Linear layers back in place of the LoRA wrappers."""
    for path, m in list(pm.model.named_modules()):
        if isinstance(m, LoraLinear) and name in m.lora_A:
            del m.lora_A[name], m.lora_B[name]
            if not m.lora_A.keys():
                pm.model.set_submodule(path, m.base_layer)


def remove(pm, name: str) -> None:
    """delete_adapter: unmerge it if it was merged, drop its A and B, put the plain Linear back
    where no LoRA adapter is left, and drop its task-head copies (modules_to_save)."""
    unmerge(pm, name)
    for layer in _layers(pm, name):
        layer.scaling.pop(name, None)
        layer.dropout.pop(name, None)
    unload(pm, name)
    pm._remove_generic(name)
