"""What several method files share: config checks, the blocks a method adapts, a task head's
count, a matrix of trained rows (soft prompts, prefix activations), the tokenizer of an init text.

Each function here is written once so that every method gives the same answer and the same
error: a layer listed twice is an error in every method, a task head counts the same in every
formula, "a positive integer" means the same in every config.
"""
from __future__ import annotations

from ..nn.module import Module, Parameter
from .count import head_params


# ----------------------------------------------------------------------------- config checks

def positive_int(value, what: str, hint: str = ""):
    """`value` if it is a positive int (a bool is not), else a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer{f' ({hint})' if hint else ''}, got {value!r}")
    return value


def check_layers(layers, what: str):
    """A config's `layers` field: None (every block) or block indices, each listed once; () is no
    block (a task head alone, with modules_to_save). Returns None or a sorted tuple (so that
    `layers=(1, 0)` and `(0, 1)` are the same adapter)."""
    if layers is None:
        return None
    layers = tuple([layers] if isinstance(layers, int) else layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise ValueError(f"{what}.layers contains {bad[0]!r}; block indices are integers")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise ValueError(f"{what}.layers {list(layers)} repeats layer(s) {repeated}; list each block once")
    return tuple(sorted(layers))


def block_indices(model_config, layers, what: str) -> list:
    """The transformer blocks a method adapts: all of them (layers=None) or the listed ones, which
    must exist in the model (a config's `layers` passed through check_layers first)."""
    n_layer = model_config.n_layer
    if layers is None:
        return list(range(n_layer))
    bad = [i for i in layers if not 0 <= i < n_layer]
    if bad:
        raise ValueError(f"{what}.layers contains {bad[0]}; the model has layers 0..{n_layer - 1}")
    return list(layers)


def task_heads(model_config, modules_to_save) -> int:
    """Parameters of the task-head copies a config's `modules_to_save` trains and saves: the
    classification head cls_head has a closed form, d * n_labels + n_labels. Any other entry
    has none (a formula sees the model's config, not its modules): a ValueError, in every method."""
    total = 0
    for path in modules_to_save or ():
        if path != "cls_head":
            raise ValueError(f"formula: no closed form for modules_to_save entry {path!r}; the counted "
                             f"form of a head other than 'cls_head' is pm.adapter_parameters(name)")
        total += head_params(model_config)
    return total


def n_blocks(model_config, layers) -> int:
    """How many blocks a `layers` field selects (for the formulas)."""
    return model_config.n_layer if layers is None else len(layers)


# ----------------------------------------------------------------------------- shared modules

class TrainedRows(Module):
    """A trained matrix used as it is, (P, width): a soft prompt P_e (P, d), or prefix activations
    P_theta (P, 2 n_layer d). Its parameter has Hugging Face peft's name, `prompt_embeddings`."""

    def __init__(self, value):
        self.prompt_embeddings = Parameter(value)

    def forward(self):
        return self.prompt_embeddings


def load_tokenizer(path):
    """The tokenizer of an init text or corpus: the file at `path`, or the shipped one (None)."""
    from ..data.tokenizer import Tokenizer, load_default
    return load_default() if path is None else Tokenizer.from_file(path)
