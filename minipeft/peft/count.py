"""Closed-form parameter counts, for the shipped models and for real-size architectures.

Nothing here allocates weights: BERT-large's 335M parameters are counted from its shape alone.
Each PEFT method's `formula(model_config, method_config)` builds on these functions, and tests
check every formula against the parameters actually counted on tiny models.

A transformer block (either layout) has 12 d^2 + 13 d parameters when the MLP is 4d wide:
q, k, v, o: 4 (d^2 + d); fc: d * 4d + 4d; proj: 4d * d + d; two LayerNorms: 4d.
"""
from __future__ import annotations

from ..nn.transformer import TransformerConfig

# Real-size architectures (Hugging Face configs), counted as HF counts them: encoders with the
# pooler and without the MLM head; GPT-2 with its LM head tied to the input embeddings.
ARCHS = {
    "bert-base": TransformerConfig(arch="bert", vocab_size=30522, n_ctx=512, d_model=768, n_layer=12, n_head=12, n_types=2),
    "bert-large": TransformerConfig(arch="bert", vocab_size=30522, n_ctx=512, d_model=1024, n_layer=24, n_head=16, n_types=2),
    "roberta-base": TransformerConfig(arch="bert", vocab_size=50265, n_ctx=514, d_model=768, n_layer=12, n_head=12, n_types=1),
    "roberta-large": TransformerConfig(arch="bert", vocab_size=50265, n_ctx=514, d_model=1024, n_layer=24, n_head=16, n_types=1),
    "gpt2": TransformerConfig(arch="gpt2", vocab_size=50257, n_ctx=1024, d_model=768, n_layer=12, n_head=12),
    "gpt2-medium": TransformerConfig(arch="gpt2", vocab_size=50257, n_ctx=1024, d_model=1024, n_layer=24, n_head=16),
    "gpt2-large": TransformerConfig(arch="gpt2", vocab_size=50257, n_ctx=1024, d_model=1280, n_layer=36, n_head=20),
}


def block_params(cfg: TransformerConfig) -> int:
    """One block: 4 (d^2 + d) attention + (d f + f) + (f d + d) MLP + 4d LayerNorm."""
    d, f = cfg.d_model, cfg.d_ff
    return 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d


def head_params(cfg: TransformerConfig) -> int:
    """The classification head cls_head: d * n_labels + n_labels (0 without one)."""
    return cfg.d_model * cfg.n_labels + cfg.n_labels if cfg.n_labels else 0


def base_params(cfg: TransformerConfig, mlm_head: bool = True) -> int:
    """Every parameter of `Transformer(cfg)`; mlm_head=False leaves out BERT's MLM head (as HF's
    BertModel/RobertaModel counts do). A tied LM head adds nothing."""
    d, V = cfg.d_model, cfg.vocab_size
    n = V * d + cfg.n_ctx * d + cfg.n_layer * block_params(cfg)       # wte, wpe, blocks
    if cfg.arch == "gpt2":
        n += 2 * d                                                      # ln_f
    else:
        n += cfg.n_types * d + 2 * d + (d * d + d)                      # wtt, ln_emb, pooler
        if mlm_head:
            n += (d * d + d) + 2 * d + V                                # mlm_dense, mlm_ln, mlm_bias
    if not cfg.tie_embeddings:
        n += V * d
    return n + head_params(cfg)
