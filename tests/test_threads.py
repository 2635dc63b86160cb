"""Row-parallel elementwise work (backend.rows): the fused ops, run on blocks of rows in several
threads, must give the SAME bits as one thread, forward and backward, and still pass float64
gradient checks. The threshold `cpu.MIN_PARALLEL` is set to 0 here, so that even the small
arrays of a test are cut into blocks (odd row counts, more threads than some arrays have rows).

Matrix products cut into blocks of rows (backend.matmul) are the exception: OpenBLAS may pick a
different kernel for a block of a few rows than for the whole product, so they are checked
against one thread to float32 rounding, and for being the same from run to run."""
from __future__ import annotations

import os

import numpy
import pytest

import minipeft
from minipeft import backend, cpu, ops
from minipeft.autograd import Tensor
from minipeft.gradcheck import gradcheck
from minipeft.optim import AdamW

pytestmark = [pytest.mark.task_backend, pytest.mark.infra]


@pytest.fixture
def threaded(monkeypatch):
    """Yields a function `with_threads(n, fn)`: runs fn() with n threads and every array split.
    Threads only exist on NumPy (on CuPy `rows` makes one call; see the last test), so this
    fixture switches to NumPy, also when the suite runs with MINIPEFT_BACKEND=cupy."""
    minipeft.use("numpy")
    monkeypatch.setattr(cpu, "MIN_PARALLEL", 0)
    saved = backend.get_threads()

    def with_threads(n, fn):
        backend.set_threads(n)
        try:
            return fn()
        finally:
            backend.set_threads(saved)
    yield with_threads
    backend.set_threads(saved)


def test_rows_splits_every_array_at_the_same_rows(threaded):
    seen = []

    def record(a, b):
        assert a.shape[0] == b.shape[0]
        seen.append((int(a[0, 0]), a.shape[0]))
        b[:] = a * 2
    a = numpy.arange(7 * 3, dtype=numpy.float64).reshape(7, 3)
    b = numpy.zeros_like(a)
    threaded(3, lambda: backend.rows(record, a, b))
    assert sorted(seen) == [(0, 3), (9, 3), (18, 1)], f"blocks (first value, rows): {sorted(seen)}"
    numpy.testing.assert_array_equal(b, a * 2)


def test_rows_reraises_an_error_of_a_worker_thread(threaded):
    def fail_on_second_block(a):
        if a[0] != 0:
            raise ValueError(f"block starting at {a[0]}")
    with pytest.raises(ValueError, match="block starting at"):
        threaded(2, lambda: backend.rows(fail_on_second_block, numpy.arange(10)))


def test_set_threads_rejects_zero():
    with pytest.raises(ValueError, match="at least 1"):
        backend.set_threads(0)


def test_rows_works_in_a_forked_child(threaded):
    # a child made by fork() inherits the pool object but none of its threads: rows must make a
    # new pool there instead of waiting forever for a thread that does not exist
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    backend.set_threads(2)
    backend.rows(lambda a: None, numpy.zeros((4, 4)))           # the parent's pool exists now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                                # the child
        os.close(r)
        out = numpy.zeros((6, 2))
        backend.rows(lambda o: o.__setitem__(slice(None), 1.0), out)
        os.write(w, b"ok" if out.sum() == 12 else b"bad")
        os._exit(0)
    os.close(w)
    import select
    ready, _, _ = select.select([r], [], [], 20)
    os.waitpid(pid, 0)
    assert ready, "the forked child did not finish within 20 s (rows waited for a thread that does not exist)"
    assert os.read(r, 8) == b"ok"


def _run_op(make_inputs, fn):
    """Forward and backward of fn on fresh float32 inputs; returns (output, input grads) on the host."""
    xs = make_inputs()
    y = fn(*xs)
    g = numpy.random.default_rng(1).standard_normal(y.shape).astype(y.data.dtype)
    (y * Tensor(backend.to_device(g))).sum().backward()
    return backend.to_numpy(y.data), [backend.to_numpy(x.grad) for x in xs if x.requires_grad]


def _inputs(*shapes, seed=0, dtype=numpy.float32):
    rng = numpy.random.default_rng(seed)
    return lambda: [Tensor(backend.to_device(rng.standard_normal(s).astype(dtype)), requires_grad=True) for s in shapes]


