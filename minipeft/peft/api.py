"""One API for every PEFT method: apply, named adapters, per-sample routing, counting, save/load.

    from minipeft.peft import apply, LoraConfig
    pm = apply(model, LoraConfig(r=8, lora_alpha=16, target_modules=("q", "v")))
    pm.print_trainable_parameters()
    logits, loss = pm(ids, targets)                         # trains only the adapter
    pm.add_adapter("sst2", LoraConfig(r=4)); pm.set_adapter("sst2")
    pm(ids, targets, adapter_names=["default", "sst2", None, ...])   # one adapter per sample
    with pm.disable_adapter(): ...                           # the base model
    pm.save_pretrained("out/")                               # adapter_config.json + adapter_model.safetensors
    pm = PeftModel.from_pretrained(base, "out/")

How methods plug in (each method is one file; this file knows them only through METHODS):
- A method's parameters live in `ModuleDict`s keyed by the adapter name ("default", ...), so the
  parameters of adapter `a` are exactly those whose dotted path contains the segment `.a.`;
  saving drops that segment (Hugging Face peft's key layout:
  `base_model.model.h.0.attn.q.lora_A.weight`).
- Layers that a method wraps (LoRA, adapters, BitFit) read `self.route`, a list of
  (adapter name, rows) pairs that PeftModel sets before each forward: rows=None means every
  sample of the batch, otherwise a host integer array of the samples that use that adapter.
- Methods that act on the inputs of attention (prefix tuning) or on the input embeddings (prompt
  tuning) implement `encode_inputs(pm, route, batch_size, ids=None, cache=None) -> dict` of
  extra keyword arguments for `Transformer.encode` (`prefix=...`, `prompt=...`); ids and cache
  are those of the call (an infix finds its position in the ids and keeps it in the cache).

A method module provides: `CONFIG` (its dataclass), `add(pm, name, config)`, `remove(pm, name)`
(optional), `formula(model_config, config) -> dict(trainable=..., kept=...)`, and optionally
`encode_inputs`, `merge(pm, name)`, `unmerge(pm, name)`, `state(pm, name)`/`load_state(...)`.
"""
from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, fields

from .. import backend, ops
from ..autograd import Tensor
from ..nn.module import Module, ModuleDict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
METHODS: dict = {}  # method name ("lora", ...) -> method module; filled by minipeft/peft/__init__.py


def method_of(config):
    name = getattr(config, "method", None)
    if name not in METHODS:
        raise TypeError(f"{type(config).__name__} is not a PEFT config; expected one of "
                        f"{[m.CONFIG.__name__ for m in METHODS.values()]}")
    return METHODS[name]


# ----------------------------------------------------------------------------- routing helpers

def routed_sum(x: Tensor, route, have: ModuleDict, fn, rest=None):
    """Sum over routed adapters of fn(name, x_rows), each placed back at its rows of the batch.

    x: (B, ...). route: [(name, rows or None)], names missing from `have` are skipped.
    Returns a Tensor of fn's output shape with batch B, or None when no adapter applies.
    Per-sample routing gathers each adapter's rows, runs fn on them, and scatters the results
    back with one permutation: one pass per adapter, never a pass per sample. Samples that no
    adapter claims get rest(x_rows) if `rest` is given, else zeros.
    """
    total, pieces, order = None, [], []
    for name, rows in route:
        if name not in have:
            continue
        if rows is None:
            d = fn(name, x)
            total = d if total is None else total + d
        elif len(rows):
            pieces.append(fn(name, x[backend.to_device(rows)]))
            order.extend(int(r) for r in rows)
    if pieces:
        hostnp = backend.host()
        B = x.shape[0]
        others = [r for r in range(B) if r not in set(order)]
        if others:
            if rest is not None:
                pieces.append(rest(x[backend.to_device(hostnp.asarray(others))]))
            else:
                shape = (len(others),) + tuple(pieces[0].shape[1:])
                pieces.append(Tensor(backend.xp.zeros(shape, dtype=pieces[0].dtype)))
            order.extend(others)
        inverse = hostnp.argsort(hostnp.asarray(order))       # row b of the batch is piece row inverse[b]
        placed = ops.concat(pieces, axis=0)[backend.to_device(inverse)]
        total = placed if total is None else total + placed
    return total


def block_indices(pm, layers, what: str) -> list:
    """The transformer blocks a method adapts: all of them (layers=None) or the listed ones."""
    n_layer = pm.config.n_layer
    if layers is None:
        return list(range(n_layer))
    bad = [i for i in layers if not 0 <= i < n_layer]
    if bad:
        raise ValueError(f"{what}.layers contains {bad[0]}; the model has layers 0..{n_layer - 1}")
    return list(layers)


