"""The synthetic data: determinism (the committed data/ is exactly what the generator writes),
split hygiene, and the properties each task promises (balance, composition, unseen categories,
a pretraining corpus free of evaluation items)."""
from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from minipeft.data import formats as F
from minipeft.data.gen_e2e import make_e2e
from minipeft.data.gen_pretrain import sentences
from minipeft.data.gen_sentiment import NEGATIVE_WORDS, POSITIVE_WORDS
from minipeft.data.generate import generate_all, read_manifest
from minipeft.data.world import SEEN_CATEGORIES, UNSEEN_CATEGORIES, build_world

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
NOT_COMMITTED = ("pretrain/train.txt",)     # 9 MB, generated on first use; its checksum is in the manifest


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """Everything generated from seed 0 into a temporary folder: (folder, {path: sha256})."""
    out = tmp_path_factory.mktemp("data")
    return out, generate_all(out, seed=0)


# --- determinism ---------------------------------------------------------------------------------
def test_seed_0_reproduces_the_committed_data_byte_for_byte(gen):
    out, hashes = gen
    manifest = DATA / "MANIFEST.sha256"
    assert manifest.exists(), "data/MANIFEST.sha256 is missing: run python -m " \
                              "minipeft.data.generate --out data --seed 0"
    committed = read_manifest(manifest)
    assert committed == hashes, "data/ is not what the generator writes for seed 0; " \
                                "regenerate with python -m minipeft.data.generate --out data"
    assert read_manifest(out / "MANIFEST.sha256") == hashes
    for rel, digest in committed.items():       # and the files in data/ match their manifest
        import hashlib
        if rel in NOT_COMMITTED and not (DATA / rel).exists():
            continue                            # written on first use (generate.pretrain_corpus)
        assert hashlib.sha256((DATA / rel).read_bytes()).hexdigest() == digest, rel


def test_only_the_large_corpus_is_left_out_of_git():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert [f"data/{rel}" for rel in NOT_COMMITTED] == [x for x in ignored if x.startswith("data/")]


def test_a_different_seed_gives_a_different_world_and_data():
    w0, w1 = build_world(0), build_world(1)
    assert [e.name for e in w0.by_kind("venue")] != [e.name for e in w1.by_kind("venue")]
    small = (50, 5, 5)
    assert make_e2e(w0, 0, small) != make_e2e(w1, 1, small)
    assert make_e2e(w0, 0, small) == make_e2e(build_world(0), 0, small)


def test_readme_keeps_sections_for_later_steps(gen):
    out, _ = gen
    for text in ((out / "README.md").read_text(encoding="utf-8"),
                 (DATA / "README.md").read_text(encoding="utf-8")):
        assert "python -m minipeft.data.generate --out data --seed 0" in text
        assert "## Tokenizer" in text and "## Pretrained checkpoints" in text
        assert "| train | 4000 |" in text                  # statistics were written


# --- E2E -----------------------------------------------------------------------------------------
E2E_VALUES = {
    "eatType": {"coffee shop", "pub", "restaurant"},
    "food": {"Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"},
    "priceRange": {"cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"},
    "customer rating": {"low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"},
    "area": {"city centre", "riverside"}, "familyFriendly": {"yes", "no"}}


@pytest.fixture(scope="module")
def e2e(gen):
    out, _ = gen
    return {s: F.read_e2e_csv(out / "e2e" / f"{s}.csv") for s in ("train", "dev", "test")}


def test_e2e_sizes_and_disjoint_mrs(e2e):
    assert [len(e2e[s]) for s in ("train", "dev", "test")] == [4000, 300, 300]
    mrs = {s: {x.mr for x in e2e[s]} for s in e2e}
    assert not mrs["train"] & mrs["dev"] and not mrs["train"] & mrs["test"]
    assert not mrs["dev"] & mrs["test"]


def test_e2e_mrs_use_the_real_attribute_values_and_the_world(e2e):
    world = build_world(0)
    venues = {v.name for v in world.by_kind("venue")}
    sizes = Counter()
    for split in e2e.values():
        for mr, refs in split:
            d = F.parse_mr(mr)
            assert list(d)[0] == "name" and d["name"] in venues and 3 <= len(d) <= 8
            assert F.format_mr(d) == mr
            for k, v in d.items():
                assert v in E2E_VALUES.get(k, venues), (k, v)
            assert 2 <= len(refs) <= 5 and len(set(refs)) == len(refs)
            assert all(d["name"] in r for r in refs)
            if "near" in d:
                assert all(d["near"] in r for r in refs)
            sizes[len(d)] += 1
    assert set(sizes) == set(range(3, 9))


