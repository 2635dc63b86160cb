"""minipeft.capability: what a frozen checkpoint already knows (reference loss, linear probe,
zero-shot SST-2, in-context translation), and `minipeft capability`.

The recorded capability.json of each shipped checkpoint must be reproduced by `measure`; the
pieces are checked on constructed cases where the right answer is known."""
from __future__ import annotations

import json
import os

import numpy
import pytest

from minipeft import backend, capability
from minipeft.autograd import no_grad
from minipeft.capability import (SHIPPED, fit_logistic, measure, probe_accuracy, read_capability, text_loss,
                                 translation_prompts, zero_shot_sst2)
from minipeft.data.formats import SentenceExample
from minipeft.data.tokenizer import Tokenizer
from minipeft.nn import Transformer, TransformerConfig
from minipeft.pretrain import DATA

pytestmark = pytest.mark.task_training


def shipped():
    """{name: arch} of the checkpoints in data/checkpoints (whatever is there now)."""
    out = {}
    for d in sorted(os.listdir(SHIPPED)) if os.path.isdir(SHIPPED) else []:
        cfg = os.path.join(SHIPPED, d, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                out[d] = json.load(f)["arch"]
    return out


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))


def tiny(tok, arch="gpt2"):
    """A small random model with the shipped vocabulary (seeded by conftest)."""
    return Transformer(TransformerConfig(arch=arch, vocab_size=tok.vocab_size, d_model=16, n_layer=1, n_head=2,
                                         n_ctx=64, pad_id=tok.pad_id)).eval()


# ----------------------------------------------------------------------------- (a) recorded values

# a measured number and the count that "within one example" refers to
COUNT_OF = {"train_accuracy": "train_size", "dev_accuracy": "dev_size", "accuracy": "n", "positive_fraction": "n"}


def assert_same_capability(recorded, fresh, where="capability"):
    """Losses (and ratios) to 1e-4 relative, accuracies within one example, counts and flags exactly;
    timings and the decoded examples are not compared."""
    assert set(fresh) == set(recorded), f"{where}: keys {sorted(fresh)} != recorded {sorted(recorded)}"
    for k, want in recorded.items():
        got, at = fresh[k], f"{where}.{k}"
        if k in ("seconds", "examples", "model"):
            continue
        if isinstance(want, dict):
            assert_same_capability(want, got, at)
        elif isinstance(want, bool) or want is None or isinstance(want, (str, int, list)):
            assert got == want, f"{at}: {got!r}, recorded {want!r}"
        elif k in COUNT_OF:
            n = recorded[COUNT_OF[k]]
            assert abs(got - want) <= 1.0 / n + 1e-12, f"{at}: {got:.4f}, recorded {want:.4f} (more than one of {n})"
        else:
            assert abs(got - want) <= 1e-4 * abs(want), f"{at}: {got:.6f}, recorded {want:.6f}"


@pytest.mark.parametrize("name", sorted(shipped()) or [pytest.param("none", marks=pytest.mark.skip(
    reason="no checkpoints in data/checkpoints"))])
def test_measure_reproduces_the_recorded_capability(name):
    recorded = read_capability(name)
    if recorded is None:
        pytest.skip(f"data/checkpoints/{name} has no capability.json yet "
                    f"(measure and record it with `minipeft capability {name} --write`)")
    fresh = measure(name, settings=recorded["settings"], data_dir=recorded["data_dir"])
    assert fresh["weights_sha256"] == recorded["weights_sha256"], \
        (f"data/checkpoints/{name}/capability.json was measured on other weights than model.safetensors now; "
         f"re-measure with `minipeft capability {name} --write --overwrite`")
    assert_same_capability(recorded, fresh)


def test_the_comparison_catches_a_changed_number():
    rec = {"loss": 2.0, "tokens": 10, "p": {"dev_accuracy": 0.5, "dev_size": 100}, "seconds": {"total": 1.0}}
    assert_same_capability(rec, {"loss": 2.0001, "tokens": 10, "p": {"dev_accuracy": 0.51, "dev_size": 100},
                                 "seconds": {"total": 9.0}})
    for bad in ({"loss": 2.001}, {"tokens": 11}, {"p": {"dev_accuracy": 0.52, "dev_size": 100}}):
        with pytest.raises(AssertionError):
            assert_same_capability(rec, dict(rec, **bad))


