"""PASTA: Parameter-efficient tuning with Special Token Adaptation (Yang et al., EACL 2023,
arXiv:2210.04382; official code luka-group/PASTA, PASTA_modeling.py).

Only the special tokens change. Before the self-attention of every block l, a trainable vector is
added to the hidden state of each special token ([CLS], [SEP]):

    h_i^l <- h_i^l + dropout(m_{s(i)}^l)      for every position i holding special token s(i)
    h_i^l <- h_i^l                            for every other position

    m^l: (S, d), one row per special token, in every block l. S = 2 ([CLS], [SEP]); the
    ablations: without [CLS] (cls_token=None, S = 1), without [SEP] (sep_token=None, S = 1), one
    vector shared by every special token (shared=True, S = 1).

Trainable parameters: L * S * d (BERT-large, 24 x 2 x 1024 = 49,152: the paper's 0.015 % of
335M; with a task head in modules_to_save, its d * n_labels + n_labels too).

Which place of the model: the input side (place 1 of the four), at chosen token positions before
every block. The method sees the token ids (its `encode_inputs` gets them), finds the special
tokens there and hands Transformer.encode one (B, T, d) addition per block, `block_inputs`.

- The official code indexes the vectors by the i-th special token of the sequence ([CLS] first,
  [SEP] second, a second [SEP] third); here a vector belongs to a special token id, which is the
  same for single sentences ([CLS] x [SEP]) and shares the [SEP] vector in sentence pairs.
- Initialisation: m ~ N(0, init_std^2); 0.02 is what the official code gets (BERT's post_init
  re-initialises its nn.Embedding). init_std=0 starts exactly at the base model.
- Dropout on the vectors: the official code uses the model's hidden dropout (0.1); default 0 here.
- The defaults name minipeft's tokenizer ids (<cls> 4, <sep> 3); BERT's vocabulary has [CLS] 101
  and [SEP] 102, GPT-2's has neither (give the ids of the tokens that play their role).
- Not mergeable: the vectors act at positions that depend on the input.

Shapes: ids (B, T) -> per adapted block l, a^l = onehot(s) m^l: (B, T, d); rows of the batch that
another adapter (or none) owns get zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import backend, ops
from ..autograd import Tensor
from ..nn.layers import Embedding
from ..nn.module import Module, ModuleList, Parameter
from .common import block_indices, check_layers, n_blocks, task_heads

DEFAULT_LR = 3e-3            # the official CoNLL03 rate (its GLUE runs: 2.5e-4 for 150 epochs)


@dataclass
class PastaConfig:
    method: ClassVar[str] = "pasta"
    cls_token: int | None = 4          # id of [CLS]; None = the "without [CLS]" ablation
    sep_token: int | None = 3          # id of [SEP]; None = the "without [SEP]" ablation
    shared: bool = False               # one vector per block for every special token (S = 1)
    init_std: float = 0.02             # m ~ N(0, init_std^2); 0 starts at the base model
    dropout: float = 0.0               # on the added vectors (the official code: hidden dropout)
    layers: tuple | None = None        # which blocks; None = all
    modules_to_save: tuple = ()

    def __post_init__(self):
        for f in ("cls_token", "sep_token"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"PastaConfig.{f} must be a token id (an int >= 0) or None, got {v!r}")
        if self.cls_token is None and self.sep_token is None:
            raise ValueError("PastaConfig needs a special token: cls_token and sep_token are both None")
        if self.cls_token is not None and self.cls_token == self.sep_token:
            raise ValueError(f"PastaConfig.cls_token and sep_token are both {self.cls_token}; give two "
                             f"different ids, or shared=True with one of them None")
        if self.init_std < 0:
            raise ValueError(f"PastaConfig.init_std must be >= 0, got {self.init_std}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PastaConfig.dropout must be in [0, 1), got {self.dropout}")
        self.modules_to_save = tuple(self.modules_to_save)
        self.layers = check_layers(self.layers, "PastaConfig")

    @property
    def tokens(self) -> tuple:
        """The special token ids, in the order of m's rows ([CLS] first)."""
        return tuple(t for t in (self.cls_token, self.sep_token) if t is not None)

    @property
    def n_vectors(self) -> int:
        """S, the rows of m per block."""
        return 1 if self.shared else len(self.tokens)


