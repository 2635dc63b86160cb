"""Fused ops (minipeft/ops/fused.py): linear, layer norm, softmax cross-entropy, embedding,
dropout, masked fill and attention. Each: forward against an explicit NumPy formula written here,
backward by float64 gradient checks of every input."""
from __future__ import annotations

import math

import numpy
import pytest

import minipeft
from minipeft import ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck

pytestmark = pytest.mark.task_fused


def close(got, expected, what="", rtol=1e-12, atol=1e-12):
    got = minipeft.to_numpy(got.data if isinstance(got, Tensor) else got)
    assert got.shape == numpy.shape(expected), f"{what}: shape {got.shape}, expected {numpy.shape(expected)}"
    numpy.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def host(a):
    return minipeft.to_numpy(a.data if isinstance(a, Tensor) else a)


# ----------------------------------------------------------------------------- linear

@pytest.mark.parametrize("xshape", [(4, 3), (2, 3, 3), (3,)], ids=["2-D", "3-D", "1-D"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_linear(backend, rand, xshape, bias):
    x, w = rand(*xshape), rand(5, 3)
    args = (x, w, rand(5)) if bias else (x, w)
    expected = x.numpy() @ w.numpy().T + (args[2].numpy() if bias else 0)
    close(ops.linear(*args), expected, "y = x W^T + b", rtol=1e-12)
    gradcheck(ops.linear, *args, name=f"linear {xshape}")


def test_linear_closed_form_gradients(backend, rand):
    x, w, b = rand(2, 3, 4), rand(5, 4), rand(5)
    g = numpy.random.default_rng(2).normal(size=(2, 3, 5))
    ops.linear(x, w, b).backward(backend.to_device(g))
    X, W = x.numpy().reshape(6, 4), w.numpy()
    G = g.reshape(6, 5)
    close(x.grad, (G @ W).reshape(2, 3, 4), "dL/dx = G W", rtol=1e-10)
    close(w.grad, G.T @ X, "dL/dW = G^T x", rtol=1e-10)
    close(b.grad, G.sum(axis=0), "dL/db = sum G", rtol=1e-10)


def test_linear_with_frozen_weight_checks_the_rest(backend, rand):
    x, w, b = rand(3, 4), rand(2, 4, requires_grad=False), rand(2)
    gradcheck(ops.linear, x, w, b)
    assert w.grad is None


# ----------------------------------------------------------------------------- layer norm

def layer_norm_ref(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / numpy.sqrt(var + eps) * w + b


@pytest.mark.parametrize("xshape", [(3, 5), (2, 3, 4), (6,)])
def test_layer_norm(backend, rand, xshape):
    d = xshape[-1]
    x, w, b = rand(*xshape, scale=2.0), rand(d), rand(d)
    close(ops.layer_norm(x, w, b), layer_norm_ref(x.numpy(), w.numpy(), b.numpy()), rtol=1e-11, atol=1e-12)
    gradcheck(ops.layer_norm, x, w, b, name=f"layer_norm {xshape}")


def test_layer_norm_eps_and_normalisation(backend, rand):
    x = rand(4, 8, scale=3.0)
    ones = Tensor(backend.to_device(numpy.ones(8)))
    zeros = Tensor(backend.to_device(numpy.zeros(8)))
    y = ops.layer_norm(x, ones, zeros, eps=0.0).numpy()
    close(y.mean(axis=-1), numpy.zeros(4), "mean 0", atol=1e-12)
    close(y.var(axis=-1), numpy.ones(4), "variance 1", rtol=1e-12)
    close(ops.layer_norm(x, ones, zeros, eps=0.5), layer_norm_ref(x.numpy(), 1.0, 0.0, eps=0.5), rtol=1e-12)
    gradcheck(lambda x: ops.layer_norm(x, ones, zeros, eps=0.5), x)


def test_layer_norm_of_a_constant_row_is_finite(backend):
    x = Tensor(backend.to_device(numpy.full((2, 4), 3.0)), requires_grad=True)
    w = Tensor(backend.to_device(numpy.ones(4)), requires_grad=True)
    b = Tensor(backend.to_device(numpy.arange(4.0)), requires_grad=True)
    y = ops.layer_norm(x, w, b)
    close(y, numpy.tile(numpy.arange(4.0), (2, 1)), "(x - mu) = 0, so y = b")
    y.sum().backward()
    assert numpy.all(numpy.isfinite(host(x.grad))) and numpy.all(numpy.isfinite(host(w.grad)))


# ----------------------------------------------------------------------------- cross-entropy

def cross_entropy_ref(logits, targets, ignore_index=-100):
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - numpy.log(numpy.exp(z).sum(axis=-1, keepdims=True))
    keep = targets != ignore_index
    rows = numpy.flatnonzero(keep)
    return -logp[rows, targets[rows]].sum() / max(keep.sum(), 1)


def test_cross_entropy(backend, rand):
    logits, t = rand(5, 4, scale=2.0), numpy.array([0, 3, 1, 1, 2])
    loss = ops.cross_entropy(logits, backend.to_device(t))
    assert loss.shape == ()
    close(loss, cross_entropy_ref(logits.numpy(), t), "mean of -log softmax[target]")
    gradcheck(lambda x: ops.cross_entropy(x, backend.to_device(t)), logits)


@pytest.mark.parametrize("ignore_index", [-100, 0, -1])
def test_cross_entropy_ignores_rows(backend, rand, ignore_index):
    t = numpy.array([2, ignore_index, 1, ignore_index, 3, 0 if ignore_index != 0 else 1])
    logits = rand(6, 4)
    loss = ops.cross_entropy(logits, backend.to_device(t), ignore_index=ignore_index)
    close(loss, cross_entropy_ref(logits.numpy(), t, ignore_index), "mean over the kept rows only")
    gradcheck(lambda x: ops.cross_entropy(x, backend.to_device(t), ignore_index=ignore_index), logits)
    logits.grad = None
    ops.cross_entropy(logits, backend.to_device(t), ignore_index=ignore_index).backward()
    close(host(logits.grad)[t == ignore_index], numpy.zeros(((t == ignore_index).sum(), 4)),
          "ignored rows get no gradient")


def test_cross_entropy_closed_form_gradient(backend, rand):
    # dL/dlogits = (softmax - onehot(t)) / n on kept rows
    logits, t = rand(4, 3), numpy.array([1, -100, 0, 2])
    ops.cross_entropy(logits, backend.to_device(t)).backward()
    z = numpy.exp(logits.numpy())
    p = z / z.sum(axis=1, keepdims=True)
    onehot = numpy.eye(3)[numpy.where(t < 0, 0, t)]
    expected = (p - onehot) / 3 * (t != -100)[:, None]
    close(logits.grad, expected, rtol=1e-10)


def test_cross_entropy_with_3d_logits(backend, rand):
    logits = rand(2, 3, 4)
    t = numpy.array([[1, 0, -100], [3, -100, 2]])
    loss = ops.cross_entropy(logits, backend.to_device(t))
    close(loss, cross_entropy_ref(logits.numpy().reshape(6, 4), t.reshape(6)))
    gradcheck(lambda x: ops.cross_entropy(x, backend.to_device(t)), logits)


def test_cross_entropy_with_every_row_ignored_is_zero(backend, rand):
    logits = rand(3, 4)
    loss = ops.cross_entropy(logits, backend.to_device(numpy.full(3, -100)))
    assert float(loss.item()) == 0.0
    loss.backward()
    close(logits.grad, numpy.zeros((3, 4)))


def test_cross_entropy_accepts_host_and_tensor_targets(backend, rand):
    logits, t = rand(3, 4), numpy.array([0, 1, 2])
    expected = cross_entropy_ref(logits.numpy(), t)
    close(ops.cross_entropy(logits, t), expected, "host targets")
    close(ops.cross_entropy(logits, Tensor(backend.to_device(t))), expected, "Tensor targets")


def test_cross_entropy_is_stable_for_huge_logits(backend):
    logits = Tensor(backend.to_device(numpy.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 5e4]])),
                    requires_grad=True)
    loss = ops.cross_entropy(logits, backend.to_device(numpy.array([0, 1])))
    close(loss, 5e4 / 2, "row 0 costs 0, row 1 costs 5e4", rtol=1e-12)
    loss.backward()
    close(logits.grad, [[0, 0, 0], [0, -0.5, 0.5]], atol=1e-12)


