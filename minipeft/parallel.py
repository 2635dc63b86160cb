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
same across GPUs; here the "devices" are the cores of one machine (bench/RESULTS.md: on 2 cores a
training step takes 0.73-0.88 of the time it takes with the op-by-op threads).

The arithmetic. The batch is cut into P slices of rows, slice 0 for this process and slice i for
worker i (i = 1..P-1). For a loss that is a mean over counted items (tokens whose target is not
-100, or rows), with n_i items in slice i:

    L = (1/n) sum_{j in batch} l_j,   n = n_0 + ... + n_{P-1}
      = sum_i (n_i/n) L_i,            L_i = the mean loss of slice i, what loss_fn returns for it
    dL/dθ = sum_i (n_i/n) dL_i/dθ

so the backward of slice i is seeded with w_i = n_i/n instead of 1, and the parent adds the P
gradients, always in the order 0, 1, ..., P-1 (the result does not depend on who finishes first).

How. `DataParallel(...)` copies every parameter's array into one block of shared memory (an
anonymous mmap, which a fork shares rather than copies) and makes the parameter use it; then it
forks P-1 worker processes. They inherit the model, so their parameters are the same memory, and
the optimizer's in-place update in the parent is what they compute with at the next step. Each
step the parent sends every worker its slice (raw array bytes through a pipe; nothing is pickled),
computes slice 0 itself on one thread, then adds each worker's gradient, which the worker has
written into its own block of shared memory. `close()` stops the workers and gives the parameters
private arrays again.

What is checked, with a clear error:
- the NumPy backend (a GPU is one device already), on Linux (fork is not safe with macOS's
  system BLAS, and Windows has none);
- the batch: a dict (string keys), tuple or list of arrays (numbers or strings) and plain values
  (numbers, strings, None). Every array is cut along its first axis, so all must have the same
  number of rows; plain values, lists included, go to every slice whole (a per-example list such
  as adapter_names must be a NumPy array to be cut);
- the worker copied the model when it started: which parameters train, and the module tree's
  settings (the active adapter, a merged LoRA, a replaced submodule) must not change afterwards.
  Only parameter VALUES may change (the optimizer; load_state_dict, whose new arrays are copied
  into the shared memory before the next step);
- the weight of a slice: `counted` knows the "targets" / "labels" of dict batches; for other
  losses pass `weight=`.

