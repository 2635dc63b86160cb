"""Data parallelism over processes (minipeft.parallel): the summed gradient equals the whole batch's,
training with it follows training without it, and every misuse gives a clear error."""
from __future__ import annotations

import faulthandler
import os
import sys
import threading

import numpy as np
import pytest

import minipeft
from minipeft import backend, parallel, peft
from minipeft.nn import Transformer, TransformerConfig
from minipeft.optim import AdamW
from minipeft.parallel import DataParallel, counted
from minipeft.train import fit

pytestmark = [pytest.mark.task_training, pytest.mark.infra,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DataParallel forks: Linux only")]

V = 23


HANG_S = 120


@pytest.fixture(autouse=True)
def numpy_and_no_hang(request):
    """DataParallel runs on CPU processes: NumPy also when the suite runs on CuPy. A test that
    waits for a worker for HANG_S seconds has hung: print every thread's stack where it can be
    seen (past pytest's capture) and end the run; a red CI beats a CI that never ends."""
    minipeft.use("numpy")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def hung():
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        print(f"\n{request.node.nodeid}: no progress for {HANG_S} s (a worker that never answers?); "
              f"the stacks:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr)
        os._exit(1)

    watchdog = threading.Timer(HANG_S, hung)
    watchdog.daemon = True
    watchdog.start()
    yield
    watchdog.cancel()


def decoder(seed=0, **kw):
    backend.manual_seed(seed)
    with backend.default_dtype_as(np.float64):
        return Transformer(TransformerConfig(vocab_size=V, n_ctx=12, d_model=16, n_layer=2, n_head=2, **kw))


def lm_batch(rows=5, seed=1):
    """Ragged targets: each row ignores (-100) a different number of trailing positions, so slices
    count different numbers of tokens and a plain mean of the slices' losses would be wrong."""
    g = np.random.default_rng(seed)
    ids = g.integers(0, V, size=(rows, 10))
    targets = g.integers(0, V, size=(rows, 10))
    for i in range(rows):
        targets[i, 10 - 2 * i:] = -100
    return {"ids": ids, "targets": targets}


def lm_loss(model, batch):
    return model(batch["ids"], batch["targets"])[1]


def grads(model):
    return {n: (None if p.grad is None else p.grad.copy()) for n, p in model.named_parameters()}


def assert_same_grads(want, got, rtol=1e-10):
    """Every gradient to rtol of the largest gradient entry of the model (some are zero up to
    rounding: a key bias does not change a softmax)."""
    assert want.keys() == got.keys()
    scale = max(np.abs(g).max() for g in want.values() if g is not None)
    for name in want:
        a, b = want[name], got[name]
        assert (a is None) == (b is None), f"{name}: gradient {'missing' if b is None else 'unexpected'}"
        if a is not None:
            err = np.abs(a - b).max() / scale
            i = np.unravel_index(np.abs(a - b).argmax(), a.shape)
            assert err < rtol, f"{name}[{i}]: expected {a[i]!r}, got {b[i]!r}, relative error {err:.2e}"


def raising_on_marked_rows(error):
    """A loss_fn that raises `error` on a slice whose first row is marked (ids[., 0] == -1), and
    `marked(batch, row)`, a copy of a batch with that row marked."""
    def loss_fn(m, b):
        if b["ids"].shape[0] and b["ids"][0, 0] == -1:
            raise error
        return lm_loss(m, b)

    def marked(batch, row):
        ids = batch["ids"].copy()
        ids[row, 0] = -1
        return dict(batch, ids=ids)
    return loss_fn, marked


def single_process(model, loss_fn, batch):
    loss = loss_fn(model, batch)
    loss.backward()
    g = grads(model)
    for p in model.parameters():
        p.grad = None
    return float(loss.item()), g


@pytest.mark.parametrize("processes", [2, 3])
def test_summed_gradient_equals_the_whole_batch_gradient(processes):
    model, batch = decoder(), lm_batch()
    want_loss, want = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, processes) as dp:
        loss = dp.backward(batch)
        assert_same_grads(want, grads(model))
    assert loss == pytest.approx(want_loss, rel=1e-12)


def test_encoder_classification_with_padding_masks():
    backend.manual_seed(0)
    with backend.default_dtype_as(np.float64):
        model = Transformer(TransformerConfig(arch="bert", vocab_size=V, n_ctx=12, d_model=16, n_layer=1,
                                              n_head=2, n_labels=3))
    g = np.random.default_rng(2)
    mask = (np.arange(9)[None, :] < g.integers(3, 10, size=(6, 1))).astype(np.int64)
    batch = {"ids": g.integers(1, V, size=(6, 9)) * mask, "attention_mask": mask,
             "labels": np.array([0, 2, -100, 1, 1, 0])}

    def loss_fn(m, b):
        from minipeft import ops
        return ops.cross_entropy(m.classify(b["ids"], b["attention_mask"]), b["labels"])

    want_loss, want = single_process(model, loss_fn, batch)
    with DataParallel(model, loss_fn, 2) as dp:
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
        assert_same_grads(want, grads(model))


def test_lora_only_the_adapter_gets_gradients():
    pm = peft.get_peft_model(decoder(), peft.LoraConfig(r=2, target_modules=("q", "v")))
    with backend.default_dtype_as(np.float64):
        for p in pm.trainable_parameters():   # B starts at 0: give it values, so A gets a gradient too
            p.data[...] = np.random.default_rng(3).normal(0, 0.1, p.data.shape)
    batch = lm_batch()
    want_loss, want = single_process(pm, lm_loss, batch)
    assert any(g is None for g in want.values()) and any(g is not None for g in want.values())
    with DataParallel(pm, lm_loss, 2) as dp:
        dp.backward(batch)
        assert_same_grads(want, grads(pm))


def assert_two_steps_match_one_process(pm):
    """Two data-parallel steps from a pool started before any forward (the second step checks the
    model after a forward has set its per-forward state) give one process's loss and gradients."""
    batch = lm_batch()
    with DataParallel(pm, lm_loss, 2) as dp:
        for _ in range(2):
            for p in pm.parameters():
                p.grad = None
            loss = dp.backward(batch)
        got = grads(pm)
    for p in pm.parameters():
        p.grad = None
    want_loss, want = single_process(pm, lm_loss, batch)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_same_grads(want, got)


def test_unipelt_with_its_shared_prefix_mlp_trains_data_parallel():
    """UniPELT's encode_inputs leaves this forward's prefix-MLP output on the MLP (`ready`); that
    per-forward value is not a change of the model the workers copied (it raised 'the model
    changed after the worker processes started' at the second step)."""
    with backend.default_dtype_as(np.float64):
        pm = peft.get_peft_model(decoder(), peft.UniPELTConfig(size=3, r=2, num_virtual_tokens=2,
                                                               encoder_hidden_size=4))
        for p in pm.trainable_parameters():   # LoRA's B starts at 0: give every part values
            p.data[...] = np.random.default_rng(3).normal(0, 0.1, p.data.shape)
    assert_two_steps_match_one_process(pm)


def test_gradients_accumulate_onto_what_is_there():
    model, batch = decoder(), lm_batch()
    _, once = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, 2) as dp:
        dp.backward(batch)
        dp.backward(batch)
        assert_same_grads({n: None if g is None else 2 * g for n, g in once.items()}, grads(model))


