"""The CPU speed machinery beside the array-module switch: one pool of threads, OpenBLAS settings
and glibc's malloc. Nothing here changes what is computed, only how fast NumPy computes it.

NumPy runs one elementwise pass (x * y, tanh, exp, a sum along the last axis) on ONE core, and
with OPENBLAS_NUM_THREADS=1 (set below) its matrix products too. It does release Python's GIL
inside those loops, so Python threads that work on different rows of the same arrays run at the
same time. `rows` does exactly that for the fused ops (GELU, attention, layer norm, cross-entropy,
AdamW) and for the blocks of `backend.matmul` (`matmul_in_blocks`). Each row of an elementwise
pass is computed by the same code in the same order whichever thread runs it, so the result is
bit-identical to a single-threaded run (products: see `matmul_in_blocks`). Handing a block to a
sleeping thread costs ~0.1 ms on a small virtual machine, so only large arrays are cut. On CuPy
the GPU is parallel already: `rows` just calls.

Other modules reach these through `backend` (backend.rows, backend.set_threads, ...), which
imports this module before it imports NumPy: OpenBLAS reads its settings only then. Settings that
tests change (MIN_PARALLEL, MIN_PARALLEL_PRODUCT, SPLIT_PRODUCTS) are read here, so set them here.
"""
from __future__ import annotations

import os
import sys
import threading

# One pool of threads does minipeft's CPU work (`rows`): OpenBLAS multiplies on ONE thread, and
# minipeft cuts each large product into blocks of rows that its own threads multiply at the same
# time, as it does for the elementwise passes. With two pools (OpenBLAS's and minipeft's) each
# product had to wake OpenBLAS's sleeping threads and the elementwise work waited for them to fall
# asleep again; with one pool a 2-core training step got 1-10 % faster, and attention gets
# 1.65-1.9x faster from 1 to 2 cores instead of 1.05-1.2x (bench/RESULTS.md).
# OpenBLAS reads the variable when NumPy is first imported, so it only counts if NumPy is not
# loaded yet; a value you set yourself is kept (OPENBLAS_NUM_THREADS=2: OpenBLAS threads its
# products and minipeft does not cut them). What minipeft sets it takes back once NumPy has loaded,
# so that other programs started from this one (and their own OpenBLAS) are not held to one thread.
_NUMPY_FIRST = "numpy" in sys.modules
_SET_BY_US = not _NUMPY_FIRST and "OPENBLAS_NUM_THREADS" not in os.environ
if _SET_BY_US:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
OPENBLAS_NUM_THREADS = os.environ.get("OPENBLAS_NUM_THREADS")   # what this process's OpenBLAS read
# If OpenBLAS does run several threads, they spin for 2^28 cycles (~0.1 s) after each product and
# take the cores from the threads of `rows`. 16 = spin 2^16 cycles (~25 us): long enough to stay
# awake between the small products of one batched matmul, short enough to free the cores for the
# elementwise work that follows (measured: bench/RESULTS.md).
OPENBLAS_THREAD_TIMEOUT = "16"
_BLAS_TIMEOUT_SET = not _NUMPY_FIRST or "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)

import numpy  # noqa: E402

if _SET_BY_US:
    del os.environ["OPENBLAS_NUM_THREADS"]


def _backend():
    """The backend module, for its current `name` and `xp` (imported here, at call time, because
    backend imports this module while it is itself being imported)."""
    from . import backend
    return backend


def _blas_runs_one_thread() -> bool:
    """True when NumPy's BLAS is OpenBLAS started with OPENBLAS_NUM_THREADS=1: then
    `backend.matmul` may run products in several threads of its own. (An MKL-linked NumPy threads
    its products itself.)"""
    if OPENBLAS_NUM_THREADS != "1":
        return False
    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # an older NumPy or an unusual build: do not guess
        return False
    return "openblas" in str(blas).lower()


SPLIT_PRODUCTS = _blas_runs_one_thread()   # may `backend.matmul` cut products into blocks?


# ----------------------------------------------------------------------------- host memory

