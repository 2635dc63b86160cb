"""Methods that change existing parameters: the W = W0 + Delta parametrisation, aux losses and
gradient hooks (parametrize.py), sparse deltas (sparse.py), diff pruning, LT-SFT, FISH and
Child-Tuning. The contract tests (test_contract.py) run on them too; these check what is
particular to them."""
from __future__ import annotations

import numpy

import minipeft
import pytest

from minipeft.gradcheck import gradcheck
from minipeft.optim import SGD
from minipeft.peft import PeftModel, apply, sparse
from minipeft.peft import diff_pruning
from minipeft.peft.child_tuning import ChildTuningConfig
from minipeft.peft.diff_pruning import DiffPruningConfig, HardConcrete
from minipeft.peft.fish import FishConfig
from minipeft.peft.lt_sft import LTSFTConfig
from minipeft.peft.sparse import RandomMaskConfig
from minipeft.train import fit

from weight_tasks import loss_now, task

pytestmark = pytest.mark.task_sparse

HEAD = ("cls_head",)


# ----------------------------------------------------------------------------- the ops

def test_gradcheck_scatter(tiny):
    gen = numpy.random.default_rng(0)
    values = tiny.tensor(gen.normal(size=7))
    values.requires_grad = True
    local = tiny.tensor(numpy.array([0.0, 3.0, 5.0])).data.astype(numpy.int32)
    f = lambda v: sparse.Scatter.apply(v, local=local, start=2, stop=5, shape=(2, 3))  # noqa: E731
    assert gradcheck(f, values, name="scatter") < 1e-6
    out = tiny.np(f(values))
    assert out.reshape(-1)[[0, 3, 5]].tolist() == tiny.np(values)[2:5].tolist() and (out.reshape(-1)[[1, 2, 4]] == 0).all()
    dense = lambda v: sparse.Scatter.apply(v, local=None, start=1, stop=7, shape=(3, 2))  # noqa: E731
    assert gradcheck(dense, values, name="dense segment") < 1e-6


def test_gradcheck_hard_concrete_gate(tiny):
    gen = numpy.random.default_rng(1)
    alpha = tiny.tensor(gen.normal(0.0, 0.5, size=(3, 4)))       # near 0: inside the stretched interval
    alpha.requires_grad = True
    u = tiny.tensor(gen.uniform(0.2, 0.8, size=(3, 4))).data
    assert gradcheck(lambda a: HardConcrete.apply(a, u=u, l=-1.5, r=1.5), alpha, name="hard concrete") < 1e-6
    z = tiny.np(HardConcrete.apply(tiny.tensor(numpy.array([-9.0, 0.0, 9.0])), u=0.5))
    # log_alpha = 0, u = 1/2: s = 1/2, zbar = 1/2 * 3 - 1.5 = 0 exactly
    assert z[0] == 0.0 and z[2] == 1.0 and z[1] == 0.0, f"the gate clips to exactly 0 and 1: {z}"


# ----------------------------------------------------------------------------- the parametrisation

def test_the_tied_lm_head_reads_the_effective_embedding(tiny):
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, RandomMaskConfig(density=1.0))              # every entry, wte included
    wte = sparse.delta_of(pm, "default")
    tiny.perturb([wte.values], std=0.1)
    ids = tiny.ids()
    h = pm.encode(ids)
    want = tiny.np(h) @ (tiny.np(model.wte.weight) + tiny.np(pm.deltas["default"].deltas()["wte.weight"])).T
    assert abs(tiny.np(pm.lm_logits(h)) - want).max() < 1e-12
    assert abs(tiny.np(pm(ids)[0]) - want).max() < 1e-12
    assert model.wte.weight is dict(model.named_parameters())["wte.weight"], "W0 is put back after the forward"


