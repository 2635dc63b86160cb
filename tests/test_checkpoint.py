"""Checkpoints: bit-exact round trips, atomic saves, clear errors on bad files, state-dict checks."""
import dataclasses
import json
import os

import numpy as np
import pytest
import safetensors.numpy

import minipeft
from minipeft import backend, checkpoint
from minipeft.checkpoint import (CheckpointError, check_state_dict, load_checkpoint, load_extra, load_metadata,
                                 load_optimizer_state, load_state_dict_file, save_checkpoint,
                                 save_optimizer_state, save_state_dict, write_json_atomic)
from minipeft.optim import AdamW

@pytest.fixture(autouse=True)
def on_backend(backend):
    """Every test here runs on each available backend (the `backend` fixture of tests/conftest.py:
    NumPy always, CuPy when a GPU is present, or what MINIPEFT_BACKEND asks for)."""
    yield backend.name


rng = np.random.default_rng(7)


def sample_state():
    """Host arrays of several dtypes, including awkward ones (0-d, empty, a transposed view)."""
    return {
        "h.0.attn.q.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "h.0.attn.q.bias": rng.normal(size=(4,)).astype(np.float32),
        "f64": rng.normal(size=(3, 2, 5)),
        "ids": rng.integers(-10**12, 10**12, size=(6,)),
        "i32": rng.integers(-100, 100, size=(2, 3)).astype(np.int32),
        "mask": rng.random(7) > 0.5,
        "scalar": np.array(np.pi),
        "empty": np.zeros((0, 4), np.float32),
        "transposed": rng.normal(size=(3, 5)).astype(np.float32).T,  # not C-contiguous
        "tiny": np.array([1e-45, -0.0, np.inf, -np.inf, np.nan], np.float32),  # denormal, signed zero, inf, nan
    }


def assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for k, w in want.items():
        g = backend.to_numpy(got[k])
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert g.tobytes() == np.ascontiguousarray(w).tobytes(), k  # bit-exact (nan, -0.0 included)


# ----------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_exact(tmp_path):
    want = sample_state()
    on_device = {k: backend.to_device(v) for k, v in want.items()}
    path = tmp_path / "w.safetensors"
    save_state_dict(on_device, path)
    got = load_state_dict_file(path)
    assert all(isinstance(v, backend.xp.ndarray) for v in got.values())
    assert_same(got, want)
    host = load_state_dict_file(path, device=False)
    assert all(isinstance(v, np.ndarray) for v in host.values())
    assert_same(host, want)


def test_tensors_are_saved_by_their_data(tmp_path):
    w = rng.normal(size=(3, 3)).astype(np.float32)
    save_state_dict({"w": minipeft.tensor(w, dtype=np.float32)}, tmp_path / "t.safetensors")
    assert_same(load_state_dict_file(tmp_path / "t.safetensors"), {"w": w})


def test_metadata_round_trip(tmp_path):
    meta = {"config": json.dumps({"d": 128, "layers": 4}), "note": "ünïcode ok"}
    path = tmp_path / "m.safetensors"
    save_state_dict({"a": np.ones(2, np.float32)}, path, metadata=meta)
    assert load_metadata(path) == meta
    save_state_dict({"a": np.ones(2, np.float32)}, path)
    assert load_metadata(path) == {}
    with pytest.raises(TypeError, match="json.dumps"):
        save_state_dict({"a": np.ones(2)}, path, metadata={"d": 128})


def test_unsupported_values_are_rejected_clearly(tmp_path):
    with pytest.raises(TypeError, match="'name'.*str"):
        save_state_dict({"name": "gpt2"}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="complex128"):
        save_state_dict({"z": np.ones(2, complex)}, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- atomic saves

def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


def test_interrupted_save_leaves_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    save_state_dict(old, path)
    old_bytes = path.read_bytes()

    real_save_file = safetensors.numpy.save_file

    def crash_midway(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)       # write the new file...
        with open(filename, "rb") as f:
            data = f.read()
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])                         # ...keep half of it...
        raise OSError(28, "No space left on device")               # ...and fail, like a full disk

    monkeypatch.setattr(safetensors.numpy, "save_file", crash_midway)
    new = {"w": np.zeros((3, 4), np.float32), "extra": np.ones(1000, np.float32)}
    with pytest.raises(OSError, match="No space left"):
        save_state_dict(new, path)
    assert files_in(tmp_path) == ["model.safetensors"]              # no temp file left behind
    assert path.read_bytes() == old_bytes
    assert_same(load_state_dict_file(path), old)

    # KeyboardInterrupt during the write: same guarantees
    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict(new, path)
    assert files_in(tmp_path) == ["model.safetensors"] and path.read_bytes() == old_bytes


def test_interrupted_json_write_keeps_old_file(tmp_path):
    path = tmp_path / "config.json"
    write_json_atomic(path, {"d": 1})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json_atomic(path, {"d": object()})
    assert json.loads(path.read_text()) == {"d": 1} and files_in(tmp_path) == ["config.json"]


