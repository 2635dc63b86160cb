"""The method contract (minipeft/peft/registry.py), checked on every registered method.

Nothing here names a method: each test runs over `registry.names()`, on the method's default
config (the contract says the defaults work on any model), so a new method file is tested by
being added. What every method must do:
- the registry finds it, it defines what the contract requires, its config survives JSON;
- counted trainable parameters equal its closed-form formula, and what it saves is what trains;
- a float64 gradient check end to end (LM and classifier) through its trainable parameters;
- its backward runs no product outside the counted matmul (tests/backward_work.py);
- it starts equal to the base model where it promises so (STARTS_AT_BASE);
- outputs are compared in eval mode for a method whose training passes are random (RANDOM_IN_TRAINING);
- training changes its own parameters and no other; the loss goes down; AdamW keeps 8 bytes per
  trainable float32 parameter and none for frozen ones;
- save/load reproduces the outputs exactly, loaded frozen unless is_trainable=True;
- disable_adapter gives the base model exactly (or refuses, CAN_DISABLE = False);
- delete_adapter gives the base model back exactly (or refuses, EXCLUSIVE);
- per-sample routing of two adapters of the method equals each sample run alone (unless EXCLUSIVE),
  or, where the method declares PER_SAMPLE = False (a W0 + Delta shared by the batch), a clear error;
- merge_adapter keeps the outputs and unmerge_adapter restores the weights (or it refuses);
- `layers` and `modules_to_save`, where a config has them, are checked the same way everywhere;
- a caller's prefix= rows join whatever the method does.
"""
from __future__ import annotations

import types
from dataclasses import fields
from pathlib import Path

import numpy
import pytest

from minipeft import ops
from minipeft.autograd import no_grad
from minipeft.gradcheck import gradcheck
from minipeft.optim import AdamW
from minipeft.peft import PeftModel, apply, registry
from minipeft.peft.io import config_from_json, config_to_json
from minipeft.peft.routing import AdapterLayer, ModulesToSave
from minipeft.train import fit

pytestmark = pytest.mark.task_api

NAMES = registry.names()
HEAD = ("cls_head",)
N_CTX = 32          # room for a default soft prompt (20) before the tokens


def module(method):
    return registry.METHODS[method]


def has_field(method, name) -> bool:
    return name in {f.name for f in fields(module(method).CONFIG)}


def config(method, heads=()):
    """The method's default config, with a task head when it can carry one."""
    cls = module(method).CONFIG
    return cls(modules_to_save=heads) if has_field(method, "modules_to_save") else cls()


def flag(method, name):
    return getattr(module(method), name, name in ("CAN_DISABLE", "PER_SAMPLE"))


def settled(pm, method):
    """pm itself, in eval mode where the method's training passes are random (RANDOM_IN_TRAINING)."""
    return pm.eval() if flag(method, "RANDOM_IN_TRAINING") else pm


def adapted(tiny, arch, method, name="default", seed=1, **kw):
    pm = apply(tiny.model(arch, n_labels=3, n_ctx=N_CTX, **kw), config(method, HEAD), name=name)
    tiny.perturb(pm, std=0.1, seed=seed)
    return settled(pm, method)


def outputs(tiny, pm, ids):
    return tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))


def wrappers(pm):
    return [n for n, m in pm.named_modules() if isinstance(m, AdapterLayer) and not isinstance(m, ModulesToSave)]


# ----------------------------------------------------------------------------- the registry

def test_the_registry_is_every_file_that_defines_CONFIG():
    import importlib
    folder = Path(registry.__file__).parent
    files = {}
    for path in sorted(folder.glob("*.py")):
        mod = importlib.import_module(f"minipeft.peft.{path.stem}")
        if hasattr(mod, "CONFIG"):
            files[mod.CONFIG.method] = mod
    assert files == registry.METHODS, f"files with CONFIG {sorted(files)}, registered {sorted(registry.METHODS)}"
    assert len(NAMES) >= 6


