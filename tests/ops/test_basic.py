"""Arithmetic with broadcasting, matmul, reductions, shape ops and indexing (minipeft/ops/basic.py).

Every op: forward against NumPy on the host, backward by a float64 gradient check through a
random upstream gradient (minipeft.gradcheck), plus closed forms where they teach something.
"""
from __future__ import annotations

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import minipeft
from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck

pytestmark = pytest.mark.task_ops

HYPO = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def close(got, expected, what="", rtol=1e-12, atol=1e-12):
    got = minipeft.to_numpy(got.data if isinstance(got, Tensor) else got)
    assert got.shape == numpy.shape(expected), f"{what}: shape {got.shape}, expected {numpy.shape(expected)}"
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


BINARY = {
    "add": (ops.add, numpy.add),
    "sub": (ops.sub, numpy.subtract),
    "mul": (ops.mul, numpy.multiply),
    "div": (ops.div, numpy.divide),
}

BROADCAST_PAIRS = [
    ((4, 3), (4, 3)),
    ((), (4, 3)),          # scalar tensor on the left
    ((4, 3), ()),          # and on the right
    ((3,), (4, 3)),        # rank mismatch, leading axis added
    ((4, 3), (3,)),
    ((4, 1), (1, 3)),      # both sides broadcast
    ((1, 3), (4, 1)),
    ((2, 1, 3), (4, 1)),   # rank mismatch and size-1 axes on both sides
    ((4, 1), (2, 1, 3)),
]


def _operands(rand, op, sa, sb):
    a = rand(*sa)
    # keep denominators away from 0 so that central differences are accurate
    b = rand(*sb, low=0.5, high=2.0) if op == "div" else rand(*sb)
    return a, b


# ----------------------------------------------------------------------------- broadcasting arithmetic

def test_unbroadcast_sums_the_expanded_axes(backend):
    g = backend.to_device(numpy.arange(24.0).reshape(2, 4, 3))
    G = numpy.arange(24.0).reshape(2, 4, 3)
    close(ops.unbroadcast(g, (2, 4, 3)), G)
    close(ops.unbroadcast(g, (3,)), G.sum(axis=(0, 1)))
    close(ops.unbroadcast(g, (4, 1)), G.sum(axis=(0, 2))[:, None])
    close(ops.unbroadcast(g, (2, 1, 3)), G.sum(axis=1, keepdims=True))
    close(ops.unbroadcast(g, ()), G.sum())


@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS, ids=[f"{a}-{b}" for a, b in BROADCAST_PAIRS])
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op_broadcasting(backend, rand, op, sa, sb):
    f, ref = BINARY[op]
    a, b = _operands(rand, op, sa, sb)
    out = f(a, b)
    close(out, ref(a.numpy(), b.numpy()), f"{op} forward {sa} with {sb}")
    gradcheck(f, a, b, name=f"{op} {sa} with {sb}")


@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op_with_python_scalars_on_both_sides(backend, rand, op):
    f, ref = BINARY[op]
    x = rand(3, 2, low=0.5, high=2.0)
    close(f(x, 1.5), ref(x.numpy(), 1.5), f"{op}(x, 1.5)")
    close(f(1.5, x), ref(1.5, x.numpy()), f"{op}(1.5, x)")
    gradcheck(lambda x: f(x, 1.5), x, name=f"{op}(x, 1.5)")
    gradcheck(lambda x: f(1.5, x), x, name=f"{op}(1.5, x)")


def test_closed_form_gradients_of_div(backend, rand):
    a, b = rand(4, 3), rand(3, low=0.5, high=2.0)
    (a / b).sum().backward()
    A, Bv = a.numpy(), b.numpy()
    close(a.grad, numpy.broadcast_to(1 / Bv, (4, 3)), "d(a/b)/da = 1/b")
    close(b.grad, (-A / Bv ** 2).sum(axis=0), "d(a/b)/db = -a/b^2 summed over the broadcast axis",
          rtol=1e-10)


def test_neg(backend, rand):
    x = rand(2, 3)
    close(-x, -x.numpy())
    gradcheck(ops.neg, x)


@pytest.mark.parametrize("p", [2, 3, 0.5, -1, 1.7, 1])
def test_pow(backend, rand, p):
    x = rand(3, 4, low=0.5, high=2.0)
    close(x ** p, x.numpy() ** p, f"x ** {p}", rtol=1e-12)
    gradcheck(lambda x: ops.pow(x, p), x, name=f"x ** {p}")


