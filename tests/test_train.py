"""The training loop `minipeft.train.fit`: logging, evaluation, best-checkpoint selection,
early stopping, and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minipeft import backend
from minipeft.nn import Transformer, TransformerConfig
from minipeft.train import fit

pytestmark = pytest.mark.task_training


def tiny(seed=0):
    backend.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=17, n_ctx=8, d_model=16, n_layer=1, n_head=2))


def one_batch():
    g = np.random.default_rng(0)
    ids = g.integers(0, 17, size=(4, 6))
    return {"ids": ids, "targets": g.integers(0, 17, size=(4, 6))}


def lm_loss(model, batch):
    return model(batch["ids"], batch["targets"])[1]


def test_fit_lowers_the_loss_and_writes_json_lines(tmp_path):
    model, batch = tiny(), one_batch()
    first = lm_loss(model, batch).item()
    log = tmp_path / "log.jsonl"
    hist = fit(model, lm_loss, [batch], steps=40, lr=1e-2, log_path=str(log), log_every=5, progress=False)
    last = lm_loss(model, batch).item()
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}: expected at least a halving on one batch"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(5, 41, 5)), steps
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r)
    assert hist.records == records and not hist.stopped_early


def test_fit_trains_only_parameters_that_require_grad():
    model, batch = tiny(), one_batch()
    model.freeze()
    model.ln_f.requires_grad_(True)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    fit(model, lm_loss, [batch], steps=5, lr=1e-2, progress=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert np.array_equal(backend.to_numpy(p.data), backend.to_numpy(frozen[n])), f"{n} changed"
    assert not np.array_equal(backend.to_numpy(model.ln_f.weight.data), np.ones(16, dtype=np.float32))


def test_best_evaluation_is_kept_and_patience_stops_training():
    model, batch = tiny(), one_batch()
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])        # peaks at the 2nd evaluation, then falls
    kept = []
    hist = fit(model, lm_loss, [batch], steps=60, lr=1e-3, eval_fn=lambda m: {"score": next(scores)},
               eval_every=5, select="score", mode="max", patience=3,
               on_best=lambda step, m: kept.append((step, m["score"])), progress=False)
    assert kept == [(5, 0.1), (10, 0.5)], kept
    assert hist.best == {"step": 10, "score": 0.5}
    assert hist.stopped_early
    evals = [r for r in hist.records if "eval" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 25], "stops after 3 evaluations without improvement"


def test_mode_min_selects_the_lowest():
    model, batch = tiny(), one_batch()
    losses = iter([3.0, 2.0, 2.5])
    hist = fit(model, lm_loss, [batch], steps=15, lr=1e-3, eval_fn=lambda m: {"loss": next(losses)},
               eval_every=5, select="loss", mode="min", progress=False)
    assert hist.best["step"] == 10 and hist.best["loss"] == 2.0


def test_evaluation_runs_in_eval_mode_without_a_graph():
    from minipeft.autograd import is_grad_enabled
    model, batch = tiny(), one_batch()
    seen = []
    fit(model, lm_loss, [batch], steps=2, lr=1e-3, eval_every=1, progress=False,
        eval_fn=lambda m: seen.append((m.training, is_grad_enabled())) or {})
    assert seen == [(False, False), (False, False)]
    assert model.training, "fit leaves the model in training mode after evaluating"


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"),
    ({"steps": 3, "mode": "best"}, "mode"),
    ({"steps": 3, "schedule": "exotic"}, "schedule"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(tiny(), lm_loss, [one_batch()], progress=False, **kwargs)


def test_nothing_to_train_is_a_clear_error():
    model = tiny().freeze()
    with pytest.raises(ValueError, match="nothing to train"):
        fit(model, lm_loss, [one_batch()], steps=3, progress=False)


def test_unknown_select_key_names_what_eval_returned():
    with pytest.raises(KeyError, match="bleu"):
        fit(tiny(), lm_loss, [one_batch()], steps=2, eval_every=1, eval_fn=lambda m: {"bleu": 1.0},
            select="accuracy", progress=False)


@pytest.mark.infra
def test_fit_keeps_freed_memory_on_numpy(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "keep_freed_memory", lambda keep=True: calls.append(keep) or True)
    backend.use("numpy")
    fit(tiny(), lm_loss, [one_batch()], steps=1, progress=False)
    assert calls == [True, False], ("fit should ask malloc to keep freed memory while it trains (a fifth of "
                                    f"the demo's time) and hand it back when it returns; calls: {calls}")


@pytest.mark.infra
def test_keep_freed_memory_stops_page_faults_on_reuse():
    """After it, freeing and allocating the same 64 MB again costs no page faults (glibc/Linux)."""
    import platform
    import resource
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's mallopt only")
    assert backend.keep_freed_memory() is True
    a = np.ones(8 << 20)                              # 64 MB: touched once
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(8 << 20)                              # the same memory again
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del b
    # back to the OS and in again: 16,384 faults of 4 kB pages, or 32 of 2 MB huge pages (NumPy asks
    # for them for large arrays); kept: none
    assert faults < 8, f"{faults} page faults for reused memory: it went back to the OS and came in again"
