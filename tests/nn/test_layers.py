"""The basic layers (minipeft/nn/layers.py): Linear, Embedding, LayerNorm, Dropout.

Each against a NumPy formula, a float64 gradient check of the module's forward w.r.t. its input
and parameters, its GPT-2 initialisation, and its dtype.
"""
from __future__ import annotations

import numpy
import pytest

import minipeft
from minipeft import backend as B
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck
from minipeft.nn import Dropout, Embedding, LayerNorm, Linear

pytestmark = pytest.mark.task_nn


def np_(t):
    return minipeft.to_numpy(t.data if isinstance(t, Tensor) else t)


def named(module):
    """Give each parameter its dotted name, so that a gradcheck failure says which one."""
    for n, p in module.named_parameters():
        p.name = n
    return module.parameters()


# ----------------------------------------------------------------------------- Linear

def test_linear_matches_numpy_and_shapes(backend, rand):
    lin = Linear(4, 5)
    assert lin.weight.shape == (5, 4) and lin.bias.shape == (5,)
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    lin.bias.data = B.to_device(numpy.arange(5, dtype=numpy.float32))
    x = rand(2, 3, 4, requires_grad=False, dtype=numpy.float32)
    y = lin(x)
    assert y.shape == (2, 3, 5) and y.dtype == numpy.float32, (y.shape, y.dtype)
    ref = np_(x) @ np_(lin.weight).T + numpy.arange(5)
    err = numpy.abs(np_(y) - ref).max()
    assert err < 1e-5, f"Linear differs from x W^T + b by {err}"


def test_linear_without_bias():
    lin = Linear(3, 2, bias=False)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    assert lin.num_parameters() == 6


def test_linear_gradcheck(backend, rand):
    with B.default_dtype_as(numpy.float64):
        lin = Linear(4, 3)
        lin.bias.data = B.to_device(numpy.linspace(-1, 1, 3))
    x = rand(2, 5, 4, name="x")
    gradcheck(lambda x, *ps: lin(x), x, *named(lin), name="Linear")
    nobias = Linear(4, 3, bias=False).to(numpy.float64)
    gradcheck(lambda x, *ps: nobias(x), x, *named(nobias), name="Linear(bias=False)")


# ----------------------------------------------------------------------------- Embedding

def test_embedding_looks_up_rows(backend):
    emb = Embedding(7, 3)
    ids = numpy.array([[0, 6, 2], [2, 2, 5]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    assert numpy.array_equal(np_(out), np_(emb.weight)[ids])


def test_embedding_gradcheck_with_repeated_ids(backend):
    with B.default_dtype_as(numpy.float64):
        emb = Embedding(6, 4)
    ids = numpy.array([[1, 1, 3], [3, 1, 0]])          # 1 three times, 3 twice, 2/4/5 never
    gradcheck(lambda *ps: emb(ids), *named(emb), name="Embedding")
    emb.weight.grad = None
    emb(ids).sum().backward()
    counts = numpy.bincount(ids.reshape(-1), minlength=6).astype(float)
    g = np_(emb.weight.grad)
    assert numpy.allclose(g, counts[:, None] * numpy.ones((6, 4))), f"rows of dL/dW: {g[:, 0]}, expected {counts}"


# ----------------------------------------------------------------------------- LayerNorm

def test_layer_norm_normalises_and_matches_numpy(backend, rand):
    ln = LayerNorm(6, eps=1e-5)
    assert numpy.array_equal(np_(ln.weight), numpy.ones(6)) and numpy.array_equal(np_(ln.bias), numpy.zeros(6))
    x = rand(4, 6, requires_grad=False, scale=3.0)
    with B.default_dtype_as(numpy.float64):
        ln = LayerNorm(6)
    y = np_(ln(x))
    assert numpy.abs(y.mean(-1)).max() < 1e-12 and numpy.abs(y.var(-1) - 1).max() < 1e-4, (y.mean(-1), y.var(-1))
    ln.weight.data = B.to_device(numpy.linspace(0.5, 2, 6))
    ln.bias.data = B.to_device(numpy.linspace(-1, 1, 6))
    xh = np_(x)
    ref = (xh - xh.mean(-1, keepdims=True)) / numpy.sqrt(xh.var(-1, keepdims=True) + 1e-5) \
        * numpy.linspace(0.5, 2, 6) + numpy.linspace(-1, 1, 6)
    err = numpy.abs(np_(ln(x)) - ref).max()
    assert err < 1e-12, f"LayerNorm differs from the formula by {err}"


def test_layer_norm_gradcheck(backend, rand):
    with B.default_dtype_as(numpy.float64):
        ln = LayerNorm(5)
        ln.weight.data = B.to_device(numpy.linspace(0.5, 2, 5))
        ln.bias.data = B.to_device(numpy.linspace(-1, 1, 5))
    x = rand(3, 2, 5, name="x")
    gradcheck(lambda x, *ps: ln(x), x, *named(ln), name="LayerNorm")


# ----------------------------------------------------------------------------- Dropout

def test_dropout_eval_and_p0_are_identity(backend, rand):
    x = rand(50, requires_grad=False)
    d = Dropout(0.3).eval()
    assert d(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_train_zeroes_about_p_and_rescales(backend):
    x = Tensor(B.to_device(numpy.ones((200, 500), dtype=numpy.float32)))
    y = np_(Dropout(0.25)(x))
    assert y.dtype == numpy.float32
    zero = float((y == 0).mean())
    assert abs(zero - 0.25) < 0.01, f"fraction dropped {zero}, expected 0.25"
    kept = numpy.unique(y[y != 0])
    assert numpy.allclose(kept, 1 / 0.75), f"kept entries should be 1/(1-p) = {1 / 0.75}, got {kept}"
    assert abs(float(y.mean()) - 1.0) < 0.02, f"E[dropout(x)] should be x: mean {y.mean()}"


def test_dropout_rejects_bad_p():
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            Dropout(p)


def test_dropout_gradcheck_with_fixed_mask(backend, rand):
    d = Dropout(0.5)
    x = rand(4, 6, name="x")

    def f(x):
        B.manual_seed(0)           # the same mask at every evaluation
        return d(x)

    gradcheck(f, x, name="Dropout")
    x.grad = None
    B.manual_seed(0)
    y = d(x)
    y.sum().backward()
    assert numpy.array_equal(np_(x.grad), np_(y) / numpy.where(np_(x) == 0, 1, np_(x))), \
        "dL/dx of sum(dropout(x)) must be the mask / (1 - p)"


# ----------------------------------------------------------------------------- initialisation, dtypes

def test_layers_are_initialised_like_gpt2():
    minipeft.manual_seed(3)
    lin = Linear(256, 512)
    w = np_(lin.weight)
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002, (w.mean(), w.std())
    assert not np_(lin.bias).any()
    e = np_(Embedding(512, 256).weight)
    assert abs(e.std() - 0.02) < 0.002, e.std()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_layers_take_the_default_dtype(backend, dtype):
    with B.default_dtype_as(dtype):
        mods = [Linear(3, 2), Embedding(4, 3), LayerNorm(3)]
    for m in mods:
        for n, p in m.named_parameters():
            assert p.dtype == dtype, (type(m).__name__, n, p.dtype)
    x = Tensor(B.to_device(numpy.ones((2, 3), dtype=dtype)))
    assert mods[0](x).dtype == dtype and mods[2](x).dtype == dtype
    assert mods[1](numpy.array([[0, 3]])).dtype == dtype
