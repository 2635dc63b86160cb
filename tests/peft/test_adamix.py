"""AdaMix (minipeft/peft/adamix.py): random experts in training, the expert soup for inference,
the consistency loss. The contract tests (test_contract.py) run its defaults in eval mode."""
from __future__ import annotations

import numpy
import pytest

from minipeft import ops
from minipeft.autograd import Tensor, no_grad
from minipeft.gradcheck import gradcheck
from minipeft.peft import PeftModel, apply, registry
from minipeft.peft import adamix
from minipeft.peft.adamix import AdaMixConfig
from minipeft.peft.adapter import AdapterConfig
from minipeft.peft.lora import LoraConfig
from minipeft.train import fit

pytestmark = pytest.mark.task_api

KINDS = {"adapter": AdaMixConfig(size=3), "lora": AdaMixConfig(kind="lora", r=2),
         "adapter_unshared": AdaMixConfig(size=3, share_up=False, share_down=True)}


def mixtures(pm):
    return [m for m in pm.modules() if isinstance(m, adamix.MixtureLinear)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_counted_trained_and_kept_equal_the_formula(tiny, arch, kind):
    cfg = KINDS[kind]
    pm = apply(tiny.model(arch), cfg)
    f = registry.METHODS["adamix"].formula(pm.config, cfg)
    d, M = 8, 4
    Md, Mu = cfg.experts
    if cfg.kind == "adapter":
        m, sites = 3, 2 * 2
        assert f["trainable"] == sites * (Md * (d * m + m) + Mu * (m * d + d))
        assert f["kept"] == sites * (2 * m * d + d + m) == registry.METHODS["adapter"].formula(
            pm.config, AdapterConfig(size=3))["trainable"]
    else:
        assert (Md, Mu) == (M, 1) and f["trainable"] == 2 * 2 * (M * 2 * d + d * 2)
        assert f["kept"] == registry.METHODS["lora"].formula(pm.config, LoraConfig(r=2))["trainable"]
    assert sum(p.size for p in pm.trainable_parameters()) == f["trainable"]
    adamix.average(pm)
    assert sum(p.size for p in pm.trainable_parameters()) == f["kept"]
    assert registry.METHODS["adamix"].formula(pm.config, pm.peft_config["default"])["trainable"] == f["kept"]


def test_training_passes_take_random_experts_and_eval_their_average(tiny, monkeypatch):
    pm = apply(tiny.model("gpt2"), AdaMixConfig(size=3))
    tiny.perturb(pm)
    ids = tiny.ids()
    outs = {tiny.np(pm(ids)[0]).tobytes() for _ in range(6)}
    assert len(outs) > 1, "training-mode passes should route to different experts"
    monkeypatch.setattr(adamix, "choose", lambda M: 2)
    picked = tiny.np(pm(ids)[0])
    for mix in mixtures(pm):                          # expert 2 everywhere (the shared up has only one)
        experts = list(mix.experts)
        if len(experts) > 1:
            experts[0].weight.data, experts[2].weight.data = experts[2].weight.data, experts[0].weight.data
            experts[0].bias.data, experts[2].bias.data = experts[2].bias.data, experts[0].bias.data
    monkeypatch.setattr(adamix, "choose", lambda M: 0)
    assert numpy.array_equal(tiny.np(pm(ids)[0]), picked)
    pm.eval()
    assert numpy.array_equal(tiny.np(pm(ids)[0]), tiny.np(pm(ids)[0])), "eval mode is deterministic"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["train_expert_1", "eval_average"])