class AdapterLayer(Module):
    """Base of layers that wrap a base module and add adapters: holds `route`."""
    route: list = []


class ModulesToSave(AdapterLayer):
    """A task head that must train and travel with the adapter (`modules_to_save=("cls_head",)`):
    each adapter gets its own trainable copy; samples without an adapter use the original."""

    def __init__(self, original: Module):
        self.original_module = original
        self.modules_to_save = ModuleDict()

    def forward(self, x):
        route = [(n, r) for n, r in self.route if n in self.modules_to_save]
        if not route:
            return self.original_module(x)
        if len(route) == 1 and route[0][1] is None:
            return self.modules_to_save[route[0][0]](x)
        if any(r is None for _, r in route):
            raise ValueError("two active adapters both carry their own copy of the same head; "
                             "activate one of them or route them per sample")
        return routed_sum(x, route, self.modules_to_save, lambda n, xs: self.modules_to_save[n](xs),
                          rest=self.original_module)


class _Holder(Module):
    """So that parameter names read `base_model.model.<path>` as in Hugging Face peft."""

    def __init__(self, model):
        self.model = model


# ----------------------------------------------------------------------------- the wrapped model

class PeftModel(Module):
    def __init__(self, model):
        self.base_model = _Holder(model)
        self.inputs = ModuleDict()            # per-adapter modules of prefix/prompt methods
        self.peft_config: dict = {}           # adapter name -> config
        self.active_adapters: list = []
        self._disabled = False

    @property
    def model(self):
        return self.base_model.model

    @property
    def config(self):
        return self.model.config

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, config) -> None:
        """Add a named adapter (trainable, not yet active unless it is the first one)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter name {name!r} must be a Python identifier, e.g. 'default' or 'sst2'")
        if name in self.peft_config:
            raise ValueError(f"an adapter named {name!r} exists already; delete_adapter({name!r}) first "
                             f"or choose another name (existing: {list(self.peft_config)})")
        method = method_of(config)
        others = {type(c).__name__ for c in self.peft_config.values()}
        if getattr(method, "EXCLUSIVE", False) and self.peft_config:
            raise ValueError(f"{type(config).__name__} changes the base weights and cannot share a model with "
                             f"other adapters (present: {sorted(others)})")
        fixed = [n for n, c in self.peft_config.items() if getattr(method_of(c), "EXCLUSIVE", False)]
        if fixed:   # its weights act on every sample, whatever adapter is set or routed
            raise ValueError(f"adapter {fixed[0]!r} ({type(self.peft_config[fixed[0]]).__name__}) changed the base "
                             f"weights in place; no other adapter can share the model (it could not be switched "
                             f"off for them). Apply {type(config).__name__} to a fresh copy of the base model")
        for path in getattr(config, "modules_to_save", ()) or ():
            self._check_head_path(path)
        flags = self._grad_flags()
        try:
            # new parameters take the base model's dtype (a float64 model gets float64 adapters)
            with backend.default_dtype_as(self.model.wte.weight.dtype):
                method.add(self, name, config)
            for path in getattr(config, "modules_to_save", ()) or ():
                holder = self.model.get_submodule(path)
                if not isinstance(holder, ModulesToSave):
                    holder = ModulesToSave(holder)
                    self.model.set_submodule(path, holder)
                head = copy_module(holder.original_module)
                head.requires_grad_(True)
                holder.modules_to_save[name] = head
        except Exception:
            self._discard(name, method, flags)   # a failed add leaves no stray (trainable) parameters
            raise
        self.peft_config[name] = config
        if not self.active_adapters:
            self.active_adapters = [name]

    def set_adapter(self, names) -> None:
        """Make one adapter (a name) or several (a list; their effects add up) active."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            self._check_name(n)
        self.active_adapters = names

    def delete_adapter(self, name: str) -> None:
        self._check_name(name)
        method = method_of(self.peft_config[name])
        if hasattr(method, "remove"):
            method.remove(self, name)
        else:
            self._remove_generic(name)
        del self.peft_config[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _grad_flags(self) -> dict:
        return {id(p): p.requires_grad for p in self.parameters()}

    def _discard(self, name: str, method, flags: dict) -> None:
        """Undo a failed add_adapter/load_adapter of `name`: remove what it added, restore every
        requires_grad flag, free the name. Never raises (the caller re-raises the first error)."""
        try:
            if hasattr(method, "remove") and not getattr(method, "EXCLUSIVE", False):
                method.remove(self, name)
            else:
                self._remove_generic(name)
        except Exception:
            pass
        for p in self.parameters():
            if id(p) in flags:
                p.requires_grad = flags[id(p)]
        self.peft_config.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _remove_generic(self, name: str) -> None:
        for _, mod in list(self.named_modules()):
            if isinstance(mod, ModuleDict) and name in mod:
                del mod[name]

    def _check_head_path(self, path):
        try:
            self.model.get_submodule(path)
        except KeyError as e:
            raise ValueError(f"modules_to_save: {e.args[0]}") from None

    def _check_name(self, name):
        if name not in self.peft_config:
            raise KeyError(f"no adapter named {name!r}; adapters: {list(self.peft_config)}")

    @contextmanager
    def disable_adapter(self):
        """`with pm.disable_adapter():` runs the plain base model (no adapter at all)."""
        fixed = [n for n, c in self.peft_config.items() if not getattr(method_of(c), "CAN_DISABLE", True)]
        if fixed:
            raise ValueError(f"adapter(s) {fixed} changed the base weights in place "
                             f"({type(self.peft_config[fixed[0]]).__name__}); there is no base model to go back to")
        saved, self._disabled = self._disabled, True
        try:
            yield
        finally:
            self._disabled = saved

    # ------------------------------------------------------------------ forward
    def _route(self, adapter_names, batch_size: int):
        if self._disabled:
            return []
        if adapter_names is None:
            return [(n, None) for n in self.active_adapters]
        if len(adapter_names) != batch_size:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch_size}; "
                             f"give one adapter name (or None for the base model) per sample")
        hostnp = backend.host()
        groups = {}
        for i, n in enumerate(adapter_names):
            if n is None:
                continue
            self._check_name(n)
            groups.setdefault(n, []).append(i)
        return [(n, hostnp.asarray(rows)) for n, rows in groups.items()]

    @contextmanager
    def _routing(self, adapter_names, batch_size):
        route = self._route(adapter_names, batch_size)
        layers = [m for m in self.modules() if isinstance(m, AdapterLayer)]
        for m in layers:
            m.route = route
        try:
            yield route
        finally:
            for m in layers:
                m.route = []

    def _encode_kwargs(self, route, batch_size, ids=None, cache=None):
        kw = {}
        for method in {method_of(self.peft_config[n]) for n, _ in route}:
            if hasattr(method, "encode_inputs"):
                for k, v in method.encode_inputs(self, route, batch_size, ids=ids, cache=cache).items():
                    if k in kw:
                        raise ValueError(f"two active methods both provide {k!r}; activate one of them")
                    kw[k] = v
        return kw

    def encode(self, ids, attention_mask=None, token_type_ids=None, prefix=None, cache=None, prompt=None,
               adapter_names=None):
        """Hidden states (B, T, d) of the adapted model, without soft-prompt positions.

        Same signature as Transformer.encode (so generation works on a PeftModel) plus
        adapter_names: one adapter name (or None for the base model) per sample.
        """
        B, T = len(ids), len(ids[0])
        with self._routing(adapter_names, B) as route:
            kw = self._encode_kwargs(route, B, ids=ids, cache=cache)
            if prefix is not None:
                kw["prefix"] = prefix if "prefix" not in kw else \
                    [(ops.concat([a, c], axis=2), ops.concat([b, d], axis=2)) for (a, b), (c, d) in zip(prefix, kw["prefix"])]
            if prompt is not None:
                kw["prompt"] = prompt if "prompt" not in kw else ops.concat([prompt, kw["prompt"]], axis=1)
            if cache is not None and "k" in cache[0]:
                kw.pop("prompt", None)           # the soft prompt is in the cache already
            h = self.model.encode(ids, attention_mask, token_type_ids, cache=cache, **kw)
        return h[:, h.shape[1] - T:] if h.shape[1] > T else h     # drop soft-prompt positions

    def lm_logits(self, h):
        return self.model.lm_logits(h)

    def new_cache(self) -> list:
        return self.model.new_cache()

    def forward(self, ids, targets=None, attention_mask=None, token_type_ids=None, adapter_names=None):
        """Like Transformer.forward: (logits (B, T, V), loss or None)."""
        logits = self.model.lm_logits(self.encode(ids, attention_mask, token_type_ids, adapter_names=adapter_names))
        return logits, (None if targets is None else ops.cross_entropy(logits, targets))

    def classify(self, ids, attention_mask=None, token_type_ids=None, adapter_names=None):
        """(B, n_labels) logits; the head may itself be a per-adapter copy (modules_to_save)."""
        if not self.config.n_labels:
            raise ValueError("the base model has no classification head: build it with n_labels > 0")
        B = len(ids)
        with self._routing(adapter_names, B) as route:
            kw = self._encode_kwargs(route, B, ids=ids)
            h = self.model.encode(ids, attention_mask, token_type_ids, **kw)
            T = len(ids[0])
            if h.shape[1] > T:                   # drop soft-prompt positions
                h = h[:, h.shape[1] - T:]
            return self.model.cls_head(self.model.pooled(h, attention_mask))

    # ------------------------------------------------------------------ merging
    def merge_adapter(self, names=None) -> None:
        """Fold the active (or given) adapters into the base weights: same outputs, no extra cost."""
        for n in self._names(names):
            m = method_of(self.peft_config[n])
            if not hasattr(m, "merge") and getattr(m, "EXCLUSIVE", False):
                raise ValueError(f"{type(self.peft_config[n]).__name__} cannot be merged: it trained the base "
                                 f"model's own parameters in place, so they are the weights already (use pm.model)")
            if not hasattr(m, "merge"):
                raise ValueError(f"{type(self.peft_config[n]).__name__} cannot be merged into the weights "
                                 f"(it adds inputs or a nonlinearity); mergeable methods: lora")
            m.merge(self, n)

    def unmerge_adapter(self, names=None) -> None:
        for n in self._names(names):
            method_of(self.peft_config[n]).unmerge(self, n)

    def merge_and_unload(self):
        """Merge the active adapters and return the plain base model (now carrying them). A task
        head of modules_to_save is replaced by the active adapter's trained copy, as in HF peft."""
        heads = [(path, mod) for path, mod in self.model.named_modules() if isinstance(mod, ModulesToSave)]
        for path, mod in heads:
            if sum(n in mod.modules_to_save for n in self.active_adapters) > 1:
                raise ValueError(f"active adapters {self.active_adapters} each carry their own copy of {path!r}; "
                                 f"set_adapter(one of them) before merge_and_unload()")
        self.merge_adapter()
        for n in list(self.peft_config):
            m = method_of(self.peft_config[n])
            if hasattr(m, "unload"):
                m.unload(self, n)
        for path, mod in heads:
            copies = [mod.modules_to_save[n] for n in self.active_adapters if n in mod.modules_to_save]
            self.model.set_submodule(path, copies[0] if copies else mod.original_module)
        return self.model

    def _names(self, names):
        names = self.active_adapters if names is None else ([names] if isinstance(names, str) else names)
        for n in names:
            self._check_name(n)
        return list(names)

    # ------------------------------------------------------------------ counting
    def adapter_parameters(self, name: str) -> dict:
        """{saved key: Parameter} of one adapter (keys without the adapter name, HF layout)."""
        self._check_name(name)
        m = method_of(self.peft_config[name])
        if hasattr(m, "state"):
            return m.state(self, name)
        return self._owned_parameters(name)

    def _owned_parameters(self, name: str) -> dict:
        """Parameters that exist only because of adapter `name`: those under the entry `name` of a
        ModuleDict, keyed by their path without that segment. (Matching the segment anywhere in the
        path would also take base weights when an adapter is named like a module: "v", "q", "h".)
        A task-head copy is keyed like the head itself (`base_model.model.cls_head.weight`), as
        Hugging Face peft saves modules_to_save."""
        out, seen = {}, set()
        for path, mod in self.named_modules():
            if isinstance(mod, ModuleDict) and name in mod:
                head = path.removesuffix(".modules_to_save")
                if head != path and isinstance(self.get_submodule(head), ModulesToSave):
                    path = head
                for sub, p in mod[name].named_parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        out[f"{path}.{sub}"] = p
        return out

    def trainable_summary(self) -> dict:
        trainable = sum(p.size for p in self.parameters() if p.requires_grad)
        total = self.num_parameters()
        adapter = sum(sum(p.size for p in self._owned_parameters(n).values()) for n in self.peft_config)
        return {"trainable": trainable, "total": total, "base": total - adapter, "adapter": adapter}

    def print_trainable_parameters(self, per_module: bool = False) -> str:
        """`trainable params: N || all params: M || trainable%: P` (M includes the adapters, as in HF
        peft; `% of base` divides by the base model alone, as AdapterHub does). Returns the text."""
        s = self.trainable_summary()
        lines = [f"trainable params: {s['trainable']:,} || all params: {s['total']:,} || "
                 f"trainable%: {100 * s['trainable'] / s['total']:.4f} || % of base: "
                 f"{100 * s['trainable'] / max(s['base'], 1):.4f}"]
        for n, cfg in self.peft_config.items():
            f = method_of(cfg).formula(self.config, cfg)
            counted = sum(p.size for p in self.adapter_parameters(n).values())
            lines.append(f"  adapter {n!r} ({type(cfg).__name__}): counted {counted:,}, formula "
                         f"{f['trainable']:,} trained / {f['kept']:,} kept")
        if per_module:
            for path, p in self.named_parameters():
                if p.requires_grad:
                    lines.append(f"    {path:60s} {str(tuple(p.shape)):>16s} {p.size:>10,}")
        text = "\n".join(lines)
        print(text)
        return text

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str, names=None) -> None:
        """Write adapter_config.json + adapter_model.safetensors for one adapter (the active one
        by default) into `directory`; other adapters go into subfolders named after them."""
        from ..checkpoint import save_state_dict, write_json_atomic
        names = list(self.peft_config) if names is None else ([names] if isinstance(names, str) else names)
        for i, n in enumerate(names):
            self._check_name(n)
            out = directory if i == 0 else os.path.join(directory, n)
            os.makedirs(out, exist_ok=True)
            state = {k: p.data for k, p in self.adapter_parameters(n).items()}
            if not state:
                raise ValueError(f"adapter {n!r} has no parameters to save")
            cfg = self.peft_config[n]
            meta = {"peft_type": cfg.method.upper(), "adapter_name": n, **_config_to_json(cfg),
                    "base_model_config": self.config.to_dict()}
            save_state_dict(state, os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "np"})
            write_json_atomic(os.path.join(out, ADAPTER_CONFIG), meta)

    def load_adapter(self, directory: str, name: str = "default", is_trainable: bool = False) -> None:
        """Add the adapter saved in `directory` under `name`. Like HF peft, a loaded adapter is
        frozen unless is_trainable=True (then it can be trained further)."""
        from ..checkpoint import load_state_dict_file, check_state_dict
        cfg_path = os.path.join(directory, ADAPTER_CONFIG)
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory!r}; save with save_pretrained(dir) first")
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
        config = config_from_json(meta)
        base = meta.get("base_model_config", {})
        mine = self.config.to_dict()
        diffs = [k for k in ("arch", "vocab_size", "d_model", "n_layer", "n_head", "d_ff", "n_ctx")
                 if k in base and base[k] != mine.get(k)]
        if diffs:
            raise ValueError(f"adapter in {directory!r} was trained on a different model: "
                             + ", ".join(f"{k}={base[k]} (this model: {mine.get(k)})" for k in diffs))
        state = load_state_dict_file(os.path.join(directory, ADAPTER_WEIGHTS))   # a bad file changes nothing
        m = method_of(config)
        flags = self._grad_flags()
        self.add_adapter(name, config)
        try:
            params = self.adapter_parameters(name)
            check_state_dict({k: (tuple(p.shape), str(p.dtype)) for k, p in params.items()}, state)
            if hasattr(m, "load_state"):
                m.load_state(self, name, state)
            else:
                for k, p in params.items():
                    p.data = backend.to_device(state[k], dtype=p.dtype).copy()
        except Exception:
            self._discard(name, m, flags)        # no half-loaded adapter with random weights stays behind
            raise
        for p in self.adapter_parameters(name).values():
            p.requires_grad = is_trainable

    @classmethod
    def from_pretrained(cls, model, directory: str, name: str = "default", is_trainable: bool = False):
        pm = cls(model)
        model.freeze()
        pm.load_adapter(directory, name, is_trainable)
        return pm


def apply(model, config, name: str = "default") -> PeftModel:
    """Freeze `model` and add the adapter described by `config`. Returns the PeftModel."""
    if isinstance(model, PeftModel):
        raise TypeError("this model is already a PeftModel: use pm.add_adapter(name, config)")
    pm = PeftModel(model)
    model.freeze()
    pm.add_adapter(name, config)
    return pm


get_peft_model = apply  # the Hugging Face name


# ----------------------------------------------------------------------------- configs <-> json

def _config_to_json(cfg) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_from_json(meta: dict):
    peft_type = str(meta.get("peft_type", "")).lower()
    if peft_type not in METHODS:
        raise ValueError(f"unknown peft_type {meta.get('peft_type')!r}; known: {sorted(METHODS)}")
    cls = METHODS[peft_type].CONFIG
    kw = {}
    for f in fields(cls):
        if f.name in meta:
            v = meta[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def copy_module(m: Module) -> Module:
    """A deep copy of a module (used for per-adapter copies of a task head)."""
    return copy.deepcopy(m)