def test_a_file_that_breaks_the_contract_is_refused():
    fake = types.ModuleType("minipeft.peft.fake")
    fake.CONFIG = type("FakeConfig", (), {"method": "fake"})
    fake.add = lambda pm, name, cfg: None
    with pytest.raises(TypeError) as e:
        registry.check_contract(fake)
    msg = str(e.value)
    assert "minipeft.peft.fake" in msg and "formula" in msg and "DEFAULT_LR" in msg and "from_options" in msg, msg


@pytest.mark.parametrize("method", NAMES)
def test_defines_the_contract(method):
    m = module(method)
    assert registry.check_contract(m) == method
    assert isinstance(m.DEFAULT_LR, float) and 0 < m.DEFAULT_LR < 1
    cfg = registry.config_from_options(method)
    assert type(cfg) is m.CONFIG and registry.method_of(cfg) is m
    meta = {"peft_type": method.upper(), **config_to_json(cfg)}
    assert config_from_json(meta) == cfg, "the config must survive adapter_config.json"
    assert m.__doc__ and len(m.__doc__) > 200, "a method file opens with its paper, equation and shapes"


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError) as e:
        registry.config_from_options("dora")
    assert "unknown --method 'dora'" in str(e.value) and all(n in str(e.value) for n in NAMES)


# ----------------------------------------------------------------------------- counting

@pytest.mark.parametrize("heads", [(), HEAD], ids=["no_head", "head"])
@pytest.mark.parametrize("method", NAMES)
def test_counted_equals_formula(tiny, arch, method, heads):
    pm = apply(tiny.model(arch, n_labels=3, n_ctx=N_CTX), config(method, heads))
    cfg = pm.peft_config["default"]
    f = module(method).formula(pm.config, cfg)
    trainable = sum(p.size for p in pm.trainable_parameters())
    saved = sum(p.size for p in pm.adapter_parameters("default").values())
    assert trainable == f["trainable"], f"{method}: counted {trainable}, formula {f['trainable']}"
    assert saved == f["trainable"], f"{method}: saves {saved} numbers but trains {f['trainable']}"
    assert 0 < f["kept"] <= f["trainable"]
    assert f"counted {trainable:,}, formula {f['trainable']:,} trained" in pm.print_trainable_parameters()


@pytest.mark.parametrize("method", [n for n in NAMES if has_field(n, "modules_to_save")])
def test_a_head_without_closed_form_is_an_error_in_every_formula(tiny, method):
    model_cfg = tiny.config("bert", n_labels=3)
    with pytest.raises(ValueError, match="no closed form for modules_to_save entry 'pooler'"):
        module(method).formula(model_cfg, config(method, ("pooler",)))


# ----------------------------------------------------------------------------- gradients, start, training

@pytest.mark.parametrize("method", NAMES)
def test_gradcheck_end_to_end(tiny, arch, method):
    pm = adapted(tiny, arch, method)
    params = pm.trainable_parameters()
    ids, y = tiny.ids(2, 4), tiny.labels(2)
    assert gradcheck(lambda *_: pm(ids)[0], *params, max_per_input=2, name=f"{method} {arch} lm") < 1e-5
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *params, max_per_input=2, name=f"{method} {arch} classifier") < 1e-5


@pytest.mark.parametrize("method", NAMES)
def test_its_backward_runs_no_product_outside_the_counted_matmul(tiny, arch, method):
    """No `@` between raw arrays in minipeft's code during the method's backward (LM and classifier
    losses): every product goes through backend.matmul or the attention op, where it is counted,
    so "a frozen weight costs no weight-gradient matmul" cannot be dodged by a plain product."""
    from backward_work import raw_products
    pm = adapted(tiny, arch, method)
    ids, targets, y = tiny.ids(2, 4), tiny.ids(2, 4, seed=5), tiny.labels(2)
    loss = pm(ids, targets)[1] + ops.cross_entropy(pm.classify(ids), y)
    seen = raw_products(loss.backward)
    assert seen == [], f"{method} {arch}: a plain `@` ran during the backward at {seen}"


