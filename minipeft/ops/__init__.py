"""Differentiable ops, by family. Import them from here: `from minipeft import ops; ops.gelu(x)`.

basic.py        arithmetic with broadcasting, matmul, reductions, reshape/permute, indexing, concat/split
activations.py  exp, log, tanh, sigmoid, relu, GELU (tanh and exact erf), softmax, log-softmax
fused.py        linear, layer norm, softmax cross-entropy, embedding, dropout, masked fill, attention
reference.py    GELU (tanh), layer norm, cross-entropy and attention written as their equations:
                `ops.reference.attention(...)` reads as the math (gradient checks and assignments use
                these); the ops above that run compute the same in blocks of rows, in place
"""
from .basic import (add, sub, mul, div, neg, pow, matmul, sum, mean, max, reshape, permute,
                    transpose, getitem, concat, stack, split, unbroadcast)
from .activations import exp, log, tanh, sigmoid, relu, gelu, softmax, log_softmax
from .fused import (linear, layer_norm, cross_entropy, embedding, dropout, masked_fill, attention)
from . import reference

__all__ = ["reference", "add", "sub", "mul", "div", "neg", "pow", "matmul", "sum", "mean", "max", "reshape",
           "permute", "transpose", "getitem", "concat", "stack", "split", "unbroadcast", "exp", "log",
           "tanh", "sigmoid", "relu", "gelu", "softmax", "log_softmax", "linear", "layer_norm",
           "cross_entropy", "embedding", "dropout", "masked_fill", "attention"]
