"""Optimizers, clipping and schedules against hand-computed NumPy arithmetic.

Inputs are drawn on the host, so the NumPy and CuPy runs see the same numbers. Gradients are
made read-only (on NumPy) so that any in-place write into `.grad` fails loudly.
"""
import math

import numpy as np
import pytest

import minipeft
from minipeft import backend
from minipeft.optim import (SGD, AdamW, LRScheduler, clip_grad_norm_, constant, param_groups_no_decay,
                            warmup_cosine, warmup_linear)


@pytest.fixture(autouse=True)
def on_backend(backend):
    """Every test here runs on each available backend (the `backend` fixture of tests/conftest.py:
    NumPy always, CuPy when a GPU is present, or what MINIPEFT_BACKEND asks for)."""
    yield backend.name


def param(a, requires_grad=True):
    a = np.array(a)  # a copy: on NumPy, tensor(ndarray) shares memory and steps update in place
    return minipeft.tensor(a, requires_grad=requires_grad, dtype=a.dtype)


def set_grad(p, g):
    g = backend.to_device(np.array(g, dtype=p.data.dtype))
    if isinstance(g, np.ndarray):
        g.flags.writeable = False  # gradients are read-only: in-place writes must fail
    p.grad = g


def host(a):
    return backend.to_numpy(a)


rng = np.random.default_rng(1234)


def draw(*shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- SGD

@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                   (0.9, True, 0.0), (0.5, False, 0.1), (0.8, True, 0.05)])
def test_sgd_matches_hand_computed(momentum, nesterov, wd):
    lr = 0.1
    theta0 = draw(3, 4)
    grads = [draw(3, 4) for _ in range(3)]
    p = param(theta0)
    opt = SGD([p], lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)

    theta, buf = theta0.copy(), np.zeros_like(theta0)
    for g in grads:
        set_grad(p, g)
        opt.step()
        d = g + wd * theta                     # L2 term joins the gradient
        buf = momentum * buf + d
        if momentum == 0:
            step = d
        else:
            step = d + momentum * buf if nesterov else buf
        theta = theta - lr * step
        np.testing.assert_allclose(host(p.data), theta, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- AdamW

def adamw_reference(theta, grads, lr, b1, b2, eps, wd):
    """Loshchilov & Hutter AdamW, written out in float64 NumPy."""
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    out = []
    for t, g in enumerate(grads, start=1):
        theta = theta - lr * wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta)
    return out, m, v


def test_adamw_matches_hand_computed():
    theta0 = draw(5, 3)
    grads = [draw(5, 3) for _ in range(3)]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    p = param(theta0)
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expected, m, v = adamw_reference(theta0, grads, lr, b1, b2, eps, wd)
    for g, want in zip(grads, expected):
        set_grad(p, g)
        opt.step()
        np.testing.assert_allclose(host(p.data), want, rtol=1e-12, atol=1e-14)
    st = opt.state[id(p)]
    assert st["step"] == 3
    np.testing.assert_allclose(host(st["exp_avg"]), m, rtol=1e-12)
    np.testing.assert_allclose(host(st["exp_avg_sq"]), v, rtol=1e-12)


def test_adamw_first_step_is_lr_times_sign():
    # bias correction: at t=1, m_hat = g and v_hat = g^2, so the step is lr * g/(|g| + eps) ~ lr*sign(g)
    g = np.array([3.0, -0.5, 1e-3, -200.0])
    p = param(np.zeros(4))
    opt = AdamW([p], lr=0.1, eps=1e-12, weight_decay=0.0)
    set_grad(p, g)
    opt.step()
    np.testing.assert_allclose(host(p.data), -0.1 * np.sign(g), rtol=1e-8)


