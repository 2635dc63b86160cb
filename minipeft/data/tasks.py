"""All of minipeft's synthetic tasks in one place: build them in memory from a seed.

    from minipeft.data.tasks import build_tasks
    tasks = build_tasks(seed=0)
    tasks["e2e"]["train"][0]            # ("name[...], ...", ["reference", ...])
    tasks["webnlg"]["test"][0]          # WebNLGEntry(eid, category, triples, lexes, ...)
    tasks["sst2"]["dev"][0]             # ("The food was not bad.", 1)
    tasks["mnli"]["dev_matched"][0]     # (index, genre, premise, hypothesis, label)
    tasks["pretrain"]["train"][0]       # a document (str)

Each task lives in its own generator module, which explains what it produces and why:

| task        | module             | paper setting it stands in for                          |
|-------------|--------------------|---------------------------------------------------------|
| e2e         | gen_e2e.py         | E2E table-to-text (Prefix-tuning, LoRA on GPT-2)        |
| webnlg      | gen_webnlg.py      | WebNLG seen/unseen categories (Prefix-tuning Table 3)   |
| sst2, sst5  | gen_sentiment.py   | SST-2 / SST-5 (LM-BFF, PET, BitFit, adapters)           |
| mnli        | gen_nli.py         | MNLI (LoRA, adapters, PET)                              |
| translation | gen_translation.py | word translation by in-context learning (GPT-3)         |
| pretrain    | gen_pretrain.py    | the pretraining corpus (GPT-2's WebText, in miniature)  |

They all read one `World` (world.py), so the corpus and the tasks agree on every fact.
"""
from __future__ import annotations

from .gen_e2e import make_e2e
from .gen_nli import make_mnli
from .gen_pretrain import make_pretrain, sentences
from .gen_sentiment import make_sentiment
from .gen_translation import LEXICON
from .gen_webnlg import make_webnlg
from .world import World, build_world

SIZES = {"e2e": (4000, 300, 300), "webnlg": (3000, 300, 600), "sst2": (5000, 500, 500),
         "sst5": (5000, 500, 500), "mnli": (6000, 600, 600)}
PRETRAIN_CHARS = (9_000_000, 300_000)


def eval_texts(tasks: dict) -> list[str]:
    """Every text of every dev/test item (references, sentences, premises, hypotheses):
    what the pretraining corpus must not contain."""
    out: list[str] = []
    for split in ("dev", "test"):
        for _, refs in tasks["e2e"][split]:
            out += refs
        for e in tasks["webnlg"][split]:
            out += e.lexes
        out += [t for t, _ in tasks["sst2"][split]] + [t for t, _ in tasks["sst5"][split]]
    for split in ("dev_matched", "test"):
        for _, _, p, h, _ in tasks["mnli"][split]:
            out += [p, h]
    return out


def build_tasks(seed: int = 0, world: World | None = None, pretrain: bool = True,
                sizes: dict | None = None, pretrain_chars=PRETRAIN_CHARS) -> dict:
    """Generate every task (and, if `pretrain`, the corpus) for `seed`, in memory."""
    world = world or build_world(seed)
    sizes = {**SIZES, **(sizes or {})}
    seen_reviews: set[str] = set()
    tasks = {
        "e2e": make_e2e(world, seed, sizes["e2e"]),
        "webnlg": make_webnlg(world, seed, sizes["webnlg"]),
        "sst2": make_sentiment(world, seed, sizes["sst2"], seen=seen_reviews),
        "sst5": make_sentiment(world, seed, sizes["sst5"], fine=True, seen=seen_reviews),
        "mnli": make_mnli(world, seed, sizes["mnli"]),
        "translation": list(LEXICON),
    }
    if pretrain:
        banned = {s for t in eval_texts(tasks) for s in sentences(t)}
        tasks["pretrain"] = make_pretrain(world, seed, banned, *pretrain_chars)
    return tasks