def test_optimizer_updates_reach_the_workers():
    """Three AdamW steps data-parallel = three steps in one process (float64): the workers
    compute with the parameters the parent's optimizer changed in place."""
    batches = [lm_batch(seed=s) for s in range(3)]
    runs = []
    for processes in (1, 2):
        model = decoder()
        opt = AdamW(model.trainable_parameters(), lr=1e-2)
        dp = DataParallel(model, lm_loss, processes) if processes > 1 else None
        for b in batches:
            if dp is None:
                lm_loss(model, b).backward()
            else:
                dp.backward(b)
            opt.step()
            opt.zero_grad()
        if dp is not None:
            dp.close()
        runs.append({n: p.data.copy() for n, p in model.named_parameters()})
    for name in runs[0]:
        np.testing.assert_allclose(runs[1][name], runs[0][name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_a_sparse_delta_trains_data_parallel():
    """A W = W0 + Delta method (a random sparse mask) trains with processes > 1: the first forward
    sets the PeftModel's `_swapped` flag (parametrize.effective_weights), which the model-state
    check read as 'the model changed after the worker processes started' at the second step."""
    from minipeft.peft.sparse import RandomMaskConfig
    with backend.default_dtype_as(np.float64):
        pm = peft.get_peft_model(decoder(), RandomMaskConfig(density=0.3, seed=1))
        pm.deltas["default"].values.data[...] = np.random.default_rng(3).normal(0, 0.1, pm.deltas["default"].values.shape)
    assert_two_steps_match_one_process(pm)


def test_fit_with_two_processes_follows_fit_with_one():
    histories, finals = [], []
    for processes in (1, 2):
        model = decoder()
        h = fit(model, lm_loss, [lm_batch(seed=s) for s in range(3)], steps=6, lr=1e-2, log_every=1,
                progress=False, processes=processes)
        histories.append([r["loss"] for r in h.records if "loss" in r])
        finals.append(model.wte.weight.data.copy())
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-9)
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-9, atol=1e-12)
    assert histories[0][-1] < histories[0][0]


