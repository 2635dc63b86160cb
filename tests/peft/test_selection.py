"""Magnitude and movement selection (magnitude.py, movement.py): a top-k per weight matrix, by |W|
or by learned movement scores with a straight-through estimator. The contract tests
(test_contract.py) run on both; these check what is particular to them."""
from __future__ import annotations

import numpy
import pytest

from minipeft.autograd import no_grad
from minipeft.gradcheck import gradcheck
from minipeft.peft import PeftModel, apply, magnitude, movement, registry, sparse
from minipeft.peft.magnitude import MagnitudeConfig
from minipeft.peft.movement import MovementConfig, MovementMask
from minipeft.train import fit

from weight_tasks import loss_now, task

pytestmark = pytest.mark.task_sparse

MATRICES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")


def effective(pm, tiny):
    """{path: W0 + the adapter's Delta} of the matrices it touches (host)."""
    params = dict(pm.model.named_parameters())
    with no_grad():
        ds = registry.method_of(pm.peft_config["default"]).deltas(pm, "default")
        return {p: tiny.np(params[p]) + tiny.np(d) for p, d in ds.items()}


def k_of(size, density):
    return max(1, int(round(density * size)))


# ----------------------------------------------------------------------------- the STE op

def test_gradcheck_movement_mask_straight_through(tiny):
    """delta: a true finite-difference check (the mask does not depend on delta). scores: TopK is a
    step function, so finite differences of it are 0 (checked below); the check is against the
    STE's *defined* gradient, the derivative of the surrogate in which TopK is the identity,
    d/dS sum(G (.) S (.) W) = G (.) W with W = w0 + M (.) delta -- central differences of that
    surrogate in float64, compared with the Function's hand-written backward."""
    gen = numpy.random.default_rng(0)
    shape, k = (3, 4), 5
    delta = tiny.tensor(gen.normal(size=shape))
    scores = tiny.tensor(gen.normal(size=shape))
    w0 = tiny.tensor(gen.normal(size=shape)).data
    delta.requires_grad = True
    assert gradcheck(lambda d: MovementMask.apply(d, scores, w0=w0, k=k), delta, name="movement delta") < 1e-6

    scores.requires_grad = True
    delta.requires_grad = False
    G = gen.normal(size=shape)
    out = MovementMask.apply(delta, scores, w0=w0, k=k)
    (out * tiny.tensor(G)).sum().backward()
    analytic = tiny.np(scores.grad)
    m = movement.top_k_mask(tiny.np(scores), k)
    assert m.sum() == k and set(numpy.flatnonzero(m)) == set(numpy.argsort(-tiny.np(scores).reshape(-1))[:k])
    W = tiny.np(w0) + m * tiny.np(delta)                       # the weight the mask acts on
    surrogate = lambda s: float((G * s * W).sum())            # noqa: E731  TopK replaced by the identity
    h, s0 = 1e-6, tiny.np(scores)
    numeric = numpy.zeros(shape)
    for i in numpy.ndindex(shape):
        e = numpy.zeros(shape)
        e[i] = h
        numeric[i] = (surrogate(s0 + e) - surrogate(s0 - e)) / (2 * h)
    assert numpy.abs(analytic - numeric).max() < 1e-7, "the STE gradient is G (.) (w0 + M (.) delta)"
    # and why it is a *defined* gradient: the true function is flat in the scores almost everywhere
    step = lambda s: float((G * tiny.np(MovementMask.apply(delta, tiny.tensor(s), w0=w0, k=k))).sum())  # noqa: E731
    i = (0, 0)
    e = numpy.zeros(shape)
    e[i] = h
    assert step(s0 + e) == step(s0 - e) and analytic[i] != 0


# ----------------------------------------------------------------------------- exactly k per matrix

