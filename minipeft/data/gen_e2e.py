"""E2E-style table-to-text: meaning representations of the world's venues and references.

What it produces: (MR, [references]) pairs in the E2E challenge format, e.g.

    name[The Golden Eagle], eatType[pub], food[Chinese], priceRange[cheap], near[Cotto]
    -> "The Golden Eagle is a cheap Chinese pub near Cotto."
    -> "Near Cotto is The Golden Eagle, a pub. It serves Chinese food and has low prices."

Why: table-to-text is where Prefix-tuning and LoRA are measured on GPT-2 (E2E BLEU). Each MR
describes a real venue of the world (its facts are the venue's facts), so a model pretrained on
the world corpus has seen these venues described in other words.

How the references vary, as in the crowd-sourced E2E data: every attribute has several
realisations, placed either inside the noun phrase ("a cheap Chinese pub"), after it ("a pub
near Cotto"), in a verb phrase ("it serves Chinese food") or in front ("By the riverside, ...");
sentences are joined or split and use "which", "that", "with", appositions and pronouns.
Unlike the real data, every reference mentions every attribute of its MR (the real E2E
references sometimes drop one); a model is never rewarded for omitting content.

The price and rating attributes use both value sets of real E2E: words (cheap / moderate /
high, low / average / high) or numbers (less than £20 / £20-25 / more than £30, 1/3/5 out of
5). A venue's level is fixed in the world; the MR picks one of the two forms.
"""
from __future__ import annotations

import random

from . import gen_names as N
from .formats import format_mr
from .world import World

# (level 0/1/2) -> the two E2E spellings; which one an MR uses is drawn per MR
PRICE_FORMS = tuple(zip(N.PRICE_WORDS, N.PRICE_POUNDS))
RATING_FORMS = tuple(zip(N.RATING_WORDS, N.RATING_STARS))

# attribute -> value -> slot -> realisations. Slots: adj (before the noun), pp (after the noun),
# vp (a verb phrase with the venue as subject), front (a sentence opener, ends with a comma).
_PRICE = {
    "cheap": dict(adj=["cheap", "low-priced", "inexpensive"],
                  pp=["with cheap prices", "with low prices"],
                  vp=["is cheap", "has low prices", "has a cheap price range", "is inexpensive"]),
    "moderate": dict(adj=["moderately priced", "mid-priced"],
                     pp=["with moderate prices", "with average prices"],
                     vp=["has moderate prices", "is moderately priced",
                         "has a moderate price range"]),
    "high": dict(adj=["expensive", "high-priced", "pricey"],
                 pp=["with high prices", "with a high price range"],
                 vp=["is expensive", "has high prices", "has a high price range"]),
    "less than £20": dict(pp=["with prices under £20", "with meals for less than £20"],
                          vp=["costs less than £20", "has a price range of less than £20",
                              "has meals for under £20", "charges less than £20 per person"]),
    "£20-25": dict(pp=["with prices of £20-25", "in the £20-25 price range"],
                   vp=["has a price range of £20-25", "costs £20-25 per person",
                       "charges between £20 and £25"]),
    "more than £30": dict(pp=["with prices over £30", "costing more than £30"],
                          vp=["costs more than £30", "has a price range of more than £30",
                              "charges over £30 per person"]),
}
_RATING = {
    "low": dict(adj=["low-rated", "poorly rated"],
                pp=["with a low customer rating", "with a low rating"],
                vp=["has a low customer rating", "is rated low by customers",
                    "has received low ratings"]),
    "average": dict(adj=["average-rated"],
                    pp=["with an average customer rating", "with an average rating"],
                    vp=["has an average customer rating", "is rated average by customers"]),
    "high": dict(adj=["highly rated", "high-rated"],
                 pp=["with a high customer rating", "with a high rating"],
                 vp=["has a high customer rating", "is highly rated by customers"]),
}
for _stars in N.RATING_STARS:
    _RATING[_stars] = dict(pp=[f"with a customer rating of {_stars}", f"rated {_stars}"],
                           vp=[f"has a customer rating of {_stars}",
                               f"is rated {_stars} by customers", f"has a {_stars} rating"])