def test_a_replaced_parameter_is_copied_into_shared_memory():
    model, batch = decoder(), lm_batch()
    new_state = {k: v * 1.5 for k, v in decoder(seed=7).state_dict().items()}
    with DataParallel(model, lm_loss, 2) as dp:
        model.load_state_dict(new_state)              # rebinds every p.data in the parent
        dp.backward(batch)
        got = grads(model)
    fresh = decoder()
    fresh.load_state_dict(new_state)
    _, want = single_process(fresh, lm_loss, batch)
    assert_same_grads(want, got)


def test_a_worker_error_names_the_worker_and_keeps_the_pool_usable():
    model, batch = decoder(), lm_batch(rows=4)
    loss_fn, marked = raising_on_marked_rows(ValueError("a row the loss cannot take"))
    bad = marked(batch, 2)                            # in the worker's slice (rows 2:4)
    with DataParallel(model, loss_fn, 2) as dp:
        with pytest.raises(RuntimeError, match=r"worker process 1 .*rows 2:4(.|\n)*a row the loss cannot take"):
            dp.backward(bad)
        assert all(p.grad is None for p in model.parameters()), "a failed step left a partial gradient"
        want_loss, want = single_process(decoder(), lm_loss, batch)
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
        assert_same_grads(want, grads(model))


def test_an_error_in_this_process_is_raised_as_it_is():
    model, batch = decoder(), lm_batch(rows=4)
    loss_fn, marked = raising_on_marked_rows(KeyError("mine"))
    bad = marked(batch, 0)                            # in this process's slice (rows 0:2)
    with DataParallel(model, loss_fn, 2) as dp:
        with pytest.raises(KeyError, match="mine"):
            dp.backward(bad)
        dp.backward(batch)                            # the pipes are still in step
        assert model.wte.weight.grad is not None


@pytest.mark.parametrize("batch, error, match", [
    ({"ids": np.zeros((4, 3), np.int64), "targets": np.zeros((3, 3), np.int64)}, ValueError,
     r"same number of rows; got shapes \[\(4, 3\), \(3, 3\)\]"),
    ({"ids": np.zeros((4, 3), np.int64), "n": {1, 2}}, TypeError, "cannot send a set"),
    ({"ids": np.zeros((4, 3), np.int64), "scale": np.array(2.0)}, TypeError, "0-d array"),
    ({1: np.zeros((4, 3), np.int64)}, TypeError, "string keys"),
    ({"note": "no arrays"}, ValueError, "no array to cut"),
    ({"ids": np.zeros((4, 3), np.int64), "targets": np.full((4, 3), -100)}, ValueError, "counts 0 items"),
    ({"ids": np.zeros((4, 3), np.int64), "names": np.array(["a", None, "b", "c"], dtype=object)}, TypeError,
     "dtype object cannot be sent"),
    ({"ids": np.zeros((4, 3), np.int64), "when": np.zeros(4, "datetime64[s]")}, TypeError,
     r"dtype datetime64\[s\] cannot be sent"),
    ({"ids": np.zeros((4, 3), np.int64), "t": minipeft.autograd.Tensor(np.zeros(4))}, TypeError, "pass its .data"),
    ((np.zeros((4, 3), np.int64), np.full((4, 3), -100)), ValueError, "no 'targets' or 'labels' key"),
])
def test_bad_batches_are_clear_errors(batch, error, match):
    with DataParallel(decoder(), lm_loss, 2) as dp:
        with pytest.raises(error, match=match):
            dp.backward(batch)


