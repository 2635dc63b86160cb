"""Watching the work a backward pass does, where it happens (not only through backend.matmul).

"A frozen weight costs no weight-gradient matmul" is checked by counting backend.matmul calls
(backend.stats). A count through one helper misses a product written another way: a backward that
computes dW = G^T x with a plain `@` (or numpy.matmul) and then throws it away still passes it.
Two probes close that hole:

raw_products(fn)      runs fn() with Python's opcode tracer on and returns where a `@` between
                      two arrays was executed inside minipeft's own code. A backward works on
                      raw arrays (Function.backward gets and returns arrays), so any `@` there
                      is a product that bypasses backend.matmul and its count.
product_shapes(fn)    runs fn() with numpy.matmul / einsum / dot / tensordot wrapped and returns
                      the shape of every product's result (NumPy backend: backend.matmul itself
                      ends in numpy.matmul, so every product is seen, whatever calls it).

A test then asserts: no raw `@` in minipeft during a backward, and no product in a backward has
the shape of a frozen weight (the dW nobody needs), while the same model with that weight
trainable does compute such a product (the probe can see it).
"""
from __future__ import annotations

import dis
import os
import sys

import numpy

import minipeft
from minipeft import cpu

LIBRARY = os.path.dirname(os.path.abspath(minipeft.__file__))
MATMUL_OPS = {"BINARY_MATRIX_MULTIPLY", "INPLACE_MATRIX_MULTIPLY"}     # Python 3.10
_instructions: dict = {}


def _is_matmul(code, offset) -> bool:
    table = _instructions.get(code)
    if table is None:
        table = _instructions[code] = {i.offset: i for i in dis.get_instructions(code)}
    ins = table.get(offset)
    if ins is None:
        return False
    return ins.opname in MATMUL_OPS or (ins.opname == "BINARY_OP" and ins.argrepr in ("@", "@="))  # 3.11+


def raw_products(fn, where: str = LIBRARY) -> list:
    """[(file, line)] of every `@` executed under `where` while fn() runs (one thread: the row
    threads of backend.rows are switched off for the duration, so nothing runs out of sight)."""
    seen = []

    def local(frame, event, arg):
        if event == "opcode" and _is_matmul(frame.f_code, frame.f_lasti):
            seen.append((os.path.relpath(frame.f_code.co_filename, where), frame.f_lineno))
        return local

    def on_call(frame, event, arg):
        if event == "call" and os.path.abspath(frame.f_code.co_filename).startswith(where):
            frame.f_trace_opcodes = True
            return local
        return None

    threads = cpu._threads
    cpu.set_threads(1)
    old = sys.gettrace()
    sys.settrace(on_call)
    try:
        fn()
    finally:
        sys.settrace(old)
        cpu.set_threads(threads)
    return seen


def product_shapes(fn, monkeypatch) -> list:
    """Shapes of the results of every numpy.matmul / einsum / dot / tensordot run by fn()."""
    shapes = []

    def wrap(real):
        def counted(*args, **kwargs):
            out = real(*args, **kwargs)
            shapes.append(tuple(numpy.shape(kwargs["out"] if kwargs.get("out") is not None else out)))
            return out
        return counted

    with monkeypatch.context() as m:
        for name in ("matmul", "einsum", "dot", "tensordot"):
            m.setattr(numpy, name, wrap(getattr(numpy, name)))
        fn()
    return shapes
