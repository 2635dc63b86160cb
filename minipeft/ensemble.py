"""Self-ensemble and self-distillation (Xu, Zhou, Zhang, Sun, Huang & Zhang 2020, "Improving BERT
Fine-Tuning via Self-Ensemble and Self-Distillation", arXiv:2002.10345): options of `train.fit`,
so they work with every method (what trains is whatever the optimizer updates).

Self-ensemble (their BERT_SE): the average of the trained parameters over the last K steps,

    theta_bar_t = (1/K) sum_{k=0..K-1} theta_{t-k}                                        (1)

evaluated as a model of its own (`History.averaged`; `apply_average` puts it into the model).

Self-distillation: the student is also pulled toward a teacher made from its own PAST,

    L = L_task(theta_t) + lambda * mean_i (z_i(theta_t) - z_i^teacher)^2                  (2)

z: the model's outputs on the batch (logits, from `outputs_fn(model, batch)`), the mean over
every output entry (the paper's MSE). Two teachers, from the K parameter values before theta_t:
  "average" (BERT_SDA): z^teacher = z(theta_bar), theta_bar = (1/K) sum_{k=1..K} theta_{t-k};
  "vote"    (BERT_SDV): z^teacher = (1/K) sum_{k=1..K} z(theta_{t-k}), the averaged outputs of
            the K past models (K forward passes).
The teacher never contains the student's own theta_t (with K = 1 it would then equal the student
and the term would vanish); it is computed without gradients. Until a past value exists (the
first two steps: no value yet, then only theta_t itself) there is no distillation term; while
fewer than K exist, the teacher averages those there are.

Shapes: the window holds K copies of the trained parameters (PEFT: only the adapter's, which is
what makes this cheap); z: whatever outputs_fn returns, e.g. (B, n_labels) or (B, T, V).
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from . import ops
from .autograd import Tensor, no_grad


class ParameterWindow:
    """The last K values of a list of parameters (copies), and their mean (1). extra=1 keeps one
    more, so that the K values before the newest one (a self-distillation teacher) are at hand."""

    def __init__(self, params: list, k: int, extra: int = 0):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"self-ensemble window K={k!r}: expected a whole number of steps >= 1 (e.g. 5)")
        self.params, self.k = list(params), k
        self.snapshots: deque = deque(maxlen=k + extra)

    def push(self) -> None:
        """Take a copy of the parameters as they are now (after an optimizer step)."""
        self.snapshots.append([p.data.copy() for p in self.params])

    def __len__(self) -> int:
        return len(self.snapshots)

    def mean(self, snapshots=None) -> list:
        """theta_bar: one array per parameter, the mean of the last K values (1), or of `snapshots`."""
        snaps = list(self.snapshots)[-self.k:] if snapshots is None else snapshots
        return [sum(s[i] for s in snaps) / len(snaps) for i in range(len(self.params))]

    def past(self) -> list:
        """The (up to) K values before the newest one: theta_{t-1} .. theta_{t-K} when the newest,
        theta_t, is what the parameters hold now (pushed after the last update)."""
        return list(self.snapshots)[:-1][-self.k:]

    def mean_by_name(self, model) -> dict:
        """{parameter name: theta_bar} for the parameters of `model` in the window."""
        names = {id(p): n for n, p in model.named_parameters()}
        return {names.get(id(p), str(i)): a for i, (p, a) in enumerate(zip(self.params, self.mean()))}


@contextmanager
def parameters_set_to(params: list, arrays: list):
    """Inside the block each parameter holds the given array; its own value comes back after."""
    saved = [p.data for p in params]
    try:
        for p, a in zip(params, arrays):
            p.data = a
        yield
    finally:
        for p, a in zip(params, saved):
            p.data = a


@dataclass
class SelfDistillation:
    """The distillation term of (2): lam * mean (z(theta_t) - z_teacher)^2 over a window of K steps.

    outputs_fn(model, batch) -> Tensor: the outputs to match (logits). teacher: "average" (the
    averaged parameters' outputs) or "vote" (the average of the K past models' outputs).
    task_loss(outputs, batch) -> scalar Tensor, optional: the task loss from those same outputs;
    given, `fit` runs the student's forward once per step and uses it for both terms (else its
    loss_fn runs a forward of its own and the term a second one)."""
    lam: float
    outputs_fn: Callable
    k: int = 5
    teacher: str = "average"
    task_loss: Callable | None = None

    def __post_init__(self):
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise ValueError(f"SelfDistillation.lam={self.lam!r}: expected a weight >= 0 (the paper's lambda, e.g. 1.0)")
        if self.teacher not in ("average", "vote"):
            raise ValueError(f"SelfDistillation.teacher={self.teacher!r}: expected 'average' (BERT_SDA, the "
                             f"averaged parameters) or 'vote' (BERT_SDV, the averaged outputs)")
        if not callable(self.outputs_fn):
            raise ValueError("SelfDistillation.outputs_fn must be a function (model, batch) -> outputs Tensor")

    def teacher_outputs(self, model, batch, window: ParameterWindow):
        """z_teacher from the window's past values (no gradients), as an array; None while there
        is none (see the module docstring)."""
        past = window.past()
        if not past:
            return None
        with no_grad():
            if self.teacher == "average":
                with parameters_set_to(window.params, window.mean(past)):
                    return self.outputs_fn(model, batch).data.copy()
            outs = []
            for snap in past:
                with parameters_set_to(window.params, snap):
                    outs.append(self.outputs_fn(model, batch).data.copy())
            return sum(outs) / len(outs)

    def term(self, model, batch, window: ParameterWindow, outputs=None):
        """lam * mean (z - z_teacher)^2 as a scalar Tensor (None with lam = 0 or no teacher yet).
        outputs: the student's z of this step when the caller has it already (else computed)."""
        if self.lam == 0:
            return None                                    # (no teacher forward for nothing)
        target = self.teacher_outputs(model, batch, window)
        if target is None:
            return None
        z = self.outputs_fn(model, batch) if outputs is None else outputs
        return distillation_loss(z, target) * float(self.lam)


def distillation_loss(z: Tensor, target) -> Tensor:
    """mean_i (z_i - t_i)^2: the MSE between the student's outputs and the teacher's (an array)."""
    diff = z - Tensor(target)
    return ops.mean(diff * diff)
