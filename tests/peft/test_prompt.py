"""Prompt tuning (minipeft/peft/prompt.py): gradients, frozen base, counts, the three inits,
per-sample routing, several prompts, save/load, cached decoding, config errors."""
from __future__ import annotations

import pytest

from minipeft import backend as B, ops
from minipeft.generate import greedy
from minipeft.gradcheck import gradcheck
from minipeft.peft import PeftModel, PromptConfig, apply
from minipeft.peft import prompt as prompt_method

from soft_inputs import base_state, batch, train_to_token, trainable, wide

np = B.host()
pytestmark = pytest.mark.task_prompt


def _pe(pm, name="default"):
    return pm.inputs[name].prompt_embeddings.numpy()


# ----------------------------------------------------------------------------- forward, gradients, training

@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_gradcheck_end_to_end_and_prompt_is_prepended(backend, arch):
    model = wide(arch, n_labels=2)
    pm = apply(model, PromptConfig(num_virtual_tokens=3))
    ids = batch(2, 5)
    pe = pm.inputs["default"].prompt_embeddings
    h = pm.encode(ids)
    assert h.shape == (2, 5, 16)                                           # prompt positions dropped
    full = model.encode(ids, prompt=pe.reshape(1, 3, 16)).numpy()          # [P_e ; wte[x]] by hand
    np.testing.assert_array_equal(h.numpy(), full[:, 3:])
    gradcheck(lambda *_: pm(ids)[0], pe, max_per_input=8, name=f"prompt {arch} lm")
    gradcheck(lambda *_: pm.classify(ids), pe, max_per_input=8, name=f"prompt {arch} classify")


def test_training_changes_only_the_prompt_and_lowers_the_loss(backend):
    model = wide(dtype=np.float32, scale=5.0)
    before = base_state(model)
    pm = apply(model, PromptConfig(num_virtual_tokens=4))
    losses = train_to_token(pm, 42)                                        # always predict token 42
    assert losses[-1] < losses[0] - 0.2, losses
    after = base_state(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a frozen base weight changed"


@pytest.mark.parametrize("cfg", [PromptConfig(num_virtual_tokens=7),
                                 PromptConfig(num_virtual_tokens=2, modules_to_save=("cls_head",))])
def test_counted_parameters_equal_formula(backend, cfg):
    pm = apply(wide(n_labels=3), cfg)
    f = prompt_method.formula(pm.config, cfg)
    expected = cfg.num_virtual_tokens * 16 + (16 * 3 + 3 if cfg.modules_to_save else 0)     # p * d (+ head)
    assert f == {"trainable": expected, "kept": expected}
    assert sum(p.size for p in pm.adapter_parameters("default").values()) == expected
    assert pm.trainable_summary()["trainable"] == expected


# ----------------------------------------------------------------------------- the three inits

def test_random_init_is_uniform_half(backend):
    pe = _pe(apply(wide(), PromptConfig(num_virtual_tokens=64)))
    assert pe.shape == (64, 16) and pe.min() >= -0.5 and pe.max() <= 0.5
    assert abs(pe.std() - 1 / np.sqrt(12)) < 0.02                          # U[-0.5, 0.5]: std 0.289


def test_vocab_init_rows_are_distinct_non_special_token_embeddings(backend):
    model = wide()
    pe = _pe(apply(model, PromptConfig(num_virtual_tokens=20, init="vocab")))
    wte = model.wte.weight.numpy()
    ids = [int(np.flatnonzero((wte == row).all(axis=1))[0]) for row in pe]
    assert len(set(ids)) == 20 and min(ids) >= prompt_method.N_SPECIAL
    with pytest.raises(ValueError, match="no frequency list"):
        apply(wide(), PromptConfig(init="vocab", vocab_top_k=50))


def test_vocab_init_with_a_corpus_samples_the_most_frequent(backend, tokenizer_path, tmp_path):
    from minipeft.data.tokenizer import Tokenizer
    corpus = tmp_path / "train.txt"
    corpus.write_text("the movie was great\n" * 5 + "table to text\n")
    tok = Tokenizer.from_file(tokenizer_path)
    top = set(tok.encode("the movie was great"))                          # 4 tokens, 5 times each
    counts = prompt_method.token_counts(tok, corpus)
    assert all(counts[t] == 5 for t in top) and counts.sum() == 5 * 4 + len(tok.encode("table to text"))
    model = wide()
    pm = apply(model, PromptConfig(num_virtual_tokens=4, init="vocab", vocab_top_k=4, vocab_corpus=str(corpus),
                                   tokenizer_path=tokenizer_path))
    wte = model.wte.weight.numpy()
    got = {int(np.flatnonzero((wte == row).all(axis=1))[0]) for row in _pe(pm)}
    assert got == top                                                     # the 4 most frequent, each once


def test_text_init_averages_label_tokens_and_fills_with_vocab(backend, tokenizer_path):
    from minipeft.data.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    model = wide()
    labels = ("terrible", " great")
    pm = apply(model, PromptConfig(num_virtual_tokens=5, init="text", init_text=labels, tokenizer_path=tokenizer_path))
    pe, wte = _pe(pm), model.wte.weight.numpy()
    assert len(tok.encode("terrible")) > 1                                 # a multi-token label
    for i, label in enumerate(labels):
        np.testing.assert_allclose(pe[i], wte[tok.encode(label)].mean(axis=0), rtol=1e-12)
    rest = [int(np.flatnonzero((wte == row).all(axis=1))[0]) for row in pe[2:]]
    assert len(set(rest)) == 3 and min(rest) >= 7                          # leftover slots: sampled vocab
    one = PromptConfig(num_virtual_tokens=3, init="text", init_text="terrible great")   # a string: one label per word
    assert one.labels() == ("terrible", "great")


# ----------------------------------------------------------------------------- several adapters

def test_per_sample_routing_equals_each_sample_alone(backend):
    pm = apply(wide(), PromptConfig(num_virtual_tokens=3))
    pm.add_adapter("b", PromptConfig(num_virtual_tokens=3, init="vocab"))
    ids = batch(4, 6)
    names = ["b", "default", "default", "b"]
    mixed = pm(ids, adapter_names=names)[0].numpy()
    alone = []
    for i, n in enumerate(names):
        pm.set_adapter(n)
        alone.append(pm(ids[i:i + 1])[0].numpy())
    np.testing.assert_allclose(mixed, np.concatenate(alone), rtol=1e-10, atol=1e-12)
    gradcheck(lambda *_: pm(ids, adapter_names=names)[0], *trainable(pm), max_per_input=4, name="routed prompts")
    pm.add_adapter("long", PromptConfig(num_virtual_tokens=5))
    with pytest.raises(ValueError, match="different lengths"):
        pm(ids, adapter_names=["b", "long", "b", "b"])
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\] have no adapter"):
        pm(ids, adapter_names=["b", "b", None, "b"])


