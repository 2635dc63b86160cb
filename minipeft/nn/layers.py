"""Basic layers: Linear, Embedding, LayerNorm, Dropout. Initialisation follows GPT-2:
weights N(0, 0.02), biases 0, LayerNorm gain 1 (small initial logits, no denormal floats)."""
from __future__ import annotations

from .. import backend, ops
from .module import Module, Parameter

INIT_STD = 0.02


class Linear(Module):
    """y = x W^T + b.   x: (..., n_in) -> y: (..., n_out);  W: (n_out, n_in), b: (n_out,)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        self.n_in, self.n_out = n_in, n_out
        self.weight = Parameter(backend.rng.normal((n_out, n_in), std=INIT_STD))
        self.bias = Parameter(backend.xp.zeros(n_out, dtype=backend.default_dtype())) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.n_in} -> {self.n_out}, bias={self.bias is not None}"


class Embedding(Module):
    """ids (...) integers in [0, n) -> vectors (..., d);  W: (n, d)."""

    def __init__(self, n: int, d: int):
        self.n, self.d = n, d
        self.weight = Parameter(backend.rng.normal((n, d), std=INIT_STD))

    def forward(self, ids):
        return ops.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.n}, {self.d}"


class LayerNorm(Module):
    """Normalise the last axis to zero mean and unit variance, then scale and shift. x: (..., d)."""

    def __init__(self, d: int, eps: float = 1e-5):
        self.d, self.eps = d, eps
        self.weight = Parameter(backend.xp.ones(d, dtype=backend.default_dtype()))
        self.bias = Parameter(backend.xp.zeros(d, dtype=backend.default_dtype()))

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return f"{self.d}, eps={self.eps}"


class Dropout(Module):
    """Zero each entry with probability p in training (scaling the rest by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout(p={p}): p must be in [0, 1)")
        self.p = p

    def forward(self, x):
        return ops.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
