"""Arithmetic with broadcasting, matmul, reductions and shape ops.

Each op is a Function: `forward(ctx, ...)` on raw arrays, `backward(ctx, g)` returning one
gradient per positional input (None where `ctx.needs_input_grad` says nobody needs it).
The derivative sits in a one-line comment above the code that implements it.
Shapes: g always has the shape of the forward output.
"""
from __future__ import annotations

from .. import backend
from ..autograd import Function, Tensor


def unbroadcast(g, shape):
    """Sum g over the axes that broadcasting expanded, so that the result has `shape`.

    Forward broadcast (3,) + (4, 3) -> (4, 3); backward the (3,) input gets g.sum(axis=0).
    """
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Constants (Python numbers, arrays) become Tensors that need no grad, in `like`'s dtype.

    Python scalars keep the tensor's dtype (float32 stays float32: no silent upcast)."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype if like is not None and not hasattr(x, "dtype") else None
    return Tensor(x, dtype=dtype)


# ----------------------------------------------------------------------------- elementwise arithmetic

class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        # d(a+b)/da = 1, d(a+b)/db = 1 (summed over broadcast axes)
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(g, sb) if ctx.needs_input_grad[1] else None)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        # d(a-b)/da = 1, d(a-b)/db = -1
        return (unbroadcast(g, sa) if ctx.needs_input_grad[0] else None,
                unbroadcast(-g, sb) if ctx.needs_input_grad[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        # d(ab)/da = b, d(ab)/db = a
        return (unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None,
                unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        # d(-a)/da = -1
        return -g


class Pow(Function):
    """x ** p for a constant Python number p. Write x*x, not x**2, on a hot path: NumPy's float32
    power is far slower (x**3 on 1M numbers ~57 ms, x*x*x ~0.9 ms, NumPy 2.4)."""

    @staticmethod
    def forward(ctx, a, p):
        ctx.save_for_backward(a, p)
        if p == 2:
            return a * a
        return a ** p

    @staticmethod
    def backward(ctx, g):
        a, p = ctx.saved
        # d(x^p)/dx = p x^(p-1)
        if p == 2:
            return g * (2 * a), None
        return g * (p * a ** (p - 1)), None


def _operands(a, b):
    """Both operands as Tensors; a constant takes the other operand's dtype (no silent upcast)."""
    return (as_tensor(a, b if isinstance(b, Tensor) else None),
            as_tensor(b, a if isinstance(a, Tensor) else None))


def add(a, b):
    return Add.apply(*_operands(a, b))


def sub(a, b):
    return Sub.apply(*_operands(a, b))


def mul(a, b):
    return Mul.apply(*_operands(a, b))


def div(a, b):
    return Div.apply(*_operands(a, b))


def neg(a):
    return Neg.apply(a)


def pow(a, p):
    if isinstance(p, Tensor) or not isinstance(p, (int, float)):
        raise TypeError("pow: the exponent must be a Python number (tensor exponents are not supported)")
    return Pow.apply(a, p)


# ----------------------------------------------------------------------------- matmul

def _swap(x):
    return x.swapaxes(-1, -2)


class MatMul(Function):
    """(..., n, k) @ (..., k, m) -> (..., n, m), batch dims broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs inputs with at least 2 dims, got {a.shape} and {b.shape}")
        ctx.save_for_backward(a, b)
        return backend.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        # C = AB: dL/dA = G B^T, dL/dB = A^T G (summed over broadcast batch dims)
        ga = unbroadcast(backend.matmul(g, _swap(b)), a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(backend.matmul(_swap(a), g), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


def matmul(a, b):
    return MatMul.apply(as_tensor(a), as_tensor(b))


# ----------------------------------------------------------------------------- reductions

def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand_back(g, shape, axes, keepdims):
    """Give a reduced gradient back the reduced axes (size 1) so it broadcasts against `shape`."""
    if not keepdims:
        for a in sorted(axes):
            g = backend.xp.expand_dims(g, a)
    return g


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _norm_axes(axis, a.ndim)
        ctx.save_for_backward(a.shape, axes, keepdims)
        return a.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdims = ctx.saved
        # d(sum x)/dx_i = 1: copy g to every summed position
        return backend.xp.broadcast_to(_expand_back(g, shape, axes, keepdims), shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _norm_axes(axis, a.ndim)
        n = 1
        for ax in axes:
            n *= a.shape[ax]
        ctx.save_for_backward(a.shape, axes, keepdims, n)
        return a.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdims, n = ctx.saved
        # d(mean x)/dx_i = 1/n
        g = _expand_back(g, shape, axes, keepdims) * (1.0 / n)
        return backend.xp.broadcast_to(g, shape)


class Max(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = _norm_axes(axis, a.ndim)
        out = a.max(axis=axes, keepdims=True)
        ctx.save_for_backward(a, out, axes, keepdims)
        return out if keepdims else out.squeeze(axis=axes)

    @staticmethod
    def backward(ctx, g):
        a, out, axes, keepdims = ctx.saved
        # d(max x)/dx_i = 1 where x_i is the max (shared equally between ties), else 0
        mask = (a == out).astype(a.dtype)
        mask /= mask.sum(axis=axes, keepdims=True)
        return _expand_back(g, a.shape, axes, keepdims) * mask


def sum(a, axis=None, keepdims=False):  # noqa: A001  (mirrors numpy's name)
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001
    return Max.apply(a, axis=axis, keepdims=keepdims)


# ----------------------------------------------------------------------------- shape ops

class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save_for_backward(a.shape)
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        (shape,) = ctx.saved
        # reshape moves no numbers: reshape the gradient back
        return g.reshape(shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        axes = tuple(x % a.ndim for x in axes)
        ctx.save_for_backward(axes)
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        (axes,) = ctx.saved
        # the inverse permutation puts every gradient entry back where its input came from
        inverse = [0] * len(axes)
        for i, ax in enumerate(axes):
            inverse[ax] = i
        return g.transpose(inverse), None


def reshape(a, shape):
    return Reshape.apply(a, tuple(shape))


def permute(a, axes):
    return Permute.apply(a, tuple(axes))


def transpose(a, ax1=-2, ax2=-1):
    axes = list(range(a.ndim))
    axes[ax1], axes[ax2] = axes[ax2], axes[ax1]
    return Permute.apply(a, tuple(axes))


def _is_basic_index(idx) -> bool:
    """Slices, ints, None and Ellipsis select a view: no position is picked twice."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (slice, int, type(None), type(Ellipsis))) for i in items)


def _distinct_rows(idx) -> bool:
    """A 1-D integer array of distinct row numbers (a gather of rows, e.g. per-sample routing):
    the backward can assign instead of the much slower scatter-add."""
    xp = backend.xp
    return (isinstance(idx, xp.ndarray) and idx.ndim == 1 and idx.dtype.kind in "iu"
            and int(xp.unique(idx).size) == idx.size)


class GetItem(Function):
    @staticmethod
    def forward(ctx, a, idx):
        ctx.save_for_backward(a.shape, a.dtype, idx)
        return a[idx]

    @staticmethod
    def backward(ctx, g):
        shape, dtype, idx = ctx.saved
        xp = backend.xp
        # d(a[idx])/da: the gradient goes back to the selected positions, zero elsewhere;
        # integer-array indices may repeat a position, so they add (scatter-add), not assign
        out = xp.zeros(shape, dtype=dtype)
        if _is_basic_index(idx) or _distinct_rows(idx):
            out[idx] = g                 # no position is picked twice: plain assignment is exact
        else:
            xp.add.at(out, idx, g)
        return out, None


def getitem(a, idx):
    if isinstance(idx, Tensor):
        idx = idx.data
    elif isinstance(idx, tuple):
        idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    return GetItem.apply(a, idx)


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        axis = axis % arrays[0].ndim
        ctx.save_for_backward(axis, [a.shape[axis] for a in arrays])
        return backend.xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        axis, sizes = ctx.saved
        # concatenation places inputs side by side: cut the gradient at the same boundaries
        out, start = [], 0
        for n, need in zip(sizes, ctx.needs_input_grad):
            sl = [slice(None)] * g.ndim
            sl[axis] = slice(start, start + n)
            out.append(g[tuple(sl)] if need else None)
            start += n
        return tuple(out)


def concat(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Stack along a new axis (unsqueeze each, then concat)."""
    tensors = [as_tensor(t) for t in tensors]
    ax = axis % (tensors[0].ndim + 1)
    expanded = [reshape(t, t.shape[:ax] + (1,) + t.shape[ax:]) for t in tensors]
    return concat(expanded, axis=ax)


def split(a, sizes, axis=-1):
    """Split `a` along `axis` into pieces of the given sizes (or n equal pieces if `sizes` is an int)."""
    axis = axis % a.ndim
    n = a.shape[axis]
    if isinstance(sizes, int):
        if n % sizes:
            raise ValueError(f"split: axis of size {n} does not divide into {sizes} equal pieces")
        sizes = [n // sizes] * sizes
    if builtin_sum(sizes) != n:
        raise ValueError(f"split: sizes {list(sizes)} add up to {builtin_sum(sizes)}, axis has {n}")
    out, start = [], 0
    for s in sizes:
        idx = (slice(None),) * axis + (slice(start, start + s),)
        out.append(getitem(a, idx))
        start += s
    return out


import builtins as _builtins  # noqa: E402

builtin_sum = _builtins.sum
