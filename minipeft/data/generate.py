"""Write every minipeft dataset to disk, with statistics, a README and a checksum manifest.

    python -m minipeft.data.generate --out data --seed 0          # what data/ was made with
    python -m minipeft.data.generate --out data --check           # verify data/ is unchanged

Same seed, byte-identical files: `data/MANIFEST.sha256` lists the sha256 of every generated
file (the `sha256sum` format, so `cd data && sha256sum -c MANIFEST.sha256` works too).
README.md is rewritten with fresh statistics, except for the sections from "## Tokenizer" on,
which belong to later steps (tokenizer training, pretraining) and are kept as they are.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import formats as F
from .gen_sentiment import keyword_baseline
from .tasks import build_tasks
from .world import SEEN_CATEGORIES, UNSEEN_CATEGORIES

KEEP_FROM = "## Tokenizer"
PLACEHOLDER = ("## Tokenizer\n\n(written by the tokenizer/pretraining step)\n\n"
               "## Pretrained checkpoints\n\n(written by the tokenizer/pretraining step)\n")
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|£\d+(?:-\d+)?")


def words(text: str) -> list[str]:
    """Words for statistics: letters/digits with inner apostrophes or hyphens, lowercased."""
    return [w.lower() for w in WORD.findall(text)]


def ngrams(text: str, n: int = 4) -> list:
    """The word n-grams of a text (words as `words` splits them), in order."""
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def ngram_index(corpus_docs, n: int = 4) -> set:
    """Every word n-gram of the corpus (build once, pass to ngram_coverage as `known`)."""
    return {g for d in corpus_docs for g in ngrams(d, n)}


def ngram_coverage(texts, corpus_docs=None, n: int = 4, known: set | None = None) -> float:
    """Register coverage: the fraction of the word n-grams of `texts` (counted with repeats)
    that occur somewhere in the corpus (its docs, or its ngram_index `known`). 1.0 means every
    4-word phrase of the references has been read in pretraining; exact-sentence overlap is a
    separate check (it must stay 0)."""
    known = ngram_index(corpus_docs, n) if known is None else known
    wanted = [g for t in texts for g in ngrams(t, n)]
    return sum(g in known for g in wanted) / max(len(wanted), 1)


def _lengths(texts) -> str:
    n = [len(words(t)) for t in texts]
    return f"{min(n)} / {statistics.median(n):g} / {max(n)}"


def _vocab(texts) -> int:
    return len({w for t in texts for w in words(t)})


def write_files(tasks: dict, out: Path) -> list[str]:
    """Write the task data under `out`; return the relative paths written (sorted)."""
    paths = []

    def p(rel: str) -> Path:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(rel)
        return path

    for split in ("train", "dev", "test"):
        F.write_e2e_csv(p(f"e2e/{split}.csv"), tasks["e2e"][split])
        F.write_webnlg_xml(p(f"webnlg/{split}.xml"), tasks["webnlg"][split])
        for task in ("sst2", "sst5"):
            F.write_sentence_tsv(p(f"{task}/{split}.tsv"),
                                 (F.SentenceExample(t, y) for t, y in tasks[task][split]))
    for split in ("train", "dev_matched", "test"):
        F.write_mnli_tsv(p(f"mnli/{split}.tsv"), (F.PairExample(s1, s2, lab, g, i) for
                                                  i, g, s1, s2, lab in tasks["mnli"][split]))
    F.write_tsv(p("translation/en_fr.tsv"), ["en", "fr"], tasks["translation"])
    for split in ("train", "valid"):
        F.write_corpus(p(f"pretrain/{split}.txt"), tasks["pretrain"][split])
    return sorted(paths)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statistics_md(tasks: dict, out: Path) -> str:
    """The statistics section of README.md, computed from the data in memory."""
    L = []
    add = L.append
    e2e, web, mnli = tasks["e2e"], tasks["webnlg"], tasks["mnli"]
    size = lambda rel: f"{(out / rel).stat().st_size / 1e6:.2f} MB"  # noqa: E731

    add("### E2E (`e2e/`)\n")
    add("| split | MRs | references (rows) | refs per MR | attributes per MR (3..8) | "
        "ref words min/median/max | size |")
    add("|---|---|---|---|---|---|---|")
    for s in ("train", "dev", "test"):
        rows = e2e[s]
        refs = [r for _, rs in rows for r in rs]
        na = Counter(len(F.parse_mr(m)) for m, _ in rows)
        dist = " ".join(f"{k}:{na[k]}" for k in range(3, 9))
        per = [len(rs) for _, rs in rows]
        add(f"| {s} | {len(rows)} | {len(refs)} | {min(per)}-{max(per)} "
            f"(mean {statistics.mean(per):.2f}) | {dist} | {_lengths(refs)} | "
            f"{size(f'e2e/{s}.csv')} |")
    all_refs = [r for s in e2e for _, rs in e2e[s] for r in rs]
    add(f"\nVocabulary: {_vocab(all_refs)} word types in the references. MRs are disjoint "
        "across splits.\n")

    add("### WebNLG (`webnlg/`)\n")
    add("| split | entries | lexicalisations | triples per entry (1..5) | seen / unseen entries | "
        "lex words min/median/max | size |")
    add("|---|---|---|---|---|---|---|")
    for s in ("train", "dev", "test"):
        es = web[s]
        lex = [x for e in es for x in e.lexes]
        nt = Counter(len(e.triples) for e in es)
        unseen = sum(e.category in UNSEEN_CATEGORIES for e in es)
        add(f"| {s} | {len(es)} | {len(lex)} | {' '.join(f'{k}:{nt[k]}' for k in range(1, 6))} | "
            f"{len(es) - unseen} / {unseen} | {_lengths(lex)} | {size(f'webnlg/{s}.xml')} |")
    props = {t.p for s in web for e in web[s] for t in e.triples}
    train_props = {t.p for e in web["train"] for t in e.triples}
    test_only = sorted({t.p for e in web["test"] for t in e.triples} - train_props)
    add(f"\nSeen categories ({len(SEEN_CATEGORIES)}, train/dev/test): "
        f"{', '.join(SEEN_CATEGORIES)}.  \nUnseen categories ({len(UNSEEN_CATEGORIES)}, test "
        f"only): {', '.join(UNSEEN_CATEGORIES)}.  \n{len(props)} properties, {len(test_only)} of "
        f"them only in test: {', '.join(test_only)}.  \nVocabulary: "
        f"{_vocab(x for s in web for e in web[s] for x in e.lexes)} word types in the "
        "lexicalisations.\n")

    for task, title in (("sst2", "SST-2 (`sst2/`)"), ("sst5", "SST-5 (`sst5/`)")):
        add(f"### {title}\n")
        k = 2 if task == "sst2" else 5
        add(f"| split | examples | label counts ({', '.join(str(i) for i in range(k))}) | "
            "words min/median/max | with negation | with contrast |")
        add("|---|---|---|---|---|---|")
        for s in ("train", "dev", "test"):
            rows = tasks[task][s]
            c = Counter(y for _, y in rows)
            texts = [t for t, _ in rows]
            neg = sum(bool(NEGATION.search(t)) for t in texts) / len(texts)
            con = sum(bool(CONTRAST.search(t)) for t in texts) / len(texts)
            add(f"| {s} | {len(rows)} | {' / '.join(str(c[i]) for i in range(k))} | "
                f"{_lengths(texts)} | {neg:.0%} | {con:.0%} |")
        texts = [t for s in tasks[task] for t, _ in tasks[task][s]]
        add(f"\nVocabulary: {_vocab(texts)} word types.")
        if task == "sst2":
            dev = tasks["sst2"]["dev"]
            acc = sum(keyword_baseline(t) == y for t, y in dev) / len(dev)
            add(f" A bag-of-keywords baseline (count positive minus negative words, "
                f"`gen_sentiment.keyword_baseline`) gets {acc:.1%} on dev.")
        add("")

    add("### MNLI (`mnli/`)\n")
    add("| split | pairs | entailment / neutral / contradiction | genres | "
        "premise words | hypothesis words |")
    add("|---|---|---|---|---|---|")
    for s in ("train", "dev_matched", "test"):
        rows = mnli[s]
        c = Counter(r[4] for r in rows)
        g = Counter(r[1] for r in rows)
        add(f"| {s} | {len(rows)} | {c['entailment']} / {c['neutral']} / {c['contradiction']} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(g.items()))} | "
            f"{_lengths(r[2] for r in rows)} | {_lengths(r[3] for r in rows)} |")
    add(f"\nVocabulary: {_vocab(x for s in mnli for r in mnli[s] for x in r[2:4])} word types. "
        "Premises are distinct across splits.\n")

    add("### Translation (`translation/en_fr.tsv`)\n")
    add(f"{len(tasks['translation'])} English-French word pairs.\n")

    add("### Pretraining corpus (`pretrain/`)\n")
    add("| split | documents | words | characters | doc words min/median/max | size |")
    add("|---|---|---|---|---|---|")
    for s in ("train", "valid"):
        docs = tasks["pretrain"][s]
        add(f"| {s} | {len(docs)} | {sum(len(words(d)) for d in docs)} | "
            f"{sum(len(d) for d in docs)} | {_lengths(docs)} | {size(f'pretrain/{s}.txt')} |")
    add(f"\nVocabulary: {_vocab(tasks['pretrain']['train'])} word types (train).\n")
    add("Register coverage: how much of the tasks' output language the corpus has read. "
        "4-gram coverage is the share of the references' word 4-grams (with repeats) that occur "
        "somewhere in `pretrain/train.txt`; whole references and sentences found in it must be 0 "
        "(the generator drops every sentence of a dev or test item). The corpus before the tasks' genres were "
        "added (3 MB, commit 226d1f2) covered 9.4% / 7.6% / 10.1% of these 4-grams.\n")
    add("| references | texts | word 4-gram coverage | whole texts in the corpus | sentences in the corpus |")
    add("|---|---|---|---|---|")
    known = ngram_index(tasks["pretrain"]["train"])
    for name, texts in register_texts(tasks).items():
        cov = register_coverage(texts, tasks["pretrain"]["train"], known)
        add(f"| {name} | {len(texts)} | {cov['coverage']:.1%} | {cov['texts_found']} | {cov['sentences_found']} |")
    add("")
    return "\n".join(L)


def register_texts(tasks: dict) -> dict[str, list[str]]:
    """The reference texts whose register the corpus should know: E2E dev, WebNLG dev (seen
    categories), WebNLG test entries of the five unseen categories."""
    unseen = set(UNSEEN_CATEGORIES)
    return {"E2E dev": [r for _, refs in tasks["e2e"]["dev"] for r in refs],
            "WebNLG dev": [x for e in tasks["webnlg"]["dev"] for x in e.lexes],
            "WebNLG test, unseen categories": [x for e in tasks["webnlg"]["test"] if e.category in unseen
                                               for x in e.lexes]}


def register_coverage(texts, corpus_docs, known: set | None = None) -> dict:
    """4-gram coverage of `texts` by the corpus; the sentences of `texts` that occur verbatim in
    it (as a corpus sentence or the end of one); and the texts all of whose sentences occur (an
    upper bound on the texts found verbatim)."""
    from .gen_pretrain import sentences
    wanted = {s for t in texts for s in sentences(t)}
    found = set()
    for d in corpus_docs:
        for c in sentences(d):
            # a sentence starts with a capital, a digit or a quote (see gen_pretrain.mentions_banned)
            found |= {c[i:] for i in range(len(c)) if (i == 0 or c[i - 1] == " " and (
                c[i].isupper() or c[i].isdigit() or c[i] in "\"'")) and c[i:] in wanted}
    return {"coverage": ngram_coverage(texts, corpus_docs, known=known), "sentences_found": len(found),
            "texts_found": sum(all(s in found for s in sentences(t)) for t in texts)}


NEGATION = re.compile(r"\bnot\b|n't\b|\bnever\b|\bnothing\b|\bno\b|anything but", re.I)
CONTRAST = re.compile(r"\bbut\b|\balthough\b|\bhowever\b", re.I)

README_HEAD = """# minipeft data