def test_changing_what_trains_after_the_start_is_an_error():
    model = decoder()
    with DataParallel(model, lm_loss, 2) as dp:
        model.wte.weight.requires_grad = False
        with pytest.raises(RuntimeError, match="which parameters require grad changed"):
            dp.backward(lm_batch())


def test_a_parameter_of_another_shape_is_an_error():
    model = decoder()
    with DataParallel(model, lm_loss, 2) as dp:
        model.wpe.weight.data = np.zeros((3, 16))
        with pytest.raises(RuntimeError, match=r"parameter wpe.weight changed from float64\[12, 16\]"):
            dp.backward(lm_batch())


def test_workers_draw_dropout_from_the_parents_seed():
    """The whole gradient comes from the worker's slice (weight 0 for this process's), so it
    shows the worker's dropout masks: the same seed gives the same masks, another seed others."""
    model, batch = decoder(dropout=0.5), lm_batch(rows=2)
    only_second = lambda b: int(b["ids"].shape[0] and b["ids"][0, 0] == batch["ids"][1, 0]) * 10  # noqa: E731
    assert batch["ids"][0, 0] != batch["ids"][1, 0]
    runs = []
    with DataParallel(model, lm_loss, 2, weight=only_second) as dp:
        for seed in (1, 1, 2):
            backend.manual_seed(seed)
            dp.backward(batch)
            runs.append(model.wte.weight.grad.copy())
            model.zero_grad()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-6, "another seed in the parent did not change the worker's dropout"


def test_a_killed_worker_is_a_clear_error():
    dp = DataParallel(decoder(), lm_loss, 2)
    os.kill(dp._pids[0], 9)
    with pytest.raises(RuntimeError, match=r"worker process 1 .* stopped unexpectedly \(killed by signal 9 \(SIGKILL"):
        dp.backward(lm_batch())
    with pytest.raises(RuntimeError, match="closed"):  # the others were stopped with it
        dp.backward(lm_batch())


def test_close_stops_the_workers():
    dp = DataParallel(decoder(), lm_loss, 3)
    pids = list(dp._pids)
    dp.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):        # reaped: no such child any more
            os.waitpid(pid, os.WNOHANG)
    with pytest.raises(RuntimeError, match="closed"):
        dp.backward(lm_batch())


def test_one_process_needs_no_worker():
    model, batch = decoder(), lm_batch()
    want_loss, want = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, 1) as dp:
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
    assert_same_grads(want, grads(model))


def test_counted_is_what_a_mean_cross_entropy_divides_by():
    assert counted({"ids": np.zeros((2, 3)), "targets": np.array([[1, -100, 2], [-100, -100, 0]])}) == 3
    assert counted({"ids": np.zeros((3, 3)), "labels": np.array([1, -100, 0])}) == 2
    assert counted({"ids": np.zeros((4, 3))}) == 4


def test_wrong_settings_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="whole number >= 1"):
        DataParallel(decoder(), lm_loss, 0)
    frozen = decoder()
    frozen.freeze()
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        DataParallel(frozen, lm_loss, 2)
    monkeypatch.setattr(backend, "name", "cupy")
    with pytest.raises(RuntimeError, match="NumPy backend"):
        DataParallel(decoder(), lm_loss, 2)


