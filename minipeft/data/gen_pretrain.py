"""The pretraining corpus: plain English prose about the world, in many styles.

What it produces: documents (one paragraph each) of guidebook entries, short biographies,
encyclopedia-style descriptions, local news, small dialogues, reviews and French lessons, all
stating facts of the world (`world.py`).

Why: PEFT adapts a model that already knows the language and the domain. A tiny model
pretrained on this corpus learns the vocabulary of the tasks and the facts about the world's
venues, people and places, and the downstream tasks ask about the same entities. It is the
small-scale stand-in for GPT-2's WebText.

Rules that keep evaluation honest:
- no task formats: no `name[...]` MRs, no `s | p | o` triples, no tabs or labels, no "=>";
- the prose uses its own templates (a guidebook does not read like an E2E reference), and
  `make_pretrain` removes every sentence that contains a sentence of a dev or test item of
  any task (the caller passes those sentences in `banned`).
"""
from __future__ import annotations

import random
import re

from .gen_e2e import realise, sample_mr
from .gen_nli import GENRES as NLI_GENRES
from .gen_nli import _Pair
from .gen_sentiment import _Review, sst5_label
from .gen_translation import LEXICON
from .gen_webnlg import lexicalise, sample_entry
from .world import HOME_CITY, SEEN_CATEGORIES, UNSEEN_CATEGORIES, Entity, World

ALL_CATEGORIES = SEEN_CATEGORIES + UNSEEN_CATEGORIES
# the verdict in the words a prompt asks for (SST-5's five levels; SST-2 prompts use the ends)
VERDICT_WORDS = ("terrible", "bad", "okay", "good", "great")
VERDICT_FORMS = ("All in all, it was {w}.", "All in all, it was {w}.", "Overall, it was {w}.",
                 "In short, it was {w}.", "In a word: {w}.", "My verdict: {w}.")
# how prose says that one statement follows from, contradicts, or leaves open another
INFERENCE_FORMS = {
    "entailment": ("In other words, {h}.", "So {h}.", "This means that {h}.",
                   "It follows that {h}."),
    "contradiction": ("Some people say that {h}, but that is wrong.",
                      "So it is false that {h}.", "Anyone who claims that {h} is mistaken.",
                      "This rules out that {h}."),
    "neutral": ("Whether {h} is not said.", "That does not tell us whether {h}.",
                "It may or may not be true that {h}.", "Nothing here says whether {h}."),
}
INLINE_FRENCH = ("{who} asked for {en}, which the French call {fr}.",
                 "On the menu, {en} was written as {fr}.",
                 "The sign said {fr}, the French word for {en}.",
                 "{who} pointed at the {en} and said {fr}, as the French do.",
                 "In the shop, {en} was labelled {fr}.")

PRICE = (("It is one of the cheaper places in town, with most meals under twenty pounds.",
          "Prices are low.", "You can eat well there for less than twenty pounds."),
         ("Prices are moderate, about twenty to twenty-five pounds a head.",
          "A meal costs a moderate amount.", "It is neither cheap nor expensive."),
         ("It is not cheap: most meals cost more than thirty pounds.",
          "Prices are high.", "Expect to pay over thirty pounds each."))
RATING = (("Its customers have given it poor marks.", "Reviews of the place are mostly low."),
          ("Its customer ratings are about average.", "Diners give it middling marks."),
          ("Diners rate it very highly.", "It has some of the best customer ratings in town."))
FAMILY = (("It is an adults-only place.", "Children are not admitted."),
          ("Children are welcome.", "Families with children are welcome, and there is a "
                                    "menu for kids."))