Everything in this folder except `tokenizer.json` and `checkpoints/` is generated, deterministically,
by

    python -m minipeft.data.generate --out data --seed {seed}

in about 15 seconds on one CPU core (pure Python, no downloads). The same seed gives byte-identical
files; `MANIFEST.sha256` holds their sha256 (check with `python -m minipeft.data.generate --out data
--check` or `cd data && sha256sum -c MANIFEST.sha256`). The tests regenerate the data and compare.
`pretrain/train.txt` (9 MB) is not committed: `minipeft pretrain` and the tests that need it write it
on first use (`generate.pretrain_corpus`, checked against the manifest).

All corpora and tasks describe one synthetic **world** (`minipeft/data/world.py`): a town called
Millbrook with {venues} restaurants, pubs and coffee shops, {people} people, {cities} cities in {countries}
invented countries, and airports, buildings, monuments, teams, universities, companies, books,
films, comic characters, asteroids and vehicles. Names are invented, so whatever a model knows about
them it learned from `pretrain/`. Every description, reference, premise and review states the
world's true facts (only MNLI hypotheses are, by design, sometimes false).

## Files

| path | format | what | generator |
|---|---|---|---|
| `e2e/{{train,dev,test}}.csv` | E2E challenge CSV, header `mr,ref`, one row per reference | venue MRs (name always, 3-8 attributes) and 2-5 references each | `gen_e2e.py` |
| `webnlg/{{train,dev,test}}.xml` | WebNLG 2017 challenge XML (`<entry category eid size>`, `<modifiedtripleset>`, `<lex>`) | 1-5 triples per entry, 1-3 texts; 5 categories only in test | `gen_webnlg.py` |
| `sst2/{{train,dev,test}}.tsv` | GLUE SST-2 TSV, header `sentence<TAB>label`, label 0/1 | reviews with negation, contrast, intensifiers | `gen_sentiment.py` |
| `sst5/{{train,dev,test}}.tsv` | same layout, label 0-4 (very negative .. very positive) | as SST-2, five classes | `gen_sentiment.py` |
| `mnli/{{train,dev_matched,test}}.tsv` | GLUE MNLI columns `index genre sentence1 sentence2 gold_label` | premise from world facts, one hypothesis per label | `gen_nli.py` |
| `translation/en_fr.tsv` | TSV, header `en<TAB>fr` | English-French word pairs for in-context learning | `gen_translation.py` |
| `pretrain/{{train,valid}}.txt` | plain text, one document per paragraph, blank line between | guidebook entries, biographies, encyclopedia entries, news, dialogues, reviews, French lessons; and the tasks' output language in prose: food-guide write-ups in E2E wording, encyclopedia sentences in WebNLG wording (all 16 categories), reviews ending in a one-word verdict ("All in all, it was great."), statements with what follows from them, contradicts them or leaves open, French words in running text | `gen_pretrain.py` |
| `MANIFEST.sha256` | `sha256sum` format | checksums of the files above | `generate.py` |

