"""Central-difference gradient checking in float64, for tests and for students' own ops.

    from minipeft import tensor, ops
    from minipeft.gradcheck import gradcheck
    x = tensor(rng.normal(size=(3, 4)), requires_grad=True, dtype="float64")
    gradcheck(ops.gelu, x)                    # raises GradcheckError with the worst element

How it works (CS231n style): draw a random upstream gradient G of the output's shape and check
the scalar L(x) = sum(f(x) * G). Backward gives dL/dx analytically; the numerical estimate is
    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h.
A random G checks every output entry's contribution at once (a G of ones can hide errors that
cancel). The check compares with rel_error = |a - n| / max(1e-8, |a| + |n|) and an absolute
floor, and reports the worst element: where, expected (numerical), got (analytic), relative error.
"""
from __future__ import annotations

from . import backend
from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def _scalar_objective(f, inputs, upstream):
    with no_grad():
        out = f(*inputs)
    return float((out.data * upstream).sum())


def gradcheck(f, *inputs: Tensor, h: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
              max_per_input: int | None = None, seed: int = 0, name: str = "") -> float:
    """Check the analytic gradient of f w.r.t. every input with requires_grad against central
    differences. Inputs must be float64. Returns the worst relative error; raises GradcheckError.

    max_per_input: check at most this many randomly chosen elements of each input (None: all).
    An element passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
    """
    hostnp = backend.host()
    targets = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not targets:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for t in targets:
        if t.dtype != hostnp.float64:
            raise ValueError(f"gradcheck needs float64 inputs (float32 differences are too noisy), got "
                             f"{t.dtype}; create them with dtype='float64' or inside "
                             f"backend.default_dtype_as('float64')")
    for t in targets:
        # the check perturbs each input through a flat view, which only a contiguous array has
        # (a transposed input would be perturbed in a copy, and every numerical gradient read 0)
        t.data = backend.xp.ascontiguousarray(t.data)
    gen = hostnp.random.default_rng(seed)
    out = f(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: f must return a Tensor, got {type(out).__name__}")
    upstream = backend.to_device(gen.normal(size=out.shape).astype(hostnp.float64))
    for t in targets:
        t.grad = None
    out.backward(upstream)
    worst = 0.0
    label = f"{name}: " if name else ""
    for k, t in enumerate(targets):
        analytic = backend.to_numpy(t.grad) if t.grad is not None else hostnp.zeros(t.shape)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        n = flat.size
        idx = hostnp.arange(n) if max_per_input is None or n <= max_per_input else \
            gen.choice(n, size=max_per_input, replace=False)
        for i in idx:
            old = flat[i].item()
            flat[i] = old + h
            plus = _scalar_objective(f, inputs, upstream)
            flat[i] = old - h
            minus = _scalar_objective(f, inputs, upstream)
            flat[i] = old
            numeric = (plus - minus) / (2 * h)
            a = float(analytic.reshape(-1)[i])
            rel = abs(a - numeric) / max(1e-8, abs(a) + abs(numeric))
            ok = abs(a - numeric) <= atol + rtol * max(abs(a), abs(numeric))
            if not ok:
                where = tuple(int(j) for j in hostnp.unravel_index(i, t.shape))
                tname = t.name or f"input {k}"
                raise GradcheckError(f"{label}gradient of {tname} {tuple(t.shape)} wrong at element {where}: "
                                     f"expected (numerical) {numeric:.10g}, got (analytic) {a:.10g}, "
                                     f"relative error {rel:.3g}")
            if abs(a) + abs(numeric) > 1e-6:
                worst = max(worst, rel)
    return worst
