"""BitFit: train only the bias terms (Ben Zaken, Ravfogel & Goldberg 2022, arXiv:2106.10199).

Every affine map y = W x + b of the pretrained model keeps W frozen and trains b:

    theta_trained = { b : every bias vector }      (plus a task head, via modules_to_save)

Per block that is 9d for the linear layers (q, k, v, o: 4d; fc: 4d; proj: d) and 2d for the two
LayerNorm shifts, 11 d in all: BERT-large has 24 * 11 * 1024 + 2048 = 272,384 trainable
parameters, the paper's 0.08%. Published BitFit counts differ on exactly one question: are the
LayerNorm *gains* trained too? With `with_layernorm=True` they are (24 * 2 * 1024 + 1024 more for
BERT-large: 322,560, 0.096%), and the counts report the two parts separately.

BitFit trains parameters the base model already has, so like full fine-tuning it changes the
base model's biases in place: it cannot be disabled or mixed per sample with other adapters.
Every weight matrix stays bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .common import task_heads

EXCLUSIVE = True        # trains the base model's own biases: alone on its model
CAN_DISABLE = False
STARTS_AT_BASE = True
DEFAULT_LR = 3e-3


@dataclass
class BitFitConfig:
    method: ClassVar[str] = "bitfit"
    with_layernorm: bool = False     # also train the LayerNorm gains (weights)
    modules_to_save: tuple = ()      # e.g. ("cls_head",)

    def __post_init__(self):
        self.modules_to_save = tuple(self.modules_to_save)


CONFIG = BitFitConfig


def from_options(o) -> BitFitConfig:
    return BitFitConfig(with_layernorm=o.with_layernorm, modules_to_save=o.heads)


def _is_layernorm_gain(pm, path: str) -> bool:
    from ..nn.layers import LayerNorm
    mod_path, _, leaf = path.rpartition(".")
    return leaf == "weight" and isinstance(pm.model.get_submodule(mod_path), LayerNorm)


def _trained(pm, cfg: BitFitConfig):
    """(path, parameter) of every bias (and LayerNorm gain when asked), outside task-head copies."""
    for path, p in pm.model.named_parameters():
        if any(path == m or path.startswith(m + ".") for m in cfg.modules_to_save):
            continue                            # a task head trained as a copy (modules_to_save)
        leaf = path.rsplit(".", 1)[-1]
        # BEGIN SOLUTION bitfit_select
        if leaf in ("bias", "mlm_bias") or (cfg.with_layernorm and _is_layernorm_gain(pm, path)):
            yield path, p
        # END SOLUTION


def add(pm, name: str, cfg: BitFitConfig) -> None:
    for _, p in _trained(pm, cfg):
        p.requires_grad = True


def state(pm, name: str) -> dict:
    cfg = pm.peft_config.get(name, BitFitConfig())
    out = {f"base_model.model.{path}": p for path, p in _trained(pm, cfg)}
    out.update(pm._owned_parameters(name))          # the task-head copies of this adapter
    return out


def formula(model_cfg, cfg: BitFitConfig, mlm_head: bool = True) -> dict:
    """Biases: L (9d + 2d) + final/embedding LayerNorm shift d + model-specific heads;
    gains (with_layernorm): L * 2d + d. Returns trainable, kept, and the two parts."""
    d, f, L, V = model_cfg.d_model, model_cfg.d_ff, model_cfg.n_layer, model_cfg.vocab_size
    linear_bias = L * (4 * d + f + d)           # q, k, v, o, fc (f = 4d), proj
    ln_bias = L * 2 * d + d                     # ln_1, ln_2 per block + ln_f (gpt2) or ln_emb (bert)
    ln_gain = L * 2 * d + d
    if model_cfg.arch == "bert":
        linear_bias += d                        # pooler
        if mlm_head:
            linear_bias += d + V                # mlm_dense.bias, mlm_bias
            ln_bias += d                        # mlm_ln.bias
            ln_gain += d                        # mlm_ln.weight
    if model_cfg.n_labels and "cls_head" not in cfg.modules_to_save:
        linear_bias += model_cfg.n_labels       # cls_head.bias (a bias of the base model)
    n = linear_bias + ln_bias + (ln_gain if cfg.with_layernorm else 0)
    heads = task_heads(model_cfg, cfg.modules_to_save)
    return {"trainable": n + heads, "kept": n + heads, "biases": linear_bias + ln_bias,
            "layernorm_gains": ln_gain if cfg.with_layernorm else 0}
