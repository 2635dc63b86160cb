"""Pointwise nonlinearities and the softmax family, each with a hand-written backward.

GELU (tanh and exact erf), softmax and log-softmax are fused: one Function each, backward written out, instead of a
graph of small ops (faster and numerically stable).
"""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = backend.xp.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        # d(e^x)/dx = e^x
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return backend.xp.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        # d(log x)/dx = 1/x
        return g / a


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = backend.xp.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved
        # d(tanh x)/dx = 1 - tanh(x)^2
        return g * (1 - t * t)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        xp = backend.xp
        # sigma(x) = 1 / (1 + e^-x), written as (1 + tanh(x/2)) / 2 to avoid overflow of e^-x
        out = xp.tanh(a * 0.5)
        out += 1
        out *= 0.5
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved
        # d(sigma)/dx = sigma (1 - sigma)
        return g * s * (1 - s)


class ReLU(Function):
    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save_for_backward(mask)
        return a * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        # d(max(0, x))/dx = 1 if x > 0 else 0
        return g * mask


_GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Function):
    """GELU, tanh approximation (GPT-2, BERT):
    gelu(x) = 0.5 x (1 + tanh(u)) = x h,   u = sqrt(2/pi) (x + 0.044715 x^3),   h = (1 + tanh u) / 2.

    The equations, one line each: reference.GELU (minipeft/ops/reference.py). This one computes the
    same in blocks of rows in parallel threads, in place (tests/ops/test_reference.py checks that
    the two agree to rounding)."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.xp
        h, y = xp.empty(x.shape, x.dtype), xp.empty(x.shape, x.dtype)   # C-ordered: rows are views

        def gelu_rows(x, h, y):
            # one pass over the rows per line, in place (few temporaries, no float power)
            xp.multiply(x, x, out=h)     # products, never x**3 (a float power is ~50x slower)
            h *= _GELU_C * 0.044715
            h += _GELU_C
            h *= x                       # u = c (x + 0.044715 x^3)
            xp.tanh(h, out=h)
            h *= 0.5
            h += 0.5                     # h = (1 + tanh u) / 2
            xp.multiply(x, h, out=y)     # gelu(x) = x h

        backend.rows(gelu_rows, *backend.as_rows(x, h, y))   # blocks of rows in parallel threads
        ctx.save_for_backward(x, h)
        return y

    @staticmethod
    def backward(ctx, g):
        x, h = ctx.saved
        xp = backend.xp
        d = xp.empty(h.shape, h.dtype)

        def gelu_grad_rows(x, h, g, d):
            # d gelu/dx = h + x h' = h (1 + 2 x u' (1 - h)),  as h' = u' (1 - tanh^2 u) / 2 = 2 u' h (1 - h),
            # u' = c (1 + 3 * 0.044715 x^2)
            xp.multiply(x, x, out=d)
            d *= 2 * _GELU_C * 3 * 0.044715
            d += 2 * _GELU_C             # 2 u'
            d *= x
            d *= xp.subtract(1.0, h)
            d += 1.0
            d *= h
            d *= g

        backend.rows(gelu_grad_rows, *backend.as_rows(x, h, g, d))
        return d


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELUErf(Function):
    """GELU, exact (BERT, "gelu" in a Hugging Face config): gelu(x) = x Phi(x), with Phi the
    standard normal CDF,  Phi(x) = (1 + erf(x / sqrt 2)) / 2.

    d gelu/dx = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)   (the normal density).
    The tanh form (`GELU`) differs from it by up to 4.7e-4 (tests/ops/test_activations.py)."""

    @staticmethod
    def forward(ctx, x):
        Phi = backend.erf(x * _INV_SQRT2)
        Phi += 1.0
        Phi *= 0.5                                            # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        ctx.save_for_backward(x, Phi)
        return x * Phi                                        # gelu(x) = x Phi(x)

    @staticmethod
    def backward(ctx, g):
        x, Phi = ctx.saved
        phi = backend.xp.exp(-0.5 * x * x) * _INV_SQRT_2PI   # phi(x)
        return g * (Phi + x * phi)                            # d gelu/dx = Phi + x phi


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = backend.xp
        # softmax(x)_i = e^(x_i - m) / sum_j e^(x_j - m), m = max_j x_j (for stability)
        y = x - x.max(axis=axis, keepdims=True)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y, axis)
        return y

    @staticmethod
    def backward(ctx, g):
        y, axis = ctx.saved
        # dL/dx = y * (g - sum_j g_j y_j)
        gy = g * y
        gy -= y * gy.sum(axis=axis, keepdims=True)
        return gy


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = backend.xp
        # log softmax(x)_i = x_i - m - log sum_j e^(x_j - m)
        z = x - x.max(axis=axis, keepdims=True)
        z -= xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(z, axis)
        return z

    @staticmethod
    def backward(ctx, g):
        z, axis = ctx.saved
        # dL/dx = g - softmax(x) * sum_j g_j
        return g - backend.xp.exp(z) * g.sum(axis=axis, keepdims=True)


def exp(a): return Exp.apply(a)
def log(a): return Log.apply(a)
def tanh(a): return Tanh.apply(a)
def sigmoid(a): return Sigmoid.apply(a)
def relu(a): return ReLU.apply(a)
def gelu(a, approximate: str = "tanh"):
    """GELU: approximate="tanh" (GPT-2, minipeft's shipped models) or "none" (the exact erf form, BERT)."""
    if approximate == "tanh":
        return GELU.apply(a)
    if approximate == "none":
        return GELUErf.apply(a)
    raise ValueError(f"gelu(approximate={approximate!r}): expected 'tanh' or 'none' (exact erf)")
def softmax(a, axis=-1): return Softmax.apply(a, axis=axis)
def log_softmax(a, axis=-1): return LogSoftmax.apply(a, axis=axis)
