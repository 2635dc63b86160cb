"""Sparse fine-tuning: theta = theta0 + delta with delta nonzero on k chosen entries only, and the
random mask of k entries that every sparse method is compared with (LT-SFT's `Random`, FISH's
random-mask baseline).

Every maskable parameter of the base model (all of them except task heads trained as copies) is
flattened and the pieces joined, in named_parameters order, into one vector of N entries. A
sparse delta is

    indices  (k,) int32, sorted and distinct: positions j in [0, N)      (a buffer: not trained)
    values   (k,) float:  delta_j = values[i] where j = indices[i], else 0    (trained)

and while the PeftModel runs, each parameter W0 (shape S, entries offset .. offset + |S| of the
vector) reads W0 + Delta with Delta = scatter(values of its segment, S) (parametrize.py). W0 is
frozen: entries outside the mask stay bit-identical, gradients reach only the k values.
Stored: k values + k indices (4 bytes each), so a sparse method at density d keeps d N numbers
and 4 d N index bytes; counted by nonzeros (k), not by the sizes of the tensors it touches.

Composition is addition: two adapters active at once (pm.set_adapter(["task", "lang"])) give
theta0 + delta_task + delta_lang, and `add_deltas` joins two stored deltas into one.

The methods that choose the indices live in their own files (lt_sft, fish, child_tuning,
diff_pruning) and use this one's SparseDelta and method functions. This file's own method,
"random_mask", draws the k indices uniformly at random (seeded, so the same seed gives the same
mask), k = max(1, round(density * N)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend
from ..autograd import Function, Tensor, no_grad
from ..nn.module import Module, ModuleDict, Parameter
from .common import task_heads
from .count import base_params, head_params

DEFAULT_LR = 1e-2
STARTS_AT_BASE = True      # values start at 0: W0 + 0 = W0
PER_SAMPLE = False         # the delta is shared by the batch


# ----------------------------------------------------------------------------- the op

class Scatter(Function):
    """Delta (shape S) from a segment of the values: Delta.flat[local] = values[start:stop], else 0.

    values (k,) -> Delta S;  local (stop - start,) int positions in [0, |S|), distinct; local None:
    a dense segment, Delta.flat = values[start:stop].
    """

    @staticmethod
    def forward(ctx, values, local=None, start=0, stop=0, shape=()):
        ctx.save_for_backward(local, start, stop, values.shape[0])
        if local is None:
            return values[start:stop].reshape(shape).copy()
        out = backend.xp.zeros(int(backend.host().prod(shape)), dtype=values.dtype)
        out[local] = values[start:stop]
        return out.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        local, start, stop, k = ctx.saved
        # dDelta.flat[local[i]] / dvalues[start + i] = 1: the gradient is gathered back
        gv = backend.xp.zeros(k, dtype=g.dtype)
        gv[start:stop] = g.reshape(-1) if local is None else g.reshape(-1)[local]
        return gv


# ----------------------------------------------------------------------------- the maskable entries

def maskable(pm, modules_to_save=()) -> list:
    """[(path, Parameter)] of the base model that a sparse delta may change: every parameter of
    pm.model except those of adapters (under a ModuleDict) and task heads trained as copies."""
    owned = {id(p) for m in pm.model.modules() if isinstance(m, ModuleDict) for p in m.parameters()}
    out = []
    for path, p in pm.model.named_parameters():
        if id(p) in owned or any(path == h or path.startswith(h + ".") for h in modules_to_save):
            continue
        out.append((path, p))
    return out


def n_maskable(model_cfg, modules_to_save=()) -> int:
    """N in closed form: the base model's parameters less the task head when it trains as a copy."""
    n = base_params(model_cfg, mlm_head=model_cfg.arch == "bert" and model_cfg.mlm_head)
    return n - (head_params(model_cfg) if "cls_head" in modules_to_save else 0)


def n_values(N: int, density: float) -> int:
    """k = max(1, round(density * N)): how many entries a delta at that density trains."""
    return max(1, int(round(density * N)))


def check_density(density, what: str) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"{what}.density must be in (0, 1] (the fraction of entries that train), got {density!r}")


def sparse_formula(model_cfg, density: float, modules_to_save=()) -> dict:
    """trainable = k values (+ task heads); nonzeros k; index_bytes 4 k."""
    k = n_values(n_maskable(model_cfg, modules_to_save), density)
    heads = task_heads(model_cfg, modules_to_save)
    return {"trainable": k + heads, "kept": k + heads, "nonzeros": k, "index_bytes": 4 * k}


# ----------------------------------------------------------------------------- the representation