def test_pow_of_negative_base_with_integer_exponent(backend, rand):
    x = rand(5)  # normals: some negative
    close(x ** 3, x.numpy() ** 3)
    gradcheck(lambda x: x ** 3, x)


def test_pow_rejects_a_tensor_exponent(backend, rand):
    with pytest.raises(TypeError, match="Python number"):
        ops.pow(rand(2), rand(2))


@HYPO
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=4, max_side=3),
       op=st.sampled_from(list(BINARY)), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_broadcasting_arithmetic(backend, rand, shapes, op, seed):
    sa, sb = shapes.input_shapes
    rand.seed(seed)
    f, ref = BINARY[op]
    a, b = _operands(rand, op, sa, sb)
    out = f(a, b)
    assert out.shape == shapes.result_shape
    close(out, ref(a.numpy(), b.numpy()), f"{op} forward {sa} with {sb}")
    gradcheck(f, a, b, name=f"{op} {sa} with {sb}")


# ----------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((3, 4), (4, 2)),              # 2-D
    ((2, 3, 4), (2, 4, 5)),        # batched
    ((2, 1, 3, 4), (3, 4, 2)),     # batch dims broadcast both ways
    ((3, 4), (2, 4, 5)),           # a 2-D matrix against a batch
    ((2, 3, 4), (4, 5)),           # a batch against a weight matrix
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(backend, rand, sa, sb):
    a, b = rand(*sa), rand(*sb)
    close(a @ b, numpy.matmul(a.numpy(), b.numpy()), f"{sa} @ {sb}", rtol=1e-12)
    gradcheck(ops.matmul, a, b, name=f"{sa} @ {sb}")


def test_matmul_closed_form_gradients(backend, rand):
    a, b = rand(3, 4), rand(4, 2)
    g = numpy.random.default_rng(9).normal(size=(3, 2))
    (a @ b).backward(backend.to_device(g))
    close(a.grad, g @ b.numpy().T, "dL/dA = G B^T")
    close(b.grad, a.numpy().T @ g, "dL/dB = A^T G")


def test_matmul_needs_two_dims(backend, rand):
    with pytest.raises(ValueError, match="at least 2 dims"):
        ops.matmul(rand(3), rand(3, 2))


# ----------------------------------------------------------------------------- reductions

AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]
REDUCTIONS = {"sum": (ops.sum, numpy.sum), "mean": (ops.mean, numpy.mean), "max": (ops.max, numpy.max)}


def _distinct(rand, *shape):
    """Values at least 0.1 apart (a random permutation), so that max has no near-ties."""
    n = int(numpy.prod(shape))
    vals = rand.gen.permutation(n).reshape(shape) * 0.1 - 0.05 * n
    return Tensor(minipeft.to_device(vals.astype(numpy.float64)), requires_grad=True)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=[str(a) for a in AXES])
@pytest.mark.parametrize("op", list(REDUCTIONS))
def test_reduction(backend, rand, op, axis, keepdims):
    f, ref = REDUCTIONS[op]
    x = _distinct(rand, 2, 3, 4)
    out = f(x, axis=axis, keepdims=keepdims)
    close(out, ref(x.numpy(), axis=axis, keepdims=keepdims), f"{op}(axis={axis}, keepdims={keepdims})")
    gradcheck(lambda x: f(x, axis=axis, keepdims=keepdims), x, name=f"{op}(axis={axis}, keepdims={keepdims})")


def test_tensor_method_reductions(backend, rand):
    x = rand(2, 3)
    close(x.sum(), x.numpy().sum())
    close(x.mean(axis=0), x.numpy().mean(axis=0))
    close(x.max(axis=1, keepdims=True), x.numpy().max(axis=1, keepdims=True))


def test_max_with_two_ties_shares_the_gradient(backend):
    # the central difference at a tie of two is 1/2, exactly the share backward gives
    x = Tensor(backend.to_device(numpy.array([[1.0, 3.0, 3.0, 0.0], [2.0, 5.0, 4.0, 1.0]])),
               requires_grad=True)
    gradcheck(lambda x: x.max(axis=1), x)
    x.grad = None
    x.max(axis=1).sum().backward()
    close(x.grad, [[0, 0.5, 0.5, 0], [0, 1, 0, 0]])


