"""The PEFT API (minipeft/peft/api.py) across methods: LoRA, adapters, BitFit, full fine-tuning.

Each test is one of the things users of PEFT libraries trip over (as reported on the issue trackers
of Hugging Face peft and AdapterHub adapters):
- frozen base weights stay bit-identical after training (LoRA, adapters);
- named adapters: add, switch, delete (parameters and wrappers go), several active at once,
  clear errors for duplicate and unknown names, names that collide with module names;
- per-sample routing: a batch with one adapter (or None) per sample equals each sample run
  alone, for LoRA, adapters, a mix, and a routed classification head; in training the gradients
  of a routed batch equal the sum of the per-sample gradients;
- config validation: every bad field is a ValueError that names it; unknown targets list the
  names that exist; a failed add leaves nothing behind;
- save/load: exact reproduction on a fresh base, frozen unless is_trainable=True, the
  classification head travels with the adapter, wrong model shapes and truncated files give
  clear errors and leave the model as it was;
- optimizer state is 8 bytes per trainable float32 parameter; every method lowers the loss.
"""
from __future__ import annotations

import numpy
import pytest
from safetensors.numpy import load_file

from minipeft import ops
from minipeft.autograd import no_grad
from minipeft.checkpoint import CheckpointError
from minipeft.optim import AdamW
from minipeft.peft import (AdapterConfig, BitFitConfig, FullConfig, LoraConfig, PeftModel, api, apply,
                           get_peft_model)
from minipeft.peft.api import AdapterLayer, ModulesToSave
from minipeft.peft.lora import TARGETS
from minipeft.train import fit

pytestmark = pytest.mark.task_api

HEAD = ("cls_head",)
METHODS = {
    "lora": lambda heads=(): LoraConfig(r=2, target_modules=("q", "v", "fc"), modules_to_save=heads),
    "houlsby": lambda heads=(): AdapterConfig(size=3, modules_to_save=heads),
    "pfeiffer": lambda heads=(): AdapterConfig(size=4, placement="pfeiffer", modules_to_save=heads),
    "parallel_attn": lambda heads=(): AdapterConfig(size=2, placement="parallel", parallel_site="attn",
                                                    scaling=2.0, modules_to_save=heads),
    "bitfit": lambda heads=(): BitFitConfig(with_layernorm=True, modules_to_save=heads),
    "full_top1": lambda heads=(): FullConfig(top_k_layers=1),
    "full": lambda heads=(): FullConfig(),
}
ADDED = ("lora", "houlsby", "pfeiffer", "parallel_attn")      # methods that add parameters


def n_trainable(pm):
    return sum(p.size for p in pm.trainable_parameters())


def wrappers(pm):
    return [n for n, m in pm.named_modules() if isinstance(m, AdapterLayer) and not isinstance(m, ModulesToSave)]


# ----------------------------------------------------------------------------- apply

def test_apply_freezes_the_base_and_refuses_a_peft_model(tiny):
    model = tiny.model("gpt2")
    assert get_peft_model is apply
    pm = apply(model, LoraConfig(r=2))
    assert not any(p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)
    with pytest.raises(TypeError, match="add_adapter"):
        apply(pm, LoraConfig(r=2))
    with pytest.raises(TypeError, match="not a PEFT config"):
        pm.add_adapter("x", {"r": 2})


