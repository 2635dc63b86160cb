"""BitFit (minipeft/peft/bitfit.py) and full fine-tuning (minipeft/peft/full.py).

- float64 gradient checks: BitFit with and without LayerNorm gains, BitFit with a classification
  head (modules_to_save), full fine-tuning and top-k layers;
- exactly which parameters train, by name;
- after AdamW steps: BitFit leaves every non-bias weight bit-identical and changes every bias;
  full fine-tuning changes everything; top-k changes exactly the top k blocks + ln_f/heads;
- both train base parameters in place: disable_adapter, delete, merge and other adapters are
  refused with clear errors;
- layer-wise learning-rate decay groups.
"""
from __future__ import annotations

import numpy
import pytest

from minipeft import ops
from minipeft.gradcheck import gradcheck
from minipeft.peft import AdapterConfig, BitFitConfig, FullConfig, LoraConfig, apply
from minipeft.peft.full import param_groups
from minipeft.train import fit

pytestmark = pytest.mark.task_bitfit

P = "base_model.model."


def trainable_names(pm):
    return {n[len(P):] for n, p in pm.named_parameters() if p.requires_grad}


def is_bias(name):
    return name.endswith(".bias") or name == "mlm_bias"


def is_ln_gain(name):
    return name.endswith(".weight") and name.rsplit(".", 2)[-2] in ("ln_1", "ln_2", "ln_f", "ln_emb", "mlm_ln")


def joint_loss(ids, targets, labels):
    """LM loss + classification loss: every parameter of a model with a head gets a gradient."""
    def loss(model, _batch):
        return model(ids, targets)[1] + ops.cross_entropy(model.classify(ids), labels)
    return loss


def train(tiny, pm, steps=4, lr=1e-2):
    ids = tiny.ids()
    fit(pm, joint_loss(ids, tiny.ids(seed=9), tiny.labels()), [None], steps=steps, lr=lr,
        schedule="constant", progress=False)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("with_layernorm", [False, True])
def test_gradcheck_bitfit(tiny, arch, with_layernorm):
    pm = apply(tiny.model(arch), BitFitConfig(with_layernorm=with_layernorm))
    params = pm.trainable_parameters()
    ids = tiny.ids(2, 5)
    assert gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=2, name=f"bitfit {arch}") < 1e-5


def test_gradcheck_bitfit_classifier_with_head(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), BitFitConfig(modules_to_save=("cls_head",)))
    params = pm.trainable_parameters()
    ids, y = tiny.ids(3, 5), tiny.labels(3)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=2, name=f"bitfit classifier {arch}") < 1e-5


@pytest.mark.parametrize("top_k", [None, 1])
def test_gradcheck_full_and_top_k(tiny, arch, top_k):
    pm = apply(tiny.model(arch, n_labels=3), FullConfig(top_k_layers=top_k))
    params = pm.trainable_parameters()
    ids, y = tiny.ids(2, 5), tiny.labels(2)
    loss = lambda *_: pm(ids, tiny.ids(2, 5, seed=3))[1] + ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=1, name=f"full top_k={top_k} {arch}") < 1e-5


# ----------------------------------------------------------------------------- what trains

@pytest.mark.parametrize("with_layernorm", [False, True])
def test_bitfit_trains_exactly_the_biases(tiny, arch, with_layernorm):
    model = tiny.model(arch, n_labels=3)
    names = {n for n, _ in model.named_parameters()}
    pm = apply(model, BitFitConfig(with_layernorm=with_layernorm))
    want = {n for n in names if is_bias(n) or (with_layernorm and is_ln_gain(n))}
    got = trainable_names(pm)
    assert got == want, f"extra: {sorted(got - want)}, missing: {sorted(want - got)}"
    assert "cls_head.bias" in got and "cls_head.weight" not in got


def test_bitfit_with_head_trains_a_copy_of_the_head(tiny, arch):
    pm = apply(tiny.model(arch, n_labels=3), BitFitConfig(modules_to_save=("cls_head",)))
    got = trainable_names(pm)
    assert {"cls_head.modules_to_save.default.weight", "cls_head.modules_to_save.default.bias"} <= got
    assert "cls_head.original_module.bias" not in got


def _top_k_expected(arch, n_layer, k, names):
    blocks = {n for n in names if n.startswith("h.") and int(n.split(".")[1]) >= n_layer - k}
    heads = {"cls_head.weight", "cls_head.bias"}
    if arch == "gpt2":
        return blocks | heads | {"ln_f.weight", "ln_f.bias"}
    return blocks | heads | {"pooler.weight", "pooler.bias", "mlm_dense.weight", "mlm_dense.bias",
                             "mlm_ln.weight", "mlm_ln.bias", "mlm_bias"}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_trains_the_last_k_blocks_and_the_heads(tiny, arch, k):
    model = tiny.model(arch, n_layer=3, n_labels=3)
    names = {n for n, _ in model.named_parameters()}
    pm = apply(model, FullConfig(top_k_layers=k))
    want = _top_k_expected(arch, 3, k, names)
    got = trainable_names(pm)
    assert got == want, f"extra: {sorted(got - want)}, missing: {sorted(want - got)}"