_AREA = {
    "city centre": dict(adj=["city centre"],
                        pp=["in the city centre", "in the centre of the city"],
                        vp=["is located in the city centre", "is in the city centre",
                            "can be found in the city centre"],
                        front=["In the city centre,", "Located in the city centre,"]),
    "riverside": dict(adj=["riverside"],
                      pp=["in the riverside area", "by the riverside", "on the riverside"],
                      vp=["is located in the riverside area", "is by the riverside",
                          "is on the riverside"],
                      front=["By the riverside,", "In the riverside area,"]),
}
_FAMILY = {
    "yes": dict(adj=["family-friendly", "kid-friendly", "child-friendly"],
                pp=["that is family-friendly", "that welcomes families"],
                vp=["is family-friendly", "is kid friendly", "welcomes families",
                    "is child friendly", "allows children"]),
    "no": dict(adj=["adults-only"],
               pp=["that is not family-friendly", "that does not welcome children"],
               vp=["is not family-friendly", "is not kid friendly", "does not allow children",
                   "is not suitable for children", "is for adults only"]),
}
GENERIC_NOUNS = ("place", "venue", "eatery", "establishment")


def _food(value: str) -> dict:
    f = "fast food" if value == "Fast food" else value
    food = "fast food" if value == "Fast food" else f"{f} food"
    return dict(adj=[f], pp=[f"serving {food}", f"that serves {food}", f"offering {food}"],
                vp=[f"serves {food}", f"offers {food}", f"sells {food}", f"provides {food}",
                    f"has {food} on the menu"])


def _near(value: str) -> dict:
    return dict(pp=[f"near {value}", f"close to {value}", f"next to {value}",
                    f"not far from {value}"],
                vp=[f"is near {value}", f"is located near {value}", f"is close to {value}",
                    f"is situated next to {value}"],
                front=[f"Near {value},", f"Close to {value},"])


def realisations(attr: str, value: str) -> dict[str, list[str]]:
    """The slot -> phrases table for one attribute value (see the module doc)."""
    if attr == "food":
        return _food(value)
    if attr == "priceRange":
        return _PRICE[value]
    if attr == "customer rating":
        return _RATING[value]
    if attr == "area":
        return _AREA[value]
    if attr == "familyFriendly":
        return _FAMILY[value]
    if attr == "near":
        return _near(value)
    raise KeyError(attr)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def realise(mr: dict[str, str], rng: random.Random) -> str:
    """One reference text for the MR dict: every attribute is realised exactly once."""
    name = mr["name"]
    head = mr.get("eatType")
    attrs = [a for a in ("food", "priceRange", "customer rating", "area", "familyFriendly",
                         "near") if a in mr]
    if rng.random() < 0.6:
        rng.shuffle(attrs)
    use_np = head is not None or rng.random() < 0.5
    noun = head or rng.choice(GENERIC_NOUNS)
    # sentence plan: 0 "X is NP. It VP."  1 "X is NP that VP."  2 "X, NP, VP."
    # 3 "There is NP called X that VP."  4 "X is NP, which VP."  5 "For NP, try X. It VP."
    form = rng.randrange(6) if use_np else -1
    adjs, pps, vps, front = [], [], [], None
    for a in attrs:
        table = realisations(a, mr[a])
        slots = [s for s in ("adj", "pp", "vp", "front") if s in table]
        if not use_np:
            slots = [s for s in slots if s in ("vp", "front")]
        if front is not None or len(attrs) < 3 or form == 5:
            slots = [s for s in slots if s != "front"]
        if len(adjs) >= 2:
            slots = [s for s in slots if s != "adj"]
        if len(pps) >= 2:
            slots = [s for s in slots if s != "pp"]
        weights = {"adj": 3, "pp": 2, "vp": 4, "front": 1}
        slot = rng.choices(slots, [weights[s] for s in slots])[0]
        options = table[slot]
        if slot == "pp" and (form in (1, 3) or any(p.startswith("that ") for p in pps)):
            # avoid "a pub that serves ... that is ..."
            options = [o for o in options if not o.startswith("that ")] or options
        phrase = rng.choice(options)
        if slot == "adj":
            adjs.append((a, phrase))
        elif slot == "pp":
            pps.append(phrase)
        elif slot == "vp":
            vps.append(phrase)
        else:
            front = phrase
    # adjectives in natural English order: price, rating, family, area, food, then the noun
    order = {"priceRange": 0, "customer rating": 1, "familyFriendly": 2, "area": 3, "food": 4}
    adj_words = [p for _, p in sorted(adjs, key=lambda x: order[x[0]])]
    np_core = " ".join(adj_words + [noun])
    np = f"{_article(np_core)} {np_core}" + ("" if not pps else " " + " ".join(pps))
    pron = rng.choice(["It", "It", f"The {noun}" if head else "It", name])
    first, rest = _split(vps, rng) if vps else ([], [])
    if form == 2 and not first:
        form = 0
    sentences: list[str] = []
    if form == -1:
        sentences.append(f"{name} {_join(first)}")
    elif form == 0:
        sentences.append(f"{name} is {np}")
        if first:
            sentences.append(f"{pron} {_join(first)}")
    elif form == 1:
        sentences.append(f"{name} is {np}" + (f" that {_join(first)}" if first else ""))
    elif form == 2:
        sentences.append(f"{name}, {np}, {_join(first)}")
    elif form == 3:
        sentences.append(f"there is {np} called {name}" +
                         (f" that {_join(first)}" if first else ""))
    elif form == 4:
        sentences.append(f"{name} is {np}" + (f", which {_join(first)}" if first else ""))
    else:
        sentences.append(f"For {np}, try {name}")
        if first:
            sentences.append(f"{pron} {_join(first)}")
    if rest:
        if rng.random() < 0.5:        # "It also has ...", "It is also ..."
            head_vp = rest[0]
            rest = ([f"is also {head_vp[3:]}"] if head_vp.startswith("is ") else
                    [f"also {head_vp}"]) + rest[1:]
        sentences.append(f"{pron} {_join(rest)}")
    if front:
        sentences[0] = f"{front} {sentences[0]}"
    return " ".join(_cap(s) + "." for s in sentences)