def test_e2e_references_vary_their_structure(e2e):
    refs = [r for _, rs in e2e["train"] for r in rs]
    for pattern in (r"\bwhich\b", r"\bthat\b", r"\bwith\b", r"\. (It|The|[A-Z])", r"^There is",
                    r"^(In|By|Near|Close|Located)\b"):
        share = sum(bool(re.search(pattern, r)) for r in refs) / len(refs)
        assert share > 0.03, pattern


# --- WebNLG --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webnlg(gen):
    out, _ = gen
    return {s: F.read_webnlg_xml(out / "webnlg" / f"{s}.xml") for s in ("train", "dev", "test")}


def test_webnlg_seen_and_unseen_categories(webnlg):
    cats = {s: {e.category for e in webnlg[s]} for s in webnlg}
    assert len(set(SEEN_CATEGORIES) | set(UNSEEN_CATEGORIES)) >= 14
    assert len(UNSEEN_CATEGORIES) == 5
    assert cats["train"] == cats["dev"] == set(SEEN_CATEGORIES)
    assert cats["test"] == set(SEEN_CATEGORIES) | set(UNSEEN_CATEGORIES)
    unseen = [e for e in webnlg["test"] if e.category in UNSEEN_CATEGORIES]
    assert 0.4 < len(unseen) / len(webnlg["test"]) < 0.6     # scoreable seen / unseen / all
    train_props = {t.p for e in webnlg["train"] for t in e.triples}
    assert {"party", "discoverer", "orbitalPeriod"}.isdisjoint(train_props)


def test_webnlg_sizes_triples_and_disjoint_triple_sets(webnlg):
    assert [len(webnlg[s]) for s in ("train", "dev", "test")] == [3000, 300, 600]
    keys = {s: {tuple(sorted(map(str, e.triples))) for e in webnlg[s]} for s in webnlg}
    assert sum(len(k) for k in keys.values()) == 3900          # all distinct, hence disjoint
    for split in webnlg.values():
        for e in split:
            assert 1 <= e.size <= 5 and 1 <= len(e.lexes) <= 3
            root = e.triples[0].s
            assert any(root.replace("_", " ") in lex for lex in e.lexes)


# --- SST -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sst(gen):
    out, _ = gen
    return {(t, s): F.read_glue_tsv(out / t / f"{s}.tsv", t)
            for t in ("sst2", "sst5") for s in ("train", "dev", "test")}


def test_sst_sizes_and_balance(sst):
    for split, n in (("train", 5000), ("dev", 500), ("test", 500)):
        labels = [x.label for x in sst["sst2", split]]
        assert len(labels) == n and 0.45 <= sum(labels) / n <= 0.55
        c5 = Counter(x.label for x in sst["sst5", split])
        assert set(c5) == {0, 1, 2, 3, 4} and min(c5.values()) >= 0.15 * n
    texts = [x.sentence for k in sst for x in sst[k]]
    assert len(texts) == len(set(texts))                      # no text appears twice anywhere


def _keyword_baseline(sentence: str) -> int:
    """Count positive minus negative words of the generator's own lexicon, ignoring order."""
    words = [w.strip(".,!?'\"").lower() for w in sentence.split()]
    score = sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)
    return 1 if score >= 0 else 0


def test_sst2_needs_composition_not_keywords(sst):
    dev = sst["sst2", "dev"]
    texts = [x.sentence for x in dev]
    negated = [t for t in texts if re.search(r"\bnot\b|n't\b|\bnever\b|anything but", t)]
    contrast = [t for t in texts if re.search(r"\bbut\b|\balthough\b|\bhowever\b", t, re.I)]
    assert len(negated) > 0.15 * len(dev) and len(contrast) > 0.15 * len(dev)
    assert any("not bad" in t or "wasn't bad" in t for t in texts + [
        x.sentence for x in sst["sst2", "train"]])
    acc = sum(_keyword_baseline(x.sentence) == x.label for x in dev) / len(dev)
    assert 0.5 < acc < 0.9, acc
    # on the examples without negation or contrast, keywords do work: the labels are sane
    plain = [x for x in sst["sst2", "train"] if x.sentence not in set(negated) and not
             re.search(r"\bnot\b|n't\b|\bnever\b|anything but|\bbut\b|although|however|"
                       r"nothing|hard to|cannot", x.sentence, re.I)]
    acc_plain = sum(_keyword_baseline(x.sentence) == x.label for x in plain) / len(plain)
    assert acc_plain > 0.95, acc_plain


