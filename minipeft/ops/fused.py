"""Fused ops of the transformer: linear, layer norm, softmax cross-entropy, embedding lookup,
dropout, masked fill and scaled-dot-product attention (with prepended key/value rows).

Fused means one Function with its backward written out, instead of a graph of small ops:
fewer temporaries, and numerically stable. Each backward computes only what
`ctx.needs_input_grad` asks for: a frozen weight costs no weight-gradient matmul.
"""
from __future__ import annotations

import math

from .. import backend
from ..autograd import Function, Tensor
from .basic import unbroadcast


# ----------------------------------------------------------------------------- linear

class Linear(Function):
    """y = x W^T + b.   x: (..., in), W: (out, in) as in PyTorch, b: (out,) or None -> y: (..., out)."""

    @staticmethod
    def forward(ctx, x, w, b=None):
        x2 = x.reshape(-1, x.shape[-1])                     # (N, in)
        y = backend.matmul(x2, w.T, bias=b)                 # (N, out), + b in the same pass over rows
        ctx.save_for_backward(x2, w, x.shape)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, g):
        x2, w, xshape = ctx.saved
        need_x, need_w, need_b = (tuple(ctx.needs_input_grad) + (False,))[:3]
        g2 = g.reshape(-1, g.shape[-1])                     # (N, out)
        # dL/dx = G W          (N, out) @ (out, in)
        gx = backend.matmul(g2, w).reshape(xshape) if need_x else None
        # dL/dW = G^T x        (out, N) @ (N, in): skipped for a frozen weight
        gw = backend.matmul(g2.T, x2) if need_w else None
        # dL/db = sum_n G_n
        gb = g2.sum(axis=0) if need_b else None
        return gx, gw, gb


def linear(x, w, b=None):
    return Linear.apply(x, w, b) if b is not None else Linear.apply(x, w)


# ----------------------------------------------------------------------------- layer norm

class LayerNorm(Function):
    """y = (x - mu) / sqrt(var + eps) * w + b over the last axis.  x: (..., d), w, b: (d,).

    The equations, one line each: reference.LayerNorm (minipeft/ops/reference.py). This one
    computes the same in blocks of rows in parallel threads, in place (tests/ops/test_reference.py
    checks that the two agree to rounding)."""

    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        xp = backend.xp
        xhat = xp.empty(x.shape, x.dtype)
        y = xp.empty(x.shape, xp.result_type(x, w, b))      # as x * w + b would be
        rstd = xp.empty(x.shape[:-1] + (1,), x.dtype)     # 1/sigma, (..., 1)

        def layer_norm_rows(x, xhat, rstd, y):
            xp.subtract(x, x.mean(axis=-1, keepdims=True), out=xhat)                     # x - mu
            var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] * (1.0 / x.shape[-1])  # no (x-mu)^2 temporary
            xp.divide(1.0, xp.sqrt(var + eps), out=rstd)
            xhat *= rstd                                    # (x - mu)/sigma, in place
            xp.multiply(xhat, w, out=y)
            y += b

        backend.rows(layer_norm_rows, *backend.as_rows(x, xhat, rstd, y))   # rows in parallel threads
        ctx.save_for_backward(xhat, rstd, w)
        return y

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        xp, d = backend.xp, g.shape[-1]
        g2, xhat2 = g.reshape(-1, d), xhat.reshape(-1, d)   # (N, d)
        gw = xp.einsum("ni,ni->i", g2, xhat2) if need_w else None  # dL/dw = sum g * xhat (no temporary)
        gb = g2.sum(axis=0) if need_b else None                    # dL/db = sum g
        gx = None
        if need_x:
            gx = xp.empty(xhat.shape, g.dtype)

            def layer_norm_grad_rows(g, xhat, rstd, gx):
                # dL/dx = (1/sigma) (gh - mean(gh) - xhat * mean(gh * xhat)),   gh = g * w
                gh = g * w
                mean_gh_xhat = xp.einsum("...i,...i->...", gh, xhat)[..., None] * (1.0 / d)  # (n, 1)
                xp.multiply(xhat, mean_gh_xhat, out=gx)
                gx += gh.mean(axis=-1, keepdims=True)
                xp.subtract(gh, gx, out=gx)
                gx *= rstd

            backend.rows(layer_norm_grad_rows, *backend.as_rows(g, xhat, rstd, gx))
        return gx, gw, gb


