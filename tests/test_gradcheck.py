"""The gradient checker (minipeft/gradcheck.py) must catch wrong backwards, say where and by how
much, and refuse inputs it cannot check reliably."""
from __future__ import annotations

import re

import numpy
import pytest

from minipeft import ops
from minipeft.autograd import Function, Tensor
from minipeft.gradcheck import GradcheckError, gradcheck

pytestmark = pytest.mark.task_gradcheck


class WrongSquare(Function):
    """x^2 with a deliberately wrong derivative: x instead of 2x."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g * a  # wrong on purpose: d(x^2)/dx = 2x


class MeanOfUpstream(Function):
    """Identity whose backward is right only for an all-ones upstream gradient."""

    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return g * 0 + g.mean()  # wrong: should be g


class NoGradient(Function):
    """2x whose backward forgets to return a gradient."""

    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, g):
        return None


def test_gradcheck_passes_a_correct_op(backend, rand):
    x = rand(3, 4)
    worst = gradcheck(ops.tanh, x)
    assert 0.0 <= worst < 1e-6, f"tanh's worst relative error is {worst}"


def test_gradcheck_names_element_expected_got_and_relative_error(backend, rand):
    x = rand(2, 3, name="x")
    a = x.numpy().copy()
    with pytest.raises(GradcheckError) as e:
        gradcheck(WrongSquare.apply, x, name="wrong_square")
    msg = str(e.value)
    # gradcheck draws its upstream gradient G with default_rng(seed=0); every element is wrong,
    # so the first one checked, (0, 0), is reported: expected 2 a G, got a G, relative error 1/3
    G = numpy.random.default_rng(0).normal(size=(2, 3))
    assert msg.startswith("wrong_square: gradient of x (2, 3)"), msg
    assert "element (0, 0)" in msg, msg
    expected = float(re.search(r"expected \(numerical\) (\S+),", msg).group(1))
    got = float(re.search(r"got \(analytic\) (\S+),", msg).group(1))
    rel = float(re.search(r"relative error (\S+)$", msg).group(1))
    assert expected == pytest.approx(2 * a[0, 0] * G[0, 0], rel=1e-6), msg
    assert got == pytest.approx(a[0, 0] * G[0, 0], rel=1e-9), msg
    assert rel == pytest.approx(1 / 3, rel=1e-2), msg


def test_gradcheck_random_upstream_catches_errors_that_ones_would_hide(backend, rand):
    x = rand(3, 3)
    # with an upstream of ones the wrong backward gives exactly the right numbers ...
    y = MeanOfUpstream.apply(x)
    y.backward(backend.xp.ones(y.shape))
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), numpy.ones((3, 3)))
    # ... a random upstream exposes it
    with pytest.raises(GradcheckError):
        gradcheck(MeanOfUpstream.apply, x)


def test_gradcheck_catches_a_missing_gradient(backend, rand):
    x = rand(4)
    with pytest.raises(GradcheckError, match="got \\(analytic\\) 0,"):
        gradcheck(NoGradient.apply, x)


def test_gradcheck_checks_every_input_and_names_the_wrong_one(backend, rand):
    a, b = rand(3, name="a"), rand(3, name="b")
    with pytest.raises(GradcheckError, match="gradient of b"):
        gradcheck(lambda a, b: a * WrongSquare.apply(b), a, b)


def test_gradcheck_refuses_float32(backend, rand):
    x = rand(3, dtype=numpy.float32)
    with pytest.raises(ValueError) as e:
        gradcheck(ops.tanh, x)
    msg = str(e.value)
    assert "float64" in msg and "float32" in msg, msg


def test_gradcheck_needs_an_input_with_requires_grad(backend, rand):
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(ops.tanh, rand(3, requires_grad=False))


def test_gradcheck_needs_a_tensor_output(backend, rand):
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda x: x.numpy(), rand(3))


def test_gradcheck_leaves_inputs_unchanged(backend, rand):
    x = rand(3, 4)
    before = x.numpy().copy()
    gradcheck(ops.gelu, x)
    numpy.testing.assert_array_equal(x.numpy(), before)


def test_gradcheck_max_per_input_limits_the_work(backend, rand):
    calls = []

    def f(x):
        calls.append(1)
        return ops.tanh(x)

    gradcheck(f, rand(5, 4), max_per_input=3)
    assert len(calls) == 1 + 2 * 3, f"expected 1 forward for backward + 2 per checked element, got {len(calls)}"


def test_gradcheck_skips_inputs_without_requires_grad(backend, rand):
    a, w = rand(3, 4), rand(3, 4, requires_grad=False)
    assert isinstance(w, Tensor)
    gradcheck(lambda a, w: WrongSquare.apply(w) * a, a, w)  # w's wrong backward is never needed


def test_gradcheck_handles_non_contiguous_inputs(backend):
    # a transposed array: perturbing it through a flat copy would leave the input unchanged
    a = numpy.random.default_rng(0).normal(size=(4, 3))
    x = Tensor(backend.to_device(a).T, requires_grad=True)
    gradcheck(ops.tanh, x)
    numpy.testing.assert_array_equal(backend.to_numpy(x.data), a.T)
    with pytest.raises(GradcheckError):
        gradcheck(WrongSquare.apply, Tensor(backend.to_device(a).T, requires_grad=True))
