"""Saving and loading weights: safetensors for arrays, JSON for everything else.

    save_checkpoint(model, "runs/lora", config)          # runs/lora/model.safetensors + config.json
    state, config = load_checkpoint("runs/lora")
    model.load_state_dict(state)

Why safetensors: the file is a JSON header (names, dtypes, shapes, byte offsets) followed by the
raw bytes of the arrays. Loading it cannot run code. A pickle-based format (torch.save, NumPy
object arrays) can run any code hidden in the file, so NOTHING is ever unpickled in
minipeft.

Every write is atomic: the bytes go to a temporary file in the same directory, which is
flushed to disk (fsync) and then renamed over the target (`os.replace`, atomic on POSIX and
Windows). A crash or an exception mid-save leaves the previous checkpoint as it was, never a
half-written file under the real name. (A directory of two files is not updated atomically as a
whole: each file is, and `model.safetensors` is written before `config.json`.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import struct

from safetensors import SafetensorError, safe_open
from safetensors import numpy as st_numpy  # the host-array API: arrays go through backend.to_numpy

from . import backend
from .autograd import Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
EXTRA_NAME = "extra.json"


class CheckpointError(ValueError):
    """A checkpoint file or state dict is unusable; the message says what is wrong and how to fix it."""


# ============================================================================= atomic writes

def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX). Not possible on every platform; then skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path, write) -> None:
    """Call `write(tmp_path)` to create a temporary file next to `path`, fsync it, then rename it
    over `path`. On any exception the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # a hidden name in the same directory (a rename across file systems would not be atomic)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # the mode a new file gets here (0o666 minus the umask), or the mode of the file we replace;
        # safetensors creates its files 0o600, which would hide checkpoints from the group
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = os.stat(path if os.path.exists(path) else tmp).st_mode & 0o7777
        write(tmp)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the new name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _json_default(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # NumPy/CuPy scalars, 0-d arrays
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} value {obj!r} is not JSON serialisable; configs and extras "
                    f"must hold numbers, strings, booleans, None, lists and dicts")


def write_text_atomic(path, text: str) -> None:
    """Write a UTF-8 text file atomically (a reader sees the old file or the new one, never half)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
    _atomic_write(path, write)


def write_json_atomic(path, obj) -> None:
    """Write `obj` as indented JSON to `path`, atomically. Dataclasses, NumPy scalars and paths are
    converted; anything else that JSON cannot hold raises TypeError before any file is touched."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
    _atomic_write(path, write)


# ============================================================================= one safetensors file

def _to_host(name, value):
    """A state-dict value (backend array or Tensor) -> a C-contiguous NumPy array."""
    if isinstance(value, Tensor):
        value = value.data
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, expected an array; "
                        f"put numbers and strings in the metadata or config instead")
    a = backend.to_numpy(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"state dict entry {name!r} has dtype {a.dtype}, which safetensors cannot "
                        f"store; use a bool, integer or float array")
    # safetensors writes the raw buffer in C order: a transposed or strided view must be copied,
    # or it is silently saved with its elements scrambled (safetensors 0.8.0, issue #825)
    return a if a.flags.c_contiguous else a.copy(order="C")


def save_state_dict(state_dict: dict, path, metadata: dict | None = None) -> None:
    """Write name -> array to a safetensors file, atomically.

    metadata: string -> string, stored in the file header (e.g. {"config": json.dumps(cfg)}).
    Arrays may live on either backend; they are copied to the host to be written.
    """
    if metadata is not None:
        bad = {k: type(v).__name__ for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"safetensors metadata must map strings to strings; these entries are not: {bad}. "
                            f"Encode structured values with json.dumps")
    host = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be strings, got {name!r}")
        host[name] = _to_host(name, value)
    _atomic_write(path, lambda tmp: st_numpy.save_file(host, tmp, metadata=metadata))


