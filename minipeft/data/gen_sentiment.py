"""SST-style sentiment reviews of the world's venues, films and books, where keywords mislead.

What it produces: short reviews (1-3 sentences) with a sentiment score, labelled for SST-2
(0 negative / 1 positive) and SST-5 (0 very negative ... 4 very positive).

Why: LM-BFF and PET (Gao et al. 2021; Schick & Schuetze 2021) show prompt-based fine-tuning
on SST-2/SST-5 with 16 examples per class. If the labels could be read off single words, a tiny
model would not need to understand anything and the lecture would show nothing. So the
generator composes sentiment the way the Stanford Sentiment Treebank does:
- negation flips (and weakens) an adjective: "not good" is negative, "not bad" positive,
  "anything but boring" positive, "never disappoints" positive;
- a contrast lets the second clause win: "The food was great, but the service ruined it";
  with "although" the main clause wins: "Although the staff were rude, the food was superb";
- intensifiers strengthen ("extremely good"), diminishers weaken ("a bit bland");
- idioms invert keywords: "I cannot recommend it enough", "nothing to complain about".
Every example is generated *for* a target label: the clauses that carry the label agree with
it, and distractors sit only where the rules above make them lose. The label is then checked
against the numeric score of the text (`score` below), so it is a deterministic function of
the wording. `POSITIVE_WORDS` / `NEGATIVE_WORDS` are the polar words used, for a keyword
baseline (a test asserts it stays well below 90% on dev).
"""
from __future__ import annotations

import random

from .world import World

# adjective -> value, usable with any aspect
GENERIC = {"good": 1, "nice": 1, "decent": 1, "pleasant": 1, "great": 2, "lovely": 2,
           "excellent": 3, "superb": 3, "wonderful": 3, "fantastic": 3, "outstanding": 3,
           "bad": -1, "mediocre": -1, "poor": -2, "disappointing": -2, "awful": -3,
           "terrible": -3, "dreadful": -3, "horrible": -3}
NEUTRAL = ("okay", "fine", "average", "acceptable", "ordinary")
# aspects: (noun phrase, plural?, {specific adjective: value})
VENUE_ASPECTS = (
    ("the food", False, {"tasty": 2, "delicious": 2, "fresh": 1, "bland": -1, "greasy": -2,
                         "stale": -2, "overcooked": -2}),
    ("the service", False, {"friendly": 2, "attentive": 2, "quick": 1, "slow": -1,
                            "careless": -2, "rude": -3}),
    ("the staff", True, {"friendly": 2, "attentive": 2, "polite": 1, "unfriendly": -2,
                         "rude": -3}),
    ("the atmosphere", False, {"cosy": 2, "relaxing": 2, "charming": 2, "lively": 1,
                               "noisy": -1, "gloomy": -2, "chaotic": -2}),
    ("the prices", True, {"fair": 1, "reasonable": 1, "steep": -1, "outrageous": -3}),
    ("the portions", True, {"generous": 2, "small": -1, "tiny": -2}),
    ("the coffee", False, {"fresh": 1, "strong": 1, "bitter": -1, "weak": -1}),
    ("the desserts", True, {"delicious": 2, "tasty": 2, "bland": -1, "stale": -2}),
)
FILM_ASPECTS = (
    ("the plot", False, {"gripping": 2, "clever": 2, "original": 2, "predictable": -1,
                         "confusing": -2, "silly": -1}),
    ("the acting", False, {"convincing": 2, "moving": 2, "wooden": -2, "flat": -1}),
    ("the soundtrack", False, {"beautiful": 2, "memorable": 2, "forgettable": -1,
                               "annoying": -2}),
    ("the ending", False, {"satisfying": 2, "powerful": 2, "rushed": -2}),
    ("the dialogue", False, {"witty": 2, "sharp": 2, "clumsy": -2, "dull": -2}),
    ("the pacing", False, {"tight": 1, "brisk": 1, "sluggish": -2, "slow": -1}),
)
BOOK_ASPECTS = (
    ("the prose", False, {"elegant": 2, "vivid": 2, "clumsy": -2, "dull": -2}),
    ("the characters", True, {"believable": 2, "memorable": 2, "flat": -1, "annoying": -2}),
    ("the plot", False, {"gripping": 2, "clever": 2, "predictable": -1, "confusing": -2}),
    ("the ending", False, {"satisfying": 2, "moving": 2, "rushed": -2}),
)
# intensifiers multiply an adjective's value by 1.5, diminishers by 0.5. Extreme adjectives
# ("excellent", "awful") only take "truly"/"absolutely"; "a bit" only goes with negatives.
INTENSIFIERS = ("very", "really", "extremely", "incredibly")
EXTREME_INTENSIFIERS = ("truly", "absolutely")
DIMINISHERS_NEG = ("a bit", "slightly", "somewhat", "a little")
DIMINISHERS_POS = ("fairly", "quite")     # only with aspect adjectives ("fairly tasty")
# verbs with the reviewer as subject: "I loved the food"
VERBS = {"loved": 3, "enjoyed": 2, "liked": 1, "hated": -3, "disliked": -2}
VENUE_VERDICTS = (("I would definitely go back.", 2), ("Worth every penny.", 2),
                  ("Highly recommended.", 3), ("I cannot recommend it enough.", 3),
                  ("You won't regret it.", 2), ("Hard to fault.", 2),
                  ("Nothing to complain about.", 1), ("No complaints here.", 1),
                  ("I will not be going back.", -2), ("Avoid it.", -3),
                  ("Not worth the money.", -2), ("I cannot recommend it.", -2),
                  ("A waste of money.", -2), ("You will regret it.", -2),
                  ("Never again.", -3), ("Not recommended.", -2))
