"""Child-Tuning (Xu, Luo, Zhang, Tan, Chang, Huang & Huang, EMNLP 2021, arXiv:2109.05687): update a
child network of the encoder only, by masking the gradient.

    w <- w - eta * Adam(grad L (.) M)             M: a 0/1 mask over the entries of the blocks

- ChildTuning-D (mode="D", task-driven): M is fixed before training, the top reserve_p of the
  block entries by the diagonal Fisher sum_n (d log p(y_n | x_n) / d w)^2 (fish.fisher).
  Entries outside M never change, so it is a sparse delta: indices + values (sparse.py).
- ChildTuning-F (mode="F", task-free): M ~ Bernoulli(reserve_p) drawn afresh every step, and the
  kept gradient divided by reserve_p (so its expectation is the full gradient). Every entry may
  change over training: a dense delta, values (N,), whose gradient `before_step` masks.

Both: theta = theta0 + delta (parametrize.py), delta starts at 0. As in the paper's code, only
the parameters of the blocks ("layer" in BERT's names, h.* here) are masked; the others
(embeddings, final LayerNorm, pooler, heads) train fully: in mode D their entries are all in
the index set, in mode F their gradients pass unmasked.

Counts: mode D, k = round(reserve_p * N_blocks) + N_other values and 4 k index bytes; mode F,
N values and no index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from . import sparse
from .count import block_params
from .sparse import buffers, deltas, merge, remove, state, unmerge  # noqa: F401  (the method's API)

DEFAULT_LR = 1e-3
STARTS_AT_BASE = True
PER_SAMPLE = False


@dataclass
class ChildTuningConfig:
    method: ClassVar[str] = "child_tuning"
    mode: str = "D"                  # "D": fixed Fisher mask; "F": Bernoulli gradient mask every step
    reserve_p: float = 0.3           # the fraction of block entries in the child network
    n_samples: int = 1024            # mode D: batches the Fisher is averaged over (prepare)
    seed: int = 0                    # mode D: the mask before prepare (random)
    modules_to_save: tuple = ()

    def __post_init__(self):
        if self.mode not in ("D", "F"):
            raise ValueError(f"ChildTuningConfig.mode must be 'D' (task-driven) or 'F' (task-free), got {self.mode!r}")
        if not 0.0 < self.reserve_p <= 1.0:
            raise ValueError(f"ChildTuningConfig.reserve_p must be in (0, 1], got {self.reserve_p!r}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = ChildTuningConfig


def from_options(o) -> ChildTuningConfig:
    return ChildTuningConfig(modules_to_save=o.heads)


def _in_blocks(delta):
    """A host 0/1 vector (N,): which maskable entries belong to a block (h.*)."""
    hostnp = backend.host()
    out = hostnp.zeros(delta.N, dtype=bool)
    for t, path in enumerate(delta.paths):
        out[delta.offsets[t]:delta.offsets[t + 1]] = path.startswith("h.")
    return out


def _indices(blocks, scores, p):
    """Every non-block entry, and the top round(p * N_blocks) block entries by score."""
    hostnp = backend.host()
    k = int(round(p * blocks.sum()))
    inside = hostnp.flatnonzero(blocks)
    chosen = inside[sparse.top_k(scores[inside], k)]
    return hostnp.sort(hostnp.concatenate([hostnp.flatnonzero(~blocks), chosen]))


def add(pm, name: str, cfg: ChildTuningConfig) -> None:
    params = sparse.maskable(pm, cfg.modules_to_save)
    if cfg.mode == "F":
        pm.deltas[name] = sparse.SparseDelta(params, None)
        return
    probe = sparse.SparseDelta(params, backend.host().zeros(0, dtype="int32"))   # only for its layout
    blocks = _in_blocks(probe)
    random = backend.host().random.default_rng(cfg.seed).random(probe.N)
    pm.deltas[name] = sparse.SparseDelta(params, _indices(blocks, random, cfg.reserve_p))


def prepare(pm, name: str, loss_fn, batches, n_samples: int | None = None) -> None:
    """Mode D: the Fisher mask over the block entries (fixed from here on). Mode F: nothing."""
    from .fish import fisher
    cfg = pm.peft_config[name]
    if cfg.mode == "F":
        return
    delta = sparse.delta_of(pm, name)
    F = fisher(pm, sparse.maskable(pm, cfg.modules_to_save), loss_fn, batches, n_samples or cfg.n_samples)
    delta.set_indices(_indices(_in_blocks(delta), sparse.flat(pm, delta, F), cfg.reserve_p))


def before_step(pm, name: str, step: int, optimizer) -> None:
    """Mode F: grad <- grad (.) M / p on the block entries, M ~ Bernoulli(p) redrawn every step."""
    cfg = pm.peft_config[name]
    values = sparse.delta_of(pm, name).values
    if cfg.mode != "F" or values.grad is None:
        return
    delta = sparse.delta_of(pm, name)
    blocks = _in_blocks(delta)
    keep = backend.rng.gen.random(delta.N) < cfg.reserve_p
    mask = backend.host().where(blocks, keep / cfg.reserve_p, 1.0)
    pm.deltas[name].last_mask = mask                                         # for inspection and tests
    values.grad = values.grad * backend.to_device(mask, dtype=values.grad.dtype)


def formula(model_cfg, cfg: ChildTuningConfig) -> dict:
    N = sparse.n_maskable(model_cfg, cfg.modules_to_save)
    n_blocks = model_cfg.n_layer * block_params(model_cfg)
    heads = sparse.task_heads(model_cfg, cfg.modules_to_save)
    if cfg.mode == "F":
        return {"trainable": N + heads, "kept": N + heads, "nonzeros": N, "index_bytes": 0}
    k = int(round(cfg.reserve_p * n_blocks)) + (N - n_blocks)
    return {"trainable": k + heads, "kept": k + heads, "nonzeros": k, "index_bytes": 4 * k}