@pytest.mark.parametrize("density", [0.05, 0.3])
def test_magnitude_keeps_exactly_k_largest_per_matrix(tiny, arch, density):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, MagnitudeConfig(density=density, full_steps=0))
    d = sparse.delta_of(pm, "default")
    idx = tiny.np(d.indices)
    params = dict(model.named_parameters())
    assert len(d.paths) == 6 * model.config.n_layer and all(any(m in p for m in MATRICES) for p in d.paths)
    for t, path in enumerate(d.paths):
        local = idx[(idx >= d.offsets[t]) & (idx < d.offsets[t + 1])] - d.offsets[t]
        w = numpy.abs(tiny.np(params[path])).reshape(-1)
        k = k_of(w.size, density)
        assert len(local) == k, f"{path}: {len(local)} entries, want {k}"
        assert w[local].min() >= numpy.delete(w, local).max(), f"{path}: not the k largest |W0|"
    tiny.perturb([d.values], std=0.1)
    with no_grad():
        for path, t in d.deltas().items():
            assert numpy.count_nonzero(tiny.np(t)) == k_of(params[path].size, density)


def test_movement_mask_is_exactly_k_per_matrix_and_follows_the_scores(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, MovementConfig(density=0.2))
    mv = pm.deltas["default"]
    gen = numpy.random.default_rng(3)
    for e in mv.entries:
        e.scores.data = tiny.tensor(gen.normal(size=e.scores.shape)).data.astype(e.scores.dtype)
        e.delta.data = tiny.tensor(gen.normal(size=e.delta.shape)).data
    with no_grad():
        ds = movement.deltas(pm, "default")
    for path, e in zip(mv.paths, mv.entries):
        s = tiny.np(e.scores).reshape(-1)
        k = k_of(s.size, 0.2)
        nz = numpy.flatnonzero(tiny.np(ds[path]))
        assert len(nz) == k and set(nz) == set(numpy.argsort(-s)[:k]), f"{path}: Delta is nonzero on TopK(S) only"


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("cfg", [MagnitudeConfig(density=0.1, full_steps=5, full_lr=1e-2),
                                 MovementConfig(density=0.1, scores_lr=1.0)], ids=lambda c: c.method)
def test_training_lowers_the_loss_and_leaves_the_rest_bit_identical(tiny, arch, cfg):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, cfg)
    loss_fn = task(tiny)
    if cfg.method == "magnitude":
        magnitude.prepare(pm, "default", loss_fn, [None])
    base = tiny.snapshot(model)
    start = loss_now(pm, loss_fn)
    fit(pm, loss_fn, [None], steps=20, lr=1e-2, schedule="constant", progress=False)
    assert loss_now(pm, loss_fn) < start - 0.02, "training the selected entries lowers the loss"
    assert all(numpy.array_equal(tiny.np(p), base[n]) for n, p in model.named_parameters()), "W0 never changes"
    eff = effective(pm, tiny)
    if cfg.method == "magnitude":
        d = sparse.delta_of(pm, "default")
        changed = numpy.flatnonzero(sparse.flat(pm, d, {p: eff[p] - base[p] if p in eff else 0 * base[p]
                                                        for p in d.paths}))
        assert set(changed) <= set(tiny.np(d.indices).tolist()), "only entries in the mask change"
    else:
        for path, m in movement.masks(pm, "default").items():
            outside = m.reshape(-1) == 0
            assert numpy.array_equal(eff[path].reshape(-1)[outside], base[path].reshape(-1)[outside]), \
                f"{path}: entries outside the mask are bit-identical to W0"
    untouched = [n for n in base if not any(m in n for m in MATRICES)]
    assert untouched and all(n not in eff for n in untouched), "embeddings, biases, LayerNorms are not selected"


