"""Data parallelism on the CPU: one process per core, each on its own slice of the batch.

    with DataParallel(model, loss_fn, processes=2) as dp:   # or fit(..., processes=2)
        for batch in batches:
            loss = dp.backward(batch)     # a float; model's .grad = the gradient of the whole batch
            opt.step(); opt.zero_grad()

Why. minipeft's ops already use every core (`backend.rows`), but they hand work to the other
threads op by op: 120 hand-offs per training step of the tiny bench model, each ~0.1 ms on a small
virtual machine, and Python threads take turns on the GIL between NumPy calls. Data parallelism
hands off twice per step: each process runs the forward and backward of its slice from start to
finish on one core, and then the gradients are added. PyTorch's DistributedDataParallel does the
same across GPUs; here the "devices" are the cores of one machine (bench/RESULTS.md: a 2-core
training step 10-25 % faster than the op-by-op threads).

The arithmetic. The batch is cut into slices S_1..S_P (rows). For a loss that is a mean over
counted items (tokens whose target is not -100, or rows), with n_i items in slice i:

    L = (1/n) sum_{j in batch} l_j,   n = n_1 + ... + n_P
      = sum_i (n_i/n) L_i,            L_i = the mean loss of slice i, what loss_fn returns for it
    dL/dθ = sum_i (n_i/n) dL_i/dθ

so process i seeds its backward with w_i = n_i/n instead of 1, and the parent adds the P
gradients, always in the order 1..P (the result does not depend on who finishes first).

How. `DataParallel(...)` copies every parameter's array into one block of shared memory (an
anonymous mmap, which a fork shares rather than copies) and makes the parameter use it; then it
forks P-1 worker processes. They inherit the model, so their parameters are the same memory, and
the optimizer's in-place update in the parent is what they compute with at the next step. Each
step the parent sends every worker its slice (raw array bytes through a pipe; nothing is pickled),
computes slice 1 itself on one thread, then adds each worker's gradient, which the worker has
written into its own block of shared memory.

What is checked, with a clear error:
- the NumPy backend (a GPU is one device already), on Linux (fork is not safe with macOS's
  system BLAS, and Windows has none);
- every array of the batch is cut along its first axis, so they must all have the same number of
  rows; the batch is a dict (string keys), tuple or list of arrays and plain values (numbers,
  strings, None), and plain values go to every slice as they are;
- which parameters train is fixed when the workers start (they got a copy of the model):
  changing requires_grad afterwards is an error. A parameter whose array was replaced in the
  parent (load_state_dict, merging LoRA) is copied into the shared memory before the next step.

What is not sent: module state other than parameters (set it before starting), and anything the
loss_fn closes over that changes after the start. Dropout: every step each worker reseeds its
random stream with numbers drawn from the parent's generator, so a run is reproducible from
`manual_seed`, but its masks are not the ones a single process would draw.
"""
from __future__ import annotations

import json
import mmap
import os
import signal
import sys
import traceback
from multiprocessing import Pipe

from . import backend
from .autograd import Tensor


def counted(batch) -> int:
    """The default weight n_i of a slice: what a mean cross-entropy divides by. The entries of
    "targets" (else "labels") that are not -100 (the ignore index), else the number of rows."""
    hostnp = backend.host()
    if isinstance(batch, dict):
        for key in ("targets", "labels"):
            if key in batch and isinstance(batch[key], hostnp.ndarray):
                return int((batch[key] != -100).sum())
    return _rows(_flatten(batch)[1])


# ----------------------------------------------------------------------------- batches as arrays + a plan