A step that is interrupted (Ctrl-C, an error while sending or receiving) stops the workers, since
their replies would no longer match the steps; the gradients are then left as they were before
the call. An error inside loss_fn (in any process) keeps the workers. The workers inherit the
other threads of the process (Jupyter's, tqdm's) only as stopped copies and touch nothing of theirs.
Each process is meant to use one core: with OPENBLAS_NUM_THREADS > 1 (see cpu.py) every
process would run that many BLAS threads. Dropout: every step each worker reseeds its random
stream with numbers drawn from the parent's generator, so a run is reproducible from
`manual_seed`, but its masks are not the ones a single process would draw.
"""
from __future__ import annotations

import json
import math
import mmap
import operator
import os
import resource
import signal
import sys
import traceback
from multiprocessing import Pipe

from . import backend
from .autograd import Tensor
from .nn.module import Module

REPLY_POLL_S = 1.0        # while waiting for a worker, check this often that it is still alive


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unnamed"


def check_supported(processes) -> int:
    """The number of processes as an int, or a clear error if data parallelism cannot run here.
    Cheap: `finetune` and the command line call it before loading anything."""
    try:
        n = operator.index(processes)                # ints, NumPy ints; not 1.5, not True
    except TypeError:
        n = None
    if n is None or isinstance(processes, bool) or n < 1:
        raise ValueError(f"processes={processes!r}: expected a whole number >= 1 (1 = no worker processes)")
    processes = n
    if processes > 1 and backend.name != "numpy":
        raise RuntimeError(f"data-parallel training runs on CPU cores with the NumPy backend; the backend is "
                           f"{backend.name!r}. A GPU is one device: train with processes=1 there.")
    if processes > 1 and not sys.platform.startswith("linux"):
        raise RuntimeError(f"data-parallel training forks its worker processes, which is safe on Linux only "
                           f"(on macOS the system's BLAS is not safe after a fork; Windows has no fork); this "
                           f"is {sys.platform!r}: train with processes=1")
    return processes


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_processes(batch_size: int | None = None, notice=print) -> int:
    """How many processes the library's own tasks (finetune, the demo, the lectures) train with
    when not told: one per usable core where data parallelism is supported (Linux, the NumPy
    backend), at most one per row of the batch; else 1, with a one-line notice saying why.
    (`fit` with a user's own loss keeps one process unless asked: its loss may not be a mean.)"""
    cores = usable_cores()
    if cores < 2:
        return 1
    if backend.name != "numpy" or not sys.platform.startswith("linux"):
        where = f"the {backend.name} backend" if backend.name != "numpy" else f"platform {sys.platform!r}"
        notice(f"training in one process: data-parallel processes need Linux and NumPy ({where})")
        return 1
    return max(1, min(cores, batch_size or cores))


def counted(batch) -> int:
    """The default weight n_i of a slice: what a mean cross-entropy divides by. In a dict batch,
    the entries of "targets" (else "labels") that are not -100 (the ignore index); else the rows,
    unless some integer array holds -100 (then the tokens to count are unknown: an error)."""
    hostnp = backend.host()
    if isinstance(batch, dict):
        for key in ("targets", "labels"):
            if key in batch and isinstance(batch[key], hostnp.ndarray):
                return int((batch[key] != -100).sum())
    arrays = _flatten(batch)[1]
    if any(a.dtype.kind in "iu" and (a == -100).any() for a in arrays):
        raise ValueError("DataParallel: the batch has -100 entries (ignored targets?) but no 'targets' or 'labels' "
                         "key, so the tokens a mean cross-entropy counts are unknown; put the targets under "
                         "'targets' in a dict batch, or pass weight=(a function of a slice)")
    return _rows(arrays)


# ----------------------------------------------------------------------------- batches as arrays + a plan

SENDABLE = "biufcUS"   # NumPy dtype kinds that travel as raw bytes: bool, ints, floats, complex, strings


def _flatten(batch, arrays=None):
    """batch -> (plan, arrays): a JSON-able plan of the nesting, and the arrays in the order met
    (each level appends to the same `arrays` list and returns its own part of the plan)."""
    hostnp = backend.host()
    arrays = [] if arrays is None else arrays
    if isinstance(batch, hostnp.ndarray):
        if batch.ndim == 0:
            raise TypeError("DataParallel: a 0-d array in the batch cannot be cut into slices of rows; "
                            "pass it as a plain number (float(x) / int(x))")
        if batch.dtype.kind not in SENDABLE:
            raise TypeError(f"DataParallel: an array of dtype {batch.dtype} cannot be sent as raw bytes; use "
                            f"numbers or strings (an object array holds Python objects: np.array(names) of "
                            f"strings for adapter names)")
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
    hint = " (a Tensor: pass its .data)" if isinstance(batch, Tensor) else ""
    raise TypeError(f"DataParallel: cannot send a {type(batch).__name__}{hint} to the worker processes; a batch "
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
    """One message: a JSON header (with each array's dtype and shape), then each array's bytes.
    Everything is prepared before the first byte goes, so an error never leaves half a message."""
    hostnp = backend.host()
    arrays = [hostnp.ascontiguousarray(a) for a in arrays]
    raw = [memoryview(a).cast("B") if a.size else b"" for a in arrays]
    header = json.dumps(dict(message, arrays=[[a.dtype.str, list(a.shape)] for a in arrays])).encode()
    conn.send_bytes(header)
    for r in raw:
        conn.send_bytes(r)


def _receive(conn):
    hostnp = backend.host()
    message = json.loads(conn.recv_bytes())
    # bytearray: a writable copy, so that loss_fn may change its slice in place
    arrays = [hostnp.frombuffer(bytearray(conn.recv_bytes()), dtype=dtype).reshape(shape)
              for dtype, shape in message["arrays"]]
    return message, arrays


def _module_state(model) -> list:
    """What a worker copied at the fork besides parameter VALUES: the module tree, which Parameter
    or module sits where, and plain settings (the active adapter, LoRA's `merged`, ...)."""
    out = []
    for path, m in model.named_modules():
        for k, v in sorted(vars(m).items()):
            if k in ("training", "route", "ready", "_swapped"):   # sent with every step / set by each forward
                continue                    # (peft.api's route; UniPELT's prefix-MLP output of this forward;
                                            # parametrize's flag "W0 + Delta is swapped in", set by the first)
            if isinstance(v, (Tensor, Module)):
                out.append((path, k, f"{type(v).__name__} #{id(v)}"))
            elif isinstance(v, (bool, int, float, str, type(None), tuple, list, dict)):
                out.append((path, k, repr(v)))
    return out


# ----------------------------------------------------------------------------- one slice, in any process

def _run_slice(model, loss_fn, batch, weight: float) -> float:
    """Forward and backward of one slice, the backward seeded with w_i; returns w_i * L_i."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.data.size != 1:
        got = type(loss).__name__ + ("" if not isinstance(loss, Tensor) else f" of shape {tuple(loss.shape)}")
        raise TypeError(f"DataParallel: loss_fn must return a scalar Tensor, got {got} (model(ids, targets) "
                        f"returns (logits, loss): return its [1])")
    loss.backward(backend.xp.asarray(weight, dtype=loss.dtype))       # dL/dL_i = w_i
    return weight * float(loss.item())


def _worker(conn, model, loss_fn, trainable, grads) -> None:
    """The loop of a worker process: receive a slice, compute its gradient into `grads` (shared
    memory), reply; until told to stop or the parent goes away."""
    backend.set_threads(1)                           # one core per process
    while True:
        try:
            message, arrays = _receive(conn)
        except (EOFError, OSError):                  # the parent has gone
            return
        if message.get("stop"):                      # say how much memory we used, and go
            _send(conn, {"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
            return
        try:
            backend.rng.seed(message["seed"])
            for (_, m), flag in zip(model.named_modules(), message["training"]):
                m.training = flag                    # train/eval, module by module as in the parent
            loss = 0.0
            if message["weight"] > 0:
                loss = _run_slice(model, loss_fn, _unflatten(message["plan"], arrays), message["weight"])
            has = [p.grad is not None for p in trainable]
            for p, g, h in zip(trainable, grads, has):
                if h:
                    g[...] = p.grad                  # the parent reads it after our reply
            reply = {"step": message["step"], "loss": loss, "has_grad": has}
        except BaseException:                        # noqa: B036 (the parent raises it; we go on)
            reply = {"step": message["step"], "error": traceback.format_exc()}
        finally:
            for p in trainable:
                p.grad = None
        for stream in (sys.stdout, sys.stderr):      # a print in loss_fn shows now, not never
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
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
        self.processes = check_supported(processes)
        self.model, self.loss_fn, self.weight = model, loss_fn, weight
        self._owner = os.getpid()                    # only this process may stop the workers
        self._conns, self._pids, self._step = [], [], 0
        self.worker_maxrss_kb = 0                    # the largest worker's peak memory, after close()
        self._named = list(model.named_parameters())
        self._trainable = [p for _, p in self._named if p.requires_grad]
        if not self._trainable:
            raise ValueError("DataParallel: no parameter of the model requires grad; choose what trains (the "
                             "PEFT method) before starting it")
        if self.processes == 1:                      # nothing to share: backward() is a plain backward
            return
        self._state = _module_state(model)
        self._shared = _shared_like([p.data for _, p in self._named])
        for (_, p), view in zip(self._named, self._shared):
            view[...] = p.data
            p.data = view                            # from now on the model computes on shared memory
        self._grads = [_shared_like([p.data for p in self._trainable]) for _ in range(self.processes - 1)]
        backend.stop_threads()                       # no thread of our pool is in the middle of anything
        sys.stdout.flush()                           # else the workers would inherit unwritten output
        sys.stderr.flush()
        try:
            for rank in range(1, self.processes):
                self._start_worker(rank)
        except BaseException:
            self.close()
            raise

    def _start_worker(self, rank: int) -> None:
        ours, theirs = Pipe()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])   # (only reads the mask)
        pid = None
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})   # no Ctrl-C between fork and bookkeeping
            pid = os.fork()
            if pid == 0:                             # the worker: never returns into the caller's code
                self._run_worker(rank, ours, theirs, old_mask)
            theirs.close()
            self._conns.append(ours)
            self._pids.append(pid)                   # recorded before a pending Ctrl-C can arrive
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)   # a pending Ctrl-C is raised here

    def _run_worker(self, rank, ours, theirs, old_mask) -> None:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the parent, which stops us
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            ours.close()
            for c in self._conns:                    # the other workers' pipes are not ours
                c.close()
            for p in self._trainable:                # a gradient the parent had is the parent's to add
                p.grad = None
            _worker(theirs, self.model, self.loss_fn, self._trainable, self._grads[rank - 1])
            code = 0
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:                # (a closed pipe: `python train.py | head`)
                    pass
            os._exit(code)                           # never run the rest of the caller's program

    # -- each step
    def backward(self, batch) -> float:
        """Accumulate the whole batch's gradient into the trainable parameters' `.grad` (as
        `loss_fn(model, batch).backward()` would) and return the batch's loss as a float."""
        if self.processes == 1:
            return _run_slice(self.model, self.loss_fn, batch, 1.0)
        if not self._pids:
            raise RuntimeError("DataParallel: it was closed (or a worker was lost); start a new one")
        self._check_model()
        plan, arrays = _flatten(batch)
        n, P = _rows(arrays), self.processes
        cuts = [n * i // P for i in range(P + 1)]                         # slice i: rows cuts[i]:cuts[i+1]
        slices = [[a[cuts[i]:cuts[i + 1]] for a in arrays] for i in range(P)]
        counts = [float(self.weight(_unflatten(plan, s))) if cuts[i + 1] > cuts[i] else 0.0   # n_i
                  for i, s in enumerate(slices)]
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise ValueError(f"DataParallel: weight() must give each slice a finite number >= 0, got {counts}")
        total = sum(counts)
        if total <= 0:
            raise ValueError(f"DataParallel: the batch counts {total:g} items to learn from (weights {counts}); "
                             f"are all its targets -100?")
        # two 63-bit numbers per worker: a seed for its generator that no step or worker repeats
        seeds = [[int(x) for x in backend.rng.gen.integers(0, 2**63 - 1, size=2)] for _ in range(P - 1)]
        before = [p.grad for p in self._trainable]   # gradients are never changed in place: refs suffice
        training = [m.training for _, m in self.model.named_modules()]   # train/eval, module by module
        self._step += 1
        try:
            for i, conn in enumerate(self._conns, start=1):
                try:
                    _send(conn, {"step": self._step, "plan": plan, "weight": counts[i] / total, "seed": seeds[i - 1],
                                 "training": training}, slices[i])
                except OSError:                          # its end of the pipe is closed: it has died
                    self._lost(i)
            error, loss = None, 0.0
            try:
                if counts[0] > 0:
                    with backend.this_thread_only():     # the other cores run the workers
                        loss = _run_slice(self.model, self.loss_fn, _unflatten(plan, slices[0]), counts[0] / total)
            except Exception as e:                       # loss_fn failed here: collect the workers' replies first
                error = e
            replies = [self._reply(rank) for rank in range(1, P)]
        except BaseException:                            # interrupted mid-step: replies would come a step late
            self._restore(before)
            self.close(kill=True)
            raise
        failed = [(rank, r["error"]) for rank, r in enumerate(replies, start=1) if "error" in r]
        if error is not None or failed:
            self._restore(before)                        # as before the call: no half-summed gradient
            if error is not None:
                raise error
            rank, tb = failed[0]
            raise RuntimeError(f"DataParallel: worker process {rank} failed on its slice of the batch "
                               f"(rows {cuts[rank]}:{cuts[rank + 1]}):\n{tb}")
        for grads, reply in zip(self._grads, replies):   # sum_i (n_i/n) dL_i/dθ, in the order 1..P-1
            for p, g, has in zip(self._trainable, grads, reply["has_grad"]):
                if has:                                  # gradients are read-only: a new array, not +=
                    p.grad = g.copy() if p.grad is None else p.grad + g
            loss += reply["loss"]
        return loss

    def _restore(self, before) -> None:
        for p, g in zip(self._trainable, before):
            p.grad = g

    def _reply(self, rank: int) -> dict:
        conn, pid = self._conns[rank - 1], self._pids[rank - 1]
        try:
            while not conn.poll(REPLY_POLL_S):          # still working, or dead without closing the pipe?
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self._lost(rank, status)
            reply = _receive(conn)[0]
        except (EOFError, OSError):
            self._lost(rank)
        if reply.get("step") != self._step:
            raise RuntimeError(f"DataParallel: worker process {rank} answered for step {reply.get('step')} during "
                               f"step {self._step}; the pipes are out of step")
        return reply

    def _lost(self, rank: int, status=None):
        """A worker has died: stop the others (the pipes are out of step now) and say how it ended."""
        pid = self._pids[rank - 1]
        try:
            if status is None:
                status = os.waitpid(pid, 0)[1]
            code = os.waitstatus_to_exitcode(status)
            how = (f"killed by signal {-code} ({_signal_name(-code)}; 9 = kill -9 or the kernel's "
                   f"out-of-memory killer)" if code < 0 else f"exited with code {code}; its traceback is above")
        except ChildProcessError:
            how = "reaped by someone else"
        self._pids[rank - 1] = None                  # reaped: its number may belong to another process now
        self.close(kill=True)
        raise RuntimeError(f"DataParallel: worker process {rank} (pid {pid}) stopped unexpectedly ({how}); the "
                           f"other workers were stopped too: start a new DataParallel") from None

    def _check_model(self) -> None:
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
        state = _module_state(self.model)
        if state != self._state:
            was, now_ = next((a, b) for a, b in zip(self._state + [None], state + [None]) if a != b)
            what = f"{(was or now_)[0]}.{(was or now_)[1]}".lstrip(".")
            raise RuntimeError(f"DataParallel: the model changed after the worker processes started ({what}: "
                               f"{was[2] if was else 'absent'} -> {now_[2] if now_ else 'absent'}); the workers "
                               f"still have the model of the start (set_adapter, merging, a new module...). "
                               f"Close this DataParallel and start a new one")

    # -- stopping
    def close(self, kill: bool = False) -> None:
        """Stop the worker processes and wait for them (kill=True: at once, without waiting for a slice
        to finish), and give the parameters private (not shared) arrays again."""
        if os.getpid() != getattr(self, "_owner", None):
            return                                   # a copy of this object in a forked process
        for conn, pid in zip(self._conns, self._pids):
            if pid is None:                          # reaped already (see _lost)
                conn.close()
                continue
            try:
                if kill:
                    os.kill(pid, signal.SIGKILL)
                else:
                    _send(conn, {"stop": True})
                    if conn.poll(10):
                        self.worker_maxrss_kb = max(self.worker_maxrss_kb, _receive(conn)[0].get("maxrss_kb", 0))
                    else:                            # busy or stuck for 10 s: do not wait for ever
                        os.kill(pid, signal.SIGKILL)
            except (OSError, EOFError):
                pass
            conn.close()
        for pid in self._pids:
            try:
                if pid is not None:
                    os.waitpid(pid, 0)
            except ChildProcessError:                # reaped already
                pass
        self._conns, self._pids = [], []
        for (_, p), view in zip(self._named, getattr(self, "_shared", [])):
            if p.data is view:                       # a later fork (of anyone's) must not share them
                p.data = view.copy()
        self._shared, self._grads = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_pids", None):
            self.close()
