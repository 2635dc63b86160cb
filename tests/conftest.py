"""Shared fixtures: backends, seeded inputs, task markers.

Backends. A test that asks for the `backend` fixture runs once per available array module:
"numpy" always, "cupy" when CuPy sees a GPU (skipped with a reason otherwise). The fixture
switches with `minipeft.use(name)`, yields the `minipeft.backend` module and switches back.
`MINIPEFT_BACKEND=cupy make test` runs the suite on the GPU only (and fails loudly if CuPy is
missing); `MINIPEFT_BACKEND=numpy` runs it on the CPU only.

Inputs. `rand(*shape)` draws float64 normals with a NumPy Generator on the host and moves them
with `backend.to_device`, so both backends see the same numbers:

    def test_tanh(backend, rand):
        x = rand(3, 4)                          # Tensor, float64, requires_grad=True
        gradcheck(ops.tanh, x)

Markers, one per assignment task (run one task with `pytest -m task_fused`):
    task_backend      the array-module switch, transfers, scatter-add, RNG
    task_autograd     Tensor, Function/ctx, the backward pass, no_grad, dtypes
    task_gradcheck    the gradient checker itself
    task_ops          arithmetic, matmul, reductions, shape ops, indexing
    task_activations  exp, log, tanh, sigmoid, relu, GELU, softmax, log-softmax
    task_fused        linear, layer norm, cross-entropy, embedding, dropout, masked fill, attention
    (and task_nn, task_transformer, task_training, task_hf: see TASK_MARKERS)

One marker for the machinery rather than the lesson: `infra` marks the tests of minipeft's speed
machinery (threads, processes, malloc: minipeft/cpu.py, minipeft/parallel.py). The teaching tests
alone:
    pytest -m "not infra"                    # everything but the machinery
    pytest -m "task_backend and not infra"   # one task, without its thread tests
"""
from __future__ import annotations

import os

# minipeft first: it sets OpenBLAS's thread settings before NumPy loads (minipeft/cpu.py), so the
# suite runs the fused ops on every core, as users who `import minipeft` first do
import minipeft
from minipeft import backend as _backend
from minipeft.autograd import Tensor

import numpy  # noqa: E402  (after minipeft, on purpose)
import pytest

TASK_MARKERS = {
    "task_backend": "the array-module switch, transfers, scatter-add, RNG",
    "task_autograd": "Tensor, Function/ctx, the backward pass, no_grad, dtypes",
    "task_gradcheck": "the central-difference gradient checker",
    "task_ops": "arithmetic with broadcasting, matmul, reductions, shape ops, indexing",
    "task_activations": "exp, log, tanh, sigmoid, relu, GELU, softmax, log-softmax",
    "task_fused": "linear, layer norm, cross-entropy, embedding, dropout, masked fill, attention",
    "task_nn": "Module bookkeeping and the basic layers",
    "task_transformer": "the Transformer in both layouts",
    "task_training": "training steps, the training loop, pretraining and fine-tuning tasks",
    "task_hf": "Hugging Face BERT/GPT-2 checkpoints in and out, MiniLM sentence embeddings",
    "task_course": "the course kit: solution regions, student copies, the autograder",
}

INFRA_MARKER = "threads, processes, malloc: the speed machinery, not the lesson (skip: -m 'not infra')"

NO_GPU = "no GPU/CuPy: install cupy-cuda12x and run on a GPU machine"


def pytest_configure(config):
    for name, what in TASK_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")
    config.addinivalue_line("markers", f"infra: {INFRA_MARKER}")
    config.addinivalue_line("markers", "cupy: needs a GPU and CuPy")


def _requested_backend() -> str | None:
    """The backend named by MINIPEFT_BACKEND ("numpy" or "cupy"), or None for "run on all"."""
    env = os.environ.get("MINIPEFT_BACKEND", "").strip().lower()
    return env if env in ("numpy", "cupy") else None


def backend_params():
    """pytest params of the backends this run covers (see the module docstring)."""
    cupy_param = pytest.param("cupy", marks=[pytest.mark.cupy, pytest.mark.skipif(
        not _backend.cupy_available(), reason=NO_GPU)])
    requested = _requested_backend()
    if requested == "cupy":
        # asked for explicitly: no skip, a missing GPU must fail (importing minipeft already did)
        return [pytest.param("cupy", marks=pytest.mark.cupy)]
    if requested == "numpy":
        return ["numpy"]
    return ["numpy", cupy_param]


_HOME_BACKEND = _requested_backend() or "numpy"


@pytest.fixture(scope="session", autouse=True)
def _session_defaults():
    """Start the session in float32, seeded, on the home backend."""
    _backend.set_default_dtype(numpy.float32)
    minipeft.manual_seed(0)
    minipeft.use(_HOME_BACKEND)
    yield


@pytest.fixture(autouse=True)
def _reset_state():
    """Each test starts and leaves float32, seed 0, home backend, gradients enabled."""
    _backend.set_default_dtype(numpy.float32)
    minipeft.manual_seed(0)
    yield
    _backend.set_default_dtype(numpy.float32)
    minipeft.manual_seed(0)
    minipeft.use(_HOME_BACKEND)


@pytest.fixture(params=backend_params())
def backend(request):
    """Run the test on one backend; yields the `minipeft.backend` module switched to it."""
    minipeft.use(request.param)
    assert _backend.name == request.param
    yield _backend
    minipeft.use(_HOME_BACKEND)


class Draw:
    """Seeded inputs drawn on the host and moved to the current backend.

    draw(*shape)                      float64 normal Tensor with requires_grad=True
    draw(*shape, requires_grad=False, dtype=numpy.float32, low=0.5, high=2.0)   uniform instead
    draw.ints(low, high, shape)       an integer device array (indices, token ids)
    draw.host(*shape)                 a NumPy float64 array (for closed forms and constants)
    """

    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.gen = numpy.random.default_rng(seed)

    def host(self, *shape, low=None, high=None, scale=1.0):
        if low is not None:
            return self.gen.uniform(low, high, size=shape)
        return self.gen.normal(0.0, scale, size=shape)

    def __call__(self, *shape, requires_grad=True, dtype=numpy.float64, low=None, high=None,
                 scale=1.0, name=None):
        a = self.host(*shape, low=low, high=high, scale=scale).astype(dtype)
        return Tensor(_backend.to_device(a), requires_grad=requires_grad, name=name)

    def ints(self, low, high, shape):
        return _backend.to_device(self.gen.integers(low, high, size=shape))


@pytest.fixture
def rand(backend):
    """A `Draw` seeded with 0, on the backend of the test (see `Draw`)."""
    return Draw(0)