@pytest.mark.parametrize("method", [n for n in NAMES if flag(n, "STARTS_AT_BASE")])
def test_starts_equal_to_the_base_model(tiny, arch, method):
    model = tiny.model(arch, n_labels=3, n_ctx=N_CTX)
    ids = tiny.ids()
    base = outputs(tiny, model, ids)
    pm = settled(apply(model, config(method, HEAD)), method)
    for got, want in zip(outputs(tiny, pm, ids), base):
        assert numpy.array_equal(got, want), f"{method} at step 0: max |adapted - base| {abs(got - want).max()}"


@pytest.mark.parametrize("method", NAMES)
def test_training_changes_its_own_parameters_only(tiny, arch, method):
    pm = apply(tiny.model(arch, n_labels=3, n_ctx=N_CTX), config(method, HEAD))
    own = {id(p) for p in pm.adapter_parameters("default").values()}
    before = {n: tiny.np(p) for n, p in pm.named_parameters()}
    ids, targets, y = tiny.ids(), tiny.ids(seed=5), tiny.labels()
    loss = lambda m, _: m(ids, targets)[1] + ops.cross_entropy(m.classify(ids), y)  # noqa: E731
    with no_grad():
        start = loss(pm, None).item()
    fit(pm, loss, [None], steps=20, lr=1e-2, schedule="constant", progress=False)
    with no_grad():
        end = loss(pm, None).item()
    params = dict(pm.named_parameters())
    moved = {n for n in before if not numpy.array_equal(tiny.np(params[n]), before[n])}
    mine = {n for n, p in params.items() if id(p) in own}
    assert moved - mine == set(), f"{method} changed parameters that are not its own: {sorted(moved - mine)}"
    still = {n for n in mine if params[n].requires_grad} - moved
    assert still == set(), f"{method}: trainable parameters that did not move: {sorted(still)}"
    assert end < start - 0.1, f"{method} on {arch}: loss {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("method", NAMES)
def test_optimizer_state_only_for_trainable(tiny32, method):
    pm = apply(tiny32.model("gpt2", n_labels=3, n_ctx=N_CTX), config(method, HEAD))
    trainable = sum(p.size for p in pm.trainable_parameters())
    assert AdamW(pm.parameters(), lr=1e-3).state_bytes() == 8 * trainable


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("method", NAMES)
def test_save_load_round_trip(tiny, arch, method, tmp_path):
    pm = adapted(tiny, arch, method)
    ids = tiny.ids()
    want = outputs(tiny, pm, ids)
    pm.save_pretrained(str(tmp_path))
    fresh = tiny.model(arch, n_labels=3, n_ctx=N_CTX)
    assert abs(tiny.np(fresh(ids)[0]) - want[0]).max() > 1e-6, "the fresh base must differ from the adapted model"
    loaded = settled(PeftModel.from_pretrained(fresh, str(tmp_path)), method)
    for got, w in zip(outputs(tiny, loaded, ids), want):
        assert numpy.array_equal(got, w), f"{method}: reloaded outputs differ by {abs(got - w).max()}"
    assert loaded.trainable_parameters() == [], "a loaded adapter is frozen unless is_trainable=True"
    again = PeftModel.from_pretrained(tiny.model(arch, n_labels=3, n_ctx=N_CTX), str(tmp_path), is_trainable=True)
    cfg = again.peft_config["default"]
    assert sum(p.size for p in again.trainable_parameters()) == module(method).formula(again.config, cfg)["trainable"]


# ----------------------------------------------------------------------------- lifecycle

