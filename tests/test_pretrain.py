"""Pretraining itself (minipeft/pretrain.py), on tiny settings: BERT's sentence pairs, the
combined MLM + NSP loss, early stopping that keeps the best weights, and where runs are written."""
from __future__ import annotations

import json
import os

import numpy
import pytest

from minipeft import backend
from minipeft.data.tokenizer import Tokenizer
from minipeft.pretrain import DATA, doc_sentences, mlm_nsp_loss, nsp_pairs, pretrain

pytestmark = pytest.mark.task_training


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))


@pytest.fixture(scope="module")
def docs(tok):
    return doc_sentences(tok, os.path.join(DATA, "pretrain", "valid.txt"))


def test_doc_sentences_concatenate_to_the_documents_tokens(tok, docs):
    with open(os.path.join(DATA, "pretrain", "valid.txt"), encoding="utf-8") as f:
        first = f.read().split("\n\n")[0].strip()
    assert [t for s in docs[0] for t in s] == tok.hf.encode(first, add_special_tokens=False).ids
    assert sum(len(d) >= 2 for d in docs) > 0.7 * len(docs)      # NSP needs two sentences (79 %)


def test_nsp_pairs_are_cls_a_sep_b_sep_with_types_and_half_true_continuations(tok, docs):
    gen = backend.host().random.default_rng(0)
    b = nsp_pairs(docs, tok, 256, 128, gen)
    ids, tt, mask, is_next = b["ids"], b["token_type_ids"], b["attention_mask"], b["is_next"]
    assert ids.shape == tt.shape == mask.shape and ids.shape[1] <= 128
    assert 0.4 < is_next.mean() < 0.6
    real = b["targets"].copy()
    original = backend.host().where(real != -100, real, ids)      # undo the masking
    for i in range(len(ids)):
        row = original[i][mask[i] == 1]
        assert row[0] == tok.cls_id and row[-1] == tok.sep_id and (row == tok.sep_id).sum() == 2
        cut = int(backend.host().flatnonzero(row == tok.sep_id)[0])
        assert (tt[i][:cut + 1] == 0).all() and (tt[i][cut + 1:int(mask[i].sum())] == 1).all()
    # a true continuation is the rest of one document: A + B are that document's tokens
    doc_tokens = {tuple(t for s in d for t in s) for d in docs}
    i = int(backend.host().flatnonzero(is_next == 1)[0])
    row = [int(x) for x in original[i][mask[i] == 1]]
    body = tuple(x for x in row if x not in (tok.cls_id, tok.sep_id))
    if len(row) < 128:                                             # not truncated
        assert body in doc_tokens


