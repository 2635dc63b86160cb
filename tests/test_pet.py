"""PET and iPET (minipeft/pet.py): the ensemble, the soft labels, the distillation loss, iPET's
training sets, and a tiny end-to-end run."""
from __future__ import annotations

import os

import numpy
import pytest

from minipeft import backend
from minipeft.autograd import Tensor
from minipeft.data.tokenizer import Tokenizer
from minipeft.gradcheck import gradcheck
from minipeft.nn import Transformer, TransformerConfig
from minipeft.pet import (PVP, distillation_batches, distillation_loss, distillation_loss_fn, ensemble_logits,
                          ipet, ipet_training_set, pet, soft_labels)
from minipeft.pretrain import DATA
from minipeft.prompting import Example, Template, Verbalizer

pytestmark = pytest.mark.task_training


def test_ensemble_and_soft_labels_by_hand():
    s1, s2 = numpy.array([[2.0, 0.0]]), numpy.array([[0.0, 4.0]])
    ens = ensemble_logits([s1, s2], [0.75, 0.25])
    assert numpy.allclose(ens, [[1.5, 1.0]])                       # (0.75*2 + 0.25*0, 0.25*4)
    q = soft_labels(ens, 2.0)
    e = numpy.exp([0.75, 0.5])
    assert numpy.allclose(q, [e / e.sum()])
    with pytest.raises(ValueError, match="weights"):
        ensemble_logits([s1, s2], [0.0, 0.0])


def test_distillation_loss_by_hand_and_gradient():
    z = numpy.array([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]])
    t = numpy.array([[0.5, 0.5, 3.0], [1.0, 0.0, -1.0]])
    T = 2.0
    q, p = soft_labels(t, T), soft_labels(z, T)
    want = T ** 2 * numpy.mean((q * (numpy.log(q) - numpy.log(p))).sum(axis=1))
    backend.set_default_dtype(numpy.float64)
    got = float(distillation_loss(Tensor(backend.to_device(z)), t, T).item())
    assert abs(got - want) < 1e-12, (got, want)
    assert abs(float(distillation_loss(Tensor(backend.to_device(t)), t, T).item())) < 1e-12, "0 at the target"
    zt = Tensor(backend.to_device(z), requires_grad=True)
    assert gradcheck(lambda a: distillation_loss(a, t, T), zt, name="PET distillation") < 1e-6


def test_ipet_sets_grow_by_d_label_balanced_from_other_models():
    labelled = [Example(f"l{i}", i % 2) for i in range(4)]
    unlabelled = [Example(f"u{i}") for i in range(60)]
    gen = numpy.random.default_rng(0)
    scores = [gen.normal(size=(60, 2)) for _ in range(5)]
    scores[0] = numpy.tile([[100.0, -100.0]], (60, 1))            # model 0: everything label 0
    for g in (1, 2):
        t = ipet_training_set(labelled, unlabelled, scores, [1.0] * 5, me=0, generation=g, d=2)
        assert len(t) == 4 * 2 ** g and t[:4] == labelled
        added = t[4:]
        assert [e.label for e in added].count(0) == [e.label for e in added].count(1)
        assert all(e.s1.startswith("u") for e in added)
    # model 0's own (constant) scores never label its own set: its set has label-1 examples
    t = ipet_training_set(labelled, unlabelled, scores, [1.0] * 5, me=0, generation=1, d=3)
    assert any(e.label == 1 for e in t[4:])
    # lam (M - 1) = 1: one other model labels model 1's set, the same one every time (seeded)
    one = ipet_training_set(labelled, unlabelled, scores, [1.0] * 5, me=1, generation=1, d=2, lam=0.25)
    assert one == ipet_training_set(labelled, unlabelled, scores, [1.0] * 5, me=1, generation=1, d=2, lam=0.25)
    index = {f"u{i}": i for i in range(60)}
    labellers = [j for j in (0, 2, 3, 4)
                 if all(scores[j][index[e.s1]].argmax() == e.label for e in one[4:])]
    assert labellers and 1 not in labellers
    if len(one) == 6:                    # the labeller was model 0, which says label 0 only:
        assert 0 in labellers and all(e.label == 0 for e in one[4:])   # no label-1 example to add
    else:                                # a model with both labels: the full, balanced size
        assert len(one) == 8 and [e.label for e in one[4:]].count(1) == 2


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))


