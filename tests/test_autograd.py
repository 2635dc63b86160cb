"""Autograd mechanics (minipeft/autograd.py): accumulation, shared subgraphs, no_grad, errors,
ctx.needs_input_grad (a frozen weight costs no weight-gradient matmul), retain_grad, deep graphs,
dtypes. (The every-op dtype sweep lives in test_backend.py.)"""
from __future__ import annotations

import numpy
import pytest

import minipeft
from minipeft import ops
from minipeft.autograd import Function, Tensor, is_grad_enabled, no_grad

pytestmark = pytest.mark.task_autograd


def host(t):
    return t if isinstance(t, numpy.ndarray) else minipeft.to_numpy(t.data if isinstance(t, Tensor) else t)


def close(got, expected, what="", rtol=1e-10, atol=1e-12):
    numpy.testing.assert_allclose(host(got), expected, rtol=rtol, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------- accumulation and sharing

def test_gradients_accumulate_across_backward_calls(backend, rand):
    x = rand(3, 4)
    a = x.numpy()
    (x * x).sum().backward()
    close(x.grad, 2 * a, "after one backward")
    (x * 3.0).sum().backward()
    close(x.grad, 2 * a + 3, "a second backward adds to .grad")


def test_retain_graph_allows_a_second_backward(backend, rand):
    x = rand(3)
    y = (ops.tanh(x) * x).sum()
    y.backward(retain_graph=True)
    first = host(x.grad).copy()
    y.backward()
    close(x.grad, 2 * first, "two backwards through one retained graph")


def test_without_retain_graph_the_saved_activations_are_freed(backend, rand):
    x = rand(3)
    h = ops.tanh(x)
    y = h.sum()
    assert h._ctx is not None
    y.backward()
    for t in (h, y):
        assert t._ctx is None or t._ctx.saved == (), "backward should drop the graph (and its activations)"


def test_a_second_backward_through_a_freed_graph_is_an_error(backend, rand):
    x = rand(3)
    z = x * 3.0
    a, b = z.sum(), (z * z).sum()
    a.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        b.backward()                      # z's graph was freed by a.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        a.backward()


def test_tensor_used_twice_gets_the_sum_of_both_paths(backend, rand):
    # diamond: b = 2x, c = 3x, y = sum(b * c) = sum(6 x^2) -> dy/dx = 12 x
    x = rand(2, 3)
    b, c = x * 2.0, x * 3.0
    (b * c).sum().backward()
    close(x.grad, 12 * x.numpy())


def test_same_tensor_twice_in_one_op(backend, rand):
    x = rand(4)
    (x * x * x).sum().backward()
    close(x.grad, 3 * x.numpy() ** 2)


def test_intermediate_shared_by_two_consumers(backend, rand):
    # h = tanh(x) feeds both exp(h) and h * h: dy/dh = e^h + 2h, dh/dx = 1 - h^2
    x = rand(5)
    h = ops.tanh(x)
    (ops.exp(h) + h * h).sum().backward()
    hv = numpy.tanh(x.numpy())
    close(x.grad, (numpy.exp(hv) + 2 * hv) * (1 - hv ** 2))


def test_backward_of_a_scalar_leaf(backend):
    x = minipeft.tensor(3.0, requires_grad=True)
    x.backward()
    assert x.grad.shape == () and float(x.grad) == 1.0


def test_backward_with_an_explicit_upstream_gradient(backend, rand):
    x = rand(2, 3)
    g = numpy.arange(6.0).reshape(2, 3)
    (x * 2.0).backward(backend.to_device(g))
    close(x.grad, 2 * g)


# ----------------------------------------------------------------------------- what is recorded

def test_no_grad_records_nothing(backend, rand):
    x = rand(3)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = ops.tanh(x * 2.0).sum()
    assert is_grad_enabled(), "no_grad must restore the previous state"
    assert y.requires_grad is False and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert is_grad_enabled()


def test_no_grad_nests():
    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled(), "leaving an inner no_grad must not re-enable gradients"
    assert is_grad_enabled()


def test_inputs_without_requires_grad_record_nothing(backend, rand):
    x = rand(3, requires_grad=False)
    y = ops.exp(x)
    assert y.requires_grad is False and y._ctx is None and y.is_leaf


def test_detach_cuts_the_graph(backend, rand):
    x = rand(3)
    y = (x.detach() * x).sum()  # d/dx of (const * x) = const
    y.backward()
    close(x.grad, x.numpy())


def test_backward_on_non_scalar_without_gradient_raises(backend, rand):
    y = rand(2, 3) * 2.0
    with pytest.raises(RuntimeError) as e:
        y.backward()
    msg = str(e.value)
    assert "scalar" in msg and "(2, 3)" in msg, msg


def test_backward_without_grad_requiring_inputs_raises(backend, rand):
    y = (rand(3, requires_grad=False) * 2.0).sum()
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        y.backward()


def test_backward_with_a_wrong_shaped_gradient_raises(backend, rand):
    y = rand(2, 3) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(backend.to_device(numpy.ones((3, 2))))


class BadShape(Function):
    @staticmethod
    def forward(ctx, a):
        return a.sum(axis=0)

    @staticmethod
    def backward(ctx, g):
        return g  # wrong: should be broadcast back to the input's shape


def test_a_backward_returning_the_wrong_shape_is_reported(backend, rand):
    y = BadShape.apply(rand(4, 3)).sum()
    with pytest.raises(RuntimeError, match=r"BadShape\.backward.*\(3,\).*\(4, 3\)"):
        y.backward()


class Spy(Function):
    """a * b + c that records ctx.needs_input_grad and returns gradients only where asked."""
    seen = []

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b)
        return a * b + c

    @staticmethod
    def backward(ctx, g):
        Spy.seen.append(ctx.needs_input_grad)
        a, b = ctx.saved
        need_a, need_b, need_c = ctx.needs_input_grad
        return (g * b if need_a else None, g * a if need_b else None, g if need_c else None)


