"""Pointwise nonlinearities, softmax and log-softmax (minipeft/ops/activations.py):
forward against formulas written here with NumPy, backward by float64 gradient checks."""
from __future__ import annotations

import math
import warnings

import numpy
import pytest

import minipeft
from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck

pytestmark = pytest.mark.task_activations


def close(got, expected, what="", rtol=1e-12, atol=1e-12):
    got = minipeft.to_numpy(got.data if isinstance(got, Tensor) else got)
    assert got.shape == numpy.shape(expected), f"{what}: shape {got.shape}, expected {numpy.shape(expected)}"
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def from_host(backend, a, requires_grad=True, dtype=numpy.float64):
    return Tensor(backend.to_device(numpy.asarray(a, dtype=dtype)), requires_grad=requires_grad)


def gelu_tanh(x):
    """GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    """GELU, exact: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), erf from Python's math module."""
    return 0.5 * x * (1 + numpy.vectorize(math.erf)(x / math.sqrt(2)))


POINTWISE = {
    "exp": (ops.exp, numpy.exp, {}),
    "log": (ops.log, numpy.log, {"low": 0.2, "high": 3.0}),
    "tanh": (ops.tanh, numpy.tanh, {"scale": 2.0}),
    "sigmoid": (ops.sigmoid, lambda x: 1 / (1 + numpy.exp(-x)), {"scale": 3.0}),
    "gelu": (ops.gelu, gelu_tanh, {"scale": 2.0}),
    "gelu_erf": (lambda x: ops.gelu(x, approximate="none"), gelu_erf, {"scale": 3.0}),
}


@pytest.mark.parametrize("name", list(POINTWISE))
def test_pointwise_forward_and_gradient(backend, rand, name):
    f, ref, draw = POINTWISE[name]
    x = rand(3, 5, **draw)
    close(f(x), ref(x.numpy()), f"{name} forward", rtol=1e-12, atol=1e-14)
    gradcheck(f, x, name=name)


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sigmoid", "relu"])
def test_tensor_methods_match_ops(backend, rand, name):
    x = rand(4, low=0.5, high=2.0)
    close(getattr(x, name)(), getattr(ops, name)(x).numpy())


def test_closed_form_derivatives(backend, rand):
    x = rand(6, scale=2.0)
    X = x.numpy()
    s = 1 / (1 + numpy.exp(-X))
    for name, derivative in [("exp", numpy.exp(X)), ("tanh", 1 - numpy.tanh(X) ** 2), ("sigmoid", s * (1 - s))]:
        x.grad = None
        getattr(ops, name)(x).sum().backward()
        close(x.grad, derivative, f"d {name}/dx", rtol=1e-12)


def test_relu(backend):
    x = from_host(backend, [[-2.0, -0.3, 0.0], [0.4, 1.5, -1e-3]])
    close(ops.relu(x), [[0, 0, 0], [0.4, 1.5, 0]])
    ops.relu(x).sum().backward()
    close(x.grad, [[0, 0, 0], [1, 1, 0]], "relu'(x) = 1 for x > 0 else 0 (0 at x = 0)")
    # away from the kink, a gradient check
    y = from_host(backend, [[-2.0, -0.3, 0.2], [0.4, 1.5, -0.1]])
    gradcheck(ops.relu, y)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_sigmoid_of_large_values_does_not_overflow(backend, dtype):
    x = from_host(backend, [-1e4, -800.0, -90.0, -30.0, 0.0, 30.0, 90.0, 800.0, 1e4], dtype=dtype)
    with warnings.catch_warnings(), numpy.errstate(all="raise"):
        warnings.simplefilter("error")  # an overflow in exp(-x) would warn (or raise)
        y = ops.sigmoid(x)
        y.sum().backward()
    Y = y.numpy()
    assert y.dtype == dtype
    assert numpy.all(numpy.isfinite(Y)) and numpy.all((Y >= 0) & (Y <= 1)), Y
    close(Y[[0, 1, 4, 7, 8]], [0, 0, 0.5, 1, 1], "sigmoid at -1e4, -800, 0, 800, 1e4", atol=1e-30)
    G = minipeft.to_numpy(x.grad)
    assert numpy.all(numpy.isfinite(G)), G
    close(G[[0, 4, 8]], [0, 0.25, 0], "sigmoid' at -1e4, 0, 1e4", atol=1e-30)


