"""The readable ops (minipeft/ops/reference.py): float64 gradient checks of each, forward against
formulas written here, and agreement with the fast versions that run in training
(activations.GELU, fused.LayerNorm, fused.CrossEntropy, fused.Attention).

Agreement is to rounding, not bit for bit: both compute the same equations, but the fast ones fold
constants, work in place and put attention's 1/sqrt(D) on Q's side, so the last bits differ.
Tolerance: the largest difference over the largest entry of the reference array, at most
AGREE[dtype] = 1e-12 in float64 and 1e-5 in float32 (measured: <= 3e-15 and <= 1.3e-6). Every output
and every gradient is compared; the large cases go through the fast ops' row blocks on threads.
"""
from __future__ import annotations

import math

import numpy
import pytest

import minipeft
from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck
from minipeft.ops import reference

AGREE = {numpy.float64: 1e-12, numpy.float32: 1e-5}
DTYPES = [numpy.float64, numpy.float32]


def host(a):
    return minipeft.to_numpy(a.data if isinstance(a, Tensor) else a)


def agree(fast, ref, dtype, what):
    """|fast - ref| <= AGREE[dtype] * max|ref|, elementwise (a difference of rounding only)."""
    fast, ref = host(fast), host(ref)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype, \
        f"{what}: fast {fast.shape} {fast.dtype}, reference {ref.shape} {ref.dtype}"
    scale = max(float(numpy.abs(ref).max(initial=0.0)), 1e-30)
    numpy.testing.assert_allclose(fast, ref, rtol=0, atol=AGREE[dtype] * scale,
                                  err_msg=f"{what}: fast and reference differ by more than rounding")


def run_both(f_fast, f_ref, host_inputs, dtype, backend, upstream_seed=1, frozen=()):
    """Forward and backward of both versions on the same inputs and upstream gradient:
    returns ((out, grads) fast, (out, grads) reference); grads[i] is None for a frozen input."""
    results = []
    for f in (f_fast, f_ref):
        ts = [Tensor(backend.to_device(a.astype(dtype)), requires_grad=i not in frozen)
              for i, a in enumerate(host_inputs)]
        out = f(*ts)
        g = numpy.random.default_rng(upstream_seed).normal(size=out.shape).astype(dtype)
        out.backward(backend.to_device(g) if out.shape else None)
        results.append((out, [t.grad for t in ts]))
    return results


def assert_agree(results, dtype, what):
    (out_f, grads_f), (out_r, grads_r) = results
    agree(out_f, out_r, dtype, f"{what}: output")
    for i, (gf, gr) in enumerate(zip(grads_f, grads_r)):
        assert (gf is None) == (gr is None), f"{what}: gradient of input {i} computed by one version only"
        if gf is not None:
            agree(gf, gr, dtype, f"{what}: gradient of input {i}")


# ----------------------------------------------------------------------------- GELU (tanh)

@pytest.mark.task_activations
def test_reference_gelu_forward_and_gradient(backend, rand):
    x = rand(3, 5, scale=2.0)
    X = x.numpy()
    expected = 0.5 * X * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))
    numpy.testing.assert_allclose(host(reference.gelu(x)), expected, rtol=1e-12, atol=1e-14)
    gradcheck(reference.gelu, x, name="reference gelu")


@pytest.mark.task_activations
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 7), (300, 257)], ids=["small", "3-D", "row blocks"])
def test_fast_gelu_agrees_with_the_reference(backend, dtype, shape):
    x = numpy.random.default_rng(0).normal(0, 3, size=shape)
    assert_agree(run_both(ops.gelu, reference.gelu, [x], dtype, backend), dtype, f"gelu {shape}")


# ----------------------------------------------------------------------------- layer norm

@pytest.mark.task_fused
@pytest.mark.parametrize("xshape", [(3, 5), (2, 3, 4), (6,)])
def test_reference_layer_norm_forward_and_gradient(backend, rand, xshape):
    d = xshape[-1]
    x, w, b = rand(*xshape, scale=2.0), rand(d), rand(d)
    X = x.numpy()
    mu = X.mean(axis=-1, keepdims=True)
    expected = (X - mu) / numpy.sqrt(((X - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5) * w.numpy() + b.numpy()
    numpy.testing.assert_allclose(host(reference.layer_norm(x, w, b)), expected, rtol=1e-11, atol=1e-12)
    gradcheck(reference.layer_norm, x, w, b, name=f"reference layer_norm {xshape}")
    gradcheck(lambda x: reference.layer_norm(x, w, b, eps=0.5), x, name="reference layer_norm, eps 0.5")


@pytest.mark.task_fused
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (6,), (300, 257)], ids=["2-D", "3-D", "1-D", "row blocks"])
@pytest.mark.parametrize("frozen", [(), (1, 2), (0,)], ids=["all", "frozen w, b", "frozen x"])
def test_fast_layer_norm_agrees_with_the_reference(backend, dtype, shape, frozen):
    gen = numpy.random.default_rng(0)
    x, w, b = gen.normal(1.0, 3.0, size=shape), gen.normal(size=shape[-1]), gen.normal(size=shape[-1])
    results = run_both(ops.layer_norm, reference.layer_norm, [x, w, b], dtype, backend, frozen=frozen)
    assert_agree(results, dtype, f"layer_norm {shape}")