def test_cross_entropy_shape_errors(backend, rand):
    with pytest.raises(ValueError, match="reshape"):
        ops.cross_entropy(rand(3, 4), numpy.array([0, 1]))


def test_cross_entropy_second_backward_through_retained_graph_is_a_clear_error(backend, rand):
    logits = rand(3, 4)
    loss = ops.cross_entropy(logits, numpy.array([0, 1, 2]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward(retain_graph=True)


# ----------------------------------------------------------------------------- embedding

def test_embedding_forward_and_repeated_ids(backend, rand):
    w = rand(5, 3)
    ids = numpy.array([[1, 4, 1], [1, 0, 4]])
    out = ops.embedding(backend.to_device(ids), w)
    close(out, w.numpy()[ids], "out = W[ids]")
    g = numpy.random.default_rng(6).normal(size=(2, 3, 3))
    out.backward(backend.to_device(g))
    expected = numpy.zeros((5, 3))
    for (b, t), v in numpy.ndenumerate(ids):
        expected[v] += g[b, t]
    close(w.grad, expected, "row v of dL/dW sums every position with id v", rtol=1e-12)
    assert not host(w.grad)[[2, 3]].any(), "unused rows get zero gradient"
    gradcheck(lambda w: ops.embedding(backend.to_device(ids), w), w)


def test_embedding_accepts_a_tensor_of_ids(backend, rand):
    w = rand(4, 2)
    ids = Tensor(backend.to_device(numpy.array([3, 3, 3])))
    close(ops.embedding(ids, w), w.numpy()[[3, 3, 3]])
    gradcheck(lambda w: ops.embedding(ids, w), w)


# ----------------------------------------------------------------------------- dropout

def test_dropout_backward_uses_the_forward_mask(backend, rand):
    p = 0.4
    x = Tensor(backend.to_device(numpy.ones((20, 30))), requires_grad=True)
    minipeft.manual_seed(11)
    out = ops.dropout(x, p)
    kept = host(out)                    # x = 1: the output is the scaled mask itself
    assert set(numpy.unique(kept).tolist()) <= {0.0, 1 / (1 - p)}, numpy.unique(kept)
    assert 0 < (kept == 0).sum() < kept.size
    g = numpy.random.default_rng(0).normal(size=(20, 30))
    out.backward(backend.to_device(g))
    close(x.grad, g * kept, "dL/dx = G * mask / (1 - p)")


def test_dropout_same_seed_same_mask(backend, rand):
    x = rand(8, 8)
    minipeft.manual_seed(5)
    a = ops.dropout(x, 0.5).numpy()
    minipeft.manual_seed(5)
    b = ops.dropout(x, 0.5).numpy()
    c = ops.dropout(x, 0.5).numpy()  # the stream moved on: a new mask
    numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(a, c)


def test_dropout_gradcheck_with_a_fixed_seed(backend, rand):
    def f(x):
        minipeft.manual_seed(3)  # the same mask at every evaluation of the check
        return ops.dropout(x, 0.3)
    gradcheck(f, rand(4, 5))


def test_dropout_is_identity_for_p0_and_in_eval(backend, rand):
    x = rand(3, 4)
    for y in (ops.dropout(x, 0.0), ops.dropout(x, 0.7, training=False)):
        close(y, x.numpy())
        x.grad = None
        y.sum().backward()
        close(x.grad, numpy.ones((3, 4)))


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_rejects_bad_probabilities(backend, rand, p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ops.dropout(rand(2), p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_the_expectation(backend, p):
    # 10^6 entries: the mean of out is 1 +- sqrt(p/(1-p))/1000 (<= 3e-3 at p = 0.9), so 1% cannot flake
    x = Tensor(backend.to_device(numpy.ones(1_000_000, dtype=numpy.float32)))
    out = host(ops.dropout(x, p))
    assert abs(out.mean() - 1.0) < 0.01, f"E[dropout(1)] = {out.mean()} at p = {p}"
    assert abs((out == 0).mean() - p) < 0.01, f"dropped fraction {(out == 0).mean()} at p = {p}"


# ----------------------------------------------------------------------------- masked fill

def test_masked_fill(backend, rand):
    x = rand(3, 4)
    mask = numpy.random.default_rng(7).random((3, 4)) > 0.5
    out = ops.masked_fill(x, backend.to_device(mask), -1e9)
    close(out, numpy.where(mask, -1e9, x.numpy()))
    gradcheck(lambda x: ops.masked_fill(x, backend.to_device(mask), 0.0), x)
    x.grad = None
    ops.masked_fill(x, backend.to_device(mask), 2.0).sum().backward()
    close(x.grad, (~mask).astype(float), "filled positions get no gradient")


def test_masked_fill_with_a_broadcast_mask(backend, rand):
    x = rand(2, 3, 4)
    causal = numpy.triu(numpy.ones((3, 4), dtype=bool), k=1)       # (3, 4) against (2, 3, 4)
    close(ops.masked_fill(x, backend.to_device(causal), -5.0), numpy.where(causal, -5.0, x.numpy()))
    gradcheck(lambda x: ops.masked_fill(x, backend.to_device(causal), -5.0), x)
    mask_t = Tensor(backend.to_device(causal))
    close(ops.masked_fill(x, mask_t, 1.0), numpy.where(causal, 1.0, x.numpy()), "a Tensor mask")


def test_masked_fill_mask_broadcasting_x_up(backend, rand):
    # x (2, 1, 3) against a mask (2, 4, 3): the output is (2, 4, 3), x's gradient sums the copies
    x = rand(2, 1, 3)
    mask = numpy.random.default_rng(8).random((2, 4, 3)) > 0.5
    close(ops.masked_fill(x, backend.to_device(mask), 0.0), numpy.where(mask, 0.0, x.numpy()))
    gradcheck(lambda x: ops.masked_fill(x, backend.to_device(mask), 0.0), x)


# ----------------------------------------------------------------------------- attention

NEG_INF = -numpy.inf


def attention_ref(q, k, v, kp=None, vp=None, causal=True, key_mask=None):
    """softmax(Q K'^T / sqrt(D) + M) V' written out in NumPy, M = -inf where a key is blocked."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    blocked = numpy.zeros((B, 1, Tq, Tk), dtype=bool)
    if causal:
        for i in range(Tq):
            pos = Tk - Tq + i                       # absolute position of query i
            blocked[:, :, i, pos + 1:] = True
    if key_mask is not None:
        blocked |= ~key_mask.astype(bool)[:, None, None, :]
    if kp is not None:
        P = kp.shape[2]
        k = numpy.concatenate([numpy.broadcast_to(kp, (B, H, P, D)), k], axis=2)
        v = numpy.concatenate([numpy.broadcast_to(vp, (B, H, P, D)), v], axis=2)
        blocked = numpy.concatenate([numpy.zeros((B, 1, Tq, P), dtype=bool), blocked], axis=-1)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(D) + numpy.where(blocked, NEG_INF, 0.0)
    e = numpy.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def _qkv(rand, B=2, H=2, Tq=3, Tk=3, D=4, P=0, prefix_batch=None):
    q, k, v = rand(B, H, Tq, D, name="q"), rand(B, H, Tk, D, name="k"), rand(B, H, Tk, D, name="v")
    if not P:
        return [q, k, v]
    pb = B if prefix_batch is None else prefix_batch
    return [q, k, v, rand(pb, H, P, D, name="k_prefix"), rand(pb, H, P, D, name="v_prefix")]


KEY_MASK = numpy.array([[1, 1, 1, 0], [0, 1, 1, 1]])   # batch 0 pads the end, batch 1 the start

ATTENTION_CASES = {
    # name: (qkv kwargs, causal, key mask)
    "causal": (dict(Tk=3), True, None),
    "non-causal": (dict(Tk=3), False, None),
    "key padding, non-causal": (dict(Tk=4), False, KEY_MASK),
    "key padding, causal, Tq < Tk": (dict(Tk=4), True, KEY_MASK),
    "cache: Tq < Tk, causal": (dict(Tq=2, Tk=5), True, None),
    "cache: one query, causal": (dict(Tq=1, Tk=4), True, None),
    "prefix shared (batch 1), causal": (dict(Tk=3, P=2, prefix_batch=1), True, None),
    "prefix per sample (batch B), causal": (dict(Tk=3, P=2), True, None),
    "prefix shared, key padding": (dict(Tk=4, P=2, prefix_batch=1), True, KEY_MASK),
    "prefix per sample, non-causal, cache": (dict(Tq=2, Tk=4, P=1), False, KEY_MASK),
    "single batch, single head": (dict(B=1, H=1, Tk=3, P=2, prefix_batch=1), True, None),
}


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_attention(backend, rand, name):
    shapes, causal, key_mask = ATTENTION_CASES[name]
    if key_mask is not None and shapes.get("B", 2) != key_mask.shape[0]:
        key_mask = key_mask[: shapes["B"]]
    ts = _qkv(rand, **shapes)
    out = ops.attention(*ts, causal=causal, key_mask=key_mask)
    expected = attention_ref(*[t.numpy() for t in ts], causal=causal, key_mask=key_mask)
    close(out, expected, f"attention ({name}) vs softmax(QK^T/sqrt(d) + mask) V", rtol=1e-10, atol=1e-12)
    gradcheck(lambda *ts: ops.attention(*ts, causal=causal, key_mask=key_mask), *ts, name=name)


def test_attention_key_mask_as_bool_int_and_tensor(backend, rand):
    ts = _qkv(rand, Tk=4)
    a = ops.attention(*ts, causal=False, key_mask=KEY_MASK).numpy()
    b = ops.attention(*ts, causal=False, key_mask=KEY_MASK.astype(bool)).numpy()
    c = ops.attention(*ts, causal=False, key_mask=Tensor(backend.to_device(KEY_MASK))).numpy()
    numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(a, c)


def test_attention_padded_keys_do_not_matter(backend, rand):
    # changing k and v at a padded position must not change any output
    q, k, v = _qkv(rand, Tk=4)
    out = ops.attention(q, k, v, causal=False, key_mask=KEY_MASK).numpy()
    k2, v2 = k.numpy().copy(), v.numpy().copy()
    k2[0, :, 3] += 100.0
    v2[1, :, 0] -= 100.0
    out2 = ops.attention(q, Tensor(backend.to_device(k2)), Tensor(backend.to_device(v2)),
                         causal=False, key_mask=KEY_MASK).numpy()
    numpy.testing.assert_allclose(out2, out, rtol=1e-12, atol=1e-12)


def test_attention_fully_masked_row_is_finite(backend, rand):
    # batch 1 has no visible key at all: its output is the mean of V (uniform weights), never NaN
    q, k, v = _qkv(rand, Tk=3)
    key_mask = numpy.array([[1, 1, 1], [0, 0, 0]])
    out = ops.attention(q, k, v, causal=False, key_mask=key_mask)
    Y = out.numpy()
    assert numpy.all(numpy.isfinite(Y)), Y
    close(Y[1], numpy.broadcast_to(v.numpy()[1].mean(axis=1, keepdims=True), (2, 3, 4)), "mean of V",
          rtol=1e-12)
    close(Y[0], attention_ref(q.numpy()[:1], k.numpy()[:1], v.numpy()[:1], causal=False)[0], rtol=1e-10)
    # the blocked scores are constants: no gradient reaches q or k of the fully masked batch row
    gradcheck(lambda q, k, v: ops.attention(q, k, v, causal=False, key_mask=key_mask), q, k, v)
    assert not host(q.grad)[1].any() and not host(k.grad)[1].any()


def test_attention_causal_with_left_padding_has_fully_masked_first_query(backend, rand):
    # batch 1 starts with padding, so its first query sees no key: finite, and gradients check
    q, k, v = _qkv(rand, Tk=4, Tq=4)
    out = ops.attention(q, k, v, causal=True, key_mask=KEY_MASK)
    assert numpy.all(numpy.isfinite(out.numpy()))
    gradcheck(lambda q, k, v: ops.attention(q, k, v, causal=True, key_mask=KEY_MASK), q, k, v)


def test_attention_prefix_rows_stay_visible_under_full_masking(backend, rand):
    q, k, v, kp, vp = _qkv(rand, Tk=3, P=2, prefix_batch=1)
    key_mask = numpy.zeros((2, 3))
    out = ops.attention(q, k, v, kp, vp, causal=True, key_mask=key_mask)
    # only the prefix is visible: attention over the P prefix rows alone
    expected = attention_ref(q.numpy(), kp.numpy().repeat(2, 0), vp.numpy().repeat(2, 0), causal=False)
    close(out, expected, "attends to the prefix only", rtol=1e-10)
    gradcheck(lambda *ts: ops.attention(*ts, causal=True, key_mask=key_mask), q, k, v, kp, vp)


def test_attention_prefix_only_training(backend, rand):
    # prefix tuning: the base model's q, k, v are frozen, only the prefix rows train
    q, k, v, kp, vp = _qkv(rand, Tk=3, P=2, prefix_batch=1)
    for t in (q, k, v):
        t.requires_grad = False
    gradcheck(lambda kp, vp: ops.attention(q, k, v, kp, vp, causal=True), kp, vp)
    assert q.grad is None and k.grad is None and v.grad is None


def test_attention_cache_step_matches_the_full_sequence(backend, rand):
    # the last query against all keys (a KV-cache step) equals the last row of full causal attention
    q, k, v = _qkv(rand, Tq=4, Tk=4)
    full = ops.attention(q, k, v, causal=True).numpy()
    last = ops.attention(q[:, :, 3:], k, v, causal=True).numpy()
    numpy.testing.assert_allclose(last, full[:, :, 3:], rtol=1e-12, atol=1e-12)


def test_attention_requires_both_prefix_tensors(backend, rand):
    q, k, v, kp, _ = _qkv(rand, P=1)
    with pytest.raises(ValueError, match="k_prefix and v_prefix"):
        ops.attention(q, k, v, k_prefix=kp)


def test_cross_entropy_refuses_a_target_that_is_not_a_class(backend):
    logits = Tensor(backend.to_device(numpy.zeros((3, 4))), requires_grad=True)
    for bad in (-5, 4):
        with pytest.raises(ValueError, match=f"target {bad} is not a class of the 4 logits"):
            ops.cross_entropy(logits, numpy.array([1, bad, 2]))
    assert float(ops.cross_entropy(logits, numpy.array([1, -100, 2])).item()) == pytest.approx(math.log(4))
