"""IA3 (minipeft/peft/ia3.py): k' = l_k ⊙ W_k x, v' = l_v ⊙ W_v x, proj(l_ff ⊙ h), l = 1 at start.

- the vectors start at ones and the adapted model equals the base model exactly;
- each layer computes exactly l ⊙ (W x + b) (output scaled) or W (l ⊙ x) + b (input scaled);
- float64 gradient checks of the vectors on both layouts, several targets, a layer subset;
- frozen weights get no gradient and cost no weight-gradient matmul (backend.stats);
- two active adapters multiply; merge (diag(l) W, l ⊙ b / W diag(l)) keeps the outputs, unmerge
  restores the weights, a zero entry refuses to merge; merge_and_unload gives a plain Transformer;
- counted parameters equal the closed form L (2 d + d_ff), and GPT-2 small's 55,296;
- training lowers the loss of a small classification task; the saved file has HF peft's keys.
"""
from __future__ import annotations

import numpy
import pytest
from safetensors.numpy import load_file

from minipeft import backend, ops
from minipeft.autograd import no_grad
from minipeft.gradcheck import gradcheck
from minipeft.nn import Linear, Transformer
from minipeft.nn.transformer import TransformerConfig
from minipeft.peft import PeftModel, apply
from minipeft.peft.ia3 import IA3Config, IA3Linear, formula
from minipeft.peft.routing import AdapterLayer
from minipeft.train import fit

pytestmark = pytest.mark.task_ia3

VARIANTS = {
    "default": IA3Config(),
    "all6_fc_input": IA3Config(target_modules=("q", "k", "v", "o", "fc", "proj"), feedforward_modules=("fc", "proj")),
    "v_layer1": IA3Config(target_modules=("v",), layers=(1,)),
}


def layers(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, IA3Linear)}


# ----------------------------------------------------------------------------- start

def test_starts_exactly_equal_to_base_with_ones(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    ids = tiny.ids()
    base, base_cls = tiny.np(model(ids)[0]), tiny.np(model.classify(ids))
    pm = apply(model, VARIANTS["all6_fc_input"])
    for name, m in layers(pm).items():
        l = tiny.np(m.ia3_l["default"].weight)
        assert (l == 1).all(), f"{name}: l must start at ones, got {l}"
        want = m.base_layer.n_in if m.is_feedforward else m.base_layer.n_out
        assert l.shape == (want,), f"{name}: l has shape {l.shape}, expected ({want},)"
    assert numpy.array_equal(tiny.np(pm(ids)[0]), base)
    assert numpy.array_equal(tiny.np(pm.classify(ids)), base_cls)


def test_proj_is_scaled_at_its_input_k_and_v_at_their_output():
    cfg = IA3Config()
    assert cfg.target_modules == ("k", "v", "proj") and cfg.feedforward_modules == ("proj",)
    assert IA3Config(target_modules=("k",)).feedforward_modules == ()
    with pytest.raises(ValueError, match=r"feedforward_modules \['proj'\] must be a subset of target_modules"):
        IA3Config(target_modules=("k", "v"), feedforward_modules=("proj",))
    with pytest.raises(ValueError, match=r"IA3Config.target_modules \['key'\]: unknown \['key'\]"):
        IA3Config(target_modules=("key",))


# ----------------------------------------------------------------------------- the layer itself

@pytest.mark.parametrize("feedforward", [False, True], ids=["output", "input"])
def test_layer_computes_the_scaled_linear(tiny, feedforward):
    layer = IA3Linear(Linear(6, 5), feedforward)
    layer.add("default")
    tiny.perturb([layer.ia3_l["default"].weight, layer.base_layer.bias])
    layer.route = [("default", None)]
    x = numpy.random.default_rng(3).normal(size=(2, 3, 6))
    got = tiny.np(layer(tiny.tensor(x)))
    w, b, l = (tiny.np(t) for t in (layer.base_layer.weight, layer.base_layer.bias, layer.ia3_l["default"].weight))
    want = (x * l) @ w.T + b if feedforward else l * (x @ w.T + b)
    assert abs(got - want).max() < 1e-12, f"max error {abs(got - want).max()}"


def test_two_active_adapters_multiply(tiny, arch):
    pm = apply(tiny.model(arch), IA3Config())
    pm.add_adapter("other", IA3Config(target_modules=("k", "proj")))
    tiny.perturb(pm)
    pm.set_adapter(["default", "other"])
    ids = tiny.ids()
    both = tiny.np(pm(ids)[0])
    ref = tiny.model(arch)                                   # the same base weights, scaled by hand
    for path, m in layers(pm).items():
        lin = ref.get_submodule(path.split("base_model.model.", 1)[1])
        l = numpy.prod([tiny.np(m.ia3_l[a].weight) for a in m.ia3_l.keys()], axis=0)
        if m.is_feedforward:
            lin.weight.data = lin.weight.data * backend.to_device(l)[None, :]
        else:
            lin.weight.data = lin.weight.data * backend.to_device(l)[:, None]
            lin.bias.data = lin.bias.data * backend.to_device(l)
    err = abs(tiny.np(ref(ids)[0]) - both).max()
    assert err < 1e-10, f"two active adapters differ from W scaled by l_a ⊙ l_b by {err}"


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_ia3_vectors(tiny, arch, variant):
    pm = apply(tiny.model(arch), VARIANTS[variant])
    params = tiny.perturb(pm)
    names = {id(p): n for n, p in pm.named_parameters()}
    assert all(".ia3_l." in names[id(p)] for p in params), [names[id(p)] for p in params]
    ids = tiny.ids(2, 5)
    worst = gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=3, name=f"ia3 {variant} {arch}")
    assert worst < 1e-5, worst
    frozen_with_grad = [n for n, p in pm.named_parameters() if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == [], f"frozen base parameters received gradients: {frozen_with_grad}"


def test_gradcheck_ia3_classifier_with_its_head(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), IA3Config(modules_to_save=("cls_head",)))
    params = tiny.perturb(pm)
    assert len(params) == 3 * 2 + 2, "l_k, l_v, l_ff in 2 layers + the head copy's weight and bias"
    ids, y = tiny.ids(3, 5), tiny.labels(3)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=3, name=f"ia3 classifier {arch}") < 1e-5


