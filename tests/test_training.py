"""Training steps end to end: Transformer + loss + backward + AdamW (+ checkpoint).

- a tiny model overfits one batch (LM, MLM, classification): loss falls at least 10x;
- float32 stays float32 in every parameter, activation, saved buffer, gradient and optimizer
  state; a float64 model trains in float64 even after the default dtype is back to float32;
- frozen parameters are bit-identical after optimizer steps (with weight decay on);
- a trained model saved with minipeft.checkpoint and loaded into a fresh model gives the same
  logits bit for bit.
"""
from __future__ import annotations

import math

import numpy
import pytest

import minipeft
from minipeft import backend as B
from minipeft import checkpoint, ops
from minipeft.autograd import Tensor
from minipeft.nn import Transformer, TransformerConfig
from minipeft.optim import AdamW

pytestmark = pytest.mark.task_training

TINY = dict(vocab_size=32, n_ctx=16, d_model=16, n_layer=2, n_head=2)
MASK_ID = 1


def np_(t):
    return minipeft.to_numpy(t.data if isinstance(t, Tensor) else t)


def ints(*shape, high=32, low=0, seed=0):
    return numpy.random.default_rng(seed).integers(low, high, size=shape)


def tiny(arch="gpt2", seed=0, **kw):
    minipeft.manual_seed(seed)
    return Transformer(TransformerConfig(arch=arch, **{**TINY, **kw}))


def mlm_batch(B_=4, T=12, seed=0):
    """Masked-LM batch: 25% of the tokens replaced by MASK_ID; targets only there (-100 elsewhere)."""
    ids = ints(B_, T, low=2, seed=seed)
    masked = numpy.random.default_rng(seed + 1).random((B_, T)) < 0.25
    masked[:, 0] = True                                          # at least one per row
    return numpy.where(masked, MASK_ID, ids), numpy.where(masked, ids, -100)


def cls_batch(B_=8, T=10, seed=0):
    ids = ints(B_, T, low=2, seed=seed)
    lengths = numpy.random.default_rng(seed + 1).integers(4, T + 1, size=B_)
    mask = (numpy.arange(T)[None, :] < lengths[:, None]).astype(numpy.int64)
    ids = numpy.where(mask == 1, ids, 0)                          # pad id 0 after the real tokens
    labels = numpy.arange(B_) % 3
    return ids, mask, labels


def train(model, loss_fn, steps, lr=1e-2, stop_below=None, **opt_kw):
    """AdamW steps on one batch; returns the list of losses (stops early under `stop_below`)."""
    opt = AdamW(model.parameters(), lr=lr, **opt_kw)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        losses.append(loss.item())
        if stop_below is not None and losses[-1] < stop_below:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    return losses


def assert_overfits(losses, steps, what):
    first, last = losses[0], losses[-1]
    assert last < first / 10, (f"{what}: loss went from {first:.4f} to {last:.4f} in {len(losses)} steps "
                               f"(limit {steps}), not a 10x drop; every 10th: {numpy.round(losses[::10], 3)}")


# ----------------------------------------------------------------------------- overfitting one batch

def test_gpt2_overfits_one_batch(backend):
    model = tiny("gpt2")
    ids = ints(4, 13)
    x, y = ids[:, :-1], ids[:, 1:]
    first = model(x, targets=y)[1].item()
    assert abs(first - math.log(32)) < 0.1, f"initial loss {first}, expected ~ln 32 = {math.log(32):.3f}"
    losses = train(model, lambda: model(x, targets=y)[1], steps=100, stop_below=first / 10)
    assert_overfits(losses, 100, "gpt2 LM")


def test_bert_overfits_one_mlm_batch(backend):
    model = tiny("bert")
    x, y = mlm_batch()
    first = model(x, targets=y)[1].item()
    losses = train(model, lambda: model(x, targets=y)[1], steps=100, stop_below=first / 10)
    assert_overfits(losses, 100, "bert MLM")


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_classifier_overfits_one_padded_batch(backend, arch):
    model = tiny(arch, n_labels=3)
    ids, mask, labels = cls_batch()

    def loss_fn():
        return ops.cross_entropy(model.classify(ids, attention_mask=mask), labels)

    first = loss_fn().item()
    assert abs(first - math.log(3)) < 0.2, f"initial loss {first}, expected ~ln 3"
    losses = train(model, loss_fn, steps=100, stop_below=first / 10)
    assert_overfits(losses, 100, f"{arch} classification")
    pred = np_(model.classify(ids, attention_mask=mask)).argmax(-1)
    assert (pred == labels).all(), f"predictions {pred}, labels {labels}"


# ----------------------------------------------------------------------------- dtypes

def graph_arrays(loss):
    """Every Tensor of the autograd graph behind `loss` and every float array its ops saved."""
    tensors, saved, stack, seen = [], [], [loss], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append(t)
        if t._ctx is not None:
            for s in t._ctx.saved or ():
                if hasattr(s, "dtype") and hasattr(s, "shape") and s.dtype.kind == "f":
                    saved.append((t._ctx.fn.__name__, s))
            stack.extend(x for x in t._ctx.inputs if isinstance(x, Tensor))
    return tensors, saved