TARGETS = numpy.array([1, 0, 10, -100, 3, 3, 7, 2, -100, 9, 5, 0, 4])
KEY_MASK = numpy.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], dtype=bool)
PREFIX_START = numpy.array([[0, 3]])          # row 0 always visible, row 1 from position 3 on
OPS = {   # name: (input shapes, the op)
    "gelu": (((7, 5, 9),), ops.gelu),
    "layer_norm": (((7, 5, 9), (9,), (9,)), ops.layer_norm),
    "cross_entropy": (((13, 11),), lambda x: ops.cross_entropy(x, TARGETS)),
    "attention": (((3, 2, 5, 4),) * 3, lambda q, k, v: ops.attention(q, k, v, causal=True)),
    "attention_prefix": (((3, 2, 5, 4),) * 3 + ((1, 2, 2, 4),) * 2,
                         lambda q, k, v, kp, vp: ops.attention(q, k, v, kp, vp, causal=True)),
    # padding keys, one sample with every key padded (constant scores: no gradient through them)
    "attention_key_mask": (((3, 2, 5, 4),) * 3,
                           lambda q, k, v: ops.attention(q, k, v, causal=False, key_mask=KEY_MASK)),
    # a prefix per sample, with rows that open later (an infix) or never
    "attention_prefix_start": (((3, 2, 5, 4),) * 3 + ((3, 2, 2, 4),) * 2,
                               lambda q, k, v, kp, vp: ops.attention(q, k, v, kp, vp, causal=True,
                                                                     prefix_start=PREFIX_START)),
    # one sample and more threads than samples: attention is cut by heads instead of the batch
    "attention_batch_1": (((1, 4, 5, 4),) * 3, lambda q, k, v: ops.attention(q, k, v, causal=True)),
}


def _op(name):
    return OPS[name][1]


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_threaded_op_is_bit_identical_to_one_thread(threaded, name, n):
    minipeft.use("numpy")
    make = _inputs(*OPS[name][0])
    y1, g1 = threaded(1, lambda: _run_op(make, _op(name)))
    make = _inputs(*OPS[name][0])
    yn, gn = threaded(n, lambda: _run_op(make, _op(name)))
    assert numpy.array_equal(y1, yn), f"{name}: forward with {n} threads differs from 1 thread " \
                                      f"(max |diff| {numpy.abs(y1 - yn).max():.3g})"
    for i, (a, b) in enumerate(zip(g1, gn)):
        assert numpy.array_equal(a, b), f"{name}: gradient of input {i} with {n} threads differs " \
                                        f"(max |diff| {numpy.abs(a - b).max():.3g})"


@pytest.mark.parametrize("name", list(OPS))
def test_threaded_op_passes_the_float64_gradient_check(threaded, name):
    minipeft.use("numpy")
    xs = _inputs(*OPS[name][0], dtype=numpy.float64)()
    threaded(3, lambda: gradcheck(_op(name), *xs, name=f"{name}, 3 threads"))