def test_movement_scores_move_and_the_mask_follows(tiny, arch):
    model = tiny.model(arch, n_labels=3)
    pm = apply(model, MovementConfig(density=0.1, scores_lr=1.0))
    first = movement.masks(pm, "default")
    for path, m in first.items():          # constant scores (mask_init="constant"): ties go to the first k entries
        k = int(m.sum())
        assert (m.reshape(-1)[:k] == 1).all()
    fit(pm, task(tiny), [None], steps=10, lr=1e-2, schedule="constant", progress=False)
    mv = pm.deltas["default"]
    assert all(numpy.abs(tiny.np(e.scores)).max() > 0 for e in mv.entries), "every matrix's scores move"
    after = movement.masks(pm, "default")
    assert any(not numpy.array_equal(after[p], first[p]) for p in first), "the mask changed with the scores"
    with no_grad():
        ds = movement.deltas(pm, "default")
    for path, e in zip(mv.paths, mv.entries):
        s, m = tiny.np(e.scores).reshape(-1), after[path].reshape(-1)
        assert m.sum() == k_of(s.size, 0.1) and s[m == 1].min() >= s[m == 0].max(), "M = TopK(S)"
        assert set(numpy.flatnonzero(tiny.np(ds[path]))) <= set(numpy.flatnonzero(m))
        assert e.scores.grad is None, "before_step used and cleared the STE gradient"


def test_movement_scores_follow_minus_w_dl_dw(tiny):
    """One step from constant scores: S = -scores_lr * W0 (.) dL/dW (the paper's movement score)."""
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, MovementConfig(density=0.1, scores_lr=0.5))
    loss_fn = task(tiny)
    params = dict(model.named_parameters())
    mv = pm.deltas["default"]
    # dL/dW of the base model at W0 (= the adapted model at step 0: delta = 0)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    with pm.disable_adapter():
        for path in mv.paths:
            params[path].requires_grad = True
        loss_fn(pm, None).backward()
        want = {path: -0.5 * tiny.np(params[path]) * tiny.np(params[path].grad) for path in mv.paths}
    for p in model.parameters():
        p.requires_grad, p.grad = flags[id(p)], None
    fit(pm, loss_fn, [None], steps=1, lr=1e-2, schedule="constant", progress=False, clip=None)
    for path, e in zip(mv.paths, mv.entries):
        assert numpy.abs(tiny.np(e.scores) - want[path]).max() < 1e-6, path


# ----------------------------------------------------------------------------- files and counts

@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_save_load_after_training_is_exact(tiny, arch, method, tmp_path):
    cfg = MagnitudeConfig(full_steps=3, full_lr=1e-2, modules_to_save=("cls_head",)) if method == "magnitude" \
        else MovementConfig(scores_lr=1.0, modules_to_save=("cls_head",))
    pm = apply(tiny.model(arch, n_labels=3), cfg)
    loss_fn = task(tiny)
    if method == "magnitude":
        magnitude.prepare(pm, "default", loss_fn, [None])
    fit(pm, loss_fn, [None], steps=5, lr=1e-2, schedule="constant", progress=False)
    ids = tiny.ids()
    with no_grad():
        want = tiny.np(pm(ids)[0]), tiny.np(pm.classify(ids))
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(tiny.model(arch, n_labels=3), str(tmp_path))
    with no_grad():
        got = tiny.np(loaded(ids)[0]), tiny.np(loaded.classify(ids))
    assert all(numpy.array_equal(g, w) for g, w in zip(got, want)), "reloaded outputs are bit-identical"
    if method == "magnitude":
        assert numpy.array_equal(tiny.np(sparse.delta_of(loaded, "default").indices),
                                 tiny.np(sparse.delta_of(pm, "default").indices))
    else:
        a, b = movement.masks(pm, "default"), movement.masks(loaded, "default")
        assert all(numpy.array_equal(a[p], b[p]) for p in a), "the scores travel, so does the mask"