@pytest.mark.parametrize("method", NAMES)
def test_disable_adapter(tiny, arch, method):
    model = tiny.model(arch, n_labels=3, n_ctx=N_CTX)
    ids = tiny.ids()
    base = outputs(tiny, model, ids)
    pm = settled(apply(model, config(method, HEAD)), method)
    tiny.perturb(pm, std=0.1)
    on = outputs(tiny, pm, ids)
    if not flag(method, "CAN_DISABLE"):
        with pytest.raises(ValueError, match="no base model to go back to"):
            with pm.disable_adapter():
                pass
        return
    with pm.disable_adapter():
        off = outputs(tiny, pm, ids)
    assert all(numpy.array_equal(a, b) for a, b in zip(off, base)), f"{method}: disabled is not the base model"
    assert abs(on[0] - base[0]).max() > 1e-6, f"{method}: the perturbed adapter should change the outputs"
    assert all(numpy.array_equal(a, b) for a, b in zip(outputs(tiny, pm, ids), on)), "leaving must switch it back on"


@pytest.mark.parametrize("method", NAMES)
def test_delete_adapter(tiny, arch, method):
    model = tiny.model(arch, n_labels=3, n_ctx=N_CTX)
    names = {n for n, _ in model.named_parameters()}
    ids = tiny.ids()
    base = outputs(tiny, model, ids)
    pm = settled(apply(model, config(method, HEAD)), method)
    tiny.perturb(pm, std=0.1)
    if flag(method, "EXCLUSIVE"):
        with pytest.raises(ValueError, match="cannot be deleted.*Reload"):
            pm.delete_adapter("default")
        assert list(pm.peft_config) == ["default"]
        return
    pm.delete_adapter("default")
    assert (pm.peft_config, pm.active_adapters, wrappers(pm)) == ({}, [], [])
    assert {n.split("base_model.model.", 1)[1] for n, _ in pm.named_parameters()} == names
    assert all(numpy.array_equal(a, b) for a, b in zip(outputs(tiny, pm, ids), base))


@pytest.mark.parametrize("method", [n for n in NAMES if not flag(n, "EXCLUSIVE") and flag(n, "PER_SAMPLE")])
def test_routing_equals_each_sample_alone(tiny, arch, method):
    pm = adapted(tiny, arch, method, name="a")
    pm.add_adapter("b", config(method, HEAD))
    settled(pm, method)
    tiny.perturb([p for n, p in pm.named_parameters() if p.requires_grad and ".b." in n], std=0.2, seed=9)
    names = ["a", "b", "b", "a"]
    ids = tiny.ids(len(names), 5)
    lm, cls = tiny.np(pm(ids, adapter_names=names)[0]), tiny.np(pm.classify(ids, adapter_names=names))
    alone = []
    for i, n in enumerate(names):
        pm.set_adapter(n)
        alone.append(outputs(tiny, pm, ids[i:i + 1]))
    assert abs(lm - numpy.concatenate([a[0] for a in alone])).max() < 1e-12
    assert abs(cls - numpy.concatenate([a[1] for a in alone])).max() < 1e-12
    assert abs(alone[0][1] - alone[1][1]).max() > 1e-6, "the two adapters (and heads) should differ"


@pytest.mark.parametrize("method", [n for n in NAMES if not flag(n, "EXCLUSIVE") and not flag(n, "PER_SAMPLE")])
def test_no_per_sample_routing_says_why(tiny, method):
    """PER_SAMPLE = False (a W0 + Delta the batch shares): mixed adapter_names are refused, with the
    reason; a batch routed wholly to one adapter is that adapter."""
    pm = adapted(tiny, "gpt2", method, name="a")
    pm.add_adapter("b", config(method, HEAD))
    ids = tiny.ids(4, 5)
    with pytest.raises(ValueError, match="cannot be routed to some samples only"):
        pm(ids, adapter_names=["a", "b", "b", "a"])
    with pytest.raises(ValueError, match="cannot be routed to some samples only"):
        pm.classify(ids, adapter_names=["a", None, "a", "a"])
    pm.set_adapter("a")
    assert numpy.array_equal(tiny.np(pm(ids, adapter_names=["a"] * 4)[0]), tiny.np(pm(ids)[0]))