def test_frozen_weights_cost_no_weight_gradient_matmul(tiny):
    """Every Linear whose weight trains costs 2 backward matmuls (dx = G W, dW = G^T x). With the
    embeddings trainable (so that every dx is needed) and the block's Linear layers frozen under
    IA3, exactly one per Linear is saved: IA3's own gradients are elementwise (no matmul)."""
    n_linear = 6

    def backward_matmuls(model):
        loss = model(tiny.ids(2, 6), tiny.ids(2, 6, seed=1))[1]
        before = backend.stats["matmul"]
        loss.backward()
        return backend.stats["matmul"] - before

    full = backward_matmuls(tiny.model("gpt2"))
    model = tiny.model("gpt2")
    pm = apply(model, IA3Config(target_modules=("q", "k", "v", "o", "fc", "proj")))
    model.wte.weight.requires_grad = True
    tiny.perturb(pm)
    got = backward_matmuls(pm)
    L = model.config.n_layer
    assert got == full - L * n_linear, f"IA3 backward ran {got} matmuls, expected {full} - {L * n_linear}"
    weights = [n for n, p in pm.named_parameters() if n.endswith("base_layer.weight")]
    assert len(weights) == L * n_linear and all(dict(pm.named_parameters())[n].grad is None for n in weights)


# ----------------------------------------------------------------------------- merging

def test_merge_unmerge_equivalence_float64(tiny, arch):
    pm = apply(tiny.model(arch), VARIANTS["all6_fc_input"])
    pm.add_adapter("other", IA3Config())
    tiny.perturb(pm)
    pm.set_adapter(["default", "other"])
    pm.eval()
    ids = tiny.ids()
    before = tiny.np(pm(ids)[0])
    w0 = {n: (tiny.np(m.base_layer.weight), tiny.np(m.base_layer.bias)) for n, m in layers(pm).items()}
    pm.merge_adapter()
    for n, m in layers(pm).items():
        assert sorted(m.merged) == sorted(m.ia3_l.keys()), f"{n}: merged {m.merged}"
        l = numpy.prod([tiny.np(m.ia3_l[a].weight) for a in m.ia3_l.keys()], axis=0)
        w, b = w0[n]
        want_w, want_b = (w * l[None, :], b) if m.is_feedforward else (l[:, None] * w, l * b)
        assert abs(tiny.np(m.base_layer.weight) - want_w).max() < 1e-12, f"{n}: W' is not the scaled W"
        assert abs(tiny.np(m.base_layer.bias) - want_b).max() < 1e-12, f"{n}: b' is not the scaled b"
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10
    pm.merge_adapter()                                        # merging twice changes nothing
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10
    pm.unmerge_adapter()
    for n, m in layers(pm).items():
        assert m.merged == []
        assert abs(tiny.np(m.base_layer.weight) - w0[n][0]).max() < 1e-12, f"{n}: unmerge did not restore W"
        assert abs(tiny.np(m.base_layer.bias) - w0[n][1]).max() < 1e-12, f"{n}: unmerge did not restore b"
    assert abs(tiny.np(pm(ids)[0]) - before).max() < 1e-10


