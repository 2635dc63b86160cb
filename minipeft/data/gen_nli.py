"""MNLI-style natural language inference whose labels follow from the world's facts.

What it produces: (genre, premise, hypothesis, label) rows, three hypotheses per premise, one
per label, so the labels are exactly balanced:

    premise:    "The Golden Eagle is a cheap pub by the riverside. It opened in 2003."
    entailment: "The Golden Eagle is not a coffee shop."   (a pub is not a coffee shop)
    neutral:    "The Golden Eagle is family-friendly."     (the premise does not say)
    contradiction: "The Golden Eagle opened after 2010."

Why: MNLI is the GLUE task of the LoRA/adapter tables and of PET's few-shot results. The label
here is decided by what the premise states, never by world knowledge: a neutral hypothesis about
an unmentioned attribute is true in the world half of the time and false the other half, so a
model that memorised the world from the pretraining corpus cannot shortcut the task.

Hypothesis types (each label has negated and non-negated ones, so "not" does not give the
label away): restating a fact in other words; denying another value of a single-valued
attribute ("not a coffee shop"); a hypernym ("serves Asian food"); a comparison with a year or
a number ("opened before 2010", "more than 100,000 people"); a conjunction of two facts;
a wrong value or the denial of a stated fact; an unmentioned attribute; a fact about an entity
the premise only names; an unverifiable claim ("is busy at weekends").
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from . import gen_names as N
from .gen_e2e import PRICE_FORMS, RATING_FORMS, realise
from .world import HOME_CITY, Entity, World

HYPERNYM = {"Chinese": "Asian", "Japanese": "Asian", "Indian": "Asian", "French": "European",
            "Italian": "European", "English": "European"}
GENRES = ("travel", "telephone", "biography", "geography", "culture")


@dataclass
class Attr:
    """How to talk about one attribute. `say(s, v)` / `deny(s, v)` build a clause with
    subject s and value v; `domain(entity)` lists the values it could take instead (None:
    the attribute is not single-valued, so a different value is no contradiction);
    `numeric`: the value is a number that comparisons can be made with."""
    say: Callable[[str, object, random.Random], str]
    deny: Callable[[str, object, random.Random], str]
    domain: Callable[[World, Entity], list] | None = None
    numeric: str | None = None         # "year" or "count"


def _pick(*options):
    return lambda s, v, r: r.choice(options).format(s=s, v=v)


def _food(v):
    return "fast food" if v == "Fast food" else f"{v} food"


PRICE_WORD = ("cheap", "moderately priced", "expensive")
RATING_WORD = ("low", "average", "high")
VENUE = {
    "eatType": Attr(_pick("{s} is a {v}", "{s} is a kind of {v}"),
                    _pick("{s} is not a {v}", "{s} isn't a {v}"),
                    lambda w, e: list(N.EAT_TYPES)),
    "food": Attr(lambda s, v, r: r.choice(("{s} serves {f}", "{s} is a place for {f}",
                                           "you can eat {f} at {s}")).format(s=s, f=_food(v)),
                 lambda s, v, r: r.choice(("{s} does not serve {f}",
                                           "you cannot get {f} at {s}")).format(s=s, f=_food(v)),
                 lambda w, e: list(N.FOODS)),
    "priceRange": Attr(lambda s, v, r: f"{s} is {PRICE_WORD[v]}",
                       lambda s, v, r: f"{s} is not {PRICE_WORD[v]}", lambda w, e: [0, 1, 2]),
    "customerRating": Attr(lambda s, v, r: f"{s} has {_a(RATING_WORD[v])} customer rating",
                           lambda s, v, r: f"{s} does not have {_a(RATING_WORD[v])} customer "
                                           "rating", lambda w, e: [0, 1, 2]),
    "area": Attr(lambda s, v, r: f"{s} is {_area(v, r)}",
                 lambda s, v, r: f"{s} is not {_area(v, r)}", lambda w, e: list(N.AREAS)),
    "familyFriendly": Attr(lambda s, v, r: _family(s, v, r), lambda s, v, r: _family(s, not v, r),
                           lambda w, e: [True, False]),
    "near": Attr(_pick("{s} is near {v}", "{s} is close to {v}"),
                 _pick("{s} is not near {v}", "{s} is far from {v}")),
    "opened": Attr(_pick("{s} opened in {v}", "{s} has been open since {v}"),
                   _pick("{s} did not open in {v}"), lambda w, e: None, numeric="year"),
    "owner": Attr(_pick("{s} is run by {v}", "{v} runs {s}"),
                  _pick("{s} is not run by {v}", "{v} does not run {s}"),
                  lambda w, e: [v.facts["owner"].name for v in w.by_kind("venue")[:60]]),
}
PERSON = {
    "birthPlace": Attr(_pick("{s} was born in {v}", "{s} is a native of {v}"),
                       _pick("{s} was not born in {v}"),
                       lambda w, e: [c.name for c in w.by_kind("city")[:30]]),
    "birthYear": Attr(_pick("{s} was born in {v}"), _pick("{s} was not born in {v}"),
                      lambda w, e: None, numeric="year"),
    "occupation": Attr(lambda s, v, r: f"{s} is {_a(v)}", lambda s, v, r: f"{s} is not {_a(v)}",
                       lambda w, e: ["politician", "astronaut", "musician", "footballer",
                                     "writer", "architect", "chef"]),
    "nationality": Attr(lambda s, v, r: f"{s} is {v.facts['demonym']}",
                        lambda s, v, r: f"{s} is not {v.facts['demonym']}",
                        lambda w, e: w.by_kind("country")),
    "almaMater": Attr(_pick("{s} studied at {v}", "{s} went to {v}"),
                      _pick("{s} never studied at {v}", "{s} did not study at {v}")),
    "party": Attr(_pick("{s} is a member of the {v}", "{s} belongs to the {v}"),
                  _pick("{s} is not a member of the {v}"),
                  lambda w, e: [p.name for p in w.by_kind("party")]),
    "club": Attr(_pick("{s} plays for {v}"), _pick("{s} does not play for {v}"),
                 lambda w, e: [t.name for t in w.by_kind("team")]),
}
CITY = {
    "country": Attr(_pick("{s} is in {v}", "{s} is a city in {v}"),
                    _pick("{s} is not in {v}"), lambda w, e: [c.name for c in
                                                              w.by_kind("country")]),
    "populationTotal": Attr(_pick("{s} has {v} inhabitants", "{v} people live in {s}"),
                            _pick("{s} does not have {v} inhabitants"), lambda w, e: None,
                            numeric="count"),
    "foundingYear": Attr(_pick("{s} was founded in {v}"), _pick("{s} was not founded in {v}"),
                         lambda w, e: None, numeric="year"),
    "river": Attr(_pick("{s} lies on the {v}", "the {v} flows through {s}"),
                  _pick("{s} does not lie on the {v}"),
                  lambda w, e: sorted({c.facts["river"] for c in w.by_kind("city")})),
    "leaderName": Attr(_pick("the mayor of {s} is {v}", "{v} is the mayor of {s}"),
                       _pick("{v} is not the mayor of {s}"),
                       lambda w, e: [p.name for p in w.by_category("Politician")]),
}
WORK = {
    "author": Attr(_pick("{s} was written by {v}", "{v} wrote {s}"),
                   _pick("{s} was not written by {v}", "{v} did not write {s}"),
                   lambda w, e: [p.facts["author"].name for p in w.by_kind("book")]),
    "director": Attr(_pick("{s} was directed by {v}", "{v} directed {s}"),
                     _pick("{s} was not directed by {v}"),
                     lambda w, e: [p.facts["director"].name for p in w.by_kind("film")]),
    "year": Attr(_pick("{s} came out in {v}", "{s} first appeared in {v}"),
                 _pick("{s} did not come out in {v}"), lambda w, e: None, numeric="year"),
    "genre": Attr(lambda s, v, r: f"{s} is {_a(v)}", lambda s, v, r: f"{s} is not {_a(v)}",
                  lambda w, e: list(N.BOOK_GENRES if e.kind == "book" else N.FILM_GENRES)),
}
UNVERIFIABLE = {
    "venue": ("{s} is the most popular {t} in " + HOME_CITY, "{s} is busy at weekends",
              "{s} will open a second branch next year", "many students eat at {s}",
              "{s} has a garden", "{s} plays live music on Fridays", "{s} is open on Sundays",
              "{s} has won an award"),
    "person": ("{s} has two children", "{s} speaks three languages", "{s} enjoys sailing",
               "{s} lives in a flat in the city centre", "{s} has written a memoir"),
    "city": ("{s} is popular with tourists", "{s} has a famous cathedral",
             "{s} gets a lot of rain", "{s} is growing quickly"),
    "work": ("{s} was a commercial success", "{s} won a prize", "{s} was widely translated",
             "critics loved {s}"),
}

UNVERIFIABLE_NOT = {
    "venue": ("{s} is not busy at weekends", "{s} does not have a garden",
              "{s} is not open on Sundays", "{s} has never won an award"),
    "person": ("{s} does not speak French", "{s} has never been abroad",
               "{s} does not own a car"),
    "city": ("{s} is not popular with tourists", "{s} does not have a cathedral"),
    "work": ("{s} was not a commercial success", "{s} never won a prize"),
}


def _a(v: str) -> str:
    return ("an " if v[:1].lower() in "aeiou" else "a ") + v


def _area(v: str, r: random.Random) -> str:
    return r.choice(("in the city centre", "in the centre of town")) if v == "city centre" \
        else r.choice(("by the river", "in the riverside area"))


def _family(s: str, yes: bool, r: random.Random) -> str:
    if yes:
        return r.choice((f"{s} is family-friendly", f"children are welcome at {s}"))
    return r.choice((f"{s} is not family-friendly", f"children are not welcome at {s}"))


def _facts(e: Entity) -> tuple[dict, dict]:
    """The NLI attributes of an entity: (attribute table, attribute -> value)."""
    f = e.facts
    if e.kind == "venue":
        vals = {k: f[k] for k in ("eatType", "food", "priceRange", "customerRating", "area",
                                  "familyFriendly", "opened")}
        vals.update(near=f["near"].name, owner=f["owner"].name)
        return VENUE, vals
    if e.kind == "person":
        vals = {"birthPlace": f["birthPlace"].name, "birthYear": f["birthDate"].year,
                "occupation": f["occupation"], "nationality": f["nationality"]}
        for k in ("almaMater", "party", "club"):
            if k in f:
                vals[k] = f[k].name
        return PERSON, vals
    if e.kind == "city":
        return CITY, {"country": f["country"].name, "populationTotal": f["populationTotal"],
                      "foundingYear": f["foundingYear"], "river": f["river"],
                      "leaderName": f["leaderName"].name}
    key = "author" if e.kind == "book" else "director"
    return WORK, {key: f[key].name, "genre": f["genre"],
                  "year": f["publicationYear" if e.kind == "book" else "releaseYear"]}


def _num(v: int, kind: str) -> str:
    return f"{v:,}" if kind == "count" else str(v)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Pair:
    """Builds one premise and its three hypotheses for one entity."""

    def __init__(self, world: World, rng: random.Random, genre: str):
        self.w, self.r, self.genre = world, rng, genre
        kind = {"travel": "venue", "telephone": rng.choice(("venue", "person")),
                "biography": "person", "geography": "city",
                "culture": rng.choice(("book", "film"))}[genre]
        pool = world.by_kind(kind)
        if kind == "person":
            pool = [p for p in pool if p.category or p.facts["occupation"] in ("writer", "chef")]
        self.e = rng.choice(pool)
        self.table, self.values = _facts(self.e)
        keys = list(self.values)
        k = rng.randint(2, min(4, len(keys) - 1))
        self.stated = rng.sample(keys, k)
        self.unstated = [a for a in keys if a not in self.stated]

    # -- premise ------------------------------------------------------------------------------
    def premise(self) -> str:
        r, e, s = self.r, self.e, self.e.name
        vals = self.values
        if self.e.kind == "venue" and self.genre == "travel":
            mr = {"name": s}
            extra = []
            for a in self.stated:
                if a in ("opened", "owner"):
                    extra.append(a)
                    continue
                v = vals[a]
                mr[{"customerRating": "customer rating"}.get(a, a)] = (
                    PRICE_FORMS[v][0] if a == "priceRange" else RATING_FORMS[v][0]
                    if a == "customerRating" else ("yes" if v else "no")
                    if a == "familyFriendly" else v)
            text = realise(mr, r) if len(mr) > 1 else ""
            for a in extra:
                text += " " + _cap(self.table[a].say("it" if text else s, vals[a], r)) + "."
            return text.strip()
        # later clauses say "she"/"he" for people (their templates all start with the
        # subject); other entities are named again
        clauses = [self.table[a].say(s if i == 0 or e.kind != "person" else e.pronoun,
                                     self._v(a), r) for i, a in enumerate(self.stated)]
        if self.genre == "telephone":
            lead = r.choice(("yeah", "well", "oh", "you know"))
            body = ", and ".join(clauses)
            return f"{lead}, {body}, {r.choice(('I think', 'as far as I know', 'so'))}."
        if len(clauses) > 2 and e.kind == "person" and r.random() < 0.6:
            return (_cap(clauses[0]) + ". " + _cap(" and ".join(clauses[1:])) + ".")
        return ". ".join(_cap(c) for c in clauses) + "."

    def _v(self, a):
        v = self.values[a]
        n = self.table[a].numeric
        return _num(v, n) if n else v

    # -- hypotheses -----------------------------------------------------------------------
    def _other(self, a):
        dom = self.table[a].domain
        vals = dom(self.w, self.e) if dom else None
        if not vals:
            return None
        true = self.values[a]
        name = lambda x: x.name if isinstance(x, Entity) else x  # noqa: E731
        others = [x for x in vals if name(x) != name(true)]
        return self.r.choice(others) if others else None

    def hypothesis(self, label: str) -> str | None:
        r, s = self.r, self.e.name
        a = r.choice(self.stated)
        spec, v = self.table[a], self._v(a)
        kind = r.random()
        if label == "entailment":
            if spec.numeric and kind < 0.5:
                raw = self.values[a]
                d = r.choice((1, 3, 5, 10)) if spec.numeric == "year" else max(1, raw // 4)
                if r.random() < 0.5:
                    return self._compare(a, raw + d, "before")
                return self._compare(a, raw - d, "after")
            if a == "food" and v in HYPERNYM and kind < 0.4:
                return f"{s} serves {HYPERNYM[v]} food"
            if kind < 0.35 and (other := self._other(a)) is not None:
                return spec.deny(s, other, r)
            if kind < 0.65 and len(self.stated) >= 2:
                b = r.choice([x for x in self.stated if x != a])
                return f"{spec.say(s, v, r)} and {self.table[b].say(s, self._v(b), r)}"
            return spec.say(s, v, r)
        if label == "contradiction":
            if spec.numeric and kind < 0.5:
                raw = self.values[a]
                d = r.choice((1, 3, 5, 10)) if spec.numeric == "year" else max(1, raw // 4)
                if r.random() < 0.5:
                    return self._compare(a, raw - d, "before")
                return self._compare(a, raw + d, "after")
            if kind < 0.5 and (other := self._other(a)) is not None:
                return spec.say(s, other, r)
            if kind < 0.7 and len(self.stated) >= 2 and (other := self._other(a)) is not None:
                b = r.choice([x for x in self.stated if x != a])
                return f"{self.table[b].say(s, self._v(b), r)} and {spec.say(s, other, r)}"
            return spec.deny(s, v, r)
        # neutral
        if self.unstated and kind < 0.55:
            a = r.choice(self.unstated)
            spec = self.table[a]
            if spec.numeric:
                raw = self.values[a]
                return self._compare(a, raw + r.choice((-7, -2, 2, 7)) * (1 if spec.numeric ==
                                     "year" else max(1, raw // 10)), r.choice(("before", "after")))
            other = self._other(a)
            value = self._v(a) if (other is None or r.random() < 0.5) else other
            return (spec.say if r.random() < 0.5 else spec.deny)(s, value, r)
        if self.e.kind == "venue" and "near" in self.stated and kind < 0.75:
            near = self.w.get(self.values["near"])
            t, vals = _facts(near)
            b = r.choice(["eatType", "food", "area", "priceRange"])
            return (t[b].say if r.random() < 0.6 else t[b].deny)(near.name, vals[b], r)
        key = {"venue": "venue", "person": "person", "city": "city"}.get(self.e.kind, "work")
        t = self.e.facts.get("eatType", "place")
        if r.random() < 0.3:
            return r.choice(UNVERIFIABLE_NOT[key]).format(s=s, t=t)
        return r.choice(UNVERIFIABLE[key]).format(s=s, t=t)

    def _compare(self, a: str, bound: int, direction: str) -> str:
        s, kind = self.e.name, self.table[a].numeric
        if kind == "count":
            word = "more than" if direction == "after" else "fewer than"
            return f"{word} {_num(bound, 'count')} people live in {s}"
        verb = {"opened": "opened", "birthYear": "was born", "foundingYear": "was founded",
                "year": "came out"}[a]
        return f"{s} {verb} {direction} {bound}"


def make_mnli(world: World, seed: int, sizes=(6000, 600, 600)) -> dict[str, list[tuple]]:
    """Train/dev_matched/test lists of (index, genre, sentence1, sentence2, gold_label).

    Each premise gets one hypothesis per label (so every split is exactly balanced), premises
    are distinct across splits, and rows are shuffled within a split.
    """
    rng = random.Random(f"minipeft-mnli:{seed}")
    premises: set[str] = set()
    out = {}
    for split, n in zip(("train", "dev_matched", "test"), sizes):
        rows = []
        while len(rows) < n:
            genre = GENRES[len(rows) // 3 % len(GENRES)]
            pair = _Pair(world, rng, genre)
            p = pair.premise()
            if p in premises:
                continue
            hyps = []
            for label in ("entailment", "neutral", "contradiction"):
                for _ in range(10):
                    h = pair.hypothesis(label)
                    if h and _cap(h) + "." not in [x for x, _ in hyps]:
                        break
                hyps.append((_cap(h) + ".", label))
            premises.add(p)
            rows += [(genre, p, h, label) for h, label in hyps]
        rows = rows[:n]
        rng.shuffle(rows)
        out[split] = [(i, g, p, h, lab) for i, (g, p, h, lab) in enumerate(rows)]
    return out