WORK_VERDICTS = (("Worth every minute.", 2), ("Highly recommended.", 3), ("Don't miss it.", 2),
                 ("I cannot recommend it enough.", 3), ("You won't regret it.", 2),
                 ("Hard to fault.", 2), ("Not worth the time.", -2), ("A waste of time.", -2),
                 ("I cannot recommend it.", -2), ("Don't bother.", -2), ("Skip it.", -2),
                 ("Not recommended.", -2))
# whole-object idioms whose keywords point the wrong way (or nowhere)
IDIOMS = (("{O} never disappoints", 2), ("{O} never fails to impress", 3),
          ("there is nothing wrong with {O}", 1), ("{O} is hard to dislike", 2),
          ("{O} could not have been better", 3), ("{O} could not have been worse", -3),
          ("{O} never impressed me", -2), ("there is nothing special about {O}", -1),
          ("{O} is hard to like", -2), ("{O} left a lot to be desired", -2))

POSITIVE_WORDS = frozenset(
    [w for w, v in GENERIC.items() if v > 0]
    + [w for asp in VENUE_ASPECTS + FILM_ASPECTS + BOOK_ASPECTS for w, v in asp[2].items() if v > 0]
    + [w for w, v in VERBS.items() if v > 0]
    + ["recommend", "recommended", "worth", "impress", "like", "better", "special", "best"])
NEGATIVE_WORDS = frozenset(
    [w for w, v in GENERIC.items() if v < 0]
    + [w for asp in VENUE_ASPECTS + FILM_ASPECTS + BOOK_ASPECTS for w, v in asp[2].items() if v < 0]
    + [w for w, v in VERBS.items() if v < 0]
    + ["disappoints", "dislike", "worse", "wrong", "regret", "waste", "avoid", "ruined",
       "complain", "complaints", "fault", "boring", "desired"]) - POSITIVE_WORDS


def sst5_label(score: float) -> int:
    """Fine-grained label of a score: <=-3 very negative, <=-0.75 negative, |s|<0.75 neutral,
    <3 positive, >=3 very positive."""
    if score <= -3:
        return 0
    if score <= -0.75:
        return 1
    if score < 0.75:
        return 2
    return 3 if score < 3 else 4


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


