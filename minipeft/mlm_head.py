"""A masked-LM head for a pretrained encoder that ships without one (all-MiniLM-L6-v2), trained by
minipeft on the synthetic corpus, so that prompt-based methods (prompting.py: LM-BFF, PET) can ask
a real pretrained encoder which word fills <mask>.

all-MiniLM-L6-v2 is a sentence encoder: it was published without BERT's masked-LM head. The head is
BERT's (nn/transformer.py, `lm_logits`):

    logits = LN(gelu(W h + b)) E^T + beta                                                   (1)

    h     (N, d)   the encoder's final hidden state at a masked position
    W, b  (d, d), (d,)  mlm_dense          LN: mlm_ln, gain and shift (d,) each
    E     (V, d)   the word embeddings (tied, frozen)      beta (V,): mlm_bias

Only W, b, LN and beta train: d^2 + 4d + V numbers (178,266 for MiniLM, d = 384, V = 30,522); the
encoder stays frozen. The loss is BERT's masked-LM cross-entropy on corpus documents, 15 % of the
tokens chosen (80 % of those replaced by <mask>, 10 % by a random token, 10 % kept):

    L = - mean over chosen positions i of  log softmax(logits_i)[x_i]                          (2)

Speed machinery, exact: the encoder is frozen, so h at a masked position does not change while the
head trains. `masked_features` runs the encoder ONCE over the masked documents and keeps h and the
true token x_i of every chosen position; `train_head` then trains (1) on those rows for several
epochs. That is training on the same masked batches without recomputing the encoder's forward.
beta starts at the log of each token's frequency among the targets (a unigram model), W and LN at
the usual initialisation.

    python -m minipeft.mlm_head --out runs/minilm-l6-mlm            # trains and writes the head
    model, tok = hf.load_pretrained("minilm-l6-mlm")                # MiniLM with the shipped head

What it can do is measured, not assumed (`metrics.json` next to the head; data/README.md): the
held-out masked-token accuracy, and zero-shot and prompt-based SST-2 through "<S1> It was <MASK> .".
A sentence encoder's token states were trained for similarity, not for predicting words, so its
masked-LM accuracy stays far below a real BERT's.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from . import backend, ops
from .autograd import Tensor, no_grad
from .checkpoint import load_state_dict_file, save_state_dict, write_json_atomic
from .nn.transformer import Transformer

HEAD_PREFIX = "mlm_"           # mlm_dense, mlm_ln, mlm_bias: the head's parameters in Transformer


def with_mlm_head(model: Transformer) -> Transformer:
    """A copy of a BERT-layout encoder without an MLM head, with a fresh one; the encoder's arrays
    are shared, not copied (the head is new: dense and LN initialised as usual, bias zero)."""
    if model.config.arch != "bert":
        raise ValueError(f"an MLM head is for a BERT-layout encoder, not arch={model.config.arch!r}")
    if model.config.mlm_head:
        raise ValueError("this encoder already has an MLM head (config.mlm_head=True)")
    dtype = next(p for _, p in model.named_parameters()).dtype
    with backend.default_dtype_as(dtype):
        out = Transformer(dataclasses.replace(model.config, mlm_head=True))
    own = dict(out.named_parameters())
    for name, p in model.named_parameters():
        own[name].data = p.data
    return out.train(model.training)


def head_state(model: Transformer) -> dict:
    """name -> array of the head's parameters alone."""
    return {n: p.data for n, p in model.named_parameters() if n.startswith(HEAD_PREFIX)}


def load_head(model: Transformer, path: str) -> Transformer:
    """`with_mlm_head(model)` with the head's weights read from a safetensors file."""
    out = with_mlm_head(model)
    own = {n: p for n, p in out.named_parameters() if n.startswith(HEAD_PREFIX)}
    state = load_state_dict_file(path)
    if set(state) != set(own):
        raise ValueError(f"{path} holds {sorted(state)}, an MLM head needs exactly {sorted(own)}")
    for n, a in state.items():
        if tuple(a.shape) != tuple(own[n].shape):
            raise ValueError(f"{path}: {n} has shape {tuple(a.shape)}, this encoder's head needs {tuple(own[n].shape)}")
        own[n].data = backend.to_device(a, dtype=own[n].dtype)
    return out