def _flatten(batch, arrays=None):
    """batch -> (plan, arrays): a JSON-able plan of the nesting, and the arrays in order."""
    hostnp = backend.host()
    arrays = [] if arrays is None else arrays
    if isinstance(batch, hostnp.ndarray):
        if batch.ndim == 0:
            raise TypeError("DataParallel: a 0-d array in the batch cannot be cut into slices of rows; "
                            "pass it as a plain number (float(x) / int(x))")
        arrays.append(batch)
        return {"array": len(arrays) - 1}, arrays
    if isinstance(batch, dict):
        if not all(isinstance(k, str) for k in batch):
            raise TypeError(f"DataParallel: dict batches need string keys, got {list(batch)}")
        return {"dict": [[k, _flatten(v, arrays)[0]] for k, v in batch.items()]}, arrays
    if isinstance(batch, (tuple, list)):
        kind = "tuple" if isinstance(batch, tuple) else "list"
        return {kind: [_flatten(v, arrays)[0] for v in batch]}, arrays
    if batch is None or isinstance(batch, (bool, int, float, str)):
        return {"value": batch}, arrays
    if isinstance(batch, hostnp.generic):                    # a NumPy scalar: its Python value
        return {"value": batch.item()}, arrays
    raise TypeError(f"DataParallel: cannot send a {type(batch).__name__} to the worker processes; a batch "
                    f"is a dict (string keys), tuple or list of host (NumPy) arrays and plain values "
                    f"(numbers, strings, None). A device array? Use backend.to_numpy() first.")


def _unflatten(plan, arrays):
    (kind, body), = plan.items()
    if kind == "array":
        return arrays[body]
    if kind == "dict":
        return {k: _unflatten(v, arrays) for k, v in body}
    if kind in ("tuple", "list"):
        items = [_unflatten(v, arrays) for v in body]
        return tuple(items) if kind == "tuple" else items
    return body


def _rows(arrays) -> int:
    if not arrays:
        raise ValueError("DataParallel: the batch has no array to cut into slices")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"DataParallel: every array of the batch is cut along its first axis (rows), so they "
                         f"must have the same number of rows; got shapes {[a.shape for a in arrays]}. "
                         f"Pass a value that is not per-example as a plain number, or train with processes=1.")
    return n


def _send(conn, message: dict, arrays=()) -> None:
    """One message: a JSON header (with each array's dtype and shape), then each array's bytes."""
    hostnp = backend.host()
    arrays = [hostnp.ascontiguousarray(a) for a in arrays]
    message = dict(message, arrays=[[a.dtype.str, list(a.shape)] for a in arrays])
    conn.send_bytes(json.dumps(message).encode())
    for a in arrays:
        conn.send_bytes(memoryview(a).cast("B") if a.size else b"")


def _receive(conn):
    hostnp = backend.host()
    message = json.loads(conn.recv_bytes())
    arrays = [hostnp.frombuffer(bytearray(conn.recv_bytes()), dtype=dtype).reshape(shape)
              for dtype, shape in message["arrays"]]
    return message, arrays


# ----------------------------------------------------------------------------- one slice, in any process

def _run_slice(model, loss_fn, batch, weight: float) -> float:
    """Forward and backward of one slice, the backward seeded with w_i; returns w_i * L_i."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.data.size != 1:
        raise TypeError(f"DataParallel: loss_fn must return a scalar Tensor, got {type(loss).__name__}"
                        f"{'' if not isinstance(loss, Tensor) else ' of shape ' + str(tuple(loss.shape))}")
    loss.backward(backend.xp.asarray(weight, dtype=loss.dtype))       # dL/dL_i = w_i
    return weight * float(loss.item())


def _worker(conn, model, loss_fn, trainable, grads) -> None:
    """The loop of a worker process: receive a slice, compute its gradient into `grads` (shared
    memory), reply; until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is for the parent, which stops us
    backend.set_threads(1)                           # one core per process
    while True:
        try:
            message, arrays = _receive(conn)
        except (EOFError, OSError):                  # the parent has gone
            return
        if message.get("stop"):
            return
        try:
            if message["seed"] is not None:
                backend.rng.seed(message["seed"])
            model.train(message["training"])
            loss = 0.0
            if message["weight"] > 0:
                loss = _run_slice(model, loss_fn, _unflatten(message["plan"], arrays), message["weight"])
            has = [p.grad is not None for p in trainable]
            for p, g, h in zip(trainable, grads, has):
                if h:
                    g[...] = p.grad                  # the parent reads it after our reply
            reply = {"loss": loss, "has_grad": has}
        except BaseException:                        # noqa: B036 (the parent raises it; we go on)
            reply = {"error": traceback.format_exc()}
        finally:
            for p in trainable:
                p.grad = None
        _send(conn, reply)