@pytest.mark.parametrize("method", ADDED + ("lora+houlsby",))
def test_base_weights_bit_identical_after_training(tiny, arch, method):
    model = tiny.model(arch, n_labels=3)
    before = {id(p): tiny.np(p) for p in model.parameters()}
    if method == "lora+houlsby":
        pm = apply(model, METHODS["lora"]())
        pm.add_adapter("ad", METHODS["houlsby"]())
        pm.set_adapter(["default", "ad"])
    else:
        pm = apply(model, METHODS[method](HEAD))
    adapter = {id(p): tiny.np(p) for p in pm.trainable_parameters()}
    ids, targets = tiny.ids(), tiny.ids(seed=5)
    fit(pm, lambda m, _: m(ids, targets)[1] + ops.cross_entropy(m.classify(ids), tiny.labels()), [None],
        steps=4, lr=1e-2, schedule="constant", progress=False)
    params = {id(p): p for p in pm.parameters()}
    changed = [n for n, p in pm.named_parameters() if id(p) in before and not numpy.array_equal(tiny.np(p), before[id(p)])]
    assert changed == [], f"base parameters changed by training {method}: {changed}"
    assert all(i in params for i in before), "a base parameter was replaced instead of wrapped"
    still = [i for i in adapter if numpy.array_equal(tiny.np(params[i]), adapter[i])]
    names = {id(p): n for n, p in pm.named_parameters()}
    assert still == [], f"adapter parameters that did not train: {[names[i] for i in still]}"


# ----------------------------------------------------------------------------- named adapters

@pytest.mark.parametrize("kind", ["lora", "houlsby"])
def test_two_named_adapters_switch_and_delete(tiny, arch, kind):
    model = tiny.model(arch)
    base_names = {n for n, _ in model.named_parameters()}
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, METHODS[kind](), name="a")
    pm.add_adapter("b", LoraConfig(r=3, target_modules=("k", "o")) if kind == "lora" else METHODS["parallel_attn"]())
    tiny.perturb(pm)
    assert pm.active_adapters == ["a"], "the first adapter is active, a later one is not"
    out_a = tiny.np(pm(ids)[0])
    pm.set_adapter("b")
    out_b = tiny.np(pm(ids)[0])
    assert abs(out_a - out_b).max() > 1e-3, "switching adapters must change the outputs"
    pm.set_adapter(["a", "b"])
    both = tiny.np(pm(ids)[0])
    assert abs(both - out_a).max() > 1e-3 and abs(both - out_b).max() > 1e-3
    formula_b = api.method_of(pm.peft_config["b"]).formula(pm.config, pm.peft_config["b"])["trainable"]
    n_before = n_trainable(pm)
    pm.delete_adapter("b")
    assert pm.active_adapters == ["a"] and list(pm.peft_config) == ["a"]
    assert n_before - n_trainable(pm) == formula_b
    assert not any(".b." in n for n, _ in pm.named_parameters()), "parameters of 'b' survived delete_adapter"
    assert numpy.array_equal(tiny.np(pm(ids)[0]), out_a), "only 'a' left: outputs must be those of 'a' alone"
    pm.delete_adapter("a")
    assert wrappers(pm) == [], f"wrappers left after deleting every adapter: {wrappers(pm)}"
    names = {n.split("base_model.model.", 1)[1] for n, _ in pm.named_parameters()}
    assert names == base_names
    assert numpy.array_equal(tiny.np(pm(ids)[0]), base)


def test_deleting_a_merged_lora_adapter_restores_the_base_weights(tiny):
    model = tiny.model("gpt2")
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, LoraConfig(r=2))
    tiny.perturb(pm)
    pm.merge_adapter()
    pm.delete_adapter("default")
    assert abs(tiny.np(pm(ids)[0]) - base).max() < 1e-12
    assert wrappers(pm) == []


def test_adapter_name_errors(tiny):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2), name="sst2")
    with pytest.raises(ValueError) as e:
        pm.add_adapter("sst2", LoraConfig(r=4))
    assert "'sst2' exists already" in str(e.value) and "delete_adapter" in str(e.value), str(e.value)
    for call in (pm.set_adapter, pm.delete_adapter, pm.merge_adapter, pm.adapter_parameters):
        with pytest.raises(KeyError) as e:
            call("mnli")
        assert "no adapter named 'mnli'" in str(e.value) and "['sst2']" in str(e.value), str(e.value)
    for bad in ("my adapter", "1st", "", "a.b", None):
        with pytest.raises(ValueError, match="identifier"):
            pm.add_adapter(bad, LoraConfig(r=2))
    assert list(pm.peft_config) == ["sst2"]


