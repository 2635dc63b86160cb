"""PeftModel: a frozen base model plus named adapters, and their lifecycle.

    from minipeft.peft import apply, LoraConfig
    pm = apply(model, LoraConfig(r=8, lora_alpha=16, target_modules=("q", "v")))
    pm.print_trainable_parameters()
    logits, loss = pm(ids, targets)                         # trains only the adapter
    pm.add_adapter("sst2", LoraConfig(r=4)); pm.set_adapter("sst2")
    pm(ids, targets, adapter_names=["default", "sst2", None, ...])   # one adapter per sample
    with pm.disable_adapter(): ...                           # the base model
    pm.merge_adapter(); pm.unmerge_adapter(); plain = pm.merge_and_unload()
    pm.save_pretrained("out/")                               # adapter_config.json + adapter_model.safetensors
    pm = PeftModel.from_pretrained(base, "out/")

The methods plug in through the registry (registry.py, which writes down the method contract);
routing.py decides which adapter acts on which sample, io.py reads and writes adapter files.
The parameters of adapter `a` are exactly those under the entry `a` of a ModuleDict; saving
drops that segment (Hugging Face peft's key layout: `base_model.model.h.0.attn.q.lora_A.weight`).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

from .. import backend, ops
from ..autograd import no_grad
from ..nn.module import Module, ModuleDict
from . import io, parametrize, routing
from .registry import discover, method_of
from .routing import ModulesToSave


class _Holder(Module):
    """So that parameter names read `base_model.model.<path>` as in Hugging Face peft."""

    def __init__(self, model):
        self.model = model


def _flag(method, name: str) -> bool:
    """A method's optional flag (registry.py): EXCLUSIVE, STARTS_AT_BASE and ONE_PROCESS default False,
    CAN_DISABLE True."""
    return getattr(method, name, name == "CAN_DISABLE")


class PeftModel(Module):
    def __init__(self, model):
        self.base_model = _Holder(model)
        self.inputs = ModuleDict()            # per-adapter modules of prefix/prompt methods
        self.deltas = ModuleDict()            # per-adapter W = W0 + Delta parametrisations (parametrize.py)
        self.peft_config: dict = {}           # adapter name -> config
        self.active_adapters: list = []
        self._disabled = False
        self._session = None                  # inside inference_session: what a pass reuses

    @contextmanager
    def inference_session(self):
        """For many forward passes that change no parameter (generation: one per new token), the
        parts that each pass would rebuild from the adapters' parameters are built once and reused:
        the list of adapter layers that routing walks, the effective weights W0 + Delta of the
        parametrised methods, a prefix adapter's per-layer (k_p, v_p). Only for the active adapters
        on every sample (a pass with adapter_names= builds its own); gradients are off inside.
        Nested sessions share the outer one; on leaving, everything built is dropped."""
        if self._session is not None:
            yield
            return
        self._session = {}
        try:
            with no_grad():
                yield
        finally:
            self._session = None

    @property
    def model(self):
        return self.base_model.model

    @property
    def config(self):
        return self.model.config

    # ------------------------------------------------------------------ adding and removing adapters
    def add_adapter(self, name: str, config) -> None:
        """Add a named adapter (trainable, not yet active unless it is the first one)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter name {name!r} must be a Python identifier, e.g. 'default' or 'sst2'")
        if name in self.peft_config:
            raise ValueError(f"an adapter named {name!r} exists already; delete_adapter({name!r}) first "
                             f"or choose another name (existing: {list(self.peft_config)})")
        method = method_of(config)
        others = {type(c).__name__ for c in self.peft_config.values()}
        if _flag(method, "EXCLUSIVE") and self.peft_config:
            raise ValueError(f"{type(config).__name__} changes the base weights and cannot share a model with "
                             f"other adapters (present: {sorted(others)})")
        fixed = [n for n, c in self.peft_config.items() if _flag(method_of(c), "EXCLUSIVE")]
        if fixed:   # its weights act on every sample, whatever adapter is set or routed
            raise ValueError(f"adapter {fixed[0]!r} ({type(self.peft_config[fixed[0]]).__name__}) changed the base "
                             f"weights in place; no other adapter can share the model (it could not be switched "
                             f"off for them). Apply {type(config).__name__} to a fresh copy of the base model")
        heads = getattr(config, "modules_to_save", ()) or ()
        for path in heads:
            self._check_head_path(path)
        flags = self._grad_flags()
        try:
            # new parameters take the base model's dtype (a float64 model gets float64 adapters)
            with backend.default_dtype_as(self.model.wte.weight.dtype):
                method.add(self, name, config)
            for path in heads:
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
        cfg = self.peft_config[name]
        method = method_of(cfg)
        if _flag(method, "EXCLUSIVE"):
            raise ValueError(f"{type(cfg).__name__} changed the base model's own parameters in place; it cannot "
                             f"be deleted. Reload the pretrained checkpoint to get the base model back")
        self._remove(name, method)
        del self.peft_config[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _grad_flags(self) -> dict:
        return {id(p): p.requires_grad for p in self.parameters()}

    def _discard(self, name: str, method, flags: dict) -> None:
        """Undo a failed add_adapter/load_adapter of `name`: remove what it added, restore every
        requires_grad flag, free the name. Never raises (the caller re-raises the first error)."""
        try:
            self._remove(name, method)
        except Exception:
            pass
        for p in self.parameters():
            if id(p) in flags:
                p.requires_grad = flags[id(p)]
        self.peft_config.pop(name, None)
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def _remove(self, name: str, method) -> None:
        """Undo add_adapter(name): the method's remove (or the generic one), then put the original
        task head back where no adapter keeps a copy of it."""
        if hasattr(method, "remove"):
            method.remove(self, name)
        else:
            self._remove_generic(name)
        for path, mod in list(self.model.named_modules()):
            if isinstance(mod, ModulesToSave) and not mod.modules_to_save.keys():
                self.model.set_submodule(path, mod.original_module)

    def _remove_generic(self, name: str) -> None:
        """Drop the entry `name` of every ModuleDict (an adapter's parameters, its head copies)."""
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
        fixed = [n for n, c in self.peft_config.items() if not _flag(method_of(c), "CAN_DISABLE")]
        if fixed:
            raise ValueError(f"adapter(s) {fixed} changed the base weights in place "
                             f"({type(self.peft_config[fixed[0]]).__name__}); there is no base model to go back to")
        saved, self._disabled = self._disabled, True
        try:
            yield
        finally:
            self._disabled = saved

    # ------------------------------------------------------------------ forward
    def _encode(self, ids, attention_mask, token_type_ids, adapter_names, prefix=None, cache=None, prompt=None,
                head=None, **positions):
        """Hidden states of the adapted model without soft-prompt positions, or head(them): the
        route is set on every adapter layer meanwhile (a task-head copy is routed too)."""
        B, T = len(ids), len(ids[0])
        with routing.routing(self, adapter_names, B) as route, parametrize.effective_weights(self, route, B):
            kw = routing.encode_inputs(self, route, B, ids=ids, cache=cache, prefix=prefix, prompt=prompt)
            h = self.model.encode(ids, attention_mask, token_type_ids, cache=cache, **kw, **positions)
            h = h[:, h.shape[1] - T:] if h.shape[1] > T else h                      # drop soft-prompt positions
            return h if head is None else head(h)

    def encode(self, ids, attention_mask=None, token_type_ids=None, prefix=None, cache=None, prompt=None,
               position_ids=None, adapter_names=None):
        """Hidden states (B, T, d) of the adapted model, without soft-prompt positions.

        Same signature as Transformer.encode (so generation works on a PeftModel) plus
        adapter_names: one adapter name (or None for the base model) per sample. A prefix= or
        prompt= given here goes in front of the adapters' own rows.
        """
        positions = {} if position_ids is None else {"position_ids": position_ids}
        return self._encode(ids, attention_mask, token_type_ids, adapter_names, prefix, cache, prompt, **positions)

    def lm_logits(self, h):
        with self._weights(None, len(h)):                 # a tied LM head reads the effective wte
            return self.model.lm_logits(h)

    @contextmanager
    def _weights(self, adapter_names, batch_size: int):
        """The effective weights W0 + Delta of the routed adapters (parametrize.py) for a block."""
        with parametrize.effective_weights(self, routing.route_of(self, adapter_names, batch_size), batch_size):
            yield

    def new_cache(self, capacity: int | None = None) -> list:
        return self.model.new_cache(capacity)

    def forward(self, ids, targets=None, attention_mask=None, token_type_ids=None, adapter_names=None):
        """Like Transformer.forward: (logits (B, T, V), loss or None)."""
        with self._weights(adapter_names, len(ids)):     # one W0 + Delta for encode and the LM head
            logits = self.model.lm_logits(self.encode(ids, attention_mask, token_type_ids, adapter_names=adapter_names))
        return logits, (None if targets is None else ops.cross_entropy(logits, targets))

    def classify(self, ids, attention_mask=None, token_type_ids=None, adapter_names=None):
        """(B, n_labels) logits; the head may itself be a per-adapter copy (modules_to_save)."""
        if not self.config.n_labels:
            raise ValueError("the base model has no classification head: build it with n_labels > 0")
        return self._encode(ids, attention_mask, token_type_ids, adapter_names,
                            head=lambda h: self.model.cls_head(self.model.pooled(h, attention_mask)))

    def aux_loss(self):
        """The active adapters' auxiliary loss terms summed (an L0 or L1 penalty), or None;
        train.fit adds it to the task loss (parametrize.py)."""
        return parametrize.aux_loss(self)

    def before_step(self, step: int, optimizer) -> None:
        """The active adapters' hooks between backward and optimizer.step() (gradient masks);
        train.fit calls it every step (parametrize.py)."""
        parametrize.before_step(self, step, optimizer)

    def one_process_only(self) -> list:
        """The active adapters whose method trains in one process only (ONE_PROCESS, registry.py)."""
        return [n for n in ([] if self._disabled else self.active_adapters)
                if _flag(method_of(self.peft_config[n]), "ONE_PROCESS")]

    def context_positions(self) -> int:
        """Positions of n_ctx that the active adapters take (soft prompts): batches and generation
        prompts must leave this much room."""
        if self._disabled:
            return 0
        return sum(getattr(method_of(self.peft_config[n]), "context_positions", lambda c: 0)(self.peft_config[n])
                   for n in self.active_adapters)

    # ------------------------------------------------------------------ merging
    def merge_adapter(self, names=None) -> None:
        """Fold the active (or given) adapters into the base weights: same outputs, no extra cost."""
        for n in self._names(names):
            m = method_of(self.peft_config[n])
            if not hasattr(m, "merge") and _flag(m, "EXCLUSIVE"):
                raise ValueError(f"{type(self.peft_config[n]).__name__} cannot be merged: it trained the base "
                                 f"model's own parameters in place, so they are the weights already (use pm.model)")
            if not hasattr(m, "merge"):
                mergeable = [k for k, mod in discover().items() if hasattr(mod, "merge")]
                raise ValueError(f"{type(self.peft_config[n]).__name__} cannot be merged into the weights "
                                 f"(it adds inputs or a nonlinearity); mergeable methods: {', '.join(mergeable)}")
            m.merge(self, n)

    def unmerge_adapter(self, names=None) -> None:
        for n in self._names(names):
            m = method_of(self.peft_config[n])
            if hasattr(m, "unmerge"):
                m.unmerge(self, n)

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
        out = {"trainable": trainable, "total": total, "base": total - adapter, "adapter": adapter}
        sparse = {n: self.delta_counts(n) for n in self.peft_config if hasattr(method_of(self.peft_config[n]), "deltas")}
        if sparse:   # W = W0 + Delta methods: the entries they change and the index arrays they store
            out["delta_nonzeros"] = sum(c["delta_nonzeros"] for c in sparse.values())
            out["index_bytes"] = sum(c["index_bytes"] for c in sparse.values())
        return out

    def delta_counts(self, name: str) -> dict:
        """Of a W = W0 + Delta adapter: delta_nonzeros, the entries of the base weights its Delta
        changes now (counted in eval mode: a gated Delta without its training noise), and
        index_bytes, the bytes of the indices saved with it (buffers)."""
        self._check_name(name)
        m = method_of(self.peft_config[name])
        from ..autograd import no_grad
        with no_grad(), self.eval_mode():
            nonzeros = sum(int(backend.xp.count_nonzero(d.data)) for d in m.deltas(self, name).values()) \
                if hasattr(m, "deltas") else 0
        index = sum(int(t.data.nbytes) for t in m.buffers(self, name).values()) if hasattr(m, "buffers") else 0
        return {"delta_nonzeros": nonzeros, "index_bytes": index}

    def print_trainable_parameters(self, per_module: bool = False) -> str:
        """`trainable params: N || all params: M || trainable%: P` (M includes the adapters, as in HF
        peft; `% of base` divides by the base model alone, as AdapterHub does). Returns the text."""
        s = self.trainable_summary()
        lines = [f"trainable params: {s['trainable']:,} || all params: {s['total']:,} || "
                 f"trainable%: {100 * s['trainable'] / s['total']:.4f} || % of base: "
                 f"{100 * s['trainable'] / max(s['base'], 1):.4f}"]
        for n, cfg in self.peft_config.items():
            counted = sum(p.size for p in self.adapter_parameters(n).values())
            try:
                f = method_of(cfg).formula(self.config, cfg)
                formula = f"formula {f['trainable']:,} trained / {f['kept']:,} kept"
            except ValueError as e:                    # e.g. a task head without a closed form
                formula = f"no formula ({e})"
            sparse = ""
            if hasattr(method_of(cfg), "deltas"):
                c = self.delta_counts(n)
                sparse = f", Delta nonzeros {c['delta_nonzeros']:,}, index bytes {c['index_bytes']:,}"
            lines.append(f"  adapter {n!r} ({type(cfg).__name__}): counted {counted:,}, {formula}{sparse}")
        if per_module:
            for path, p in self.named_parameters():
                if p.requires_grad:
                    lines.append(f"    {path:60s} {str(tuple(p.shape)):>16s} {p.size:>10,}")
        text = "\n".join(lines)
        print(text)
        return text

    # ------------------------------------------------------------------ files (io.py)
    def save_pretrained(self, directory: str, names=None) -> None:
        """Write adapter_config.json + adapter_model.safetensors for one adapter (the active one
        by default) into `directory`; other adapters go into subfolders named after them."""
        io.save(self, directory, names)

    def load_adapter(self, directory: str, name: str = "default", is_trainable: bool = False) -> None:
        """Add the adapter saved in `directory` under `name`. Like HF peft, a loaded adapter is
        frozen unless is_trainable=True (then it can be trained further)."""
        io.load(self, directory, name, is_trainable)

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


def copy_module(m: Module) -> Module:
    """A deep copy of a module (used for per-adapter copies of a task head)."""
    return copy.deepcopy(m)