@pytest.mark.parametrize("cfg", [RandomMaskConfig(density=0.05, modules_to_save=HEAD),
                                 LTSFTConfig(density=0.05, modules_to_save=HEAD),
                                 FishConfig(density=0.05, modules_to_save=HEAD),
                                 ChildTuningConfig(reserve_p=0.1, modules_to_save=HEAD)], ids=lambda c: c.method)
def test_entries_outside_the_mask_are_bit_identical_after_training(tiny, arch, cfg):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, cfg)
    loss_fn = task(tiny)
    if hasattr(__import__(f"minipeft.peft.{cfg.method if cfg.method != 'random_mask' else 'sparse'}",
                          fromlist=["x"]), "prepare"):
        __import__(f"minipeft.peft.{cfg.method}", fromlist=["x"]).prepare(pm, "default", loss_fn, [None], 3)
    base = {n: tiny.np(p) for n, p in model.named_parameters() if "modules_to_save" not in n}   # not the head copy
    start = loss_now(pm, loss_fn)
    fit(pm, loss_fn, [None], steps=20, lr=1e-2, schedule="constant", progress=False)
    assert loss_now(pm, loss_fn) < start - 0.05, "the sparse method lowers the training loss"
    assert all(numpy.array_equal(tiny.np(p), base[n]) for n, p in model.named_parameters() if n in base), \
        "W0 never changes"
    d = sparse.delta_of(pm, "default")
    effective = {p: tiny.np(base[p]) + tiny.np(t) for p, t in d.deltas().items()}
    flat_changed = numpy.flatnonzero(sparse.flat(pm, d, {p: effective.get(p, base[p]) - base[p] for p in d.paths}))
    assert set(flat_changed) <= set(tiny.np(d.indices).tolist()), "only entries in the mask change"


def test_lt_sft_keeps_the_most_changed_entries_and_resets(tiny):
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, LTSFTConfig(density=0.02, l1_lambda=0.0))
    base = {n: tiny.np(p) for n, p in model.named_parameters()}
    from minipeft.peft import lt_sft
    lt_sft.prepare(pm, "default", task(tiny), [None], steps=5, lr=1e-2)
    assert all(numpy.array_equal(tiny.np(p), base[n]) for n, p in model.named_parameters()), "reset to theta0"
    assert not any(p.requires_grad for p in model.parameters()) and pm.trainable_parameters()
    d = sparse.delta_of(pm, "default")
    assert numpy.array_equal(numpy.sort(tiny.np(d.indices)), tiny.np(d.indices)) and len(set(tiny.np(d.indices))) == d.values.size
    assert (tiny.np(d.values) == 0).all()
    pm2 = apply(tiny.model("gpt2", n_labels=3), LTSFTConfig(density=0.02, l1_lambda=0.0, full_steps=5, full_lr=1e-2))
    lt_sft.prepare(pm2, "default", task(tiny), [None])
    assert numpy.array_equal(tiny.np(sparse.delta_of(pm2, "default").indices), tiny.np(d.indices)), "deterministic"


def test_l1_pull_is_an_aux_loss_that_fit_adds(tiny):
    pm = apply(tiny.model("gpt2", n_labels=3), LTSFTConfig(density=0.05, l1_lambda=0.5))
    d = sparse.delta_of(pm, "default")
    tiny.perturb([d.values], std=0.1)
    assert abs(pm.aux_loss().item() - 0.5 * abs(tiny.np(d.values)).sum()) < 1e-12
    seen = []
    fit(pm, lambda m, _: (seen.append(1), (m(tiny.ids(), tiny.ids(seed=3))[1]))[1], [None], steps=1,
        lr=0.0, schedule="constant", progress=False, clip=None, optimizer=SGD(pm.trainable_parameters(), lr=0.0))
    assert seen == [1]