@pytest.mark.parametrize("name", ["v", "q", "lora_A", "h", "cls_head", "modules_to_save", "weight"])
def test_adapter_named_like_a_module(tiny, tmp_path, name):
    """Trip-up #5: an adapter's parameters are found by the ModuleDict entry, not by a path
    segment, so a name like "v" neither takes base weights nor loses its own."""
    model = tiny.model("bert", n_labels=3)
    cfg = LoraConfig(r=2, target_modules=("q", "v"), modules_to_save=HEAD)
    pm = apply(model, cfg, name=name)
    tiny.perturb(pm)
    params = pm.adapter_parameters(name)
    assert sum(p.size for p in params.values()) == api.method_of(cfg).formula(pm.config, cfg)["trainable"]
    assert all(p.requires_grad for p in params.values()), sorted(params)
    assert pm.trainable_summary()["adapter"] == n_trainable(pm)
    ids = tiny.ids()
    out, cls = tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))
    pm.save_pretrained(str(tmp_path))
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert keys == set(params)
    pm2 = PeftModel.from_pretrained(tiny.model("bert", n_labels=3), str(tmp_path), name=name)
    assert numpy.array_equal(tiny.np(pm2(ids)[0]), out) and numpy.array_equal(tiny.np(pm2.classify(ids)), cls)


# ----------------------------------------------------------------------------- per-sample routing

ROUTES = {
    "lora": ("lora", lambda: LoraConfig(r=3, target_modules=("k", "o", "proj"), use_rslora=True, modules_to_save=HEAD)),
    "adapters": ("houlsby", lambda: AdapterConfig(size=2, placement="parallel", modules_to_save=HEAD)),
    "lora+adapter": ("lora", lambda: AdapterConfig(size=3, placement="pfeiffer", activation="gelu", modules_to_save=HEAD)),
}
NAMES = ["a", None, "b", "a", "b"]


def _routed_pm(tiny, arch, combo):
    first, second = ROUTES[combo]
    pm = apply(tiny.model(arch, n_labels=3), METHODS[first](HEAD), name="a")
    pm.add_adapter("b", second())
    tiny.perturb(pm)
    return pm


@pytest.mark.parametrize("combo", list(ROUTES))
def test_routing_equals_each_sample_alone(tiny, arch, combo):
    pm = _routed_pm(tiny, arch, combo)
    ids = tiny.ids(len(NAMES), 5)
    lm = tiny.np(pm(ids, adapter_names=NAMES)[0])
    cls = tiny.np(pm.classify(ids, adapter_names=NAMES))
    alone_lm, alone_cls = [], []
    for i, n in enumerate(NAMES):
        one = ids[i:i + 1]
        if n is None:
            with pm.disable_adapter():
                alone_lm.append(tiny.np(pm(one)[0])[0])
                alone_cls.append(tiny.np(pm.classify(one))[0])
        else:
            pm.set_adapter(n)
            alone_lm.append(tiny.np(pm(one)[0])[0])
            alone_cls.append(tiny.np(pm.classify(one))[0])
    err_lm = abs(lm - numpy.stack(alone_lm)).max()
    err_cls = abs(cls - numpy.stack(alone_cls)).max()
    assert err_lm < 1e-12 and err_cls < 1e-12, f"routed vs alone: LM {err_lm}, classifier {err_cls}"
    # the routed heads differ per adapter (a head that is not routed would predict the same)
    assert abs(alone_cls[0] - alone_cls[2]).max() > 1e-3