def test_max_with_many_ties_splits_the_gradient_equally(backend):
    # a subgradient: the share of each of k tied maxima is 1/k, and they add up to the upstream
    x = Tensor(backend.to_device(numpy.array([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [7.0, 7.0, 0.0]])),
               requires_grad=True)
    x.max().backward()
    close(x.grad, [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0]], "global max 7 tied twice")
    x.grad = None
    x.max(axis=1).backward(backend.to_device(numpy.array([3.0, 6.0, 1.0])))
    close(x.grad, [[1, 1, 1], [2, 2, 2], [0.5, 0.5, 0]], "row maxima tied 3, 3 and 2 times")


@st.composite
def shape_and_axis(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3))
    nd = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-nd, nd - 1),
                          st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple)))
    return shape, axis


@HYPO
@given(sa=shape_and_axis(), keepdims=st.booleans(), op=st.sampled_from(list(REDUCTIONS)),
       seed=st.integers(0, 2**31 - 1))
def test_hypothesis_reductions(backend, rand, sa, keepdims, op, seed):
    shape, axis = sa
    rand.seed(seed)
    f, ref = REDUCTIONS[op]
    x = _distinct(rand, *shape)
    out = f(x, axis=axis, keepdims=keepdims)
    close(out, ref(x.numpy(), axis=axis, keepdims=keepdims), f"{op}{shape}(axis={axis}, keepdims={keepdims})",
          rtol=1e-12, atol=1e-12)
    gradcheck(lambda x: f(x, axis=axis, keepdims=keepdims), x, name=f"{op}{shape}(axis={axis})")


# ----------------------------------------------------------------------------- shape ops

def test_reshape(backend, rand):
    x = rand(2, 6)
    close(x.reshape(3, 4), x.numpy().reshape(3, 4))
    close(x.reshape((4, -1)), x.numpy().reshape(4, 3))
    gradcheck(lambda x: x.reshape(3, 2, 2), x)
    gradcheck(lambda x: ops.reshape(x, (12,)), x)


@pytest.mark.parametrize("axes", [(2, 0, 1), (1, 0, 2), (0, 2, 1), (-1, -3, -2)])
def test_permute(backend, rand, axes):
    x = rand(2, 3, 4)
    close(x.permute(*axes), x.numpy().transpose(axes))
    gradcheck(lambda x: ops.permute(x, axes), x, name=f"permute{axes}")


def test_transpose(backend, rand):
    x = rand(2, 3, 4)
    close(x.T, x.numpy().swapaxes(-1, -2))
    close(ops.transpose(x, 0, 2), x.numpy().swapaxes(0, 2))
    gradcheck(lambda x: x.transpose(), x)
    gradcheck(lambda x: ops.transpose(x, 0, 1), x)


# ----------------------------------------------------------------------------- indexing

BASIC_INDICES = {
    "slices": (slice(1, 3), slice(None, None, 2)),
    "int": 1,
    "negative ints": (-1, 2),
    "int and slice": (slice(None), 0),
    "None": (slice(None), None, slice(1, None)),
    "Ellipsis": (Ellipsis, 1),
    "Ellipsis and None": (0, Ellipsis, None),
    "negative step": (slice(None, None, -1), slice(None, None, -2)),
}


@pytest.mark.parametrize("name", list(BASIC_INDICES))
def test_getitem_basic(backend, rand, name):
    idx = BASIC_INDICES[name]
    x = rand(4, 3, 2)
    close(x[idx], x.numpy()[idx], f"x[{idx}]")
    gradcheck(lambda x: x[idx], x, name=f"x[{name}]")


ADVANCED = {
    # name: (host index builder), every one repeats a position
    "repeated rows": lambda: numpy.array([0, 0, 2, 0, 3]),
    "repeated rows, slice": lambda: (numpy.array([1, 1, 3]), slice(1, None)),
    "two int arrays": lambda: (numpy.array([0, 0, 1, 0]), numpy.array([2, 2, 0, 2])),
    "2-D int array": lambda: numpy.array([[0, 3], [3, 3]]),
    "int array on axis 1": lambda: (slice(None), numpy.array([2, 2, 1])),
    "negative ints": lambda: numpy.array([-1, 3, -1]),
    "list": lambda: [2, 2, 0],
}


