"""Bottleneck adapters (minipeft/peft/adapter.py): Houlsby, Pfeiffer, parallel (ffn or attn).

- float64 gradient checks of every placement on both layouts, and of a classifier whose head
  trains with the adapter (modules_to_save);
- each placement wraps exactly the modules its paper names;
- the layers compute h + f(h) (sequential) and sublayer(x) + s f(x) (parallel), f(h) =
  act(h W_down + b_down) W_up + b_up;
- near-identity start: the change of the outputs is O(init_scale^2), under a bound computed from
  the actual weights at one layer, and exactly zero with init_scale=0;
- disable_adapter gives the base model exactly; merging is refused with a clear error.
"""
from __future__ import annotations

import numpy
import pytest

from minipeft import ops
from minipeft.gradcheck import gradcheck
from minipeft.peft import AdapterConfig, LoraConfig, apply
from minipeft.peft.adapter import ParallelAdapter, SequentialAdapter

pytestmark = pytest.mark.task_adapter

PLACEMENTS = {
    "houlsby": AdapterConfig(size=3, placement="houlsby"),
    "pfeiffer": AdapterConfig(size=2, placement="pfeiffer"),
    "parallel_ffn": AdapterConfig(size=3, placement="parallel", scaling=4.0),
    "parallel_attn": AdapterConfig(size=2, placement="parallel", parallel_site="attn", activation="tanh"),
}

ACT = {"gelu": lambda z: 0.5 * z * (1 + numpy.tanh(numpy.sqrt(2 / numpy.pi) * (z + 0.044715 * z ** 3))),
       "relu": lambda z: numpy.maximum(z, 0.0),
       "tanh": numpy.tanh}


def wrappers(pm):
    return {n.split("base_model.model.", 1)[1]: type(m).__name__ for n, m in pm.named_modules()
            if isinstance(m, (SequentialAdapter, ParallelAdapter))}


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_gradcheck_every_placement(tiny, arch, placement):
    pm = apply(tiny.model(arch), PLACEMENTS[placement])
    params = tiny.perturb(pm)
    for n, p in pm.named_parameters():
        p.name = n
    assert all(".adapters.default." in p.name for p in params)
    ids = tiny.ids(2, 5)
    worst = gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=2, name=f"adapter {placement} {arch}")
    assert worst < 1e-5, worst
    assert [n for n, p in pm.named_parameters() if not p.requires_grad and p.grad is not None] == []


def test_gradcheck_classifier_with_its_head(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), AdapterConfig(size=2, placement="pfeiffer", modules_to_save=("cls_head",)))
    params = tiny.perturb(pm)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert "base_model.model.cls_head.modules_to_save.default.weight" in names
    ids, y = tiny.ids(3, 5), tiny.labels(3)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=2, name=f"adapter classifier {arch}") < 1e-5


# ----------------------------------------------------------------------------- where they go

@pytest.mark.parametrize("placement,want", [
    ("houlsby", {"h.0.attn.o": "SequentialAdapter", "h.0.mlp.proj": "SequentialAdapter",
                 "h.1.attn.o": "SequentialAdapter", "h.1.mlp.proj": "SequentialAdapter"}),
    ("pfeiffer", {"h.0.mlp.proj": "SequentialAdapter", "h.1.mlp.proj": "SequentialAdapter"}),
    ("parallel_ffn", {"h.0.mlp": "ParallelAdapter", "h.1.mlp": "ParallelAdapter"}),
    ("parallel_attn", {"h.0.attn": "ParallelAdapter", "h.1.attn": "ParallelAdapter"}),
])
def test_placement_wraps_the_named_modules(tiny, placement, want):
    pm = apply(tiny.model("bert"), PLACEMENTS[placement])
    assert wrappers(pm) == want


def test_layers_subset(tiny):
    pm = apply(tiny.model("gpt2", n_layer=3), AdapterConfig(size=2, layers=(0, 2)))
    assert wrappers(pm) == {"h.0.attn.o": "SequentialAdapter", "h.0.mlp.proj": "SequentialAdapter",
                            "h.2.attn.o": "SequentialAdapter", "h.2.mlp.proj": "SequentialAdapter"}


def test_default_activations_follow_the_papers():
    assert AdapterConfig(placement="houlsby").activation == "gelu"
    assert AdapterConfig(placement="pfeiffer").activation == "relu"
    assert AdapterConfig(placement="parallel").activation == "relu"


# ----------------------------------------------------------------------------- what they compute

def _bottleneck_np(tiny, bn, h):
    wd, bd = tiny.np(bn.down.weight), tiny.np(bn.down.bias)
    wu, bu = tiny.np(bn.up.weight), tiny.np(bn.up.bias)
    return ACT[bn.activation](h @ wd.T + bd) @ wu.T + bu


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh"])
def test_sequential_layer_is_h_plus_f_of_h(tiny, activation):
    pm = apply(tiny.model("gpt2"), AdapterConfig(size=3, placement="pfeiffer", activation=activation))
    tiny.perturb(pm)
    layer = pm.model.h[1].mlp.proj
    x = numpy.random.default_rng(5).normal(size=(2, 3, 32))
    layer.route = [("default", None)]
    got = tiny.np(layer(tiny.tensor(x)))
    layer.route = []
    h = tiny.np(layer.base_layer(tiny.tensor(x)))
    want = h + _bottleneck_np(tiny, layer.adapters["default"], h)
    assert abs(got - want).max() < 1e-12, f"max error {abs(got - want).max()}"


