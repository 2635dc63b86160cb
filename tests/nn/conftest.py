"""Markers of the nn and training tasks (the backend fixture and `rand` live in tests/conftest.py).

    pytest -m task_nn            Module bookkeeping, Linear, Embedding, LayerNorm, Dropout
    pytest -m task_transformer   the Transformer end to end
    pytest -m task_training      training steps: overfitting, dtypes, frozen weights, checkpoints
"""
from __future__ import annotations

NN_MARKERS = {
    "task_nn": "Module bookkeeping (names, freezing, state dicts) and the basic layers",
    "task_transformer": "the Transformer: parameter count, init, end-to-end gradients, causality, "
                        "padding, KV cache, frozen parameters, input errors",
    "task_training": "training steps: overfitting one batch, dtypes, frozen weights, checkpoints",
}


def pytest_configure(config):
    for name, what in NN_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")
