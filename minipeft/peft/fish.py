"""FISH mask: Fisher-Induced Sparse uncHanging (Sung, Nair & Raffel, NeurIPS 2021, arXiv:2111.09839).

Which existing parameters change (the fourth place): the k entries of theta0 that carry the
most Fisher information, chosen once, before training, and fixed:

    F_i ~ (1/N) sum_n (d log p(y_n | x_n) / d theta_i)^2        the empirical Fisher, gold labels y_n
    mask = top-k of F over all maskable entries,  k = round(density * N_params)
    theta = theta0 + delta,  delta = values on the mask (k,), 0 elsewhere            (sparse.py)

`prepare(pm, name, loss_fn, batches)` computes F from `n_samples` batches (loss_fn is the task's
negative log-likelihood; pass batches of one sample for the per-sample Fisher of the paper, a
batch of B gives the squared gradient of its mean) and sets the mask. Before it runs, the mask
is sparse.py's random one (the paper's random-mask baseline). `fisher` is shared with
ChildTuning-D. Shapes: values (k,), indices (k,) int32; F: one number per maskable entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

from .. import backend
from . import sparse
from .sparse import buffers, deltas, merge, remove, state, unmerge  # noqa: F401  (the method's API)

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True
PER_SAMPLE = False


@dataclass
class FishConfig:
    method: ClassVar[str] = "fish"
    density: float = 0.005           # the paper's keep_ratio
    n_samples: int = 1024            # batches the Fisher is averaged over
    seed: int = 0                    # the mask before prepare (random)
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "FishConfig")
        if self.n_samples < 1:
            raise ValueError(f"FishConfig.n_samples must be a positive integer, got {self.n_samples}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = FishConfig


def from_options(o) -> FishConfig:
    return FishConfig(modules_to_save=o.heads, **sparse.density_option(o))


def add(pm, name: str, cfg: FishConfig) -> None:
    sparse.new_delta(pm, name, cfg)


def formula(model_cfg, cfg: FishConfig) -> dict:
    return sparse.sparse_formula(model_cfg, cfg.density, cfg.modules_to_save)


def fisher(pm, params: list, loss_fn, batches, n: int) -> dict:
    """{path: F (shape of the parameter)}: the mean over n batches of (d loss / d theta)^2, for
    the given base parameters (made trainable meanwhile; every other flag is put back)."""
    flags = pm._grad_flags()
    total = {path: 0.0 for path, _ in params}
    count = 0
    try:
        for p in pm.parameters():
            p.requires_grad = False
        for _, p in params:
            p.requires_grad = True
        for batch in islice(_again(batches), n):
            loss_fn(pm, batch).backward()
            for path, p in params:
                if p.grad is not None:            # None: the loss does not use it (e.g. the MLM head of a classifier)
                    total[path] = total[path] + p.grad * p.grad                 # (d log p / d theta)^2
                p.grad = None
            count += 1
    finally:
        for p in pm.parameters():
            if id(p) in flags:
                p.requires_grad = flags[id(p)]
            p.grad = None
    return {path: (t / count if not isinstance(t, float) else backend.xp.zeros(p.shape, dtype=p.dtype))
            for (path, t), (_, p) in zip(total.items(), params)}


def _again(batches):
    """The batches again and again. (A plain loop, not `yield from`: closing this generator must
    not close a caller's batch generator, which training goes on reading.)"""
    while True:
        for b in batches:
            yield b


def prepare(pm, name: str, loss_fn, batches, n_samples: int | None = None) -> None:
    """The FISH mask: top-k of the empirical Fisher over the maskable entries, fixed from here on."""
    cfg = pm.peft_config[name]
    delta = sparse.delta_of(pm, name)
    F = fisher(pm, sparse.maskable(pm, cfg.modules_to_save), loss_fn, batches, n_samples or cfg.n_samples)
    delta.set_indices(sparse.top_k(sparse.flat(pm, delta, F), delta.values.size))