def test_fish_mask_is_the_top_fisher_entries(tiny):
    from minipeft.peft import fish
    pm = apply(tiny.model("gpt2", n_labels=3), FishConfig(density=0.03))
    loss_fn = task(tiny)
    F = fish.fisher(pm, sparse.maskable(pm), loss_fn, [None], 1)
    fish.prepare(pm, "default", loss_fn, [None], n_samples=1)
    d = sparse.delta_of(pm, "default")
    scores = sparse.flat(pm, d, F)
    chosen = tiny.np(d.indices)
    assert scores[chosen].min() >= numpy.delete(scores, chosen).max()
    assert not any(p.requires_grad for p in pm.model.parameters())


def test_child_tuning_f_masks_the_gradient_every_step(tiny):
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, ChildTuningConfig(mode="F", reserve_p=0.3))
    d = sparse.delta_of(pm, "default")
    blocks = numpy.concatenate([numpy.full(numpy.prod(s), p.startswith("h.")) for p, s in zip(d.paths, d.shapes)])
    masks, loss_fn = [], task(tiny)
    for step in range(1, 4):
        before = tiny.np(d.values)
        opt = SGD([d.values], lr=0.1)
        loss_fn(pm, None).backward()
        grad = tiny.np(d.values.grad)
        pm.before_step(step, opt)
        mask = d.last_mask
        assert numpy.allclose(tiny.np(d.values.grad), grad * mask)
        opt.step()
        opt.zero_grad()
        moved = tiny.np(d.values) != before
        assert not moved[blocks & (mask == 0)].any(), "a masked-out block entry moved"
        assert (mask[blocks & (mask != 0)] == 1 / 0.3).all() and (mask[~blocks] == 1).all()
        masks.append(mask)
    assert not numpy.array_equal(masks[0], masks[1]) and not numpy.array_equal(masks[1], masks[2])
    assert 0.2 < (masks[0][blocks] > 0).mean() < 0.4


# ----------------------------------------------------------------------------- diff pruning

@pytest.mark.parametrize("structured", [False, True])
def test_diff_pruning_reaches_exactly_the_target_sparsity(tiny, arch, structured):
    cfg = DiffPruningConfig(density=0.03, structured=structured, l0_lambda=1e-3, modules_to_save=HEAD)
    pm = apply(tiny.model(arch, n_labels=3), cfg)
    loss_fn = task(tiny)
    start = loss_now(pm, loss_fn)
    assert pm.aux_loss() is not None
    fit(pm, loss_fn, [None], steps=20, lr=1e-2, schedule="constant", progress=False)
    assert loss_now(pm, loss_fn) < start - 0.05
    gates = pm.deltas["default"]
    assert any(not numpy.all(minipeft.to_numpy(g.u) == 0.5) for g in gates.gates), "training drew the gate noise"
    N = sparse.n_maskable(pm.config, HEAD)
    k = diff_pruning.project(pm, "default")
    assert k == round(0.03 * N) and pm.peft_config["default"].fixed
    counts = pm.delta_counts("default")
    assert counts == {"delta_nonzeros": k, "index_bytes": 4 * k}, counts
    assert pm.aux_loss() is None
    f = diff_pruning.formula(pm.config, pm.peft_config["default"])
    assert sum(p.size for p in pm.trainable_parameters()) == f["trainable"] and f["nonzeros"] == k
    mid = loss_now(pm, loss_fn)
    fit(pm, loss_fn, [None], steps=10, lr=1e-2, schedule="constant", progress=False)
    assert loss_now(pm, loss_fn) < mid and pm.delta_counts("default")["delta_nonzeros"] <= k


def test_diff_pruning_penalty_is_the_expected_l0(tiny):
    pm = apply(tiny.model("gpt2"), DiffPruningConfig(l0_lambda=1.0, alpha_init=0.3))
    N = sparse.n_maskable(pm.config)
    want = N / (1 + numpy.exp(-0.3))                  # sigmoid(log_alpha - log(-l/r)), log(1) = 0
    assert abs(pm.aux_loss().item() - want) < 1e-8 * N