# ----------------------------------------------------------------------------- cross-entropy

def cross_entropy_formula(logits, t, ignore_index=-100):
    keep = t != ignore_index
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - numpy.log(numpy.exp(z).sum(axis=-1, keepdims=True))
    rows = numpy.flatnonzero(keep)
    return -logp[rows, t[rows]].sum() / max(keep.sum(), 1)


@pytest.mark.task_fused
@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_reference_cross_entropy_forward_and_gradient(backend, rand, ignore_index):
    t = numpy.array([2, ignore_index, 1, ignore_index, 3, 1])
    logits = rand(6, 4, scale=2.0)
    loss = reference.cross_entropy(logits, t, ignore_index=ignore_index)
    assert loss.shape == ()
    numpy.testing.assert_allclose(float(loss.item()), cross_entropy_formula(logits.numpy(), t, ignore_index),
                                  rtol=1e-12)
    gradcheck(lambda x: reference.cross_entropy(x, t, ignore_index=ignore_index), logits,
              name="reference cross_entropy")
    t3 = numpy.array([[1, 0, -100], [3, -100, 2]])
    gradcheck(lambda x: reference.cross_entropy(x, t3), rand(2, 3, 4), name="reference cross_entropy, 3-D logits")


@pytest.mark.task_fused
def test_reference_cross_entropy_with_every_row_ignored_is_zero_and_errors_as_ops(backend, rand):
    logits = rand(3, 4)
    loss = reference.cross_entropy(logits, numpy.full(3, -100))
    assert float(loss.item()) == 0.0
    loss.backward()
    assert not host(logits.grad).any()
    with pytest.raises(ValueError, match="reshape"):
        reference.cross_entropy(rand(3, 4), numpy.array([0, 1]))


@pytest.mark.task_fused
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape,ignore", [((6, 4), -100), ((2, 5, 7), -100), ((5, 3), 0), ((256, 300), -100)],
                         ids=["2-D", "3-D", "ignore_index 0", "row blocks"])
def test_fast_cross_entropy_agrees_with_the_reference(backend, dtype, shape, ignore):
    gen = numpy.random.default_rng(0)
    logits = gen.normal(0, 3, size=shape)
    t = gen.integers(0, shape[-1], size=shape[:-1])
    t.reshape(-1)[::3] = ignore                           # every third row does not count
    results = run_both(lambda x: ops.cross_entropy(x, t, ignore_index=ignore),
                       lambda x: reference.cross_entropy(x, t, ignore_index=ignore), [logits], dtype, backend)
    assert_agree(results, dtype, f"cross_entropy {shape}, ignore_index {ignore}")


# ----------------------------------------------------------------------------- attention

def attention_formula(q, k, v, kp=None, vp=None, causal=True, key_mask=None, prefix_start=None):
    """softmax(Q K'^T / sqrt(D) + M) V' with M built by loops over queries and keys (an oracle for
    reference.visible): -inf where blocked; a query that sees nothing averages every row of V'."""
    B, H, Tq, D = q.shape
    Tk, P = k.shape[2], 0 if kp is None else kp.shape[2]
    seen = numpy.ones((B, 1, Tq, P + Tk), dtype=bool)
    for b in range(B):
        for i in range(Tq):
            pos = Tk - Tq + i
            for p in range(P):
                if prefix_start is not None:
                    seen[b, 0, i, p] = pos >= prefix_start[b if prefix_start.shape[0] > 1 else 0, p]
            for j in range(Tk):
                seen[b, 0, i, P + j] = (not causal or j <= pos) and (key_mask is None or bool(key_mask[b, j]))
    if P:
        k = numpy.concatenate([numpy.broadcast_to(kp, (B, H, P, D)), k], axis=2)
        v = numpy.concatenate([numpy.broadcast_to(vp, (B, H, P, D)), v], axis=2)
    s = numpy.where(seen, q @ k.swapaxes(-1, -2) / math.sqrt(D), -numpy.inf)
    s = numpy.where(seen.any(axis=-1, keepdims=True), s, 0.0)    # nothing visible: uniform weights
    e = numpy.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


KEY_MASK = numpy.array([[1, 1, 1, 0], [0, 1, 1, 1]])   # batch 0 pads the end, batch 1 the start

