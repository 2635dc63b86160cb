"""Full fine-tuning and its two classic tricks, as the baseline every PEFT method is compared with.

- Full fine-tuning: every parameter theta of the pretrained model trains. Per task you store a
  whole copy of the model (|theta| numbers) and the optimizer keeps 2 |theta| more (AdamW m, v).
- Top-k layers (FT-Top2 in the LoRA paper's tables; Houlsby et al.'s Fig. 1 baseline): only the
  last k transformer blocks train (plus the final LayerNorm and any task head), the rest stays frozen.
- Layer-wise learning-rate decay (ULMFiT's "discriminative fine-tuning", Howard & Ruder 2018):
  lower layers hold more general features, so they move less:
        eta^{l-1} = xi * eta^{l}        (xi < 1, e.g. 0.9; block l = n_layer - 1 gets eta)
  built as optimizer parameter groups by `param_groups(pm, lr, xi)`.

Unlike the other methods, full fine-tuning changes the base weights themselves, so it cannot be
disabled, routed per sample or combined with other adapters; its "adapter file" is the trained
weights (as large as the model, or as the top-k blocks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .count import base_params, block_params, head_params

EXCLUSIVE = True      # changes base weights: no other adapter on the same model
CAN_DISABLE = False
STARTS_AT_BASE = True
DEFAULT_LR = 3e-4


@dataclass
class FullConfig:
    method: ClassVar[str] = "full"
    top_k_layers: int | None = None      # None: every block trains; k: only the last k blocks
    train_embeddings: bool = True        # full FT only: also the token/position embeddings
    layer_lr_decay: float | None = None  # xi for param_groups(); None: one learning rate

    def __post_init__(self):
        if self.top_k_layers is not None and (not isinstance(self.top_k_layers, int) or self.top_k_layers < 1):
            raise ValueError(f"FullConfig.top_k_layers must be None or a positive integer, got {self.top_k_layers!r}")
        if self.layer_lr_decay is not None and not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"FullConfig.layer_lr_decay (xi) must be in (0, 1], got {self.layer_lr_decay}")


CONFIG = FullConfig


def from_options(o) -> FullConfig:
    return FullConfig(top_k_layers=o.top_k)


def _layer_of(path: str):
    """Block index of a parameter path like 'h.3.attn.q.weight', else None."""
    parts = path.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "h" and parts[1].isdigit() else None


def _trained(pm, cfg: FullConfig):
    n = pm.config.n_layer
    if cfg.top_k_layers is not None and cfg.top_k_layers > n:
        raise ValueError(f"FullConfig.top_k_layers={cfg.top_k_layers} but the model has {n} layers")
    first = 0 if cfg.top_k_layers is None else n - cfg.top_k_layers
    for path, p in pm.model.named_parameters():
        layer = _layer_of(path)
        if layer is not None:
            if layer >= first:
                yield path, p
        elif cfg.top_k_layers is None:
            if cfg.train_embeddings or path.split(".")[0] not in ("wte", "wpe", "wtt"):
                yield path, p
        elif path.split(".")[0] not in ("wte", "wpe", "wtt", "ln_emb"):   # top-k: heads and ln_f train
            yield path, p


def add(pm, name: str, cfg: FullConfig) -> None:
    for _, p in _trained(pm, cfg):
        p.requires_grad = True


def state(pm, name: str) -> dict:
    return {f"base_model.model.{path}": p for path, p in _trained(pm, pm.peft_config.get(name, FullConfig()))}


def formula(model_cfg, cfg: FullConfig, mlm_head: bool = True) -> dict:
    """Full: the whole model (minus embeddings if train_embeddings=False).
    Top-k: k (12 d^2 + 13 d) + the final LayerNorm / pooler / MLM head + task head."""
    total = base_params(model_cfg, mlm_head=mlm_head)
    d, V = model_cfg.d_model, model_cfg.vocab_size
    emb = V * d + model_cfg.n_ctx * d + (model_cfg.n_types * d if model_cfg.arch == "bert" else 0)
    tied_lm = 0 if model_cfg.tie_embeddings else V * d
    if cfg.top_k_layers is None:
        n = total - (0 if cfg.train_embeddings else emb)
    elif cfg.top_k_layers > model_cfg.n_layer:
        raise ValueError(f"FullConfig.top_k_layers={cfg.top_k_layers} but the model has {model_cfg.n_layer} layers")
    else:
        n = cfg.top_k_layers * block_params(model_cfg) + tied_lm
        if model_cfg.arch == "gpt2":
            n += 2 * d                                          # ln_f
        else:
            n += (d * d + d)                                    # pooler
            n += (d * d + d + 2 * d + V) if mlm_head else 0     # mlm_dense, mlm_ln, mlm_bias
        n += head_params(model_cfg)                             # cls_head
    return {"trainable": n, "kept": n}


def param_groups(pm, lr: float, xi: float | None = None, weight_decay: float = 0.0) -> list:
    """AdamW parameter groups with layer-wise decay: block l gets lr * xi^(n_layer - 1 - l);
    embeddings get the lowest rate lr * xi^n_layer; the final LayerNorm and heads get lr."""
    xi = 1.0 if xi is None else xi
    n = pm.config.n_layer
    groups: dict = {}
    for path, p in pm.named_parameters():
        if not p.requires_grad:
            continue
        inner = path.split("base_model.model.", 1)[-1]
        layer = _layer_of(inner)
        if layer is not None:
            depth = n - 1 - layer
        elif inner.split(".")[0] in ("wte", "wpe", "wtt", "ln_emb"):
            depth = n
        else:
            depth = 0
        groups.setdefault(depth, []).append(p)
    return [{"params": ps, "lr": lr * xi ** depth, "weight_decay": weight_decay}
            for depth, ps in sorted(groups.items())]