def test_adamw_weight_decay_is_decoupled():
    lr, wd = 0.1, 0.5
    theta0 = draw(4, 4, dtype=np.float32)
    # zero gradient: m = v = 0, the Adam step is 0, and only the decay acts
    p = param(theta0)
    opt = AdamW([p], lr=lr, weight_decay=wd)
    set_grad(p, np.zeros_like(theta0))
    opt.step()
    np.testing.assert_array_equal(host(p.data), theta0 * (1.0 - lr * wd))
    assert not np.array_equal(host(p.data), theta0)

    # with any gradient, decay changes theta by exactly -lr*wd*theta relative to no decay,
    # whatever the gradient's scale (L2-in-Adam would be rescaled by 1/sqrt(v))
    theta0 = draw(6)
    for scale in (1e-3, 1.0, 1e3):
        g = scale * draw(6)
        a, b = param(theta0), param(theta0)
        oa, ob = AdamW([a], lr=lr, weight_decay=wd), AdamW([b], lr=lr, weight_decay=0.0)
        set_grad(a, g); set_grad(b, g)
        oa.step(); ob.step()
        np.testing.assert_allclose(host(a.data) - host(b.data), -lr * wd * theta0, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------------------- groups

def test_param_groups_use_their_own_lr_and_weight_decay():
    t1, t2 = draw(3), draw(3)
    g1, g2 = draw(3), draw(3)
    a, b = param(t1), param(t2)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "weight_decay": 0.2}], lr=0.1, weight_decay=0.01)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.5
    set_grad(a, g1); set_grad(b, g2)
    opt.step()
    np.testing.assert_allclose(host(a.data), t1 - 0.1 * (g1 + 0.01 * t1), rtol=1e-12)
    np.testing.assert_allclose(host(b.data), t2 - 0.5 * (g2 + 0.2 * t2), rtol=1e-12)

    a, b = param(t1), param(t2)
    opt = AdamW([{"params": [a], "weight_decay": 0.0}, {"params": [b], "lr": 0.05}], lr=0.01, weight_decay=0.3)
    set_grad(a, g1); set_grad(b, g2)
    opt.step()
    want_a, _, _ = adamw_reference(t1, [g1], 0.01, 0.9, 0.999, 1e-8, 0.0)
    want_b, _, _ = adamw_reference(t2, [g2], 0.05, 0.9, 0.999, 1e-8, 0.3)
    np.testing.assert_allclose(host(a.data), want_a[0], rtol=1e-12)
    np.testing.assert_allclose(host(b.data), want_b[0], rtol=1e-12)


def test_param_groups_no_decay_rule():
    w = param(draw(4, 4)); bias = param(draw(4)); ln = param(draw(4)); emb = param(draw(10, 4))
    frozen = param(draw(4, 4), requires_grad=False)
    named = [("h.0.fc.weight", w), ("h.0.fc.bias", bias), ("h.0.ln.weight", ln), ("wte.weight", emb),
             ("h.0.attn.weight", frozen), ("lm_head.weight", emb)]  # tied weight listed twice
    decay, no_decay = param_groups_no_decay(named, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(w), id(emb)]
    assert [id(p) for p in no_decay["params"]] == [id(bias), id(ln)]
    decay, no_decay = param_groups_no_decay(named, 0.1, no_decay_names=("wte",))
    assert [id(p) for p in decay["params"]] == [id(w)]
    assert [id(p) for p in no_decay["params"]] == [id(bias), id(ln), id(emb)]
    opt = AdamW([decay, no_decay], lr=1e-3)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.1


def test_bad_params_give_clear_errors():
    p = param(draw(3))
    with pytest.raises(TypeError, match="wrap it in a list"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW(iter([]))
    with pytest.raises(ValueError, match="more than once"):
        AdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="named_parameters"):
        AdamW([("w", p)])
    with pytest.raises(ValueError, match="unknown keys"):
        AdamW([{"params": [p], "learning_rate": 0.1}])
    assert AdamW([{"params": [p], "name": "layer 0"}]).param_groups[0]["name"] == "layer 0"
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)


# ----------------------------------------------------------------------------- frozen parameters and memory

@pytest.mark.parametrize("make", [lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1),
                                  lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1)])
def test_frozen_parameters_get_no_state_and_stay_bit_identical(make):
    frozen0 = draw(8, 8, dtype=np.float32)
    frozen, train = param(frozen0, requires_grad=False), param(draw(8, 2, dtype=np.float32))
    opt = make([frozen, train])
    assert id(frozen) not in opt.state and id(train) in opt.state
    before = frozen.data
    for _ in range(3):
        set_grad(frozen, draw(8, 8))  # even a stray gradient on a frozen weight is ignored
        set_grad(train, draw(8, 2))
        opt.step()
    assert frozen.data is before
    np.testing.assert_array_equal(host(frozen.data), frozen0)
    assert id(frozen) not in opt.state


def test_parameters_without_grad_are_skipped():
    a, b = param(draw(3)), param(draw(3))
    b0 = host(b.data).copy()
    opt = AdamW([a, b], lr=0.1)
    set_grad(a, draw(3))
    opt.step()
    np.testing.assert_array_equal(host(b.data), b0)  # no grad: not even weight decay
    assert opt.state[id(b)]["step"] == 0 and opt.state[id(a)]["step"] == 1


def test_state_bytes_counts_trainable_elements_only():
    trainable = [param(draw(16, 4, dtype=np.float32)), param(draw(4, dtype=np.float32))]
    frozen = [param(draw(128, 16, dtype=np.float32), requires_grad=False)]
    n = 16 * 4 + 4
    assert AdamW(trainable + frozen).state_bytes() == 2 * 4 * n
    assert SGD(trainable + frozen, lr=0.1, momentum=0.9).state_bytes() == 4 * n
    assert SGD(trainable + frozen, lr=0.1).state_bytes() == 0