class _Review:
    """Builds one review about one object of the world for a wanted sign and strength."""

    def __init__(self, world: World, rng: random.Random):
        self.rng = r = rng
        kind = r.choices(("venue", "film", "book"), (6, 2, 2))[0]
        self.kind = kind
        self.used: set[str] = set()
        self.obj = r.choice(world.by_kind(kind))
        if kind == "venue":
            f = self.obj.facts
            dish = f["dish"].name
            self.aspects = VENUE_ASPECTS + ((f"the {dish}", dish.endswith("s") and
                                             not dish.endswith("ss"), VENUE_ASPECTS[0][2]),)
            self.noun = f["eatType"]
            self.verdicts = VENUE_VERDICTS
        else:
            self.aspects = FILM_ASPECTS if kind == "film" else BOOK_ASPECTS
            self.noun = "film" if kind == "film" else "book"
            self.verdicts = WORK_VERDICTS

    def intro(self) -> str:
        r, o = self.rng, self.obj
        if self.kind == "venue":
            area = "by the river" if o.facts["area"] == "riverside" else "in the city centre"
            return r.choice((f"We had dinner at {o.name} last {r.choice(DAYS)}.",
                             f"I went to {o.name} with {r.choice(COMPANY)}.",
                             f"{o.name} is {_a(o.facts['eatType'])} {area}.",
                             f"We tried {o.name}, near {o.facts['near'].name}."))
        if self.kind == "film":
            return r.choice((f"I watched {o.name} last {r.choice(DAYS)}.",
                             f"{o.name} was directed by {o.facts['director'].name}.",
                             f"I saw {o.name} with {r.choice(COMPANY)}."))
        return r.choice((f"I finally read {o.name} by {o.facts['author'].name}.",
                         f"{o.name} was written by {o.facts['author'].name}.",
                         f"I read {o.name} on holiday."))

    def clause(self, sign: int, strong: bool, idioms: bool = True) -> tuple[str, float]:
        """A clause whose value has `sign` (0: neutral); strong: |value| >= 2. `idioms=False`
        keeps to aspects (a distractor must not judge the whole object)."""
        r = self.rng
        # each aspect at most once per review ("the food was bad ... the food was great"
        # would contradict itself)
        free = [a for a in self.aspects if a[0] not in self.used] or list(self.aspects)
        noun_phrase, plural, adjs = r.choice(free)
        self.used.add(noun_phrase)
        be = "were" if plural else "was"
        if sign == 0:
            return r.choice(((f"{noun_phrase} {be} {r.choice(NEUTRAL)}", 0.0),
                             (f"{noun_phrase} {be} neither good nor bad", 0.0),
                             (f"{noun_phrase} {be} nothing special, but not bad either", 0.0)))
        pool = {**GENERIC, **adjs}
        form = r.choices(("plain", "neg", "anything", "verb", "idiom"),
                         (5, 3, 1, 2, idioms) if not strong else (6, 0, 1, 2, idioms))[0]
        if form == "plain":
            w, v = r.choice([(w, v) for w, v in pool.items() if _sign(v) == sign
                             and (abs(v) >= 2 if strong else abs(v) <= 2)])
            x = r.random()
            if strong and abs(v) == 2:
                return f"{noun_phrase} {be} {r.choice(INTENSIFIERS)} {w}", 1.5 * v
            if strong and x < 0.3:
                return f"{noun_phrase} {be} {r.choice(EXTREME_INTENSIFIERS)} {w}", 1.5 * v
            if not strong and abs(v) == 2 and x < 0.5 and (v < 0 or w not in GENERIC):
                dim = DIMINISHERS_NEG if v < 0 else DIMINISHERS_POS
                return f"{noun_phrase} {be} {r.choice(dim)} {w}", 0.5 * v
            if not strong and abs(v) == 1 and x < 0.25:
                return f"{noun_phrase} {be} {r.choice(INTENSIFIERS)} {w}", 1.5 * v
            return f"{noun_phrase} {be} {w}", float(v)
        if form == "neg":          # not + an adjective of the opposite sign -> weak `sign`
            w, v = r.choice([(w, v) for w, v in pool.items() if _sign(v) == -sign])
            neg = r.choice((f"{be} not", f"{be}n't") + ((f"{be} not very",) if abs(v) == 1 else ()))
            return f"{noun_phrase} {neg} {w}", -sign * (0.5 if abs(v) == 3 else 1.0)
        if form == "anything":     # "anything but" + opposite adjective -> flipped
            w, v = r.choice([(w, v) for w, v in pool.items() if _sign(v) == -sign
                             and (abs(v) == 2 if strong else abs(v) <= 2)])
            return f"{noun_phrase} {be} anything but {w}", float(-v)
        if form == "verb":
            if not strong and r.random() < 0.3:   # "I did not enjoy" mildly negative
                return ((f"I did not enjoy {noun_phrase}", -1.0) if sign < 0 else
                        (f"I did not mind {noun_phrase}", 1.0))
            w, v = r.choice([(w, v) for w, v in VERBS.items() if _sign(v) == sign
                             and (abs(v) >= 2 if strong else abs(v) <= 2)])
            return f"I {w} {noun_phrase}", float(v)
        cands = [(t, v) for t, v in IDIOMS if _sign(v) == sign
                 and (abs(v) >= 2 if strong else abs(v) <= 2)]
        if not cands:
            return self.clause(sign, strong)
        t, v = r.choice(cands)
        return t.format(O=self.obj.name if r.random() < 0.5 else f"this {self.noun}"), float(v)

    def sentence(self, sign: int, strong: bool) -> tuple[str, float]:
        """A sentence: one clause, two agreeing clauses, or a contrast where the
        label-carrying clause wins."""
        r = self.rng
        shape = r.choices(("one", "and", "but", "although"), (5, 2, 2.5, 1.5))[0]
        if sign == 0:
            if shape == "but":        # two weak opposite clauses that cancel
                a, va = self.clause(1, False)
                b, vb = self.clause(-1, False)
                if abs(va + vb) < 0.75 and abs(vb) <= 1 and abs(va) <= 1:
                    return _cap(f"{a}, and {b}") + ".", va + vb
            c, v = self.clause(0, False)
            return _cap(c) + ".", v
        c1, v1 = self.clause(sign, strong)
        if shape == "one":
            return _cap(c1) + ".", v1
        if shape == "and":
            c2, v2 = self.clause(sign, False)
            return _cap(f"{c1} and {c2}") + ".", v1 + v2
        d, vd = self.clause(-sign, r.random() < 0.5, idioms=False)   # the distractor loses
        if abs(v1) < 1:
            return _cap(c1) + ".", v1
        if shape == "but":
            joiner = r.choice((", but ", ". However, ", ", but in the end "))
            return _cap(d) + joiner + c1 + ".", v1 + 0.2 * vd
        if r.random() < 0.5:
            return f"Although {d}, {c1}.", v1 + 0.2 * vd
        return _cap(f"{c1}, although {d}") + ".", v1 + 0.2 * vd

    def review(self, sign: int, strong: bool, intro: bool | None = None) -> tuple[str, float]:
        """(text, score): 1-3 sentences, sometimes opening with a neutral introduction
        (`intro=False`: never). The score sums the sentences, a final verdict counts 1.5x."""
        r = self.rng
        parts, score = [], 0.0
        n = r.choices((1, 2, 3), (55, 30, 15))[0]
        if n >= 2 and intro is not False and r.random() < 0.5:
            parts.append(self.intro())
            n -= 1
        for i in range(n):
            if i == n - 1 and i > 0 and sign != 0 and r.random() < 0.6:
                t, v = r.choice([x for x in self.verdicts if _sign(x[1]) == sign])
                parts.append(t)
                score += 1.5 * v
            else:
                t, v = self.sentence(sign, strong if i == 0 else False)
                parts.append(t)
                score += v
        return " ".join(parts), score