def test_saved_files_get_normal_permissions(tmp_path):
    path = tmp_path / "w.safetensors"
    save_state_dict({"a": np.ones(1)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)  # not a temp file's 0o600
    os.chmod(path, 0o640)
    save_state_dict({"a": np.zeros(1)}, path)
    assert (path.stat().st_mode & 0o777) == 0o640  # replacing a file keeps its mode


# ----------------------------------------------------------------------------- bad files

def test_missing_file_names_what_is_there(tmp_path):
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="other.safetensors"):
        load_state_dict_file(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_state_dict_file(tmp_path)


@pytest.mark.parametrize("cut", [0.5, 0.999, 0.02])
def test_truncated_file_gives_checkpoint_error_with_file_name(tmp_path, cut):
    path = tmp_path / "weights.safetensors"
    save_state_dict({"a": rng.normal(size=(64, 64)).astype(np.float32), "b": np.ones(3)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    msg = str(info.value)
    assert str(path) in msg
    msg = msg.replace(str(path), "")  # (pytest's tmp_path itself contains the test's name)
    assert "the file is truncated" in msg and "re-save" in msg
    assert isinstance(info.value, ValueError)


def test_text_file_renamed_safetensors_gives_clear_error(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes, not a checkpoint\n" * 5)
    with pytest.raises(CheckpointError, match=r"notes\.safetensors.*not a safetensors file"):
        load_state_dict_file(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_state_dict_file(path)
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a PyTorch zip checkpoint: never unpickled
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_metadata(path)


# ----------------------------------------------------------------------------- check_state_dict

def test_check_state_dict_reports_every_problem_at_once():
    expected = {"a": ((2, 3), "float32"), "b": ((4,), np.float32), "c": ((5,), np.dtype("float32")),
                "d": ((1,), np.float32), "ok": ((2,), "float64")}
    got = {"a": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.float64), "c": np.zeros(5, np.float32),
           "zz_extra": np.zeros(1), "ok": np.zeros(2)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, got)
    msg = str(info.value)
    assert "missing keys (1" in msg and ": d" in msg
    assert "unexpected keys (1" in msg and "zz_extra" in msg
    assert "shape mismatch: a: model (2, 3), state dict (3, 2)" in msg
    assert "dtype mismatch: b: model float32, state dict float64" in msg
    assert "c:" not in msg and "ok:" not in msg
    assert "To fix" in msg and "strict=False" in msg
    check_state_dict({k: (v.shape, v.dtype) for k, v in got.items()}, got)  # a match passes
    with pytest.raises(CheckpointError) as info:  # non-strict: keys may differ, shapes may not
        check_state_dict(expected, got, strict=False)
    assert "missing" not in str(info.value) and "shape mismatch: a" in str(info.value)


# ----------------------------------------------------------------------------- directories

@dataclasses.dataclass
class TinyConfig:
    vocab: int = 16
    d: int = 8
    dropout: float = 0.1
    targets: tuple = ("q", "v")


class FakeModel:
    """Stands in for nn.Module: only state_dict() is used."""

    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


def test_save_and_load_checkpoint_directory(tmp_path):
    want = sample_state()
    d = tmp_path / "run" / "ckpt"  # created on demand
    save_checkpoint(FakeModel({k: backend.to_device(v) for k, v in want.items()}), d, TinyConfig(),
                    extra={"step": 100, "val_loss": np.float32(1.5)})
    assert files_in(d) == ["config.json", "extra.json", "model.safetensors"]
    state, config = load_checkpoint(d)
    assert_same(state, want)
    assert config == {"vocab": 16, "d": 8, "dropout": 0.1, "targets": ["q", "v"]}
    assert load_extra(d) == {"step": 100, "val_loss": 1.5}
    assert json.loads(load_metadata(d / "model.safetensors")["config"]) == config

    save_checkpoint(want, d, {"vocab": 32})  # a plain state dict and a dict config; no extra
    assert load_checkpoint(d)[1] == {"vocab": 32} and load_extra(d) == {}
    os.unlink(d / "config.json")  # the copy in the header still describes the model
    assert load_checkpoint(d)[1] == {"vocab": 32}


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint({"a": np.ones(2)}, tmp_path, {"d": 1})
    (tmp_path / "config.json").write_text('{"d": 1,')
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        load_checkpoint(tmp_path)


def test_no_pickle_anywhere():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(checkpoint))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            assert not {"pickle", "cPickle", "dill", "joblib", "torch"} & {m.split(".")[0] for m in mods if m}
        if isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
            assert isinstance(node.value, ast.Name) and node.value.id == "json", ast.dump(node)
        if isinstance(node, ast.keyword):
            assert node.arg != "allow_pickle"


# ----------------------------------------------------------------------------- optimizer state on disk

def test_optimizer_state_file_resumes_bit_identically(tmp_path):
    def make():
        ps = [minipeft.tensor(np.arange(6, dtype=np.float32).reshape(2, 3) / 7, requires_grad=True),
              minipeft.tensor(np.ones(3, np.float32), requires_grad=True)]
        opt = AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}], lr=0.1, betas=(0.8, 0.9))
        return ps, opt

    grads = [[rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)] for _ in range(4)]

    def step(ps, opt, gs):
        for p, g in zip(ps, gs):
            p.grad = backend.to_device(g)
        opt.step()

    ps, opt = make()
    for gs in grads:
        step(ps, opt, gs)
    straight = [backend.to_numpy(p.data).copy() for p in ps]

    ps, opt = make()
    for gs in grads[:2]:
        step(ps, opt, gs)
    save_optimizer_state(opt, tmp_path / "optimizer.safetensors")
    save_state_dict({str(i): p.data for i, p in enumerate(ps)}, tmp_path / "params.safetensors")
    ps, opt = make()
    saved = load_state_dict_file(tmp_path / "params.safetensors")
    for i, p in enumerate(ps):
        p.data = saved[str(i)]
    opt.load_state_dict(load_optimizer_state(tmp_path / "optimizer.safetensors"))
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[1]["weight_decay"] == 0.0
    for gs in grads[2:]:
        step(ps, opt, gs)
    for a, p in zip(straight, ps):
        assert a.tobytes() == backend.to_numpy(p.data).tobytes()

    with pytest.raises(CheckpointError, match="not an optimizer state file"):
        load_optimizer_state(tmp_path / "params.safetensors")
