"""Diff pruning (Guo, Rush & Kim, ACL 2021, arXiv:2012.07463): learn a sparse task difference.

Which existing parameters change (the fourth place): every maskable base parameter W0 (shape S)
is reparametrised as

    W = W0 + delta,   delta = z (.) w                       w, log_alpha: S, trained; w starts at 0
    z = min(1, max(0, s (r - l) + l)),  s = sigmoid(log u - log(1 - u) + log_alpha),  u ~ U(0, 1)

the hard-concrete gate (Louizos et al. 2018) stretched to (l, r) = (-1.5, 1.5) and clipped, so
that z is exactly 0 or 1 with positive probability. The expected number of nonzeros is
differentiable and is the auxiliary loss:

    E ||delta||_0 = sum_i sigmoid(log_alpha_i - log(-l / r))          (times lambda = 1.25e-7)

Structured variant (structured=True): each tensor tau also has one gate z_tau (its own
log_alpha, shape (1,)), delta_tau = z_tau * (z (.) w), and the penalty counts an entry as
nonzero only when both gates are open: sum_tau sum_i sigmoid(a_i - c) sigmoid(a_tau - c).

Training in two phases, as in the paper: (1) train w and log_alpha with the penalty
(`train.fit` adds `aux_loss`; every forward in training draws u afresh, and eval mode uses
u = 1/2, the deterministic gate); (2) `project(pm, name)` keeps the
k = round(density * N) entries of largest |delta| (exactly k: the paper's magnitude projection
to the target sparsity), stores them as a sparse delta (indices + values, sparse.py) and
switches the config to fixed=True; then fine-tune again (a new fit: a new optimizer) with the
mask fixed. Saved and loaded in either phase.

Shapes: per tensor w, log_alpha S (+ (1,) structured); counted in phase 1: 2 N (+ one per tensor),
kept (after projection) and phase 2: k values and 4 k index bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from .. import backend, ops
from ..autograd import Function, no_grad
from ..nn.module import Module, ModuleList, Parameter
from . import sparse
from .common import task_heads

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True        # w = 0: delta = z (.) 0 = 0
PER_SAMPLE = False


class HardConcrete(Function):
    """z = clip(sigmoid(logit(u) + log_alpha) (r - l) + l, 0, 1).   log_alpha: any shape; u: same or scalar."""

    @staticmethod
    def forward(ctx, log_alpha, u=0.5, l=-1.5, r=1.5):
        xp = backend.xp
        noise = math.log(u / (1 - u)) if isinstance(u, float) else xp.log(u) - xp.log(1 - u)   # logit(u)
        s = 1.0 / (1.0 + xp.exp(-(noise + log_alpha)))
        zbar = s * (r - l) + l
        ctx.save_for_backward(s, (zbar > 0) & (zbar < 1), r - l)
        return xp.clip(zbar, 0.0, 1.0)

    @staticmethod
    def backward(ctx, g):
        s, inside, width = ctx.saved
        # dz/dlog_alpha = (r - l) s (1 - s) where 0 < zbar < 1, else 0 (the clip is flat)
        return g * (width * s * (1.0 - s)) * inside


class Gate(Module):
    """delta = z(log_alpha) (.) w [* z(group_log_alpha)] for one parameter of shape S."""

    def __init__(self, shape, alpha_init: float, structured: bool):
        dt = backend.default_dtype()
        self.w = Parameter(backend.xp.zeros(shape, dtype=dt))
        self.log_alpha = Parameter(backend.xp.full(shape, alpha_init, dtype=dt))
        self.group_log_alpha = Parameter(backend.xp.full((1,), alpha_init, dtype=dt)) if structured else None
        # the gates' noise u ~ U(eps, 1 - eps), drawn anew by every forward in training from the seeded
        # stream (as dropout draws its masks, so data-parallel workers draw reproducibly); the last
        # draw is kept here to look at
        self.u = backend.xp.full(shape, 0.5, dtype=dt)
        self.group_u = backend.xp.full((1,), 0.5, dtype=dt)

    def delta(self, l, r):
        """z (.) w [* z_tau]: (S,). In eval mode u = 1/2, the deterministic gate."""
        if self.training:
            self.u = backend.rng.uniform(self.w.shape, low=1e-6, high=1 - 1e-6, dtype=self.w.dtype)
            self.group_u = backend.rng.uniform((1,), low=1e-6, high=1 - 1e-6, dtype=self.w.dtype)
        u, gu = (self.u, self.group_u) if self.training else (0.5, 0.5)
        d = HardConcrete.apply(self.log_alpha, u=u, l=l, r=r) * self.w
        if self.group_log_alpha is not None:
            d = d * HardConcrete.apply(self.group_log_alpha, u=gu, l=l, r=r)
        return d


class Gates(Module):
    """The phase-1 parametrisation of one adapter: a Gate per maskable parameter."""

    def __init__(self, params, cfg):
        self.paths = [path for path, _ in params]
        self.gates = ModuleList([Gate(p.shape, cfg.alpha_init, cfg.structured) for _, p in params])
        self.merged = False


@dataclass
class DiffPruningConfig:
    method: ClassVar[str] = "diff_pruning"
    density: float = 0.005           # the target: k = round(density * N) nonzeros after projection
    l: float = -1.5                  # the gate's stretch interval (l, r)
    r: float = 1.5
    alpha_init: float = 5.0          # log_alpha at the start (gates open: z = 1)
    l0_lambda: float = 1.25e-7       # weight of the expected-L0 penalty
    structured: bool = False         # one more gate per tensor
    fixed: bool = False              # phase 2: the projected mask, a sparse delta (set by project)
    seed: int = 0
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "DiffPruningConfig")
        if not self.l < 0 < 1 < self.r:
            raise ValueError(f"DiffPruningConfig needs l < 0 and r > 1 (so that z hits 0 and 1), got l={self.l}, r={self.r}")
        if self.l0_lambda < 0:
            raise ValueError(f"DiffPruningConfig.l0_lambda must be >= 0, got {self.l0_lambda}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = DiffPruningConfig
RANDOM_IN_TRAINING = True      # training-mode passes draw the gates' noise u; eval mode uses u = 1/2


def from_options(o) -> DiffPruningConfig:
    return DiffPruningConfig(modules_to_save=o.heads, **sparse.density_option(o))


def add(pm, name: str, cfg: DiffPruningConfig) -> None:
    if cfg.fixed:
        sparse.new_delta(pm, name, cfg)            # indices come from the file (load_adapter) or project
    else:
        pm.deltas[name] = Gates(sparse.maskable(pm, cfg.modules_to_save), cfg)


def _gated(pm, name):
    return isinstance(pm.deltas[name], Gates)


def deltas(pm, name: str) -> dict:
    if not _gated(pm, name):
        return sparse.deltas(pm, name)
    gates, cfg = pm.deltas[name], pm.peft_config[name]
    if gates.merged:
        return {}
    return {path: g.delta(cfg.l, cfg.r) for path, g in zip(gates.paths, gates.gates)}


def aux_loss(pm, name: str):
    """lambda * E||delta||_0 (phase 1 only; None once the mask is fixed)."""
    cfg = pm.peft_config[name]
    if not _gated(pm, name) or cfg.l0_lambda == 0:
        return None
    c = math.log(-cfg.l / cfg.r)
    total = None
    for g in pm.deltas[name].gates:
        p_open = ops.sigmoid(g.log_alpha - c)                                  # P(z_i != 0), shape S
        if g.group_log_alpha is not None:
            p_open = p_open * ops.sigmoid(g.group_log_alpha - c)
        term = p_open.sum()
        total = term if total is None else total + term
    return total * cfg.l0_lambda


def project(pm, name: str) -> int:
    """Magnitude projection: keep the k = round(density N) entries of largest |delta| (the gates
    in eval mode), as a sparse delta with those values; the mask is fixed from now on. Returns k."""
    cfg = pm.peft_config[name]
    gates = pm.deltas[name]
    if not isinstance(gates, Gates):
        raise ValueError(f"adapter {name!r} is projected already (fixed=True)")
    if gates.merged:
        raise ValueError(f"adapter {name!r} is merged; unmerge_adapter() before project()")
    with no_grad(), gates.eval_mode():
        dense = {path: g.delta(cfg.l, cfg.r).data for path, g in zip(gates.paths, gates.gates)}
    trained = {id(p) for p in gates.parameters() if p.requires_grad}
    fixed = replace(cfg, fixed=True)
    delta = sparse.new_delta(pm, name, fixed)                     # replaces the gates in pm.deltas
    scores = sparse.flat(pm, delta, dense)                       # delta (N,) on the host
    idx = sparse.top_k(abs(scores), delta.values.size)
    delta.set_indices(idx, scores[idx])
    delta.values.requires_grad = bool(trained)
    pm.peft_config[name] = fixed
    return delta.values.size


def state(pm, name: str) -> dict:
    if not _gated(pm, name):
        return sparse.state(pm, name)
    out = {}
    for path, g in zip(pm.deltas[name].paths, pm.deltas[name].gates):
        out[f"base_model.model.{path}.diff_w"] = g.w
        out[f"base_model.model.{path}.diff_log_alpha"] = g.log_alpha
        if g.group_log_alpha is not None:
            out[f"base_model.model.{path}.diff_group_log_alpha"] = g.group_log_alpha
    return {**out, **sparse._heads(pm, name)}


def buffers(pm, name: str) -> dict:
    return {} if _gated(pm, name) else sparse.buffers(pm, name)


def merge(pm, name: str) -> None:
    """W0 <- W0 + delta (the gates in their current mode: call pm.eval() first for the deterministic one)."""
    if not _gated(pm, name):
        return sparse.merge(pm, name)
    sparse.merge_with(pm, name, deltas)


def unmerge(pm, name: str) -> None:
    if not _gated(pm, name):
        return sparse.unmerge(pm, name)
    sparse.unmerge_with(pm, name, deltas)


def remove(pm, name: str) -> None:
    sparse.remove(pm, name, unmerge)


def n_tensors(model_cfg, modules_to_save=()) -> int:
    """How many maskable parameter tensors the model has (one group gate each, structured)."""
    c = model_cfg
    n = 2 + 16 * c.n_layer                                            # wte, wpe; per block 16 tensors
    if c.arch == "gpt2":
        n += 2                                                        # ln_f
    else:
        n += 1 + 2 + 2 + (5 if c.mlm_head else 0)                     # wtt, ln_emb, pooler, MLM head
    n += 0 if c.tie_embeddings else 1
    n += 2 if c.n_labels and "cls_head" not in modules_to_save else 0
    return n


def formula(model_cfg, cfg: DiffPruningConfig) -> dict:
    """Phase 1: w and log_alpha, 2 N (+ one group gate per tensor); kept: the k projected values."""
    N = sparse.n_maskable(model_cfg, cfg.modules_to_save)
    fixed = sparse.sparse_formula(model_cfg, cfg.density, cfg.modules_to_save)
    if cfg.fixed:
        return fixed
    heads = task_heads(model_cfg, cfg.modules_to_save)
    n = 2 * N + (n_tensors(model_cfg, cfg.modules_to_save) if cfg.structured else 0) + heads
    return {"trainable": n, "kept": fixed["kept"], "nonzeros": N, "index_bytes": 0}