@pytest.mark.parametrize("combo", list(ROUTES))
def test_routing_in_training_gradients_add_up(tiny, arch, combo):
    """d/dtheta of a routed batch's loss == the sum over samples of each sample's own gradient."""
    pm = _routed_pm(tiny, arch, combo)
    pm.train()
    ids = tiny.ids(len(NAMES), 5)
    gen = numpy.random.default_rng(11)
    g_lm = gen.normal(size=(len(NAMES), 5, tiny.vocab))
    g_cls = gen.normal(size=(len(NAMES), 3))

    def loss(rows, names):
        lm = pm(ids[rows], adapter_names=names)[0]
        cls = pm.classify(ids[rows], adapter_names=names)
        return (lm * tiny.tensor(g_lm[rows])).sum() + (cls * tiny.tensor(g_cls[rows])).sum()

    params = dict(pm.named_parameters())
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    pm.zero_grad()
    loss(slice(None), NAMES).backward()
    batch = {n: tiny.np(p.grad) if p.grad is not None else numpy.zeros(p.shape) for n, p in trainable.items()}
    pm.zero_grad()
    for i, n in enumerate(NAMES):
        if n is not None:                              # a base-model sample reaches no trainable parameter
            loss(slice(i, i + 1), [n]).backward()      # gradients accumulate over the samples
    summed = {n: tiny.np(p.grad) if p.grad is not None else numpy.zeros(p.shape) for n, p in trainable.items()}
    errs = {n: abs(batch[n] - summed[n]).max() for n in trainable}
    worst = max(errs, key=errs.get)
    assert errs[worst] < 1e-10, f"{worst}: routed-batch gradient differs from the per-sample sum by {errs[worst]}"
    zero = [n for n in trainable if not abs(batch[n]).max() > 0]
    assert zero == [], f"parameters without a gradient: {zero}"
    frozen = [n for n, p in params.items() if not p.requires_grad and p.grad is not None]
    assert frozen == []


def test_routing_errors(tiny):
    pm = _routed_pm(tiny, "gpt2", "lora")
    ids = tiny.ids(4, 5)
    with pytest.raises(ValueError) as e:
        pm(ids, adapter_names=["a", "b"])
    assert "2 entries for a batch of 4" in str(e.value), str(e.value)
    with pytest.raises(ValueError):
        pm.classify(ids, adapter_names=["a"] * 5)
    with pytest.raises(KeyError) as e:
        pm(ids, adapter_names=["a", "c", None, "b"])
    assert "no adapter named 'c'" in str(e.value) and "['a', 'b']" in str(e.value)


def test_two_active_heads_are_ambiguous(tiny):
    pm = apply(tiny.model("gpt2", n_labels=3), LoraConfig(r=2, modules_to_save=HEAD), name="a")
    pm.add_adapter("b", LoraConfig(r=2, modules_to_save=HEAD))
    pm.set_adapter(["a", "b"])
    ids = tiny.ids()
    with pytest.raises(ValueError, match="own copy of the same head"):
        pm.classify(ids)
    with pytest.raises(ValueError, match="set_adapter"):
        pm.eval().merge_and_unload()


# ----------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("make,field", [
    (lambda: LoraConfig(r=0), "LoraConfig.r"),
    (lambda: LoraConfig(r=-4), "LoraConfig.r"),
    (lambda: LoraConfig(r=2.5), "LoraConfig.r"),
    (lambda: LoraConfig(lora_alpha=-8.0), "lora_alpha"),
    (lambda: LoraConfig(lora_alpha=0), "lora_alpha"),
    (lambda: LoraConfig(lora_dropout=1.0), "lora_dropout"),
    (lambda: LoraConfig(lora_dropout=-0.1), "lora_dropout"),
    (lambda: LoraConfig(target_modules=("q", "query")), "target_modules"),
    (lambda: LoraConfig(target_modules=()), "target_modules"),
    (lambda: AdapterConfig(size=0), "AdapterConfig.size"),
    (lambda: AdapterConfig(size=-8), "AdapterConfig.size"),
    (lambda: AdapterConfig(placement="middle"), "AdapterConfig.placement"),
    (lambda: AdapterConfig(activation="swish"), "AdapterConfig.activation"),
    (lambda: AdapterConfig(placement="parallel", parallel_site="mlp"), "parallel_site"),
    (lambda: AdapterConfig(init_scale=-1e-3), "init_scale"),
    (lambda: FullConfig(top_k_layers=0), "top_k_layers"),
])
def test_bad_config_is_a_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError) as e:
        make()
    assert field in str(e.value), f"{field!r} not in: {e.value}"