def test_full_trains_everything_or_everything_but_the_embeddings(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    names = {n for n, _ in model.named_parameters()}
    assert trainable_names(apply(model, FullConfig())) == names
    model = tiny.model(arch, n_labels=3, tie_embeddings=False)
    names = {n for n, _ in model.named_parameters()}
    emb = {"wte.weight", "wpe.weight", "wtt.weight"}
    assert trainable_names(apply(model, FullConfig(train_embeddings=False))) == names - emb
    assert "lm_head.weight" in names - emb


# ----------------------------------------------------------------------------- after training

def test_bitfit_training_changes_every_bias_and_no_weight(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    before = tiny.snapshot(model)
    pm = apply(model, BitFitConfig())
    train(tiny, pm)
    after = tiny.snapshot(model)
    assert before.keys() == after.keys()
    unchanged_bias = [n for n in before if is_bias(n) and numpy.array_equal(before[n], after[n])]
    changed_weight = [n for n in before if not is_bias(n) and not numpy.array_equal(before[n], after[n])]
    assert unchanged_bias == [], f"biases BitFit did not train: {unchanged_bias}"
    assert changed_weight == [], f"weights BitFit changed: {changed_weight}"


def test_bitfit_with_layernorm_changes_the_gains_too(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    before = tiny.snapshot(model)
    pm = apply(model, BitFitConfig(with_layernorm=True))
    train(tiny, pm)
    after = tiny.snapshot(model)
    changed = {n for n in before if not numpy.array_equal(before[n], after[n])}
    want = {n for n in before if is_bias(n) or is_ln_gain(n)}
    assert changed == want, f"extra: {sorted(changed - want)}, missing: {sorted(want - changed)}"


def test_full_training_changes_every_parameter(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    before = tiny.snapshot(model)
    train(tiny, apply(model, FullConfig()))
    after = tiny.snapshot(model)
    same = [n for n in before if numpy.array_equal(before[n], after[n])]
    assert same == [], f"full fine-tuning left these unchanged: {same}"


def test_top_k_training_changes_exactly_the_top_k(tiny, arch):
    model = tiny.model(arch, n_layer=3, n_labels=3)
    before = tiny.snapshot(model)
    train(tiny, apply(model, FullConfig(top_k_layers=2)))
    after = tiny.snapshot(model)
    changed = {n for n in before if not numpy.array_equal(before[n], after[n])}
    want = _top_k_expected(arch, 3, 2, set(before))
    assert changed == want, f"extra: {sorted(changed - want)}, missing: {sorted(want - changed)}"


# ----------------------------------------------------------------------------- what they refuse

@pytest.mark.parametrize("cfg", [BitFitConfig(), FullConfig(), FullConfig(top_k_layers=1)], ids=["bitfit", "full", "top1"])
def test_in_place_methods_refuse_disable_delete_merge(tiny, cfg):
    pm = apply(tiny.model("gpt2"), cfg)
    name = type(cfg).__name__
    with pytest.raises(ValueError) as e:
        with pm.disable_adapter():
            pass
    assert name in str(e.value) and "base" in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        pm.delete_adapter("default")
    assert "cannot be deleted" in str(e.value) and "Reload" in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        pm.merge_adapter()
    assert f"{name} cannot be merged" in str(e.value) and "weights already" in str(e.value), str(e.value)
    assert list(pm.peft_config) == ["default"]


@pytest.mark.parametrize("cfg", [BitFitConfig(), FullConfig(top_k_layers=1)], ids=["bitfit", "top1"])
def test_in_place_methods_share_the_model_with_no_other_adapter(tiny, cfg):
    pm = apply(tiny.model("gpt2"), cfg)
    n_trainable = len(pm.trainable_parameters())
    for other in (LoraConfig(r=2), AdapterConfig(size=2), BitFitConfig()):
        with pytest.raises(ValueError) as e:
            pm.add_adapter("other", other)
        assert "cannot share" in str(e.value) or "no other adapter" in str(e.value), str(e.value)
    assert list(pm.peft_config) == ["default"] and len(pm.trainable_parameters()) == n_trainable
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2))
    with pytest.raises(ValueError) as e:
        pm.add_adapter("other", cfg)
    assert "cannot share a model with other adapters" in str(e.value), str(e.value)


def test_full_config_validation(tiny):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="top_k_layers"):
            FullConfig(top_k_layers=bad)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="layer_lr_decay"):
            FullConfig(layer_lr_decay=bad)
    with pytest.raises(ValueError) as e:
        apply(tiny.model("gpt2"), FullConfig(top_k_layers=3))
    assert "top_k_layers=3" in str(e.value) and "2 layers" in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- layer-wise lr decay

def test_layer_wise_lr_decay_groups(tiny, arch):
    n_layer, lr, xi = 3, 1e-2, 0.5
    pm = apply(tiny.model(arch, n_layer=n_layer, n_labels=2), FullConfig(layer_lr_decay=xi))
    groups = param_groups(pm, lr, xi)
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(by_param) == len(pm.trainable_parameters()), "every trainable parameter in exactly one group"
    for name, p in pm.named_parameters():
        inner = name[len(P):]
        if inner.startswith("h."):
            want = lr * xi ** (n_layer - 1 - int(inner.split(".")[1]))
        elif inner.split(".")[0] in ("wte", "wpe", "wtt", "ln_emb"):
            want = lr * xi ** n_layer
        else:
            want = lr
        assert by_param[id(p)] == pytest.approx(want), f"{inner}: lr {by_param[id(p)]}, want {want}"