def test_bad_batches_leave_the_pipes_in_step():
    model, batch = decoder(), lm_batch()
    want_loss, want = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, 2) as dp:
        for bad in ({"ids": batch["ids"], "targets": batch["targets"], "w": np.zeros(5, "datetime64[s]")},
                    {"ids": batch["ids"], "targets": batch["targets"], "names": np.array([None] * 5)}):
            with pytest.raises(TypeError):
                dp.backward(bad)
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
        assert_same_grads(want, grads(model))


def test_an_interrupted_step_stops_the_workers_and_keeps_the_gradients():
    """Ctrl-C (KeyboardInterrupt) in the middle of a step: the workers' replies would arrive one
    step late, so they are stopped; the gradients are those from before the call."""
    model, batch = decoder(), lm_batch()
    parent = os.getpid()

    def loss_fn(m, b):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return lm_loss(m, b)

    earlier = {id(p): p.grad for p in model.parameters()}
    model.wte.weight.grad = np.ones_like(model.wte.weight.data)      # accumulated before
    dp = DataParallel(model, loss_fn, 3)
    pids, views = list(dp._pids), list(dp._shared)
    with pytest.raises(KeyboardInterrupt):
        dp.backward(batch)
    assert np.array_equal(model.wte.weight.grad, np.ones_like(model.wte.weight.data))
    assert all(p.grad is earlier[id(p)] for p in model.parameters() if p is not model.wte.weight)
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    with pytest.raises(RuntimeError, match="closed"):
        dp.backward(batch)
    assert all(p.data is not v for (_, p), v in zip(model.named_parameters(), views)), \
        "after close the parameters must have private arrays again"


def test_a_failed_worker_keeps_earlier_gradients():
    model, batch = decoder(), lm_batch(rows=4)
    model.wpe.weight.grad = accumulated = np.full_like(model.wpe.weight.data, 0.5)
    loss_fn, marked = raising_on_marked_rows(ValueError("bad row"))
    bad = marked(batch, 2)
    with DataParallel(model, loss_fn, 2) as dp:
        with pytest.raises(RuntimeError, match="bad row"):
            dp.backward(bad)
    assert model.wpe.weight.grad is accumulated
    assert model.wte.weight.grad is None


def test_changing_the_model_after_the_start_is_an_error():
    """A merged LoRA: the workers still have `merged == []` and would add BA a second time."""
    pm = peft.get_peft_model(decoder(), peft.LoraConfig(r=2, target_modules=("q",)))
    with DataParallel(pm, lm_loss, 2) as dp:
        pm.merge_adapter()
        with pytest.raises(RuntimeError, match=r"the model changed after the worker processes started \(.*merged"):
            dp.backward(lm_batch())


def test_workers_follow_eval_mode():
    model, batch = decoder(dropout=0.5), lm_batch()
    model.eval()
    want_loss, want = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, 2) as dp:
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
        assert_same_grads(want, grads(model))


def test_fit_passes_slice_weight_for_tuple_batches():
    """A tuple batch (ids, targets) with -100: `counted` cannot know the tokens; slice_weight can."""
    def loss_fn(m, b):
        return m(b[0], b[1])[1]

    batches = [(b["ids"], b["targets"]) for b in (lm_batch(seed=s) for s in range(2))]
    finals = []
    for processes in (1, 2):
        model = decoder()
        fit(model, loss_fn, batches, steps=3, lr=1e-2, progress=False, processes=processes,
            slice_weight=lambda b: int((b[1] != -100).sum()))
        finals.append(model.wte.weight.data.copy())
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-9, atol=1e-12)


def test_fit_stops_the_workers_when_it_fails_early(monkeypatch, tmp_path):
    started = []

    class Recording(DataParallel):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)

    monkeypatch.setattr(parallel, "DataParallel", Recording)

    def broken_batches():
        raise OSError("the data is gone")
        yield

    with pytest.raises(OSError, match="the data is gone"):
        fit(decoder(), lm_loss, broken_batches(), steps=2, progress=False, processes=2)
    assert len(started) == 1 and started[0]._pids == [], "fit left its worker processes running"


