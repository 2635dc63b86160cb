"""The benchmark CLI (python -m minipeft.bench) runs and prints what tools read. Not a timing test:
nothing here asserts on speed."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy
import pytest

from minipeft import backend, bench

REQUIRED = ("ms_per_step", "tokens_per_s", "params", "trainable", "peak_rss_mb", "gflops",
            "peak_fraction", "optimizer_state_bytes")
TINY_PARAMS = 1_071_872  # 2048*128 + 128*128 + 4 * 198,272 (a block) + 256 (ln_f), tied head


def _run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "minipeft.bench", *args], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_json_tiny_full():
    proc = _run_cli("--config", "tiny", "--method", "full", "--steps", "2", "--warmup", "1", "--json")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r}"
    out = json.loads(lines[0])
    for key in REQUIRED:
        assert key in out, f"missing key {key!r} in {sorted(out)}"
        assert isinstance(out[key], (int, float)) and math.isfinite(out[key]) and out[key] >= 0
    assert out["params"] == out["trainable"] == TINY_PARAMS
    assert out["optimizer_state_bytes"] == 2 * 4 * TINY_PARAMS  # AdamW: m and v, float32
    assert out["steps"] == 2 and out["config"] == "tiny" and out["method"] == "full"
    if "torch_ms_per_step" in out:  # PyTorch importable: the same model on the other side
        assert out["torch_params"] == out["params"]
        assert out["ratio"] > 0


def test_cli_human_readable_and_no_torch():
    proc = _run_cli("--config", "tiny", "--steps", "1", "--warmup", "0", "--no-torch")
    assert "ms/step" in proc.stdout and "pytorch" not in proc.stdout


def test_cli_lora():
    proc = subprocess.run([sys.executable, "-m", "minipeft.bench", "--method", "lora", "--steps", "1", "--warmup", "0",
                           "--json", "--no-torch"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["trainable"] == 4 * 2 * 2 * 128 * 8        # L * 2 matrices * r (d_in + d_out)
    assert out["params"] == TINY_PARAMS + out["trainable"]


def test_cupy_backend_without_gpu_is_a_clear_error():
    if backend.cupy_available():
        pytest.skip("a GPU is present: --backend cupy would run")
    proc = subprocess.run([sys.executable, "-m", "minipeft.bench", "--backend", "cupy", "--steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "cupy" in proc.stderr.lower()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_step_flops_counts_the_products_a_step_runs(method, monkeypatch):
    """The documented FLOP formula equals 2*n*k*m summed over every product NumPy runs in a step
    (counted at numpy.matmul itself: attention multiplies block by block inside `backend.rows`, and
    backend.matmul may cut a product into blocks of rows; the FLOPs add up either way)."""
    if backend.name != "numpy":
        pytest.skip("counts the products at numpy.matmul, so it needs the NumPy backend")
    cfg = dict(bench.CONFIGS["tiny"], n_layer=2, batch=2, n_ctx=16, vocab_size=64, d_model=32, n_head=2)
    counted = []
    real = numpy.matmul

    def counting(a, b, out=None):
        batch = math.prod(numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        counted.append(2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1])
        return real(a, b, out=out)

    model, opt = bench.build_minipeft(cfg, method)
    ids = numpy.random.default_rng(0).integers(0, cfg["vocab_size"], size=(cfg["batch"], cfg["n_ctx"] + 1))
    monkeypatch.setattr(numpy, "matmul", counting)
    bench.minipeft_step(model, opt, ids[:, :-1], ids[:, 1:])
    assert sum(counted) == bench.step_flops(cfg, method)


def test_batch_override_changes_the_tokens_and_bad_values_are_errors():
    out = bench.run("tiny", "full", steps=1, warmup=0, with_torch=False, batch=2, pause=0.0)
    assert out["batch"] == 2 and out["tokens_per_step"] == 2 * 128
    assert out["step_gflop"] == round(bench.step_flops(dict(bench.CONFIGS["tiny"], batch=2), "full") / 1e9, 3)
    assert bench.CONFIGS["tiny"]["batch"] == 16, "the override must not change the shared config"
    with pytest.raises(ValueError, match="batch must be at least 1"):
        bench.run("tiny", "full", steps=1, warmup=0, with_torch=False, batch=0)
    proc = subprocess.run([sys.executable, "-m", "minipeft.bench", "--batch", "0"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "--batch must be at least 1" in proc.stderr


def _load_script(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_parts_add_up_and_the_classes_are_restored():
    from minipeft.ops.fused import Attention
    prof = _load_script("profile_step")
    forward_before = Attention.__dict__["forward"]
    out = prof.profile("tiny", "full", batch=2, steps=1)
    assert Attention.__dict__["forward"] is forward_before, "profile_step left its timing wrappers installed"
    for key in ("Linear.forward", "Linear.backward", "Attention.forward", "Attention.backward", "optimizer"):
        assert out["ms"].get(key, 0) > 0, f"{key} missing from the profile: {sorted(out['ms'])}"
    parts = sum(out["ms"].values())
    assert parts <= out["step_total"] + 0.05 and out["unwrapped"] >= -0.05, (parts, out["step_total"])


def test_gpu_where_on_numpy_issue_equals_total():
    # on NumPy nothing is asynchronous: a step's Python returns only when the work is done
    where = _load_script("gpu_where")
    out = where.measure("tiny", "lora", batch=2, steps=2)
    assert out["backend"] == "numpy" and out["issue_ms"] > 0
    assert abs(out["total_ms"] - out["issue_ms"]) <= 0.05 * out["total_ms"] + 0.1, out


def test_torch_omp_wait_passive_sets_the_variable_before_pytorch_starts():
    # the bench sets OMP_WAIT_POLICY in its own process before it imports PyTorch (read by
    # OpenMP when PyTorch's runtime starts) and reports the setting it ran with
    proc = _run_cli("--config", "tiny", "--steps", "1", "--warmup", "0", "--torch-omp-wait", "passive",
                    "--json")
    out = json.loads(proc.stdout)
    if "torch_ms_per_step" in out:  # PyTorch importable
        assert out["omp_wait_policy"] == "PASSIVE"


def test_pytorch_gets_the_same_warmup_steps(monkeypatch):
    # the PyTorch side is stepped `warmup` times before the timed steps, like minipeft
    import types
    calls = []

    class FakeTensor:
        def to(self, device):
            return self

    fake_torch = types.SimpleNamespace(from_numpy=lambda a: FakeTensor(), __version__="fake",
                                       get_num_threads=lambda: 1,
                                       cuda=types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setattr(bench, "torch_device_for", lambda name: "cpu")
    monkeypatch.setattr(bench, "torch_reference",
                        lambda cfg, method, threads, device: (lambda i, t: calls.append(1), fake_torch, (1, 1)))
    out = bench.run("tiny", "full", steps=2, warmup=3, batch=1, pause=0.0)
    assert len(calls) == 3 + 2, f"PyTorch ran {len(calls)} steps, expected 3 warm-up + 2 timed"
    assert out["torch_version"] == "fake"


def test_a_missing_pytorch_is_reported_not_silent(monkeypatch):
    monkeypatch.setattr(bench, "torch_device_for", lambda name: None)   # as without PyTorch
    out = bench.run("tiny", "full", steps=1, warmup=0, batch=1, pause=0.0)
    assert "torch_ms_per_step" not in out and "not importable" in out["torch_skipped"]
    out = bench.run("tiny", "full", steps=1, warmup=0, batch=1, pause=0.0, with_torch=False)
    assert "torch_skipped" not in out, "--no-torch asked for no PyTorch: nothing to report"


@pytest.mark.infra
def test_threads_sets_both_libraries_and_restores_minipefts_setting():
    saved = backend.get_threads()
    backend.set_threads(3)
    try:
        out = bench.run("tiny", "full", steps=1, warmup=0, with_torch=False, batch=2, pause=0.0, threads=1)
        assert (out["threads"], out["row_threads"]) == (1, 1)
        assert backend.get_threads() == 3, "bench.run(threads=...) must give minipeft its thread count back"
    finally:
        backend.set_threads(saved)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:   # PyTorch's side gets the same count
        before = torch.get_num_threads()
        out = bench.run("tiny", "full", steps=1, warmup=0, batch=2, pause=0.0, threads=1)
        torch.set_num_threads(before)
        assert out["torch_threads"] == 1
    proc = subprocess.run([sys.executable, "-m", "minipeft.bench", "--threads", "0"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "--threads must be at least 1" in proc.stderr


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DataParallel forks: Linux only")


@pytest.mark.infra
@linux_only
def test_processes_runs_the_data_parallel_step():
    out = bench.run("tiny", "full", steps=2, warmup=1, with_torch=False, batch=4, pause=0.0, processes=2)
    assert (out["processes"], out["threads"], out["row_threads"]) == (2, 2, 2)
    assert out["worker_peak_rss_mb"] > 0
    assert out["ms_per_step"] > 0 and out["products_in_blocks"] is False
    with pytest.raises(ValueError, match="processes=0: need a whole number >= 1"):
        bench.run("tiny", "full", steps=1, warmup=0, with_torch=False, batch=2, processes=0)


@pytest.mark.infra
@linux_only
def test_the_data_parallel_step_trains_like_the_ordinary_one():
    """The bench's data-parallel step computes the ordinary step's gradients (float32 rounding:
    the slices' gradients are added in another order)."""
    from minipeft.parallel import DataParallel
    backend.use("numpy")                              # also when the suite runs on CuPy: CPU processes
    cfg = dict(bench.CONFIGS["tiny"], batch=4, n_layer=1)
    ids = bench.token_batch(cfg)
    backend.manual_seed(0)
    model, _ = bench.build_minipeft(cfg, "full")
    batch = {"ids": ids[:, :-1], "targets": ids[:, 1:]}
    bench.lm_loss(model, batch).backward()
    want = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    with DataParallel(model, bench.lm_loss, 2) as dp:
        dp.backward(batch)
    scale = max(numpy.abs(g).max() for g in want.values())
    for name, p in model.named_parameters():
        err = numpy.abs(p.grad - want[name]).max() / scale
        assert err < 1e-5, f"{name}: the data-parallel gradient differs by {err:.2e} of the largest gradient"