# --- MNLI ----------------------------------------------------------------------------------------
def test_mnli_balanced_matched_and_disjoint(gen):
    out, _ = gen
    data = {s: F.read_glue_tsv(out / "mnli" / f"{s}.tsv", "mnli")
            for s in ("train", "dev_matched", "test")}
    for split, n in (("train", 6000), ("dev_matched", 600), ("test", 600)):
        c = Counter(x.label for x in data[split])
        assert len(data[split]) == n and set(c.values()) == {n // 3}
        assert [x.index for x in data[split]] == list(range(n))
    genres = {s: {x.genre for x in data[s]} for s in data}
    assert genres["train"] == genres["dev_matched"] == genres["test"] and len(genres["train"]) == 5
    prem = {s: {x.sentence1 for x in data[s]} for s in data}
    assert not prem["train"] & prem["dev_matched"] and not prem["train"] & prem["test"]
    # negation in the hypothesis does not give the label away
    for label in F.MNLI_LABELS:
        hyps = [x.sentence2 for x in data["train"] if x.label == label]
        share = sum(bool(re.search(r"\bnot\b|n't\b|\bnever\b", h)) for h in hyps) / len(hyps)
        assert 0.15 < share < 0.5, (label, share)


# --- translation and pretraining -----------------------------------------------------------------
def test_translation_lexicon(gen):
    out, _ = gen
    pairs = F.read_pairs_tsv(out / "translation" / "en_fr.tsv")
    assert len(pairs) >= 300 and len({e for e, _ in pairs}) == len(pairs)
    assert ("cheese", "fromage") in pairs


def test_pretraining_corpus_is_clean(gen, e2e, webnlg, sst):
    out, _ = gen
    train = (out / "pretrain" / "train.txt").read_text(encoding="utf-8")
    valid = (out / "pretrain" / "valid.txt").read_text(encoding="utf-8")
    assert 8_000_000 <= len(train.encode()) <= 10_000_000
    assert 250_000 <= len(valid.encode()) <= 400_000
    for text in (train, valid):
        assert "name[" not in text and " | " not in text and "\t" not in text and "=>" not in text
    docs = F.read_corpus(out / "pretrain" / "train.txt")
    assert len(set(docs) & set(F.read_corpus(out / "pretrain" / "valid.txt"))) == 0
    # every translation pair is stated in prose somewhere (so in-context demos can use it)
    lessons = {s.lower() for d in docs if "French" in d for s in sentences(d)}
    for en, fr in F.read_pairs_tsv(out / "translation" / "en_fr.tsv"):
        en, fr = en.lower(), fr.lower()
        assert any(f" {en} " in f" {s} " and f" {fr}." in f" {s}" or s.startswith(f"{fr} means "
                   f"{en} ") for s in lessons), en

    mnli = [x for s in ("dev_matched", "test")
            for x in F.read_glue_tsv(out / "mnli" / f"{s}.tsv", "mnli")]
    items = ([r for s in ("dev", "test") for _, refs in e2e[s] for r in refs]
             + [lex for s in ("dev", "test") for e in webnlg[s] for lex in e.lexes]
             + [x.sentence for t in ("sst2", "sst5") for s in ("dev", "test") for x in sst[t, s]]
             + [x.sentence1 for x in mnli] + [x.sentence2 for x in mnli])
    # Every occurrence of an item in the corpus ends where a corpus sentence ends and starts at
    # a capitalised word of it, so looking up those suffixes finds all of them.
    banned = {s for item in items for s in sentences(item)}
    found = []
    for text in (train, valid):
        for doc in text.split("\n\n"):
            for sent in sentences(doc):
                starts = [0] + [m.start() for m in re.finditer(r"(?<= )[A-Z0-9\"']", sent)]
                found += [sent[i:] for i in starts if sent[i:] in banned]
    assert not found, found[:5]
    # and a direct substring search on a sample agrees
    for item in random.Random(0).sample(items, 300):
        assert item not in train and item not in valid, item


def test_pretraining_corpus_speaks_the_tasks_output_language(gen, e2e, webnlg):
    """The frozen model must have read the register of the references it will be asked to
    write: most of their word 4-grams occur in the corpus (9 % / 8 % before the corpus had the
    guide, encyclopedia, verdict and inference genres; 92 % / 74 % after), their sentences never."""
    from minipeft.data.generate import ngram_coverage, ngram_index
    out, _ = gen
    docs = F.read_corpus(out / "pretrain" / "train.txt")
    idx = ngram_index(docs)
    e2e_dev = [r for x in e2e["dev"] for r in x.refs]
    web_dev = [lex for e in webnlg["dev"] for lex in e.lexes]
    unseen = [lex for e in webnlg["test"] if e.category in UNSEEN_CATEGORIES for lex in e.lexes]
    assert ngram_coverage(e2e_dev, known=idx) > 0.85
    assert ngram_coverage(web_dev, known=idx) > 0.65
    assert ngram_coverage(unseen, known=idx) > 0.65      # the corpus knows athletes; the task never shows them
    # every unseen category's entities are described in WebNLG wording somewhere
    for cat in UNSEEN_CATEGORIES:
        lexes = [lex for e in webnlg["test"] if e.category == cat for lex in e.lexes]
        assert ngram_coverage(lexes, known=idx) > 0.5, cat
    text = "\n".join(docs)
    for verdict in ("All in all, it was great.", "All in all, it was terrible."):
        assert text.count(verdict) > 100, verdict
    # a verdict sums its review's sentences, so it never follows a review that lost any of them
    # to the dev/test filter: opening line, at least one sentence of review, verdict
    from minipeft.data.gen_pretrain import VERDICT_FORMS, VERDICT_WORDS
    ends = tuple(f.format(w=w) for f in VERDICT_FORMS for w in VERDICT_WORDS)
    verdicts = [d for d in docs if d.endswith(ends)]
    short = [d for d in verdicts if len(sentences(d)) < 3]
    assert len(verdicts) > 8000 and not short, (len(verdicts), short[:3])
    assert re.search(r"In other words, .+\.", text) and re.search(r"but that is wrong\.", text)
    assert re.search(r"which the French call \w+\.", text)     # French words in running text
    assert ngram_coverage(["a", "made up sentence of no world at all"], known=idx) < 0.5   # it can fail


def test_a_review_with_a_banned_sentence_is_drawn_again():
    """The writer never returns a verdict review holding a dev/test sentence (its verdict would
    describe a text the corpus cannot show); keep_allowed(whole=True) drops such documents."""
    from minipeft.data.gen_pretrain import _Writer, keep_allowed
    world = build_world(0)
    free = _Writer(world, random.Random(3))
    first = [free.verdict_review() for _ in range(200)]
    banned = {s for d in first[:100] for s in sentences(d)[1:-1]}     # their review sentences
    again = _Writer(world, random.Random(3), frozenset(banned))
    docs = [again.verdict_review() for _ in range(100)]
    assert docs != first[:100]
    kept = [d for d in docs if d]              # "" after 50 draws that all hit a banned sentence
    assert len(kept) > 80 and not {s for d in kept for s in sentences(d)} & banned, len(kept)
    hit = first[0]
    assert keep_allowed(hit, banned, whole=True) == ""
    assert keep_allowed(hit, banned) == " ".join(s for s in sentences(hit) if s not in banned)
    assert keep_allowed(first[150], set(), whole=True) == first[150]


def test_domain_corpora_for_continued_pretraining():
    from minipeft.data.gen_pretrain import make_domain
    from minipeft.data.tasks import build_tasks, eval_texts
    world = build_world(0)
    banned = {s for t in eval_texts(build_tasks(0, world, pretrain=False)) for s in sentences(t)}
    reviews = make_domain(world, "reviews", 0, banned, chars=30_000)
    assert reviews == make_domain(world, "reviews", 0, banned, chars=30_000), "deterministic"
    assert 25_000 < sum(len(d) + 2 for d in reviews) < 40_000
    assert sum("it was" in d or "verdict" in d for d in reviews) > len(reviews) / 3
    assert not {s for d in reviews for s in sentences(d)} & banned
    astro = make_domain(world, "astronomy", 0, banned, chars=10_000)
    names = [b.name for b in world.by_kind("body")]
    assert all(any(n in d for n in names) for d in astro) and not any("it was great" in d for d in astro)
    with pytest.raises(ValueError, match="unknown domain"):
        make_domain(world, "poetry", 0, banned)