def test_a_zero_entry_refuses_to_merge_and_changes_nothing(tiny):
    pm = apply(tiny.model("gpt2"), IA3Config())
    tiny.perturb(pm)
    pm.model.h[1].attn.v.ia3_l["default"].weight.data[2] = 0.0
    weights = tiny.snapshot(pm)
    with pytest.raises(ValueError, match=r"zero entry .* h\.1\.attn\.v: merging it could not be undone"):
        pm.merge_adapter()
    assert all(numpy.array_equal(tiny.np(p), weights[n]) for n, p in pm.named_parameters())
    assert all(m.merged == [] for m in layers(pm).values())


def test_merge_and_unload_returns_a_plain_transformer(tiny, arch):
    base_names = {n for n, _ in tiny.model(arch, n_labels=3).named_parameters()}
    pm = apply(tiny.model(arch, n_labels=3), IA3Config(modules_to_save=("cls_head",)))
    tiny.perturb(pm)
    ids = tiny.ids()
    lm, cls = tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))
    plain = pm.merge_and_unload()
    assert type(plain) is Transformer
    assert [n for n, m in plain.named_modules() if isinstance(m, AdapterLayer)] == []
    assert {n for n, _ in plain.named_parameters()} == base_names
    assert abs(tiny.np(plain(ids)[0]) - lm).max() < 1e-10
    assert abs(tiny.np(plain.classify(ids)) - cls).max() < 1e-10


# ----------------------------------------------------------------------------- counting

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_counted_equals_closed_form(tiny, arch, variant):
    pm = apply(tiny.model(arch), VARIANTS[variant])
    cfg = pm.config
    counted = sum(p.size for p in pm.trainable_parameters())
    assert counted == formula(cfg, VARIANTS[variant])["trainable"]
    d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layer
    closed = {"default": L * (2 * d + f), "all6_fc_input": L * (4 * d + d + f), "v_layer1": d}[variant]
    assert counted == closed, f"{variant}: counted {counted}, closed form {closed}"


def test_gpt2_small_has_55296_vectors_entries():
    gpt2 = TransformerConfig(arch="gpt2", vocab_size=50257, n_ctx=1024, d_model=768, n_layer=12, n_head=12)
    assert formula(gpt2, IA3Config()) == {"trainable": 12 * (2 * 768 + 3072), "kept": 55_296}


# ----------------------------------------------------------------------------- training, files

def test_training_lowers_the_loss_and_leaves_the_base_untouched(tiny):
    pm = apply(tiny.model("bert", n_labels=3), IA3Config(modules_to_save=("cls_head",)))
    base = {n: tiny.np(p) for n, p in pm.named_parameters() if not p.requires_grad}
    ids, y = tiny.ids(8, 6, seed=3), tiny.labels(8, seed=3)
    loss = lambda m, _: ops.cross_entropy(m.classify(ids), y)  # noqa: E731
    with no_grad():
        start = loss(pm, None).item()
    fit(pm, loss, [None], steps=30, lr=3e-2, schedule="constant", progress=False)
    with no_grad():
        end = loss(pm, None).item()
    assert end < 0.7 * start, f"loss {start:.4f} -> {end:.4f}"
    after = dict(pm.named_parameters())
    assert all(numpy.array_equal(tiny.np(after[n]), a) for n, a in base.items()), "a frozen weight moved"
    moved = [n for n, p in after.items() if ".ia3_l." in n and not (tiny.np(p) == 1).all()]
    assert len(moved) == 3 * 2, f"every vector should have trained: {moved}"


def test_saved_file_has_hf_peft_keys_and_round_trips(tiny, arch, tmp_path):
    pm = apply(tiny.model(arch), IA3Config(), name="sst2")
    tiny.perturb(pm)
    ids = tiny.ids()
    out = tiny.np(pm(ids)[0])
    pm.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / "adapter_model.safetensors"))
    want = {}
    for i in range(2):
        want.update({f"base_model.model.h.{i}.attn.k.ia3_l": (8,), f"base_model.model.h.{i}.attn.v.ia3_l": (8,),
                     f"base_model.model.h.{i}.mlp.proj.ia3_l": (32,)})
    assert {k: v.shape for k, v in state.items()} == want
    loaded = PeftModel.from_pretrained(tiny.model(arch), str(tmp_path))
    assert loaded.peft_config["default"] == pm.peft_config["sst2"]
    assert numpy.array_equal(tiny.np(loaded(ids)[0]), out)