class SparseDelta(Module):
    """delta over the N maskable entries: `values` (k,) trained, `indices` (k,) int32 sorted.
    indices=None: a dense delta (k = N, no indices stored; ChildTuning-F)."""

    def __init__(self, params: list, indices):
        self.paths = [path for path, _ in params]
        self.shapes = [tuple(p.shape) for _, p in params]
        sizes = [p.size for _, p in params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]       # tensor t: offsets[t] .. offsets[t+1]
        if self.offsets[-1] >= 2 ** 31:
            raise ValueError(f"{self.offsets[-1]:,} maskable entries do not fit int32 indices")
        self.dense = indices is None
        self.indices = None if self.dense else Tensor(backend.to_device(indices, dtype=backend.host().int32))
        k = self.N if self.dense else len(indices)
        self.values = Parameter(backend.xp.zeros(k, dtype=backend.default_dtype()))
        self.merged = False

    @property
    def N(self) -> int:
        return self.offsets[-1]

    def set_indices(self, indices, values=None) -> None:
        """A new index set (host or device ints, sorted, distinct, k of them) and its values (0)."""
        if self.dense:
            raise ValueError("a dense delta has no index set")
        idx = backend.to_numpy(indices).astype("int32")
        hostnp = backend.host()
        if len(idx) != self.values.size or (len(idx) > 1 and not (hostnp.diff(idx) > 0).all()) \
                or (len(idx) and not (0 <= idx[0] and idx[-1] < self.N)):
            raise ValueError(f"a sparse delta takes {self.values.size} sorted distinct indices in [0, {self.N}), "
                             f"got {len(idx)}")
        self.indices.data = backend.to_device(idx)
        self.values.data = backend.xp.zeros_like(self.values.data) if values is None \
            else backend.to_device(values, dtype=self.values.dtype).copy()

    def segments(self):
        """(path, shape, start, stop, local indices) of each tensor with entries in the mask."""
        if self.dense:
            for t, path in enumerate(self.paths):
                yield path, self.shapes[t], self.offsets[t], self.offsets[t + 1], None
            return
        idx = self.indices.data
        cuts = backend.to_numpy(backend.xp.searchsorted(idx, backend.to_device(self.offsets)))
        for t, path in enumerate(self.paths):
            a, b = int(cuts[t]), int(cuts[t + 1])
            if b > a:
                yield path, self.shapes[t], a, b, idx[a:b] - self.offsets[t]

    def deltas(self) -> dict:
        """{path: Delta} of the tensors it changes (none once merged)."""
        if self.merged:
            return {}
        return {path: Scatter.apply(self.values, local=local, start=a, stop=b, shape=shape)
                for path, shape, a, b, local in self.segments()}

    def fold(self, pm, sign: float) -> None:
        """W0 <- W0 + sign * Delta, in place (merge: +1, unmerge: -1)."""
        params = dict(pm.model.named_parameters())
        for path, shape, a, b, local in self.segments():
            w = params[path]
            flat = w.data.reshape(-1).copy()
            if local is None:
                flat += sign * self.values.data[a:b]
            else:
                flat[local] += sign * self.values.data[a:b]
            w.data = flat.reshape(shape)


def flat(pm, delta: SparseDelta, arrays: dict):
    """Join per-parameter arrays {path: array of its shape} into one host vector (N,) in the
    delta's order (scores for a top-k: |theta1 - theta0|, Fisher information)."""
    hostnp = backend.host()
    return hostnp.concatenate([backend.to_numpy(arrays[p]).reshape(-1) for p in delta.paths])


def top_k(scores, k: int):
    """Sorted indices of the k largest scores (host vector (N,)); ties go to the lower index."""
    hostnp = backend.host()
    order = hostnp.argsort(-scores, kind="stable")[:k]
    return hostnp.sort(order)


def random_indices(N: int, k: int, seed: int):
    """k distinct positions of [0, N), uniformly at random, sorted (the baseline mask)."""
    hostnp = backend.host()
    return hostnp.sort(hostnp.random.default_rng(seed).choice(N, size=k, replace=False))


def add_deltas(a: tuple, b: tuple) -> tuple:
    """(indices, values) + (indices, values) -> (indices, values) of delta_a + delta_b (host):
    the union of the positions, values added where both have one."""
    hostnp = backend.host()
    ia, va, ib, vb = (backend.to_numpy(x) for x in (*a, *b))
    idx = hostnp.union1d(ia, ib)
    out = hostnp.zeros(len(idx), dtype=hostnp.result_type(va, vb))
    out[hostnp.searchsorted(idx, ia)] += va
    out[hostnp.searchsorted(idx, ib)] += vb
    return idx, out


# ----------------------------------------------------------------------------- method functions the sparse files share

def new_delta(pm, name: str, cfg, indices=None) -> SparseDelta:
    """Put a SparseDelta for adapter `name` in pm.deltas (indices: random with cfg.seed if None)."""
    params = maskable(pm, getattr(cfg, "modules_to_save", ()))
    N = sum(p.size for _, p in params)
    k = n_values(N, cfg.density)
    delta = SparseDelta(params, random_indices(N, k, cfg.seed) if indices is None else indices)
    pm.deltas[name] = delta
    return delta


