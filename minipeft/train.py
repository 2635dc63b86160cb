"""The training loop: one `fit` for pretraining and for every fine-tuning method.

    history = fit(model, loss_fn, batches, steps=1000, lr=3e-4,
                  eval_fn=lambda m: {"loss": ..., "score": ...}, eval_every=100,
                  log_path="runs/x/log.jsonl")

Each step is the loop of every deep-learning course, written out at the top of `fit`: take a
batch, loss = loss_fn(model, batch), loss.backward(), clip the gradient norm, optimizer.step(),
optimizer.zero_grad(), advance the learning-rate schedule, log. What wraps it is kept beside it,
below `fit`: the log and progress bar (`_Log`), early stopping (`_EarlyStopping`) and the speed
options (`_speed_options`: malloc, data parallelism), none of which changes what a step computes.

- `loss_fn(model, batch) -> Tensor` (scalar); `batches` is a list or other re-iterable of batches
  (any object; `n_tokens(batch)` counts the tokens for the tokens/s figure), started again when
  it runs out.
- Only parameters with requires_grad=True are optimised (AdamW), so a PEFT method decides what
  trains by freezing the rest; optimizer state exists only for them.
- A PeftModel's methods join the step in two places (minipeft/peft/parametrize.py): the loss is
  loss_fn(model, batch) + model.aux_loss() (an L0 or L1 penalty; None: nothing added), and
  model.before_step(step, optimizer) runs after backward and clipping, before optimizer.step()
  (a gradient mask). Any model with these two methods gets the same.
- A progress bar (tqdm) shows the loss and tokens/s. The loss is read back from the device only
  every `log_every` steps (on a GPU, `float(loss)` waits for the device).
- Every `eval_every` steps `eval_fn(model)` runs in eval mode without gradients; its dict is
  logged. With `select` (a key of that dict) and `mode` ("max" or "min"), the best evaluation so
  far calls `on_best(step, metrics)` (e.g. to keep the best adapter) and `patience` evaluations
  without improvement stop training early.
- Each log line is one JSON object in `log_path` (JSON lines), flushed as it is written.
- On the NumPy backend (Linux), `fit` asks malloc to keep freed memory for reuse while it trains
  (backend.keep_freed_memory, process-wide; handed back when it returns): every step allocates the
  same temporaries again, and handing them back to the OS and faulting them in again cost a fifth
  of the demo's time.
- `self_ensemble=K` keeps the mean of the trained parameters over the last K steps
  (History.averaged, put into the model with `apply_average`); `self_distill=SelfDistillation(...)`
  adds lambda * mean (z - z_teacher)^2 with a teacher from that window (ensemble.py, Xu et al. 2020).
- `processes=n` (n > 1, NumPy backend, Linux) trains data-parallel: n processes of one thread
  each run the forward and backward of one slice of every batch, and their gradients are added
  (minipeft.parallel; on 2 cores a step takes 0.73-0.88 of the time of minipeft's threads op by
  op). The slices are weighted by what a mean loss counts: the tokens whose "targets" (or
  "labels") are not -100, or the rows; for another loss pass `slice_weight=` (a function of a
  slice of the batch). Evaluation runs in this process.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

from . import backend
from .autograd import no_grad
from .optim import AdamW, clip_grad_norm_, warmup_cosine, warmup_linear


def n_tokens(batch) -> int:
    """Tokens in a batch, for tokens/s: the "ids" entry of a dict batch, else 0."""
    if isinstance(batch, dict) and "ids" in batch:
        ids = batch["ids"]
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None and hasattr(mask, "sum") else int(ids.size)
    return 0


@dataclass
class History:
    """What `fit` returns: every logged record, and the best evaluation (if any)."""
    records: list
    best: dict | None
    stopped_early: bool
    seconds: float
    averaged: dict | None = None     # self_ensemble: {parameter name: mean over the last K steps}


def evaluate(model, eval_fn) -> dict:
    """Run eval_fn(model) in eval mode without recording a graph; every module gets its own
    training flag back afterwards (Module.eval_mode)."""
    with model.eval_mode(), no_grad():
        return dict(eval_fn(model))


def fit(model, loss_fn: Callable, batches: Iterable, *, steps: int, lr: float = 3e-4,
        weight_decay: float = 0.0, warmup: int = 0, schedule: str = "cosine", clip: float | None = 1.0,
        params=None, optimizer=None, eval_fn: Callable | None = None, eval_every: int = 0,
        select: str | None = None, mode: str = "max", patience: int | None = None,
        on_best: Callable | None = None, log_path: str | None = None, log_every: int = 10,
        progress: bool = True, desc: str = "train", processes: int = 1, slice_weight=None,
        self_ensemble: int | None = None, self_distill=None) -> History:
    """Train `model` for `steps` optimizer steps. Returns a History (see module docstring).

    params: the tensors (or AdamW parameter groups) to optimise; default: every parameter that
    requires grad. optimizer: a ready optimizer instead (then lr/weight_decay are not used).
    schedule: "cosine", "linear" (both after a linear warmup) or "constant".
    processes: 1 = this process and its pool of threads; n > 1 = data-parallel over n processes.
    slice_weight: with processes > 1, the n_i of a slice (default: parallel.counted).
    self_ensemble: K, keep the mean of the trained parameters over the last K steps
    (History.averaged; ensemble.py). self_distill: an ensemble.SelfDistillation, whose term
    pulls the outputs toward the teacher of its own window (one process only).
    """
    if steps <= 0:
        raise ValueError(f"fit(steps={steps}): the number of steps must be positive")
    stopping = _EarlyStopping(select, mode, patience, on_best)
    from .parallel import check_supported
    processes = check_supported(processes)
    only_one = model.one_process_only() if processes > 1 and hasattr(model, "one_process_only") else []
    if only_one:
        raise ValueError(f"fit(processes={processes}): adapter(s) {only_one} train in one process only (their "
                         f"before_step reads the whole step's gradients); pass processes=1")
    if self_distill is not None and processes > 1:
        raise ValueError(f"fit(self_distill=..., processes={processes}): the teacher's forward runs in this "
                         f"process only; pass processes=1")
    optimizer, scheduler = _optimizer(model, params, optimizer, lr, weight_decay, schedule, warmup, steps)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    window = _window(trained, self_ensemble, self_distill)

    model.train()
    with _speed_options(model, loss_fn, processes, slice_weight) as dp, \
            _Log(log_path, log_every, steps, progress, desc) as log:
        for step, batch in zip(range(1, steps + 1), _again_and_again(batches)):
            aux = model.aux_loss() if hasattr(model, "aux_loss") else None   # a method's penalty (L0, L1)
            if dp is None:
                z = None
                if self_distill is not None and self_distill.task_loss is not None:
                    z = self_distill.outputs_fn(model, batch)     # one forward for both terms
                    loss = self_distill.task_loss(z, batch)
                else:
                    loss = loss_fn(model, batch)              # forward: a scalar Tensor
                loss = loss if aux is None else loss + aux
                if self_distill is not None:              # + lambda * mean (z - z_teacher)^2
                    term = self_distill.term(model, batch, window, outputs=z)
                    loss = loss if term is None else loss + term
                loss.backward()                           # adds d loss / d p into p.grad
            else:
                loss = dp.backward(batch)                 # the same over n processes; a float
                if aux is not None:                       # the penalty needs no data: here, once
                    aux.backward()
                    loss += float(aux.item())
            grad_norm = clip_grad_norm_(trained, clip) if clip else None
            if hasattr(model, "before_step"):
                model.before_step(step, optimizer)        # a method's gradient mask (ChildTuning-F)
            optimizer.step()
            optimizer.zero_grad()
            if window is not None:
                window.push()                             # theta_t joins the last-K window
            if scheduler is not None:
                scheduler.step()
            log.step(step, loss, optimizer.param_groups[0]["lr"], grad_norm, n_tokens(batch))

            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
                metrics = evaluate(model, eval_fn)
                log.write({"step": step, "eval": metrics, "elapsed_s": log.elapsed()})
                if stopping.stop_after(step, metrics):
                    log.write({"step": step, "early_stop": True, "best_step": stopping.best["step"]})
                    break
    backend.synchronize()
    return History(records=log.records, best=stopping.best, stopped_early=stopping.stopped,
                   seconds=log.elapsed(), averaged=None if window is None else window.mean_by_name(model))


# ----------------------------------------------------------------------------- the pieces around the loop

def _window(trained, self_ensemble, self_distill):
    """The window of the last K parameter values that self-ensemble and self-distillation read."""
    from .ensemble import ParameterWindow, SelfDistillation
    if self_distill is not None and not isinstance(self_distill, SelfDistillation):
        raise ValueError(f"fit(self_distill={self_distill!r}): expected an ensemble.SelfDistillation(lam, outputs_fn, k)")
    if self_ensemble is None and self_distill is None:
        return None
    k = self_ensemble if self_ensemble is not None else self_distill.k
    if self_distill is not None and self_ensemble is not None and self_distill.k != self_ensemble:
        raise ValueError(f"fit: self_ensemble={self_ensemble} and self_distill.k={self_distill.k} must be one "
                         f"window size (the teacher is the ensemble)")
    return ParameterWindow(trained, k, extra=1 if self_distill is not None else 0)   # the teacher: K before now


def apply_average(model, averaged: dict) -> None:
    """Put a History.averaged ({name: theta_bar}) into the model's parameters (in place)."""
    params = dict(model.named_parameters())
    unknown = set(averaged) - set(params)
    if unknown:
        raise KeyError(f"apply_average: {sorted(unknown)[:3]} are not parameters of this model")
    for name, a in averaged.items():
        params[name].data = a.copy()