def test_mlm_nsp_loss_is_the_sum_of_both_losses(tok, docs):
    from dataclasses import replace

    from minipeft import ops
    from minipeft.autograd import no_grad
    from minipeft.nn import Transformer
    from minipeft.pretrain import PRESETS
    backend.manual_seed(0)
    cfg = replace(PRESETS["bert-m"], d_model=32, n_layer=1, n_head=2, n_ctx=64, n_labels=2,
                  vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    model = Transformer(cfg).eval()
    b = nsp_pairs(docs, tok, 8, 64, backend.host().random.default_rng(1))
    with no_grad():
        total = float(mlm_nsp_loss(model, b).item())
        h = model.encode(b["ids"], b["attention_mask"], b["token_type_ids"])
        mlm = float(ops.cross_entropy(model.lm_logits(h), b["targets"]).item())
        nsp = float(ops.cross_entropy(model.classify(b["ids"], b["attention_mask"], b["token_type_ids"]),
                                      b["is_next"]).item())
    assert abs(total - (mlm + nsp)) < 1e-5 and nsp > 0.3 and mlm > 1.0


def test_early_stopping_keeps_the_best_weights_and_records_the_curve(tmp_path, monkeypatch):
    """A tiny run that overfits at once (lr far too high) must ship its best evaluation."""
    import minipeft.pretrain as P
    from dataclasses import replace
    monkeypatch.setitem(P.PRESETS, "gpt2-s", replace(P.PRESETS["gpt2-s"], d_model=16, n_layer=1, n_head=1, n_ctx=32))
    m = pretrain("gpt2-s", str(tmp_path / "run"), steps=24, batch_size=4, lr=3e-2, eval_every=4,
                 patience=2, progress=False, processes=1)
    with open(tmp_path / "run" / "train_log.jsonl", encoding="utf-8") as f:
        evals = {r["step"]: r["eval"]["heldout_loss"] for r in map(json.loads, f) if "eval" in r}
    best = min(evals, key=evals.get)
    assert m["best_step"] == best and abs(m["heldout_loss"] - evals[best]) < 1e-4, (m, evals)
    assert m["steps"] == max(evals) and m["max_steps"] == 24
    assert P.heldout_loss_of(str(tmp_path / "run")) == pytest.approx(m["heldout_loss"], abs=1e-4)


def test_the_encoder_is_shipped_without_its_nsp_head(tmp_path, monkeypatch):
    import minipeft.pretrain as P
    from dataclasses import replace
    from minipeft.checkpoint import load_checkpoint
    monkeypatch.setitem(P.PRESETS, "bert-m", replace(P.PRESETS["bert-m"], d_model=16, n_layer=1, n_head=1, n_ctx=32))
    m = pretrain("bert-m", str(tmp_path / "enc"), steps=2, batch_size=4, eval_every=2, progress=False, processes=1)
    state, config = load_checkpoint(str(tmp_path / "enc"))
    assert not any(k.startswith("cls_head") for k in state) and config["n_labels"] == 0
    assert "pooler.weight" in state and 0 <= m["nsp_accuracy"] <= 1
    assert P.load_pretrained(str(tmp_path / "enc"), n_labels=2).config.n_labels == 2   # a fresh head


def test_continued_pretraining_on_a_corpus_file_starts_exactly_from_the_checkpoint(tmp_path, monkeypatch):
    """DAPT / TAPT: --init-from a checkpoint plus --corpus FILE. With lr 0 the weights stay the
    checkpoint's exactly; the corpus is split (every 20th document held out) into the run folder."""
    import minipeft.pretrain as P
    from dataclasses import replace
    from minipeft.checkpoint import load_checkpoint
    monkeypatch.setitem(P.PRESETS, "gpt2-s", replace(P.PRESETS["gpt2-s"], d_model=16, n_layer=1, n_head=1, n_ctx=32))
    base = str(tmp_path / "base")
    pretrain("gpt2-s", base, steps=3, batch_size=4, eval_every=3, progress=False, processes=1)
    corpus = tmp_path / "domain.txt"
    corpus.write_text("".join(f"The asteroid number {i} circles the sun slowly.\n\n" for i in range(40)))
    out = str(tmp_path / "dapt")
    m = pretrain("gpt2-s", out, steps=2, batch_size=4, lr=0.0, eval_every=2, progress=False, processes=1,
                 init_from=base, corpus_file=str(corpus))
    a, b = load_checkpoint(base)[0], load_checkpoint(out)[0]
    assert all(numpy.array_equal(a[k], b[k]) for k in a), "lr 0: exactly the checkpoint's weights"
    assert m["corpus"] == {"file": "domain.txt", "train_docs": 38, "valid_docs": 2}
    assert m["base_heldout_loss"] == pytest.approx(P.heldout_loss_of(base), abs=1e-5), "the base held-out set"
    assert m["stages"][0]["steps"] == 3 and m["total_steps"] == 5
    m2 = pretrain("gpt2-s", str(tmp_path / "dapt2"), steps=4, batch_size=4, lr=1e-2, eval_every=4,
                  progress=False, processes=1, init_from=base, corpus_file=str(corpus))
    assert m2["heldout_loss"] < m["heldout_loss"], "it learns the domain"
    with pytest.raises(ValueError, match="preset"):
        monkeypatch.setitem(P.PRESETS, "gpt2-m", replace(P.PRESETS["gpt2-m"], d_model=32, n_layer=1, n_head=1, n_ctx=32))
        pretrain("gpt2-m", str(tmp_path / "x"), steps=1, progress=False, processes=1, init_from=base,
                 corpus_file=str(corpus))
    with pytest.raises(FileNotFoundError, match="--corpus"):
        pretrain("gpt2-s", str(tmp_path / "y"), steps=1, progress=False, init_from=base, corpus_file="nope.txt")


def test_tapt_on_single_sentences_trains_the_encoder_by_masked_lm_alone(tmp_path, monkeypatch, capsys):
    import minipeft.pretrain as P
    from dataclasses import replace
    monkeypatch.setitem(P.PRESETS, "bert-m", replace(P.PRESETS["bert-m"], d_model=16, n_layer=1, n_head=1, n_ctx=32))
    base = str(tmp_path / "enc")
    pretrain("bert-m", base, steps=2, batch_size=4, eval_every=2, progress=False, processes=1)
    corpus = tmp_path / "task.txt"
    corpus.write_text("".join(f"The food was great number {i}.\n\n" for i in range(30)))
    m = pretrain("bert-m", str(tmp_path / "tapt"), steps=3, batch_size=4, eval_every=3, progress=False,
                 processes=1, init_from=base, corpus_file=str(corpus))
    assert "masked LM only" in capsys.readouterr().out and m["nsp_accuracy"] is None
    assert m["heldout_loss"] > 0


def test_hard_nsp_negatives_look_like_the_true_continuation(tok, docs):
    """A hard negative is the candidate tail closest to the true continuation (and never from the
    same document); in a batch, hard negatives share more of A's tokens than random ones."""
    from minipeft.pretrain import hardest
    d, e, f = object(), object(), object()
    true = [1, 2, 3, 4]
    assert hardest(true, [(e, [9, 8]), (f, [1, 2, 3, 7]), (d, [1, 2, 3, 4])], d) == (f, [1, 2, 3, 7])
    # a tail equal to the true continuation is no negative, wherever it comes from
    assert hardest(true, [(e, [9, 8]), (f, [1, 2, 3, 4]), (d, [1, 2, 3, 4])], d) == (e, [9, 8])
    def overlap(batch_hard):
        gen = backend.host().random.default_rng(5)
        b = nsp_pairs(docs, tok, 128, 256, gen, hard=batch_hard)
        ids = backend.host().where(b["targets"] != -100, b["targets"], b["ids"])
        scores = []
        for i in backend.host().flatnonzero(b["is_next"] == 0):
            row = ids[i][b["attention_mask"][i] == 1]
            cut = int(backend.host().flatnonzero(row == tok.sep_id)[0])
            a, bb = set(row[1:cut].tolist()), set(row[cut + 1:-1].tolist())
            scores.append(len(a & bb) / max(len(a | bb), 1))
        return sum(scores) / len(scores)
    assert overlap(1.0) > overlap(0.0) + 0.01