def test_gelu_is_close_to_the_exact_erf_gelu(backend, rand):
    x = rand(200, scale=3.0)
    X = x.numpy()
    err = numpy.abs(ops.gelu(x).numpy() - gelu_erf(X)).max()
    assert 1e-5 < err < 1e-3, f"the tanh approximation is off the erf GELU by {err}"
    with pytest.raises(ValueError, match="expected 'tanh' or 'none'"):
        ops.gelu(x, approximate="erf")


def test_exact_gelu_closed_form_derivative_and_float32(backend, rand):
    x = rand(9, scale=3.0)
    X = x.numpy()
    density = numpy.exp(-X ** 2 / 2) / math.sqrt(2 * math.pi)
    ops.gelu(x, approximate="none").sum().backward()
    close(x.grad, 0.5 * (1 + numpy.vectorize(math.erf)(X / math.sqrt(2))) + X * density,
          "d gelu_erf/dx = Phi + x phi", rtol=1e-12)
    x32 = from_host(backend, X, dtype=numpy.float32)
    y32 = ops.gelu(x32, approximate="none")
    assert y32.dtype == numpy.float32, y32.dtype
    close(y32, gelu_erf(X), "float32 exact gelu", rtol=1e-6, atol=1e-6)


def test_gelu_closed_form_derivative(backend, rand):
    x = rand(7, scale=2.0)
    X = x.numpy()
    c = math.sqrt(2 / math.pi)
    t = numpy.tanh(c * (X + 0.044715 * X ** 3))
    derivative = 0.5 * (1 + t) + 0.5 * X * (1 - t ** 2) * c * (1 + 3 * 0.044715 * X ** 2)
    ops.gelu(x).sum().backward()
    close(x.grad, derivative, "d gelu/dx", rtol=1e-12)


# ----------------------------------------------------------------------------- softmax family

def softmax_ref(x, axis):
    e = numpy.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax(backend, rand, axis):
    x = rand(3, 4, 2, scale=2.0)
    y = ops.softmax(x, axis=axis)
    close(y, softmax_ref(x.numpy(), axis), f"softmax axis {axis}")
    close(y.numpy().sum(axis=axis), numpy.ones(numpy.delete((3, 4, 2), axis)), "sums to 1", atol=1e-14)
    gradcheck(lambda x: ops.softmax(x, axis=axis), x, name=f"softmax axis {axis}")


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax(backend, rand, axis):
    x = rand(3, 4, 2, scale=2.0)
    close(ops.log_softmax(x, axis=axis), numpy.log(softmax_ref(x.numpy(), axis)), f"log_softmax axis {axis}")
    gradcheck(lambda x: ops.log_softmax(x, axis=axis), x, name=f"log_softmax axis {axis}")


def test_softmax_default_axis_is_last(backend, rand):
    x = rand(2, 5)
    close(ops.softmax(x), softmax_ref(x.numpy(), -1))
    close(ops.log_softmax(x), numpy.log(softmax_ref(x.numpy(), -1)))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_softmax_family_is_stable_for_huge_logits(backend, dtype):
    x = from_host(backend, [[1000.0, 0.0, -1000.0], [3e4, 3e4, 3e4]], dtype=dtype)
    # e^-2000 underflowing to 0 is the right answer; overflow, 0/0 and log(0) are not
    with warnings.catch_warnings(), numpy.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        p = ops.softmax(x).numpy()
        lp = ops.log_softmax(x).numpy()
    close(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], "softmax of huge logits", rtol=1e-6, atol=1e-30)
    close(lp, [[0, -1000, -2000], [-math.log(3)] * 3], "log_softmax of huge logits", rtol=1e-6)


def test_softmax_closed_form_gradient(backend, rand):
    # dL/dx = y * (g - sum_j g_j y_j)
    x = rand(2, 4)
    g = numpy.random.default_rng(3).normal(size=(2, 4))
    ops.softmax(x).backward(backend.to_device(g))
    y = softmax_ref(x.numpy(), -1)
    close(x.grad, y * (g - (g * y).sum(axis=-1, keepdims=True)), rtol=1e-10)
