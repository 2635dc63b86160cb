"""LoRA (minipeft/peft/lora.py): h = W0 x + (alpha/r) B A dropout(x), A random, B = 0.

- float64 gradient checks of A and B on both layouts, several targets, rsLoRA, a layer subset;
- the adapted model starts exactly equal to the base model; disable_adapter gives it back exactly;
- the layer computes exactly W0 x + b + s B A x with s = alpha/r (alpha/sqrt(r) with rsLoRA);
- dropout acts on the input of A only;
- merge/unmerge equivalence in float64 (several adapters and targets); merging in train mode
  with dropout is refused; merge_and_unload returns a plain Transformer with the same outputs;
- several active adapters add up: the model equals the base with W0 + sum of the deltas;
- the saved file has Hugging Face peft's layout and holds only the adapter.
"""
from __future__ import annotations

import json
import math
import os

import numpy
import pytest
from safetensors.numpy import load_file

from minipeft import ops
from minipeft.gradcheck import gradcheck
from minipeft.nn import Linear, Transformer
from minipeft.peft import LoraConfig, PeftModel, apply
from minipeft.peft.api import AdapterLayer
from minipeft.peft.lora import LoraLinear

pytestmark = pytest.mark.task_lora

VARIANTS = {
    "qv": LoraConfig(r=2, lora_alpha=4.0, target_modules=("q", "v")),
    "all6_rslora": LoraConfig(r=3, lora_alpha=2.0, target_modules=("q", "k", "v", "o", "fc", "proj"), use_rslora=True),
    "mlp_layer1": LoraConfig(r=1, lora_alpha=1.0, target_modules=("fc", "proj"), layers=(1,)),
}


def linears(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLinear)}


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_lora_parameters(tiny, arch, variant):
    pm = apply(tiny.model(arch), VARIANTS[variant])
    params = tiny.perturb(pm)
    for n, p in pm.named_parameters():
        p.name = n
    assert all(("lora_A" in p.name or "lora_B" in p.name) for p in params), [p.name for p in params]
    ids = tiny.ids(2, 5)
    worst = gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=2, name=f"lora {variant} {arch}")
    assert worst < 1e-5, worst
    frozen_with_grad = [n for n, p in pm.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == [], f"frozen base parameters received gradients: {frozen_with_grad}"


def test_gradcheck_lora_classifier_with_its_head(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), LoraConfig(r=2, target_modules=("q", "v", "proj"), modules_to_save=("cls_head",)))
    params = tiny.perturb(pm)
    assert len(params) == 2 * 3 * 2 + 2, "A and B of 3 targets in 2 layers + the head copy's weight and bias"
    ids, y = tiny.ids(3, 5), tiny.labels(3)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=2, name=f"lora classifier {arch}") < 1e-5


# ----------------------------------------------------------------------------- start, disable

def test_starts_exactly_equal_to_base(tiny, arch):
    model = tiny.model(arch)
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, VARIANTS["all6_rslora"])
    for name, layer in linears(pm).items():
        a, b = tiny.np(layer.lora_A["default"].weight), tiny.np(layer.lora_B["default"].weight)
        assert not b.any(), f"{name}: B must start at zero, max |B| = {abs(b).max()}"
        assert a.std() > 0.1 / math.sqrt(layer.base_layer.n_in), f"{name}: A must start random, std {a.std()}"
    got = tiny.np(pm(ids)[0])
    assert numpy.array_equal(got, base), f"max |adapted - base| = {abs(got - base).max()} at step 0"


def test_disable_adapter_gives_the_base_model_exactly(tiny, arch):
    model = tiny.model(arch)
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, VARIANTS["qv"])
    tiny.perturb(pm)
    adapted = tiny.np(pm(ids)[0])
    assert abs(adapted - base).max() > 1e-3, "the perturbed adapter should change the outputs"
    with pm.disable_adapter():
        off = tiny.np(pm(ids)[0])
    assert numpy.array_equal(off, base), f"disabled: max |out - base| = {abs(off - base).max()}"
    again = tiny.np(pm(ids)[0])
    assert numpy.array_equal(again, adapted), "leaving disable_adapter() must switch the adapter back on"


