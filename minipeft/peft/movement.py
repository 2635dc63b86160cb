"""Movement selection (Sanh, Wolf & Rush, "Movement Pruning", NeurIPS 2020, arXiv:2005.07683),
hard movement with a TopK mask, turned to sparse fine-tuning: the mask chooses which entries of
each weight matrix the fine-tuning may change, and it is learned while training.

Which existing parameters change (the fourth place): k_t entries of every block weight matrix t
(attn.q/k/v/o, mlp.fc/proj; the reference prunes the encoder's linear layers only):

    M_t  = TopK(S_t, k_t)                      per matrix, k_t = max(1, round(density * |W_t|)); 1 on the k_t largest scores
    W_t  = W0_t + M_t (.) delta_t              delta_t: |W_t|, trained, starts at 0 (so W = W0 at step 0)

Backward (the straight-through estimator, the paper's eq. for hard movement pruning: the gradient
passes through TopK as if it were the identity):

    d delta_t = dL/dW_t (.) M_t
    d S_t     = dL/dW_t (.) W_t                W_t = W0_t + M_t (.) delta_t, the weight the mask acts on

so a score grows where -W dL/dW > 0, where training pushes a weight away from zero ("movement"),
and S accumulates -lr_S sum_t W dL/dW. (The strict STE of the product M (.) delta would give
dL/dW (.) delta, which is 0 wherever delta is 0, i.e. outside the mask from the start: those scores
could never move. The paper's W is the whole weight, and that is what is used here.)

The scores are learned with their own learning rate (the reference's `mask_scores_learning_rate`
1e-2), by plain SGD in `before_step`, not by the optimizer: they are not Parameters but float32
arrays that travel with the adapter (`buffers`: saved and loaded, left out of the trainable count,
reported as index_bytes, 4 per entry, as a sparse delta's int32 indices are) and that receive their
STE gradient in backward. This keeps the finite-difference gradient checks of the contract
meaningful: the mask is a step function of S, whose true derivative is 0. Scores start at
`score_init` (the reference's mask_init="constant", mask_scale=0: ties, so the first mask is the
first k_t entries, and the first step orders them by -W0 dL/dW).

The cubic schedule (the reference's `schedule_threshold`, after Zhu & Gupta 2017): with
schedule_steps T > 0 the density starts at 1 and falls to its final value d,

    d_t = 1                                    t <= t_i                  (initial warm-up)
    d_t = d + (1 - d) (1 - (t - t_i) / (T - t_i - t_f))^3                 in between
    d_t = d                                    t > T - t_f               (final warm-up)

so k_t = max(1, round(d_t |W_t|)) shrinks step by step (before_step sets it for the next step);
schedule_steps = 0 (the default) keeps d from step 0.
Left out from the reference: soft movement (sigmoid threshold + L1 penalty), distillation.
Shapes: delta_t and S_t of |W_t| each; trainable = sum_t |W_t| (+ heads); nonzeros = sum_t k_t.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from ..autograd import Function, Tensor
from ..nn.module import Module, ModuleList, Parameter
from . import sparse
from .common import task_heads
from .magnitude import matrices, matrix_sizes, n_kept

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True       # delta = 0: W0 + M (.) 0 = W0
PER_SAMPLE = False          # W0 + Delta, shared by the batch
ONE_PROCESS = True          # the scores are not Parameters (data-parallel workers would keep their STE gradients),
                            # and before_step's k_t of the schedule would not reach the workers


def top_k_mask(scores, k: int):
    """The 0/1 mask (shape of scores, scores' device) of the k largest scores; ties to the lower index."""
    flat = backend.to_numpy(scores).reshape(-1)
    m = backend.host().zeros(flat.size)
    m[sparse.top_k(flat, k)] = 1.0
    return m.reshape(scores.shape)


class MovementMask(Function):
    """M (.) delta with M = TopK(scores, k) and the straight-through estimator.

    delta, scores: S (one matrix);  w0: S, the frozen weight (an array, not differentiated);
    returns M (.) delta.  Backward: (g (.) M, g (.) (w0 + M (.) delta)).
    """

    @staticmethod
    def forward(ctx, delta, scores, w0=None, k=1):
        m = backend.to_device(top_k_mask(scores, k), dtype=delta.dtype)
        out = m * delta
        ctx.save_for_backward(m, out if w0 is None else w0 + out)
        return out

    @staticmethod
    def backward(ctx, g):
        m, w = ctx.saved
        # d(M (.) delta)/d delta = M; dS: TopK treated as the identity, times the weight it masks
        return g * m, g * w


class Entry(Module):
    """One matrix: delta (trained, starts at 0) and its scores (float32, learned in before_step)."""

    def __init__(self, shape, k: int, score_init: float):
        self.delta = Parameter(backend.xp.zeros(shape, dtype=backend.default_dtype()))
        self.scores = Tensor(backend.xp.full(shape, score_init, dtype=backend.host().float32))
        self.k = k


class Movement(Module):
    """The parametrisation of one adapter: an Entry per block matrix."""

    def __init__(self, params, cfg):
        self.paths = [path for path, _ in params]
        self.entries = ModuleList([Entry(p.shape, sparse.n_values(p.size, cfg.density), cfg.score_init)
                                   for _, p in params])
        self.merged = False


@dataclass
class MovementConfig:
    method: ClassVar[str] = "movement"
    density: float = 0.1             # k_t / |W_t| (the README's 10% remaining weights)
    scores_lr: float = 1e-2          # the scores' own learning rate (mask_scores_learning_rate)
    score_init: float = 0.0          # mask_init="constant", mask_scale=0
    schedule_steps: int = 0          # T of the cubic schedule from density 1 to `density` (0: none)
    initial_warmup: int = 0          # t_i: steps at density 1 first (the reference: 1 x warmup_steps)
    final_warmup: int = 0            # t_f: steps at the final density last (the reference: 2 x warmup_steps)
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "MovementConfig")
        if self.scores_lr < 0:
            raise ValueError(f"MovementConfig.scores_lr must be >= 0, got {self.scores_lr}")
        for f in ("schedule_steps", "initial_warmup", "final_warmup"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ValueError(f"MovementConfig.{f} must be a whole number >= 0, got {getattr(self, f)!r}")
        if self.schedule_steps and self.initial_warmup + self.final_warmup >= self.schedule_steps:
            raise ValueError(f"MovementConfig: initial_warmup + final_warmup ({self.initial_warmup} + "
                             f"{self.final_warmup}) must be below schedule_steps ({self.schedule_steps})")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = MovementConfig


def from_options(o) -> MovementConfig:
    return MovementConfig(modules_to_save=o.heads, **sparse.density_option(o))


def density_at(step: int, cfg: MovementConfig) -> float:
    """d_t of the cubic schedule (see the module doc); the final density without a schedule."""
    T, ti, tf, d = cfg.schedule_steps, cfg.initial_warmup, cfg.final_warmup, cfg.density
    if not T or step > T - tf:
        return d
    if step <= ti:
        return 1.0
    return d + (1.0 - d) * (1.0 - (step - ti) / (T - ti - tf)) ** 3


def _set_k(mv, density: float) -> None:
    for e in mv.entries:
        e.k = sparse.n_values(e.delta.size, density)


def add(pm, name: str, cfg: MovementConfig) -> None:
    params = matrices(pm, cfg.modules_to_save)
    if not params:
        raise ValueError("movement selection needs block weight matrices (h.<i>.attn.q.weight, ...); the model has none")
    pm.deltas[name] = Movement(params, cfg)
    _set_k(pm.deltas[name], density_at(1, cfg))


def formula(model_cfg, cfg: MovementConfig) -> dict:
    """trainable: the dense deltas, sum |W_t|; nonzeros: sum k_t; index_bytes: the float32 scores."""
    n = sum(matrix_sizes(model_cfg))
    heads = task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": n + heads, "kept": n + heads, "nonzeros": n_kept(model_cfg, cfg.density),
            "index_bytes": 4 * n}


