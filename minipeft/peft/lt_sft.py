"""LT-SFT: Lottery-Ticket Sparse Fine-Tuning (Ansell, Ponti, Korhonen & Vulic, ACL 2022,
arXiv:2110.07560), composable sparse fine-tunings.

Which existing parameters change (the fourth place): k of the N maskable entries of theta0.

    phase 1  full fine-tuning  theta0 -> theta1                     (`prepare`: every maskable entry trains)
    mask     eta = the K entries with the largest |theta1 - theta0|  (K = round(density * N), over all of them)
    reset    theta <- theta0
    phase 2  train only eta:  theta = theta0 + delta,  delta_eta = values (K,), else 0,
             with the L1 pull toward theta0:  loss + lambda ||theta - theta0||_1 = loss + lambda sum |values|

The sparse delta (indices + values, sparse.py) is what is saved; sparse fine-tunings compose by
addition, theta0 + phi_lang + phi_task: activate both adapters, pm.set_adapter(["lang", "task"]).
Before `prepare` runs, the mask is the random one of sparse.py (the paper's `Random` baseline);
`minipeft finetune` calls prepare with the task's batches. Shapes: values (K,), indices (K,) int32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from ..autograd import Function
from . import sparse
from .sparse import buffers, deltas, merge, remove, state, unmerge  # noqa: F401  (the method's API)

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True
PER_SAMPLE = False


@dataclass
class LTSFTConfig:
    method: ClassVar[str] = "lt_sft"
    density: float = 0.01            # K / N (the paper's ft_params_proportion)
    l1_lambda: float = 0.1           # the pull toward theta0 in phase 2 (the MLM example's 0.1)
    full_steps: int = 100            # phase 1: steps of full fine-tuning in prepare
    full_lr: float = 1e-3
    seed: int = 0                    # the mask before prepare (random)
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "LTSFTConfig")
        if self.l1_lambda < 0:
            raise ValueError(f"LTSFTConfig.l1_lambda must be >= 0, got {self.l1_lambda}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = LTSFTConfig


def from_options(o) -> LTSFTConfig:
    return LTSFTConfig(modules_to_save=o.heads, **sparse.density_option(o))


def add(pm, name: str, cfg: LTSFTConfig) -> None:
    sparse.new_delta(pm, name, cfg)


def formula(model_cfg, cfg: LTSFTConfig) -> dict:
    return sparse.sparse_formula(model_cfg, cfg.density, cfg.modules_to_save)


class Abs(Function):
    """|x| elementwise."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return abs(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved
        return g * backend.xp.sign(x)          # d|x|/dx = sign(x) (0 at 0)


def aux_loss(pm, name: str):
    """lambda sum |values| = lambda ||theta - theta0||_1 (None when lambda = 0)."""
    lam = pm.peft_config[name].l1_lambda
    return None if lam == 0 else Abs.apply(sparse.delta_of(pm, name).values).sum() * lam


def prepare(pm, name: str, loss_fn, batches, steps: int | None = None, lr: float | None = None) -> None:
    """Phase 1 and the mask: fine-tune every maskable entry fully, keep the K most changed
    entries, reset to theta0 (bit-exact) and train only those from here on."""
    cfg = pm.peft_config[name]
    delta = sparse.delta_of(pm, name)
    params = sparse.maskable(pm, cfg.modules_to_save)
    theta1 = sparse.dense_phase(pm, name, params, loss_fn, batches, steps or cfg.full_steps,
                                lr or cfg.full_lr, "LT-SFT phase 1")
    moved = {path: abs(theta1[path] - p.data) for path, p in params}              # |theta1 - theta0|
    delta.set_indices(sparse.top_k(sparse.flat(pm, delta, moved), delta.values.size))
