"""AdaMix: mixture of adaptations (Wang et al. 2022, arXiv:2205.12410; official code
microsoft/AdaMix, `MixtureSoup`, `expert_soup`, `symmetric_KL_loss`).

Every adapted site holds M copies ("experts") of an adapter's projections instead of one:

    adapter kind:  f(h) = act(h W_down^(i) + b_down^(i)) W_up^(j) + b_up^(j),   h <- h + f(h)
    LoRA kind:     h = W0 x + (alpha / r) B^(j) A^(i) x
                   W_down, A: (d, m) / (r, d_in) ; W_up, B: (m, d) / (d_out, r) ; i, j in 1..M

- Training: every forward pass picks a random expert, independently for the down (A) and up (B)
  projection of every site (`MixtureSoup.forward`: torch.randint). The official default shares
  the up projection (sharing_up=1, sharing_down=0): one W_up, M W_down.
- Consistency: a second forward pass takes other random experts; the loss adds
  1/2 [KL(sg(q) || p) + KL(sg(p) || q)] between the two predictions p, q (sg: stop gradient).
  It needs two passes per step, so it is a loss function for the training loop:
  `fit(pm, consistency_loss_fn(task_loss_fn), ...)` (see consistency_loss_fn).
- Inference: the experts' weights are averaged ("expert soup", uniform weights),
  W = (1/M) sum_i W^(i), so the model costs one adapter. In eval mode the layers use the average;
  `average(pm, name)` replaces the experts by it for good (kept = one adapter's parameters).

Which place of the model: a layer's output (place 3). The adapter kind sits where adapter.py's
Houlsby (or Pfeiffer) adapters sit and uses its SequentialAdapter wrapper; the LoRA kind uses
lora.py's LoraLinear wrapper. Only the projections are new: `MixtureLinear`, M Linear experts.

Parameters per site, M_down = 1 if share_down else M, M_up = 1 if share_up else M:
    adapter: trained M_down (d m + m) + M_up (m d + d); kept 2 m d + d + m
    LoRA:    trained M_down r d_in + M_up d_out r;      kept r (d_in + d_out)
Not mergeable (the adapter kind has a nonlinearity; the LoRA kind would need its average).
Shapes: h, x (B, T, d) -> (B, T, d).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from .. import backend, ops
from ..autograd import no_grad
from ..nn.layers import Linear
from ..nn.module import Module, ModuleList, Parameter
from . import adapter as adapter_method
from . import lora as lora_method
from .common import block_indices, check_layers, n_blocks, positive_int, task_heads
from .routing import AdapterLayer

DEFAULT_LR = 2e-3
RANDOM_IN_TRAINING = True      # training-mode passes draw random experts; eval mode is deterministic


@dataclass
class AdaMixConfig:
    method: ClassVar[str] = "adamix"
    kind: str = "adapter"              # "adapter" (bottleneck experts) or "lora" (low-rank experts)
    num_experts: int = 4               # M (the official default)
    share_up: bool = True              # one up projection (W_up / B) for all experts (sharing_up=1)
    share_down: bool = False           # one down projection (W_down / A) (sharing_down=0)
    size: int = 16                     # adapter: bottleneck m (RoBERTa-large 16, BERT-base 48)
    placement: str = "houlsby"         # adapter: "houlsby" (2 per block) or "pfeiffer" (1)
    activation: str = "gelu"           # adapter: relu | gelu | tanh (the official code: gelu)
    init_scale: float = 1e-3           # adapter: std of the expert weights (near-identity start)
    r: int = 8                         # lora: rank
    lora_alpha: float = 16.0           # lora: alpha (scaling alpha / r)
    target_modules: tuple = ("q", "v") # lora: which Linear layers
    layers: tuple | None = None        # which blocks; None = all
    modules_to_save: tuple = ()

    def __post_init__(self):
        if self.kind not in ("adapter", "lora"):
            raise ValueError(f"AdaMixConfig.kind must be 'adapter' or 'lora', got {self.kind!r}")
        positive_int(self.num_experts, "AdaMixConfig.num_experts", "M, 4 in the paper")
        positive_int(self.size, "AdaMixConfig.size", "the bottleneck width m")
        positive_int(self.r, "AdaMixConfig.r", "the LoRA rank")
        if self.placement not in ("houlsby", "pfeiffer"):
            raise ValueError(f"AdaMixConfig.placement must be 'houlsby' or 'pfeiffer', got {self.placement!r}")
        if self.activation not in adapter_method.ACTIVATIONS:
            raise ValueError(f"AdaMixConfig.activation {self.activation!r}: choose one of "
                             f"{list(adapter_method.ACTIVATIONS)}")
        if self.init_scale < 0 or self.lora_alpha <= 0:
            raise ValueError("AdaMixConfig.init_scale must be >= 0 and lora_alpha > 0")
        self.target_modules = tuple([self.target_modules] if isinstance(self.target_modules, str)
                                    else self.target_modules)
        bad = [t for t in self.target_modules if t not in lora_method.TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"AdaMixConfig.target_modules {list(self.target_modules)}: unknown {bad}; "
                             f"choose from {list(lora_method.TARGETS)}")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "AdaMixConfig")

    @property
    def experts(self) -> tuple:
        """(M_down, M_up): how many down and up projections each site holds."""
        return (1 if self.share_down else self.num_experts), (1 if self.share_up else self.num_experts)


CONFIG = AdaMixConfig


def from_options(o) -> AdaMixConfig:
    return AdaMixConfig(modules_to_save=o.heads)


def choose(M: int) -> int:
    """The expert of one projection for one forward pass: uniform over 0 .. M-1 (seeded rng)."""
    return int(backend.rng.gen.integers(M))


class MixtureLinear(Module):
    """M Linear experts of one projection. Training: a random one per call; eval: their average,
    W = (1/M) sum_i W^(i), b = (1/M) sum_i b^(i) (one Linear's cost). x (..., n_in) -> (..., n_out)."""

    def __init__(self, experts: list):
        self.experts = ModuleList(experts)

    def forward(self, x):
        experts = list(self.experts)
        if len(experts) == 1:
            return experts[0](x)
        if self.training:
            return experts[choose(len(experts))](x)                       # one random expert
        w = ops.stack([e.weight for e in experts]).mean(axis=0)           # (n_out, n_in) average
        b = None if experts[0].bias is None else ops.stack([e.bias for e in experts]).mean(axis=0)
        return ops.linear(x, w, b)

    def averaged(self) -> "MixtureLinear":
        """One expert holding the average weights (the expert soup)."""
        experts = list(self.experts)
        e = Linear(experts[0].n_in, experts[0].n_out, bias=experts[0].bias is not None)
        with no_grad():
            e.weight = Parameter(ops.stack([x.weight for x in experts]).mean(axis=0).data,
                                 requires_grad=experts[0].weight.requires_grad)
            if e.bias is not None:
                e.bias = Parameter(ops.stack([x.bias for x in experts]).mean(axis=0).data,
                                   requires_grad=experts[0].bias.requires_grad)
        return MixtureLinear([e])


def _linears(M: int, n_in: int, n_out: int, bias: bool, std: float) -> MixtureLinear:
    """M experts, weights ~ N(0, std^2) (std 0: zeros), biases 0."""
    experts = [Linear(n_in, n_out, bias=bias) for _ in range(M)]
    for e in experts:
        e.weight = Parameter(backend.rng.normal((n_out, n_in), std=std) if std > 0
                             else backend.xp.zeros((n_out, n_in), dtype=backend.default_dtype()))
    return MixtureLinear(experts)


def _adapter_sites(pm, cfg: AdaMixConfig):
    for i in block_indices(pm.config, cfg.layers, "AdaMixConfig"):
        if cfg.placement == "houlsby":
            yield f"h.{i}.attn.o"
        yield f"h.{i}.mlp.proj"


def _lora_sites(pm, cfg: AdaMixConfig):
    for i in block_indices(pm.config, cfg.layers, "AdaMixConfig"):
        for t in cfg.target_modules:
            yield f"h.{i}.{'attn' if t in ('q', 'k', 'v', 'o') else 'mlp'}.{t}"


def add(pm, name: str, cfg: AdaMixConfig) -> None:
    Md, Mu = cfg.experts
    if cfg.kind == "adapter":
        d, m = pm.config.d_model, cfg.size
        for path in _adapter_sites(pm, cfg):
            layer = pm.model.get_submodule(path)
            if not isinstance(layer, adapter_method.SequentialAdapter):
                layer = adapter_method.SequentialAdapter(layer)
                pm.model.set_submodule(path, layer)
            f = adapter_method.Bottleneck(d, m, cfg.activation, cfg.init_scale)     # f = up(act(down(h)))
            f.down = _linears(Md, d, m, True, cfg.init_scale)                        # M_down experts
            f.up = _linears(Mu, m, d, True, cfg.init_scale)                          # M_up experts
            layer.adapters[name] = f
        return
    for path in _lora_sites(pm, cfg):
        layer = pm.model.get_submodule(path)
        if not isinstance(layer, lora_method.LoraLinear):
            if isinstance(layer, AdapterLayer):
                raise ValueError(f"{path} is already wrapped by {type(layer).__name__}; AdaMix's LoRA kind needs "
                                 f"the plain Linear layer: add it before the other method's adapter")
            layer = lora_method.LoraLinear(layer)
            pm.model.set_submodule(path, layer)
        d_in, d_out = layer.base_layer.n_in, layer.base_layer.n_out
        layer.lora_A[name] = _linears(Md, d_in, cfg.r, False, 1.0 / math.sqrt(d_in))   # A ~ N(0, 1/d_in)
        layer.lora_B[name] = _linears(Mu, cfg.r, d_out, False, 0.0)                    # B = 0
        layer.scaling[name], layer.dropout[name] = cfg.lora_alpha / cfg.r, 0.0


def remove(pm, name: str) -> None:
    if isinstance(pm.peft_config.get(name), AdaMixConfig) and pm.peft_config[name].kind == "lora":
        for path, m in list(pm.model.named_modules()):
            if isinstance(m, lora_method.LoraLinear) and name in m.lora_A:
                del m.lora_A[name], m.lora_B[name]
                m.scaling.pop(name), m.dropout.pop(name)
                if not m.lora_A.keys():
                    pm.model.set_submodule(path, m.base_layer)
        pm._remove_generic(name)
    else:
        adapter_method.remove(pm, name)


def formula(model_cfg, cfg: AdaMixConfig) -> dict:
    """trainable: M_down down + M_up up projections per site; kept (after averaging): one of each."""
    d, f = model_cfg.d_model, model_cfg.d_ff
    Md, Mu = cfg.experts
    if cfg.kind == "adapter":
        m = cfg.size
        sites = n_blocks(model_cfg, cfg.layers) * (2 if cfg.placement == "houlsby" else 1)
        trained, kept = sites * (Md * (d * m + m) + Mu * (m * d + d)), sites * (2 * m * d + d + m)
    else:
        dims = [(d, f) if t == "fc" else (f, d) if t == "proj" else (d, d) for t in cfg.target_modules]
        L = n_blocks(model_cfg, cfg.layers)
        trained = L * sum(Md * cfg.r * i + Mu * o * cfg.r for i, o in dims)
        kept = L * sum(cfg.r * (i + o) for i, o in dims)
    heads = task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": trained + heads, "kept": kept + heads}


def average(pm, name: str = "default") -> None:
    """Replace every site's experts by their average (one adapter's parameters from now on); the
    eval-mode outputs do not change. The config becomes num_experts=1 (so that it saves and loads
    as what it now is)."""
    pm._check_name(name)
    if not isinstance(pm.peft_config[name], AdaMixConfig):
        raise ValueError(f"adapter {name!r} is a {type(pm.peft_config[name]).__name__}, not AdaMix")
    for _, m in list(pm.model.named_modules()):
        for holder in ("adapters", "lora_A", "lora_B"):
            entry = getattr(m, holder, None)
            if entry is None or name not in entry:
                continue
            e = entry[name]
            for attr in ("down", "up"):
                if isinstance(getattr(e, attr, None), MixtureLinear):
                    setattr(e, attr, getattr(e, attr).averaged())
            if isinstance(e, MixtureLinear):
                entry[name] = e.averaged()
    pm.peft_config[name] = replace(pm.peft_config[name], num_experts=1)


# ----------------------------------------------------------------------------- consistency loss

def symmetric_kl(p_logits, q_logits):
    """1/2 [KL(sg(q) || p) + KL(sg(p) || q)] over the last axis, averaged over the other positions
    (the official code's reduction='batchmean' for (B, C) logits). sg: stop gradient."""
    log_p, log_q = ops.log_softmax(p_logits, axis=-1), ops.log_softmax(q_logits, axis=-1)
    sp, sq = log_p.detach(), log_q.detach()
    kl_qp = (sq.exp() * (sq - log_p)).sum(axis=-1)                    # KL(sg q || p): grad into p only
    kl_pq = (sp.exp() * (sp - log_q)).sum(axis=-1)                    # KL(sg p || q): grad into q only
    return (kl_qp + kl_pq).mean() * 0.5


def consistency_loss_fn(task_loss_fn, alpha: float = 1.0):
    """A loss_fn for train.fit: two forward passes of task_loss_fn (in training mode they take
    different random experts), the first pass's task loss plus alpha times symmetric_kl of their
    logits:  L = L_task(p) + alpha * 1/2 [KL(sg q || p) + KL(sg p || q)].

    task_loss_fn(model, batch) -> (loss, logits): the usual loss_fn that also returns the logits
    the loss came from, e.g.  lambda m, b: (ops.cross_entropy(z := m.classify(b["ids"]), b["y"]), z).
    (The method contract has no auxiliary-loss hook yet, so this wraps the loss function instead.)
    """
    def loss_fn(model, batch):
        loss, p = task_loss_fn(model, batch)
        _, q = task_loss_fn(model, batch)
        return loss + symmetric_kl(p, q) * alpha
    return loss_fn
