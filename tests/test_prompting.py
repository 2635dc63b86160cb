"""Prompt construction, demonstrations and label-word scoring (minipeft/prompting.py)."""
from __future__ import annotations

import os

import numpy
import pytest

from minipeft import backend
from minipeft.data.tokenizer import Tokenizer
from minipeft.nn import Transformer, TransformerConfig
from minipeft.pretrain import DATA
from minipeft.prompting import (Example, Template, Verbalizer, accuracy, build_prompt, choose_demonstrations,
                                score_labels)

pytestmark = pytest.mark.task_training
SST = Template("<S1> All in all, it was <MASK>.")
WORDS = Verbalizer(("terrible", "great"))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))


def _model(tok, arch):
    backend.set_default_dtype(numpy.float64)
    backend.manual_seed(0)
    cfg = TransformerConfig(arch=arch, d_model=16, n_layer=1, n_head=2, n_ctx=64, vocab_size=tok.vocab_size,
                            pad_id=tok.pad_id)
    return Transformer(cfg).eval()


def test_templates_fill_and_refuse_what_they_cannot_be():
    assert SST.fill("The soup was cold.") == "The soup was cold. All in all, it was <MASK>."
    assert SST.fill("The soup was cold.", word="terrible") == "The soup was cold. All in all, it was terrible."
    nli = Template("<S1> ? <MASK> , <S2>")
    assert nli.fill("A is B.", "B is A.", "Yes") == "A is B. ? Yes , B is A."
    for bad in ("It was <MASK>.", "<S1> no mask", "<S1> <MASK> <MASK>"):
        with pytest.raises(ValueError, match="<S1>|MASK"):
            Template(bad)
    with pytest.raises(ValueError, match="second sentence"):
        SST.fill("a", "b")
    with pytest.raises(ValueError, match="distinct"):
        Verbalizer(("great", "great"))


def test_prompt_with_demonstrations_is_the_exact_text_and_ids(tok):
    demos = [Example("The fish was fresh.", 1), Example("The bread was stale.", 0)]
    q = Example("The soup was cold.")
    before, after = build_prompt(tok, SST, q, demos, WORDS, description="Reviews.", arch="gpt2")
    text = ("Reviews. The fish was fresh. All in all, it was great. The bread was stale. All in all, it was "
            "terrible. The soup was cold. All in all, it was")
    assert before == tok.encode(text) and after == []
    b2, a2 = build_prompt(tok, SST, q, [], WORDS, arch="bert")
    assert b2 == tok.encode("The soup was cold. All in all, it was") and a2 == tok.encode(".")
    # generation demonstrations carry their target text
    t = Template("<S1> => <MASK>")
    ids, _ = build_prompt(tok, t, Example("dog"), [Example("cheese", "fromage")], None,
                          description="Translate English to French:")
    assert tok.decode(ids) == "Translate English to French: cheese => fromage dog =>"


def test_truncation_drops_demonstrations_then_the_start_of_the_query_and_keeps_the_slot(tok):
    demos = [Example(f"The {w} was fine and the staff were kind.", i % 2) for i, w in enumerate(
        ["fish", "bread", "wine", "soup", "cake"])]
    q = Example("The long query sentence about a meal that went on and on at the riverside place.")
    full, _ = build_prompt(tok, SST, q, demos, WORDS)
    limit = len(full) - 5
    cut, _ = build_prompt(tok, SST, q, demos, WORDS, max_len=limit)
    assert len(cut) + 2 <= limit and tok.decode(cut).endswith("All in all, it was")
    assert tok.decode(cut).count("All in all") == 5, "one demonstration (the last) went"
    tiny, _ = build_prompt(tok, SST, q, demos, WORDS, max_len=20)
    text = tok.decode(tiny)
    assert len(tiny) + 2 <= 20 and text.endswith("All in all, it was") and "staff" not in text
    assert "riverside place." in text, "the query keeps its end"


def test_label_word_scores_equal_a_hand_computation(tok):
    for arch in ("gpt2", "bert"):
        m = _model(tok, arch)
        prompt = build_prompt(tok, SST, Example("The soup was cold."), [], WORDS, arch=arch)
        got = score_labels(m, tok, [prompt], Verbalizer(("terrible", "so so")))[0]
        before, after = prompt
        for word, s in zip(("terrible", "so so"), got):
            w = tok.encode(" " + word)
            if arch == "gpt2":
                row = [tok.bos_id] + before + w
                logits = backend.to_numpy(m(numpy.asarray([row]))[0].data)[0]
                positions = [len(before) + j for j in range(len(w))]
            else:
                row = [tok.cls_id] + before + [tok.mask_id] * len(w) + after + [tok.sep_id]
                logits = backend.to_numpy(m(numpy.asarray([row]))[0].data)[0]
                positions = [1 + len(before) + j for j in range(len(w))]
            lp = logits - numpy.log(numpy.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            want = numpy.mean([lp[p, t] for p, t in zip(positions, w)])
            assert abs(s - want) < 1e-10, (arch, word, s, want)
        assert len(tok.encode(" so so")) > 1, "a multi-token label word is averaged"


def test_similar_demonstrations_are_the_nearest_neighbours_and_per_class_keeps_one_each():
    pool = [Example(f"s{i}", i % 2) for i in range(10)]
    vec = {f"s{i}": [1.0, float(i)] for i in range(10)}
    vec["q"] = [1.0, 6.2]
    embed = lambda texts: numpy.asarray([vec[t] / numpy.linalg.norm(vec[t]) for t in texts])  # noqa: E731
    q = Example("q", 0)
    near = choose_demonstrations(q, pool, 3, how="similar", embed=embed)
    sims = {e.s1: numpy.dot(embed([e.s1])[0], embed(["q"])[0]) for e in pool}
    assert [e.s1 for e in near] == sorted(sims, key=lambda s: -sims[s])[:3]
    one_each = choose_demonstrations(q, pool, 0, how="similar", embed=embed, per_class=True, n_labels=2)
    assert [e.label for e in one_each] == [0, 1]
    assert all(sims[e.s1] >= numpy.median([sims[x.s1] for x in pool if x.label == e.label]) for e in one_each)
    a = choose_demonstrations(q, pool, 4, seed=3)
    assert a == choose_demonstrations(q, pool, 4, seed=3) and a != choose_demonstrations(q, pool, 4, seed=4)
    assert all(e.s1 != "q" for e in choose_demonstrations(q, pool + [q], 10)), "never the query itself"
    with pytest.raises(ValueError, match="embed"):
        choose_demonstrations(q, pool, 2, how="similar")


def test_accuracy_is_the_share_of_argmax_scores_that_match(tok):
    m = _model(tok, "gpt2")
    queries = [Example(f"Review {i}.", i % 2) for i in range(6)]
    preds = [numpy.argmax(s) for s in score_labels(m, tok, [build_prompt(tok, SST, q, [], WORDS) for q in queries],
                                                     WORDS)]
    assert accuracy(m, tok, SST, WORDS, queries) == numpy.mean([p == q.label for p, q in zip(preds, queries)])