# ----------------------------------------------------------------------------- the parent's side

def _shared_like(arrays):
    """Views of one new block of shared memory, one per array (same shape, dtype), zero-filled."""
    hostnp = backend.host()
    sizes = [-(-a.nbytes // 64) * 64 for a in arrays]          # each view starts 64-byte aligned
    block = mmap.mmap(-1, max(sum(sizes), 1))                   # anonymous and MAP_SHARED
    views, offset = [], 0
    for a, size in zip(arrays, sizes):
        views.append(hostnp.frombuffer(block, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape))
        offset += size
    return views


class DataParallel:
    """Run loss_fn(model, slice) and its backward on `processes` slices of each batch at once, one
    process (and core) per slice; see the module docstring. `weight(slice)` is the slice's n_i
    (default `counted`). Close it (or use `with`) to stop the worker processes."""

    def __init__(self, model, loss_fn, processes: int = 2, weight=counted):
        if backend.name != "numpy":
            raise RuntimeError(f"DataParallel runs on CPU cores with the NumPy backend; the backend is "
                               f"{backend.name!r}. A GPU is one device: train with processes=1 there.")
        if not sys.platform.startswith("linux"):
            raise RuntimeError(f"DataParallel forks its worker processes, which is safe on Linux only (on macOS the "
                               f"system's BLAS is not safe after a fork; Windows has no fork); this is "
                               f"{sys.platform!r}: train with processes=1")
        if int(processes) < 1:
            raise ValueError(f"DataParallel: processes={processes}; need at least 1 (1 = no worker processes)")
        self.model, self.loss_fn, self.weight, self.processes = model, loss_fn, weight, int(processes)
        self._named = list(model.named_parameters())
        self._trainable = [p for _, p in self._named if p.requires_grad]
        if not self._trainable:
            raise ValueError("DataParallel: no parameter of the model requires grad; freeze and unfreeze "
                             "(choose the PEFT method) before starting it")
        self._shared = _shared_like([p.data for _, p in self._named])
        for (_, p), view in zip(self._named, self._shared):
            view[...] = p.data
            p.data = view                            # from now on the model computes on shared memory
        self._grads = [_shared_like([p.data for p in self._trainable]) for _ in range(self.processes - 1)]
        self._conns, self._pids = [], []
        backend.stop_threads()                       # fork with no other thread of ours running
        for rank in range(1, self.processes):
            ours, theirs = Pipe()
            pid = os.fork()
            if pid == 0:                             # the worker: never returns into the caller's code
                code = 1
                try:
                    ours.close()
                    for c in self._conns:
                        c.close()
                    _worker(theirs, model, loss_fn, self._trainable, self._grads[rank - 1])
                    code = 0
                finally:
                    os._exit(code)
            theirs.close()
            self._conns.append(ours)
            self._pids.append(pid)

    # -- each step
    def backward(self, batch) -> float:
        """Accumulate the whole batch's gradient into the trainable parameters' `.grad` (as
        `loss_fn(model, batch).backward()` would) and return the batch's loss as a float."""
        if not self._pids and self.processes > 1:
            raise RuntimeError("DataParallel: it was closed; start a new one")
        self._check_parameters()
        plan, arrays = _flatten(batch)
        n = _rows(arrays)
        P = self.processes
        cuts = [n * i // P for i in range(P + 1)]                         # slice i: rows cuts[i]:cuts[i+1]
        slices = [[a[cuts[i]:cuts[i + 1]] for a in arrays] for i in range(P)]
        counts = [self.weight(_unflatten(plan, s)) for s in slices]       # n_i
        total = sum(counts)
        if total <= 0:
            raise ValueError(f"DataParallel: the batch counts {total} items to learn from (weights {counts}); "
                             f"are all its targets -100?")
        seeds = [[int(x) for x in backend.rng.gen.integers(0, 2**63 - 1, size=2)] for _ in range(P - 1)]
        for i, conn in enumerate(self._conns, start=1):
            try:
                _send(conn, {"plan": plan, "weight": counts[i] / total, "training": self.model.training,
                             "seed": seeds[i - 1]}, slices[i])
            except OSError:                          # its end of the pipe is closed: it has died
                self._lost(i)
        error, loss = None, 0.0
        try:
            if counts[0] > 0:
                with backend.this_thread_only():     # the other cores run the workers
                    loss = _run_slice(self.model, self.loss_fn, _unflatten(plan, slices[0]), counts[0] / total)
        except BaseException as e:                   # noqa: B036 (collect the workers' replies first)
            error = e
        replies = [self._reply(rank) for rank in range(1, P)]            # always, to keep the pipes in step
        failed = [(rank, r["error"]) for rank, r in enumerate(replies, start=1) if "error" in r]
        if error is not None or failed:
            for p in self._trainable:
                p.grad = None                        # no half-summed gradient is left behind
            if error is not None:
                raise error
            rank, tb = failed[0]
            raise RuntimeError(f"DataParallel: worker process {rank} failed on its slice of the batch "
                               f"(rows {cuts[rank]}:{cuts[rank + 1]}):\n{tb}")
        for grads, reply in zip(self._grads, replies):
            for p, g, has in zip(self._trainable, grads, reply["has_grad"]):
                if has:                              # gradients are read-only: a new array, not +=
                    p.grad = g.copy() if p.grad is None else p.grad + g
            loss += reply["loss"]
        return loss

    def _reply(self, rank: int) -> dict:
        try:
            return _receive(self._conns[rank - 1])[0]
        except (EOFError, OSError):
            self._lost(rank)

    def _lost(self, rank: int):
        """A worker has died: stop the others (the pipes are out of step now) and say so."""
        pid = self._pids[rank - 1]
        self.close()
        raise RuntimeError(f"DataParallel: worker process {rank} (pid {pid}) stopped unexpectedly (killed? out "
                           f"of memory?); the other workers were stopped too: start a new DataParallel") from None

    def _check_parameters(self) -> None:
        for (name, p), view in zip(self._named, self._shared):
            if p.data is not view:                   # replaced in the parent: copy it into shared memory
                if p.data.shape != view.shape or p.data.dtype != view.dtype:
                    raise RuntimeError(f"DataParallel: parameter {name} changed from {view.dtype}{list(view.shape)} "
                                       f"to {p.data.dtype}{list(p.data.shape)} after the worker processes "
                                       f"started; close this DataParallel and start a new one")
                view[...] = backend.to_numpy(p.data)
                p.data = view
        now = [p for _, p in self._named if p.requires_grad]
        if len(now) != len(self._trainable) or any(a is not b for a, b in zip(now, self._trainable)):
            raise RuntimeError("DataParallel: which parameters require grad changed after the worker processes "
                               "started (they keep what was trainable then); close this DataParallel and "
                               "start a new one after freezing or unfreezing")

    # -- stopping
    def close(self) -> None:
        """Stop the worker processes and wait for them. The model keeps its (shared) arrays."""
        for conn in self._conns:
            try:
                _send(conn, {"stop": True})
            except OSError:
                pass
            conn.close()
        for pid in self._pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:                # reaped already (by a handler of the caller's)
                pass
        self._conns, self._pids = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_pids", None):
            self.close()