def test_magnitude_prepare_selects_by_theta1_and_resets(tiny):
    model = tiny.model("gpt2", n_labels=3)
    pm = apply(model, MagnitudeConfig(density=0.1, full_steps=0))
    before = tiny.np(sparse.delta_of(pm, "default").indices)
    base = tiny.snapshot(model)
    magnitude.prepare(pm, "default", task(tiny), [None], steps=5, lr=5e-2)
    assert all(numpy.array_equal(tiny.np(p), base[n]) for n, p in model.named_parameters()), "reset to theta0"
    assert not any(p.requires_grad for p in model.parameters()) and pm.trainable_parameters()
    after = tiny.np(sparse.delta_of(pm, "default").indices)
    assert len(after) == len(before) and not numpy.array_equal(after, before), "|theta1| chose another mask"
    magnitude.prepare(pm, "default", task(tiny), [None], steps=0)
    assert numpy.array_equal(tiny.np(sparse.delta_of(pm, "default").indices), after), "steps=0 keeps the mask"


@pytest.mark.parametrize("cfg", [MagnitudeConfig(density=0.07), MovementConfig(density=0.07)], ids=lambda c: c.method)
def test_counted_by_nonzeros(tiny, arch, cfg):
    pm = apply(tiny.model(arch, n_labels=3), cfg)
    tiny.perturb(pm, std=0.1)
    f = registry.method_of(cfg).formula(pm.config, cfg)
    s = pm.trainable_summary()
    assert s["delta_nonzeros"] == f["nonzeros"] and s["index_bytes"] == f["index_bytes"], (s, f)
    assert s["trainable"] == f["trainable"]
    assert f["nonzeros"] == sum(k_of(p.size, 0.07) for path, p in pm.model.named_parameters()
                                if any(path.endswith(m + ".weight") for m in MATRICES))


@pytest.mark.parametrize("method", ["magnitude", "movement"])
def test_density_option(method):
    assert registry.config_from_options(method, density=0.02).density == 0.02
    assert registry.config_from_options(method).density == registry.METHODS[method].CONFIG().density
    with pytest.raises(ValueError, match="density"):
        registry.config_from_options(method, density=0.0)


def test_movement_cubic_schedule_shrinks_the_mask_to_its_final_density(tiny, tmp_path):
    """The reference's schedule_threshold: 1 during the initial warm-up, a cubic fall, the final
    density during the final warm-up; k_t of every matrix follows it while fit runs."""
    cfg = MovementConfig(density=0.2, schedule_steps=12, initial_warmup=2, final_warmup=3)
    d = [movement.density_at(t, cfg) for t in range(1, 14)]
    assert d[:2] == [1.0, 1.0] and d[-4:] == [0.2] * 4
    assert d[2] == pytest.approx(0.2 + 0.8 * (1 - 1 / 7) ** 3) and d[5] == pytest.approx(0.2 + 0.8 * (1 - 4 / 7) ** 3)
    assert all(a >= b for a, b in zip(d, d[1:])), "never grows"
    assert movement.density_at(5, MovementConfig(density=0.2)) == 0.2, "no schedule: the final density throughout"
    pm = apply(tiny.model("gpt2", n_labels=3), cfg)
    mv = pm.deltas["default"]
    assert all(e.k == e.delta.size for e in mv.entries), "density 1 at step 1"
    loss_fn = lambda m, _: m(tiny.ids(), tiny.ids(seed=5))[1]     # noqa: E731
    from minipeft.train import fit
    fit(pm, loss_fn, [None], steps=5, lr=1e-2, schedule="constant", progress=False, processes=1)
    assert mv.entries[0].k == sparse.n_values(mv.entries[0].delta.size, d[5]), "k of step 6 after 5 steps"
    fit(pm, loss_fn, [None], steps=12, lr=1e-2, schedule="constant", progress=False, processes=1)
    for path, m in movement.masks(pm, "default").items():
        assert m.sum() == sparse.n_values(m.size, 0.2), path
    pm.save_pretrained(str(tmp_path / "mv"))
    loaded = PeftModel.from_pretrained(tiny.model("gpt2", n_labels=3), str(tmp_path / "mv"))
    assert [e.k for e in loaded.deltas["default"].entries] == [e.k for e in mv.entries], "loaded at the final k"