def test_active_prompts_concatenate(backend):
    model = wide()
    pm = apply(model, PromptConfig(num_virtual_tokens=2))
    pm.add_adapter("b", PromptConfig(num_virtual_tokens=3))
    pm.set_adapter(["default", "b"])
    ids = batch(2, 4)
    both = ops.concat([pm.inputs["default"].prompt_embeddings, pm.inputs["b"].prompt_embeddings], axis=0)
    expected = model.encode(ids, prompt=both.reshape(1, 5, 16)).numpy()[:, 5:]
    np.testing.assert_array_equal(pm.encode(ids).numpy(), expected)


# ----------------------------------------------------------------------------- save/load, generation

def test_save_load_round_trip_reproduces_outputs(backend, tmp_path):
    pm = apply(wide(n_labels=2), PromptConfig(num_virtual_tokens=4, modules_to_save=("cls_head",)))
    for p in trainable(pm):
        p.data = p.data + B.rng.normal(p.shape, std=0.1, dtype=p.dtype)
    ids = batch(2, 6)
    out, cls = pm(ids)[0].numpy(), pm.classify(ids).numpy()
    pm.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(wide(n_labels=2), str(tmp_path))
    np.testing.assert_array_equal(loaded(ids)[0].numpy(), out)
    np.testing.assert_array_equal(loaded.classify(ids).numpy(), cls)      # the trained head came along


def test_cached_greedy_equals_uncached(backend):
    pm = apply(wide(scale=30.0, dtype=np.float32), PromptConfig(num_virtual_tokens=3))
    pm.inputs["default"].prompt_embeddings.data *= 60
    prompts = [[9, 12, 5], [40, 5, 6], [7, 8]]
    cached = greedy(pm, prompts, max_new_tokens=6, use_cache=True)
    assert cached == greedy(pm, prompts, max_new_tokens=6, use_cache=False)
    with pm.disable_adapter():
        assert cached != greedy(pm, prompts, max_new_tokens=6)           # the prompt matters


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw, match", [
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be a positive integer"),
    (dict(num_virtual_tokens=True), "num_virtual_tokens must be a positive integer"),
    (dict(init="text"), "needs init_text"),
    (dict(init="text", init_text=("a", "b", "c"), num_virtual_tokens=2), "3 labels in init_text but only"),
    (dict(init_text="great"), "only used with init='text'"),
    (dict(init="labels"), "init must be 'random', 'vocab' or 'text'"),
    (dict(vocab_top_k=0), "vocab_top_k must be a positive integer"),
])
def test_config_errors_are_clear(kw, match):
    with pytest.raises(ValueError, match=match):
        PromptConfig(**kw)