def test_projected_diff_pruning_saves_and_loads_exactly(tiny, tmp_path):
    pm = apply(tiny.model("bert", n_labels=3), DiffPruningConfig(density=0.05))
    tiny.perturb(pm, std=0.1)
    diff_pruning.project(pm, "default")
    ids = tiny.ids()
    want = tiny.np(pm(ids)[0])
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(tiny.model("bert", n_labels=3), str(tmp_path))
    assert numpy.array_equal(tiny.np(loaded(ids)[0]), want)
    assert numpy.array_equal(tiny.np(loaded.deltas["default"].indices), tiny.np(pm.deltas["default"].indices))


# ----------------------------------------------------------------------------- composition, counting

def test_composed_sparse_deltas_equal_applying_both(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, RandomMaskConfig(density=0.2, seed=1), name="task")
    pm.add_adapter("lang", RandomMaskConfig(density=0.2, seed=2))
    tiny.perturb(pm.deltas["task"].parameters() + pm.deltas["lang"].parameters(), std=0.1)
    ids = tiny.ids()
    pm.set_adapter(["task", "lang"])
    both = tiny.np(pm(ids)[0])
    a, b = pm.deltas["task"], pm.deltas["lang"]
    idx, val = sparse.add_deltas((a.indices.data, a.values.data), (b.indices.data, b.values.data))
    shared = numpy.intersect1d(tiny.np(a.indices), tiny.np(b.indices))
    assert len(shared) and len(idx) == a.values.size + b.values.size - len(shared)
    plain = tiny.model(arch, n_labels=3)            # theta0 + delta_task + delta_lang, written into the weights
    params = dict(plain.named_parameters())
    full = numpy.zeros(a.N)
    full[idx] = val
    for t, path in enumerate(a.paths):
        w = params[path]
        w.data = w.data + tiny.tensor(full[a.offsets[t]:a.offsets[t + 1]].reshape(a.shapes[t])).data
    assert abs(tiny.np(plain(ids)[0]) - both).max() < 1e-12


@pytest.mark.parametrize("cfg", [RandomMaskConfig(), FishConfig(density=0.02), ChildTuningConfig(),
                                 ChildTuningConfig(mode="F"), DiffPruningConfig(structured=True)], ids=repr)
def test_counted_by_nonzeros(tiny, arch, cfg):
    pm = apply(tiny.model(arch, n_labels=3), cfg)
    tiny.perturb(pm, std=0.1)
    f = type(pm).__module__ and __import__(f"minipeft.peft.{'sparse' if cfg.method == 'random_mask' else cfg.method}",
                                           fromlist=["x"]).formula(pm.config, cfg)
    s = pm.trainable_summary()
    assert s["delta_nonzeros"] == f["nonzeros"], (s, f)
    assert s["index_bytes"] == f["index_bytes"]
    assert sum(p.size for p in pm.trainable_parameters()) == f["trainable"]
    text = pm.print_trainable_parameters()
    assert f"Delta nonzeros {f['nonzeros']:,}, index bytes {f['index_bytes']:,}" in text


def test_count_cli_reports_nonzeros():
    from minipeft.cli import count_params
    res = count_params("bert-base", "random_mask")
    N = sparse.n_maskable(__import__("minipeft.peft.count", fromlist=["x"]).ARCHS["bert-base"])
    assert res["trainable"] == round(0.01 * N)
    for method in ("random_mask", "fish", "lt_sft"):                      # --density reaches each
        res = count_params("bert-base", method, density=0.02)
        assert res["trainable"] == res["kept"] == round(0.02 * N) == res["nonzeros"], (method, res)
        assert res["index_bytes"] == 4 * res["nonzeros"], res
    # diff pruning, before its projection: a gate and a value for every entry (a dense delta); it keeps k
    res = count_params("bert-base", "diff_pruning", density=0.02)
    assert (res["trainable"], res["nonzeros"], res["index_bytes"], res["kept"]) == (2 * N, N, 0, round(0.02 * N)), res


