"""Adapter files: save_pretrained / load_adapter, in Hugging Face peft's layout.

    <dir>/adapter_config.json         {"peft_type": "LORA", "adapter_name": ..., <config fields>,
                                       "base_model_config": {...}}
    <dir>/adapter_model.safetensors   only the adapter: keys base_model.model.<path>.lora_A.weight ...

Both are written atomically (safetensors + JSON, nothing pickled). A file that does not fit the
model (other shapes, missing keys, truncated) is an error that leaves the model as it was.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields

from .. import backend
from .registry import discover, method_of

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHAPE_FIELDS = ("arch", "vocab_size", "d_model", "n_layer", "n_head", "d_ff", "n_ctx")


def save(pm, directory: str, names=None) -> None:
    """Write one adapter per folder: the first into `directory`, the others into subfolders
    named after them (all adapters by default)."""
    from ..checkpoint import save_state_dict, write_json_atomic
    names = list(pm.peft_config) if names is None else ([names] if isinstance(names, str) else names)
    for i, n in enumerate(names):
        pm._check_name(n)
        out = directory if i == 0 else os.path.join(directory, n)
        os.makedirs(out, exist_ok=True)
        state = {k: p.data for k, p in pm.adapter_parameters(n).items()}
        if not state:
            raise ValueError(f"adapter {n!r} has no parameters to save")
        cfg = pm.peft_config[n]
        state.update({k: t.data for k, t in _buffers(pm, n).items()})     # a sparse delta's indices
        meta = {"peft_type": cfg.method.upper(), "adapter_name": n, **config_to_json(cfg),
                "base_model_config": pm.config.to_dict()}
        save_state_dict(state, os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "np"})
        write_json_atomic(os.path.join(out, ADAPTER_CONFIG), meta)


def load(pm, directory: str, name: str = "default", is_trainable: bool = False) -> None:
    """Add the adapter saved in `directory` to pm under `name`, frozen unless is_trainable."""
    from ..checkpoint import check_state_dict, load_state_dict_file
    cfg_path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory!r}; save with save_pretrained(dir) first")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
        config = config_from_json(meta)
    except (ValueError, KeyError, TypeError, AttributeError) as e:   # not JSON, or not an adapter's config
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{cfg_path} is not a readable adapter config ({type(e).__name__}: {why}); "
                         "save the adapter again with save_pretrained(dir)") from None
    base, mine = meta.get("base_model_config", {}), pm.config.to_dict()
    diffs = [k for k in SHAPE_FIELDS if k in base and base[k] != mine.get(k)]
    if diffs:
        raise ValueError(f"adapter in {directory!r} was trained on a different model: "
                         + ", ".join(f"{k}={base[k]} (this model: {mine.get(k)})" for k in diffs))
    state = load_state_dict_file(os.path.join(directory, ADAPTER_WEIGHTS))   # a bad file changes nothing
    method = method_of(config)
    flags = pm._grad_flags()
    pm.add_adapter(name, config)
    try:
        params, buffers = pm.adapter_parameters(name), _buffers(pm, name)
        check_state_dict({k: (tuple(p.shape), str(p.dtype)) for k, p in {**params, **buffers}.items()}, state)
        for k, t in buffers.items():            # first, so that the parameters land where they belong
            t.data = backend.to_device(state.pop(k), dtype=t.dtype).copy()
        if hasattr(method, "load_state"):
            method.load_state(pm, name, state)
        else:
            for k, p in params.items():
                p.data = backend.to_device(state[k], dtype=p.dtype).copy()
    except Exception:
        pm._discard(name, method, flags)        # no half-loaded adapter with random weights stays behind
        raise
    for p in pm.adapter_parameters(name).values():
        p.requires_grad = is_trainable


def _buffers(pm, name) -> dict:
    """{saved key: Tensor} of arrays that travel with an adapter but do not train (a method's
    optional `buffers`: a sparse delta's indices), saved beside its parameters."""
    method = method_of(pm.peft_config[name])
    return method.buffers(pm, name) if hasattr(method, "buffers") else {}


# ----------------------------------------------------------------------------- configs <-> json

def config_to_json(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def config_from_json(meta: dict):
    methods = discover()
    peft_type = str(meta.get("peft_type", "")).lower()
    if peft_type not in methods:
        raise ValueError(f"unknown peft_type {meta.get('peft_type')!r}; known: {sorted(methods)}")
    cls = methods[peft_type].CONFIG
    kw = {f.name: tuple(meta[f.name]) if isinstance(meta[f.name], list) else meta[f.name]
          for f in fields(cls) if f.name in meta}
    return cls(**kw)
