"""The four big ops written as their equations: GELU (tanh), layer norm, softmax cross-entropy and
attention. Read these, check these, and write these in the assignments.

Each forward is a few array expressions, each under the equation it computes; each backward is
the derivative lines of its docstring, one line of code each. They are Functions like any other,
and `reference.gelu`, `reference.layer_norm`, `reference.cross_entropy` and `reference.attention`
take the same arguments as the `ops` functions of the same names.

The versions that run in training (activations.GELU, fused.LayerNorm, fused.CrossEntropy,
fused.Attention) compute the same numbers in blocks of rows, in parallel threads, in place in
reused buffers. On two cores they measured 1.7-2.7x faster than these (forward + backward,
float32, training shapes), and 1.25-1.9x faster than these same expressions run in blocks of rows
on the same threads (forward), so they stay the ones that run. tests/ops/test_reference.py
asserts that the two agree to rounding (the same equations, the operations in another order) on
random inputs, masks and prefixes included, in float32 and float64; the float64 gradient checks
there target these versions.
"""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function
from .fused import _NEG, _apply_attention, _apply_cross_entropy, visible

_C = math.sqrt(2.0 / math.pi)


def mean(a):
    """The mean over the last axis, kept as an axis of 1: (..., d) -> (..., 1). (Of arrays,
    inside a Function; ops.mean is the differentiable one, of Tensors.)"""
    return a.mean(axis=-1, keepdims=True)


def rowsum(a):
    """The sum over the last axis, kept as an axis of 1: (..., d) -> (..., 1)."""
    return a.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- GELU (tanh)

