"""Prompt construction, demonstrations and label-word scoring (minipeft/prompting.py)."""
from __future__ import annotations

import os

import numpy
import pytest

from minipeft import backend, ops
from minipeft.autograd import no_grad
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


# ----------------------------------------------------------------------------- prompt-based fine-tuning (LM-BFF)

def test_slot_logits_are_the_lm_logits_where_the_mask_stands(tok):
    from minipeft.prompting import label_word_logits, single_token_ids, slot_batch
    q = [Example("The soup was cold.", 0), Example("Lovely.", 1)]
    ids = single_token_ids(tok, WORDS)
    for arch in ("gpt2", "bert"):
        m = _model(tok, arch)
        prompts = [build_prompt(tok, SST, e, arch=arch) for e in q]
        b = slot_batch(tok, prompts, [e.label for e in q], arch)
        got = backend.to_numpy(label_word_logits(m, b, ids).data)
        for i, (before, after) in enumerate(prompts):
            row = ([tok.cls_id] + before + [tok.mask_id] + after + [tok.sep_id]) if arch == "bert" else \
                [tok.bos_id] + before
            slot = 1 + len(before) if arch == "bert" else len(before)
            assert b["ids"][i, slot] == (tok.mask_id if arch == "bert" else before[-1])
            full = backend.to_numpy(m(numpy.asarray([row]))[0].data)[0]
            assert numpy.abs(got[i] - full[slot, ids]).max() < 1e-10
    with pytest.raises(ValueError, match="single tokens"):
        single_token_ids(tok, Verbalizer(("terrible", "so so")))


def test_prompt_based_finetuning_trains_through_the_lm_head(tok):
    from minipeft.prompting import prompt_batches, prompt_loss_fn, single_token_ids
    from minipeft.train import fit
    m = _model(tok, "bert")
    train = [Example(f"The {w} was {a}.", y) for w in ("soup", "fish", "cake", "wine")
             for a, y in (("cold", 0), ("lovely", 1))]
    batches = list(prompt_batches(tok, SST, WORDS, train, 8, "bert", 64, endless=False))
    loss_fn = prompt_loss_fn(single_token_ids(tok, WORDS))
    before = float(loss_fn(m.eval(), batches[0]).item())
    n_params = m.num_parameters()
    fit(m, loss_fn, batches, steps=40, lr=1e-2, progress=False, processes=1)
    assert float(loss_fn(m.eval(), batches[0]).item()) < before - 0.3
    assert m.num_parameters() == n_params, "no new parameters: the LM head is the classifier"
    demo_batch = next(prompt_batches(tok, SST, WORDS, train, 2, "bert", 64, demos_from=train))
    text = tok.decode(demo_batch["ids"][0])
    assert "it was great." in text and "it was terrible." in text, "one demonstration per class"


class _Keyword:
    """A stand-in model whose slot logits are known: a row containing the token of ' good' puts 5
    on ' great' at every position, a row with ' bad' puts 5 on ' terrible'; all else is 0."""

    def __init__(self, tok):
        from types import SimpleNamespace
        self.tok, self.config = tok, SimpleNamespace(arch="bert", n_ctx=64)
        self.good, self.bad = tok.encode(" good")[0], tok.encode(" bad")[0]
        self.fine, self.awful = tok.encode(" great")[0], tok.encode(" terrible")[0]

    def encode(self, ids, mask):
        from minipeft.autograd import Tensor
        flags = numpy.stack([(ids == self.good).any(1), (ids == self.bad).any(1)], 1).astype(float)
        return Tensor(numpy.repeat(flags[:, None, :], ids.shape[1], axis=1))         # (B, T, 2)

    def lm_logits(self, h):
        from minipeft.autograd import Tensor
        out = numpy.zeros((h.shape[0], self.tok.vocab_size))
        out[:, self.fine], out[:, self.awful] = 5 * h.data[:, 0], 5 * h.data[:, 1]
        return Tensor(out)


def test_automatic_label_words_find_the_known_answer(tok):
    from minipeft.prompting import search_label_words
    ex = [Example(f"It was {w} {i}.", y) for i in range(4) for w, y in (("bad", 0), ("good", 1))]
    words, acc = search_label_words(_Keyword(tok), tok, SST, ex, 2, k=3)
    assert words == ("terrible", "great") and acc == 1.0