@pytest.mark.parametrize("name", list(ADVANCED))
def test_getitem_integer_arrays_with_repeated_indices(backend, rand, name):
    idx_host = ADVANCED[name]()
    idx = tuple(backend.to_device(i) if isinstance(i, numpy.ndarray) else i for i in idx_host) \
        if isinstance(idx_host, tuple) else (backend.to_device(idx_host) if isinstance(idx_host, numpy.ndarray)
                                             else idx_host)
    x = rand(4, 3)
    close(x[idx], x.numpy()[idx_host], f"x[{name}]")
    gradcheck(lambda x: x[idx], x, name=f"x[{name}]")


def test_getitem_repeated_rows_closed_form(backend, rand):
    # row 0 is picked three times: its gradient is the sum of the three upstream rows
    x = rand(3, 2)
    g = numpy.arange(8.0).reshape(4, 2)
    x[backend.to_device(numpy.array([0, 2, 0, 0]))].backward(backend.to_device(g))
    close(x.grad, [g[0] + g[2] + g[3], [0, 0], g[1]])


def test_getitem_with_a_tensor_index(backend, rand):
    x = rand(4, 3)
    i = Tensor(backend.to_device(numpy.array([3, 3, 0])))
    close(x[i], x.numpy()[[3, 3, 0]])
    gradcheck(lambda x: x[i], x)


@pytest.mark.parametrize("which", ["full mask", "row mask", "mask and slice"])
def test_getitem_boolean_masks(backend, rand, which):
    x = rand(4, 3)
    gen = numpy.random.default_rng(4)
    if which == "full mask":
        host_idx = gen.random((4, 3)) > 0.4
        idx = backend.to_device(host_idx)
    elif which == "row mask":
        host_idx = numpy.array([True, False, True, True])
        idx = backend.to_device(host_idx)
    else:
        host_idx = (numpy.array([False, True, True, False]), slice(0, 2))
        idx = (backend.to_device(host_idx[0]), host_idx[1])
    close(x[idx], x.numpy()[host_idx], which)
    gradcheck(lambda x: x[idx], x, name=which)


# ----------------------------------------------------------------------------- concat, stack, split

@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(backend, rand, axis):
    shapes = {0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)], 1: [(2, 1, 2), (2, 3, 2), (2, 2, 2)],
              -1: [(2, 3, 1), (2, 3, 3), (2, 3, 2)]}[axis]
    xs = [rand(*s) for s in shapes]
    close(ops.concat(xs, axis=axis), numpy.concatenate([x.numpy() for x in xs], axis=axis))
    gradcheck(lambda *xs: ops.concat(xs, axis=axis), *xs, name=f"concat axis {axis}")


def test_concat_with_a_frozen_input(backend, rand):
    a, frozen, c = rand(2, 2), rand(1, 2, requires_grad=False), rand(3, 2)
    gradcheck(lambda a, c: ops.concat([a, frozen, c], axis=0), a, c)
    assert frozen.grad is None


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(backend, rand, axis):
    xs = [rand(2, 3) for _ in range(3)]
    close(ops.stack(xs, axis=axis), numpy.stack([x.numpy() for x in xs], axis=axis))
    gradcheck(lambda *xs: ops.stack(xs, axis=axis), *xs, name=f"stack axis {axis}")


def test_split(backend, rand):
    x = rand(2, 6)
    parts = ops.split(x, [1, 3, 2], axis=1)
    for p, e in zip(parts, numpy.split(x.numpy(), [1, 4], axis=1)):
        close(p, e)
    halves = ops.split(x, 2, axis=-1)
    assert [p.shape for p in halves] == [(2, 3), (2, 3)]
    # every piece flows back to its own columns
    gradcheck(lambda x: ops.concat([p * (i + 1.0) for i, p in enumerate(ops.split(x, [1, 3, 2]))], axis=1), x)
    gradcheck(lambda x: ops.split(x, [2, 4], axis=1)[1], x)  # an unused piece gets zeros


def test_split_errors(backend, rand):
    x = rand(2, 5)
    with pytest.raises(ValueError, match="does not divide"):
        ops.split(x, 2, axis=1)
    with pytest.raises(ValueError, match="add up to 4"):
        ops.split(x, [1, 3], axis=1)