def keep_freed_memory(keep: bool = True) -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS
    (keep=False: hand it back again, glibc's default thresholds, and return what is free now).

    `train.fit` calls it on the NumPy backend (the demo: 71-76 s -> 56-58 s, system time 27 -> 2.5 s).
    A training step allocates and frees ~100 MB of NumPy temporaries (activations, gradients).
    By default glibc returns large blocks at once (munmap, heap trimming) and the next step
    page-faults them in again: on the tiny config ~25,000 page faults and ~60 ms of system time
    per step (about 20% of the step). Setting M_MMAP_MAX = 0 (large blocks come from the heap too)
    and a large M_TRIM_THRESHOLD (the heap is not trimmed) makes the faults disappear; peak memory
    is unchanged. Process-wide, Linux/glibc only; returns True when it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes                                     # (a Python built without ctypes still imports minipeft)
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim   # absent with musl and on other platforms
    except (ImportError, OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                 # from glibc's <malloc.h>
    if keep:
        return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    done = bool(mallopt(M_MMAP_MAX, 65536)) and bool(mallopt(M_TRIM_THRESHOLD, 128 * 1024))  # glibc's defaults
    malloc_trim(0)
    return done


# ----------------------------------------------------------------------------- the pool of threads

def _default_threads() -> int:
    """$MINIPEFT_THREADS if set; else the usable cores, but 1 when NumPy was imported before
    minipeft and its OpenBLAS may run threads that spin after every product (neither
    OPENBLAS_NUM_THREADS=1 nor OPENBLAS_THREAD_TIMEOUT was set): two threads of `rows` then
    measured 3 % slower than one. Import minipeft first, or set OPENBLAS_NUM_THREADS=1 before
    NumPy loads."""
    env = os.environ.get("MINIPEFT_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"MINIPEFT_THREADS={env!r}: expected a positive integer (1 = no extra threads); "
                             f"unset it to use every usable core")
        return int(env)
    if not _BLAS_TIMEOUT_SET and not SPLIT_PRODUCTS:
        return 1
    try:
        return len(os.sched_getaffinity(0))       # the cores this process may use
    except AttributeError:                        # not on Linux
        return os.cpu_count() or 1


_threads = _default_threads()
_pool, _pool_pid = None, None
_dropped = []               # pools that set_threads replaced: their threads may still be exiting
_inside = threading.local()  # .block is True while this thread runs a block of `rows`
MIN_PARALLEL = 1 << 15      # arrays smaller than this (32k numbers) are not worth a thread hand-off


def set_threads(n: int) -> None:
    """How many threads `rows` uses (default: the usable cores, or $MINIPEFT_THREADS). 1 = off."""
    global _threads, _pool
    if int(n) < 1:
        raise ValueError(f"set_threads: need at least 1 thread, got {n}")
    if _pool is not None and _pool_pid == os.getpid():
        _pool.shutdown(wait=False)                  # its idle threads exit; `rows` makes a new pool
        _dropped.append(_pool)
    _threads, _pool = int(n), None


def get_threads() -> int:
    return _threads


def stop_threads() -> None:
    """Let the pool's threads exit and wait until they have (the next `rows` starts new ones).
    Call it before os.fork(): a forked child gets only the thread that forked, and a lock another
    thread held at that moment stays locked there for ever (minipeft.parallel does this)."""
    global _pool
    if _pool is not None and _pool_pid == os.getpid():
        _dropped.append(_pool)
    for pool in _dropped:                           # also the pools set_threads let go of
        pool.shutdown(wait=True)
    _dropped.clear()
    _pool = None


class this_thread_only:
    """`with backend.this_thread_only(): ...` runs every `rows` (and so every `matmul`) of this
    thread inline, without the pool: for work that runs while the other cores are busy with
    something else (minipeft.parallel runs one slice of the batch per process and core)."""

    def __enter__(self):
        self._before = getattr(_inside, "block", False)
        _inside.block = True                        # the same mark a block of `rows` sets

    def __exit__(self, *exc):
        _inside.block = self._before


def rows(fn, *arrays, min_size: int | None = None) -> None:
    """Call fn(*blocks) on blocks of rows (first axis) of `arrays`, in parallel threads; wait.

    Every array must have the same number of rows; fn must treat the rows independently and
    write its results into the output blocks it is given (views of the caller's arrays), e.g.

        def gelu_rows(x, y):                     # x, y: (n, d) blocks of rows
            ...; xp.tanh(..., out=y); ...
        backend.rows(gelu_rows, x2, y2)          # x2, y2: (N, d)

    Small arrays (fewer than `min_size` numbers in the first, default MIN_PARALLEL), one thread,
    the CuPy backend, or a call from inside a block of `rows` (the pool is busy; waiting for it
    there could wait forever): one call fn(*arrays) in this thread.
    The workers run under the caller's numpy.errstate, and `rows` returns only when every block
    is done, also when one of them raised (the first error is re-raised). Not meant to be called
    from several user threads at once while another changes `set_threads`."""
    global _pool, _pool_pid
    n, k = arrays[0].shape[0], _threads
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"backend.rows: every array needs the same number of rows (first axis), got "
                         f"{[a.shape for a in arrays]}")
    if min_size is None:
        min_size = MIN_PARALLEL
    if (k < 2 or n < 2 or arrays[0].size < min_size or getattr(_inside, "block", False)
            or _backend().name != "numpy"):
        fn(*arrays)                                 # (inside a block already: the pool is busy, no nesting)
        return
    if _pool is None or _pool_pid != os.getpid():   # a forked child has no threads: new pool
        from concurrent.futures import ThreadPoolExecutor
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="minipeft"), os.getpid()
    step = -(-n // min(k, n))                       # rows per block, ceil(n / k)
    err = numpy.geterr()                            # NumPy's error state is per thread: pass it on

    def block(i):                                   # marked, so that a nested `rows` runs inline
        _inside.block = True
        try:
            with numpy.errstate(**err):
                fn(*(a[i:i + step] for a in arrays))
        finally:
            _inside.block = False

    futures = [_pool.submit(block, i) for i in range(step, n, step)]
    try:
        block(0)                                    # this thread does the first block
    finally:
        errors = [f.exception() for f in futures]   # waits for every worker, even after an error here
    for e in errors:
        if e is not None:
            raise e


def as_rows(*arrays):
    """Each array as a C-contiguous 2-d (rows, last axis) array for `rows`. Outputs must be made
    C-contiguous (xp.empty(shape, dtype)), so that this is a view of them and writes land; an
    input that is not contiguous is copied (it is only read), which also keeps each row's
    reductions in the same order whatever block it falls in."""
    xp = _backend().xp
    return [xp.ascontiguousarray(a).reshape(-1, a.shape[-1]) if a.ndim and a.shape[-1] else a.reshape(1, -1)
            for a in arrays]


# ----------------------------------------------------------------------------- products in blocks

MIN_PARALLEL_PRODUCT = 1 << 23   # multiply-adds (~8M, ~0.1 ms on one core): below, a hand-off costs more


def product_worth_threads(a, b) -> bool:
    """Should `backend.matmul` (on NumPy) hand a @ b to `matmul_in_blocks`? With several threads,
    when OpenBLAS runs one thread (SPLIT_PRODUCTS), and for a product large enough."""
    if a.ndim < 2 or b.ndim < 2 or _threads < 2 or not SPLIT_PRODUCTS:
        return False
    if a.shape[0] < 2 and not (a.ndim == 2 and b.ndim == 2):
        return False                                  # one matrix of a stack: nothing to cut
    if b.ndim != 2 and (b.ndim != a.ndim or b.shape[:-2] != a.shape[:-2]):
        return False                                  # broadcast stacks: one call
    return a.size * b.shape[-1] >= MIN_PARALLEL_PRODUCT


def matmul_in_blocks(a, b, out=None, bias=None):
    """out = a @ b (+ bias), NumPy arrays, cut into blocks of rows of `a` (of columns of `b` when
    `a` has fewer rows than threads, as when decoding one token), or of the batch for stacks of
    matrices, that the threads of `rows` multiply at the same time (OpenBLAS itself runs on one
    thread, see the top of this file). With the same number of threads the blocks are the same, so
    results repeat exactly from run to run; against one thread they can differ in the last bits
    (OpenBLAS may use another kernel for a block of a few rows)."""

    def product_rows(a, b, out):                     # one block: out = a @ b (+ bias)
        out = numpy.matmul(a, b, out=out)
        if bias is not None:
            out += bias
        return out

    if out is None:
        shape = numpy.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        out = numpy.empty(shape, numpy.result_type(a, b))
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] < _threads:
        # few rows (decoding one token: x is (1, d)): cut the columns of b and out instead
        def product_columns(bt, outt, *bias_block):  # bt: (m_block, k), outt: (m_block, n), views
            numpy.matmul(a, bt.T, out=outt.T)
            if bias_block:
                outt += bias_block[0][:, None]
        rows(product_columns, b.T, out.T, *(() if bias is None else (bias,)), min_size=0)
    elif b.ndim == 2:                                 # every block of rows times the same b
        rows(lambda a, out: product_rows(a, b, out), a, out, min_size=0)
    else:                                             # stacks: block i of a times block i of b
        rows(product_rows, a, b, out, min_size=0)
    return out