@pytest.mark.parametrize("method", NAMES)
def test_merge_or_a_clear_refusal(tiny, arch, method):
    pm = adapted(tiny, arch, method).eval()
    ids = tiny.ids()
    before = outputs(tiny, pm, ids)
    weights = {n: tiny.np(p) for n, p in pm.model.named_parameters()}
    if not hasattr(module(method), "merge"):
        with pytest.raises(ValueError, match="cannot be merged"):
            pm.merge_adapter()
        assert all(numpy.array_equal(tiny.np(p), weights[n]) for n, p in pm.model.named_parameters())
        return
    pm.merge_adapter()
    assert all(abs(a - b).max() < 1e-10 for a, b in zip(outputs(tiny, pm, ids), before))
    pm.unmerge_adapter()
    assert all(abs(tiny.np(p) - weights[n]).max() < 1e-12 for n, p in pm.model.named_parameters())


# ----------------------------------------------------------------------------- config fields the API reads

@pytest.mark.parametrize("method", [n for n in NAMES if has_field(n, "layers")])
def test_layers_are_checked_the_same_way_everywhere(tiny, method):
    cls = module(method).CONFIG
    for bad, words in (((1, 1), "repeats layer(s) [1]"), ((0, 1, 0), "repeats layer(s) [0]"), ((0, 1.5), "integers")):
        with pytest.raises(ValueError) as e:
            cls(layers=bad)
        assert f"{cls.__name__}.layers" in str(e.value) and words in str(e.value), str(e.value)
    assert cls(layers=(1, 0)).layers == (0, 1)
    model = tiny.model("gpt2", n_labels=3, n_ctx=N_CTX)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.layers contains 2; the model has layers 0..1"):
        apply(model, cls(layers=(0, 2)))
    assert not any(p.requires_grad for p in model.parameters()) and not wrappers(PeftModel(model))
    pm = apply(model, cls(layers=(1,)))
    f = module(method).formula(pm.config, pm.peft_config["default"])
    assert sum(p.size for p in pm.trainable_parameters()) == f["trainable"]


@pytest.mark.parametrize("method", [n for n in NAMES if has_field(n, "modules_to_save")])
def test_a_head_path_that_does_not_exist(tiny, method):
    model = tiny.model("bert", n_labels=2, n_ctx=N_CTX)
    with pytest.raises(ValueError) as e:
        apply(model, config(method, ("classifier",)))
    assert "modules_to_save" in str(e.value) and "'classifier'" in str(e.value), str(e.value)
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


# ----------------------------------------------------------------------------- a caller's own prefix

@pytest.mark.parametrize("method", NAMES)
def test_a_callers_prefix_joins_the_method(tiny, arch, method):
    pm = adapted(tiny, arch, method)
    ids = tiny.ids(3, 5)
    H, D = pm.config.n_head, pm.config.d_model // pm.config.n_head
    gen = numpy.random.default_rng(3)
    extra = [(tiny.tensor(gen.normal(size=(1, H, 2, D))), tiny.tensor(gen.normal(size=(1, H, 2, D))))
             for _ in range(pm.config.n_layer)]
    h = tiny.np(pm.encode(ids, prefix=extra))
    assert h.shape == (3, 5, pm.config.d_model)
    assert abs(h - tiny.np(pm.encode(ids))).max() > 1e-6, "the caller's prefix rows must be seen"
    if flag(method, "CAN_DISABLE"):
        with pm.disable_adapter():
            assert numpy.array_equal(tiny.np(pm.encode(ids, prefix=extra)), tiny.np(pm.model.encode(ids, prefix=extra)))