def test_unknown_target_lists_the_targets_that_exist():
    with pytest.raises(ValueError) as e:
        LoraConfig(target_modules=("q", "c_attn"))
    msg = str(e.value)
    assert "'c_attn'" in msg and all(f"'{t}'" in msg for t in TARGETS), msg


def test_unknown_placement_lists_the_placements():
    with pytest.raises(ValueError) as e:
        AdapterConfig(placement="sandwich")
    assert all(p in str(e.value) for p in ("houlsby", "pfeiffer", "parallel")), str(e.value)


@pytest.mark.parametrize("make,field", [
    (lambda: LoraConfig(r=2, layers=(0, 2)), "LoraConfig.layers"),
    (lambda: LoraConfig(r=2, layers=(-1,)), "LoraConfig.layers"),
    (lambda: AdapterConfig(size=2, layers=(1, 5)), "AdapterConfig.layers"),
    (lambda: FullConfig(top_k_layers=3), "top_k_layers"),
])
def test_config_that_does_not_fit_the_model(tiny, make, field):
    model = tiny.model("gpt2")
    n = model.num_parameters()
    with pytest.raises(ValueError) as e:
        apply(model, make())
    assert field in str(e.value) and ("0..1" in str(e.value) or "2 layers" in str(e.value)), str(e.value)
    assert model.num_parameters() == n and not any(p.requires_grad for p in model.parameters())


def test_failed_add_leaves_nothing_behind(tiny):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2))
    n, trainable = pm.num_parameters(), n_trainable(pm)
    for bad in (LoraConfig(r=2, layers=(0, 1, 2)), AdapterConfig(size=2, layers=(0, 7))):
        with pytest.raises(ValueError):
            pm.add_adapter("x", bad)
        assert (pm.num_parameters(), n_trainable(pm), list(pm.peft_config)) == (n, trainable, ["default"])
        assert not any(".x." in name for name, _ in pm.named_parameters())
    pm.add_adapter("x", LoraConfig(r=3, layers=(1,)))          # the name is free again
    assert n_trainable(pm) == trainable + 3 * 16 * 2


@pytest.mark.parametrize("method", ["lora", "houlsby", "bitfit"])
def test_modules_to_save_path_that_does_not_exist(tiny, method):
    model = tiny.model("bert", n_labels=2)
    with pytest.raises(ValueError) as e:
        apply(model, METHODS[method](("classifier",)))
    msg = str(e.value)
    assert "modules_to_save" in msg and "'classifier'" in msg and "cls_head" in msg, msg
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, (AdapterLayer, ModulesToSave)) for m in model.modules())


# ----------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_reproduces_outputs_exactly(tiny, arch, method, tmp_path):
    pm = apply(tiny.model(arch, n_labels=3), METHODS[method](HEAD))
    tiny.perturb(pm, std=0.1)
    ids = tiny.ids()
    lm, cls = tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))
    pm.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == set(pm.adapter_parameters("default"))
    assert not any(".default." in k for k in saved)
    fresh = tiny.model(arch, n_labels=3)
    assert abs(tiny.np(fresh(ids)[0]) - lm).max() > 1e-4, "the fresh base must differ from the adapted model"
    pm2 = PeftModel.from_pretrained(fresh, str(tmp_path))
    assert numpy.array_equal(tiny.np(pm2(ids)[0]), lm)
    assert numpy.array_equal(tiny.np(pm2.classify(ids)), cls)
    # trip-up #2: a loaded adapter is frozen unless asked for
    assert n_trainable(pm2) == 0
    assert pm2.print_trainable_parameters().startswith("trainable params: 0 ||")