def _diagnose(path: str) -> str:
    """Say in words why `path` is not a readable safetensors file (read only its header)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return (f"the file has {size} bytes, fewer than the 8-byte header length of every "
                    f"safetensors file: it is empty or truncated")
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            return ("it is a zip archive or a pickle (a PyTorch .bin/.pt checkpoint?), not safetensors; "
                    "minipeft never unpickles files: convert it to safetensors with a trusted tool")
        (n,) = struct.unpack("<Q", head)
        first = f.read(1)
        if first != b"{" or n > 100_000_000:
            return f"it is not a safetensors file (it begins with {head!r})"
        if 8 + n > size:
            return (f"the file is truncated: its header alone should be {n} bytes, but the whole "
                    f"file has {size}")
        try:
            header = json.loads(first + f.read(n - 1))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "its header is not valid safetensors JSON (corrupted?)"
    if 8 + n + end > size:
        return (f"the file is truncated: its arrays need {8 + n + end} bytes, but the file has {size} "
                f"(an interrupted copy or download?)")
    return "its contents do not match its header (corrupted?)"


def _open_error(path: str, err: Exception) -> CheckpointError:
    try:
        why = _diagnose(path)
    except OSError as e:  # a diagnosis must never hide the real error
        why = f"it could not be read ({e})"
    return CheckpointError(f"cannot load checkpoint {path!r}: {why}. (safetensors said: {err}.) "
                           f"To fix: re-save the checkpoint, or copy the file again from its source.")


def _check_file(path: str) -> None:
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory; pass the .safetensors file inside it, or use "
                              f"load_checkpoint({path!r}) for a directory written by save_checkpoint")
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        there = sorted(os.listdir(parent)) if os.path.isdir(parent) else None
        where = (f"the directory holds {there}" if there is not None
                 else f"the directory {parent!r} does not exist either")
        raise FileNotFoundError(f"no checkpoint file at {path!r}; {where}")


def load_state_dict_file(path, device: bool = True) -> dict:
    """Read a safetensors file -> dict name -> array (keys in sorted order, as the file stores them).

    device=True: arrays on the current backend (GPU under CuPy); False: NumPy arrays on the host.
    A missing file raises FileNotFoundError; a truncated or foreign file raises CheckpointError
    saying which and how to fix it.
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        with safe_open(path, framework="np") as f:
            host = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, TypeError) as e:
        raise _open_error(path, e) from e
    if not device:
        return host
    return {k: backend.to_device(v) for k, v in host.items()}


def load_metadata(path) -> dict:
    """The string -> string metadata in a safetensors file's header (empty dict when none)."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with safe_open(path, framework="np") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, ValueError, TypeError) as e:
        raise _open_error(path, e) from e


# ============================================================================= checking a state dict

def _dtype_name(dt) -> str:
    try:
        return backend.host().dtype(dt).name
    except TypeError:
        return str(dt)


def check_state_dict(expected: dict, got: dict, strict: bool = True) -> None:
    """Compare a state dict with what a model expects; raise one CheckpointError listing EVERY problem.

    expected: name -> (shape, dtype), dtype as a NumPy dtype, type or string ("float32").
    got:      name -> array (anything with .shape and .dtype).
    Reported together: missing keys, unexpected keys (both only when strict), shape mismatches
    and dtype mismatches (always: such an array cannot be loaded). Returns None when all is well.
    """
    missing = sorted(k for k in expected if k not in got) if strict else []
    unexpected = sorted(k for k in got if k not in expected) if strict else []
    shapes, dtypes = [], []
    for name in expected:
        if name not in got:
            continue
        want_shape, want_dtype = expected[name]
        value = got[name]
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            shapes.append(f"{name}: expected an array of shape {tuple(want_shape)}, got a {type(value).__name__}")
            continue
        if tuple(value.shape) != tuple(want_shape):
            shapes.append(f"{name}: model {tuple(want_shape)}, state dict {tuple(value.shape)}")
        if _dtype_name(value.dtype) != _dtype_name(want_dtype):
            dtypes.append(f"{name}: model {_dtype_name(want_dtype)}, state dict {_dtype_name(value.dtype)}")
    if not (missing or unexpected or shapes or dtypes):
        return
    lines = ["the state dict does not match the model:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}, in the model but not in the state dict): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}, in the state dict but not in the model): "
                     f"{', '.join(unexpected)}")
    lines += [f"  shape mismatch: {s}" for s in shapes]
    lines += [f"  dtype mismatch: {s}" for s in dtypes]
    fixes = []
    if missing or unexpected or shapes:
        fixes.append("build the model with the config the checkpoint was saved with (config.json next to it); "
                     "load base weights before applying a PEFT method; for a deliberately partial state "
                     "dict use load_state_dict(..., strict=False)")
    if dtypes:
        fixes.append("cast the model (model.to(dtype)) or the arrays (.astype) to one dtype first")
    lines.append("To fix: " + "; ".join(fixes) + ".")
    raise CheckpointError("\n".join(lines))


# ============================================================================= a model directory

def _config_dict(config) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"config must be a dict or a dataclass instance, got {type(config).__name__}")


def save_checkpoint(model, directory, config, extra: dict | None = None) -> None:
    """Write `directory/model.safetensors` (the model's state dict) and `directory/config.json`.

    model: a Module (its `state_dict()` is saved) or a state dict itself.
    config: dict or dataclass: what is needed to rebuild the model. It is also copied into the
    safetensors header (metadata "config"), so the weights file alone can be understood.
    extra: optional JSON-able dict (training step, metrics, scheduler state...) written to
    `directory/extra.json`; read it back with `load_extra`. Without `extra`, a stale extra.json
    from an earlier save is removed so that the directory describes one save.
    Every file is written atomically; the directory is created if needed.
    """
    directory = os.fspath(directory)
    cfg = _config_dict(config)
    cfg_text = json.dumps(cfg, default=_json_default)  # fails early (TypeError) if not JSON-able
    state = model.state_dict() if hasattr(model, "state_dict") else model
    os.makedirs(directory, exist_ok=True)
    save_state_dict(state, os.path.join(directory, WEIGHTS_NAME),
                    metadata={"format": "minipeft", "config": cfg_text})
    write_json_atomic(os.path.join(directory, CONFIG_NAME), cfg)
    extra_path = os.path.join(directory, EXTRA_NAME)
    if extra is not None:
        write_json_atomic(extra_path, extra)
    elif os.path.exists(extra_path):
        os.unlink(extra_path)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path!r} is not valid JSON ({e}); it was edited by hand or cut short: "
                              f"fix it or re-save the checkpoint") from e


def load_checkpoint(directory, device: bool = True) -> tuple[dict, dict]:
    """Read a directory written by `save_checkpoint` -> (state_dict, config_dict).

    The config comes from config.json (which you may edit); if that file is missing, from the
    copy in the safetensors header.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        hint = (" (that is a file: use load_state_dict_file for a single .safetensors file)"
                if os.path.isfile(directory) else "")
        raise FileNotFoundError(f"no checkpoint directory at {directory!r}{hint}")
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{directory!r} holds no {WEIGHTS_NAME} (it holds {sorted(os.listdir(directory))}); "
                                f"is it a directory written by save_checkpoint?")
    state = load_state_dict_file(weights, device=device)
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if os.path.exists(cfg_path):
        config = _read_json(cfg_path)
    else:
        meta = load_metadata(weights)
        if "config" not in meta:
            raise CheckpointError(f"{directory!r} has no {CONFIG_NAME} and {WEIGHTS_NAME} carries no config; "
                                  f"write the model's config to {cfg_path!r}")
        config = json.loads(meta["config"])
    return state, config


