"""A small task for the methods that change the base weights (sparse deltas, selection): an LM
loss plus a classification loss on the `tiny` fixture's model, and its value without a graph.
Shared by test_sparse.py and test_selection.py."""
from __future__ import annotations

from minipeft import ops
from minipeft.autograd import no_grad


def task(tiny, seed=0):
    """loss_fn(model, batch) of a fixed batch (the batch argument is ignored: fit passes [None])."""
    ids, targets, y = tiny.ids(seed=seed), tiny.ids(seed=seed + 5), tiny.labels(seed=seed)
    return lambda m, _: m(ids, targets)[1] + ops.cross_entropy(m.classify(ids), y)  # noqa: E731


def loss_now(pm, loss_fn):
    with no_grad():
        return loss_fn(pm, None).item()