def _optimizer(model, params, optimizer, lr, weight_decay, schedule, warmup, steps):
    """The optimizer (AdamW over what requires grad, unless one is given) and its schedule."""
    if optimizer is None:
        if params is None:
            params = model.trainable_parameters()
        if not params:
            raise ValueError("fit: no parameter requires grad, so there is nothing to train; "
                             "did the PEFT method freeze everything? (check print_trainable_parameters())")
        optimizer = AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        return optimizer, warmup_cosine(optimizer, warmup, steps)
    if schedule == "linear":
        return optimizer, warmup_linear(optimizer, warmup, steps)
    if schedule == "constant":
        return optimizer, None
    raise ValueError(f"fit(schedule={schedule!r}): expected 'cosine', 'linear' or 'constant'")


def _again_and_again(batches):
    """The batches, from the start again each time they run out (one pass = one epoch)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("fit: `batches` gave no batch (an empty list, or an iterator that ran out: "
                             "fit starts it again when it ends, so pass a list or another re-iterable)")


@contextmanager
def _speed_options(model, loss_fn, processes, slice_weight):
    """What makes the loop faster without changing what it computes; undone on exit, also on error.
    Yields the DataParallel of processes > 1, else None."""
    from .parallel import DataParallel, counted
    kept, dp = False, None
    try:
        kept = backend.name == "numpy" and backend.keep_freed_memory()   # malloc keeps freed memory
        if processes > 1:  # before the progress bar starts its thread
            dp = DataParallel(model, loss_fn, processes, weight=slice_weight or counted)
        yield dp
    finally:
        if kept:
            backend.keep_freed_memory(False)
        if dp is not None:
            dp.close()


class _Log:
    """The records of a run: kept in `records`, written one JSON object a line to `path` (flushed
    as written) and shown on a progress bar. `step` logs every `every` steps and the last one."""

    def __init__(self, path, every, steps, progress, desc):
        self.path, self.every, self.steps, self.progress, self.desc = path, every, steps, progress, desc
        self.records, self.file, self.bar = [], None, None

    def __enter__(self):
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
        if self.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.steps, desc=self.desc, dynamic_ncols=True, leave=True)
        self.start = self.last_t = time.perf_counter()
        self.tokens_since = 0
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.close()
        if self.file:
            self.file.close()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def step(self, step, loss, lr, grad_norm, tokens) -> None:
        """After each step. The loss is read back (`float(loss)` waits for a GPU) only when logged."""
        self.tokens_since += tokens
        if step % self.every == 0 or step == self.steps:
            now = time.perf_counter()
            rec = {"step": step, "loss": loss if isinstance(loss, float) else float(loss.item()),
                   "lr": lr, "tokens_per_s": self.tokens_since / max(now - self.last_t, 1e-9),
                   "elapsed_s": now - self.start}
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            self.write(rec)
            self.tokens_since, self.last_t = 0, now
            if self.bar:
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if self.bar:
            self.bar.update(1)


class _EarlyStopping:
    """The best evaluation so far by metrics[select] (mode "max": higher is better, "min": lower);
    on_best(step, metrics) at each new best; stop after `patience` evaluations without one."""

    def __init__(self, select, mode, patience, on_best):
        if mode not in ("max", "min"):
            raise ValueError(f"fit(mode={mode!r}): expected 'max' (higher score is better) or 'min'")
        self.select, self.mode, self.patience, self.on_best = select, mode, patience, on_best
        self.best, self.bad_evals, self.stopped = None, 0, False

    def stop_after(self, step, metrics) -> bool:
        """Take one evaluation; True when training should stop here."""
        if self.select is None:
            return False
        if self.select not in metrics:
            raise KeyError(f"fit(select={self.select!r}): eval_fn returned {sorted(metrics)}")
        value, best = metrics[self.select], self.best
        if best is None or (value > best[self.select] if self.mode == "max" else value < best[self.select]):
            self.best, self.bad_evals = {"step": step, **metrics}, 0
            if self.on_best is not None:
                self.on_best(step, metrics)
            return False
        self.bad_evals += 1
        self.stopped = self.patience is not None and self.bad_evals >= self.patience
        return self.stopped
