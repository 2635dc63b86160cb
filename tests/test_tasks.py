"""Fine-tuning tasks: how examples become token ids and targets, and the scoring paths."""
from __future__ import annotations

import numpy as np
import pytest

from minipeft import backend, peft, tasks
from minipeft.data.tokenizer import load_default
from minipeft.nn import Transformer, TransformerConfig

pytestmark = pytest.mark.task_training


@pytest.fixture(scope="module")
def tok():
    return load_default()


def test_linearize_mr_keeps_every_attribute_in_order():
    mr = "name[The Eagle], eatType[coffee shop], food[Chinese]"
    assert tasks.linearize_mr(mr) == "name : The Eagle | eatType : coffee shop | food : Chinese"


def test_loss_counts_only_target_tokens_and_eos(tok):
    ids, labels = tasks.encode_seq2seq(tok, "name : The Eagle", "The Eagle is a pub.", n_ctx=64)
    src, tgt = tok.encode("name : The Eagle"), tok.encode("The Eagle is a pub.")
    assert ids == [tok.bos_id] + src + [tok.sep_id] + tgt + [tok.eos_id]
    assert labels == [-100] * (len(src) + 2) + tgt + [tok.eos_id]


def test_long_sources_are_cut_to_fit(tok):
    # how they are cut (whole fields from the end, not tokens from the left): test_real_data_tasks
    source = " ".join(["word"] * 200)
    ids, labels = tasks.encode_seq2seq(tok, source, "short.", n_ctx=32)
    assert len(ids) == 32 and len(labels) == 32
    assert ids[0] == tok.bos_id and labels[-1] == tok.eos_id


def test_seq2seq_batches_shift_targets_by_one(tok):
    ex = [tasks.Seq2SeqExample("food : Chinese", ["It serves Chinese food.", "Chinese food is served."])]
    b = next(tasks.seq2seq_batches(tok, ex, batch_size=2, n_ctx=32, seed=0))
    assert b["ids"].shape == b["targets"].shape
    for row_ids, row_t in zip(b["ids"], b["targets"]):
        real = row_t != -100
        # wherever a target is predicted, it is the next input token (or <eos> at the end)
        nxt = np.r_[row_ids[1:], tok.eos_id]
        assert real.sum() > 0
        assert np.all((row_t[real] == nxt[real]) | (row_t[real] == tok.eos_id))
        assert not np.any(row_t[row_ids == tok.pad_id] != -100), "no loss on padding"


@pytest.mark.parametrize("lm", [False, True])
def test_classification_batches(tok, lm):
    ex = tasks.load_task("sst2", "dev")[:5]
    b = next(tasks.cls_batches(tok, ex, batch_size=5, max_len=64, seed=None, endless=False, lm=lm))
    first = tok.bos_id if lm else tok.cls_id
    assert np.all(b["ids"][:, 0] == first)
    assert np.array_equal(b["labels"], [e.label for e in ex])
    lengths = b["attention_mask"].sum(axis=1)
    assert np.all(b["ids"][np.arange(5), lengths - 1] != tok.pad_id)
    if lm:
        tail = tok.encode(tasks.LM_TEMPLATE.format(""))[-1]
        assert np.all(b["ids"][np.arange(5), lengths - 1] == tail), "each row ends with the template"


def test_label_word_scores_pick_the_label_words_at_the_last_real_token(tok):
    backend.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_ctx=64, d_model=16, n_layer=1, n_head=2))
    ex = tasks.load_task("sst2", "dev")[:3]
    b = next(tasks.cls_batches(tok, ex, 3, 64, seed=None, endless=False, lm=True))
    words = tasks.label_word_ids(tok)
    scores = tasks.label_word_scores(model, b, words).numpy()
    logits, _ = model(b["ids"])
    last = b["attention_mask"].sum(axis=1) - 1
    expected = logits.numpy()[np.arange(3), last][:, words]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load_task("squad", "train")


