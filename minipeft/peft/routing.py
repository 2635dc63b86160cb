"""Routing: which adapter acts on which sample of a batch, and how a method's layer obeys it.

    route = [(adapter name, rows)]    rows = None: every sample; else host ints, the samples of
                                      the batch that use this adapter (adapter_names=[...])

PeftModel sets `route` on every AdapterLayer before a forward pass and clears it after. A layer
that wraps a base module (LoRA, adapters, a task-head copy) sums its adapters' effects over the
route with `routed_sum`. Methods that act on the inputs (prefix and prompt tuning) turn the route
into keyword arguments of Transformer.encode (`encode_inputs`), which `encode_inputs` here joins
with any prefix= or prompt= the caller gave.
"""
from __future__ import annotations

from contextlib import contextmanager

from .. import backend, ops
from ..autograd import Tensor
from ..nn.module import Module, ModuleDict


class AdapterLayer(Module):
    """Base of layers that wrap a base module and add adapters: holds `route`."""
    route: list = []


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


# ----------------------------------------------------------------------------- the route of a call

def route_of(pm, adapter_names, batch_size: int) -> list:
    """[(name, rows)]: the active adapters on every sample, or one adapter (or None) per sample."""
    if pm._disabled:
        return []
    if adapter_names is None:
        return [(n, None) for n in pm.active_adapters]
    if len(adapter_names) != batch_size:
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch_size}; "
                         f"give one adapter name (or None for the base model) per sample")
    hostnp = backend.host()
    groups = {}
    for i, n in enumerate(adapter_names):
        if n is None:
            continue
        pm._check_name(n)
        groups.setdefault(n, []).append(i)
    return [(n, hostnp.asarray(rows)) for n, rows in groups.items()]


@contextmanager
def routing(pm, adapter_names, batch_size: int):
    """Set the route on every AdapterLayer of pm for one forward pass; yields the route."""
    route = route_of(pm, adapter_names, batch_size)
    session = getattr(pm, "_session", None)          # PeftModel.inference_session: walk the tree once
    layers = session.get("layers") if session is not None else None
    if layers is None:
        layers = [m for m in pm.modules() if isinstance(m, AdapterLayer)]
        if session is not None:
            session["layers"] = layers
    for m in layers:
        m.route = route
    try:
        yield route
    finally:
        for m in layers:
            m.route = []


def encode_inputs(pm, route, batch_size: int, ids=None, cache=None, prefix=None, prompt=None) -> dict:
    """Keyword arguments for Transformer.encode: what the routed input-side methods provide
    (encode_inputs of their files), joined with the caller's own prefix= and prompt= (first)."""
    from .registry import method_of
    kw = {}
    for method in {method_of(pm.peft_config[n]) for n, _ in route}:
        if hasattr(method, "encode_inputs"):
            for k, v in method.encode_inputs(pm, route, batch_size, ids=ids, cache=cache).items():
                if k in kw:
                    raise ValueError(f"two active methods both provide {k!r}; activate one of them")
                kw[k] = v
    if prefix is not None:
        kw["prefix"] = join_prefix(prefix, kw["prefix"], batch_size) if "prefix" in kw else prefix
    if prompt is not None:
        kw["prompt"] = ops.concat(_same_batch([prompt, kw["prompt"]], batch_size), axis=1) \
            if "prompt" in kw else prompt                                         # (1 or B, P1 + P2, d)
    if cache is not None and "k" in cache[0]:
        kw.pop("prompt", None)           # the soft prompt is in the cache already
    return kw


def join_prefix(first: list, second: list, batch_size: int) -> list:
    """Two per-layer prefix lists as one: per layer None, (k_p, v_p) or (k_p, v_p, start), k_p,
    v_p (1 or B, H, P, D), start (1 or B, P) host ints. The rows of `first` come first."""
    return [_join_layer(a, b, batch_size) for a, b in zip(first, second)]


def _join_layer(a, b, B: int):
    if a is None or b is None:
        return b if a is None else a
    a, b = tuple(a), tuple(b)
    k = ops.concat(_same_batch([a[0], b[0]], B), axis=2)                        # (1 or B, H, Pa + Pb, D)
    v = ops.concat(_same_batch([a[1], b[1]], B), axis=2)
    if len(a) == 2 and len(b) == 2:
        return k, v
    hostnp = backend.host()
    starts = [hostnp.asarray(t[2]) if len(t) > 2 else hostnp.zeros((1, t[0].shape[2]), dtype=hostnp.int64)
              for t in (a, b)]                                                   # a plain prefix: visible from 0
    rows = max(len(s) for s in starts)
    start = hostnp.concatenate([hostnp.broadcast_to(s, (rows, s.shape[1])) for s in starts], axis=1)
    return k, v, start                                                           # start (1 or B, Pa + Pb)


def _same_batch(tensors: list, B: int) -> list:
    """Tensors of leading size 1 or B, repeated to B where any has B (so that they concatenate)."""
    if all(t.shape[0] == tensors[0].shape[0] for t in tensors):
        return tensors
    one = backend.to_device(backend.host().zeros(B, dtype=backend.host().int64))
    return [t[one] if t.shape[0] == 1 else t for t in tensors]                  # (1, ...) -> (B, ...)
