"""Methods that change existing parameters: W = W0 + Delta, auxiliary losses, gradient masks.

The fourth place a method touches the model (which existing parameters change) gets three
mechanisms here, each wired in exactly one place:

(a) A parametrisation. A method may define `deltas(pm, name) -> {path: Delta}`: for parameter
    paths of the base model (`h.0.attn.q.weight`, `wte.weight`), a Tensor Delta(theta) of that
    parameter's shape, computed from the adapter's own parameters theta. While PeftModel runs
    (encode, lm_logits, forward, classify), `effective_weights` puts the Tensor

        W = W0 + sum over the active adapters a of Delta_a          (W0: the frozen Parameter)

    in place of W0 on EVERY module attribute that holds W0, and puts W0 back afterwards. So a
    weight the model reads directly (the tied LM head reads `wte.weight`) sees it too. W0 is
    frozen, so backward sends dL/dW into each Delta and from there into theta, never into W0;
    the base weights stay bit-identical. Several active adapters add their deltas: composing a
    task and a language delta is `pm.set_adapter(["task", "lang"])` (theta0 + d_task + d_lang).
    The delta is shared by the whole batch, so such an adapter cannot be mixed per sample with
    others (adapter_names); that is a ValueError saying so.
(b) An auxiliary loss. A method may define `aux_loss(pm, name) -> scalar Tensor or None`
    (diff pruning's expected-L0 penalty, LT-SFT's L1 pull toward theta0). `aux_loss(pm)` adds the
    active adapters' terms; `train.fit` adds it to the task loss before backward.
(c) A hook before the optimizer step. A method may define `before_step(pm, name, step,
    optimizer)`: `train.fit` calls it after backward (and gradient clipping) and before
    optimizer.step(), once per step, for the active adapters. It may mask or rescale gradients
    (ChildTuning-F's Bernoulli mask), redraw noise (the hard-concrete gate's u) or read the
    gradients (SpIEL's growth). Gradients are read-only arrays: assign p.grad = ..., never *=.

A training loop of one's own does what fit does: loss = task_loss + pm.aux_loss() (when not
None); loss.backward(); pm.before_step(step, optimizer); optimizer.step().
"""
from __future__ import annotations

from contextlib import contextmanager

from .registry import method_of


def _holders(model) -> dict:
    """id(Parameter) -> [(module, attribute name)] of every attribute that holds it (a tied
    embedding is held by wte and read by the LM head through it)."""
    from ..nn.module import Parameter
    out: dict = {}
    for mod in model.modules():
        for attr, value in vars(mod).items():
            if isinstance(value, Parameter):
                out.setdefault(id(value), []).append((mod, attr))
    return out


@contextmanager
def effective_weights(pm, route, batch_size: int):
    """Inside the block every parametrised base weight W0 reads W0 + sum of the routed adapters'
    deltas (see (a) above). Nested calls (forward's encode inside forward) swap only once."""
    if getattr(pm, "_swapped", False):
        yield
        return
    session = getattr(pm, "_session", None)          # PeftModel.inference_session: sum once, reuse
    key = ("weights",) + tuple(n for n, _ in route)
    reuse = session is not None and all(rows is None for _, rows in route)
    if reuse and key in session:
        with _swapped_in(pm, session[key]):
            yield
        return
    deltas: dict = {}
    for name, rows in route:
        method = method_of(pm.peft_config[name])
        if not hasattr(method, "deltas"):
            continue
        if rows is not None and len(rows) != batch_size:
            raise ValueError(f"adapter {name!r} ({type(pm.peft_config[name]).__name__}) changes the base weights "
                             f"themselves (W = W0 + Delta), which every sample of a batch shares, so it cannot be "
                             f"routed to some samples only (adapter_names): run each adapter's samples as their "
                             f"own batch")
        for path, d in method.deltas(pm, name).items():
            deltas.setdefault(path, []).append(d)
    if not deltas:
        if reuse:
            session[key] = []
        yield
        return
    params, holders, places = dict(pm.model.named_parameters()), _holders(pm.model), []
    for path, ds in deltas.items():
        w0 = params[path]
        w = w0
        for d in ds:
            w = w + d                                      # W = W0 + Delta_a + Delta_b ...
        places += [(mod, attr, w, w0) for mod, attr in holders[id(w0)]]
    if reuse:
        session[key] = places
    with _swapped_in(pm, places):
        yield


@contextmanager
def _swapped_in(pm, places: list):
    """Inside the block, each (module, attribute, W, W0) of `places` has W where it had W0."""
    try:
        for mod, attr, w, _ in places:
            setattr(mod, attr, w)
        pm._swapped = True
        yield
    finally:
        for mod, attr, _, w0 in reversed(places):
            setattr(mod, attr, w0)
        pm._swapped = False


def aux_loss(pm):
    """The sum of the active adapters' auxiliary loss terms, or None when there are none."""
    total = None
    for name in ([] if pm._disabled else pm.active_adapters):
        method = method_of(pm.peft_config[name])
        term = method.aux_loss(pm, name) if hasattr(method, "aux_loss") else None
        if term is not None:
            total = term if total is None else total + term
    return total


def before_step(pm, step: int, optimizer) -> None:
    """Call each active adapter's before_step hook (after backward, before optimizer.step())."""
    for name in ([] if pm._disabled else pm.active_adapters):
        method = method_of(pm.peft_config[name])
        if hasattr(method, "before_step"):
            method.before_step(pm, name, step, optimizer)