def test_finetune_reports_the_trainable_count_after_reloading_the_best_adapter(tok, tmp_path):
    # an untrained model's dev accuracy stays flat, so the best evaluation is the first (step 1),
    # the adapter saved there is reloaded (frozen), and the count must still be what trained
    from dataclasses import replace
    from minipeft import peft
    from minipeft.checkpoint import save_checkpoint
    cfg = TransformerConfig(arch="bert", vocab_size=tok.vocab_size, pad_id=tok.pad_id, d_model=16, n_layer=1, n_head=2)
    save_checkpoint(Transformer(cfg), str(tmp_path / "base"), cfg.to_dict())
    acfg = peft.AdapterConfig(size=2, modules_to_save=("cls_head",))
    r = tasks.finetune("sst2", acfg, str(tmp_path / "base"), steps=3, batch_size=4, lr=1e-9, train_size=12,
                       eval_size=8, eval_every=1, out_dir=str(tmp_path / "run"), progress=False, verbose=False)
    assert r.best_step == 1
    assert r.trainable == peft.adapter.formula(replace(cfg, n_labels=2), acfg)["trainable"] > 0


def test_generation_leaves_room_for_a_soft_prompt(tok):
    # a source as long as the context allows, plus a soft prompt: the prompt is cut further so that
    # soft prompt + source + max_new_tokens still fit in n_ctx (generate refuses otherwise)
    from minipeft import peft
    cfg = TransformerConfig(arch="gpt2", vocab_size=tok.vocab_size, pad_id=tok.pad_id, d_model=16, n_layer=1,
                            n_head=2, n_ctx=64)
    pm = peft.apply(Transformer(cfg), peft.PromptConfig(num_virtual_tokens=8))
    assert tasks.soft_prompt_length(pm) == 8 and tasks.soft_prompt_length(pm.model) == 0
    with pm.disable_adapter():
        assert tasks.soft_prompt_length(pm) == 0
    long = tasks.Seq2SeqExample(" ".join(["word"] * 200), ["short."])
    out = tasks.generate_targets(pm, tok, [long], max_new_tokens=20)
    assert len(out) == 1


def test_lm_loss_on_target_positions_equals_the_full_logits_loss(tok):
    # lm_loss forms logits only where a target is; loss and gradients equal model(ids, targets)'s
    from minipeft import peft
    backend.manual_seed(0)
    cfg = TransformerConfig(arch="gpt2", vocab_size=tok.vocab_size, pad_id=tok.pad_id, d_model=16, n_layer=1,
                            n_head=2, n_ctx=64)
    ex = [tasks.Seq2SeqExample(f"name : Place {i} | food : Chinese", [f"Place {i} serves Chinese food."])
          for i in range(3)]
    batch = next(tasks.seq2seq_batches(tok, ex, batch_size=3, n_ctx=64, seed=0))
    for config in (None, peft.PrefixConfig(num_virtual_tokens=3), peft.PromptConfig(num_virtual_tokens=2)):
        model = Transformer(cfg)
        m = model if config is None else peft.apply(model, config)
        params = [p for p in m.parameters() if p.requires_grad]
        grads = []
        for loss_fn in (lambda: m(batch["ids"], batch["targets"])[1], lambda: tasks.lm_loss(m, batch)):
            loss = loss_fn()
            loss.backward()
            grads.append((float(loss.item()), [backend.to_numpy(p.grad).copy() for p in params]))
            for p in params:
                p.grad = None
        (l0, g0), (l1, g1) = grads
        assert abs(l0 - l1) < 1e-5
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


@pytest.mark.parametrize("make_config", [
    lambda: peft.LoraConfig(r=2),
    lambda: peft.FullConfig(top_k_layers=1, layer_lr_decay=0.5),
], ids=["lora", "full-topk-lr-decay"])
def test_finetune_end_to_end_on_the_smallest_shipped_decoder(tmp_path, make_config):
    import json
    import os
    from minipeft.pretrain import DATA
    if not os.path.isdir(os.path.join(DATA, "checkpoints", "gpt2-s")):
        pytest.skip("data/checkpoints/gpt2-s is not shipped")
    res = tasks.finetune("e2e", make_config(), "gpt2-s", steps=4, batch_size=4, train_size=20, eval_size=2,
                         eval_every=2, out_dir=str(tmp_path), progress=False, verbose=False, show=1)
    assert set(res.before) >= {"bleu", "rouge_l", "loss"} and set(res.after) >= {"bleu", "rouge_l", "loss"}
    assert res.after["loss"] < res.before["loss"], (res.before["loss"], res.after["loss"])
    assert 0 < res.trainable < res.total
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [2, 4]
    assert len(res.examples) == 1 and res.examples[0][0].startswith("name :")