def test_threaded_adamw_is_bit_identical_to_one_thread(threaded):
    minipeft.use("numpy")

    def train():
        rng = numpy.random.default_rng(0)
        ps = [Tensor(rng.standard_normal(s).astype(numpy.float32), requires_grad=True) for s in [(17, 5), (3,)]]
        opt = AdamW(ps, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in ps:
                p.grad = rng.standard_normal(p.shape).astype(numpy.float32)
            opt.step()
        return [p.data.copy() for p in ps]
    one, many = threaded(1, train), threaded(3, train)
    for a, b in zip(one, many):
        assert numpy.array_equal(a, b), f"AdamW with 3 threads differs: max |diff| {numpy.abs(a - b).max():.3g}"


# ----------------------------------------------------------------------------- edge cases

WIDE = {"gelu": ((3, 300),), "layer_norm": ((7, 300), (300,), (300,)), "cross_entropy": ((13, 300),)}


@pytest.mark.parametrize("name", list(WIDE))
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed input"])
def test_wide_and_transposed_rows_are_bit_identical(threaded, name, transposed):
    # rows longer than NumPy's pairwise-summation block (128), and an input that is a transposed
    # view: a row's reductions must not depend on the block it falls in
    minipeft.use("numpy")

    def make():
        rng = numpy.random.default_rng(3)
        xs = []
        for i, s in enumerate(WIDE[name]):
            a = rng.standard_normal(s[::-1] if (transposed and i == 0) else s).astype(numpy.float32)
            xs.append(Tensor(a.T if (transposed and i == 0) else a, requires_grad=True))
        return xs
    y1, g1 = threaded(1, lambda: _run_op(make, _op(name)))
    y3, g3 = threaded(3, lambda: _run_op(make, _op(name)))
    assert numpy.array_equal(y1, y3), f"{name}: forward differs with 3 threads (max |diff| {numpy.abs(y1 - y3).max():.3g})"
    for i, (a, b) in enumerate(zip(g1, g3)):
        assert numpy.array_equal(a, b), f"{name}: gradient {i} differs with 3 threads (max |diff| {numpy.abs(a - b).max():.3g})"


@pytest.mark.parametrize("shape", [(), (7,), (4, 0)], ids=["0-d", "1-d", "zero width"])
def test_gelu_on_small_and_empty_shapes(threaded, shape):
    minipeft.use("numpy")
    x = numpy.linspace(-2, 2, int(numpy.prod(shape))).reshape(shape)
    y = threaded(2, lambda: ops.gelu(Tensor(x)).data)
    expected = 0.5 * x * (1 + numpy.tanh(numpy.sqrt(2 / numpy.pi) * (x + 0.044715 * x ** 3)))
    assert y.shape == shape
    numpy.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-15)


def test_workers_run_under_the_callers_errstate(threaded):
    # NumPy's error state is per thread: without passing it on, only the caller's block would raise
    minipeft.use("numpy")
    x = numpy.zeros((4, 64), dtype=numpy.float32)
    x[-1, 0] = 1e30                                    # the last block: x * x overflows in a worker
    with numpy.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            threaded(2, lambda: ops.gelu(Tensor(x)))


def test_rows_waits_for_every_block_when_one_fails(threaded):
    import time as _time
    out = numpy.zeros((4, 8))

    def slow_or_fail(o):
        if numpy.shares_memory(o, out[:2]):             # the caller's own block
            raise RuntimeError("first block")
        _time.sleep(0.2)
        o += 1
    with pytest.raises(RuntimeError, match="first block"):
        threaded(2, lambda: backend.rows(slow_or_fail, out))
    assert out[2:].sum() == 16, "rows returned before the second block had finished"


def test_rows_rejects_arrays_with_different_row_counts(threaded):
    with pytest.raises(ValueError, match="same number of rows"):
        threaded(2, lambda: backend.rows(lambda a, b: None, numpy.zeros((4, 2)), numpy.zeros((3, 2))))


def test_a_bad_minipeft_threads_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MINIPEFT_THREADS", "two")
    with pytest.raises(ValueError, match="MINIPEFT_THREADS='two': expected a positive integer"):
        cpu._default_threads()
    monkeypatch.setenv("MINIPEFT_THREADS", "3")
    assert cpu._default_threads() == 3


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_training_steps_are_bit_identical_with_threads(threaded, method, arch):
    # the whole model end to end: two AdamW steps with every array cut into blocks (3 threads)
    # must give exactly the losses and weights of one thread
    minipeft.use("numpy")
    from minipeft import peft
    from minipeft.nn import Transformer, TransformerConfig

    def train():
        minipeft.manual_seed(0)
        model = Transformer(TransformerConfig(arch=arch, vocab_size=50, n_ctx=16, d_model=32, n_layer=2, n_head=4))
        if method == "lora":
            model = peft.apply(model, peft.LoraConfig(r=4, target_modules=("q", "v", "fc")))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = AdamW(params, lr=1e-2)
        ids = numpy.random.default_rng(1).integers(0, 50, size=(5, 13))
        losses = []
        for _ in range(2):
            _, loss = model(ids[:, :-1], ids[:, 1:])    # bert: its MLM head on every position
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.data))
        return losses, [p.data.copy() for p in params]
    (l1, p1), (l3, p3) = threaded(1, train), threaded(3, train)
    assert l1 == l3, f"{arch} {method}: losses with 3 threads {l3} differ from 1 thread {l1}"
    for i, (a, b) in enumerate(zip(p1, p3)):
        assert numpy.array_equal(a, b), f"{arch} {method}: parameter {i} differs after 2 steps " \
                                        f"(max |diff| {numpy.abs(a - b).max():.3g})"


