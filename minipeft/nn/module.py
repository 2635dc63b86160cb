"""`Parameter` and `Module`: the bookkeeping behind every layer.

A Module finds its parameters and sub-modules by looking at its own attributes (in the order
they were set), so a layer is written as plainly as

    class Linear(Module):
        def __init__(self, n_in, n_out):
            self.weight = Parameter(...)        # found as "weight"
            self.bias = Parameter(...)          # found as "bias"

Names are dotted paths (`h.0.attn.q.weight`); PEFT methods use them to find what to adapt.
Modules keep no activations on `self`: the autograd graph holds them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .. import backend
from ..autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns; requires_grad=True unless frozen."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, trainable={self.requires_grad})"


class Module:
    training: bool = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ------------------------------------------------------------------ walking the tree
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """Every module in the tree with its dotted path ("" for the root), parents first."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", include_frozen: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) for every parameter; a shared (tied) one is listed once,
        under the first name it is found at."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, value in vars(mod).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    if include_frozen or value.requires_grad:
                        yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def trainable_parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for _, p in self.named_parameters() if p.requires_grad or not trainable_only)

    def get_submodule(self, path: str) -> "Module":
        mod = self
        for part in path.split(".") if path else []:
            child = getattr(mod, part, None)
            if not isinstance(child, Module):
                names = [n for n, _ in self.named_modules() if n]
                raise KeyError(f"no module named {path!r} (failed at {part!r}); modules that exist: "
                               f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
            mod = child
        return mod

    def set_submodule(self, path: str, module: "Module") -> None:
        """Replace the module at a dotted path (PEFT methods wrap layers this way)."""
        parent_path, _, last = path.rpartition(".")
        parent = self.get_submodule(parent_path)
        if not isinstance(getattr(parent, last, None), Module):
            raise KeyError(f"no module named {path!r} to replace")
        setattr(parent, last, module)

    # ------------------------------------------------------------------ modes and freezing
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    @contextmanager
    def eval_mode(self):
        """`with model.eval_mode():` runs the block with every module in eval mode (no dropout),
        then gives each module back the `training` flag it had before, one by one, even if
        the block raises: a model whose frozen base was in eval mode and whose adapter was
        training comes back exactly so (a plain `model.train(was_training)` would not)."""
        saved = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, flag in saved:
                m.training = flag

    def requires_grad_(self, flag: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def freeze(self) -> "Module":
        """Make every parameter frozen (requires_grad=False): no gradient, no optimizer state."""
        return self.requires_grad_(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, dtype) -> "Module":
        """Cast every parameter (float32 <-> float64), in place; returns self."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """name -> array (the parameters themselves, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters. Shapes and dtypes must always match; strict: the keys
        must match too (missing and unexpected keys are errors). Every problem is listed in one error."""
        from ..checkpoint import check_state_dict  # checkpoint imports nothing from nn
        params = dict(self.named_parameters())
        expected = {name: (tuple(p.shape), str(p.dtype)) for name, p in params.items()}
        check_state_dict(expected, state, strict=strict)
        for name, value in state.items():
            if name in params:
                params[name].data = backend.to_device(value, dtype=params[name].dtype).copy()

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self.named_children():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ("\n)" if len(lines) > 1 else ")")


class ModuleList(Module):
    """A list of modules, named "0", "1", ... in dotted paths."""

    def __init__(self, modules=()):
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __getitem__(self, i: int) -> Module:
        return getattr(self, str(i % len(self)))

    def __setitem__(self, i: int, m: Module):
        setattr(self, str(i % len(self)), m)

    def __iter__(self):
        return (m for _, m in self.named_children())

    def append(self, m: Module) -> None:
        setattr(self, str(len(self)), m)


class ModuleDict(Module):
    """Modules by name (adapter names: "default", "sst2", ...), named by key in dotted paths."""

    def __init__(self, modules: dict | None = None):
        for k, m in (modules or {}).items():
            self[k] = m

    def __setitem__(self, key: str, m: Module):
        if not isinstance(m, Module):
            raise TypeError(f"ModuleDict values must be Modules, got {type(m).__name__}")
        if not key.isidentifier():
            raise ValueError(f"name {key!r} must be a Python identifier (letters, digits, _)")
        setattr(self, key, m)

    def __getitem__(self, key: str) -> Module:
        m = getattr(self, key, None)
        if not isinstance(m, Module):
            raise KeyError(f"no entry {key!r}; entries: {list(self.keys())}")
        return m

    def __delitem__(self, key: str):
        self[key]
        delattr(self, key)

    def __contains__(self, key) -> bool:
        return isinstance(getattr(self, key, None), Module) if isinstance(key, str) else False

    def __len__(self):
        return len(list(self.keys()))

    def keys(self):
        return [k for k, _ in self.named_children()]

    def items(self):
        return list(self.named_children())