def test_processes_are_checked_before_anything_runs(monkeypatch):
    with pytest.raises(ValueError, match="whole number >= 1"):
        fit(decoder(), lm_loss, [lm_batch()], steps=1, progress=False, processes=0)
    with pytest.raises(ValueError, match="whole number >= 1"):
        parallel.check_supported(1.5)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match="Linux only"):
        parallel.check_supported(2)
    assert parallel.check_supported(1) == 1


def test_close_reports_the_workers_memory():
    dp = DataParallel(decoder(), lm_loss, 2)
    dp.backward(lm_batch())
    dp.close()
    assert dp.worker_maxrss_kb > 1000, f"a worker reported {dp.worker_maxrss_kb} kB"


def test_a_gradient_from_before_the_start_is_counted_once():
    """The workers are forked with the parent's .grad; only the parent may add it."""
    model, batch = decoder(), lm_batch()
    _, once = single_process(model, lm_loss, batch)
    model.wte.weight.grad = np.ones_like(model.wte.weight.data)
    with DataParallel(model, lm_loss, 3) as dp:
        dp.backward(batch)
        got = grads(model)
    want = dict(once, **{"wte.weight": once["wte.weight"] + 1.0})
    assert_same_grads(want, got)


def test_workers_follow_train_and_eval_module_by_module():
    """A frozen base kept in eval mode (no dropout) inside a model in train mode: the workers
    must see the same mix, not the root's flag everywhere."""
    model, batch = decoder(dropout=0.5), lm_batch()
    model.train()
    for name, m in model.named_modules():
        if name:                                      # every module but the root: eval
            m.training = False
    want_loss, want = single_process(model, lm_loss, batch)
    with DataParallel(model, lm_loss, 2) as dp:
        assert dp.backward(batch) == pytest.approx(want_loss, rel=1e-12)
        assert_same_grads(want, grads(model))


def test_processes_may_be_a_numpy_integer():
    assert parallel.check_supported(np.int64(2)) == 2
    with pytest.raises(ValueError, match="whole number"):
        parallel.check_supported(True)


# ----------------------------------------------------------------------------- the default

def test_the_library_tasks_default_to_one_process_per_usable_core(monkeypatch):
    said = []
    monkeypatch.setattr(parallel, "usable_cores", lambda: 4)
    assert parallel.default_processes(notice=said.append) == 4
    assert parallel.default_processes(batch_size=2, notice=said.append) == 2       # at most a row each
    monkeypatch.setattr(parallel, "usable_cores", lambda: 1)
    assert parallel.default_processes(notice=said.append) == 1 and not said          # one core: nothing to say
    monkeypatch.setattr(parallel, "usable_cores", lambda: 4)
    monkeypatch.setattr(parallel.sys, "platform", "darwin")
    assert parallel.default_processes(notice=said.append) == 1
    assert len(said) == 1 and "one process" in said[0] and "darwin" in said[0], said


def test_finetune_by_default_gives_what_one_process_gives(tmp_path, monkeypatch):
    """finetune's default (data-parallel where supported; forced to 2 here, whatever this
    machine's cores) reaches the same weights and metrics as one process, to rounding."""
    from minipeft.tasks import finetune
    monkeypatch.setattr(parallel, "default_processes", lambda batch_size=None, notice=print: 2)
    runs = {}
    for processes in (1, None):
        runs[processes] = finetune("sst2", peft.LoraConfig(r=2, modules_to_save=("cls_head",)), "bert-m",
                                   steps=4, batch_size=8, train_size=32, eval_size=16, eval_every=4,
                                   out_dir=str(tmp_path / str(processes)), progress=False, verbose=False,
                                   processes=processes)
    one, default = runs[1], runs[None]
    assert abs(one.after["loss"] - default.after["loss"]) < 1e-5, (one.after, default.after)
    assert abs(one.after["loss"] - one.before["loss"]) > 1e-4          # it trained: the comparison means something
