"""UniPELT (minipeft/peft/unipelt.py): gated adapter + prefix + LoRA. The contract tests
(test_contract.py) run its defaults; these check the gates, the counts and the parts."""
from __future__ import annotations

import numpy
import pytest

from minipeft import ops
from minipeft.autograd import no_grad
from minipeft.gradcheck import gradcheck
from minipeft.peft import PeftModel, apply, registry
from minipeft.peft import unipelt
from minipeft.peft.adapter import AdapterConfig
from minipeft.peft.lora import LoraConfig
from minipeft.peft.prefix import PrefixConfig, PrefixEncoder
from minipeft.peft.unipelt import UniPELTConfig
from minipeft.train import fit

pytestmark = pytest.mark.task_api

SMALL = dict(size=3, r=2, num_virtual_tokens=2, prefix_projection=False)   # rows trained directly; the MLP below


def gated(pm, kind):
    return [m for m in pm.modules() if isinstance(m, kind)]


def set_gate_bias(pm, kind, value):
    for m in gated(pm, kind):
        m.gate.bias.data = m.gate.bias.data * 0 + value


@pytest.mark.parametrize("parts", ["apl", "ap", "l"])
def test_counted_equals_the_formula(tiny, arch, parts):
    cfg = UniPELTConfig(use_adapter="a" in parts, use_prefix="p" in parts, use_lora="l" in parts, **SMALL)
    pm = apply(tiny.model(arch), cfg)
    d, m, r, P, L = 8, 3, 2, 2, 2
    want = L * (("a" in parts) * (2 * m * d + d + m + d + 1)            # adapter + its gate
                + ("l" in parts) * 2 * (r * 2 * d + d + 1)               # LoRA on q, v + gates
                + ("p" in parts) * (2 * P * d + d + 1))                  # prefix rows + gate
    assert registry.METHODS["unipelt"].formula(pm.config, cfg)["trainable"] == want
    assert sum(p.size for p in pm.trainable_parameters()) == want
    # the adapter part is adapter.py's Pfeiffer adapter plus one d -> 1 gate per block
    if parts == "apl":
        a = registry.METHODS["adapter"].formula(pm.config, AdapterConfig(size=3, placement="pfeiffer"))
        lo = registry.METHODS["lora"].formula(pm.config, LoraConfig(r=2))
        assert want == a["trainable"] + lo["trainable"] + L * (2 * P * d) + L * (d + 1) * 4


@pytest.mark.parametrize("parts", ["apl", "ap"])
def test_gradcheck_through_every_part_and_gate(tiny, arch, parts):
    cfg = UniPELTConfig(use_lora=parts == "apl", **SMALL)
    pm = apply(tiny.model(arch, n_labels=3), cfg)
    tiny.perturb(pm)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert sum(".gate." in n for n in names) == 2 * (2 + (parts == "apl") * 2) * 2   # weight + bias
    ids, y = tiny.ids(2, 4), tiny.labels(2)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *pm.trainable_parameters(), max_per_input=3, name=f"unipelt {parts}") < 1e-5


def test_the_gates_lie_in_0_1(tiny, arch):
    pm = apply(tiny.model(arch), UniPELTConfig(**SMALL))
    tiny.perturb(pm)
    x = tiny.tensor(numpy.random.default_rng(3).normal(size=(3, 5, 8)))
    for kind in (unipelt.GatedBottleneck, unipelt.GatedA, unipelt.GatedPrefix):
        ms = gated(pm, kind)
        assert ms
        for m in ms:
            g = tiny.np(ops.sigmoid(m.gate(x)))
            assert g.shape == (3, 5, 1) and (g > 0).all() and (g < 1).all() and g.std() > 1e-3


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_a_closed_gate_removes_its_part_exactly(tiny, arch, kind):
    pm = apply(tiny.model(arch, n_labels=3), UniPELTConfig(**SMALL))
    tiny.perturb(pm)
    ids = tiny.ids()
    before = tiny.np(pm.classify(ids))
    cls = unipelt.GatedBottleneck if kind == "adapter" else unipelt.GatedA
    set_gate_bias(pm, cls, -numpy.inf)                  # sigmoid(-inf) = 0 exactly
    closed = tiny.np(pm.classify(ids))
    assert numpy.abs(closed - before).max() > 1e-6, "the part did something before its gate closed"
    for m in pm.modules():                               # now take the part out altogether
        if kind == "adapter" and "default" in getattr(m, "adapters", {}):
            del m.adapters["default"]
        if kind == "lora" and "default" in getattr(m, "lora_A", {}):
            del m.lora_A["default"], m.lora_B["default"]
    assert numpy.array_equal(tiny.np(pm.classify(ids)), closed)


