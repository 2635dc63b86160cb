"""Models and batches of the prefix- and prompt-tuning tests (test_prefix.py, test_prompt.py).

The models are wider than conftest's `tiny` (d 16, n_ctx 48) and have room for the ids of the
test tokenizer (conftest's `tokenizer_path`, 291 ids): the words / text / vocab initialisations
encode real text.
"""
from __future__ import annotations

import minipeft
from minipeft import backend as B
from minipeft.nn import Transformer, TransformerConfig

np = B.host()
V = 300          # room for the test tokenizer's 291 ids
SEP = 3          # minipeft's <sep>: an infix goes before it


def wide(arch="gpt2", seed=0, dtype=np.float64, scale=1.0, **kw) -> Transformer:
    """A 2-layer, d=16 model in `dtype` (which becomes the default dtype); scale multiplies the
    weight matrices (a trained model's weights are larger than GPT-2's N(0, 0.02) init)."""
    B.set_default_dtype(dtype)
    minipeft.manual_seed(seed)
    m = Transformer(TransformerConfig(arch=arch, vocab_size=V, n_ctx=48, d_model=16, n_layer=2, n_head=2, **kw))
    for _, p in m.named_parameters():
        if p.data.ndim == 2 and scale != 1.0:
            p.data *= scale
    return m


def batch(Bn=3, T=6, seed=0, sep_at=None):
    """Host ids (Bn, T) of ordinary tokens (7..99); sep_at[b]: put <sep> at that position of row b."""
    ids = np.random.default_rng(seed).integers(7, 100, (Bn, T))
    for b, s in enumerate(sep_at or ()):
        ids[b, s] = SEP
    return ids


def trainable(pm) -> list:
    return [p for _, p in pm.named_parameters() if p.requires_grad]


def base_state(model) -> dict:
    """name -> host copy of every parameter of a model (to check frozen weights stay bit-identical)."""
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def train_to_token(pm, token: int = 42, steps: int = 10, lr: float = 5e-2) -> list:
    """AdamW on the task "always predict `token`" over a fixed batch; the loss of every step."""
    from minipeft.optim import AdamW
    ids, target = batch(4, 8, seed=1), np.full((4, 8), token)
    opt = AdamW(trainable(pm), lr=lr)
    losses = []
    for _ in range(steps):
        _, loss = pm(ids, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
