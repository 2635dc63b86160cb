"""SpIEL: Sparse Iterative Efficient Learning (Ansell, Vulic, Sterz, Korhonen & Ponti, 2024,
"Scaling Sparse Fine-Tuning to Large Language Models", arXiv:2401.16405), the accumulated-
gradient variant (SpIEL-AG).

Which existing parameters change (the fourth place): k of the N maskable entries of theta0, as
in every sparse method (sparse.py): theta = theta0 + delta, delta_eta = values (k,), else 0.
What is particular to SpIEL is that the index set eta moves during training, at a fixed size:

    every S steps (t = S, 2S, ... < T), with the rate  p_t = p0 (1 - t / T):
      drop   the round(p_t k) entries of eta with the smallest |delta|          (they go back to theta0)
      grow   the round(p_t k) entries outside eta with the largest |sum of dL/dtheta| over the last
             A steps (the accumulated gradient: where a delta would have moved the loss most)
      the grown deltas start at 0; their Adam moments start from the accumulated gradient
             (m = mean g, v = mean g^2), those of the kept entries move with them

The dense gradient dL/dtheta of the A accumulation steps comes from a zero "probe" added to each
parametrised weight, W = W0 + Delta + P with P = 0 (so the forward is unchanged): backward fills
P.grad = dL/dW for every entry, which before_step adds up. Outside those A of every S steps the
probe is absent and, as for any sparse method, no dense weight gradient is computed.
Defaults from the official code (AlanAnsell/peft, tuners/sft): density 0.01, S = 20
(reselection_steps), A = 5 (selection_accumulation_steps), p0 = 0.2 (initial_reselection_rate).
Left out: the official first, full selection phase, and its candidate pre-filter (the top-|grad|
candidates per slot, a memory saving for LLMs); here every entry outside eta is a candidate and
the start is the random mask of sparse.py.

Shapes: values (k,), indices (k,) int32 sorted; probes P: one per maskable weight, its shape;
accumulators (N,). Saved and counted like every sparse delta (k values + k indices).
The re-selection reads the gradients of all processes only in one process, so SpIEL trains in
one (ONE_PROCESS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from ..autograd import Tensor
from . import sparse
from .common import positive_int
from .sparse import buffers, merge, remove, state, unmerge  # noqa: F401  (the method's API)

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True
PER_SAMPLE = False
ONE_PROCESS = True          # before_step must see every gradient of the step in this process


@dataclass
class SpIELConfig:
    method: ClassVar[str] = "spiel"
    density: float = 0.01                # k / N
    reselection_steps: int = 20          # S: steps between two re-selections
    accumulation_steps: int = 5          # A: the last A steps before a re-selection add up dL/dtheta
    initial_reselection_rate: float = 0.2  # p0: the fraction of eta replaced at the first one
    total_steps: int = 300               # T: the rate decays linearly to 0 at step T
    seed: int = 0                        # the first (random) index set
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "SpIELConfig")
        for f in ("reselection_steps", "accumulation_steps", "total_steps"):
            positive_int(getattr(self, f), f"SpIELConfig.{f}")
        if self.accumulation_steps > self.reselection_steps:
            raise ValueError(f"SpIELConfig.accumulation_steps ({self.accumulation_steps}) must be at most "
                             f"reselection_steps ({self.reselection_steps}): the gradients are added up "
                             f"over the last A steps before each re-selection")
        if not 0.0 <= self.initial_reselection_rate <= 1.0:
            raise ValueError(f"SpIELConfig.initial_reselection_rate must be in [0, 1], "
                             f"got {self.initial_reselection_rate!r}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = SpIELConfig


def from_options(o) -> SpIELConfig:
    return SpIELConfig(modules_to_save=o.heads, **sparse.density_option(o))


def formula(model_cfg, cfg: SpIELConfig) -> dict:
    return sparse.sparse_formula(model_cfg, cfg.density, cfg.modules_to_save)


def _accumulates(step: int, cfg) -> bool:
    """Is `step` one of the A steps that end at a re-selection (t - 1 mod S >= S - A)?"""
    S, A = cfg.reselection_steps, cfg.accumulation_steps
    return (step - 1) % S >= S - A and step <= cfg.total_steps


def rate(step: int, cfg) -> float:
    """p_t = p0 (1 - t / T): the fraction of the index set replaced at re-selection step t."""
    return max(0.0, cfg.initial_reselection_rate * (1.0 - step / cfg.total_steps))


def add(pm, name: str, cfg: SpIELConfig) -> None:
    delta = sparse.new_delta(pm, name, cfg)
    delta.probes = None                  # {path: Tensor P = 0} during the accumulation steps
    delta.acc = None                     # (sum g, sum g^2, steps) over the current window
    _set_probes(delta, _accumulates(1, cfg))


def _set_probes(delta, on: bool) -> None:
    xp = backend.xp
    if not on:
        delta.probes = None
        return
    delta.probes = {}
    for path, shape in zip(delta.paths, delta.shapes):
        p = Tensor(xp.zeros(shape, dtype=delta.values.dtype))
        p.requires_grad = True
        delta.probes[path] = p


def deltas(pm, name: str) -> dict:
    """{path: Delta} of the sparse delta, plus the zero probe P on every weight while accumulating."""
    delta = sparse.delta_of(pm, name)
    out = delta.deltas()
    if delta.probes and not delta.merged:
        for path, p in delta.probes.items():
            out[path] = out[path] + p if path in out else p
    return out


def before_step(pm, name: str, step: int, optimizer) -> None:
    """Add up this step's dense gradient (an accumulation step); re-select at t = S, 2S, ...;
    put the probes in place for step t + 1 if it accumulates."""
    cfg, delta = pm.peft_config[name], sparse.delta_of(pm, name)
    if delta.probes:
        if all(p.grad is None for p in delta.probes.values()):
            raise RuntimeError("SpIEL saw no gradient of its probes in this step: was the step run in other "
                               "processes (processes > 1)? SpIEL trains in one process (processes=1)")
        hostnp = backend.host()
        g = sparse.flat(pm, delta, {path: (p.grad if p.grad is not None else hostnp.zeros(p.shape))
                                    for path, p in delta.probes.items()}).astype(hostnp.float64)   # (N,)
        s1, s2, n = delta.acc or (0.0, 0.0, 0)
        delta.acc = (s1 + g, s2 + g * g, n + 1)
    if step % cfg.reselection_steps == 0 and delta.acc is not None:
        reselect(delta, optimizer, rate(step, cfg))
        delta.acc = None
    _set_probes(delta, _accumulates(step + 1, cfg))


def reselect(delta, optimizer, p: float):
    """Drop the round(p k) smallest |delta| of eta, grow as many outside eta by |sum g|; carry the
    kept values, gradients and optimizer moments to their new positions. Returns (dropped, grown)."""
    hostnp = backend.host()
    k = delta.values.size
    n = int(round(p * k))
    if n == 0:
        return hostnp.zeros(0, dtype=int), hostnp.zeros(0, dtype=int)
    s1, s2, steps = delta.acc
    old = backend.to_numpy(delta.indices.data).astype(hostnp.int64)                    # eta, (k,)
    values = backend.to_numpy(delta.values.data)
    keep_pos = hostnp.sort(hostnp.argsort(hostnp.abs(values), kind="stable")[n:])       # drop the n smallest
    score = hostnp.abs(s1)                                                             # |sum_A g|, (N,)
    score[old] = -1.0                                                                  # only entries outside eta grow
    grown = hostnp.sort(hostnp.argsort(-score, kind="stable")[:n])
    new = hostnp.concatenate([old[keep_pos], grown])
    order = hostnp.argsort(new, kind="stable")
    new = new[order]                                                                   # sorted, (k,)
    src = hostnp.concatenate([keep_pos, hostnp.full(n, -1)])[order]                    # old position or -1
    is_grown = src < 0

    def carry(a, fill):
        """a (k,) in the old layout -> the new layout; grown entries take `fill` (N,) at their index."""
        a = backend.to_numpy(a)
        out = hostnp.where(is_grown, 0.0, a[hostnp.maximum(src, 0)]).astype(a.dtype)
        if fill is not None:
            out[is_grown] = fill[new[is_grown]]
        return backend.to_device(out)

    dropped = old[hostnp.setdiff1d(hostnp.arange(k), keep_pos)]
    grad = delta.values.grad
    st = optimizer.state.get(id(delta.values), {}) if optimizer is not None else {}
    moments = {"exp_avg": s1 / steps, "exp_avg_sq": s2 / steps}          # Adam's m and v from the window
    new_state = {key: carry(v, moments.get(key)) for key, v in st.items() if getattr(v, "shape", None) == (k,)}
    delta.set_indices(new, carry(delta.values.data, None))
    if grad is not None:
        delta.values.grad = carry(grad, None)
    for key, v in new_state.items():
        st[key] = v
    return dropped, grown