CONFIG = PastaConfig


def from_options(o) -> PastaConfig:
    return PastaConfig(modules_to_save=o.heads)


class SpecialTokenVectors(Module):
    """m^l (S, d) for every adapted block, as the official code names it: special_token_embedding."""

    def __init__(self, n_blocks: int, S: int, d: int, std: float):
        self.special_token_embedding = ModuleList([Embedding(S, d) for _ in range(n_blocks)])
        for e in self.special_token_embedding:
            e.weight = Parameter(backend.rng.normal((S, d), std=std) if std > 0
                                 else backend.xp.zeros((S, d), dtype=backend.default_dtype()))


def add(pm, name: str, cfg: PastaConfig) -> None:
    V = pm.config.vocab_size
    bad = [t for t in cfg.tokens if t >= V]
    if bad:
        raise ValueError(f"PastaConfig special token id {bad[0]} is outside the vocabulary [0, {V}); "
                         f"give the ids of the model's [CLS]/[SEP] (BERT: 101, 102)")
    blocks = block_indices(pm.config, cfg.layers, "PastaConfig")
    pm.inputs[name] = SpecialTokenVectors(len(blocks), cfg.n_vectors, pm.config.d_model, cfg.init_std)


def formula(model_cfg, cfg: PastaConfig) -> dict:
    """L S d (+ the task head): the vectors are all that is kept, too."""
    # BEGIN SOLUTION pasta_count
    total = n_blocks(model_cfg, cfg.layers) * cfg.n_vectors * model_cfg.d_model \
        + task_heads(model_cfg, cfg.modules_to_save)
    # END SOLUTION
    return {"trainable": total, "kept": total}


def vector_index(cfg: PastaConfig, ids, rows=None):
    """(B, T) host ints: the row of m each position adds (0 .. S-1), or S (none: the zero row) at
    ordinary tokens and at samples outside `rows` (host ints; None = every sample)."""
    hostnp = backend.host()
    ids = hostnp.asarray(ids)
    S = cfg.n_vectors
    index = hostnp.full(ids.shape, S, dtype=hostnp.int64)
    # BEGIN SOLUTION pasta_index
    for s, token in enumerate(cfg.tokens):
        index[ids == token] = 0 if cfg.shared else s
    # END SOLUTION
    if rows is not None:
        keep = hostnp.zeros(len(ids), dtype=bool)
        keep[rows] = True
        index[~keep] = S
    return index


def encode_inputs(pm, route, batch_size: int, ids=None, cache=None) -> dict:
    """{"block_inputs": per block a (B, T, d) Tensor, or None} for Transformer.encode: the sum of
    every routed PASTA adapter's vectors, each at its special tokens of its samples."""
    mine = [(n, r) for n, r in route if isinstance(pm.peft_config.get(n), PastaConfig)]
    if not mine:
        return {}
    if ids is None:
        raise ValueError("PASTA finds the special tokens in the token ids; call it through PeftModel")
    ids = backend.to_numpy(ids.data if isinstance(ids, Tensor) else ids)
    out = [None] * pm.config.n_layer
    for n, rows in mine:
        cfg = pm.peft_config[n]
        index = vector_index(cfg, ids, rows)
        if (index == cfg.n_vectors).all():
            continue                                                   # no special token here
        index = backend.to_device(index)
        for j, l in enumerate(block_indices(pm.config, cfg.layers, "PastaConfig")):
            m = pm.inputs[n].special_token_embedding[j].weight               # (S, d)
            # BEGIN SOLUTION pasta_vectors
            zero = Tensor(backend.xp.zeros((1, m.shape[1]), dtype=m.dtype))
            a = ops.embedding(index, ops.concat([m, zero], axis=0))           # (B, T, d): m_s(i) or 0
            # END SOLUTION
            a = ops.dropout(a, cfg.dropout, pm.training)
            out[l] = a if out[l] is None else out[l] + a
    return {"block_inputs": out} if any(a is not None for a in out) else {}