def test_finetune_prepares_a_data_dependent_mask_and_training_goes_on(tmp_path, monkeypatch):
    """finetune calls the method's prepare (FISH: the Fisher mask) on the training batches, and the
    batch generator survives it (closing prepare's reader once closed the generator training reads)."""
    from minipeft.peft import fish
    from minipeft.tasks import finetune
    calls = []
    real = fish.prepare

    def spy(pm, name, loss_fn, batches, **kw):
        calls.append(name)
        real(pm, name, loss_fn, batches, n_samples=2)
    monkeypatch.setattr(fish, "prepare", spy)
    r = finetune("sst2", fish.CONFIG(modules_to_save=("cls_head",)), "bert-m", steps=3, batch_size=8,
                 train_size=16, eval_size=8, eval_every=3, out_dir=str(tmp_path / "run"), progress=False,
                 verbose=False, processes=1)
    assert calls == ["default"] and r.trainable > 0


# ----------------------------------------------------------------------------- SpIEL

def test_spiel_probe_leaves_the_forward_alone_and_reads_the_dense_gradient(tiny):
    from minipeft.peft import spiel
    from minipeft.peft.spiel import SpIELConfig
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, SpIELConfig(density=0.05))
    d = sparse.delta_of(pm, "default")
    tiny.perturb([d.values], std=0.1)
    loss_fn = task(tiny)
    before = loss_now(pm, loss_fn)
    spiel._set_probes(d, True)
    assert loss_now(pm, loss_fn) == before, "W0 + Delta + 0 computes what W0 + Delta does"
    loss_fn(pm, None).backward()
    # the oracle: a plain model holding the effective weights W0 + Delta, differentiated directly
    dense = tiny.model("gpt2", n_labels=3)
    effective = {p: tiny.np(w) for p, w in model.named_parameters()}
    for p, t in d.deltas().items():
        effective[p] = effective[p] + tiny.np(t)
    for p, w in dense.named_parameters():
        w.data = tiny.tensor(effective[p]).data
        w.requires_grad = True
    loss_fn(dense, None).backward()
    grads = {n: tiny.np(p.grad) for n, p in dense.named_parameters() if n in d.probes}
    assert set(grads) == set(d.probes) == set(d.paths)
    for n, g in grads.items():
        err = abs(tiny.np(d.probes[n].grad) - g).max() / (abs(g).max() + 1e-30)
        assert err < 1e-10, f"{n}: probe gradient differs from dL/dW by {err:.2e} (relative)"


def test_spiel_reselection_drops_the_smallest_grows_the_largest_and_carries_moments(tiny):
    from minipeft.optim import AdamW
    from minipeft.peft import spiel
    from minipeft.peft.spiel import SpIELConfig
    pm = apply(tiny.model("gpt2", n_labels=3), SpIELConfig(density=0.02))
    d = sparse.delta_of(pm, "default")
    k, N = d.values.size, d.N
    gen = numpy.random.default_rng(3)
    d.values.data = tiny.tensor(gen.normal(size=k)).data
    opt = AdamW([d.values], lr=1e-3)
    d.values.grad = tiny.tensor(gen.normal(size=k)).data
    opt.step()                                                   # moments exist
    old_idx, old_val = tiny.np(d.indices).astype(int), tiny.np(d.values)
    m_old = tiny.np(opt.state[id(d.values)]["exp_avg"])
    s1 = gen.normal(size=N)
    d.acc = (s1, s1 * s1 + 1.0, 2)
    dropped, grown = spiel.reselect(d, opt, 0.25)
    n = int(round(0.25 * k))
    new_idx = tiny.np(d.indices).astype(int)
    assert len(dropped) == len(grown) == n and len(new_idx) == k and (numpy.diff(new_idx) > 0).all()
    assert set(dropped) == set(old_idx[numpy.argsort(numpy.abs(old_val), kind="stable")[:n]]), "the smallest |delta|"
    outside = numpy.setdiff1d(numpy.arange(N), old_idx)
    assert set(grown) == set(outside[numpy.argsort(-numpy.abs(s1[outside]), kind="stable")[:n]]), "the largest |sum g|"
    where = {j: i for i, j in enumerate(new_idx)}
    val, m_new = tiny.np(d.values), tiny.np(opt.state[id(d.values)]["exp_avg"])
    v_new = tiny.np(opt.state[id(d.values)]["exp_avg_sq"])
    for i, j in enumerate(old_idx):
        if j not in set(dropped):
            assert val[where[j]] == old_val[i] and m_new[where[j]] == m_old[i], "a kept entry keeps value and moment"
    for j in grown:
        assert val[where[j]] == 0 and m_new[where[j]] == pytest.approx(s1[j] / 2) \
            and v_new[where[j]] == pytest.approx((s1[j] ** 2 + 1) / 2)


