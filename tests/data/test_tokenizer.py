"""Tokenizer wrapper: fixed special ids, round trips, batching, validation, determinism, and
loading GPT-2-style and BERT-style tokenizer.json files."""
from __future__ import annotations

import pytest

from minipeft import backend
from minipeft.data.tokenizer import SPECIAL_TOKENS, Tokenizer, main, train_tokenizer, validate_ids

np = backend.host()

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A pint of milk costs £1, a loaf of bread £2.50 — prices rose!",
    "Café au lait, naïve façade, jalapeño; emoji 😀 too.",
    "Hello, world! Hello again, world? (parentheses) [brackets] {braces}",
    "the quick brown fox jumps over the lazy dog",
]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(corpus_file):
    return train_tokenizer([corpus_file], vocab_size=400)


# ----------------------------------------------------------------------------- special ids, round trip

def test_special_token_ids_are_fixed(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.cls_id, tok.mask_id, tok.unk_id) \
        == (0, 1, 2, 3, 4, 5, 6)
    assert [tok.id_to_token(i) for i in range(7)] == list(SPECIAL_TOKENS)
    assert tok.token_to_id("<mask>") == 5


def test_round_trip_unicode_punctuation_pound(tok):
    for text in CORPUS + ["unseen: Ωμέγα ₹100 £££ ¿qué? \t tabs  and  double spaces",
                          "  leading and trailing spaces  ", ""]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_bos_eos_added_and_skipped_in_decode(tok):
    ids = tok.encode("the cat", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "the cat"
    assert tok.decode(ids, skip_special=False) == "<bos>the cat<eos>"
    assert tok.decode(np.array(ids)) == "the cat"      # arrays work too


def test_training_compresses_frequent_words(tok):
    text = "The cat sat on the mat."
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2


# ----------------------------------------------------------------------------- batching

def test_batch_pads_right_and_masks(tok):
    texts = ["the cat sat on the mat", "the", "the dog"]
    b = tok.batch(texts)
    lens = [len(tok.encode(t)) for t in texts]
    assert b.ids.dtype == np.int64 and b.attention_mask.dtype == np.int64
    assert b.ids.shape == b.attention_mask.shape == (3, max(lens))
    assert b.lengths.tolist() == lens
    for i, t in enumerate(texts):
        n = lens[i]
        assert b.ids[i, :n].tolist() == tok.encode(t)
        assert (b.ids[i, n:] == tok.pad_id).all()
        assert b.attention_mask[i].tolist() == [1] * n + [0] * (b.ids.shape[1] - n)


def test_batch_pads_left_for_generation(tok):
    texts = ["the cat sat on the mat", "the"]
    b = tok.batch(texts, padding_side="left", add_bos=True)
    T = b.ids.shape[1]
    short = [tok.bos_id] + tok.encode("the")
    assert b.ids[1].tolist() == [tok.pad_id] * (T - len(short)) + short
    assert b.attention_mask[1].tolist() == [0] * (T - len(short)) + [1] * len(short)
    assert b.attention_mask[0].all()


def test_batch_pad_to_fixed_length(tok):
    b = tok.batch(["the cat", "the"], pad_to=16)
    assert b.ids.shape == (2, 16)
    assert b.attention_mask.sum(axis=1).tolist() == b.lengths.tolist()
    with pytest.raises(ValueError, match="more than pad_to=2; pass max_len=2"):
        tok.batch(["the cat sat on the mat"], pad_to=2)


def test_truncation_right_and_left_keeps_bos_eos(tok):
    text = "the quick brown fox jumps over the lazy dog"
    full = tok.encode(text)
    assert len(full) > 5
    right = tok.batch([text], max_len=5, add_bos=True, add_eos=True).ids[0].tolist()
    left = tok.batch([text], max_len=5, truncation="left", add_bos=True, add_eos=True).ids[0].tolist()
    # 5 = <bos> + 3 text tokens + <eos>; right truncation keeps the start, left the end
    assert right == [tok.bos_id] + full[:3] + [tok.eos_id]
    assert left == [tok.bos_id] + full[-3:] + [tok.eos_id]
    assert tok.batch([text], max_len=4).ids[0].tolist() == full[:4]


def test_batch_rejects_bad_arguments(tok):
    with pytest.raises(TypeError, match="list of strings"):
        tok.batch("the cat")
    with pytest.raises(ValueError, match="no texts"):
        tok.batch([])
    with pytest.raises(ValueError, match="padding_side"):
        tok.batch(["a"], padding_side="middle")
    with pytest.raises(ValueError, match="too short for the <bos>/<eos>"):
        tok.batch(["a"], max_len=1, add_bos=True, add_eos=True)


def test_encode_pair_bert_layout(tok):
    a, b = tok.encode("the cat"), tok.encode("the dog sat")
    ids, types = tok.encode_pair("the cat", "the dog sat")
    assert ids == [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # longest first: cut tokens from the longer text until the pair fits
    ids, types = tok.encode_pair("the cat", "the quick brown fox jumps over the lazy dog", max_len=8)
    assert len(ids) == len(types) == 8
    assert ids[:len(a) + 2] == [tok.cls_id] + a + [tok.sep_id]      # the short text is whole


def test_batch_pairs_has_token_types(tok):
    b = tok.batch_pairs([("the cat", "the dog"), ("a", "the quick brown fox")])
    ids0, types0 = tok.encode_pair("the cat", "the dog")
    assert b.ids[0, :len(ids0)].tolist() == ids0
    assert b.token_type_ids[0, :len(types0)].tolist() == types0
    assert (b.token_type_ids[b.attention_mask == 0] == 0).all()


# ----------------------------------------------------------------------------- validate_ids

def test_validate_ids_names_position_and_value():
    assert validate_ids([0, 5, 9], vocab_size=10).dtype == np.int64
    with pytest.raises(ValueError, match=r"token id 10 at position 2 is out of range.*\[0, 10\)"):
        validate_ids([3, 4, 10, 12], vocab_size=10)
    with pytest.raises(ValueError, match=r"batch ids: token id -1 at position \(1, 0\)"):
        validate_ids(np.array([[1, 2], [-1, 3]]), vocab_size=10, where="batch ids")
    with pytest.raises(TypeError, match="integers"):
        validate_ids(np.array([1.0, 2.0]), vocab_size=10)


def test_decode_validates_ids(tok):
    with pytest.raises(ValueError, match=f"decode: token id {tok.vocab_size} at position 1"):
        tok.decode([7, tok.vocab_size])


# ----------------------------------------------------------------------------- training, saving, loading

def test_training_is_deterministic(corpus_file, tmp_path):
    train_tokenizer([corpus_file], vocab_size=400, out_path=tmp_path / "a.json")
    train_tokenizer([corpus_file], vocab_size=400, out_path=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    loaded = Tokenizer.from_file(tmp_path / "t.json")
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode(CORPUS[1]) == tok.encode(CORPUS[1])


def test_train_rejects_bad_arguments(corpus_file, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([corpus_file], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"])
    with pytest.raises(FileNotFoundError, match="train one with"):
        Tokenizer.from_file(tmp_path / "missing.json")


def test_command_line(corpus_file, tmp_path, capsys):
    out = tmp_path / "cli.json"
    main(["--train", str(corpus_file), "--vocab-size", "300", "--out", str(out),
          "--eval", str(corpus_file)])
    assert Tokenizer.from_file(out).vocab_size == 300
    assert "characters per token" in capsys.readouterr().out


def _gpt2_style(tmp_path):
    """A tiny byte-level BPE whose only special token is GPT-2's <|endoftext|>."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers
    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "gpt2.json"
    hf.save(str(path))
    return path


def _bert_style(tmp_path):
    """A tiny WordPiece with BERT's special tokens and its [CLS] a [SEP] b [SEP] template."""
    from tokenizers import Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, processors
    vocab = {t: i for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "##s", "."])}
    hf = HF(models.WordPiece(vocab, unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    path = tmp_path / "bert.json"
    hf.save(str(path))
    return path


def test_load_gpt2_style_tokenizer(tmp_path):
    tok = Tokenizer.from_file(_gpt2_style(tmp_path))
    eot = tok.token_to_id("<|endoftext|>")
    assert eot is not None
    assert tok.bos_id == tok.eos_id == tok.pad_id == eot
    assert tok.cls_id is None and tok.sep_id is None and tok.mask_id is None
    ids = tok.encode("the cat sat", add_eos=True)
    assert ids[-1] == eot and tok.decode(ids) == "the cat sat"
    b = tok.batch(["the cat", "the"])                 # pads with <|endoftext|>
    assert b.ids[1, -1] == eot and b.attention_mask[1, -1] == 0
    # a feature that needs a missing token says which and how to fix it
    with pytest.raises(ValueError, match=r"encode_pair needs a cls token.*special_tokens="):
        tok.encode_pair("a", "b")


def test_load_bert_style_tokenizer(tmp_path):
    tok = Tokenizer.from_file(_bert_style(tmp_path))
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.bos_id is None and tok.eos_id is None
    # encode does not apply BERT's template; encode_pair builds it
    assert tok.encode("The cats sat.") == [5, 6, 9, 7, 10]
    ids, types = tok.encode_pair("the cat", "the dog")
    assert ids == [2, 5, 6, 3, 5, 8, 3] and types == [0, 0, 0, 0, 1, 1, 1]
    assert tok.decode(ids) == "the cat the dog"
    with pytest.raises(ValueError, match="add_bos needs a bos token"):
        tok.encode("the", add_bos=True)
    # naming the token explicitly fixes it
    tok = Tokenizer.from_file(_bert_style(tmp_path), special_tokens={"bos": "[CLS]"})
    assert tok.encode("the", add_bos=True) == [2, 5]


# ----------------------------------------------------------------------------- the shipped tokenizer

def test_shipped_tokenizer_vocab_specials_and_compression():
    from minipeft.data.tokenizer import DEFAULT_PATH, chars_per_token, load_default
    tok = load_default()
    assert tok.vocab_size == 2048
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(7))
    valid = DEFAULT_PATH.parent / "pretrain" / "valid.txt"
    lines = [line for line in valid.read_text(encoding="utf-8").splitlines() if line.strip()]
    sentence = lines[0]
    ids = tok.encode(sentence)
    assert len(ids) < len(sentence) / 2.5            # it compresses
    assert tok.decode(ids) == sentence
    assert chars_per_token(tok, lines) > 3.5         # 3.93 when it was trained


def test_shipped_tokenizer_matches_the_shipped_corpus(tmp_path):
    """data/tokenizer.json is what training on data/pretrain/train.txt gives; if the corpus is
    regenerated differently, retrain it (and the checkpoints, whose ids depend on it)."""
    import json

    from minipeft.data.generate import pretrain_corpus
    from minipeft.data.tokenizer import DEFAULT_PATH
    train_tokenizer([pretrain_corpus(DEFAULT_PATH.parent) / "train.txt"], vocab_size=2048,
                    out_path=tmp_path / "t.json")
    fresh = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["model"]
    shipped = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))["model"]
    assert fresh["vocab"] == shipped["vocab"] and fresh["merges"] == shipped["merges"], (
        "data/tokenizer.json is out of date: run `python -m minipeft.data.tokenizer --train "
        "data/pretrain/train.txt --vocab-size 2048 --out data/tokenizer.json`")