def masked_batches(tok, docs: list, tokens: int, seed: int = 0, batch_size: int = 16, n_ctx: int = 128,
                   p: float = 0.15):
    """BERT-masked batches of documents, until `tokens` tokens were read: yields host arrays
    (inputs, ids, attention_mask, chosen), each (B, T); chosen marks the positions of loss (2).

    docs: documents as lists of sentences of token ids (pretrain.doc_sentences), visited in a random
    order. Each row is [CLS] doc [SEP], cut to n_ctx; pretrain.mask_tokens chooses and replaces."""
    from .data.tokenizer import pad_rows
    from .pretrain import mask_tokens
    np = backend.host()
    gen = np.random.default_rng(seed)
    rows, seen = [], 0

    def batch(rows):
        b = pad_rows(rows, tok.pad_id)
        inputs, targets = mask_tokens(b.ids, tok, tok.vocab_size, gen, p)
        return inputs, b.ids, b.attention_mask, targets != -100

    for i in gen.permutation(len(docs)):
        toks = [t for s in docs[i] for t in s][:n_ctx - 2]
        rows.append([tok.cls_id] + toks + [tok.sep_id])
        seen += len(toks)
        if len(rows) == batch_size or seen >= tokens:
            yield batch(rows)
            rows = []
        if seen >= tokens:
            return
    if rows:
        yield batch(rows)


def masked_features(model: Transformer, tok, docs: list, tokens: int, seed: int = 0, **kw):
    """Run the frozen encoder once over `masked_batches`: (h (N, d), x (N,)) host arrays, the final
    hidden state and the true token at every chosen position."""
    np = backend.host()
    feats, targets = [], []
    for inputs, ids, att, chosen in masked_batches(tok, docs, tokens, seed, **kw):
        with no_grad():
            h = model.encode(inputs, attention_mask=att, token_type_ids=np.zeros_like(ids))   # (B, T, d)
        feats.append(backend.to_numpy(h.data)[chosen])                         # (n, d)
        targets.append(ids[chosen])                                            # (n,)
    return np.concatenate(feats), np.concatenate(targets)


def head_loss(model: Transformer, h, x) -> Tensor:
    """(2) on feature rows h (N, d) and their true tokens x (N,): the mean cross-entropy."""
    logits = model.lm_logits(Tensor(backend.to_device(h)[None]))               # (1, N, V)
    return ops.cross_entropy(logits, backend.to_device(x)[None])


def evaluate_head(model: Transformer, h, x, batch_size: int = 2048) -> dict:
    """Masked-token loss and accuracy of the head on feature rows (no gradients)."""
    loss, hits = 0.0, 0
    with no_grad():
        for s in range(0, len(x), batch_size):
            hb, xb = h[s:s + batch_size], x[s:s + batch_size]
            logits = model.lm_logits(Tensor(backend.to_device(hb)[None]))
            loss += float(ops.cross_entropy(logits, backend.to_device(xb)[None]).data) * len(xb)
            hits += int((backend.to_numpy(logits.data)[0].argmax(-1) == xb).sum())
    return {"loss": loss / len(x), "accuracy": hits / len(x)}