def test_spiel_moves_its_index_set_while_it_trains_and_w0_stays(tiny):
    from minipeft.peft.spiel import SpIELConfig, rate
    cfg = SpIELConfig(density=0.05, reselection_steps=4, accumulation_steps=2, initial_reselection_rate=0.5,
                      total_steps=12, modules_to_save=HEAD)
    assert rate(4, cfg) == pytest.approx(0.5 * (1 - 4 / 12)) and rate(12, cfg) == 0.0
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, cfg)
    d = sparse.delta_of(pm, "default")
    base = {n: tiny.np(p) for n, p in model.named_parameters() if "modules_to_save" not in n}
    loss_fn = task(tiny)
    start, first = loss_now(pm, loss_fn), set(tiny.np(d.indices).tolist())
    fit(pm, loss_fn, [None], steps=3, lr=1e-2, schedule="constant", progress=False, processes=1)
    assert set(tiny.np(d.indices).tolist()) == first and d.probes is not None, "step 4 accumulates next"
    fit(pm, loss_fn, [None], steps=10, lr=1e-2, schedule="constant", progress=False, processes=1)
    moved = set(tiny.np(d.indices).tolist())
    assert moved != first and len(moved) == len(first), "re-selected, at the same size"
    assert loss_now(pm, loss_fn) < start - 0.05
    assert all(numpy.array_equal(tiny.np(p), base[n]) for n, p in model.named_parameters() if n in base)


def test_spiel_refuses_data_parallel_training(tiny):
    from minipeft.peft.spiel import SpIELConfig
    pm = apply(tiny.model("gpt2", n_labels=3), SpIELConfig(density=0.05))
    with pytest.raises(ValueError, match="one process"):
        fit(pm, task(tiny), [None], steps=1, progress=False, processes=2)


def test_movement_refuses_data_parallel_training(tiny):
    """Movement's scores are plain Tensors learned in before_step: data-parallel workers would keep
    their slices' score gradients to themselves (and the schedule's k_t), so it trains in one process."""
    from minipeft.peft.movement import MovementConfig
    pm = apply(tiny.model("gpt2", n_labels=3), MovementConfig(density=0.2))
    with pytest.raises(ValueError, match="one process"):
        fit(pm, task(tiny), [None], steps=1, progress=False, processes=2)


def test_spiel_config_refuses_bad_schedules():
    from minipeft.peft.spiel import SpIELConfig
    for bad in ({"reselection_steps": 0}, {"total_steps": True}, {"accumulation_steps": 2.0}):
        with pytest.raises(ValueError, match=f"SpIELConfig.{next(iter(bad))} must be a positive integer"):
            SpIELConfig(density=0.05, **bad)
    with pytest.raises(ValueError, match="must be at most reselection_steps"):
        SpIELConfig(density=0.05, reselection_steps=4, accumulation_steps=5)
    with pytest.raises(ValueError, match=r"initial_reselection_rate must be in \[0, 1\]"):
        SpIELConfig(density=0.05, initial_reselection_rate=1.5)