# ----------------------------------------------------------------------------- (b) the probe

def test_probe_separates_a_linear_problem_and_not_random_labels():
    gen = numpy.random.default_rng(0)
    x = gen.normal(size=(3000, 10)) * gen.uniform(0.1, 10.0, size=10) + 5.0   # scales and offsets to standardise
    w = gen.normal(size=10)
    y = ((x - 5.0) @ w > 0).astype(numpy.int64)
    r = probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:])
    assert r["dev_accuracy"] > 0.95 and r["train_accuracy"] > 0.95, r
    noise = gen.integers(0, 2, size=3000)
    r = probe_accuracy(x[:1000], noise[:1000], x[1000:], noise[1000:])
    assert 0.45 < r["dev_accuracy"] < 0.55, r


def test_logistic_fit_reaches_the_regularised_optimum():
    gen = numpy.random.default_rng(1)
    x = gen.normal(size=(500, 5))
    y = (x[:, 0] + 0.5 * gen.normal(size=500) > 0).astype(numpy.float64)
    l2 = 0.1
    wb = fit_logistic(x, y, l2)
    X = numpy.concatenate([x, numpy.ones((500, 1))], axis=1)
    p = 1.0 / (1.0 + numpy.exp(-X @ wb))
    reg = numpy.r_[numpy.full(5, l2), 1e-8]
    grad = X.T @ (p - y) / 500 + reg * wb
    assert numpy.abs(grad).max() < 1e-8, grad
    assert numpy.array_equal(wb, fit_logistic(x, y, l2))                      # deterministic


# ----------------------------------------------------------------------------- (c) reference loss

def hand_nll(model, ids):
    """Sum and count of -log p(ids[t+1] | ids[:t+1]) from the full logits, in float64 on the host."""
    with no_grad():
        logits = backend.to_numpy(model(numpy.asarray([ids[:-1]]))[0].data)[0].astype(numpy.float64)  # (T, V)
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - numpy.log(numpy.exp(logits - m).sum(axis=1, keepdims=True))
    return -logp[numpy.arange(len(ids) - 1), ids[1:]].sum(), len(ids) - 1


def test_decoder_reference_loss_is_the_hand_computed_nll(tok):
    model = tiny(tok)
    short = "The Eagle serves French food."
    long = "There is a cheap pub called The Mill near the river, it is family-friendly."
    s1, n1 = hand_nll(model, [tok.bos_id] + tok.encode(short) + [tok.eos_id])
    s2, n2 = hand_nll(model, [tok.bos_id] + tok.encode(long) + [tok.eos_id])
    one = text_loss(model, tok, [short])
    assert one["tokens"] == n1 and abs(one["loss"] - s1 / n1) < 1e-5 * s1 / n1, (one, s1 / n1)
    both = text_loss(model, tok, [long, short], batch_size=2)          # one padded batch: token-weighted
    assert both["tokens"] == n1 + n2 and abs(both["loss"] - (s1 + s2) / (n1 + n2)) < 1e-5 * both["loss"]


def test_encoder_reference_loss_masks_each_text_the_same_in_any_batch(tok):
    model = tiny(tok, "bert")
    texts = ["The Eagle serves French food.", "A pub.", "The Mill is a cheap coffee shop by the river in the city."] * 3
    a, b = text_loss(model, tok, texts, batch_size=1), text_loss(model, tok, texts, batch_size=4)
    assert a["tokens"] == b["tokens"] > 0 and abs(a["loss"] - b["loss"]) < 1e-5 * a["loss"]
    assert text_loss(model, tok, texts, seed=7)["tokens"] != a["tokens"] or \
        text_loss(model, tok, texts, seed=7)["loss"] != a["loss"]                       # the seed chooses the masks


# ----------------------------------------------------------------------------- (d) zero-shot scoring