# ----------------------------------------------------------------------------- the layer itself

@pytest.mark.parametrize("r,alpha,rs", [(1, 1.0, False), (4, 16.0, False), (4, 16.0, True), (3, 5.0, True)])
def test_layer_computes_w0x_plus_scaled_BAx(tiny, r, alpha, rs):
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs)
    expected_scaling = alpha / math.sqrt(r) if rs else alpha / r
    assert cfg.scaling == pytest.approx(expected_scaling)
    layer = LoraLinear(Linear(6, 5))
    layer.add("default", cfg)
    tiny.perturb([layer.lora_B["default"].weight, layer.base_layer.bias])
    layer.route = [("default", None)]
    x = numpy.random.default_rng(3).normal(size=(2, 3, 6))
    got = tiny.np(layer(tiny.tensor(x)))
    w0, b0 = tiny.np(layer.base_layer.weight), tiny.np(layer.base_layer.bias)
    a, b = tiny.np(layer.lora_A["default"].weight), tiny.np(layer.lora_B["default"].weight)
    assert a.shape == (r, 6) and b.shape == (5, r)
    want = x @ w0.T + b0 + expected_scaling * (x @ a.T @ b.T)
    assert abs(got - want).max() < 1e-12, f"max error {abs(got - want).max()}"
    assert abs(tiny.np(layer.delta_weight("default")) - expected_scaling * b @ a).max() < 1e-12


def test_dropout_acts_on_the_input_of_A_only(tiny):
    """y = W0 x + b + s B A (mask * x / (1 - p)): with B A invertible, the masked input can be
    solved for, and each of its entries must be 0 or x / (1 - p)."""
    layer = LoraLinear(Linear(4, 4))
    layer.add("default", LoraConfig(r=4, lora_alpha=4.0, lora_dropout=0.5))
    layer.route = [("default", None)]
    xh = numpy.random.default_rng(4).normal(size=(6, 4))
    x = tiny.tensor(xh)
    base = tiny.np(layer.base_layer(x))
    # B = 0: whatever the dropout mask, the output is the base layer's, also in training mode
    assert numpy.array_equal(tiny.np(layer(x)), base)
    tiny.perturb([layer.lora_B["default"].weight], std=1.0)
    a, b, s = tiny.np(layer.lora_A["default"].weight), tiny.np(layer.lora_B["default"].weight), layer.scaling["default"]
    m = s * (b @ a).T                                               # d = x_masked @ m
    assert abs(numpy.linalg.det(m)) > 1e-3
    layer.train()
    masked = [numpy.linalg.solve(m.T, (tiny.np(layer(x)) - base).T).T for _ in range(2)]
    for xm in masked:
        dropped = abs(xm) < 1e-8
        kept = abs(xm - 2 * xh) < 1e-8
        assert (dropped | kept).all(), f"masked input is not 0 or x/(1-p):\n{xm}\nx:\n{xh}"
        assert 0 < dropped.sum() < xh.size, f"{dropped.sum()} of {xh.size} entries dropped with p=0.5"
    assert not numpy.array_equal(masked[0], masked[1]), "in training the mask must change between calls"
    layer.eval()
    e1, e2 = tiny.np(layer(x)), tiny.np(layer(x))
    assert numpy.array_equal(e1, e2), "in eval mode LoRA dropout must be off"
    assert abs(e1 - (base + xh @ m)).max() < 1e-12


# ----------------------------------------------------------------------------- merging

def _two_adapters(tiny, arch, **kw):
    model = tiny.model(arch, **kw)
    pm = apply(model, LoraConfig(r=2, lora_alpha=4.0, target_modules=("q", "v", "fc"),
                                 modules_to_save=("cls_head",) if kw.get("n_labels") else ()))
    pm.add_adapter("other", LoraConfig(r=3, lora_alpha=3.0, target_modules=("k", "o", "proj", "v"), use_rslora=True))
    tiny.perturb(pm)
    return pm