@pytest.mark.parametrize("site", ["ffn", "attn"])
def test_parallel_layer_is_sublayer_plus_scaled_f_of_x(tiny, site):
    outs = {}
    for s in (1.0, 4.0):
        pm = apply(tiny.model("gpt2"), AdapterConfig(size=3, placement="parallel", parallel_site=site, scaling=s))
        tiny.perturb(pm)
        layer = pm.model.h[0].mlp if site == "ffn" else pm.model.h[0].attn
        x = numpy.random.default_rng(6).normal(size=(2, 3, 8))
        layer.route = [("default", None)]
        got = tiny.np(layer(tiny.tensor(x)))
        layer.route = []
        y = tiny.np(layer.base_layer(tiny.tensor(x)))
        want = y + s * _bottleneck_np(tiny, layer.adapters["default"], x)
        assert abs(got - want).max() < 1e-12, f"scaling {s}: max error {abs(got - want).max()}"
        outs[s] = got - y
    assert abs(outs[4.0] - 4 * outs[1.0]).max() < 1e-12


# ----------------------------------------------------------------------------- near-identity start

def test_init_scale_zero_is_exactly_the_base_model(tiny, arch):
    model = tiny.model(arch)
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    for placement in PLACEMENTS:
        cfg = PLACEMENTS[placement]
        pm = apply(model, AdapterConfig(size=cfg.size, placement=cfg.placement, parallel_site=cfg.parallel_site,
                                        scaling=cfg.scaling, init_scale=0.0))
        got = tiny.np(pm(ids)[0])
        assert numpy.array_equal(got, base), f"{placement}: max |out - base| = {abs(got - base).max()}"
        pm.delete_adapter("default")
        assert wrappers(pm) == {}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_near_identity_start_follows_init_scale(tiny, arch, placement):
    """W_down, W_up ~ N(0, s^2), biases 0: f(h) = O(s^2). With the same seed the weights for two
    scales are multiples of each other, so the output change shrinks ~100x when s shrinks 10x."""
    cfg = PLACEMENTS[placement]
    ids = tiny.ids()
    change = {}
    for s in (1e-2, 1e-3):
        model = tiny.model(arch)
        base = tiny.np(model(ids)[0])
        pm = apply(model, AdapterConfig(size=cfg.size, placement=cfg.placement, parallel_site=cfg.parallel_site,
                                        scaling=cfg.scaling, activation=cfg.activation, init_scale=s))
        change[s] = abs(tiny.np(pm(ids)[0]) - base).max()
        # at one adapter: |f(h)|_inf <= |W_up|_inf |W_down|_inf |h|_inf since |act(z)| <= |z|
        layer = next(m for _, m in pm.named_modules() if isinstance(m, (SequentialAdapter, ParallelAdapter)))
        bn = layer.adapters["default"]
        h = numpy.random.default_rng(8).normal(size=(3, 8))
        f = _bottleneck_np(tiny, bn, h)
        bound = abs(tiny.np(bn.up.weight)).sum(1).max() * abs(tiny.np(bn.down.weight)).sum(1).max() * abs(h).max()
        assert abs(f).max() <= bound, f"|f(h)| {abs(f).max()} > bound {bound}"
        assert bound < 40 * cfg.size * 8 * s * s * abs(h).max()
    assert 0 < change[1e-3] < 1e-3, f"init_scale 1e-3 changed the logits by {change[1e-3]}"
    ratio = change[1e-2] / change[1e-3]
    assert 80 < ratio < 125, f"output change should scale like init_scale^2: ratio {ratio} for a 10x scale"


def test_disable_adapter_gives_the_base_model_exactly(tiny, arch):
    model = tiny.model(arch)
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, PLACEMENTS["houlsby"])
    pm.add_adapter("par", PLACEMENTS["parallel_ffn"])
    pm.set_adapter(["default", "par"])
    tiny.perturb(pm)
    assert abs(tiny.np(pm(ids)[0]) - base).max() > 1e-3
    with pm.disable_adapter():
        assert numpy.array_equal(tiny.np(pm(ids)[0]), base)


# ----------------------------------------------------------------------------- no merging

def test_adapters_refuse_to_merge(tiny):
    pm = apply(tiny.model("gpt2"), PLACEMENTS["houlsby"])
    tiny.perturb(pm)
    before = tiny.snapshot(pm)
    for call in (pm.merge_adapter, pm.merge_and_unload):
        with pytest.raises(ValueError) as e:
            call()
        assert "AdapterConfig cannot be merged" in str(e.value) and "lora" in str(e.value), str(e.value)
    after = tiny.snapshot(pm)
    assert all(numpy.array_equal(before[n], after[n]) for n in before)


def test_lora_goes_under_an_adapter_not_over_it(tiny):
    """LoRA needs the plain Linear: added first it works beside an adapter on the same layer;
    added after, it is refused with a message that says what to do, and leaves nothing behind."""
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2, target_modules=("o",)))
    pm.add_adapter("ad", PLACEMENTS["houlsby"])
    assert wrappers(pm)["h.0.attn.o"] == "SequentialAdapter"
    pm2 = apply(tiny.model("gpt2"), PLACEMENTS["houlsby"])
    n0 = pm2.num_parameters()
    with pytest.raises(ValueError) as e:
        pm2.add_adapter("lo", LoraConfig(r=2, target_modules=("q", "o")))
    assert "add the LoRA adapter before" in str(e.value), str(e.value)
    assert pm2.num_parameters() == n0 and "lo" not in pm2.peft_config
    assert not any(".lo." in n for n, _ in pm2.named_parameters())