EXAMPLES = [SentenceExample(s, lab) for s, lab in [
    ("The plot was superb.", 1), ("The acting was dreadful and the ending was worse.", 0),
    ("A warm, funny film.", 1), ("I loved it.", 1), ("Boring.", 0), ("The dialogue was sharp and the cast superb.", 1)]]


def point_the_head(model, tok, towards: str):
    """Make every output favour one label word: `towards` the larger logit, the other the smaller."""
    from minipeft.tasks import LABEL_WORDS, label_word_ids
    up, down = label_word_ids(tok) if towards == LABEL_WORDS[0] else label_word_ids(tok)[::-1]
    xp = backend.xp
    if model.config.arch == "gpt2":     # ln_f outputs the constant b, so logits = wte @ b
        b = xp.linspace(-1.0, 1.0, model.config.d_model).astype(model.ln_f.bias.data.dtype)
        model.ln_f.weight.data[...] = 0.0
        model.ln_f.bias.data[...] = b
        model.wte.weight.data[up], model.wte.weight.data[down] = 5.0 * b, -5.0 * b
    else:
        model.mlm_bias.data[up], model.mlm_bias.data[down] = 100.0, -100.0


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_zero_shot_picks_the_label_word_with_the_larger_logit(tok, arch):
    labels = numpy.asarray([e.label for e in EXAMPLES])
    model = tiny(tok, arch)
    point_the_head(model, tok, " great")
    r = zero_shot_sst2(model, tok, EXAMPLES, batch_size=4)
    assert r["positive_fraction"] == 1.0 and r["accuracy"] == pytest.approx(labels.mean()) and r["n"] == 6
    point_the_head(model, tok, " terrible")
    r = zero_shot_sst2(model, tok, EXAMPLES, batch_size=4)
    assert r["positive_fraction"] == 0.0 and r["accuracy"] == pytest.approx(1 - labels.mean())


def test_encoder_scores_are_read_at_the_mask(tok):
    from minipeft.tasks import LM_TEMPLATE, label_word_ids
    model = tiny(tok, "bert")
    words = label_word_ids(tok)
    ids = [tok.cls_id] + tok.encode(LM_TEMPLATE.format(EXAMPLES[0].sentence)) + [tok.mask_id] + tok.encode(".")
    with no_grad():
        h = model.encode(numpy.asarray([ids]))
        want = backend.to_numpy(model.lm_logits(h[:, ids.index(tok.mask_id)]).data)[0, words]
        got = backend.to_numpy(capability.mask_prompt_scores(model, tok, EXAMPLES[:2], words).data)  # padded row 0
    numpy.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- (e) translation prompts

def test_translation_prompts_never_show_the_answer_and_are_seeded():
    pairs = capability.translation_pairs() + [("desk", "table"), ("table", "bureau")]   # clashes on both sides
    for k in (0, 1, 4):
        prompts = translation_prompts(pairs, k, 80, seed=3)
        assert prompts == translation_prompts(pairs, k, 80, seed=3)
        assert prompts != translation_prompts(pairs, k, 80, seed=4)
        for text, answer in prompts:
            assert text.startswith(capability.TASK_LINE + " ")
            lines = text[len(capability.TASK_LINE) + 1:].split(". ")
            assert lines[-1].endswith(" =>") and len(lines) == k + 1 and "\n" not in text
            query = lines[-1][:-len(" =>")]
            assert (query, answer) in pairs
            for demo in lines[:-1]:
                en, fr = demo.split(" => ")
                assert fr != answer and en != query, (query, answer, demo)
    one, four = translation_prompts(pairs, 1, 20, seed=0), translation_prompts(pairs, 4, 20, seed=0)
    for (t1, a1), (t4, a4) in zip(one, four):                 # same queries; the 1 demo is the first of the 4
        assert a1 == a4 and t1.split(". ")[0] == t4.split(". ")[0]


# ----------------------------------------------------------------------------- (f) the command line