def test_merge_unmerge_equivalence_float64(tiny, arch):
    pm = _two_adapters(tiny, arch)
    pm.set_adapter(["default", "other"])
    ids = tiny.ids()
    before = tiny.np(pm(ids)[0])
    w0 = {n: tiny.np(m.base_layer.weight) for n, m in linears(pm).items()}
    pm.merge_adapter()
    for n, m in linears(pm).items():
        assert sorted(m.merged) == sorted(m.lora_A.keys()), f"{n}: merged {m.merged}"
        want = w0[n] + sum(tiny.np(m.delta_weight(a)) for a in m.lora_A.keys())
        assert abs(tiny.np(m.base_layer.weight) - want).max() < 1e-12, f"{n}: W != W0 + sum of s B A"
    merged = tiny.np(pm(ids)[0])
    err = abs(merged - before).max()
    assert err < 1e-10, f"merged outputs differ from the unmerged ones by {err}"
    pm.merge_adapter()                                   # merging twice changes nothing
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10
    pm.unmerge_adapter()
    for n, m in linears(pm).items():
        assert m.merged == []
        assert abs(tiny.np(m.base_layer.weight) - w0[n]).max() < 1e-12, f"{n}: unmerge did not restore W0"
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10


def test_merge_one_adapter_then_switch(tiny, arch):
    pm = _two_adapters(tiny, arch)
    ids = tiny.ids()
    only_default = tiny.np(pm(ids)[0])
    pm.merge_adapter("default")
    assert abs(tiny.np(pm(ids)[0]) - only_default).max() < 1e-10
    pm.unmerge_adapter("default")
    pm.set_adapter("other")
    only_other = tiny.np(pm(ids)[0])
    assert abs(only_other - only_default).max() > 1e-3


def test_merge_in_train_mode_with_dropout_is_refused(tiny):
    model = tiny.model("gpt2")
    pm = apply(model, LoraConfig(r=2, lora_dropout=0.1))
    tiny.perturb(pm)
    w = {n: tiny.np(m.base_layer.weight) for n, m in linears(pm).items()}
    pm.train()
    with pytest.raises(ValueError) as e:
        pm.merge_adapter()
    msg = str(e.value)
    assert "lora_dropout" in msg and "eval()" in msg, msg
    for n, m in linears(pm).items():
        assert numpy.array_equal(tiny.np(m.base_layer.weight), w[n]), f"{n} changed by a refused merge"
        assert m.merged == []
    pm.eval()
    ids = tiny.ids()
    before = tiny.np(pm(ids)[0])
    pm.merge_adapter()
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10


def test_merge_in_train_mode_without_dropout_is_fine(tiny):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2, lora_dropout=0.0))
    tiny.perturb(pm)
    pm.train()
    ids = tiny.ids()
    before = tiny.np(pm(ids)[0])
    pm.merge_adapter()
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10


def test_merge_and_unload_returns_a_plain_transformer(tiny, arch):
    base_names = {n for n, _ in tiny.model(arch, n_labels=3).named_parameters()}
    pm = _two_adapters(tiny, arch, n_labels=3)
    pm.set_adapter("default")
    pm.eval()
    ids = tiny.ids()
    lm, cls = tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))
    plain = pm.merge_and_unload()
    assert type(plain) is Transformer
    wrappers = [n for n, m in plain.named_modules() if isinstance(m, AdapterLayer)]
    assert wrappers == [], f"wrappers left in the unloaded model: {wrappers}"
    names = {n for n, _ in plain.named_parameters()}
    assert names == base_names, f"extra: {sorted(names - base_names)}, missing: {sorted(base_names - names)}"
    err_lm = abs(tiny.np(plain(ids)[0]) - lm).max()
    err_cls = abs(tiny.np(plain.classify(ids)) - cls).max()
    assert err_lm < 1e-10 and err_cls < 1e-10, f"LM error {err_lm}, classifier error {err_cls}"


# ----------------------------------------------------------------------------- several adapters at once