def test_needs_input_grad_says_which_inputs_want_a_gradient(backend, rand):
    a, b = rand(3), rand(3, requires_grad=False)
    Spy.seen = []
    Spy.apply(a, b, 1.5).sum().backward()
    assert Spy.seen == [(True, False, False)]
    assert b.grad is None
    close(a.grad, b.numpy())


# ----------------------------------------------------------------------------- frozen weights are cheap

def _matmuls_in_backward(backend, make_loss):
    loss = make_loss()
    before = backend.stats["matmul"]
    loss.backward()
    return backend.stats["matmul"] - before


def test_frozen_weight_costs_no_weight_gradient_matmul_in_linear(backend, rand):
    x, b = rand(4, 3, 5), rand(6)
    w_frozen, w_trainable = rand(6, 5, requires_grad=False), rand(6, 5)
    frozen = _matmuls_in_backward(backend, lambda: ops.linear(x, w_frozen, b).sum())
    trainable = _matmuls_in_backward(backend, lambda: ops.linear(x, w_trainable, b).sum())
    assert (frozen, trainable) == (1, 2), \
        f"backward matmuls: {frozen} with a frozen W, {trainable} with a trainable W (want 1 and 2)"
    assert w_frozen.grad is None
    assert w_trainable.grad is not None and b.grad is not None
    # and a frozen input (the first layer's data) with a trainable W costs only dW
    x_data = rand(4, 3, 5, requires_grad=False)
    assert _matmuls_in_backward(backend, lambda: ops.linear(x_data, w_trainable, b).sum()) == 1


def test_frozen_operand_costs_no_matmul_in_matmul(backend, rand):
    a = rand(2, 3, 4)
    w_frozen, w_trainable = rand(4, 5, requires_grad=False), rand(4, 5)
    frozen = _matmuls_in_backward(backend, lambda: (a @ w_frozen).sum())
    trainable = _matmuls_in_backward(backend, lambda: (a @ w_trainable).sum())
    assert trainable - frozen == 1, f"backward matmuls: {frozen} frozen vs {trainable} trainable"
    assert w_frozen.grad is None


def test_frozen_everything_but_bias_costs_no_matmul(backend, rand):
    # BitFit: only the bias trains, so linear's backward needs no matmul at all
    x, w, b = rand(3, 5, requires_grad=False), rand(6, 5, requires_grad=False), rand(6)
    assert _matmuls_in_backward(backend, lambda: ops.linear(x, w, b).sum()) == 0
    close(b.grad, numpy.full(6, 3.0))


# ----------------------------------------------------------------------------- retain_grad, deep graphs

def test_retain_grad_keeps_the_gradient_of_an_intermediate(backend, rand):
    x = rand(3)
    h = (x * 2.0).retain_grad()
    other = x * 3.0
    (h * h + other).sum().backward()
    close(h.grad, 2 * h.numpy(), "dL/dh = 2h")
    assert other.grad is None, "intermediates without retain_grad keep no .grad"
    close(x.grad, 8 * x.numpy() + 3)


def test_deep_chain_does_not_hit_the_recursion_limit(backend):
    x = minipeft.tensor(numpy.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + x
    y.sum().backward()
    close(x.grad, numpy.full(2, 5001.0), "x appears 5001 times in the chain")


# ----------------------------------------------------------------------------- dtypes

def test_python_scalars_keep_float32(backend, rand):
    x = rand(3, dtype=numpy.float32)
    for what, y in [("x + 1", x + 1), ("1 + x", 1 + x), ("x - 0.5", x - 0.5), ("2 - x", 2 - x),
                    ("x * 0.1", x * 0.1), ("0.1 * x", 0.1 * x), ("x / 3", x / 3), ("3 / x", 3.0 / x),
                    ("x ** 2", x ** 2), ("x ** 1.5", ops.relu(x) ** 1.5), ("-x", -x)]:
        assert y.dtype == numpy.float32, f"{what} gave {y.dtype}"
        x.grad = None
        y.sum().backward()
        assert x.grad.dtype == numpy.float32, f"the gradient of {what} is {x.grad.dtype}"


def test_float64_stays_float64_with_a_float32_default(backend, rand):
    x = rand(3, 4)  # float64
    y = ops.softmax(ops.gelu(x * 2.0 + 1), axis=0).mean()
    assert y.dtype == numpy.float64
    y.backward()
    assert x.grad.dtype == numpy.float64


def test_tensor_construction_dtypes(backend):
    assert minipeft.tensor([1.0, 2.0]).dtype == numpy.float32, "Python floats take the default dtype"
    assert minipeft.tensor(numpy.ones(2)).dtype == numpy.float64, "arrays keep their dtype"
    assert minipeft.tensor(numpy.ones(2), dtype="float32").dtype == numpy.float32
    assert minipeft.tensor([1, 2]).dtype.kind == "i"


def test_numpy_array_on_the_left_calls_the_tensor_operator(backend):
    x = minipeft.tensor(numpy.ones(3), requires_grad=True)
    y = backend.to_device(numpy.arange(3.0)) * x
    assert isinstance(y, Tensor), f"ndarray * Tensor gave {type(y).__name__}"
    y.sum().backward()
    close(x.grad, numpy.arange(3.0))
