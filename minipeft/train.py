"""The training loop: one `fit` for pretraining and for every fine-tuning method.

    history = fit(model, loss_fn, batches, steps=1000, lr=3e-4,
                  eval_fn=lambda m: {"loss": ..., "score": ...}, eval_every=100,
                  log_path="runs/x/log.jsonl")

- `loss_fn(model, batch) -> Tensor` (scalar); `batches` is an iterator of batches (any object;
  `n_tokens(batch)` counts the tokens for the tokens/s figure).
- Only parameters with requires_grad=True are optimised (AdamW), so a PEFT method decides what
  trains by freezing the rest; optimizer state exists only for them.
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
        progress: bool = True, desc: str = "train", processes: int = 1, slice_weight=None) -> History:
    """Train `model` for `steps` optimizer steps. Returns a History (see module docstring).

    params: the tensors (or AdamW parameter groups) to optimise; default: every parameter that
    requires grad. optimizer: a ready optimizer instead (then lr/weight_decay are not used).
    schedule: "cosine", "linear" (both after a linear warmup) or "constant".
    processes: 1 = this process and its pool of threads; n > 1 = data-parallel over n processes.
    slice_weight: with processes > 1, the n_i of a slice (default: parallel.counted).
    """
    if steps <= 0:
        raise ValueError(f"fit(steps={steps}): the number of steps must be positive")
    if mode not in ("max", "min"):
        raise ValueError(f"fit(mode={mode!r}): expected 'max' (higher score is better) or 'min'")
    from .parallel import DataParallel, check_supported, counted
    processes = check_supported(processes)
    if optimizer is None:
        if params is None:
            params = model.trainable_parameters()
        if not params:
            raise ValueError("fit: no parameter requires grad, so there is nothing to train; "
                             "did the PEFT method freeze everything? (check print_trainable_parameters())")
        optimizer = AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        scheduler = warmup_cosine(optimizer, warmup, steps)
    elif schedule == "linear":
        scheduler = warmup_linear(optimizer, warmup, steps)
    elif schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"fit(schedule={schedule!r}): expected 'cosine', 'linear' or 'constant'")
    trained = [p for g in optimizer.param_groups for p in g["params"]]

    model.train()
    log_file = None
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")

    def log(record):
        records.append(record)
        if log_file:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    records, best, bad_evals, stopped = [], None, 0, False
    dp = bar = None
    kept = False
    try:
        kept = backend.name == "numpy" and backend.keep_freed_memory()
        if processes > 1:  # before the progress bar starts its thread
            dp = DataParallel(model, loss_fn, processes, weight=slice_weight or counted)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=steps, desc=desc, dynamic_ncols=True, leave=True)
        start = last_t = time.perf_counter()
        tokens_since = 0
        it = iter(batches)
        for step in range(1, steps + 1):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(batches)
                batch = next(it)
            if dp is None:
                loss = loss_fn(model, batch)
                loss.backward()
            else:
                loss = dp.backward(batch)          # a float: the slices' losses, weighted
            grad_norm = clip_grad_norm_(trained, clip) if clip else None
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            tokens_since += n_tokens(batch)

            if step % log_every == 0 or step == steps:
                now = time.perf_counter()
                rec = {"step": step, "loss": float(loss.item()) if dp is None else loss,
                       "lr": optimizer.param_groups[0]["lr"],
                       "tokens_per_s": tokens_since / max(now - last_t, 1e-9),
                       "elapsed_s": now - start}
                if grad_norm is not None:
                    rec["grad_norm"] = float(grad_norm)
                log(rec)
                tokens_since, last_t = 0, now
                if bar:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if bar:
                bar.update(1)

            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == steps):
                metrics = evaluate(model, eval_fn)
                rec = {"step": step, "eval": metrics, "elapsed_s": time.perf_counter() - start}
                log(rec)
                if select is not None:
                    if select not in metrics:
                        raise KeyError(f"fit(select={select!r}): eval_fn returned {sorted(metrics)}")
                    value = metrics[select]
                    better = best is None or (value > best[select] if mode == "max" else value < best[select])
                    if better:
                        best, bad_evals = {"step": step, **metrics}, 0
                        if on_best is not None:
                            on_best(step, metrics)
                    else:
                        bad_evals += 1
                        if patience is not None and bad_evals >= patience:
                            stopped = True
                            log({"step": step, "early_stop": True, "best_step": best["step"]})
                            break
    finally:
        if kept:
            backend.keep_freed_memory(False)
        if dp is not None:
            dp.close()
        if bar:
            bar.close()
        if log_file:
            log_file.close()
    backend.synchronize()
    return History(records=records, best=best, stopped_early=stopped, seconds=time.perf_counter() - start)
