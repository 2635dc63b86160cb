"""Self-ensemble and self-distillation (minipeft/ensemble.py) as options of train.fit."""
from __future__ import annotations

import numpy
import pytest

from minipeft import backend, ops
from minipeft.autograd import Tensor
from minipeft.ensemble import ParameterWindow, SelfDistillation, distillation_loss, parameters_set_to
from minipeft.gradcheck import gradcheck
from minipeft.nn.layers import Linear
from minipeft.optim import SGD
from minipeft.train import apply_average, fit

pytestmark = pytest.mark.task_training


def _model(d_in=3, d_out=2):
    backend.set_default_dtype(numpy.float64)
    backend.manual_seed(0)
    return Linear(d_in, d_out)


def _batch():
    gen = numpy.random.default_rng(1)
    return {"x": Tensor(backend.to_device(gen.normal(size=(4, 3)))),
            "y": backend.to_device(gen.integers(0, 2, size=4))}


def outputs(m, b):
    return m(b["x"])


def task_loss(m, b):
    return ops.cross_entropy(outputs(m, b), b["y"])


def test_self_ensemble_is_the_exact_mean_of_the_last_k_steps():
    """SGD on a loss linear in w: w_t = w_0 - t lr c, so the mean of w_{T-K+1..T} is known."""
    m = _model()
    c = numpy.random.default_rng(2).normal(size=m.weight.shape)
    w0 = backend.to_numpy(m.weight.data).copy()
    loss = lambda mod, _: (mod.weight * Tensor(backend.to_device(c))).sum()   # noqa: E731  dL/dw = c
    hist = fit(m, loss, [None], steps=10, optimizer=SGD([m.weight], lr=0.1), schedule="constant",
               clip=None, progress=False, self_ensemble=4)
    want = w0 - 0.1 * c * numpy.mean([7, 8, 9, 10])
    got = backend.to_numpy(hist.averaged["weight"])
    assert numpy.abs(got - want).max() < 1e-12, numpy.abs(got - want).max()
    assert numpy.abs(backend.to_numpy(m.weight.data) - (w0 - 1.0 * c)).max() < 1e-12, "the model keeps theta_T"
    apply_average(m, hist.averaged)
    assert numpy.array_equal(backend.to_numpy(m.weight.data), got)
    assert "bias" not in hist.averaged, "only what trained is averaged (the bias had no optimizer)"


def test_window_keeps_k_and_parameters_come_back():
    m = _model()
    w = ParameterWindow([m.weight], 2)
    for v in (1.0, 2.0, 3.0):
        m.weight.data = m.weight.data * 0 + v
        w.push()
    assert len(w) == 2 and float(w.mean()[0].max()) == 2.5
    before = m.weight.data
    with parameters_set_to([m.weight], w.mean()):
        assert float(m.weight.data.max()) == 2.5
    assert m.weight.data is before


def test_distillation_loss_gradient_float64():
    gen = numpy.random.default_rng(3)
    z = Tensor(backend.to_device(gen.normal(size=(4, 5))), requires_grad=True)
    t = backend.to_device(gen.normal(size=(4, 5)))
    assert gradcheck(lambda a: distillation_loss(a, t), z, name="self-distillation MSE") < 1e-6
    assert float(distillation_loss(z, t).item()) == pytest.approx(float(((backend.to_numpy(z.data) - t) ** 2).mean()))


@pytest.mark.parametrize("teacher", ["average", "vote"])
def test_teacher_outputs_are_the_averaged_models_or_the_averaged_outputs(teacher):
    """The teacher is made of the K = 3 values BEFORE the newest (which the model holds now)."""
    m, b = _model(), _batch()
    window = ParameterWindow([m.weight, m.bias], 3, extra=1)
    snaps = []
    gen = numpy.random.default_rng(4)
    for _ in range(5):                                   # the window keeps the last 4 of 5
        m.weight.data = backend.to_device(gen.normal(size=m.weight.shape))
        m.bias.data = backend.to_device(gen.normal(size=m.bias.shape))
        snaps.append((backend.to_numpy(m.weight.data).copy(), backend.to_numpy(m.bias.data).copy()))
        window.push()
    x = backend.to_numpy(b["x"].data)
    lin = lambda w, bias: x @ w.T + bias if w.shape[0] == 2 else x @ w + bias   # noqa: E731
    past = snaps[1:4]                                    # theta_{t-3}, theta_{t-2}, theta_{t-1}; snaps[4] = theta_t
    if teacher == "average":
        want = lin(numpy.mean([s[0] for s in past], 0), numpy.mean([s[1] for s in past], 0))
    else:
        want = numpy.mean([lin(*s) for s in past], 0)
    got = backend.to_numpy(SelfDistillation(1.0, outputs, k=3, teacher=teacher).teacher_outputs(m, b, window))
    assert numpy.abs(got - want).max() < 1e-12
    assert numpy.abs(got - backend.to_numpy(outputs(m, b).data)).max() > 1e-3, "not the current model"