def _split(vps: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """Split verb phrases into the first sentence and a follow-up sentence (aggregation)."""
    if len(vps) <= 1 or (len(vps) == 2 and rng.random() < 0.6) or rng.random() < 0.3:
        return vps, []
    k = rng.randint(1, len(vps) - 1)
    return vps[:k], vps[k:]


def sample_mr(world: World, rng: random.Random) -> dict[str, str]:
    """A random MR of a random venue: its name plus 2-7 of its other attributes (3-8 in all,
    most often 5-6, as in E2E), each with the venue's true value."""
    v = rng.choice(world.by_kind("venue"))
    f = v.facts
    price_form = rng.randrange(2)
    rating_form = rng.randrange(2)
    full = {"name": v.name, "eatType": f["eatType"], "food": f["food"],
            "priceRange": PRICE_FORMS[f["priceRange"]][price_form],
            "customer rating": RATING_FORMS[f["customerRating"]][rating_form],
            "area": f["area"], "familyFriendly": "yes" if f["familyFriendly"] else "no",
            "near": f["near"].name}
    k = rng.choices((2, 3, 4, 5, 6, 7), (5, 14, 24, 26, 20, 11))[0]
    keep = rng.sample(list(full)[1:], k)
    return {a: full[a] for a in full if a == "name" or a in keep}


def make_e2e(world: World, seed: int, sizes=(4000, 300, 300), refs=(2, 5)
             ) -> dict[str, list[tuple[str, list[str]]]]:
    """Train/dev/test lists of (mr_string, [refs]) with disjoint MRs across the splits.

    Distinct MRs are drawn until there are sum(sizes), then dealt to the splits in draw order
    (the draw is random, so the splits are random and disjoint). Each MR gets refs[0]..refs[1]
    distinct references.
    """
    rng = random.Random(f"minipeft-e2e:{seed}")
    total = sum(sizes)
    seen: dict[str, dict] = {}
    while len(seen) < total:
        mr = sample_mr(world, rng)
        seen.setdefault(format_mr(mr), mr)
    items = list(seen.items())
    out, start = {}, 0
    for split, n in zip(("train", "dev", "test"), sizes):
        rows = []
        for mr_string, mr in items[start:start + n]:
            want = rng.randint(*refs)
            texts: list[str] = []
            for _ in range(8 * want):
                t = realise(mr, rng)
                if t not in texts:
                    texts.append(t)
                if len(texts) == want:
                    break
            rows.append((mr_string, texts))
        out[split] = rows
        start += n
    return out