def load_extra(directory) -> dict:
    """The `extra` dict saved by `save_checkpoint` ({} when none was saved)."""
    path = os.path.join(os.fspath(directory), EXTRA_NAME)
    return _read_json(path) if os.path.exists(path) else {}


# ============================================================================= optimizer state

def save_optimizer_state(optimizer, path) -> None:
    """Write an optimizer's state (e.g. AdamW's m, v and step counts) to a safetensors file, atomically.

    optimizer: a minipeft optimizer, or its `state_dict()`. Arrays are stored as
    "state.<position>.<name>"; step counts and the parameter groups go to the header as JSON.
    """
    sd = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    arrays, scalars = {}, {}
    for pos, st in sd["state"].items():
        scalars[str(pos)] = {}
        for k, v in st.items():
            if hasattr(v, "shape"):
                arrays[f"state.{pos}.{k}"] = v
            else:
                scalars[str(pos)][k] = v
    meta = {"format": "minipeft-optimizer",
            "param_groups": json.dumps(sd["param_groups"], default=_json_default),
            "scalars": json.dumps(scalars, default=_json_default)}
    save_state_dict(arrays, path, metadata=meta)


def load_optimizer_state(path, device: bool = True) -> dict:
    """Read a file written by `save_optimizer_state` -> a dict for `optimizer.load_state_dict`."""
    path = os.fspath(path)
    meta = load_metadata(path)
    if meta.get("format") != "minipeft-optimizer":
        raise CheckpointError(f"{path!r} is not an optimizer state file (its header says format="
                              f"{meta.get('format')!r}); pass the file written by save_optimizer_state")
    arrays = load_state_dict_file(path, device=device)
    state = {int(pos): dict(sc) for pos, sc in json.loads(meta["scalars"]).items()}
    for name, a in arrays.items():
        _, pos, key = name.split(".", 2)
        state.setdefault(int(pos), {})[key] = a
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


__all__ = ["CheckpointError", "save_state_dict", "load_state_dict_file", "load_metadata", "check_state_dict",
           "save_checkpoint", "load_checkpoint", "load_extra", "write_json_atomic", "save_optimizer_state",
           "load_optimizer_state", "WEIGHTS_NAME", "CONFIG_NAME", "EXTRA_NAME"]