def train_head(model: Transformer, h, x, epochs: float = 4.0, lr: float = 1e-3, batch_size: int = 512,
               seed: int = 0, log=None) -> list:
    """Train the head of `model` (with_mlm_head) on feature rows; the encoder's parameters are not
    touched (they get no gradient). Returns the training loss of every step."""
    from .optim import AdamW
    np = backend.host()
    if not model.config.mlm_head:
        raise ValueError("the model has no MLM head: train with_mlm_head(model)")
    if epochs <= 0 or lr <= 0 or batch_size < 1 or len(x) == 0:
        raise ValueError(f"epochs={epochs}, lr={lr}, batch_size={batch_size} must be > 0, and there must be "
                         f"feature rows (got {len(x)})")
    counts = np.bincount(x, minlength=model.config.vocab_size) + 0.1
    head = []
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(HEAD_PREFIX)
        if n == "mlm_bias":                                   # beta starts as the unigram log-frequency
            p.data = backend.to_device(np.log(counts / counts.sum()), dtype=p.dtype)
        if p.requires_grad:
            head.append(p)
    opt = AdamW(head, lr=lr, weight_decay=0.0)
    gen = np.random.default_rng(seed)
    h_dev, x_dev = backend.to_device(h), backend.to_device(x)          # moved once, not per step
    losses = []                                                        # device scalars: no sync per step
    for step in range(max(1, int(epochs * len(x) / batch_size))):
        idx = backend.to_device(gen.integers(0, len(x), batch_size))
        loss = head_loss(model, h_dev[idx], x_dev[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.data)
        if log is not None and step % 50 == 0:
            log(step, float(loss.data))
    return [float(v) for v in backend.to_numpy(backend.xp.stack(losses))]


def main(argv=None) -> int:
    from .lecture import _commit as commit
    from .hf import MINILM, load_pretrained
    from .pretrain import DATA, doc_sentences
    p = argparse.ArgumentParser(prog="python -m minipeft.mlm_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a new folder for head.safetensors and metrics.json")
    p.add_argument("--overwrite", action="store_true", help="replace the head in an existing --out")
    p.add_argument("--base", default=MINILM, help="the encoder (default: minilm-l6)")
    p.add_argument("--corpus", default=os.path.join(DATA, "pretrain", "train.txt"))
    p.add_argument("--heldout", default=os.path.join(DATA, "pretrain", "valid.txt"))
    p.add_argument("--tokens", type=int, default=300_000, help="corpus tokens to mask and encode")
    p.add_argument("--epochs", type=float, default=6.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    head_path = os.path.join(a.out, "head.safetensors")
    if os.path.exists(head_path) and not a.overwrite:
        p.error(f"{head_path} exists; pass --overwrite to replace it, or another --out (nothing was written)")
    for f in (a.corpus, a.heldout):
        if not os.path.isfile(f):
            p.error(f"{f} not found: generate the corpus with `python -m minipeft.data.generate` first")
    if a.tokens < 1000 or a.epochs <= 0 or a.lr <= 0:
        p.error(f"--tokens >= 1000, --epochs > 0 and --lr > 0 expected, got {a.tokens}, {a.epochs}, {a.lr}")
    t0 = time.time()
    base, tok = load_pretrained(a.base)
    model = with_mlm_head(base)
    h, x = masked_features(model, tok, doc_sentences(tok, a.corpus), a.tokens, seed=a.seed)
    hv, xv = masked_features(model, tok, doc_sentences(tok, a.heldout), max(a.tokens // 10, 1000), seed=a.seed + 1)
    print(f"{len(x)} training and {len(xv)} held-out masked tokens encoded in {time.time() - t0:.0f} s", flush=True)
    before = evaluate_head(model, hv, xv)
    losses = train_head(model, h, x, a.epochs, a.lr, seed=a.seed,
                        log=lambda s, l: print(f"step {s}: loss {l:.3f}", flush=True))
    after = evaluate_head(model, hv, xv)
    os.makedirs(a.out, exist_ok=True)
    save_state_dict(head_state(model), head_path)
    write_json_atomic(os.path.join(a.out, "metrics.json"), {
        "base": a.base, "commit": commit(), "tokens": a.tokens, "epochs": a.epochs, "lr": a.lr, "seed": a.seed,
        "train_rows": int(len(x)), "heldout_rows": int(len(xv)), "steps": len(losses),
        "heldout_before": before, "heldout_after": after, "minutes": round((time.time() - t0) / 60, 1)})
    print(f"held-out masked tokens: loss {before['loss']:.3f} -> {after['loss']:.3f}, "
          f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}; wrote {head_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