def test_self_distillation_adds_its_term_to_the_step():
    """Four SGD steps with lam = 2, k = 2, teacher "average", by hand: steps 1 and 2 have no pull
    (no past value yet, then only the student's own theta_1); step 3's teacher is theta_1, step 4's
    the mean of theta_1 and theta_2 (never the student's theta_t itself):
        theta_{t+1} = theta_t - lr * d/dtheta [L_task + lam mean (z(theta) - z(teacher))^2] at theta_t."""
    b, lr, lam = _batch(), 0.1, 2.0
    m = _model()
    fit(m, task_loss, [b], steps=4, optimizer=SGD(list(m.parameters()), lr=lr), schedule="constant",
        clip=None, progress=False, self_distill=SelfDistillation(lam, outputs, k=2))
    got = [backend.to_numpy(p.data) for p in m.parameters()]

    ref = _model()
    params, thetas = list(ref.parameters()), []
    for step in range(4):
        teacher = None
        past = thetas[:-1][-2:] if thetas else []        # the values before the current theta
        if past:
            with parameters_set_to(params, [sum(t[i] for t in past) / len(past) for i in range(len(params))]):
                teacher = outputs(ref, b).data.copy()
        loss = task_loss(ref, b)
        if teacher is not None:
            loss = loss + lam * distillation_loss(outputs(ref, b), teacher)
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:
            p.data = p.data - lr * p.grad
        thetas.append([p.data.copy() for p in params])
    want = [backend.to_numpy(p.data) for p in params]
    assert max(numpy.abs(g - w).max() for g, w in zip(got, want)) < 1e-12
    plain = _model()
    fit(plain, task_loss, [b], steps=4, optimizer=SGD(list(plain.parameters()), lr=lr), schedule="constant",
        clip=None, progress=False)
    assert max(numpy.abs(g - backend.to_numpy(p.data)).max() for g, p in zip(got, plain.parameters())) > 1e-6, \
        "the term changed steps 3 and 4"


def test_with_k_1_the_teacher_is_the_previous_step_not_the_student():
    """K = 1 is the setting of the published reproduction: the teacher is theta_{t-1}, so the term
    is not zero (a teacher that included theta_t would equal the student and vanish)."""
    b = _batch()
    m = _model()
    window = ParameterWindow(list(m.parameters()), 1, extra=1)
    sd = SelfDistillation(1.0, outputs, k=1)
    window.push()                                        # theta_0 ...
    assert sd.term(m, b, window) is None                 # ... is the student: no teacher yet
    m.weight.data = m.weight.data + 0.5
    window.push()                                        # theta_1 = the student; theta_0 = the teacher
    assert sd.term(m, b, window).item() > 1e-3


def test_bad_self_ensemble_and_distillation_options_are_refused():
    m = _model()
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="window K"):
            fit(m, task_loss, [_batch()], steps=1, progress=False, self_ensemble=k)
    with pytest.raises(ValueError, match="lam"):
        SelfDistillation(-1.0, outputs)
    with pytest.raises(ValueError, match="teacher"):
        SelfDistillation(1.0, outputs, teacher="median")
    with pytest.raises(ValueError, match="SelfDistillation"):
        fit(m, task_loss, [_batch()], steps=1, progress=False, self_distill=0.5)
    with pytest.raises(ValueError, match="one window size"):
        fit(m, task_loss, [_batch()], steps=1, progress=False, self_ensemble=3,
            self_distill=SelfDistillation(1.0, outputs, k=2))
    with pytest.raises(ValueError, match="processes=1"):
        fit(m, task_loss, [_batch()], steps=1, progress=False, processes=2,
            self_distill=SelfDistillation(1.0, outputs))


def test_with_task_loss_the_student_runs_once_per_step_and_the_steps_are_the_same():
    """SelfDistillation(task_loss=...): fit computes the student's outputs once per step for both
    terms (before: loss_fn's forward, then the term's own); the parameters are the same as with
    loss_fn, and outputs_fn runs once for the student plus once per teacher forward."""
    b, lr, lam = _batch(), 0.1, 2.0
    calls = []

    def counted(m, batch):
        calls.append(1)
        return outputs(m, batch)

    def loss_fn(m, batch):
        if task_loss_given:
            pytest.fail("fit ran loss_fn although the task loss comes from the shared outputs")
        return ops.cross_entropy(counted(m, batch), batch["y"])

    def run(task_loss):
        nonlocal task_loss_given
        task_loss_given = task_loss is not None
        m = _model()
        calls.clear()
        sd = SelfDistillation(lam, counted, k=2, task_loss=task_loss)
        fit(m, loss_fn, [b], steps=4, optimizer=SGD(list(m.parameters()), lr=lr),
            schedule="constant", clip=None, progress=False, self_distill=sd)
        return [backend.to_numpy(p.data) for p in m.parameters()], len(calls)

    task_loss_given = False

    separate, n_separate = run(None)
    once, n_once = run(lambda z, batch: ops.cross_entropy(z, batch["y"]))
    assert max(numpy.abs(a - c).max() for a, c in zip(separate, once)) < 1e-12
    # 4 steps, a teacher at steps 3 and 4 ("average": one forward each): 4 + 2 student term passes + 2
    assert n_separate == 4 + 2 + 2 and n_once == 4 + 2, (n_separate, n_once)