DAYS = ("Monday", "Tuesday", "Friday", "Saturday", "Sunday", "week", "month")
COMPANY = ("friends", "my family", "my partner", "colleagues", "my parents")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_sentiment(world: World, seed: int, sizes=(5000, 500, 500), fine: bool = False,
                   seen: set | None = None, stream: str = "sst"
                   ) -> dict[str, list[tuple[str, int]]]:
    """Train/dev/test lists of (text, label), exactly balanced.

    fine=False: SST-2, labels 0/1 (strong and mild reviews, no neutral ones).
    fine=True: SST-5, labels 0-4 via `sst5_label(score)`, an equal number per class.
    `seen` (a set of texts) is shared between calls so that no text appears twice anywhere.
    """
    rng = random.Random(f"minipeft-{stream}:{'5' if fine else '2'}:{seed}")
    seen = set() if seen is None else seen
    classes = 5 if fine else 2
    out = {}
    for split, n in zip(("train", "dev", "test"), sizes):
        quota = [n // classes + (1 if c < n % classes else 0) for c in range(classes)]
        rows = []
        while any(quota):
            label = rng.choice([c for c in range(classes) if quota[c]])
            if fine:
                sign, strong = ((-1, True), (-1, False), (0, False), (1, False), (1, True))[label]
            else:
                sign, strong = (1 if label else -1), rng.random() < 0.5
            text, score = _Review(world, rng).review(sign, strong)
            ok = sst5_label(score) == label if fine else (_sign(score) == sign and
                                                          abs(score) >= 0.75)
            if not ok or text in seen:
                continue
            seen.add(text)
            rows.append((text, label))
            quota[label] -= 1
        out[split] = rows
    return out


def keyword_baseline(text: str) -> int:
    """Count positive minus negative words (no composition at all): 1 if >= 0 else 0."""
    words = [w.strip(".,!?'").lower() for w in text.split()]
    s = sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)
    return 1 if s >= 0 else 0
