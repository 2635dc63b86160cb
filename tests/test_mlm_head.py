"""The masked-LM head trained on a frozen encoder (minipeft/mlm_head.py)."""
from __future__ import annotations

import os

import numpy
import pytest

from minipeft import backend, hf, mlm_head
from minipeft.autograd import no_grad
from minipeft.data.tokenizer import Tokenizer
from minipeft.checkpoint import save_state_dict
from minipeft.nn import Transformer, TransformerConfig
from minipeft.pretrain import DATA

pytestmark = pytest.mark.task_training


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))


def _encoder(tok, mlm_head=False):
    """A tiny BERT-layout encoder without an MLM head (as all-MiniLM-L6-v2 is published)."""
    backend.set_default_dtype(numpy.float64)
    backend.manual_seed(0)
    cfg = TransformerConfig(arch="bert", d_model=16, n_layer=1, n_head=2, n_ctx=64, vocab_size=tok.vocab_size,
                            pad_id=tok.pad_id, mlm_head=mlm_head)
    return Transformer(cfg).eval()


def _docs(tok, n=40):
    texts = [f"The cafe number {i} serves cheap food . It was {'great' if i % 2 else 'terrible'} ." for i in range(n)]
    return [[tok.encode(t)] for t in texts]


def test_masking_chooses_15_percent_of_real_tokens_never_a_special_one(tok):
    chosen_total, real_total = 0, 0
    for inputs, ids, att, chosen in mlm_head.masked_batches(tok, _docs(tok, 400), tokens=10**9, seed=0):
        special = numpy.isin(ids, [tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id])
        assert not (chosen & special).any(), "a special token was chosen"
        assert not (chosen & (att == 0)).any(), "a padding position was chosen"
        assert (inputs[~chosen] == ids[~chosen]).all(), "a position that was not chosen changed"
        masked = (inputs == tok.mask_id) & chosen
        chosen_total += int(chosen.sum())
        real_total += int((~special & (att == 1)).sum())
        assert masked.sum() <= chosen.sum()
    share = chosen_total / real_total
    assert 0.13 < share < 0.17, f"chose {share:.3f} of the real tokens, expected about 0.15"


def test_masking_with_a_wordpiece_vocabulary_never_chooses_its_scattered_special_tokens():
    """pretrain.mask_tokens reads the special ids from the tokenizer: MiniLM's [CLS] is 101, [SEP]
    102, not below 7 as in the shipped tokenizer."""
    try:
        mtok = hf.load_tokenizer(hf.minilm_dir())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    docs = [[mtok.encode(f"the cafe number {i} serves cheap food .")] for i in range(300)]
    for inputs, ids, att, chosen in mlm_head.masked_batches(mtok, docs, tokens=10**9, seed=0):
        assert (ids[:, 0] == mtok.cls_id).all() and not chosen[:, 0].any(), "[CLS] was chosen"
        assert not (chosen & (ids == mtok.sep_id)).any(), "[SEP] was chosen"
        assert not (chosen & (att == 0)).any(), "a padding position was chosen"


def test_cached_features_give_the_full_models_mlm_logits_at_the_chosen_positions(tok):
    """Training on cached features is exact: head(h at a chosen position) equals the MLM logits of
    the whole model run on the same masked batch."""
    model = mlm_head.with_mlm_head(_encoder(tok))
    docs = _docs(tok)
    h, x = mlm_head.masked_features(model, tok, docs, tokens=200, seed=3, batch_size=4)
    rows = []
    for inputs, ids, att, chosen in mlm_head.masked_batches(tok, docs, tokens=200, seed=3, batch_size=4):
        with no_grad():
            logits = model.lm_logits(model.encode(inputs, attention_mask=att, token_type_ids=numpy.zeros_like(ids)))
        rows.append(backend.to_numpy(logits.data)[chosen])
    full = numpy.concatenate(rows)
    with no_grad():
        from minipeft.autograd import Tensor
        cached = backend.to_numpy(model.lm_logits(Tensor(h[None])).data)[0]
    assert cached.shape == full.shape == (len(x), tok.vocab_size)
    err = numpy.abs(cached - full).max()
    assert err < 1e-10, f"head on cached features differs from the full model by {err:.3g}"