Unlike the real files, every test split here carries its labels/references (the real GLUE test
files do not); the readers in `minipeft/data/formats.py` read both (`read_e2e_csv`, `read_webnlg_xml`,
`read_glue_tsv`), so the real datasets can be dropped in. The SST texts are ordinary cased English,
not the lowercased, tokenised text of GLUE SST-2.

What keeps evaluation honest: E2E MRs, WebNLG triple sets and MNLI premises are disjoint across
splits; no SST text occurs twice anywhere; the pretraining corpus contains no sentence of any dev or
test item and never uses a task format (no `name[...]`, no `s | p | o` triples, no tabs, no `=>`). It
does state the world's facts, and it mentions every translation pair in prose ("The French word for
cheese is fromage."), so in-context prompts test the use of knowledge in a new format.

## Statistics (seed {seed})

Word counts split on letters/digits (a hyphenated or apostrophised word counts once).

{stats}
"""


def readme(tasks: dict, out: Path, seed: int, world_counts: dict) -> str:
    head = README_HEAD.format(seed=seed, stats=statistics_md(tasks, out), **world_counts)
    old = out / "README.md"
    tail = PLACEHOLDER
    if old.exists():
        text = old.read_text(encoding="utf-8")
        if KEEP_FROM in text:
            tail = text[text.index(KEEP_FROM):]
    return head.rstrip("\n") + "\n\n" + tail


def generate_all(out: str | os.PathLike, seed: int = 0, write_readme: bool = True,
                 verbose: bool = False) -> dict[str, str]:
    """Generate everything into `out`; return {relative path: sha256} of the data files."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .world import build_world
    world = build_world(seed)
    tasks = build_tasks(seed, world)
    paths = write_files(tasks, out)
    hashes = {rel: sha256(out / rel) for rel in paths}
    with open(out / "MANIFEST.sha256", "w", encoding="utf-8", newline="\n") as f:
        for rel in paths:
            f.write(f"{hashes[rel]}  {rel}\n")
    if write_readme:
        counts = dict(venues=len(world.by_kind("venue")), people=len(world.by_kind("person")),
                      cities=len(world.by_kind("city")), countries=len(world.by_kind("country")))
        text = readme(tasks, out, seed, counts)
        (out / "README.md").write_text(text, encoding="utf-8", newline="\n")
    if verbose:
        print(f"wrote {len(paths)} files to {out} in {time.perf_counter() - t0:.1f} s")
    return hashes


