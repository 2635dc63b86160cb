"""The array-module switch: the only place in minipeft that imports numpy or cupy for computation
(with minipeft/cpu.py beside it, the threads and memory settings that make NumPy fast).

Everything else asks this module for the array module at call time:

    from minipeft import backend
    xp = backend.xp            # numpy or cupy, whichever `use()` chose
    a = xp.zeros((3, 4), dtype=backend.default_dtype())

Always read `backend.xp` when you need it (not `from minipeft.backend import xp`), so that a later
`minipeft.use("cupy")` is seen everywhere.

Choosing a backend:
    minipeft.use("numpy")        # always available
    minipeft.use("cupy")         # needs CuPy and a visible GPU; otherwise a clear error, never a silent CPU fallback
    minipeft.use("auto")         # CuPy when it imports and sees a GPU, else NumPy
    MINIPEFT_BACKEND=cupy python ...   # the same, chosen from the environment at import time

Host/device transfers are explicit: `to_device(a)` puts a host (NumPy) array on the current
backend, `to_numpy(a)` brings any array back to the host.
"""
from __future__ import annotations

import os

# The CPU machinery (one pool of threads, OpenBLAS settings, malloc) lives in minipeft/cpu.py.
# It is imported first because it sets OpenBLAS's thread count, which OpenBLAS reads only when
# NumPy is first imported. What other modules call from it is named here too (end of this file).
from . import cpu

import numpy  # noqa: E402

xp = numpy            # the array module in use: numpy or cupy
name = "numpy"        # "numpy" or "cupy"
_default_dtype = numpy.float32

# counters that tests and students can read: how many matmuls ran (see `matmul`)
stats = {"matmul": 0}

_CUPY_HELP = ("install CuPy for your CUDA version: `pip install cupy-cuda12x` (CUDA 12) or "
              "`pip install cupy-cuda13x` (CUDA 13), and make sure `nvidia-smi` shows a GPU")


def _import_cupy():
    """Return the cupy module if it imports and sees at least one GPU, else (None, reason)."""
    try:
        import cupy  # noqa: F401  (the one optional import of the project)
    except Exception as e:  # ImportError, or a broken CUDA install raising something else
        return None, f"CuPy is not importable ({type(e).__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return None, f"CuPy imported but cannot talk to a GPU ({type(e).__name__}: {e})"
    if n < 1:
        return None, "CuPy imported but no GPU is visible"
    return cupy, ""


def use(backend_name: str = "auto") -> str:
    """Select the array module: "numpy", "cupy" or "auto". Returns the name chosen.

    Arrays created before the switch stay where they were: move them with `to_device`.
    """
    global xp, name
    choice = str(backend_name).strip().lower()
    if choice not in ("numpy", "cupy", "auto"):
        raise ValueError(f"unknown backend {backend_name!r}; expected 'numpy', 'cupy' or 'auto' "
                         f"(set MINIPEFT_BACKEND or call minipeft.use(...) with one of them)")
    if choice == "numpy":
        xp, name = numpy, "numpy"
        return name
    cupy, why = _import_cupy()
    if cupy is None:
        if choice == "auto":
            xp, name = numpy, "numpy"
            return name
        raise RuntimeError(f"backend 'cupy' was requested but {why}. To fix: {_CUPY_HELP}; "
                           f"or use the CPU with minipeft.use('numpy') / MINIPEFT_BACKEND=numpy.")
    xp, name = cupy, "cupy"
    return name


def cupy_available() -> bool:
    """True when CuPy imports and sees a GPU (used by tests to skip GPU cases with a reason)."""
    return _import_cupy()[0] is not None


# ----------------------------------------------------------------------------- dtypes