class GELU(Function):
    """gelu(x) = 0.5 x (1 + tanh u) = x h   (the tanh approximation of GPT-2 and BERT)

        u   = sqrt(2/pi) (x + 0.044715 x^3)
        h   = (1 + tanh u) / 2
    backward:
        u'  = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        h'  = (1 - tanh^2 u) u' / 2 = 2 h (1 - h) u'
        dx  = g (h + x h')
    x: any shape.
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.xp
        # u = sqrt(2/pi) (x + 0.044715 x^3)        (products: x**3 is a slow float power)
        u = _C * (x + 0.044715 * x * x * x)
        # h = (1 + tanh u) / 2
        h = 0.5 * (1.0 + xp.tanh(u))
        ctx.save_for_backward(x, h)
        # gelu(x) = x h
        return x * h

    @staticmethod
    def backward(ctx, g):
        x, h = ctx.saved
        # BEGIN SOLUTION gelu_backward
        du = _C * (1.0 + 3 * 0.044715 * x * x)      # u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        dh = 2.0 * h * (1.0 - h) * du                # h' = 2 h (1 - h) u'
        return g * (h + x * dh)                      # dx = g (h + x h')
        # END SOLUTION


def gelu(x):
    return GELU.apply(x)


# ----------------------------------------------------------------------------- layer norm

class LayerNorm(Function):
    """y = xhat w + b,  xhat = (x - mu) / sigma, over the last axis.

        mu    = mean(x),  sigma = sqrt(mean((x - mu)^2) + eps)
    backward (sums over every row; gh = g w):
        db    = sum g
        dw    = sum g xhat
        dx    = (gh - mean(gh) - xhat mean(gh xhat)) / sigma
    x: (..., d); w, b: (d,).
    """

    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        xp = backend.xp
        # mu = mean(x)                                           (..., 1)
        mu = mean(x)
        # var = mean((x - mu)^2)                                 (..., 1)
        var = mean((x - mu) * (x - mu))
        # 1/sigma = 1 / sqrt(var + eps)                          (..., 1)
        rstd = 1.0 / xp.sqrt(var + eps)
        # xhat = (x - mu) / sigma                                (..., d)
        xhat = (x - mu) * rstd
        ctx.save_for_backward(xhat, rstd, w)
        # y = xhat w + b                                         (..., d)
        return xhat * w + b

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        rows = tuple(range(g.ndim - 1))                          # every axis but the last
        # BEGIN SOLUTION layer_norm_backward
        gh = g * w                                               # gh = g w         (..., d)
        db = g.sum(axis=rows) if need_b else None                # db = sum g
        dw = (g * xhat).sum(axis=rows) if need_w else None       # dw = sum g xhat
        # dx = (gh - mean(gh) - xhat mean(gh xhat)) / sigma
        dx = (gh - mean(gh) - xhat * mean(gh * xhat)) * rstd if need_x else None
        # END SOLUTION
        return dx, dw, db


def layer_norm(x, w, b, eps=1e-5):
    return LayerNorm.apply(x, w, b, eps=eps)


# ----------------------------------------------------------------------------- softmax cross-entropy

class CrossEntropy(Function):
    """L = -(1/n) sum_i keep_i log softmax(x_i)[t_i],  n = max(sum_i keep_i, 1)

        keep_i = (t_i != ignore_index)
        log softmax(x)_c = z_c - log sum_j e^(z_j),  z = x - max(x)      (stable)
    backward:
        dx_i = (softmax(x_i) - onehot(t_i)) keep_i g / n
    logits x: (N, C); targets t: (N,) integers.
    """

    @staticmethod
    def forward(ctx, x, t, ignore_index=-100):
        xp = backend.xp
        N, C = x.shape
        keep = t != ignore_index                                 # (N,) rows that count
        n = max(int(keep.sum()), 1)                              # n = max(sum keep, 1)  (int(): waits for a GPU)
        t = xp.where(keep, t, 0)                                 # a valid class on ignored rows (they count 0)
        # z = x - max(x)                                                     (N, C)
        z = x - x.max(axis=1, keepdims=True)
        # log softmax(x) = z - log sum_j e^(z_j)                             (N, C)
        logp = z - xp.log(rowsum(xp.exp(z)))
        # L = -(1/n) sum_i keep_i log softmax(x_i)[t_i]
        loss = -(logp[xp.arange(N), t] * keep).sum() / n
        ctx.save_for_backward(xp.exp(logp), t, keep, n)
        return xp.asarray(loss, dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        p, t, keep, n = ctx.saved
        # BEGIN SOLUTION cross_entropy_backward
        onehot = t[:, None] == backend.xp.arange(p.shape[1])     # (N, C) bool
        # dx_i = (softmax(x_i) - onehot(t_i)) keep_i g / n
        return (p - onehot) * (keep * g / n)[:, None], None
        # END SOLUTION


def cross_entropy(logits, targets, ignore_index=-100):
    """As ops.cross_entropy: logits (N, C) or (B, T, C), targets of the leading shape."""
    return _apply_cross_entropy(CrossEntropy, logits, targets, ignore_index)


# ----------------------------------------------------------------------------- attention

class Attention(Function):
    """out = A V',  A = softmax(S),  S = Q K'^T s + mask,  s = 1 / sqrt(D)

        K' = [K_prefix ; K],  V' = [V_prefix ; V]         (B, H, P + Tk, D)
        mask = 0 where a query sees a key, -1e9 where not (fused.visible)
    backward (G = dL/d out):
        dV' = A^T G
        dA  = G V'^T
        dS  = A (dA - rowsum(dA A))                (0 where masked: S is a constant there)
        dQ  = dS K' s
        dK' = dS^T Q s
    dK, dV are the last Tk rows of dK', dV'; dK_prefix, dV_prefix the first P (summed over the
    batch when one prefix is shared by all, leading dim 1). Arguments as ops.attention.
    """

    @staticmethod
    def forward(ctx, q, k, v, k_prefix=None, v_prefix=None, causal=True, key_mask=None, prefix_start=None):
        xp = backend.xp
        B, H, Tq, D = q.shape
        Tk, P = k.shape[2], 0 if k_prefix is None else k_prefix.shape[2]
        if P:
            # BEGIN SOLUTION prefix_attention
            # K' = [K_prefix ; K],  V' = [V_prefix ; V]                      (B, H, P + Tk, D)
            k = xp.concatenate([xp.broadcast_to(k_prefix, (B, H, P, D)), k], axis=2)
            v = xp.concatenate([xp.broadcast_to(v_prefix, (B, H, P, D)), v], axis=2)
            # END SOLUTION
        s = 1.0 / math.sqrt(D)
        seen = visible(B, Tq, Tk, P, causal, key_mask, prefix_start)       # (B|1, 1, Tq|1, P + Tk)
        # S = Q K'^T s + mask                                                (B, H, Tq, P + Tk)
        S = xp.where(seen, (q @ k.swapaxes(-1, -2)) * s, _NEG)
        # A = softmax(S) along the keys                                      (B, H, Tq, P + Tk)
        E = xp.exp(S - S.max(axis=-1, keepdims=True))
        A = E / rowsum(E)
        ctx.save_for_backward(q, k, v, A, seen, s, P, None if k_prefix is None else k_prefix.shape[0])
        # out = A V'                                                         (B, H, Tq, D)
        return A @ v

    @staticmethod
    def backward(ctx, G):
        q, k, v, A, seen, s, P, prefix_batch = ctx.saved
        need_q, need_k, need_v, need_kp, need_vp = (tuple(ctx.needs_input_grad) + (False,) * 5)[:5]
        need_dk, need_dv = need_k or need_kp, need_v or need_vp        # dK', dV' hold K, V and the prefix
        # BEGIN SOLUTION attention_backward
        dv = A.swapaxes(-1, -2) @ G if need_dv else None                # dV' = A^T G
        if need_q or need_dk:
            dA = G @ v.swapaxes(-1, -2)                                 # dA  = G V'^T
            dS = A * (dA - rowsum(dA * A))                              # dS  = A (dA - rowsum(dA A))
            dS = backend.xp.where(seen, dS, 0.0)                        # (0 where masked: S is constant there)
        dq = dS @ k * s if need_q else None                             # dQ  = dS K' s
        dk = dS.swapaxes(-1, -2) @ q * s if need_dk else None           # dK' = dS^T Q s
        # END SOLUTION
        gk, gkp = _split(dk, P, prefix_batch)
        gv, gvp = _split(dv, P, prefix_batch)
        return (dq, gk if need_k else None, gv if need_v else None,
                gkp if need_kp else None, gvp if need_vp else None)


def _split(d, P, prefix_batch):
    """dK' (or dV') -> (dK, dK_prefix): the last Tk rows and the first P. A prefix shared by the
    whole batch (leading dim 1) gets the sum over the batch."""
    if d is None:
        return None, None
    if not P:
        return d, None
    # BEGIN SOLUTION prefix_gradient
    return d[:, :, P:], d[:, :, :P].sum(axis=0, keepdims=True) if prefix_batch == 1 else d[:, :, :P]
    # END SOLUTION


def attention(q, k, v, k_prefix=None, v_prefix=None, causal=True, key_mask=None, prefix_start=None):
    """As ops.attention (the same arguments, checks and errors)."""
    return _apply_attention(Attention, q, k, v, k_prefix, v_prefix, causal, key_mask, prefix_start)
