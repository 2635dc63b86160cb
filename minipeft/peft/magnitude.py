"""Magnitude selection: sparse fine-tuning of the largest-magnitude entries of each weight matrix,
the baseline of movement pruning (Sanh, Wolf & Rush, NeurIPS 2020, arXiv:2005.07683, Table 2:
"magnitude pruning", which keeps the weights of largest |W| in each matrix).

Which existing parameters change (the fourth place): k_t entries of every block weight matrix t
(attn.q, attn.k, attn.v, attn.o, mlp.fc, mlp.proj: the reference prunes the encoder's linear
layers only, embeddings, biases and LayerNorms stay frozen):

    mask_t  = TopK(|W_t|, k_t)      per matrix,  k_t = max(1, round(density * |W_t|))
    W_t     = W0_t + Delta_t,       Delta_t = values on mask_t (k_t of them), 0 elsewhere    (sparse.py)

|W| is |theta0| when the adapter is added (the baseline's mask at step 0). `prepare(pm, name,
loss_fn, batches)` runs `full_steps` of dense fine-tuning of the matrices first, as LT-SFT's phase 1
does, takes the mask from |theta1| (the magnitudes after fine-tuning, what the baseline's mask
reflects at the end of its training), and resets theta <- theta0 bit-exactly; full_steps = 0 keeps
the |theta0| mask. Either way the mask is then fixed and only its values train.

Shapes: values (k,), indices (k,) int32 over the matrices joined in named_parameters order,
k = sum_t k_t. Counted by nonzeros: trainable = kept = nonzeros = k, index_bytes = 4 k.
The per-matrix helpers here (`matrices`, `per_matrix_top_k`, `n_matrix_entries`) are shared with
movement.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from . import sparse
from .common import task_heads
from .sparse import buffers, deltas, merge, remove, state, unmerge  # noqa: F401  (the method's API)

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True       # values start at 0
PER_SAMPLE = False          # W0 + Delta, shared by the batch

# the block weight matrices: h.<i>.attn.{q,k,v,o}.weight, h.<i>.mlp.{fc,proj}.weight
MATRIX = re.compile(r"h\.\d+\.(attn\.[qkvo]|mlp\.(fc|proj))\.weight")


def matrices(pm, modules_to_save=()) -> list:
    """[(path, Parameter)] of the block weight matrices, in named_parameters order."""
    return [(path, p) for path, p in sparse.maskable(pm, modules_to_save) if MATRIX.fullmatch(path)]


def per_matrix_top_k(scores: dict, params: list, density: float):
    """Sorted host indices into the matrices joined in order: for each matrix t the k_t positions
    of its largest scores (ties to the lower index), shifted by the matrix's offset."""
    hostnp = backend.host()
    out, offset = [], 0
    for path, p in params:
        s = backend.to_numpy(scores[path]).reshape(-1)
        out.append(sparse.top_k(s, sparse.n_values(s.size, density)) + offset)
        offset += s.size
    return hostnp.concatenate(out).astype("int32")


def matrix_sizes(model_cfg) -> list:
    """|W_t| of every block matrix in closed form: per block 4 d^2 (q, k, v, o) and 2 d f (fc, proj)."""
    d, f = model_cfg.d_model, model_cfg.d_ff
    return [d * d] * 4 * model_cfg.n_layer + [d * f] * 2 * model_cfg.n_layer


def n_kept(model_cfg, density: float) -> int:
    """k = sum_t max(1, round(density |W_t|)), the entries a per-matrix top-k keeps."""
    return sum(sparse.n_values(n, density) for n in matrix_sizes(model_cfg))


@dataclass
class MagnitudeConfig:
    method: ClassVar[str] = "magnitude"
    density: float = 0.1             # k_t / |W_t| in every matrix (the README's 10% remaining weights)
    full_steps: int = 100            # prepare: dense fine-tuning steps before selecting by |theta1| (0: |theta0|)
    full_lr: float = 1e-3
    modules_to_save: tuple = ()

    def __post_init__(self):
        sparse.check_density(self.density, "MagnitudeConfig")
        if self.full_steps < 0:
            raise ValueError(f"MagnitudeConfig.full_steps must be >= 0, got {self.full_steps}")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = MagnitudeConfig


def from_options(o) -> MagnitudeConfig:
    return MagnitudeConfig(modules_to_save=o.heads, **sparse.density_option(o))


def add(pm, name: str, cfg: MagnitudeConfig) -> None:
    params = matrices(pm, cfg.modules_to_save)
    if not params:
        raise ValueError("magnitude selection needs block weight matrices (h.<i>.attn.q.weight, ...); the model has none")
    W0 = {path: p.data for path, p in params}
    pm.deltas[name] = sparse.SparseDelta(params, per_matrix_top_k({p: abs(w) for p, w in W0.items()}, params,
                                                                  cfg.density))


def formula(model_cfg, cfg: MagnitudeConfig) -> dict:
    k = n_kept(model_cfg, cfg.density)
    heads = task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": k + heads, "kept": k + heads, "nonzeros": k, "index_bytes": 4 * k}


def prepare(pm, name: str, loss_fn, batches, steps: int | None = None, lr: float | None = None) -> None:
    """Dense fine-tuning of the matrices (theta0 -> theta1), the mask TopK(|theta1|) per matrix,
    then theta <- theta0 (bit-exact); only the mask's values train from here on."""
    cfg = pm.peft_config[name]
    steps = cfg.full_steps if steps is None else steps
    if steps == 0:
        return                                                                   # keep the |theta0| mask
    params = matrices(pm, cfg.modules_to_save)
    theta1 = sparse.dense_phase(pm, name, params, loss_fn, batches, steps, lr or cfg.full_lr,
                                "magnitude: dense phase")
    sparse.delta_of(pm, name).set_indices(
        per_matrix_top_k({path: abs(t) for path, t in theta1.items()}, params, cfg.density))   # |theta1|