def default_dtype():
    """float32 unless `set_default_dtype(float64)` was called (gradient checks do)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    dt = numpy.dtype(dtype)
    if dt not in (numpy.float32, numpy.float64):
        raise ValueError(f"default dtype must be float32 or float64, got {dt}")
    _default_dtype = dt.type


class default_dtype_as:
    """Context manager: `with backend.default_dtype_as(np.float64): ...` (used by gradient checks)."""

    def __init__(self, dtype):
        self.dtype, self.saved = dtype, None

    def __enter__(self):
        self.saved = _default_dtype
        set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        set_default_dtype(self.saved)


float32, float64, int64, int32, bool_ = numpy.float32, numpy.float64, numpy.int64, numpy.int32, numpy.bool_


# ----------------------------------------------------------------------------- transfers

def to_device(a, dtype=None):
    """Host (or device) array -> array of the current backend. The one host->device door."""
    if name == "cupy":
        return xp.asarray(a, dtype=dtype)
    if hasattr(a, "get") and not isinstance(a, numpy.ndarray):  # a cupy array while on numpy
        a = a.get()
    return numpy.asarray(a, dtype=dtype)


def to_numpy(a):
    """Any array (or scalar) -> NumPy array on the host. The one device->host door."""
    if isinstance(a, numpy.ndarray):
        return a
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return numpy.asarray(a)


def host():
    """The host array module (numpy), for code that must stay on the CPU: data, metrics, plots."""
    return numpy


# ----------------------------------------------------------------------------- random numbers

class RNG:
    """A seeded random generator that draws on the host and moves the result to the backend.

    Drawing on the host means NumPy and CuPy runs see the same numbers for the same seed,
    which is what tests and reproducible runs need. Large draws during training (dropout masks)
    use `device_rng`, which is faster on a GPU.
    """

    def __init__(self, seed: int | None = 0):
        self.seed(seed)

    def seed(self, seed: int | None) -> None:
        self.gen = numpy.random.default_rng(seed)
        self._device = None

    def normal(self, shape, std=1.0, mean=0.0, dtype=None):
        dtype = dtype or default_dtype()
        return to_device(self.gen.normal(mean, std, size=shape).astype(dtype))

    def uniform(self, shape, low=0.0, high=1.0, dtype=None):
        dtype = dtype or default_dtype()
        return to_device(self.gen.uniform(low, high, size=shape).astype(dtype))

    def integers(self, low, high, shape):
        return to_device(self.gen.integers(low, high, size=shape))

    def device_uniform(self, shape, dtype=None):
        """Uniform [0, 1) drawn directly on the current backend (no transfer); for dropout masks."""
        dtype = dtype or default_dtype()
        if name == "numpy":
            return self.gen.random(size=shape, dtype=dtype)
        if self._device is None:
            self._device = xp.random.default_rng(self.gen.integers(0, 2**31 - 1))
        return self._device.random(size=shape, dtype=dtype)


rng = RNG(0)


def manual_seed(seed: int) -> None:
    """Seed the global generator used for initialisation and dropout."""
    rng.seed(seed)


# ----------------------------------------------------------------------------- kernels that differ by backend

def matmul(a, b, out=None, bias=None):
    """a @ b (+ bias) on the current backend, counted in `stats['matmul']` (tests read it to prove
    that a frozen weight costs no weight-gradient matmul).

    On NumPy with several threads (`set_threads`), a large product is computed by
    `cpu.matmul_in_blocks`: the same product, cut into blocks of rows that the threads of `rows`
    multiply at the same time (results repeat exactly run to run; against one thread they can
    differ in the last bits).
    a: (..., n, k), b: (k, m) or (..., k, m) with the same leading dims; bias: (m,) added to every row.
    """
    stats["matmul"] += 1
    if name == "numpy" and cpu.product_worth_threads(a, b):
        return cpu.matmul_in_blocks(a, b, out, bias)
    out = xp.matmul(a, b, out=out)
    if bias is not None:
        out += bias
    return out


def take_rows(a, rows, out):
    """out[...] = a[rows] along the first axis, written into `out` (any strides: a view of a
    larger buffer) without a temporary on NumPy; rows: a device int array of valid indices."""
    if name == "numpy":
        return numpy.take(a, rows, axis=0, out=out, mode="clip")   # "clip": unbuffered (rows are valid)
    out[...] = a[rows]
    return out


def scatter_add(target, indices, values):
    """target[indices[i]] += values[i] for every i, correct with repeated indices on both backends.

    target: (V, d); indices: (N,) integer; values: (N, d). Modifies `target` in place and returns it.
    (`target[indices] += values` is wrong with repeated indices: the last write wins.)
    """
    if name == "cupy":
        xp.add.at(target, indices, values)  # CuPy's ufunc.at adds atomically: repeats are correct
        return target
    if indices.size == 0:  # nothing to add (reduceat below cannot take an empty input)
        return target
    # sort the ids once, then sum each run of equal ids with one reduceat (faster than np.add.at)
    order = numpy.argsort(indices, kind="stable")
    sorted_ids = indices[order]
    starts = numpy.flatnonzero(numpy.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    sums = numpy.add.reduceat(values[order], starts, axis=0)
    target[sorted_ids[starts]] += sums
    return target


def erf(a):
    """The error function, elementwise: erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt.

    NumPy has no erf (it has exp and tanh); SciPy's and CuPy's are ufuncs accurate to the last bit
    of float64, which a hand-written series would have to earn. Used by the exact GELU (BERT).
    """
    if name == "cupy":
        from cupyx.scipy.special import erf as _erf
        return _erf(a)
    from scipy.special import erf as _erf    # one thread, ~20 ns a number: blocks of rows in parallel
    out = xp.empty(a.shape, a.dtype)
    cpu.rows(lambda a, out: _erf(a, out=out), *cpu.as_rows(a, out))
    return out


def synchronize() -> None:
    """Wait for the GPU to finish (for timing); a no-op on NumPy."""
    if name == "cupy":
        xp.cuda.Stream.null.synchronize()


# ----------------------------------------------------------------------------- the CPU machinery, by name
# (minipeft/cpu.py: read it for how the threads work; change its settings there, not here)

rows, as_rows, this_thread_only = cpu.rows, cpu.as_rows, cpu.this_thread_only
set_threads, get_threads, stop_threads = cpu.set_threads, cpu.get_threads, cpu.stop_threads
keep_freed_memory = cpu.keep_freed_memory
MIN_PARALLEL, MIN_PARALLEL_PRODUCT = cpu.MIN_PARALLEL, cpu.MIN_PARALLEL_PRODUCT
OPENBLAS_NUM_THREADS, OPENBLAS_THREAD_TIMEOUT = cpu.OPENBLAS_NUM_THREADS, cpu.OPENBLAS_THREAD_TIMEOUT

# choose from the environment at import time
_env = os.environ.get("MINIPEFT_BACKEND")
if _env:
    try:
        use(_env)
    except (RuntimeError, ValueError) as _err:
        # asked for in the environment, at import: one clear line and exit, not a traceback from
        # inside `import minipeft` (never a silent fall back to NumPy)
        raise SystemExit(f"minipeft: error: MINIPEFT_BACKEND={_env!r}: {_err}") from None