# ----------------------------------------------------------------------------- matrix products in blocks

PRODUCTS = {   # name: (shape of a, shape of b, transpose a?, transpose b?, bias?)
    "plain": ((60, 50), (50, 32), False, False, False),
    "a transposed (dW = G^T x)": ((60, 50), (50, 32), True, False, False),
    "b transposed (x W^T + b)": ((60, 50), (50, 32), False, True, True),
    "3-d times 2-d": ((4, 7, 50), (50, 3), False, False, False),
    "stacks (attention)": ((3, 2, 9, 5), (3, 2, 5, 4), False, False, False),
    "one row (decoding: columns are cut)": ((1, 50), (50, 32), False, True, True),
}


def _cut_length(name):
    """How many rows (or columns, for a product with fewer rows than threads) backend.matmul cuts."""
    shape_a, shape_b = PRODUCTS[name][:2]
    return shape_b[-1] if name.startswith("one row") else shape_a[0]


def _product(shape_a, shape_b, ta, tb, bias, seed=0):
    rng = numpy.random.default_rng(seed)
    a = rng.standard_normal(shape_a[:-2] + shape_a[:-3:-1] if ta else shape_a).astype(numpy.float32)
    b = rng.standard_normal(shape_b[:-2] + shape_b[:-3:-1] if tb else shape_b).astype(numpy.float32)
    a, b = (a.swapaxes(-1, -2) if ta else a), (b.swapaxes(-1, -2) if tb else b)
    c = rng.standard_normal(shape_b[-1]).astype(numpy.float32) if bias else None
    return lambda: backend.matmul(a, b, bias=c)


@pytest.fixture
def products_in_blocks(threaded, monkeypatch):
    """`threaded`, with every product cut into blocks (threshold 0), also where this process's
    OpenBLAS runs threads of its own (then the blocks are only slower, not wrong)."""
    monkeypatch.setattr(cpu, "MIN_PARALLEL_PRODUCT", 0)
    monkeypatch.setattr(cpu, "SPLIT_PRODUCTS", True)
    return threaded