def layer_norm(x, w, b, eps=1e-5):
    return LayerNorm.apply(x, w, b, eps=eps)


# ----------------------------------------------------------------------------- softmax cross-entropy

class CrossEntropy(Function):
    """Mean over non-ignored rows of -log softmax(logits)[target].

    logits: (N, C) float; targets: (N,) integers, rows with target == ignore_index do not count.

    The equations, one line each: reference.CrossEntropy (minipeft/ops/reference.py). This one
    computes the same in blocks of rows in parallel threads and reuses the softmax buffer for the
    gradient (tests/ops/test_reference.py checks that the two agree to rounding).
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100):
        xp = backend.xp
        keep = targets != ignore_index                       # (N,)
        # kept rows, at least 1, as a device scalar of the logits' dtype: int(keep.sum()) would
        # make the CPU wait for the GPU here, in the middle of every training step
        n = xp.maximum(keep.sum(), 1).astype(logits.dtype)
        safe_t = xp.where(keep, targets, 0)
        p = xp.empty(logits.shape, logits.dtype)
        z_t = xp.empty((logits.shape[0], 1), logits.dtype)
        s = xp.empty((logits.shape[0], 1), logits.dtype)

        def exp_rows(x, t, p, z_t, s):
            # -log softmax(x)[t] = log sum_j e^(z_j) - z_t,  z = x - max(x)   (stable)
            xp.subtract(x, x.max(axis=1, keepdims=True), out=p)
            z_t[:] = xp.take_along_axis(p, t, axis=1)
            xp.exp(p, out=p)
            p.sum(axis=1, keepdims=True, out=s)

        backend.rows(exp_rows, xp.ascontiguousarray(logits), safe_t[:, None], p, z_t, s)   # rows in parallel threads
        z_t, s = z_t[:, 0], s[:, 0]                          # (N,)
        loss = ((xp.log(s) - z_t) * keep).sum() / n
        # keep e^z and its row sums: backward normalises while it scales (one pass fewer here)
        ctx.save_for_backward(p, s, safe_t, keep, n)
        return xp.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        if ctx.saved is None:
            raise RuntimeError("cross_entropy: backward ran twice through the same loss (retain_graph=True); "
                               "its saved softmax is reused in place by the first backward. Compute the "
                               "loss again for a second backward.")
        e, s, t, keep, n = ctx.saved
        xp = backend.xp
        # dL/dlogits_i = (softmax_i - onehot(t_i)) w_i,  softmax_i = e_i / s_i,  w_i = g/n (kept rows) or 0
        w = (keep * (g / n)).astype(e.dtype)                # (N,)
        grad = e                                            # reuse the saved buffer (backward runs once)

        def scale_rows(grad, f):
            grad *= f

        backend.rows(scale_rows, grad, (w / s)[:, None])
        grad[xp.arange(grad.shape[0]), t] -= w
        ctx.saved = None
        return grad, None


def cross_entropy(logits, targets, ignore_index=-100):
    """logits: Tensor (N, C) or (B, T, C); targets: int array / Tensor of the leading shape."""
    return _apply_cross_entropy(CrossEntropy, logits, targets, ignore_index)


def _apply_cross_entropy(fn, logits, targets, ignore_index):
    """The arguments of cross_entropy as `fn` (this file's CrossEntropy or reference.py's) takes them."""
    if isinstance(targets, Tensor):
        targets = targets.data
    targets = backend.to_device(targets)
    if logits.ndim > 2:
        c = logits.shape[-1]
        logits = logits.reshape(-1, c)
        targets = targets.reshape(-1)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits (N, C) and targets (N,), got "
                         f"{logits.shape} and {targets.shape}; reshape with .reshape(-1, C)")
    C = logits.shape[1]
    bad = ((targets < 0) | (targets >= C)) & (targets != ignore_index)       # one reduction (a GPU sync)
    if targets.size and bool(bad.any()):
        first = int(targets[bad][0])
        raise ValueError(f"cross_entropy: target {first} is not a class of the {C} logits (expected 0 .. {C - 1}, "
                         f"or ignore_index={ignore_index} for a position that does not count); the targets "
                         f"and the model's vocabulary (or n_labels) do not match")
    return fn.apply(logits, targets, ignore_index=ignore_index)


# ----------------------------------------------------------------------------- embedding lookup

class Embedding(Function):
    """out[..., :] = W[ids[...], :].   ids: integer array (...), W: (V, d) -> (..., d)."""

    @staticmethod
    def forward(ctx, ids, w):
        ctx.save_for_backward(ids, w.shape, w.dtype)
        return w[ids]

    @staticmethod
    def backward(ctx, g):
        ids, shape, dtype = ctx.saved
        # dL/dW[v] = sum of g at every position whose id is v (scatter-add: ids repeat)
        gw = backend.xp.zeros(shape, dtype=dtype)
        backend.scatter_add(gw, ids.reshape(-1), g.reshape(-1, shape[1]))
        return None, gw


def embedding(ids, w):
    if isinstance(ids, Tensor):
        ids = ids.data
    return Embedding.apply(ids, w)


# ----------------------------------------------------------------------------- dropout, masked fill

class Dropout(Function):
    @staticmethod
    def forward(ctx, x, p):
        # keep each entry with probability 1-p and scale by 1/(1-p), so E[out] = x
        mask = backend.rng.device_uniform(x.shape, dtype=x.dtype) >= p
        scale = (mask * (1.0 / (1.0 - p))).astype(x.dtype)
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, g):
        (scale,) = ctx.saved
        # d(x * m / (1-p))/dx = m / (1-p)
        return g * scale, None


def dropout(x, p: float, training: bool = True):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p)


class MaskedFill(Function):
    @staticmethod
    def forward(ctx, x, mask, value):
        ctx.save_for_backward(mask, x.shape)
        return backend.xp.where(mask, x.dtype.type(value), x)

    @staticmethod
    def backward(ctx, g):
        mask, shape = ctx.saved
        # filled positions are constants: their gradient is 0 (summed back if mask broadcast x up)
        return unbroadcast(backend.xp.where(mask, 0, g).astype(g.dtype), shape), None, None


def masked_fill(x, mask, value):
    """Where mask (broadcastable bool) is True, the output is `value`; elsewhere x."""
    if isinstance(mask, Tensor):
        mask = mask.data
    return MaskedFill.apply(x, mask, value)


# ----------------------------------------------------------------------------- attention

_NEG = -1e9  # a finite "minus infinity": a row with every key masked gives uniform weights, not NaN


def visible(B, Tq, Tk, P, causal, key_mask, prefix_start):
    """Which keys each query sees: bool, broadcastable to (B, 1, Tq, P + Tk), the P prefix rows
    first (kept small: (1, 1, Tq, Tk) for a causal mask alone).

    Query i sits at absolute position pos_i = Tk - Tq + i (the queries are the last Tq positions;
    prefix rows take no position). It sees
        key j:         j <= pos_i (when causal)  and  key_mask[b, j]
        prefix row p:  pos_i >= prefix_start[b, p]        (always when prefix_start is None)
    """
    xp = backend.xp
    pos = (xp.arange(Tq) + (Tk - Tq))[:, None]                              # (Tq, 1) query positions
    see = (xp.arange(Tk) <= pos)[None] if causal else xp.ones((1, 1, Tk), bool)   # (1, Tq or 1, Tk)
    if key_mask is not None:
        see = see & key_mask.astype(bool)[:, None, :]                       # (B, Tq or 1, Tk)
    if P:
        start = xp.zeros((1, P), int) if prefix_start is None else prefix_start     # (B or 1, P)
        see_prefix = pos[None] >= start[:, None, :]                         # (B or 1, Tq, P)
        lead = (max(see.shape[0], see_prefix.shape[0]), Tq)
        see = xp.concatenate([xp.broadcast_to(see_prefix, lead + (P,)), xp.broadcast_to(see, lead + (Tk,))],
                             axis=-1)                                       # (B or 1, Tq, P + Tk)
    return see[:, None]                                                     # (B or 1, 1, Tq or 1, P + Tk)


class Attention(Function):
    """Scaled dot-product attention over P prepended key/value rows and T_k ordinary ones.

        K' = [K_prefix ; K],  V' = [V_prefix ; V]             (B, H, P + Tk, D)
        S  = Q K'^T / sqrt(D) + mask                           (B, H, Tq, P + Tk)
        A  = softmax(S),  out = A V'                           (B, H, Tq, D)

    q: (B, H, Tq, D); k, v: (B, H, Tk, D); k_prefix, v_prefix: (B or 1, H, P, D) or None.
    causal: query i (at absolute position Tk - Tq + i) sees ordinary keys j <= Tk - Tq + i;
            aligned to the end, so it also works with a key/value cache (Tq < Tk).
    key_mask: (B, Tk) bool/0-1, False/0 = padding key (never attended). Prefix rows are always
            visible: they are the learned "virtual tokens" of prefix tuning.
    prefix_start: None, or (B or 1, P) integers: the query at absolute position i sees prefix row p
            only when i >= prefix_start[b, p] (prefix rows take no position themselves). 0 = always
            visible (a prefix); the source length = an infix between source and target (Li & Liang
            Table 4); a huge value = never (a padding row when routed prefixes differ in length).

    The equations and the backward, one line each: reference.Attention (minipeft/ops/reference.py;
    both take their masks from `visible` above). This one computes the same in blocks of the batch
    (or heads) in parallel threads, in place, with a mask only when some key is blocked
    (tests/ops/test_reference.py checks that the two agree to rounding).
    """

    @staticmethod
    def forward(ctx, q, k, v, k_prefix=None, v_prefix=None, causal=True, key_mask=None, prefix_start=None):
        xp = backend.xp
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        P = 0 if k_prefix is None else k_prefix.shape[2]
        if P:
            kp = xp.broadcast_to(k_prefix, (B, H, P, D))
            vp = xp.broadcast_to(v_prefix, (B, H, P, D))
            k = xp.concatenate([kp, k], axis=2)
            v = xp.concatenate([vp, v], axis=2)
        scale = 1.0 / math.sqrt(D)
        mask = None                                              # True = blocked; None: nothing is
        grad_scale = scale                                       # dS/d(QK'^T), per row
        if causal or key_mask is not None or (P and prefix_start is not None):
            mask = ~visible(B, Tq, Tk, P, causal, key_mask, prefix_start)   # (B|1, 1, Tq|1, P+Tk)
            # a row with every key blocked has constant scores: nothing flows back through them
            grad_scale = (~mask.all(axis=-1, keepdims=True)) * q.dtype.type(scale)  # (B|1, 1, Tq|1, 1)
        grad_scale = xp.broadcast_to(xp.asarray(grad_scale, dtype=q.dtype), (B, H, Tq, 1))  # per query row
        masks = () if mask is None else (xp.broadcast_to(mask, (B, H) + mask.shape[2:]),)
        neg = q.dtype.type(_NEG)

        def attend_rows(q, k, v, s, out, *mask):                # a block of the batch (or heads), in place
            if Tq == 1:   # one new token (decoding): S^T = K' q^T, a matrix-vector product, no copy of K'
                xp.matmul(k, (q * scale).swapaxes(-1, -2), out=s.swapaxes(-1, -2))
            else:         # K'^T copied contiguous: OpenBLAS multiplies by a transposed (D, T) operand ~2x slower
                kt = xp.ascontiguousarray(k.swapaxes(-1, -2))   # (b, H, D, P+Tk)
                xp.matmul(q * scale, kt, out=s)                  # S = Q K'^T / sqrt(D), scaled on the small side
            if mask:
                xp.copyto(s, neg, where=mask[0])                 # blocked keys: S = -1e9
            s -= s.max(axis=-1, keepdims=True)                   # A = softmax(S) along the keys
            xp.exp(s, out=s)
            s *= 1.0 / s.sum(axis=-1, keepdims=True)            # one division per row, not per entry
            xp.matmul(s, v, out=out)                             # out = A V'

        dtype = xp.result_type(q, k, v)
        s = xp.empty((B, H, Tq, P + Tk), dtype)                  # (B, H, Tq, P+Tk): S, then A
        out = xp.empty((B, H, Tq, D), dtype)
        backend.stats["matmul"] += 2                             # Q K'^T and A V', one block per thread:
        backend.rows(attend_rows, *_blocks_of(q, k, v, s, out, *masks))   # blocks of the batch (or heads)
        ctx.save_for_backward(q, k, v, s, grad_scale, P,
                              None if k_prefix is None else k_prefix.shape)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, a, scale, P, pshape = ctx.saved
        need = tuple(ctx.needs_input_grad) + (False,) * (5 - len(ctx.needs_input_grad))
        need_q, need_k, need_v, need_kp, need_vp = need[:5]
        xp = backend.xp
        # the gradients someone needs, each (B, H, ., D); dL/dK' and dL/dV' include the prefix rows
        grads = {name: xp.empty(x.shape, g.dtype) for name, x, needed in
                 (("q", q, need_q), ("k", k, need_k or need_kp), ("v", v, need_v or need_vp)) if needed}

        def attend_grad_rows(g, q, k, v, a, scale, *blocks):    # a block of the batch (or heads)
            out = dict(zip(grads, blocks))
            if "v" in out:
                xp.matmul(a.swapaxes(-1, -2), g, out=out["v"])    # dL/dV' = A^T G
            if "q" in out or "k" in out:
                # dL/dA = G V'^T;  dL/dS = A * (dL/dA - sum_j A_j dL/dA_j)  (softmax backward)
                vt = xp.ascontiguousarray(v.swapaxes(-1, -2))      # (b, H, D, P+Tk), see forward
                gs = xp.matmul(g, vt)                              # (b, H, Tq, P+Tk): dL/dA, then dL/dS
                gs -= xp.einsum("...j,...j->...", gs, a)[..., None]   # row dot products
                gs *= a
                # through S = (Q scale) K'^T: the scale (0 on fully masked rows) goes on the small side
                if "q" in out:
                    xp.matmul(gs, k, out=out["q"])                 # dL/dQ = dL/dS K' scale
                    out["q"] *= scale
                if "k" in out:
                    xp.matmul(gs.swapaxes(-1, -2), q * scale, out=out["k"])   # dL/dK' = dL/dS^T Q scale

        backend.stats["matmul"] += len(grads) + ("q" in grads or "k" in grads)   # one per gradient, + G V'^T
        backend.rows(attend_grad_rows, *_blocks_of(g, q, k, v, a, scale, *grads.values()))  # blocks in threads
        gq = grads.get("q")
        gk = grads["k"][:, :, P:] if need_k else None
        gkp = grads["k"][:, :, :P] if need_kp else None
        gv = grads["v"][:, :, P:] if need_v else None
        gvp = grads["v"][:, :, :P] if need_vp else None
        # a prefix shared by the whole batch (leading dim 1) sums its gradient over the batch
        if gkp is not None and pshape[0] == 1:
            gkp = gkp.sum(axis=0, keepdims=True)
        if gvp is not None and pshape[0] == 1:
            gvp = gvp.sum(axis=0, keepdims=True)
        return gq, gk, gv, gkp, gvp


def _blocks_of(*arrays):
    """(B, H, ...) arrays as `backend.rows` should cut them: by the batch, or by the heads (views
    with H first) when the batch is smaller than the thread count (B = 1: one prompt, decoding).
    On CuPy nothing is cut, and the arrays stay as they are (a GPU multiplies stacks faster when
    their batch axes keep their memory order)."""
    B, H = arrays[0].shape[:2]
    if backend.name != "numpy" or B >= backend.get_threads() or H <= B:
        return arrays
    return [a.swapaxes(0, 1) for a in arrays]


def attention(q, k, v, k_prefix=None, v_prefix=None, causal=True, key_mask=None, prefix_start=None):
    return _apply_attention(Attention, q, k, v, k_prefix, v_prefix, causal, key_mask, prefix_start)


def _apply_attention(fn, q, k, v, k_prefix, v_prefix, causal, key_mask, prefix_start):
    """The arguments of attention, checked and moved, as `fn` (Attention here or in reference.py) takes them."""
    if isinstance(key_mask, Tensor):
        key_mask = key_mask.data
    if key_mask is not None:
        key_mask = backend.to_device(key_mask)
    if (k_prefix is None) != (v_prefix is None):
        raise ValueError("attention: give both k_prefix and v_prefix, or neither")
    if k_prefix is None:
        return fn.apply(q, k, v, causal=causal, key_mask=key_mask)
    if prefix_start is not None:
        prefix_start = backend.to_device(prefix_start)
        if prefix_start.ndim != 2 or prefix_start.shape[1] != k_prefix.shape[2]:
            raise ValueError(f"attention: prefix_start has shape {tuple(prefix_start.shape)}; expected "
                             f"(B or 1, P={k_prefix.shape[2]}), one start position per prefix row")
    return fn.apply(q, k, v, k_prefix, v_prefix, causal=causal, key_mask=key_mask, prefix_start=prefix_start)