class _Chain:
    """A stand-in decoder whose next-token logits are known: after any token of the input comes
    ' It' (logit 8), after ' It' comes ' was', and after ' was' ' great' if the row holds ' good',
    ' terrible' if it holds ' bad' (logit 5). Nothing else scores."""

    def __init__(self, tok):
        from types import SimpleNamespace
        self.tok, self.config = tok, SimpleNamespace(arch="gpt2", n_ctx=64)
        self.it, self.was = tok.encode(" It")[0], tok.encode(" was")[0]
        self.good, self.bad = tok.encode(" good")[0], tok.encode(" bad")[0]
        self.fine, self.awful = tok.encode(" great")[0], tok.encode(" terrible")[0]

    def encode(self, ids, mask):
        from minipeft.autograd import Tensor
        ids = numpy.asarray(ids)
        real = numpy.asarray(mask) == 1
        flags = [(ids == self.good).any(1), (ids == self.bad).any(1)]
        h = numpy.stack([ids == self.it, ids == self.was, real & (ids != self.it) & (ids != self.was)]
                        + [numpy.repeat(f[:, None], ids.shape[1], 1) for f in flags], axis=2)
        return Tensor(h.astype(float))                                                # (B, T, 5)

    def lm_logits(self, h):
        from minipeft.autograd import Tensor
        h = h.data
        out = numpy.zeros(h.shape[:-1] + (self.tok.vocab_size,))
        out[..., self.it] = 8 * h[..., 2]
        out[..., self.was] = 8 * h[..., 0]
        out[..., self.fine], out[..., self.awful] = 5 * h[..., 1] * h[..., 3], 5 * h[..., 1] * h[..., 4]
        return Tensor(out)


def test_automatic_templates_find_the_known_answer_and_rank_by_accuracy(tok):
    from minipeft.prompting import search_templates
    ex = [Example(f"The {w} soup {i}.", y) for i in range(4) for w, y in (("bad", 0), ("good", 1))]
    found = search_templates(_Chain(tok), tok, ex, Verbalizer(("terrible", "great")), before=2, beam=3)
    (best, acc, logp), rest = found[0], found[1:]
    assert best == Template("<S1> It was <MASK>") and acc == 1.0
    assert all(a < 1.0 for _, a, _ in rest) and len(found) == 3                   # the others: no label
    V = tok.vocab_size                     # (3): 8 examples x 2 slots, each log softmax of one logit 8
    assert abs(logp - 16 * (8 - numpy.log(numpy.exp(8) + V - 1))) < 1e-9


def test_automatic_template_scores_are_the_mlm_log_probabilities_of_each_example_alone(tok):
    """Encoder: the summed log p_MLM of a one-word template equals the hand computation, example by
    example without padding; the template text gives back the ids that were scored."""
    from minipeft.prompting import search_templates
    model = _model(tok, "bert")
    ex = [Example("The soup was cold.", 0), Example("A lovely evening with friends, all of it.", 1)]
    verb = Verbalizer(("terrible", "great"))
    cands = [tok.encode(w)[0] for w in (" It", " was", " so", " Overall")]
    found = search_templates(model, tok, ex, verb, before=1, after=1, beam=16, candidates=cands)
    assert len(found) == 16 and len({t for t, _, _ in found}) == 16
    tail = tok.encode(" .")
    for t, acc, logp in found[:4]:
        bids, aids = build_prompt(tok, t, ex[0], arch="bert")
        a, b = bids[-1], aids[0]                                        # the two template words
        assert a in cands and b in cands and aids[1:] == tail and bids[:-1] == tok.encode(ex[0].s1)
        want = 0.0
        for e in ex:
            x, w = tok.encode(e.s1), verb.token_ids(tok)[e.label]
            for j, fill in ((0, []), (1, [a])):                          # slot 0, then slot 1 after slot 0
                slots = fill + [tok.mask_id] * (2 - len(fill))
                row = [tok.cls_id] + x + slots[:1] + w + slots[1:] + tail + [tok.sep_id]
                pos = 1 + len(x) + j + (len(w) if j >= 1 else 0)
                with no_grad():
                    lp = ops.log_softmax(model.lm_logits(model.encode([row])[:, pos]), axis=-1)
                want += float(backend.to_numpy(lp.data)[0, (a, b)[j]])
        assert abs(logp - want) < 1e-4 * abs(want), (t, logp, want)
        assert acc == accuracy(model, tok, t, verb, ex)


def test_automatic_templates_refuse_what_they_cannot_do(tok):
    from minipeft.prompting import search_templates
    verb, ex = Verbalizer(("terrible", "great")), [Example("Fine.", 1)]
    with pytest.raises(ValueError, match="words after the label word never matter"):
        search_templates(_Chain(tok), tok, ex, verb, before=1, after=1)
    with pytest.raises(ValueError, match="at least one in all"):
        search_templates(_Chain(tok), tok, ex, verb, before=0)
    with pytest.raises(ValueError, match="labelled examples"):
        search_templates(_Chain(tok), tok, [Example("Fine.")], verb)
