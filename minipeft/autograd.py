"""Reverse-mode automatic differentiation: `Tensor`, `Function(ctx)` and the backward pass.

A `Tensor` wraps an array of the current backend (`backend.xp`: numpy or cupy). Every
differentiable operation is a `Function` subclass with two static methods, in the style of
minitorch and PyTorch:

    class Mul(Function):
        @staticmethod
        def forward(ctx, a, b):            # a, b: raw arrays
            ctx.save_for_backward(a, b)
            return a * b
        @staticmethod
        def backward(ctx, g):              # g = dL/d(out), same shape as out
            a, b = ctx.saved
            # d(ab)/da = b, d(ab)/db = a
            return (g * b if ctx.needs_input_grad[0] else None,
                    g * a if ctx.needs_input_grad[1] else None)

`Mul.apply(x, y)` runs `forward` on the raw arrays and, when any input needs a gradient and
gradients are enabled, records the context in the output so that `loss.backward()` can call
`backward` later. `ctx.needs_input_grad[i]` tells backward which gradients someone needs:
a frozen weight (requires_grad=False) gets `None` and costs no work. That is where
parameter-efficient fine-tuning saves compute.

Gradients are read-only arrays: the backward pass may hand the same array to several tensors,
so never modify `.grad` in place (write `p.grad = p.grad * s`, not `p.grad *= s`).
"""
from __future__ import annotations

from contextlib import contextmanager

from . import backend

_grad_enabled = True


@contextmanager
def no_grad():
    """Inside `with no_grad():` no graph is recorded (evaluation, generation, optimizer steps)."""
    global _grad_enabled
    saved, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = saved


def is_grad_enabled() -> bool:
    return _grad_enabled


class Context:
    """What a Function's forward leaves for its backward."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad  # tuple of bool, one per positional input
        self.saved = ()
        self.fn = None          # the Function class, set when the graph is recorded
        self.inputs = ()        # the positional inputs (Tensors or constants)

    def save_for_backward(self, *values):
        self.saved = values


class Function:
    """Base class of every differentiable op. Subclasses define `forward` and `backward`."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = Context(needs)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *raw, **kwargs)
        track = _grad_enabled and any(needs)
        result = Tensor(out, requires_grad=track, _copy=False)
        if track:
            ctx.fn, ctx.inputs = cls, args
            result._ctx = ctx
        return result


_FREED = Context(())   # replaces a context after backward(): its graph was freed, a second pass is an error


def _to_array(data, dtype=None):
    """Python scalars / lists / host arrays / device arrays -> an array of the current backend."""
    xp = backend.xp
    if isinstance(data, xp.ndarray):
        return data if dtype is None or data.dtype == dtype else data.astype(dtype)
    arr = backend.to_device(data)
    if dtype is not None:
        return arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and arr.dtype != backend.default_dtype():
        if not hasattr(data, "dtype"):  # Python floats/lists take the default dtype
            arr = arr.astype(backend.default_dtype())
    return arr


class Tensor:
    """An array plus what is needed to differentiate through it.

    data:          the array (numpy.ndarray or cupy.ndarray)
    grad:          dL/d(data) after `backward()`, same shape, or None
    requires_grad: whether gradients should flow into this tensor
    """

    __array_priority__ = 1000  # so that `ndarray * Tensor` calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None, name: str | None = None,
                 _copy: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _to_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self._ctx: Context | None = None
        self._retain = False

    # ------------------------------------------------------------------ basic properties
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={tuple(self.shape)}, dtype={self.dtype}{flag})"

    def numpy(self):
        """The data as a NumPy array on the host (a copy from the GPU when on CuPy)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """A Python number. On the GPU this waits for the device: do not call it every step."""
        return self.data.item()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data, requires_grad=False)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        self.requires_grad = flag
        return self

    def retain_grad(self) -> "Tensor":
        """Keep `.grad` on this non-leaf tensor after backward (for inspection and teaching)."""
        self._retain = True
        return self

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    # ------------------------------------------------------------------ backward pass
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate dL/dx into `.grad` of every leaf tensor x that requires grad.

        grad: dL/d(self); defaults to 1 for a scalar. Leaves accumulate across calls
        (zero them with `optimizer.zero_grad()`).
        retain_graph: keep the graph (each op's saved arrays) for a second backward through it;
        by default it is freed as the pass goes, and a second pass is an error. Not every op can
        go through twice: cross-entropy (ops.cross_entropy, and so the loss of `model(ids,
        targets)`) turns its saved softmax into the gradient in place, to spare a (tokens x
        vocabulary) array per step, and refuses a second backward with an error; compute the
        loss again instead.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad: no input "
                               "of the computation had requires_grad=True (are all parameters frozen?)")
        xp = backend.xp
        if self._ctx is _FREED:
            raise RuntimeError(_FREED_MSG)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape "
                                   f"{tuple(self.shape)}; pass grad=... of that shape or reduce first")
            grad = xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        grad = _to_array(grad, self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): gradient shape {grad.shape} does not match tensor shape {self.shape}")

        # reverse topological order by an iterative depth-first search (no recursion limit)
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            t, done = stack.pop()
            if done:
                order.append(t)
                continue
            if id(t) in seen:
                continue
            seen.add(id(t))
            stack.append((t, True))
            if t._ctx is _FREED:
                raise RuntimeError(_FREED_MSG)
            if t._ctx is not None:
                for p in t._ctx.inputs:
                    if isinstance(p, Tensor) and p.requires_grad and id(p) not in seen:
                        stack.append((p, False))

        grads = {id(self): grad}
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            ctx = t._ctx
            if ctx is None:  # a leaf: accumulate (never in place: g may be shared)
                t.grad = g if t.grad is None else t.grad + g
                continue
            if t._retain:
                t.grad = g if t.grad is None else t.grad + g
            in_grads = ctx.fn.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for p, pg, need in zip(ctx.inputs, in_grads, ctx.needs_input_grad):
                if not need or pg is None:
                    continue
                if pg.shape != p.shape:
                    raise RuntimeError(f"{ctx.fn.__name__}.backward returned a gradient of shape "
                                       f"{pg.shape} for an input of shape {p.shape}")
                prev = grads.get(id(p))
                grads[id(p)] = pg if prev is None else prev + pg
            if not retain_graph:
                t._ctx = _FREED  # free the saved activations

    # ------------------------------------------------------------------ operators (defined in ops)
    def __add__(self, o): return ops.add(self, o)
    def __radd__(self, o): return ops.add(o, self)
    def __sub__(self, o): return ops.sub(self, o)
    def __rsub__(self, o): return ops.sub(o, self)
    def __mul__(self, o): return ops.mul(self, o)
    def __rmul__(self, o): return ops.mul(o, self)
    def __truediv__(self, o): return ops.div(self, o)
    def __rtruediv__(self, o): return ops.div(o, self)
    def __neg__(self): return ops.neg(self)
    def __pow__(self, p): return ops.pow(self, p)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __getitem__(self, idx): return ops.getitem(self, idx)

    def sum(self, axis=None, keepdims=False): return ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return ops.max(self, axis, keepdims)
    def reshape(self, *shape): return ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, a=-2, b=-1): return ops.transpose(self, a, b)
    def permute(self, *axes): return ops.permute(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes)
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)

    @property
    def T(self):
        return ops.transpose(self, -2, -1)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Make a Tensor on the current backend (Python floats become the default dtype)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


_FREED_MSG = ("backward() through a graph that an earlier backward() already freed; call the first "
              "backward(retain_graph=True) if you need to go through the same graph twice")

from . import ops  # noqa: E402  (ops needs Tensor and Function, defined above)