def test_active_adapters_add_up(tiny, arch):
    """With two active adapters the model equals the base model with W0 + dW_a + dW_b."""
    pm = _two_adapters(tiny, arch)
    pm.set_adapter(["default", "other"])
    ids = tiny.ids()
    both = tiny.np(pm(ids)[0])
    ref = tiny.model(arch)                                   # the same base weights, by hand
    for path, m in linears(pm).items():
        inner = path.split("base_model.model.", 1)[1]
        w = ref.get_submodule(inner).weight
        w.data = w.data + sum(m.delta_weight(a) for a in m.lora_A.keys())
    err = abs(tiny.np(ref(ids)[0]) - both).max()
    assert err < 1e-10, f"two active adapters differ from W0 + dW_a + dW_b by {err}"
    # and at one layer: base(x) + delta_a(x) + delta_b(x)
    layer = pm.model.h[0].attn.v
    x = tiny.tensor(numpy.random.default_rng(2).normal(size=(2, 3, 8)))
    layer.route = [("default", None), ("other", None)]
    got = tiny.np(layer(x))
    layer.route = []
    want = tiny.np(layer.base_layer(x)) + tiny.np(layer.delta("default", x)) + tiny.np(layer.delta("other", x))
    assert abs(got - want).max() < 1e-12


# ----------------------------------------------------------------------------- the saved file

def test_saved_file_has_hf_peft_layout(tiny, arch, tmp_path):
    pm = apply(tiny.model(arch), LoraConfig(r=3, lora_alpha=6.0, target_modules=("q", "v", "fc")), name="sst2")
    tiny.perturb(pm)
    pm.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    state = load_file(str(tmp_path / "adapter_model.safetensors"))
    d, f = 8, 32
    want = {}
    for i in range(2):
        for t, (d_in, d_out) in {"attn.q": (d, d), "attn.v": (d, d), "mlp.fc": (d, f)}.items():
            want[f"base_model.model.h.{i}.{t}.lora_A.weight"] = (3, d_in)
            want[f"base_model.model.h.{i}.{t}.lora_B.weight"] = (d_out, 3)
    assert {k: v.shape for k, v in state.items()} == want
    assert not any("sst2" in k or "default" in k for k in state), "adapter names must not appear in keys"
    layer = pm.model.h[1].mlp.fc
    assert numpy.array_equal(state["base_model.model.h.1.mlp.fc.lora_B.weight"], tiny.np(layer.lora_B["sst2"].weight))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 3 and meta["lora_alpha"] == 6.0
    assert meta["target_modules"] == ["q", "v", "fc"]


def test_saved_file_holds_only_the_adapter(tiny32, tmp_path):
    model = tiny32.model("gpt2", vocab_size=20, d_model=16)
    base_bytes = 4 * model.num_parameters()
    pm = apply(model, LoraConfig(r=1, target_modules=("q",)))
    pm.save_pretrained(str(tmp_path))
    n = sum(p.size for p in pm.adapter_parameters("default").values())
    assert n == 2 * 2 * 16 * 1
    size = os.path.getsize(tmp_path / "adapter_model.safetensors")
    header = size - 4 * n                  # 8-byte length + JSON (names, shapes, offsets, metadata)
    assert 8 < header < 200 * len(pm.adapter_parameters("default")), \
        f"file {size} bytes for {n} float32 numbers: a header of {header} bytes?"
    assert size < base_bytes / 10, f"adapter file {size} bytes vs base model {base_bytes} bytes"


def test_rank_and_alpha_survive_the_round_trip(tiny, tmp_path):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2, lora_alpha=7.0, use_rslora=True, target_modules=("k",), layers=(1,)))
    tiny.perturb(pm)
    ids = tiny.ids()
    out = tiny.np(pm(ids)[0])
    pm.save_pretrained(str(tmp_path))
    pm2 = PeftModel.from_pretrained(tiny.model("gpt2"), str(tmp_path))
    cfg = pm2.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.target_modules, tuple(cfg.layers)) == (2, 7.0, True, ("k",), (1,))
    assert set(linears(pm2)) == {"base_model.model.h.1.attn.k"}
    assert numpy.array_equal(tiny.np(pm2(ids)[0]), out)