@pytest.mark.parametrize("method", ["lora", "houlsby", "bitfit"])
def test_load_with_is_trainable_then_train(tiny, method, tmp_path):
    pm = apply(tiny.model("gpt2"), METHODS[method]())
    tiny.perturb(pm, std=0.1)
    pm.save_pretrained(str(tmp_path))
    pm2 = PeftModel.from_pretrained(tiny.model("gpt2"), str(tmp_path), is_trainable=True)
    cfg = pm2.peft_config["default"]
    assert n_trainable(pm2) == api.method_of(cfg).formula(pm2.config, cfg)["trainable"]
    ids, targets = tiny.ids(), tiny.ids(seed=3)
    with no_grad():
        start = pm2(ids, targets)[1].item()
    fit(pm2, lambda m, _: m(ids, targets)[1], [None], steps=10, lr=1e-2, schedule="constant", progress=False)
    with no_grad():
        end = pm2(ids, targets)[1].item()
    assert end < start - 0.05, f"a loaded trainable adapter should train: loss {start} -> {end}"


def test_classification_head_travels_with_the_adapter(tiny, arch, tmp_path):
    """Trip-up #4: with modules_to_save the trained head is saved (under HF peft's key) and a
    reloaded classifier predicts exactly as the trained one."""
    pm = apply(tiny.model(arch, n_labels=3), LoraConfig(r=2, modules_to_save=HEAD))
    ids, y = tiny.ids(6, 5), tiny.labels(6)
    fit(pm, lambda m, _: ops.cross_entropy(m.classify(ids), y), [None], steps=15, lr=3e-2,
        schedule="constant", progress=False)
    trained = tiny.np(pm.classify(ids))
    head = pm.model.cls_head.modules_to_save["default"]
    pm.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved["base_model.model.cls_head.weight"].shape == (3, 8)
    assert numpy.array_equal(saved["base_model.model.cls_head.bias"], tiny.np(head.bias))
    fresh = tiny.model(arch, n_labels=3)
    untrained = tiny.np(fresh.classify(ids))
    assert abs(untrained - trained).max() > 1e-2, "training should have moved the head"
    pm2 = PeftModel.from_pretrained(fresh, str(tmp_path))
    assert numpy.array_equal(tiny.np(pm2.classify(ids)), trained)
    assert (tiny.np(pm2.classify(ids)).argmax(1) == trained.argmax(1)).all()


@pytest.mark.parametrize("change,words", [
    (dict(d_model=12), ["d_model=8 (this model: 12)"]),
    (dict(n_layer=3), ["n_layer=2 (this model: 3)"]),
    (dict(arch="bert"), ["arch=gpt2 (this model: bert)"]),
])
def test_loading_onto_a_model_of_another_shape(tiny, tmp_path, change, words):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2))
    pm.save_pretrained(str(tmp_path))
    other = tiny.model(**{"arch": "gpt2", **change})
    with pytest.raises(ValueError) as e:
        PeftModel.from_pretrained(other, str(tmp_path))
    assert "trained on a different model" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert not any(isinstance(m, AdapterLayer) for m in other.modules())


def test_loading_a_head_of_another_shape(tiny, tmp_path):
    pm = apply(tiny.model("bert", n_labels=3), LoraConfig(r=2, modules_to_save=HEAD))
    pm.save_pretrained(str(tmp_path))
    target = apply(tiny.model("bert", n_labels=2), AdapterConfig(size=2), name="ad")
    n, trainable = target.num_parameters(), n_trainable(target)
    with pytest.raises(CheckpointError) as e:
        target.load_adapter(str(tmp_path), name="sst2")
    assert "base_model.model.cls_head.weight: model (2, 8), state dict (3, 8)" in str(e.value), str(e.value)
    # the failed load left the model as it was and the name free
    assert list(target.peft_config) == ["ad"] and target.active_adapters == ["ad"]
    assert (target.num_parameters(), n_trainable(target)) == (n, trainable)