def _prefix_rows(tiny, pm, scale):
    """The adapter's prefix rows, as Transformer.encode's prefix= argument (1, H, P, D), times scale."""
    out = []
    for m in gated(pm, unipelt.GatedPrefix):
        P, d = m.key.shape
        heads = lambda t: tiny.tensor(tiny.np(t).reshape(1, P, 2, d // 2).transpose(0, 2, 1, 3) * scale)  # noqa: E731
        out.append((heads(m.key), heads(m.value)))
    return out


@pytest.mark.parametrize("gate", [1.0, 0.0])
def test_the_prefix_gate_scales_keys_and_values(tiny, arch, gate):
    """Gate 1: exactly the plain prefix rows. Gate 0: exactly all-zero rows, which still take
    attention mass, so it is NOT the model without the prefix (the docstring says why)."""
    pm = apply(tiny.model(arch), UniPELTConfig(use_adapter=False, use_lora=False, **SMALL))
    tiny.perturb(pm)
    set_gate_bias(pm, unipelt.GatedPrefix, numpy.inf if gate else -numpy.inf)
    ids = tiny.ids()
    got = tiny.np(pm(ids)[0])
    base = tiny.model(arch)                              # same seed: the same frozen weights
    rows = _prefix_rows(tiny, pm, gate)
    with no_grad():
        want = tiny.np(base(ids, prefix=rows)[0])
        bare = tiny.np(base(ids)[0])
    assert numpy.abs(got - want).max() < 1e-12
    assert numpy.abs(got - bare).max() > 1e-6


def test_training_lowers_the_loss(tiny):
    pm = apply(tiny.model("bert", n_labels=3), UniPELTConfig(modules_to_save=("cls_head",), **SMALL))
    ids, y = tiny.ids(8, 5), tiny.labels(8)
    loss_fn = lambda m, _: ops.cross_entropy(m.classify(ids), y)  # noqa: E731
    with no_grad():
        start = loss_fn(pm, None).item()
    fit(pm, loss_fn, [None], steps=30, lr=1e-2, schedule="constant", progress=False)
    with no_grad():
        end = loss_fn(pm, None).item()
    assert end < start - 0.1, f"{start:.4f} -> {end:.4f}"


def test_save_load_round_trip_is_exact(tiny, arch, tmp_path):
    pm = apply(tiny.model(arch, n_labels=3), UniPELTConfig(modules_to_save=("cls_head",), **SMALL))
    tiny.perturb(pm)
    ids = tiny.ids()
    want = tiny.np(pm.classify(ids))
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(tiny.model(arch, n_labels=3), str(tmp_path))
    assert loaded.peft_config["default"] == pm.peft_config["default"]
    assert numpy.array_equal(tiny.np(loaded.classify(ids)), want)


def test_not_mergeable_and_errors(tiny):
    pm = apply(tiny.model("gpt2"), UniPELTConfig(**SMALL))
    with pytest.raises(Exception):
        pm.merge_adapter()
    with pytest.raises(ValueError, match="all False"):
        UniPELTConfig(use_adapter=False, use_prefix=False, use_lora=False)
    with pytest.raises(ValueError, match="target_modules"):
        UniPELTConfig(target_modules=("nope",))
    with pytest.raises(ValueError, match="UniPELTConfig.size"):
        UniPELTConfig(size=0)
    with pytest.raises(ValueError, match="UniPELTConfig.encoder_hidden_size"):
        UniPELTConfig(encoder_hidden_size=0)


# ----------------------------------------------------------------------------- the shared prefix MLP

MLP = dict(size=3, r=2, num_virtual_tokens=2, encoder_hidden_size=5)          # prefix_projection=True


def test_one_mlp_gives_every_layers_rows_counted_once(tiny, arch):
    pm = apply(tiny.model(arch), UniPELTConfig(**MLP))
    d, P, mid, n = 8, 2, 5, 2
    encoders = gated(pm, PrefixEncoder)
    assert len(encoders) == 1 and encoders[0] is pm.inputs["default"]
    names = [n for n, _ in pm.named_parameters() if "transform_in" in n]
    assert names == ["inputs.default.transform_in.weight", "inputs.default.transform_in.bias"], names
    f = registry.METHODS["unipelt"].formula(pm.config, UniPELTConfig(**MLP))
    direct = registry.METHODS["unipelt"].formula(pm.config, UniPELTConfig(**SMALL))
    mlp = P * d + (d * mid + mid) + (mid * 2 * n * d + 2 * n * d)
    assert f["trainable"] == direct["trainable"] - n * 2 * P * d + mlp == sum(p.size for p in pm.trainable_parameters())
    assert f["kept"] == direct["kept"] == direct["trainable"]


def test_with_open_gates_the_prefix_part_is_prefix_tuning_with_the_same_mlp(tiny, arch):
    """An independent oracle for which slice is whose: prefix.py (Hugging Face's layout of P_theta)
    with the same MLP weights gives exactly the outputs of UniPELT's prefix with its gates at 1."""
    pm = apply(tiny.model(arch), UniPELTConfig(use_adapter=False, use_lora=False, **MLP))
    tiny.perturb(pm)
    set_gate_bias(pm, unipelt.GatedPrefix, numpy.inf)             # sigmoid(+inf) = 1 exactly
    ref = apply(tiny.model(arch), PrefixConfig(num_virtual_tokens=2, encoder_hidden_size=5))
    mine, theirs = dict(pm.inputs["default"].named_parameters()), dict(ref.inputs["default"].named_parameters())
    assert set(mine) == set(theirs)
    for k, p in theirs.items():
        p.data = mine[k].data.copy()
    ids = tiny.ids()
    assert numpy.abs(tiny.np(pm(ids)[0]) - tiny.np(ref(ids)[0])).max() < 1e-12


def test_gradcheck_through_the_mlp_and_the_gates(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), UniPELTConfig(**MLP))
    tiny.perturb(pm)
    ids, y = tiny.ids(2, 4), tiny.labels(2)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *pm.trainable_parameters(), max_per_input=3, name="unipelt with the prefix MLP") < 1e-5