def test_training_lowers_the_heldout_loss_and_leaves_the_encoder_bit_identical(tok):
    base = _encoder(tok)
    before = {n: p.data.copy() for n, p in base.named_parameters()}
    model = mlm_head.with_mlm_head(base)
    docs = _docs(tok, 200)
    h, x = mlm_head.masked_features(model, tok, docs[:160], tokens=10**9, seed=0)
    hv, xv = mlm_head.masked_features(model, tok, docs[160:], tokens=10**9, seed=1)
    start = mlm_head.evaluate_head(model, hv, xv)
    losses = mlm_head.train_head(model, h, x, epochs=30, lr=1e-2, batch_size=64)
    end = mlm_head.evaluate_head(model, hv, xv)
    assert end["loss"] < start["loss"] - 1.0, f"held-out loss {start['loss']:.3f} -> {end['loss']:.3f}"
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if not n.startswith("mlm_"):
            assert numpy.array_equal(backend.to_numpy(p.data), backend.to_numpy(before[n])), f"{n} changed"


def test_a_saved_head_loads_back_exactly_and_bad_heads_are_refused(tok, tmp_path):
    model = mlm_head.with_mlm_head(_encoder(tok))
    for p in model.parameters():
        p.data = p.data + 0.01 * numpy.arange(p.data.size).reshape(p.data.shape) / p.data.size
    path = str(tmp_path / "head.safetensors")
    save_state_dict(mlm_head.head_state(model), path)
    again = mlm_head.load_head(_encoder(tok), path)
    for n, a in mlm_head.head_state(model).items():
        assert numpy.array_equal(backend.to_numpy(dict(again.named_parameters())[n].data), backend.to_numpy(a)), n
    state = mlm_head.head_state(model)
    state.pop("mlm_bias")
    save_state_dict(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="needs exactly"):
        mlm_head.load_head(_encoder(tok), str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="already has an MLM head"):
        mlm_head.with_mlm_head(_encoder(tok, mlm_head=True))
    gpt2 = Transformer(TransformerConfig(arch="gpt2", d_model=16, n_layer=1, n_head=2, n_ctx=16, vocab_size=50))
    with pytest.raises(ValueError, match="BERT-layout"):
        mlm_head.with_mlm_head(gpt2)
    with pytest.raises(ValueError, match="no MLM head"):
        mlm_head.train_head(_encoder(tok), numpy.zeros((4, 16)), numpy.zeros(4, numpy.int64))


def test_the_command_refuses_to_replace_a_head_unasked(tmp_path, capsys):
    out = tmp_path / "head"
    out.mkdir()
    (out / "head.safetensors").write_bytes(b"not touched")
    with pytest.raises(SystemExit):
        mlm_head.main(["--out", str(out)])
    assert (out / "head.safetensors").read_bytes() == b"not touched"
    assert "--overwrite" in capsys.readouterr().err


SHIPPED = os.path.join(DATA, "checkpoints", hf.MINILM_MLM, "head.safetensors")


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="data/checkpoints/minilm-l6-mlm is not shipped")
def test_the_shipped_minilm_head_predicts_masked_words_far_better_than_word_frequency():
    """On SST-2 dev sentences (text the head never trained on), the shipped head's masked-token
    accuracy beats the best a head without the encoder can do: always the most frequent target."""
    try:
        model, mtok = hf.load_pretrained(hf.MINILM_MLM)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert model.config.mlm_head and model.config.d_model == 384
    from minipeft.fewshot import examples
    docs = [[mtok.encode(e.s1)] for e in examples("sst2", "dev")[:120]]
    h, x = mlm_head.masked_features(model, mtok, docs, tokens=10**9, seed=0)
    got = mlm_head.evaluate_head(model, h, x)
    frequent = numpy.bincount(x).max() / len(x)
    assert got["accuracy"] > frequent + 0.1, \
        f"masked-token accuracy {got['accuracy']:.3f}, the most frequent word alone {frequent:.3f}"