def delta_of(pm, name: str) -> SparseDelta:
    return pm.deltas[name]


def deltas(pm, name: str) -> dict:
    return delta_of(pm, name).deltas()


def state(pm, name: str) -> dict:
    """The values, keyed `base_model.model.sparse_delta.values`, and the task-head copies."""
    return {"base_model.model.sparse_delta.values": delta_of(pm, name).values, **_heads(pm, name)}


def _heads(pm, name):
    return {k: p for k, p in pm._owned_parameters(name).items() if not k.startswith("deltas.")}


def buffers(pm, name: str) -> dict:
    d = delta_of(pm, name)
    return {} if d.dense else {"base_model.model.sparse_delta.indices": d.indices}


def merge(pm, name: str) -> None:
    d = delta_of(pm, name)
    if not d.merged:
        d.fold(pm, +1.0)
        d.merged = True


def unmerge(pm, name: str) -> None:
    d = delta_of(pm, name)
    if d.merged:
        d.fold(pm, -1.0)
        d.merged = False


def fold_deltas(pm, deltas: dict, sign: float) -> None:
    """W0 <- W0 + sign * Delta for each {path: Delta} a method's `deltas` gives (merging a Delta
    that is not a SparseDelta: diff pruning's gates, movement's masked delta)."""
    params = dict(pm.model.named_parameters())
    with no_grad():
        for path, d in deltas.items():
            params[path].data = params[path].data + sign * d.data


def merge_with(pm, name: str, deltas_of) -> None:
    """merge for a holder pm.deltas[name] with a `merged` flag whose Delta comes from deltas_of(pm, name)."""
    holder = pm.deltas[name]
    if not holder.merged:
        fold_deltas(pm, deltas_of(pm, name), +1.0)
        holder.merged = True


def unmerge_with(pm, name: str, deltas_of) -> None:
    holder = pm.deltas[name]
    if holder.merged:
        holder.merged = False                     # first: a merged holder's deltas_of gives nothing
        fold_deltas(pm, deltas_of(pm, name), -1.0)


def remove(pm, name: str, unmerge_fn=None) -> None:
    """delete_adapter: take a merged delta out of the weights (with the method's own unmerge when
    it has one), then drop it and its head copies."""
    if name in pm.deltas:
        (unmerge_fn or unmerge)(pm, name)
    pm._remove_generic(name)


def dense_phase(pm, name: str, params, loss_fn, batches, steps: int, lr: float, desc: str) -> dict:
    """Fine-tune `params` (a [(path, Parameter)] of base weights) densely for `steps`, and return
    {path: theta1}; then put every weight, head copy and requires_grad flag back as it was
    (theta <- theta0, bit-exact). LT-SFT and magnitude selection choose their mask from theta1."""
    from ..train import fit
    delta = delta_of(pm, name)
    flags = pm._grad_flags()
    start = {path: p.data.copy() for path, p in params}
    heads = {id(p): p.data.copy() for p in pm.adapter_parameters(name).values()}
    delta.values.requires_grad = False
    try:
        for _, p in params:
            p.requires_grad = True
        fit(pm, loss_fn, batches, steps=steps, lr=lr, progress=False, desc=desc)
        return {path: p.data for path, p in params}
    finally:
        for path, p in params:
            p.data = start[path]                                            # theta <- theta0
        for p in pm.adapter_parameters(name).values():
            if id(p) in heads:
                p.data = heads[id(p)]
        for p in pm.parameters():
            if id(p) in flags:
                p.requires_grad = flags[id(p)]


# ----------------------------------------------------------------------------- this file's method: a random mask

@dataclass
class RandomMaskConfig:
    method: ClassVar[str] = "random_mask"
    density: float = 0.01                # k / N: the fraction of the maskable entries that train
    seed: int = 0                        # which random mask
    modules_to_save: tuple = ()          # e.g. ("cls_head",): trained densely as a copy

    def __post_init__(self):
        check_density(self.density, "RandomMaskConfig")
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = RandomMaskConfig


def density_option(o) -> dict:
    """{"density": --density} when it was given (a sparse method's from_options), else {}."""
    return {} if getattr(o, "density", None) is None else {"density": o.density}


def from_options(o) -> RandomMaskConfig:
    return RandomMaskConfig(modules_to_save=o.heads, **density_option(o))


def add(pm, name: str, cfg: RandomMaskConfig) -> None:
    new_delta(pm, name, cfg)


def formula(model_cfg, cfg: RandomMaskConfig) -> dict:
    return sparse_formula(model_cfg, cfg.density, cfg.modules_to_save)
