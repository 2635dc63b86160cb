"""Pointwise nonlinearities and the softmax family, each with a hand-written backward.

GELU, softmax and log-softmax are fused: one Function each, backward written out, instead of a
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
    gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.xp
        x2 = x * x                       # products, never x**3 (a float power is ~50x slower)
        u = x2 * 0.044715
        u += 1.0
        u *= x
        u *= _GELU_C                     # u = c (x + 0.044715 x^3)
        t = xp.tanh(u, out=u)            # t = tanh(u), reusing u's buffer
        out = t + 1.0
        out *= x
        out *= 0.5                       # 0.5 x (1 + t)
        ctx.save_for_backward(x, t, x2)
        return out

    @staticmethod
    def backward(ctx, g):
        x, t, x2 = ctx.saved
        # d gelu/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)
        du = x2 * (3 * 0.044715)
        du += 1.0
        du *= _GELU_C                    # du/dx = c (1 + 0.134145 x^2)
        sech2 = t * t
        sech2 -= 1.0
        sech2 *= -0.5                    # 0.5 (1 - t^2)
        du *= sech2
        du *= x                          # 0.5 x (1 - t^2) du/dx
        du += 0.5
        du += 0.5 * t                    # + 0.5 (1 + t)
        du *= g
        return du


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
def gelu(a): return GELU.apply(a)
def softmax(a, axis=-1): return Softmax.apply(a, axis=axis)
def log_softmax(a, axis=-1): return LogSoftmax.apply(a, axis=axis)