def test_zero_grad_sets_grads_to_none():
    a = param(draw(3))
    opt = SGD([a], lr=0.1)
    set_grad(a, draw(3))
    opt.zero_grad()
    assert a.grad is None


@pytest.mark.parametrize("make", [lambda ps: AdamW(ps, lr=0.01), lambda ps: SGD(ps, lr=0.01, momentum=0.9,
                                                                                   nesterov=True, weight_decay=1e-2)])
def test_float32_stays_float32_and_identity_is_kept(make):
    p = param(draw(5, 5, dtype=np.float32))
    data = p.data
    opt = make([p])
    opt.param_groups[0]["lr"] = np.float64(0.01)  # a NumPy float64 hyperparameter must not upcast
    for _ in range(3):
        set_grad(p, draw(5, 5))
        opt.step()
    assert p.data is data and p.data.dtype == np.float32
    for v in opt.state[id(p)].values():
        if hasattr(v, "dtype"):
            assert v.dtype == np.float32


# ----------------------------------------------------------------------------- clipping

def test_clip_grad_norm_scales_all_grads_together():
    ps = [param(draw(4, 3, dtype=np.float32)), param(draw(7, dtype=np.float32)), param(draw(2))]
    gs = [10 * draw(4, 3).astype(np.float32), 10 * draw(7).astype(np.float32), draw(2)]
    for p, g in zip(ps, gs):
        set_grad(p, g)
    no_grad = param(draw(3))
    olds = [p.grad for p in ps]
    want_norm = np.linalg.norm(np.concatenate([g.astype(np.float64).ravel() for g in gs]))
    norm = clip_grad_norm_(ps + [no_grad], 1.0)
    assert getattr(norm, "shape", None) == ()
    np.testing.assert_allclose(float(norm), want_norm, rtol=1e-6)
    coef = 1.0 / (float(norm) + 1e-6)
    for p, g, old in zip(ps, gs, olds):
        assert p.grad is not old and p.grad.dtype == g.dtype
        np.testing.assert_allclose(host(p.grad), g * coef, rtol=1e-6)
        np.testing.assert_array_equal(host(old), g)  # the old arrays were not written into
    assert no_grad.grad is None
    total = math.sqrt(sum(float(np.sum(host(p.grad).astype(np.float64) ** 2)) for p in ps))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_below_threshold_leaves_values_unchanged():
    ps = [param(draw(4, 3, dtype=np.float32)), param(draw(5, dtype=np.float32))]
    gs = [0.01 * draw(4, 3).astype(np.float32), 0.01 * draw(5).astype(np.float32)]
    for p, g in zip(ps, gs):
        set_grad(p, g)
    norm = clip_grad_norm_(ps, 5.0)
    assert float(norm) < 5.0
    for p, g in zip(ps, gs):
        np.testing.assert_array_equal(host(p.grad), g)


def test_clip_grad_norm_without_grads_returns_zero():
    assert float(clip_grad_norm_([param(draw(3))], 1.0)) == 0.0


# ----------------------------------------------------------------------------- schedules

def make_opt(lrs=(1.0, 0.1)):
    return SGD([{"params": [param(draw(2))], "lr": lr} for lr in lrs], lr=1.0)


def run_to(sched, step):
    while sched.last_step < step:
        sched.step()
    return sched.get_lr()


def test_warmup_linear_schedule():
    s = warmup_linear(make_opt(), warmup_steps=10, total_steps=110)
    assert s.get_lr() == [0.0, 0.0]
    assert run_to(s, 5) == pytest.approx([0.5, 0.05])
    assert run_to(s, 10) == pytest.approx([1.0, 0.1])   # end of warm-up: the base lr
    assert run_to(s, 60) == pytest.approx([0.5, 0.05])  # half way through the decay
    assert run_to(s, 110) == pytest.approx([0.0, 0.0])
    assert run_to(s, 130) == pytest.approx([0.0, 0.0])  # never negative


def test_warmup_cosine_schedule():
    s = warmup_cosine(make_opt(), warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert s.get_lr() == [0.0, 0.0]
    assert run_to(s, 10) == pytest.approx([1.0, 0.1])
    assert run_to(s, 35) == pytest.approx([0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),
                                           0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))])
    assert run_to(s, 60) == pytest.approx([0.55, 0.055])
    assert run_to(s, 110) == pytest.approx([0.1, 0.01])
    assert run_to(s, 200) == pytest.approx([0.1, 0.01])