def test_gradcheck(tiny, arch, kind, mode, monkeypatch):
    pm = apply(tiny.model(arch, n_labels=3), KINDS[kind])
    tiny.perturb(pm)
    if mode == "eval_average":
        pm.eval()
    monkeypatch.setattr(adamix, "choose", lambda M: 1 % M)
    ids, y = tiny.ids(2, 4), tiny.labels(2)
    loss = lambda *_: ops.cross_entropy(pm.classify(ids), y)  # noqa: E731
    assert gradcheck(loss, *pm.trainable_parameters(), max_per_input=4, name=f"adamix {kind} {mode}") < 1e-5


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_the_averaged_model_is_one_adapter_with_the_mean_weights(tiny, arch, kind):
    cfg = KINDS[kind]
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, cfg)
    tiny.perturb(pm)
    pm.eval()
    ids = tiny.ids()
    soup = tiny.np(pm(ids)[0])
    mean = {path: [tiny.np(ops.stack([e.weight for e in m.experts]).mean(axis=0)),
                   None if m.experts[0].bias is None else tiny.np(ops.stack([e.bias for e in m.experts]).mean(axis=0))]
            for path, m in pm.named_modules() if isinstance(m, adamix.MixtureLinear)}
    adamix.average(pm)
    assert numpy.array_equal(tiny.np(pm(ids)[0]), soup), "averaging does not change the eval outputs"
    assert all(len(list(m.experts)) == 1 for m in mixtures(pm))
    pm.delete_adapter("default")
    one = AdapterConfig(size=3, activation="gelu") if kind == "adapter" else LoraConfig(r=2)
    pm.add_adapter("one", one)
    pm.set_adapter("one")
    params = dict(pm.named_parameters())
    for path, (w, b) in mean.items():
        plain = path.replace(".default", ".one")        # adapters.default.down -> adapters.one.down
        params[f"{plain}.weight"].data = tiny.tensor(w).data
        if b is not None:
            params[f"{plain}.bias"].data = tiny.tensor(b).data
    assert abs(tiny.np(pm(ids)[0]) - soup).max() < 1e-12


def test_save_load_after_averaging(tiny, tmp_path):
    pm = apply(tiny.model("bert", n_labels=3), AdaMixConfig(size=3, modules_to_save=("cls_head",)))
    tiny.perturb(pm)
    adamix.average(pm)
    pm.eval()
    ids = tiny.ids()
    want = tiny.np(pm.classify(ids))
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(tiny.model("bert", n_labels=3), str(tmp_path)).eval()
    assert loaded.peft_config["default"].num_experts == 1
    assert numpy.array_equal(tiny.np(loaded.classify(ids)), want)


def test_lora_kind_delete_gives_the_base_back(tiny):
    model = tiny.model("gpt2")
    ids = tiny.ids()
    base = tiny.np(model(ids)[0])
    pm = apply(model, AdaMixConfig(kind="lora", r=2))
    tiny.perturb(pm)
    pm.delete_adapter("default")
    assert numpy.array_equal(tiny.np(pm(ids)[0]), base) and not mixtures(pm)


def test_symmetric_kl_value_and_stop_gradient(tiny):
    gen = numpy.random.default_rng(0)
    p = Tensor(tiny.tensor(gen.normal(size=(4, 3))).data, requires_grad=True)
    q = Tensor(tiny.tensor(gen.normal(size=(4, 3))).data, requires_grad=True)
    assert adamix.symmetric_kl(p, Tensor(p.data)).item() == pytest.approx(0.0, abs=1e-15)
    kl = adamix.symmetric_kl(p, q)
    P, Q = (numpy.exp(tiny.np(t)) / numpy.exp(tiny.np(t)).sum(-1, keepdims=True) for t in (p, q))
    want = 0.5 * ((Q * numpy.log(Q / P)).sum(-1) + (P * numpy.log(P / Q)).sum(-1)).mean()
    assert kl.item() == pytest.approx(want, rel=1e-12)
    kl.backward()
    # d/dp KL(sg q || p) = (softmax(p) - softmax(q)) / 2N : the other term sends nothing into p
    assert abs(tiny.np(p.grad) - (P - Q) / 8).max() < 1e-12
    assert abs(tiny.np(q.grad) - (Q - P) / 8).max() < 1e-12


def test_consistency_training_lowers_the_loss(tiny):
    pm = apply(tiny.model("bert", n_labels=3), AdaMixConfig(size=3, modules_to_save=("cls_head",)))
    ids, y = tiny.ids(8, 5), tiny.labels(8)

    def task(m, _):
        z = m.classify(ids)
        return ops.cross_entropy(z, y), z
    loss_fn = adamix.consistency_loss_fn(task, alpha=1.0)
    with no_grad():
        start = loss_fn(pm, None).item()
    fit(pm, loss_fn, [None], steps=30, lr=1e-2, schedule="constant", progress=False)
    pm.eval()
    with no_grad():
        end = task(pm, None)[0].item()
    assert end < start - 0.1, f"{start:.4f} -> {end:.4f}"


def test_errors(tiny):
    with pytest.raises(ValueError, match="kind must be 'adapter' or 'lora'"):
        AdaMixConfig(kind="prefix")
    with pytest.raises(ValueError, match="num_experts must be a positive integer"):
        AdaMixConfig(num_experts=0)
    with pytest.raises(ValueError, match="not AdaMix"):
        adamix.average(apply(tiny.model("gpt2"), LoraConfig(r=2)))