ATTENTION_CASES = {
    # name: (B, H, Tq, Tk, D, P, prefix batch, causal, key mask, prefix_start)
    "causal": (2, 2, 3, 3, 4, 0, 0, True, None, None),
    "non-causal, key padding": (2, 2, 4, 4, 4, 0, 0, False, KEY_MASK, None),
    "causal, left padding (a query sees nothing)": (2, 2, 4, 4, 4, 0, 0, True, KEY_MASK, None),
    "cache: Tq < Tk": (2, 2, 2, 5, 4, 0, 0, True, None, None),
    "prefix shared, key padding": (2, 2, 3, 4, 4, 2, 1, True, KEY_MASK, None),
    "prefix per sample, non-causal, cache": (2, 2, 2, 4, 4, 1, 2, False, KEY_MASK, None),
    "infix: prefix_start, one row never visible": (2, 2, 4, 4, 4, 3, 1, True, None, numpy.array([[0, 2, 10**6]])),
    "infix per sample, key padding": (2, 2, 4, 4, 4, 2, 2, True, KEY_MASK, numpy.array([[1, 3], [0, 10**6]])),
}


def attention_inputs(B, H, Tq, Tk, D, P, pb, seed=0, scale=1.0):
    gen = numpy.random.default_rng(seed)
    arrays = [gen.normal(0, scale, size=(B, H, Tq, D)), gen.normal(0, scale, size=(B, H, Tk, D)),
              gen.normal(size=(B, H, Tk, D))]
    if P:
        arrays += [gen.normal(0, scale, size=(pb, H, P, D)), gen.normal(size=(pb, H, P, D))]
    return arrays


@pytest.mark.task_fused
@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_reference_attention_forward_and_gradient(backend, name):
    B, H, Tq, Tk, D, P, pb, causal, key_mask, start = ATTENTION_CASES[name]
    arrays = attention_inputs(B, H, Tq, Tk, D, P, pb)
    ts = [Tensor(backend.to_device(a), requires_grad=True, name=n)
          for a, n in zip(arrays, ["q", "k", "v", "k_prefix", "v_prefix"])]
    out = reference.attention(*ts, causal=causal, key_mask=key_mask, prefix_start=start)
    expected = attention_formula(*arrays, causal=causal, key_mask=key_mask, prefix_start=start)
    numpy.testing.assert_allclose(host(out), expected, rtol=1e-10, atol=1e-12, err_msg=name)
    gradcheck(lambda *ts: reference.attention(*ts, causal=causal, key_mask=key_mask, prefix_start=start),
              *ts, name=f"reference attention, {name}")


@pytest.mark.task_fused
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(ATTENTION_CASES) + ["row blocks: batch", "row blocks: heads (B = 1)"])
def test_fast_attention_agrees_with_the_reference(backend, dtype, name):
    big = {"row blocks: batch": (4, 4, 64, 64, 32, 2, 1, True, None, None),
           "row blocks: heads (B = 1)": (1, 8, 128, 128, 32, 0, 0, True, None, None)}
    B, H, Tq, Tk, D, P, pb, causal, key_mask, start = big.get(name) or ATTENTION_CASES[name]
    arrays = attention_inputs(B, H, Tq, Tk, D, P, pb, scale=2.0)

    def with_masks(f):
        return lambda *ts: f(*ts, causal=causal, key_mask=key_mask, prefix_start=start)

    assert_agree(run_both(with_masks(ops.attention), with_masks(reference.attention), arrays, dtype, backend),
                 dtype, f"attention, {name}")


@pytest.mark.task_fused
@pytest.mark.parametrize("frozen", [(0, 1, 2), (0,), (2, 4), (1, 3)],
                         ids=["prefix only", "frozen q", "frozen v, v_prefix", "frozen k, k_prefix"])
def test_fast_and_reference_attention_compute_the_same_gradients_only(backend, frozen):
    arrays = attention_inputs(2, 2, 3, 4, 4, 2, 1)
    results = run_both(lambda *ts: ops.attention(*ts, key_mask=KEY_MASK),
                       lambda *ts: reference.attention(*ts, key_mask=KEY_MASK),
                       arrays, numpy.float64, backend, frozen=frozen)
    assert all(g is None for i, g in enumerate(results[1][1]) if i in frozen), "a frozen input got a gradient"
    assert_agree(results, numpy.float64, f"attention, frozen inputs {frozen}")


@pytest.mark.task_fused
def test_reference_attention_errors_as_ops(backend, rand):
    q, k, v, kp = rand(2, 2, 3, 4), rand(2, 2, 3, 4), rand(2, 2, 3, 4), rand(1, 2, 2, 4)
    with pytest.raises(ValueError, match="k_prefix and v_prefix"):
        reference.attention(q, k, v, k_prefix=kp)
    with pytest.raises(ValueError, match="one start position per prefix row"):
        reference.attention(q, k, v, kp, kp, prefix_start=numpy.zeros((1, 3), int))