def step_and_collect_dtypes(model, loss_fn):
    """One full training step; returns {what: set of dtype names} seen along the way."""
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss = loss_fn()
    tensors, saved = graph_arrays(loss)
    assert len(tensors) > 50, f"the graph should be large, found {len(tensors)} tensors"
    seen = {
        "params before": {str(p.dtype) for p in model.parameters()},
        "graph tensors": {str(t.dtype) for t in tensors},
        "saved buffers": {f"{str(s.dtype)}" for _, s in saved},
        "loss": {str(loss.dtype)},
    }
    bad_saved = sorted({name for name, s in saved if str(s.dtype) != str(loss.dtype)})
    loss.backward(retain_graph=False)
    seen["grads"] = {str(p.grad.dtype) for p in model.parameters() if p.grad is not None}
    opt.step()
    seen["params after"] = {str(p.dtype) for p in model.parameters()}
    seen["optimizer state"] = {str(v.dtype) for st in opt.state.values() for v in st.values() if hasattr(v, "dtype")}
    return seen, bad_saved


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_float32_stays_float32_through_a_training_step(backend, arch):
    model = tiny(arch, n_labels=3, dropout=0.1)
    ids, mask, labels = cls_batch()
    if arch == "gpt2":
        def loss_fn():
            _, lm = model(ids[:, :-1], targets=ids[:, 1:], attention_mask=mask[:, :-1])
            return lm + ops.cross_entropy(model.classify(ids, attention_mask=mask), labels)
    else:
        x, y = mlm_batch()
        def loss_fn():
            _, lm = model(x, targets=y)
            return lm + ops.cross_entropy(model.classify(ids, attention_mask=mask), labels)
    seen, bad_saved = step_and_collect_dtypes(model, loss_fn)
    wrong = {k: v for k, v in seen.items() if v != {"float32"}}
    assert not wrong, f"{arch}: something left float32 during a training step: {wrong}; saved by {bad_saved}"


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_float64_model_trains_in_float64(backend, arch):
    """Built under default_dtype_as(float64), then trained with the default back at float32:
    nothing in the forward, backward or step may fall back to the default dtype."""
    minipeft.manual_seed(0)
    with B.default_dtype_as(numpy.float64):
        model = Transformer(TransformerConfig(arch=arch, **TINY, n_labels=3, dropout=0.1))
    assert B.default_dtype() == numpy.float32
    ids, mask, labels = cls_batch()

    def loss_fn():
        return ops.cross_entropy(model.classify(ids, attention_mask=mask), labels)

    seen, bad_saved = step_and_collect_dtypes(model, loss_fn)
    wrong = {k: v for k, v in seen.items() if v != {"float64"}}
    assert not wrong, f"{arch}: something left float64 during a training step: {wrong}; saved by {bad_saved}"
    # and it agrees with the same model in float32 (same seed: the same initial weights)
    minipeft.manual_seed(0)
    with B.default_dtype_as(numpy.float64):
        m64 = Transformer(TransformerConfig(arch=arch, **TINY, n_labels=3))
    minipeft.manual_seed(0)
    m32 = Transformer(TransformerConfig(arch=arch, **TINY, n_labels=3))
    a, b = np_(m64(ids, attention_mask=mask)[0]), np_(m32(ids, attention_mask=mask)[0])
    assert a.dtype == numpy.float64 and b.dtype == numpy.float32
    err = numpy.abs(a - b).max() / numpy.abs(a).max()
    assert err < 1e-5, f"{arch}: float32 and float64 logits differ by {err} (relative)"


# ----------------------------------------------------------------------------- frozen parameters

@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_frozen_parameters_are_bit_identical_after_training(backend, arch):
    model = tiny(arch, n_labels=3)
    model.freeze()
    model.h[1].requires_grad_(True)
    model.cls_head.requires_grad_(True)
    for name, p in model.named_parameters():               # BitFit-style: every bias trains too
        if name.endswith("bias"):
            p.requires_grad_(True)
    before = {n: np_(p).copy() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    ids, mask, labels = cls_batch()
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)     # decay must not touch frozen weights
    assert len(opt.state) == len(trainable), f"optimizer state for {len(opt.state)} params, {len(trainable)} trainable"
    for _ in range(4):
        ops.cross_entropy(model.classify(ids, attention_mask=mask), labels).backward()
        opt.step()
        opt.zero_grad()
    changed_frozen = [n for n, p in model.named_parameters()
                      if n not in trainable and not numpy.array_equal(np_(p), before[n])]
    assert not changed_frozen, f"{arch}: frozen parameters changed: {changed_frozen}"
    unchanged = [n for n, p in model.named_parameters()
                 if n in trainable and numpy.array_equal(np_(p), before[n])]
    # bert's MLM head is outside the classification loss; its biases stay put (no gradient)
    unchanged = [n for n in unchanged if not n.startswith(("mlm_", "h.1.attn.k.bias"))]
    assert not unchanged, f"{arch}: trainable parameters did not move: {unchanged}"


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_checkpoint_round_trip_of_a_trained_model(backend, arch, tmp_path):
    model = tiny(arch, n_labels=3)
    ids, mask, labels = cls_batch()
    train(model, lambda: ops.cross_entropy(model.classify(ids, attention_mask=mask), labels), steps=5)
    checkpoint.save_checkpoint(model, tmp_path / "run", model.config)

    state, config = checkpoint.load_checkpoint(tmp_path / "run")
    cfg = TransformerConfig.from_dict(config)
    assert cfg == model.config, (cfg, model.config)
    minipeft.manual_seed(123)                              # a different initialisation, overwritten
    fresh = Transformer(cfg)
    fresh.load_state_dict(state)
    for name, p in fresh.named_parameters():
        assert p.dtype == numpy.float32, (name, p.dtype)
    a, b = np_(model(ids, attention_mask=mask)[0]), np_(fresh(ids, attention_mask=mask)[0])
    assert numpy.array_equal(a, b), f"{arch}: reloaded logits differ, max {numpy.abs(a - b).max()}"
    ca, cb = np_(model.classify(ids, attention_mask=mask)), np_(fresh.classify(ids, attention_mask=mask))
    assert numpy.array_equal(ca, cb), f"{arch}: reloaded class logits differ, max {numpy.abs(ca - cb).max()}"