def _pretrained(tok):
    """A tiny masked-LM encoder; every pattern model starts from the same "pretrained" weights."""
    backend.manual_seed(0)
    cfg = TransformerConfig(arch="bert", d_model=16, n_layer=1, n_head=2, n_ctx=64, vocab_size=tok.vocab_size,
                            pad_id=tok.pad_id)
    return Transformer(cfg)


def _tiny_task():
    """Two pattern-verbalizer pairs, 4 labelled and 8 unlabelled sentences."""
    pvps = [PVP(Template("<S1> All in all, it was <MASK>."), Verbalizer(("terrible", "great"))),
            PVP(Template("<S1> It was <MASK>."), Verbalizer(("bad", "good")))]
    labelled = [Example(f"The {w} was {a}.", y) for w in ("soup", "fish") for a, y in (("cold", 0), ("lovely", 1))]
    unlabelled = [Example(f"The {w} was {a}.") for w in ("cake", "wine", "bread", "tea") for a in ("cold", "lovely")]
    return pvps, labelled, unlabelled


def test_tiny_pet_and_ipet_run_end_to_end(tok):
    backend.set_default_dtype(numpy.float64)

    def make_model(seed):
        return _pretrained(tok)

    pvps, labelled, unlabelled = _tiny_task()
    res = pet(make_model, tok, pvps, labelled, unlabelled, steps=20, lr=1e-2, batch_size=4)
    assert len(res["models"]) == 2 and res["ensemble"].shape == (8, 2)
    assert all(0.0 <= w <= 1.0 for w in res["weights"])
    it = ipet(make_model, tok, pvps, labelled, unlabelled, generations=1, steps=5, lr=1e-2, d=2, batch_size=4)
    assert it["generation"] == 1 and it["ensemble"].shape == (8, 2)
    # step 3: a head distilled on the soft labels moves toward them
    from minipeft.train import fit
    backend.manual_seed(1)
    cfg = TransformerConfig(arch="bert", d_model=16, n_layer=1, n_head=2, n_ctx=64, vocab_size=tok.vocab_size,
                            pad_id=tok.pad_id, n_labels=2)
    student = Transformer(cfg)
    batches = distillation_batches(tok, unlabelled, res["ensemble"], 8, 64)
    loss = distillation_loss_fn()
    b = next(distillation_batches(tok, unlabelled, res["ensemble"], 8, 64))
    before = float(loss(student.eval(), b).item())
    fit(student, loss, batches, steps=30, lr=1e-2, progress=False, processes=1)
    assert float(loss(student.eval(), b).item()) < before


def test_ipet_continues_from_a_given_pet_result(tok):
    """ipet(start=pet(...)) is ipet() without start: the same generation-1 scores, and generation 0
    is not trained again."""
    backend.set_default_dtype(numpy.float64)
    calls = []

    def make_model(seed):
        calls.append(seed)
        return _pretrained(tok)

    pvps, labelled, unlabelled = _tiny_task()
    kw = dict(generations=1, steps=5, lr=1e-2, d=2, batch_size=4)
    whole = ipet(make_model, tok, pvps, labelled, unlabelled, **kw)
    n_whole = len(calls)
    start = pet(make_model, tok, pvps, labelled, unlabelled, steps=5, lr=1e-2, batch_size=4)
    calls.clear()
    cont = ipet(make_model, tok, pvps, labelled, unlabelled, start=start, **kw)
    assert n_whole == 4 and len(calls) == 2             # generation 0 (2 models) is not trained again
    for a, b in zip(whole["scores"], cont["scores"]):
        numpy.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one model per pattern"):
        ipet(make_model, tok, pvps[:1], labelled, unlabelled, start=start, **kw)