@pytest.mark.parametrize("name", list(PRODUCTS))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_products_cut_into_blocks_agree_with_one_thread(products_in_blocks, monkeypatch, name, n):
    product = _product(*PRODUCTS[name])
    y1 = products_in_blocks(1, product)
    calls = []
    real = numpy.matmul
    monkeypatch.setattr(numpy, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    yn = products_in_blocks(n, product)
    rows = _cut_length(name)
    step = -(-rows // min(n, rows))                  # rows per block, as backend.rows cuts them
    assert len(calls) == -(-rows // step), f"{name}: {len(calls)} blocks with {n} threads"
    assert yn.shape == y1.shape and yn.dtype == y1.dtype
    if name.startswith("stacks"):   # each matrix of a stack is its own call whichever block it is in
        assert numpy.array_equal(y1, yn), f"{name}: {n} threads differ from 1 (max |diff| {numpy.abs(y1 - yn).max():.3g})"
    else:                           # OpenBLAS may round a block of a few rows differently
        err = numpy.abs(y1 - yn).max()
        assert err <= 1e-5, f"{name}: {n} threads differ from 1 thread by {err:.3g} (float32 rounding is ~1e-6 here)"


def test_products_in_blocks_are_the_same_on_every_run(products_in_blocks):
    for name in PRODUCTS:
        y, y_again = products_in_blocks(3, _product(*PRODUCTS[name])), products_in_blocks(3, _product(*PRODUCTS[name]))
        assert numpy.array_equal(y, y_again), f"{name}: two runs with 3 threads differ"


def test_products_are_one_call_when_openblas_threads_itself(threaded, monkeypatch):
    # OPENBLAS_NUM_THREADS > 1 (or an MKL NumPy): BLAS threads the product, minipeft must not
    monkeypatch.setattr(cpu, "MIN_PARALLEL_PRODUCT", 0)
    monkeypatch.setattr(cpu, "SPLIT_PRODUCTS", False)
    calls = []
    real = numpy.matmul
    monkeypatch.setattr(numpy, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    threaded(3, _product(*PRODUCTS["plain"]))
    assert len(calls) == 1


def test_a_backward_with_products_in_blocks_matches_one_thread(products_in_blocks):
    # a whole model: loss and every gradient agree with one thread to float32 rounding
    from minipeft.nn import Transformer, TransformerConfig

    def loss_and_grads():
        minipeft.manual_seed(0)
        model = Transformer(TransformerConfig(arch="gpt2", vocab_size=50, n_ctx=16, d_model=32, n_layer=2, n_head=4))
        ids = numpy.random.default_rng(1).integers(0, 50, size=(5, 13))
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        return float(loss.data), {n: p.grad.copy() for n, p in model.named_parameters()}
    (l1, g1), (l3, g3) = products_in_blocks(1, loss_and_grads), products_in_blocks(3, loss_and_grads)
    assert abs(l1 - l3) <= 1e-6 * abs(l1), f"loss with 3 threads {l3} vs 1 thread {l1}"
    # relative to the largest gradient entry of the model: some gradients are rounding noise around
    # 0 in exact arithmetic (the key bias: softmax ignores a constant added to a row of scores)
    scale = max(numpy.abs(g).max() for g in g1.values())
    for name in g1:
        err = numpy.abs(g1[name] - g3[name]).max() / scale
        assert err <= 1e-5, f"gradient of {name} differs by {err:.3g} (relative to the largest gradient)"


def test_rows_inside_a_block_runs_in_that_thread(threaded):
    # a block that calls rows (or backend.matmul) again must run it itself, not wait for the busy
    # pool (with every worker waiting on nested blocks, that would wait forever)
    import threading
    x = numpy.arange(24.0).reshape(6, 4)
    y = numpy.empty_like(x)
    same_thread = []

    def outer(x, y):
        me = threading.get_ident()

        def inner(xi, yi):
            same_thread.append(threading.get_ident() == me)
            numpy.multiply(xi, 2.0, out=yi)
        backend.rows(inner, x, y)

    runner = threading.Thread(target=lambda: threaded(3, lambda: backend.rows(outer, x, y)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "nested backend.rows did not finish within 60 s (waiting for its own pool?)"
    assert numpy.array_equal(y, 2 * x)
    assert same_thread and all(same_thread), "a nested block ran in another thread"


def test_rows_on_cupy_is_one_call_on_the_whole_arrays(backend, monkeypatch):
    # the backend fixture runs this on NumPy and, with a GPU, on CuPy: on CuPy nothing is split
    monkeypatch.setattr(cpu, "MIN_PARALLEL", 0)
    saved = backend.get_threads()
    backend.set_threads(3)
    try:
        calls = []
        a = backend.to_device(numpy.arange(7 * 3, dtype=numpy.float64).reshape(7, 3))
        backend.rows(lambda blk: calls.append(blk.shape[0]), a)
    finally:
        backend.set_threads(saved)
    assert sorted(calls) == ([7] if backend.name == "cupy" else [1, 3, 3]), f"{backend.name}: blocks {calls}"


def test_this_thread_only_runs_rows_inline_and_restores(threaded):
    import threading
    x = numpy.arange(48.0).reshape(12, 4)
    y = numpy.empty_like(x)
    calls = []

    def double(xi, yi):
        calls.append((threading.get_ident(), xi.shape[0]))
        numpy.multiply(xi, 2.0, out=yi)

    def run():
        with backend.this_thread_only():
            backend.rows(double, x, y)
        inline = list(calls)
        calls.clear()
        backend.rows(double, x, y)              # after the block: the pool again
        return inline, list(calls)

    inline, pooled = threaded(3, run)
    assert inline == [(threading.get_ident(), 12)], f"expected one call in this thread, got {inline}"
    assert sorted(n for _, n in pooled) == [4, 4, 4], f"expected 3 blocks of 4 rows after the block, got {pooled}"
    assert numpy.array_equal(y, 2 * x)


def test_stop_threads_leaves_no_pool_thread_running(threaded):
    import threading
    x = numpy.ones((12, 4))
    threaded(3, lambda: (backend.rows(lambda a: None, x), backend.stop_threads()))
    alive = [t.name for t in threading.enumerate() if t.name.startswith("minipeft")]
    assert alive == [], f"pool threads still alive after stop_threads: {alive}"