def pretrain_corpus(data_dir: str | os.PathLike = "data", seed: int = 0) -> Path:
    """The folder holding pretrain/{train,valid}.txt, writing them first if they are missing.

    The 9 MB training corpus is not committed (it is generated deterministically in about 15
    seconds); MANIFEST.sha256 holds its checksum, and the written files are checked against it
    so that a model is never pretrained on a corpus that differs from the shipped models'."""
    folder = Path(data_dir) / "pretrain"
    files = [folder / f"{s}.txt" for s in ("train", "valid")]
    if all(f.exists() for f in files):
        return folder
    print(f"writing the pretraining corpus into {folder} (generated from seed {seed}, ~15 s) ...")
    from .formats import write_corpus
    tasks = build_tasks(seed)
    folder.mkdir(parents=True, exist_ok=True)
    want = read_manifest(Path(data_dir) / "MANIFEST.sha256") if (Path(data_dir) / "MANIFEST.sha256").exists() else {}
    for f in files:
        tmp = f.with_suffix(".txt.tmp")
        write_corpus(tmp, tasks["pretrain"][f.stem])
        rel = f"pretrain/{f.name}"
        if rel in want and sha256(tmp) != want[rel]:
            tmp.unlink()
            raise RuntimeError(f"the generated {rel} does not match {data_dir}/MANIFEST.sha256: the "
                               "generator changed since the manifest was written; regenerate all data with "
                               f"python -m minipeft.data.generate --out {data_dir}")
        os.replace(tmp, f)
    return folder


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} from a MANIFEST.sha256 file."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            out[rel.strip().lstrip("*")] = digest
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minipeft.data.generate",
                                 description="Generate minipeft's synthetic datasets.")
    ap.add_argument("--out", default="data", help="output folder (default: data)")
    ap.add_argument("--seed", type=int, default=0, help="world and task seed (default: 0)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate in a temporary folder and compare with OUT/MANIFEST.sha256")
    ap.add_argument("--domain", default=None,
                    help="write a domain corpus (reviews, venues, astronomy) for continued pretraining instead")
    ap.add_argument("--chars", type=int, default=1_000_000, help="--domain: its size in characters")
    ap.add_argument("--domain-out", default=None, help="--domain: the file to write (default OUT/domain-NAME.txt)")
    args = ap.parse_args(argv)
    if args.domain:
        from .formats import write_corpus
        from .gen_pretrain import make_domain, sentences
        from .tasks import eval_texts
        tasks = build_tasks(args.seed, pretrain=False)
        banned = {s for t in eval_texts(tasks) for s in sentences(t)}
        from .world import build_world
        docs = make_domain(build_world(args.seed), args.domain, args.seed, banned, args.chars)
        path = args.domain_out or os.path.join(args.out, f"domain-{args.domain}.txt")
        if os.path.exists(path):
            print(f"error: {path} exists; pass another --domain-out (nothing was overwritten)", file=sys.stderr)
            return 2
        write_corpus(path + ".tmp", docs)
        os.replace(path + ".tmp", path)
        print(f"wrote {len(docs)} {args.domain} documents to {path}")
        return 0
    if args.check:
        manifest = Path(args.out) / "MANIFEST.sha256"
        if not manifest.exists():
            print(f"error: {manifest} not found; generate the data first", file=sys.stderr)
            return 2
        want = read_manifest(manifest)
        with tempfile.TemporaryDirectory() as tmp:
            got = generate_all(tmp, args.seed, write_readme=False)
        bad = sorted(r for r in set(want) | set(got) if want.get(r) != got.get(r))
        for rel in bad:
            print(f"differs: {rel}", file=sys.stderr)
        print("ok: data matches the generator" if not bad else
              f"{len(bad)} file(s) differ from seed {args.seed}; regenerate with "
              f"python -m minipeft.data.generate --out {args.out} --seed {args.seed}")
        return 0 if not bad else 1
    generate_all(args.out, args.seed, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
