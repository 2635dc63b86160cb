"""LM-BFF's few-shot protocol (minipeft/fewshot.py): K per class, data seeds, mean and std."""
from __future__ import annotations

import statistics

import pytest

from minipeft import fewshot
from minipeft.autograd import no_grad
from minipeft.hf import load_pretrained
from minipeft.prompting import Template, Verbalizer, accuracy

pytestmark = pytest.mark.task_training
T, V = Template("<S1> All in all, it was <MASK>"), Verbalizer(("terrible", "great"))


def test_k_shot_samples_k_per_class_disjoint_and_by_seed():
    pool = fewshot.examples("sst2", "train")
    train, dev = fewshot.sample_k_shot(pool, 16, 2, seed=1)
    for part in (train, dev):
        assert sorted(e.label for e in part) == [0] * 16 + [1] * 16
    assert not {e.s1 for e in train} & {e.s1 for e in dev}
    assert (train, dev) == fewshot.sample_k_shot(pool, 16, 2, seed=1)
    assert {e.s1 for e in train} != {e.s1 for e in fewshot.sample_k_shot(pool, 16, 2, seed=2)[0]}
    mnli = fewshot.examples("mnli", "train")
    tr, _ = fewshot.sample_k_shot(mnli, 4, 3, seed=1)
    assert sorted(e.label for e in tr) == [0] * 4 + [1] * 4 + [2] * 4 and all(e.s2 for e in tr)
    with pytest.raises(ValueError, match="fewer than the 2k"):
        fewshot.sample_k_shot(pool[:20], 16, 2, seed=1)
    with pytest.raises(ValueError, match="whole number >= 1"):
        fewshot.sample_k_shot(pool, 0, 2, seed=1)


def test_zero_shot_runs_are_the_prompt_accuracy_of_the_frozen_model_and_their_mean():
    r = fewshot.run("sst2", "gpt2-s", T, V, k=4, seeds=2, steps=0, test_size=40, demos=True)
    model, tok = load_pretrained("gpt2-s")
    pool, test = fewshot.examples("sst2", "train"), fewshot.examples("sst2", "dev")[:40]
    for row in r["per_seed"]:
        train, _ = fewshot.sample_k_shot(pool, 4, 2, row["seed"])
        with no_grad():
            want = accuracy(model, tok, T, V, test, pool=train, per_class=True, seed=row["seed"])
        assert row["accuracy"] == want and row["best_step"] == 0
    accs = [row["accuracy"] for row in r["per_seed"]]
    assert r["mean"] == statistics.fmean(accs) and r["std"] == statistics.stdev(accs)
    assert [row["seed"] for row in r["per_seed"]] == [1, 2] and r["test_size"] == 40


def test_prompt_based_finetuning_keeps_the_best_d_dev_evaluation(monkeypatch):
    """The model that is tested holds the parameters of the best evaluation on D_dev, not the last
    step's; training moved them."""
    seen = {}
    restore = fewshot._restore

    def spy(pm, state):
        seen["last"] = fewshot._trained_copy(pm)
        restore(pm, state)
        seen["pm"] = pm
    monkeypatch.setattr(fewshot, "_restore", spy)
    r = fewshot.run("sst2", "gpt2-s", T, V, k=4, seeds=[3], steps=12, eval_every=4, lr=3e-2,
                    method="lora", test_size=30)
    row, pm = r["per_seed"][0], seen["pm"]
    _, tok = load_pretrained("gpt2-s")
    _, dev = fewshot.sample_k_shot(fewshot.examples("sst2", "train"), 4, 2, 3)
    with no_grad():
        assert accuracy(pm, tok, T, V, dev) == row["dev_accuracy"]
        assert accuracy(pm, tok, T, V, fewshot.examples("sst2", "dev")[:30]) == row["accuracy"]
    assert row["best_step"] in (0, 4, 8, 12) and r["method"] == "lora" and r["steps"] == 12
    moved = any(abs(seen["last"][n] - p.data).max() > 0 for n, p in pm.named_parameters() if n in seen["last"])
    assert moved == (row["best_step"] != 12)      # restored unless the last step was the best


def test_fewshot_refuses_bad_options_before_any_work():
    with pytest.raises(ValueError, match="unknown few-shot task"):
        fewshot.run("e2e", "gpt2-s")
    with pytest.raises(ValueError, match="3 labels, the verbalizer 2 words"):
        fewshot.run("mnli", "gpt2-s", verbalizer=V)
    with pytest.raises(ValueError, match="steps=-1"):
        fewshot.run("sst2", "gpt2-s", steps=-1)
    from minipeft.cli import main
    assert main(["fewshot", "--auto-template", "2", "--quiet"]) == 2


def test_standard_finetuning_uses_the_same_splits_and_keeps_the_best_d_dev_evaluation(monkeypatch):
    """LM-BFF's baseline row: a new head trained on the same D_train, selected on the same D_dev;
    the tested model is the one restored from the best D_dev evaluation."""
    from minipeft.tasks import evaluate_classification
    from types import SimpleNamespace
    seen = {}
    restore = fewshot._restore

    def spy(pm, state):
        restore(pm, state)
        seen["pm"] = pm
    monkeypatch.setattr(fewshot, "_restore", spy)
    r = fewshot.run("sst2", "bert-m", k=4, seeds=[2], steps=8, eval_every=4, lr=1e-2, method="full",
                    test_size=30, standard=True)
    row, pm = r["per_seed"][0], seen["pm"]
    assert r["standard"] and row["template"] is None and row["best_step"] in (0, 4, 8)
    _, tok = load_pretrained("bert-m")
    _, dev = fewshot.sample_k_shot(fewshot.examples("sst2", "train"), 4, 2, 2)
    rows = lambda es: [SimpleNamespace(sentence=e.s1, label=e.label) for e in es]   # noqa: E731
    pm.eval()
    with no_grad():
        assert evaluate_classification(pm, tok, rows(dev), max_len=256)["accuracy"] == row["dev_accuracy"]
        assert evaluate_classification(pm, tok, rows(fewshot.examples("sst2", "dev")[:30]),
                                       max_len=256)["accuracy"] == row["accuracy"]
    with pytest.raises(ValueError, match="one-sentence task"):
        fewshot.run("mnli", "bert-m", steps=4, standard=True)
    with pytest.raises(ValueError, match="steps > 0"):
        fewshot.run("sst2", "bert-m", steps=0, standard=True)