def test_constant_schedule_and_no_warmup():
    s = constant(make_opt())
    assert s.get_lr() == [1.0, 0.1] and run_to(s, 1000) == [1.0, 0.1]
    s = constant(make_opt(), warmup_steps=4)
    assert s.get_lr() == [0.0, 0.0] and run_to(s, 2) == pytest.approx([0.5, 0.05]) and run_to(s, 4) == [1.0, 0.1]
    s = warmup_linear(make_opt(), warmup_steps=0, total_steps=4)
    assert s.get_lr() == [1.0, 0.1] and run_to(s, 2) == pytest.approx([0.5, 0.05])
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(make_opt(), warmup_steps=20, total_steps=10)


def test_scheduler_drives_the_update():
    p = param(np.zeros(3))
    opt = SGD([p], lr=2.0)
    sched = warmup_linear(opt, 2, 4)
    lrs = []
    for _ in range(4):
        set_grad(p, np.ones(3))
        before = host(p.data).copy()
        opt.step()
        lrs.append(float(before[0] - host(p.data)[0]))
        sched.step()
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 1.0])


# ----------------------------------------------------------------------------- resuming

def train(opt_factory, theta0, grads, resume_at=None):
    """Run len(grads) steps; if resume_at, rebuild everything from state dicts at that step."""
    ps = [param(t) for t in theta0]
    opt = opt_factory(ps)
    sched = warmup_cosine(opt, 2, len(grads))
    for i, gs in enumerate(grads):
        if i == resume_at:
            opt_sd, sched_sd = opt.state_dict(), sched.state_dict()
            saved = [host(p.data).copy() for p in ps]
            # continue the old optimizer for a step to show the snapshot is not aliased to live buffers
            for p, g in zip(ps, gs):
                set_grad(p, g)
            opt.step()
            ps = [param(t) for t in saved]  # a fresh process: new parameters, optimizer, scheduler
            opt = opt_factory(ps)
            sched = warmup_cosine(opt, 2, len(grads))
            opt.load_state_dict(opt_sd)
            sched.load_state_dict(sched_sd)
        for p, g in zip(ps, gs):
            set_grad(p, g)
        opt.step()
        opt.zero_grad()
        sched.step()
    return [host(p.data) for p in ps], opt


@pytest.mark.parametrize("factory", [
    lambda ps: AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0, "lr": 3e-2}], lr=1e-2),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_state_dict_round_trip_resumes_bit_identically(factory):
    theta0 = [draw(4, 3, dtype=np.float32), draw(3, dtype=np.float32)]
    grads = [[draw(4, 3, dtype=np.float32), draw(3, dtype=np.float32)] for _ in range(6)]
    straight, opt_a = train(factory, theta0, grads)
    resumed, opt_b = train(factory, theta0, grads, resume_at=3)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    assert opt_a.state_bytes() == opt_b.state_bytes()


def test_load_state_dict_rejects_a_different_model():
    a = param(draw(3, 2))
    opt = AdamW([a])
    set_grad(a, draw(3, 2))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="shape"):
        AdamW([param(draw(2, 3))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        AdamW([{"params": [param(draw(3, 2))]}, {"params": [param(draw(1))]}]).load_state_dict(sd)


# ----------------------------------------------------------------------------- end to end with autograd

@pytest.mark.parametrize("make,steps", [(lambda ps: SGD(ps, lr=0.05, momentum=0.9), 300),
                                        (lambda ps: AdamW(ps, lr=0.1, weight_decay=0.0), 500)])
def test_quadratic_bowl_is_minimised(make, steps):
    # f(x) = sum(a * (x - c)^2): an ill-conditioned bowl with its minimum at c
    a = minipeft.tensor(np.array([1.0, 10.0, 0.5, 3.0]))
    c = minipeft.tensor(np.array([1.0, -2.0, 3.0, 0.5]))
    x = param(np.zeros(4))
    opt = make([x])
    for _ in range(steps):
        d = x - c
        loss = (a * d * d).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    np.testing.assert_allclose(host(x.data), host(c.data), atol=1e-3)


def test_scheduler_is_importable_as_base_class():
    opt = make_opt()
    s = LRScheduler(opt, lambda step: 0.5 ** step)
    s.step(); s.step()
    assert s.get_lr() == pytest.approx([0.25, 0.025])


def test_adamw_rejects_a_gradient_of_the_wrong_shape():
    minipeft.use("numpy")
    p = minipeft.Tensor(np.zeros((9, 6), dtype=np.float32), requires_grad=True)
    p.grad = np.ones((6, 9), dtype=np.float32)
    with pytest.raises(ValueError, match="gradient has shape"):
        AdamW([p], lr=0.1).step()