@pytest.mark.parametrize("cut", ["half", "header", "empty"])
def test_truncated_adapter_file(tiny, tmp_path, cut):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2))
    tiny.perturb(pm)
    good = tmp_path / "good"
    pm.save_pretrained(str(good))
    bad = tmp_path / "bad"
    pm.save_pretrained(str(bad))
    f = bad / "adapter_model.safetensors"
    raw = f.read_bytes()
    f.write_bytes({"half": raw[:len(raw) // 2], "header": raw[:40], "empty": b""}[cut])
    target = apply(tiny.model("gpt2"), AdapterConfig(size=2), name="ad")
    n = target.num_parameters()
    with pytest.raises(CheckpointError) as e:
        target.load_adapter(str(bad), name="lo")
    msg = str(e.value)
    assert "adapter_model.safetensors" in msg and "re-save" in msg, msg
    if cut == "empty":
        assert "empty or truncated" in msg, msg
    assert list(target.peft_config) == ["ad"] and target.num_parameters() == n
    target.load_adapter(str(good), name="lo")                  # the name is still free
    target.set_adapter("lo")
    ids = tiny.ids()
    assert numpy.array_equal(tiny.np(target(ids)[0]), tiny.np(pm(ids)[0]))


def test_loading_from_a_directory_without_an_adapter(tiny, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        PeftModel.from_pretrained(tiny.model("gpt2"), str(tmp_path))
    assert "adapter_config.json" in str(e.value) and "save_pretrained" in str(e.value)


def test_save_several_adapters(tiny, tmp_path):
    pm = apply(tiny.model("gpt2"), LoraConfig(r=2), name="a")
    pm.add_adapter("b", AdapterConfig(size=2))
    tiny.perturb(pm)
    pm.save_pretrained(str(tmp_path))
    ids = tiny.ids()
    for name, sub in (("a", tmp_path), ("b", tmp_path / "b")):
        pm.set_adapter(name)
        pm2 = PeftModel.from_pretrained(tiny.model("gpt2"), str(sub), name=name)
        assert numpy.array_equal(tiny.np(pm2(ids)[0]), tiny.np(pm(ids)[0])), name


# ----------------------------------------------------------------------------- optimizer, loss

@pytest.mark.parametrize("method", list(METHODS))
def test_optimizer_state_is_proportional_to_trainable(tiny32, arch, method):
    pm = apply(tiny32.model(arch, n_labels=3), METHODS[method](HEAD))
    trainable = n_trainable(pm)
    opt = AdamW(pm.trainable_parameters(), lr=1e-3)
    assert opt.state_bytes() == 8 * trainable, f"{opt.state_bytes()} bytes for {trainable} float32 parameters"
    opt_all = AdamW(pm.parameters(), lr=1e-3)                  # frozen parameters get no state
    assert opt_all.state_bytes() == 8 * trainable


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_lowers_the_training_loss(tiny32, arch, method):
    pm = apply(tiny32.model(arch), METHODS[method]())
    ids, targets = tiny32.ids(4, 6), tiny32.ids(4, 6, seed=2)
    with no_grad():
        start = pm(ids, targets)[1].item()
    opt = AdamW(pm.trainable_parameters(), lr=3e-2, weight_decay=0.0)
    for _ in range(30):
        loss = pm(ids, targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    with no_grad():
        end = pm(ids, targets)[1].item()
    assert end < start - 0.3, f"{method} on {arch}: loss {start:.4f} -> {end:.4f} after 30 AdamW steps"