def test_cli_refuses_to_replace_a_shipped_capability_json(tmp_path, monkeypatch, capsys):
    from minipeft.cli import main
    root = tmp_path / "checkpoints"
    (root / "m").mkdir(parents=True)
    recorded = root / "m" / "capability.json"
    recorded.write_text('{"recorded": true}\n')
    calls = []

    def fake_measure(name, **kw):
        calls.append(name)
        return {"model": "m", "fresh": True}

    monkeypatch.setattr(capability, "SHIPPED", str(root))             # stands for data/checkpoints
    monkeypatch.setattr(capability, "measure", fake_measure)
    assert main(["capability", str(root / "m"), "--write", "--json"]) == 2
    err = capsys.readouterr().err
    assert "capability.json exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert json.loads(recorded.read_text()) == {"recorded": True} and calls == []      # refused before measuring
    assert main(["capability", str(root / "m"), "--write", "--json", "--overwrite"]) == 0
    assert json.loads(recorded.read_text()) == {"model": "m", "fresh": True}
    elsewhere = tmp_path / "mine"                                    # outside data/checkpoints: replaced
    elsewhere.mkdir()
    (elsewhere / "capability.json").write_text("{}")
    assert main(["capability", str(elsewhere), "--write", "--json"]) == 0
    assert json.loads((elsewhere / "capability.json").read_text())["fresh"] is True


def test_a_result_read_through_another_tokenizer_is_never_written(tmp_path):
    bad = {"tokenizer_matches": False, "heldout_loss_now": 9.5, "heldout_loss": 0.95}
    with pytest.raises(ValueError, match="wrong tokens"):
        capability.write_capability(bad, str(tmp_path))
    assert not (tmp_path / "capability.json").exists()
    capability.write_capability(dict(bad, tokenizer_matches=True), str(tmp_path))
    assert (tmp_path / "capability.json").exists()


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_fast_measure_of_a_shipped_checkpoint_prints_a_table(arch, capsys):
    names = [n for n, a in shipped().items() if a == arch]
    if not names:
        pytest.skip(f"no {arch} checkpoint in data/checkpoints")
    smallest = min(names, key=lambda n: os.path.getsize(os.path.join(SHIPPED, n, "model.safetensors")))
    from minipeft.cli import main
    assert main(["capability", smallest, "--fast"]) == 0
    out = capsys.readouterr().out
    for word in ("reference loss", "e2e", "webnlg", "linear probe", "keyword", "zero-shot", "in-context"):
        assert word in out, (word, out)
    assert ("skipped" in out) == (arch == "bert")


# ----------------------------------------------------------------------------- corpus verdicts (diagnostic)

REVIEWS = ["We ate at Rosa's. The soup was delicious. All in all, it was great.",
           "I saw The Long Road. The plot was dull. Overall, it was bad.",
           "Lunch at Kim's. The tea was fine. In a word: okay.",
           "The mayor of Penton is Hanna Tenbrook.",                          # no verdict: not an item
           "I saw Red Sky. The ending was awful. My verdict: great."]         # keyword says negative


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_corpus_verdicts_reads_the_held_out_reviews_and_scores_the_named_word(tmp_path, tok, arch):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "valid.txt").write_text("\n".join(REVIEWS) + "\n", encoding="utf-8")
    model = tiny(tok, arch)
    point_the_head(model, tok, " great")                # always "great": right on 2 of the 4 reviews
    r = capability.corpus_verdicts(model, tok, data_dir=str(tmp_path))
    assert r["n"] == 4 and r["predicted"] == {"great": 4}, r
    assert r["accuracy"] == pytest.approx(2 / 4) and r["majority"] == pytest.approx(2 / 4)
    assert r["polarity"] == pytest.approx(2 / 3)        # the three reviews that are not "okay"
    assert r["keyword"] == pytest.approx(2 / 3)         # "awful ... great" fools the word count
    point_the_head(model, tok, " terrible")             # no review says "terrible"; one is negative
    r = capability.corpus_verdicts(model, tok, data_dir=str(tmp_path))
    assert r["predicted"] == {"terrible": 4} and r["accuracy"] == 0.0 and r["polarity"] == pytest.approx(1 / 3)


def test_corpus_verdicts_refuses_a_corpus_without_reviews(tmp_path, tok):
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "valid.txt").write_text("No review here.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no review ending with a verdict"):
        capability.corpus_verdicts(tiny(tok), tok, data_dir=str(tmp_path))