AREA = {"riverside": ("by the river", "on the riverside", "on the banks of the " + "Wend"),
        "city centre": ("in the city centre", "in the middle of town", "in the town centre")}
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (at . ! ? followed by a space and a capital, a digit or a quote:
    where mentions_banned looks for a banned sentence to start)."""
    return [s for s in SPLIT.split(text.strip()) if s]


def mentions_banned(sentence: str, banned: set[str]) -> bool:
    """True if `sentence` ends with a banned sentence that starts at one of its words.

    This finds every occurrence of a banned sentence inside the corpus: a banned sentence ends
    with . ! or ?, which in this corpus only occur at the end of a sentence, so an occurrence
    is a suffix of a corpus sentence; and it starts with a capital, a digit or a quote, so only
    the suffixes starting at such a word need to be looked up.
    ("The food was great, but I hated the service." hides the item "I hated the service.")
    """
    if sentence in banned:
        return True
    for i in range(1, len(sentence)):
        if sentence[i - 1] == " " and (sentence[i].isupper() or sentence[i].isdigit()
                                       or sentence[i] in "\"'") and sentence[i:] in banned:
            return True
    return False


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _food(v: str) -> str:
    return "fast food" if v == "Fast food" else f"{v} food"


class _Writer:
    """Writes documents about the world with one random stream."""

    def __init__(self, world: World, rng: random.Random, banned: frozenset[str] = frozenset()):
        self.w, self.r = world, rng
        self.banned = banned                       # dev/test sentences a document must not hold
        self.lexicon: list[tuple[str, str]] = []   # pairs not yet used in this pass

    # -- venues --------------------------------------------------------------------------------
    def venue(self, v: Entity) -> str:
        r, f = self.r, v.facts
        area = r.choice(AREA[f["area"]])
        style = r.randrange(4)
        if style == 0:
            return " ".join([
                f"{v.name} is {_a(f['food'] if f['food'] != 'Fast food' else 'fast food')} "
                f"{f['eatType']} on {f['street']} in {HOME_CITY}, {area}, a short walk from "
                f"{f['near'].name}.",
                r.choice((f"{f['owner'].name} opened it in {f['opened']}.",
                          f"It has been run by {f['owner'].name} since {f['opened']}.")),
                r.choice((f"The kitchen is known for its {f['dish'].name}.",
                          f"Regulars recommend the {f['dish'].name}.")),
                r.choice(PRICE[f["priceRange"]]), r.choice(RATING[f["customerRating"]]),
                r.choice(FAMILY[f["familyFriendly"]])])
        if style == 1:
            return " ".join([
                f"In {f['opened']}, {f['owner'].name} took over an empty shop on {f['street']} "
                f"and turned it into {v.name}.",
                f"The {f['eatType']} serves {_food(f['food'])}, and the {f['dish'].name} soon "
                "became famous.",
                f"It sits {area}, close to {f['near'].name}.",
                r.choice(PRICE[f["priceRange"]]), r.choice(FAMILY[f["familyFriendly"]]),
                r.choice(RATING[f["customerRating"]])])
        if style == 2:
            p1, p2 = r.sample(self.w.by_category("Politician") + self.w.by_kind("person")[:80], 2)
            return " ".join([
                f"\"Where should we eat tonight?\" asked {p1.name.split()[0]}.",
                f"\"How about {v.name}?\" said {p2.name.split()[0]}.",
                f"\"Is that the {f['eatType']} near {f['near'].name}?\"",
                f"\"Yes, the one {area}. They do {_food(f['food'])}.\"",
                r.choice(("\"Is it expensive?\"", "\"What does it cost?\"")),
                "\"" + r.choice(PRICE[f["priceRange"]]) + "\"",
                "\"And can we bring the children?\"",
                "\"" + ("Yes, children are welcome.\"" if f["familyFriendly"] else
                        "No, it is for adults only.\"")])
        # a local news item
        years = 2024 - f["opened"]
        age = f"celebrates {years} years" if years > 1 else "opened only last year"
        food = "fast food" if f["food"] == "Fast food" else f["food"]
        return " ".join([
            f"{HOME_CITY} news. {v.name}, the {food} {f['eatType']} {area}, {age}.",
            f"Owner {f['owner'].name} said the {f['dish'].name} is still the most popular "
            "dish on the menu.",
            r.choice(RATING[f["customerRating"]]), r.choice(FAMILY[f["familyFriendly"]])])

    def venue_list(self) -> str:
        r = self.r
        key = r.choice(("area", "food", "eatType"))
        venues = self.w.by_kind("venue")
        value = r.choice(venues).facts[key]
        pick = r.sample([v for v in venues if v.facts[key] == value], 4)
        head = (f"Places to eat {AREA[value][0]} in {HOME_CITY}" if key == "area" else
                f"Where to find {_food(value)} in {HOME_CITY}" if key == "food" else
                f"Some of the {value}s of {HOME_CITY}")
        items = []
        for v in pick:
            f = v.facts
            items.append(f"{v.name}, {_a(f['eatType'])} near {f['near'].name} that serves "
                         f"{_food(f['food'])}" if key != "food" else
                         f"{v.name}, {_a(f['eatType'])} {AREA[f['area']][0]}")
        return f"{head}: " + "; ".join(items) + "."

    # -- people --------------------------------------------------------------------------------
    def person(self, p: Entity) -> str:
        r, f = self.r, p.facts
        he, his = p.pronoun.capitalize(), p.possessive
        born = r.choice((f"{p.name} was born on {f['birthDate'].long()} in {f['birthPlace'].name}.",
                         f"{p.name} (born {f['birthDate'].long()}, {f['birthPlace'].name}) is "
                         f"{_a(f['nationality'].facts['demonym'])} {f['occupation']}."))
        out = [born]
        if not born.endswith(f"{f['occupation']}."):
            out.append(f"{he} is {_a(f['nationality'].facts['demonym'])} {f['occupation']}.")
        if "almaMater" in f:
            out.append(r.choice((f"{he} studied at {f['almaMater'].name}.",
                                 f"{he} is a graduate of {f['almaMater'].name}.")))
        occ = f["occupation"]
        if occ == "astronaut":
            out.append(f"Before {his} selection by the {f['selectedBy'].name} in "
                       f"{f['selectionYear']}, {p.pronoun} worked as {_a(f['background'])}.")
            out.append(f"{he} flew on the {f['mission']} mission and is now {f['status']}.")
        elif occ == "politician":
            out.append(f"A member of the {f['party'].name}, {p.pronoun} has served as "
                       f"{f['office']} since {f['inOfficeSince']}.")
            led = [c.name for c in self.w.by_kind("city") if c.facts["leaderName"] is p]
            if led:
                out.append(f"{he} is also the mayor of {' and '.join(led[:2])}.")
            if "successor" in f:
                out.append(f"{f['successor'].name} later followed {p.name} in that office.")
        elif occ == "musician":
            out.append(f"{he} plays {f['genre']} on the {f['instrument']}, has performed with "
                       f"{f['associatedBand'].name} and records for {f['recordLabel'].name}.")
            out.append(f"{his.capitalize()} career began in {f['activeYearsStartYear']}.")
        elif occ == "footballer":
            out.append(f"{he} plays as {_a(f['position'])} for {f['club'].name} and is "
                       f"{f['height'].text()} tall.")
        elif occ == "writer":
            books = [b for b in self.w.by_kind("book") if b.facts["author"] is p]
            if books:
                out.append(f"{he} wrote " + ", ".join(
                    f"{b.name} ({b.facts['publicationYear']})" for b in books[:3]) + ".")
        elif occ == "chef":
            runs = [v for v in self.w.by_kind("venue") if v.facts["owner"] is p]
            if runs:
                out.append(f"{he} runs {runs[0].name}, {_a(runs[0].facts['eatType'])} in "
                           f"{HOME_CITY}.")
        elif occ == "film director":
            films = [x for x in self.w.by_kind("film") if x.facts["director"] is p]
            if films:
                out.append(f"{he} directed " + " and ".join(x.name for x in films[:2]) + ".")
        elif occ == "architect":
            bs = [x for x in self.w.by_kind("building") if x.facts["architect"] is p]
            if bs:
                out.append(f"{he} designed {bs[0].name} in {bs[0].facts['location'].name}.")
        elif occ == "astronomer":
            bs = [x for x in self.w.by_kind("body") if x.facts["discoverer"] is p]
            if bs:
                out.append(f"{he} discovered the asteroid {bs[0].name} in "
                           f"{bs[0].facts['discovered'].year}.")
        elif occ == "football manager":
            ts = [x for x in self.w.by_kind("team") if x.facts["manager"] is p]
            if ts:
                out.append(f"{he} manages {ts[0].name}.")
        return " ".join(out)

    # -- places and things -----------------------------------------------------------------------
    def thing(self, e: Entity) -> str:
        f, n = e.facts, e.name
        k = e.kind
        if k == "city":
            s = [f"{n} is a city in {f['country'].name}, in the {f['region']}.",
                 f"It lies on the {f['river']} and has about {f['populationTotal']:,} inhabitants.",
                 f"The city was founded in {f['foundingYear']}, and its mayor is "
                 f"{f['leaderName'].name}."]
            here = [x.name for x in self.w.entities if x.facts.get("cityServed") is e
                    or x.facts.get("city") is e and x.kind in ("university", "team")]
            if here:
                s.append(f"{n} is home to {' and '.join(here[:3])}.")
            return " ".join(s)
        if k == "country":
            return (f"{n} is a country with its capital at {f['capital'].name}. Its people are "
                    f"called {f['demonym']}s, they speak {f['language']} and they pay with the "
                    f"{f['currency']}. The country is led by {f['leader'].name}.")
        if k == "airport":
            return (f"{n} is the airport of {f['cityServed'].name}, in {f['country'].name}. "
                    f"It lies {f['elevationAboveTheSeaLevel'].text()} above sea level, and its "
                    f"runway, {f['runwayName']}, is {f['runwayLength'].text()} long. "
                    f"{f['operatingOrganisation'].name} runs the airport, whose code is "
                    f"{f['iataLocationIdentifier']}.")
        if k == "building":
            return (f"{n} stands in {f['location'].name}. The {f['architecturalStyle']} "
                    f"building was designed by {f['architect'].name} and built by "
                    f"{f['builder'].name} between {f['buildingStartDate']} and "
                    f"{f['completionDate']}. It has {f['floorCount']} floors, and "
                    f"{f['currentTenants'].name} occupies it today.")
        if k == "monument":
            d = f["dedicatedTo"]
            d = d.name if isinstance(d, Entity) else d
            return (f"{n} in {f['location'].name}, {f['country'].name}, is dedicated to {d}. "
                    f"{f['designer'].name} designed it in {f['material']}, and it was unveiled "
                    f"in {f['established']}.")
        if k == "team":
            return (f"{n} is a football club from {f['city'].name}, founded in "
                    f"{f['foundingYear']}. The team plays in the {f['league']} at "
                    f"{f['ground']}, which holds {f['capacity']:,} people. "
                    f"{f['manager'].name} is the manager and {f['captain'].name} the captain.")
        if k == "university":
            return (f"{n} is a university in {f['city'].name}, {f['country'].name}. It was "
                    f"founded in {f['established']} and has about {f['numberOfStudents']:,} "
                    "students.")
        if k == "company":
            return (f"{n} is a {f['industry']} company based in {f['location'].name}. "
                    f"Founded in {f['foundingYear']}, it makes {f['product']} and employs "
                    f"{f['numberOfEmployees']:,} people.")
        if k == "comics":
            return (f"{n} is a comic book hero created by {f['creator'].name} and published by "
                    f"{f['publisher'].name}. The character first appeared in "
                    f"{f['firstAppearanceYear']}; {e.name}'s secret identity is "
                    f"{f['alternativeName']}.")
        if k == "dish":
            if "region" not in f:
                served = f.get("servedAt")
                where = f" {served.name} is famous for it." if served else ""
                return f"The {n} is a classic of {_food(f['cuisine'])}.{where}"
            return (f"{n} is a {f['course']} from {f['region'].name} in {f['country'].name}. "
                    f"It is made mainly with {f['mainIngredient']}, and it also contains "
                    f"{f['ingredient']}.")
        if k == "book":
            s = (f"{n} is a {f['genre']} by {f['author'].name}, published by "
                 f"{f['publisher'].name} in {f['publicationYear']}. It has "
                 f"{f['numberOfPages']} pages and is written in {f['language']}.")
            if "followedBy" in f:
                s += f" The next book, {f['followedBy'].name}, followed it."
            return s
        if k == "film":
            return (f"{n} is a {f['genre']} directed by {f['director'].name} and released by "
                    f"{f['studio'].name} in {f['releaseYear']}. It was filmed in "
                    f"{f['filmedIn'].name} and runs for {f['runtime'].text()}.")
        if k == "body":
            return (f"The asteroid {n} was discovered by {f['discoverer'].name} on "
                    f"{f['discovered'].long()}. It circles the sun every "
                    f"{f['orbitalPeriod'].text()}, between {f['periapsis'].text()} and "
                    f"{f['apoapsis'].text()} from it, at about {f['averageTemperature'].text()}.")
        if k == "vehicle":
            return (f"The {n} is {_a(f['vehicleType'])} made by {f['manufacturer'].name} in "
                    f"{f['countryOrigin'].name} since {f['productionStartYear']}. It is "
                    f"{f['length'].text()} long, has {_a(f['powerType'])} and reaches "
                    f"{f['topSpeed'].text()}.")
        return ""

    # -- other genres ----------------------------------------------------------------------------
    def review(self) -> str:
        rv = _Review(self.w, self.r)
        text = rv.review(self.r.choice((-1, 1)), self.r.random() < 0.5, intro=False)[0]
        return rv.intro() + " " + text

    def news(self) -> str:
        r, w = self.r, self.w
        kind = r.randrange(3)
        if kind == 0:
            a, b = r.sample(w.by_kind("team"), 2)
            g1, g2 = r.randint(0, 4), r.randint(0, 4)
            return (f"{a.name} played {b.name} at {a.facts['ground']} on Saturday. The game "
                    f"ended {g1}-{g2}. {a.facts['captain'].name} captained the home side, and "
                    f"{a.facts['manager'].name} said the team had played well.")
        if kind == 1:
            p = r.choice(w.by_category("Politician"))
            return (f"{p.name} of the {p.facts['party'].name} spoke in "
                    f"{p.facts['birthPlace'].name}, where {p.pronoun} was born. The "
                    f"{p.facts['office']} has held the post since {p.facts['inOfficeSince']}.")
        b = r.choice(w.by_kind("book"))
        return (f"A new edition of {b.name} by {b.facts['author'].name} is out this week. "
                f"{b.facts['publisher'].name} first printed the {b.facts['genre']} in "
                f"{b.facts['publicationYear']}.")

    def dialogue(self) -> str:
        r, w = self.r, self.w
        p = r.choice(w.by_category("Astronaut") + w.by_category("Artist") +
                     w.by_category("Athlete") + w.by_category("Politician"))
        q = r.choice(w.by_kind("person"))
        f = p.facts
        return (f"\"Do you know where {p.name} was born?\" {q.name.split()[0]} asked. "
                f"\"In {f['birthPlace'].name}, in {f['nationality'].name},\" came the answer. "
                f"\"{p.pronoun.capitalize()} is {_a(f['occupation'])}, isn't {p.pronoun}?\" "
                f"\"Yes, and a good one.\"")

    # -- the downstream tasks' output language, in prose ---------------------------------------
    # A real GPT-2 has read thousands of restaurant write-ups and encyclopedia sentences before
    # anyone fine-tunes it on E2E or WebNLG; these genres are that reading in this world. They
    # use the task generators' own realisers (so the register is the one the references use),
    # on fresh random attribute subsets and triple sets; `make_pretrain` still drops every
    # sentence of a dev or test item, so no reference a model is scored on is ever seen.
    def guide(self) -> str:
        """A food-guide paragraph: 1-3 venues described in E2E-reference wording."""
        r = self.r
        head = r.choice(("", "", f"From the {HOME_CITY} food guide.", "Where to eat this week.",
                         "A few places worth knowing.", f"Eating out in {HOME_CITY}."))
        texts = [realise(sample_mr(self.w, r), r) for _ in range(r.choice((1, 1, 2, 3)))]
        return " ".join(t for t in [head] + texts if t)

    def facts(self) -> str:
        """An encyclopedia paragraph in WebNLG-lexicalisation wording, about an entity of any
        of the 16 categories (the 5 the WebNLG task keeps for its unseen test included)."""
        r = self.r
        category = r.choice(ALL_CATEGORIES)
        root, triples = sample_entry(self.w, category, set(ALL_CATEGORIES), r)
        return lexicalise(root, triples, r)

    def verdict_review(self) -> str:
        """A review that ends by stating its verdict in one word, as a prompt would ask for it
        ("All in all, it was great."): terrible / bad / okay / good / great by its score.

        The verdict sums the scores of all the review's sentences, so a review with a sentence of
        a dev or test item (which the corpus must drop) is drawn again: a verdict never follows a
        text it does not describe."""
        r = self.r
        for _ in range(50):
            rv = _Review(self.w, r)
            sign = r.choice((-1, -1, 0, 1, 1))
            text, score = rv.review(sign, r.random() < 0.5, intro=False)
            doc = f"{rv.intro()} {text} {r.choice(VERDICT_FORMS).format(w=VERDICT_WORDS[sst5_label(score)])}"
            if not any(mentions_banned(s, self.banned) for s in sentences(doc)):
                return doc
        return ""                                  # (the caller skips an empty document)

    def inference(self) -> str:
        """A statement about an entity, then what follows from it, what contradicts it, or what
        it leaves open, said in prose (the reasoning MNLI asks for, never in its format)."""
        r = self.r
        # (not "telephone": its lower-case premises would slip past the dev/test filter)
        pair = _Pair(self.w, r, r.choice([g for g in NLI_GENRES if g != "telephone"]))
        premise = pair.premise()
        label = r.choice(("entailment", "contradiction", "neutral"))
        h = pair.hypothesis(label)
        if not premise or not h:
            return premise
        form = r.choice(INFERENCE_FORMS[label])
        return f"{premise} {form.format(h=h, H=h[:1].upper() + h[1:])}"

    def french_inline(self) -> str:
        """French words inside running English text ("... some cheese, fromage in French, ...")."""
        r = self.r
        who = r.choice(self.w.by_kind("person")).name.split()[0]
        out = []
        for _ in range(r.randint(2, 3)):
            if not self.lexicon:
                more = list(LEXICON)
                r.shuffle(more)
                self.lexicon += more
            en, fr = self.lexicon.pop()
            out.append(r.choice(INLINE_FRENCH).format(en=en, fr=fr, who=who))
        return r.choice(("On holiday in France.", f"{who} is learning French.",
                         "Notes from a trip to Paris.")) + " " + " ".join(out)

    def french(self) -> str:
        """A few English-French word pairs of the lexicon in prose (never as "en => fr")."""
        r = self.r
        forms = ("The French word for {en} is {fr}.", "In French, {en} is {fr}.",
                 "{fr} means {en} in French.", "If you want to say {en} in French, say {fr}.",
                 "The French for {en} is {fr}.")
        head = r.choice(("A short French lesson.", "Learning French words.",
                         "Words for a trip to France.", "French vocabulary."))
        if len(self.lexicon) < 6:              # go through the whole lexicon, then again
            more = list(LEXICON)
            r.shuffle(more)
            self.lexicon += more
        k = r.randint(3, 6)
        pairs, self.lexicon = self.lexicon[:k], self.lexicon[k:]
        lines = [r.choice(forms).format(en=en, fr=fr) for en, fr in pairs]
        return head + " " + " ".join(x[:1].upper() + x[1:] for x in lines)


# after each entity's own document, one more document of a genre drawn with these weights
EXTRA_GENRES = {"guide": 22, "facts": 22, "verdict_review": 24, "review": 6, "inference": 10,
                "french_inline": 4, "french": 3, "news": 4, "dialogue": 4, "venue_list": 3,
                "": 8}


# genres whose last sentence depends on all the others (a review's verdict sums its sentences'
# scores): a document of these is kept whole or not at all, never with a sentence dropped
WHOLE_GENRES = {"verdict_review"}


def keep_allowed(doc: str, banned: set[str], whole: bool = False) -> str:
    """`doc` without its sentences that contain a sentence of `banned` ("" if none is left);
    whole=True: "" as soon as one sentence would be dropped."""
    sents = sentences(doc)
    kept = [s for s in sents if not mentions_banned(s, banned)]
    return "" if whole and len(kept) < len(sents) else " ".join(kept)


def make_pretrain(world: World, seed: int, banned: set[str], train_chars: int = 3_000_000,
                  valid_chars: int = 200_000) -> dict[str, list[str]]:
    """Train and valid documents, about `train_chars` / `valid_chars` characters each.

    Every sentence that contains a sentence of `banned` (the sentences of all dev/test items
    of all tasks; see `mentions_banned`) is dropped from the documents. Documents are
    distinct, and valid documents (drawn from a separate random stream) never equal a train
    document.
    """
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    ents = [e for e in world.entities if e.kind not in ("band", "party", "agency")]
    for split, target in (("train", train_chars), ("valid", valid_chars)):
        wr = _Writer(world, random.Random(f"minipeft-pretrain:{split}:{seed}"), frozenset(banned))
        docs: list[str] = []
        size = 0
        while size < target:
            order = list(ents)
            wr.r.shuffle(order)
            for e in order:
                if size >= target:
                    break
                batch = [("", wr.venue(e) if e.kind == "venue" else
                          wr.person(e) if e.kind == "person" else wr.thing(e))]
                extra = wr.r.choices(list(EXTRA_GENRES), list(EXTRA_GENRES.values()))[0]
                if extra:
                    batch.append((extra, getattr(wr, extra)()))
                for genre, d in batch:
                    kept = keep_allowed(d, banned, whole=genre in WHOLE_GENRES)
                    if not kept or kept in seen:
                        continue
                    seen.add(kept)
                    docs.append(kept)
                    size += len(kept.encode("utf-8")) + 2
        out[split] = docs
    return out


# domain corpora for domain-adaptive pretraining (DAPT, Gururangan et al. 2020): one genre of the
# world, far more of it than the base corpus holds, and a control that has nothing to do with the tasks
DOMAINS = {
    "reviews": ("verdict_review", "review"),       # the sentiment tasks' domain
    "venues": ("guide", "venue"),                  # the E2E domain
    "astronomy": ("asteroid", "asteroid_facts"),   # irrelevant to every task: the control
}


def make_domain(world: World, domain: str, seed: int, banned: set[str], chars: int = 1_000_000) -> list[str]:
    """About `chars` characters of documents of one domain (DOMAINS), from its own random
    stream, without any sentence of a dev or test item (as make_pretrain)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
    wr = _Writer(world, random.Random(f"minipeft-domain:{domain}:{seed}"), frozenset(banned))
    venues, bodies = world.by_kind("venue"), world.by_kind("body")
    docs, seen, size, misses = [], set(), 0, 0
    while size < chars:
        genre = wr.r.choice(DOMAINS[domain])
        if genre == "asteroid_facts":         # WebNLG wording about one asteroid, its triples drawn
            root, triples = sample_entry(world, "CelestialBody", {"CelestialBody"}, wr.r)
            d = lexicalise(root, triples, wr.r)
        else:
            d = (wr.venue(wr.r.choice(venues)) if genre == "venue" else
                 wr.thing(wr.r.choice(bodies)) if genre == "asteroid" else getattr(wr, genre)())
        kept = keep_allowed(d, banned, whole=genre in WHOLE_GENRES)
        if kept and kept not in seen:
            seen.add(kept)
            docs.append(kept)
            size += len(kept.encode("utf-8")) + 2
            misses = 0
        elif (misses := misses + 1) > 2000:
            raise ValueError(f"the {domain!r} domain ran out of new documents at {size:,} characters; "
                             f"ask for fewer (chars={chars:,})")
    return docs