def test_eject_keeps_the_outputs_and_only_the_rows(tiny, arch, tmp_path):
    pm = apply(tiny.model(arch, n_labels=3), UniPELTConfig(modules_to_save=("cls_head",), **MLP))
    tiny.perturb(pm)
    ids = tiny.ids()
    want = tiny.np(pm.classify(ids))
    unipelt.eject(pm)
    assert "default" not in pm.inputs and not gated(pm, PrefixEncoder)
    assert pm.peft_config["default"].prefix_projection is False
    assert numpy.abs(tiny.np(pm.classify(ids)) - want).max() < 1e-12
    f = registry.METHODS["unipelt"].formula(pm.config, UniPELTConfig(modules_to_save=("cls_head",), **MLP))
    assert sum(p.size for p in pm.trainable_parameters()) == f["kept"]
    pm.save_pretrained(str(tmp_path))                        # the ejected adapter loads as a direct one
    loaded = PeftModel.from_pretrained(tiny.model(arch, n_labels=3), str(tmp_path))
    assert numpy.array_equal(tiny.np(loaded.classify(ids)), tiny.np(pm.classify(ids)))
    with pytest.raises(ValueError, match="no prefix MLP to drop"):
        unipelt.eject(pm)


def test_delete_adapter_drops_the_mlp(tiny):
    model = tiny.model("gpt2")
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, UniPELTConfig(**MLP))
    tiny.perturb(pm)
    pm.add_adapter("other", UniPELTConfig(**SMALL))
    pm.delete_adapter("default")
    assert "default" not in pm.inputs and not gated(pm, PrefixEncoder)
    pm.delete_adapter("other")
    assert numpy.array_equal(tiny.np(pm(ids)[0]), base)


def test_the_shared_mlp_runs_once_per_forward_not_once_per_layer(tiny, monkeypatch):
    """encode_inputs runs the MLP once and the layers take their slices of that output; the
    result equals every layer running the MLP itself (the path of a call without a route)."""
    pm = apply(tiny.model("gpt2", n_layer=3), UniPELTConfig(**MLP))
    tiny.perturb(pm)
    ids = tiny.ids()
    calls = []
    real = PrefixEncoder.forward
    monkeypatch.setattr(PrefixEncoder, "forward", lambda self: calls.append(1) or real(self))
    shared = tiny.np(pm(ids)[0])
    assert len(calls) == 1, f"the MLP ran {len(calls)} times for one forward of 3 adapted blocks"
    monkeypatch.setattr(unipelt, "encode_inputs", lambda *a, **k: {})   # every layer runs it
    calls.clear()
    assert numpy.array_equal(tiny.np(pm(ids)[0]), shared) and len(calls) == 3
