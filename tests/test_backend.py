"""The array-module switch (minipeft/backend.py): choosing a backend, transfers, scatter-add, RNG,
and two sweeps over every op: dtypes are kept (float32 stays float32, float64 stays float64) and,
on a GPU, NumPy and CuPy give the same numbers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import minipeft
from minipeft import cpu, ops
from minipeft import backend as B
from minipeft.autograd import Tensor

pytestmark = pytest.mark.task_backend

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "no GPU/CuPy: install cupy-cuda12x and run on a GPU machine"


# ----------------------------------------------------------------------------- choosing a backend

def test_use_rejects_unknown_name_and_lists_choices():
    before = (B.name, B.xp)
    with pytest.raises(ValueError) as e:
        minipeft.use("bogus")
    msg = str(e.value)
    assert "'bogus'" in msg
    for choice in ("numpy", "cupy", "auto"):
        assert choice in msg, f"the error should list {choice!r} as a choice: {msg}"
    assert (B.name, B.xp) == before, "a rejected name must leave the backend alone"


def test_use_is_case_and_space_insensitive():
    assert minipeft.use(" NumPy ") == "numpy"
    assert B.xp is numpy


@pytest.mark.skipif(B.cupy_available(), reason="CuPy and a GPU are present here")
def test_use_cupy_without_gpu_raises_and_does_not_fall_back():
    minipeft.use("numpy")
    with pytest.raises(RuntimeError) as e:
        minipeft.use("cupy")
    msg = str(e.value)
    assert "cupy-cuda12x" in msg, f"the error should say what to install: {msg}"
    assert "numpy" in msg, f"the error should say how to use the CPU instead: {msg}"
    assert B.name == "numpy" and B.xp is numpy, "a failed use('cupy') must leave the backend alone"


@pytest.mark.skipif(B.cupy_available(), reason="CuPy and a GPU are present here: auto picks cupy")
def test_use_auto_picks_numpy_without_gpu():
    assert minipeft.use("auto") == "numpy"
    assert B.name == "numpy" and B.xp is numpy


@pytest.mark.skipif(not B.cupy_available(), reason=NO_GPU)
def test_use_auto_picks_cupy_with_gpu():
    assert minipeft.use("auto") == "cupy"
    assert B.name == "cupy"


def _python(code, backend_env):
    env = dict(os.environ)
    env["MINIPEFT_BACKEND"] = backend_env
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_env_var_numpy_is_honoured_on_import():
    r = _python("import minipeft; print(minipeft.backend.name)", "numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "numpy"


def test_env_var_bogus_fails_on_import_with_a_clear_error():
    r = _python("import minipeft", "bogus")
    assert r.returncode != 0, "MINIPEFT_BACKEND=bogus must not be ignored"
    assert "unknown backend 'bogus'" in r.stderr and "MINIPEFT_BACKEND='bogus'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr   # one line


@pytest.mark.skipif(B.cupy_available(), reason="CuPy and a GPU are present here")
def test_env_var_cupy_without_gpu_fails_on_import():
    r = _python("import minipeft", "cupy")
    assert r.returncode != 0, "MINIPEFT_BACKEND=cupy without a GPU must fail, not fall back to numpy"
    assert "cupy-cuda12x" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- dtypes

def test_default_dtype_is_float32_and_only_floats_are_accepted():
    assert B.default_dtype() is numpy.float32
    with B.default_dtype_as(numpy.float64):
        assert B.default_dtype() is numpy.float64
        assert minipeft.tensor([1.0, 2.0]).dtype == numpy.float64
    assert B.default_dtype() is numpy.float32
    assert minipeft.tensor([1.0, 2.0]).dtype == numpy.float32
    with pytest.raises(ValueError, match="float32 or float64"):
        B.set_default_dtype(numpy.int64)


# ----------------------------------------------------------------------------- transfers

@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.int64, numpy.bool_])
def test_to_device_to_numpy_round_trip(backend, dtype):
    a = (numpy.random.default_rng(0).normal(size=(3, 5)) * 10).astype(dtype)
    d = backend.to_device(a)
    assert isinstance(d, backend.xp.ndarray)
    h = backend.to_numpy(d)
    assert isinstance(h, numpy.ndarray)
    assert h.dtype == dtype and h.shape == a.shape
    numpy.testing.assert_array_equal(h, a)


def test_to_device_casts_and_to_numpy_takes_scalars(backend):
    d = backend.to_device([1, 2, 3], dtype=numpy.float32)
    assert d.dtype == numpy.float32
    assert backend.to_numpy(2.5).item() == 2.5
    assert backend.to_numpy(d.sum()).item() == 6.0


def test_tensor_numpy_returns_host_array(backend):
    t = minipeft.tensor(numpy.arange(6.0).reshape(2, 3))
    assert isinstance(t.data, backend.xp.ndarray)
    numpy.testing.assert_array_equal(t.numpy(), numpy.arange(6.0).reshape(2, 3))


# ----------------------------------------------------------------------------- scatter-add

def _scatter_reference(V, ids, values):
    out = numpy.zeros((V, values.shape[1]))
    for i, v in zip(ids, values):
        out[i] += v
    return out


@pytest.mark.parametrize("ids", [[2, 0, 2, 2, 5, 0], [3, 3, 3, 3], [4], [0, 1, 2, 3, 4, 5]])
def test_scatter_add_with_repeated_indices_matches_a_loop(backend, ids):
    gen = numpy.random.default_rng(1)
    ids = numpy.array(ids)
    values = gen.normal(size=(len(ids), 3))
    start = gen.normal(size=(6, 3))
    target = backend.to_device(start.copy())
    out = backend.scatter_add(target, backend.to_device(ids), backend.to_device(values))
    assert out is target, "scatter_add works in place and returns its target"
    expected = start + _scatter_reference(6, ids, values)
    numpy.testing.assert_allclose(backend.to_numpy(target), expected, rtol=1e-12, atol=1e-12)


def test_scatter_add_with_no_indices_is_a_no_op(backend):
    target = backend.to_device(numpy.ones((3, 2)))
    backend.scatter_add(target, backend.to_device(numpy.zeros(0, dtype=numpy.int64)),
                        backend.to_device(numpy.zeros((0, 2))))
    numpy.testing.assert_array_equal(backend.to_numpy(target), numpy.ones((3, 2)))


# ----------------------------------------------------------------------------- random numbers

def test_rng_same_seed_same_numbers(backend):
    a, b, c = B.RNG(7), B.RNG(7), B.RNG(8)
    x, y, z = a.normal((4, 5)), b.normal((4, 5)), c.normal((4, 5))
    assert x.dtype == numpy.float32, "draws take the default dtype"
    numpy.testing.assert_array_equal(backend.to_numpy(x), backend.to_numpy(y))
    assert not numpy.array_equal(backend.to_numpy(x), backend.to_numpy(z))
    numpy.testing.assert_array_equal(backend.to_numpy(a.integers(0, 10, (6,))),
                                     backend.to_numpy(b.integers(0, 10, (6,))))
    u = backend.to_numpy(a.uniform((1000,), low=-2.0, high=3.0))
    assert -2.0 <= u.min() and u.max() < 3.0


def test_rng_draws_the_same_numbers_on_every_backend(backend):
    # drawn on the host, so a CuPy run sees exactly the NumPy numbers
    expected = numpy.random.default_rng(3).normal(0.0, 0.02, size=(3, 4)).astype(numpy.float32)
    got = backend.to_numpy(B.RNG(3).normal((3, 4), std=0.02))
    numpy.testing.assert_array_equal(got, expected)


def test_manual_seed_makes_the_global_rng_reproducible():
    minipeft.manual_seed(123)
    a = B.to_numpy(B.rng.normal((5,)))
    minipeft.manual_seed(123)
    b = B.to_numpy(B.rng.normal((5,)))
    numpy.testing.assert_array_equal(a, b)


def test_device_uniform_range_and_dtype(backend):
    u = B.RNG(0).device_uniform((10000,), dtype=numpy.float32)
    assert u.dtype == numpy.float32
    u = backend.to_numpy(u)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02, f"mean of 10^4 uniforms is {u.mean()}"


def test_matmul_is_counted(backend):
    a = backend.to_device(numpy.ones((2, 3)))
    before = backend.stats["matmul"]
    out = backend.matmul(a, a.T)
    assert backend.stats["matmul"] == before + 1
    numpy.testing.assert_array_equal(backend.to_numpy(out), numpy.full((2, 2), 3.0))


@pytest.mark.parametrize("split", [False, pytest.param(True, marks=pytest.mark.infra)])
def test_matmul_adds_the_bias_to_every_row_and_counts_once(backend, monkeypatch, split):
    # split=True: the product is cut into blocks of rows (on NumPy with several threads); the bias
    # must land on every row of every block, and the product still counts as one
    if split:
        monkeypatch.setattr(cpu, "MIN_PARALLEL_PRODUCT", 0)
        monkeypatch.setattr(cpu, "SPLIT_PRODUCTS", True)
    saved = backend.get_threads()
    backend.set_threads(3 if split else 1)
    try:
        rng = numpy.random.default_rng(0)
        a, w, b = rng.standard_normal((7, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
        before = backend.stats["matmul"]
        calls = []
        real = backend.xp.matmul
        with monkeypatch.context() as m:
            m.setattr(backend.xp, "matmul", lambda *args, **kw: calls.append(1) or real(*args, **kw))
            out = backend.matmul(backend.to_device(a), backend.to_device(w).T, bias=backend.to_device(b))
        assert backend.stats["matmul"] == before + 1
        # cut into blocks only on NumPy (rows of 7 over 3 threads: 3 blocks); one call otherwise
        assert len(calls) == (3 if split and backend.name == "numpy" else 1), f"{len(calls)} calls"
    finally:
        backend.set_threads(saved)
    numpy.testing.assert_allclose(backend.to_numpy(out), a @ w.T + b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- every op: one table
# Each case: (name, f, specs). specs give the float inputs: a shape draws normals, pos(shape) draws
# uniform(0.5, 2) (for log, div, fractional powers). Integer/bool constants are host arrays moved
# inside f with to_device, so every backend sees the same ones.

def pos(*shape):
    return ("pos", shape)


_IDS = numpy.array([0, 2, 2, 1, 4, 2])
_TARGETS = numpy.array([1, 0, -100, 3, 2, -100])
_FILL = numpy.random.default_rng(5).random((3, 4)) > 0.5
_KEYS = numpy.array([[1, 1, 1, 0], [0, 1, 1, 1]])


def _dev(a):
    return B.to_device(a)


OP_CASES = [
    ("add", lambda a, b: a + b, [(4, 3), (3,)]),
    ("sub", lambda a, b: a - b, [(4, 1), (1, 3)]),
    ("mul", lambda a, b: a * b, [(2, 4, 3), (4, 1)]),
    ("div", lambda a, b: a / b, [(4, 3), pos(4, 3)]),
    ("neg", lambda a: -a, [(4, 3)]),
    ("pow2", lambda a: a ** 2, [(4, 3)]),
    ("pow3", lambda a: a ** 3, [(4, 3)]),
    ("pow_half", lambda a: a ** 0.5, [pos(4, 3)]),
    ("python_scalars", lambda a: (2.0 * a - 1) / 3.0 + 0.5 - (1.5 / (a * a + 1.0)), [(4, 3)]),
    ("matmul", lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    ("sum", lambda a: a.sum(axis=1), [(3, 4, 2)]),
    ("mean", lambda a: a.mean(axis=(0, 2), keepdims=True), [(3, 4, 2)]),
    ("max", lambda a: a.max(axis=-1), [(3, 4)]),
    ("reshape", lambda a: a.reshape(4, 3), [(2, 6)]),
    ("permute", lambda a: a.permute(2, 0, 1), [(2, 3, 4)]),
    ("transpose", lambda a: a.T, [(2, 3, 4)]),
    ("getitem", lambda a: a[_dev(_IDS[:4]), 1:], [(5, 3)]),
    ("concat", lambda a, b: ops.concat([a, b], axis=1), [(2, 3), (2, 2)]),
    ("stack", lambda a, b: ops.stack([a, b], axis=1), [(2, 3), (2, 3)]),
    ("split", lambda a: ops.split(a, [1, 3], axis=1)[1], [(2, 4)]),
    ("exp", ops.exp, [(4, 3)]),
    ("log", ops.log, [pos(4, 3)]),
    ("tanh", ops.tanh, [(4, 3)]),
    ("sigmoid", ops.sigmoid, [(4, 3)]),
    ("relu", ops.relu, [(4, 3)]),
    ("gelu", ops.gelu, [(4, 3)]),
    ("softmax", lambda a: ops.softmax(a, axis=0), [(4, 3)]),
    ("log_softmax", ops.log_softmax, [(4, 3)]),
    ("linear", ops.linear, [(2, 3, 4), (5, 4), (5,)]),
    ("linear_nobias", ops.linear, [(3, 4), (5, 4)]),
    ("layer_norm", ops.layer_norm, [(3, 5), (5,), (5,)]),
    ("cross_entropy", lambda a: ops.cross_entropy(a, _dev(_TARGETS)), [(6, 5)]),
    ("embedding", lambda w: ops.embedding(_dev(_IDS), w), [(5, 3)]),
    ("masked_fill", lambda a: ops.masked_fill(a, _dev(_FILL), -2.0), [(3, 4)]),
    ("attention", lambda q, k, v, kp, vp: ops.attention(q, k, v, kp, vp, causal=True,
                                                        key_mask=_KEYS),
     [(2, 2, 3, 4), (2, 2, 4, 4), (2, 2, 4, 4), (1, 2, 2, 4), (1, 2, 2, 4)]),
    ("dropout", lambda a: ops.dropout(a, 0.5), [(4, 3)]),
]
_NOT_COMPARED_ACROSS_BACKENDS = {"dropout"}  # its masks come from each backend's own random stream


def _draw_inputs(specs, dtype, seed=0):
    gen = numpy.random.default_rng(seed)
    out = []
    for s in specs:
        if isinstance(s, tuple) and s and s[0] == "pos":
            a = gen.uniform(0.5, 2.0, size=s[1])
        else:
            a = gen.normal(size=s)
        out.append(Tensor(B.to_device(a.astype(dtype)), requires_grad=True))
    return out


def _forward_backward(f, specs, dtype):
    """Run f forward and backward (random upstream gradient); return host output and grads."""
    xs = _draw_inputs(specs, dtype)
    out = f(*xs)
    up = numpy.random.default_rng(1).normal(size=out.shape).astype(dtype)
    out.backward(B.to_device(up))
    return out, xs


@pytest.mark.task_autograd
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("name,f,specs", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_every_op_keeps_the_dtype(backend, name, f, specs, dtype):
    # the default dtype is float32 in both runs: float64 inputs must stay float64 by themselves
    out, xs = _forward_backward(f, specs, dtype)
    assert out.dtype == dtype, f"{name}: {numpy.dtype(dtype).name} inputs gave a {out.dtype} output"
    for i, x in enumerate(xs):
        assert x.grad is not None, f"{name}: input {i} got no gradient"
        assert x.grad.dtype == dtype, \
            f"{name}: input {i} is {numpy.dtype(dtype).name} but its gradient is {x.grad.dtype}"
        assert x.grad.shape == x.shape


def _host_results(name_of_backend, f, specs):
    minipeft.use(name_of_backend)
    out, xs = _forward_backward(f, specs, numpy.float32)
    return [out.numpy()] + [B.to_numpy(x.grad) for x in xs]


@pytest.mark.cupy
@pytest.mark.skipif(not B.cupy_available(), reason=NO_GPU)
@pytest.mark.parametrize("name,f,specs", [c for c in OP_CASES if c[0] not in _NOT_COMPARED_ACROSS_BACKENDS],
                         ids=[c[0] for c in OP_CASES if c[0] not in _NOT_COMPARED_ACROSS_BACKENDS])
def test_numpy_and_cupy_agree_on_every_op(name, f, specs):
    cpu = _host_results("numpy", f, specs)
    gpu = _host_results("cupy", f, specs)
    labels = ["output"] + [f"gradient of input {i}" for i in range(len(specs))]
    for label, c, g in zip(labels, cpu, gpu):
        numpy.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-5,
                                      err_msg=f"{name}: {label} differs between cupy and numpy")