def deltas(pm, name: str) -> dict:
    mv = pm.deltas[name]
    if mv.merged:
        return {}
    params = dict(pm.model.named_parameters())
    out = {}
    for path, e in zip(mv.paths, mv.entries):
        e.scores.requires_grad = e.delta.requires_grad           # a frozen (loaded) adapter learns no scores
        out[path] = MovementMask.apply(e.delta, e.scores, w0=params[path].data, k=e.k)
    return out


def masks(pm, name: str) -> dict:
    """{path: 0/1 host array}: the current mask M_t = TopK(S_t) of each matrix."""
    mv = pm.deltas[name]
    return {path: top_k_mask(e.scores.data, e.k) for path, e in zip(mv.paths, mv.entries)}


def before_step(pm, name: str, step: int, optimizer) -> None:
    """S <- S - scores_lr * dS (the STE gradient backward left in S.grad), then clear it; then
    k_t of the next step from the schedule."""
    cfg = pm.peft_config[name]
    for e in pm.deltas[name].entries:
        if e.scores.grad is not None:
            g = backend.to_device(e.scores.grad, dtype=e.scores.dtype)
            e.scores.data = e.scores.data - cfg.scores_lr * g
            e.scores.grad = None
    if cfg.schedule_steps:
        _set_k(pm.deltas[name], density_at(step + 1, cfg))


def state(pm, name: str) -> dict:
    mv = pm.deltas[name]
    out = {f"base_model.model.{path}.movement_delta": e.delta for path, e in zip(mv.paths, mv.entries)}
    return {**out, **sparse._heads(pm, name)}


def buffers(pm, name: str) -> dict:
    mv = pm.deltas[name]
    return {f"base_model.model.{path}.movement_scores": e.scores for path, e in zip(mv.paths, mv.entries)}


def load_state(pm, name: str, arrays: dict) -> None:
    """load_adapter: the deltas, and k_t at the schedule's end (a saved adapter is a trained one)."""
    for k, p in state(pm, name).items():
        p.data = backend.to_device(arrays[k], dtype=p.dtype).copy()
    _set_k(pm.deltas[name], pm.peft_config[name].density)


def merge(pm, name: str) -> None:
    """W0 <- W0 + M (.) delta with the current mask."""
    sparse.merge_with(pm, name, deltas)


def unmerge(pm, name: str) -> None:
    sparse.unmerge_with(pm, name, deltas)


def remove(pm, name: str) -> None:
    sparse.remove(pm, name, unmerge)
