"""Bottleneck adapters: Houlsby et al. 2019 (arXiv:1902.00751), Pfeiffer et al. 2021
(arXiv:2005.00247) and the parallel adapter of He et al. 2022 (arXiv:2110.04366).

An adapter is a small bottleneck MLP with its own skip connection, inserted into a frozen model:

    f(h) = act(h W_down + b_down) W_up + b_up         W_down: (d, m), W_up: (m, d), m << d
    sequential (Houlsby, Pfeiffer):  h <- h + f(h)         after a sublayer's output projection
    parallel (He et al.):            h <- sublayer(x) + s * f(x)     beside a sublayer, same input x

- Houlsby: two adapters per block, after the attention output projection and after the MLP,
  both before the residual add (and LayerNorm, in the post-LN BERT layout).
- Pfeiffer: one adapter per block, after the MLP only; ReLU; m = d / 16 by default.
- Parallel: beside the MLP (He et al.'s best placement, "PA-ffn"), scaled by s (4 in their MAM
  adapter), or beside attention with parallel_site="attn".
- Near-identity start: W_down, W_up ~ N(0, init_scale^2) with init_scale small (Houlsby's code
  uses 1e-3) and zero biases, so f(h) ~ 0 and the adapted model starts close to the base model.
- Parameters per adapter: d m + m (down) + m d + d (up) = 2 m d + d + m.

Adapters add a nonlinearity, so unlike LoRA they cannot be merged into the weights.
Shapes: h, x (B, T, d) -> (B, T, d).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend, ops
from ..nn.layers import Linear
from ..nn.module import Module, ModuleDict, Parameter
from .common import block_indices, check_layers, n_blocks, positive_int, task_heads
from .routing import AdapterLayer, routed_sum

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
ACTIVATIONS = {"relu": ops.relu, "gelu": ops.gelu, "tanh": ops.tanh}
DEFAULT_LR = 2e-3


@dataclass
class AdapterConfig:
    method: ClassVar[str] = "adapter"
    size: int = 64                     # m, the bottleneck width
    placement: str = "houlsby"         # houlsby | pfeiffer | parallel
    activation: str | None = None      # default: gelu (houlsby), relu (pfeiffer, parallel)
    scaling: float = 1.0               # s; only the parallel adapter uses it (He et al.: 4)
    parallel_site: str = "ffn"         # parallel adapter beside "ffn" or "attn"
    init_scale: float = 1e-3           # std of the down/up weights (near-identity start)
    layers: tuple | None = None        # which blocks; None = all
    modules_to_save: tuple = ()

    def __post_init__(self):
        positive_int(self.size, "AdapterConfig.size", "the bottleneck width m")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"AdapterConfig.placement {self.placement!r} does not exist; choose one of {list(PLACEMENTS)}")
        if self.activation is None:
            self.activation = "gelu" if self.placement == "houlsby" else "relu"
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"AdapterConfig.activation {self.activation!r}: choose one of {list(ACTIVATIONS)}")
        if self.parallel_site not in ("ffn", "attn"):
            raise ValueError(f"AdapterConfig.parallel_site must be 'ffn' or 'attn', got {self.parallel_site!r}")
        if self.init_scale < 0:
            raise ValueError(f"AdapterConfig.init_scale must be >= 0, got {self.init_scale}")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "AdapterConfig")


CONFIG = AdapterConfig


def from_options(o) -> AdapterConfig:
    return AdapterConfig(size=o.size, placement=o.placement, modules_to_save=o.heads)


class Bottleneck(Module):
    """f(h) = act(h W_down + b_down) W_up + b_up  (stored as PyTorch-layout Linear layers)."""

    def __init__(self, d: int, m: int, activation: str, init_scale: float):
        self.down, self.up = Linear(d, m), Linear(m, d)
        self.down.weight = Parameter(backend.rng.normal((m, d), std=init_scale))   # W_down^T
        self.up.weight = Parameter(backend.rng.normal((d, m), std=init_scale))     # W_up^T
        self.activation = activation

    def forward(self, h):
        # BEGIN SOLUTION adapter_forward
        return self.up(ACTIVATIONS[self.activation](self.down(h)))
        # END SOLUTION


class SequentialAdapter(AdapterLayer):
    """base(x) followed by h + f(h) for every routed adapter (Houlsby, Pfeiffer)."""

    def __init__(self, base: Module):
        self.base_layer = base
        self.adapters = ModuleDict()

    def forward(self, x):
        h = self.base_layer(x)                                                    # (B, T, d)
        # BEGIN SOLUTION adapter_forward
        d = routed_sum(h, self.route, self.adapters, lambda n, hs: self.adapters[n](hs))
        return h if d is None else h + d                                          # h + f(h)
        # END SOLUTION


class ParallelAdapter(AdapterLayer):
    """base(x, ...) + s * f(x) for every routed adapter (He et al.)."""

    def __init__(self, base: Module):
        self.base_layer = base
        self.adapters = ModuleDict()
        self.scaling: dict = {}

    def forward(self, x, *args):
        y = self.base_layer(x, *args)                                             # sublayer(x)
        # BEGIN SOLUTION adapter_forward
        d = routed_sum(x, self.route, self.adapters, lambda n, xs: self.adapters[n](xs) * self.scaling[n])
        return y if d is None else y + d                                          # + s f(x)
        # END SOLUTION


def _sites(pm, cfg: AdapterConfig):
    """(path of the module to wrap, wrapper class) for every adapter of the config."""
    for i in block_indices(pm.config, cfg.layers, "AdapterConfig"):
        if cfg.placement == "houlsby":
            yield f"h.{i}.attn.o", SequentialAdapter
            yield f"h.{i}.mlp.proj", SequentialAdapter
        elif cfg.placement == "pfeiffer":
            yield f"h.{i}.mlp.proj", SequentialAdapter
        else:
            yield (f"h.{i}.mlp" if cfg.parallel_site == "ffn" else f"h.{i}.attn"), ParallelAdapter


def add(pm, name: str, cfg: AdapterConfig) -> None:
    d = pm.config.d_model
    for path, kind in _sites(pm, cfg):
        layer = pm.model.get_submodule(path)
        if not isinstance(layer, kind):   # (wrapping another method's wrapper is fine: both apply)
            layer = kind(layer)
            pm.model.set_submodule(path, layer)
        layer.adapters[name] = Bottleneck(d, cfg.size, cfg.activation, cfg.init_scale)
        if kind is ParallelAdapter:
            layer.scaling[name] = cfg.scaling


def remove(pm, name: str) -> None:
    for path, m in list(pm.model.named_modules()):
        if isinstance(m, (SequentialAdapter, ParallelAdapter)) and name in m.adapters:
            del m.adapters[name]
            if isinstance(m, ParallelAdapter):
                m.scaling.pop(name, None)
            if not m.adapters.keys():
                pm.model.set_submodule(path, m.base_layer)
    pm._remove_generic(name)                          # task-head copies (modules_to_save)


def formula(model_cfg, cfg: AdapterConfig) -> dict:
    """(2 m d + d + m) per adapter; houlsby: 2 per block, pfeiffer and parallel: 1 per block."""
    d, m = model_cfg.d_model, cfg.size
    # BEGIN SOLUTION count_formulas
    per_block = 2 if cfg.placement == "houlsby" else 1
    n = n_blocks(model_cfg, cfg.layers) * per_block
    total = n * (2 * m * d + d + m) + task_heads(model_cfg, cfg.modules_to_save)
    # END SOLUTION
    return {"trainable": total, "kept": total}
