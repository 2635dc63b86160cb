"""WebNLG-style triples-to-text over the world's knowledge graph, with seen/unseen categories.

What it produces: entries of 1-5 RDF triples about one entity (plus, sometimes, a triple about
an entity it mentions), each with 1-3 reference texts, e.g.

    Alderbrook_International_Airport | cityServed | Alderbrook
    Alderbrook | country | Korsland
    -> "Alderbrook International Airport serves Alderbrook, which is in Korsland."

Why: Prefix-tuning's extrapolation experiment (Li & Liang 2021, Table 3; LoRA Table 11) trains
on WebNLG's SEEN categories and reports BLEU separately on test entries of UNSEEN categories,
where lightweight methods beat full fine-tuning. Here, as in WebNLG 2017, five categories
(`world.UNSEEN_CATEGORIES`) appear only in the test file, and properties unique to them
(party, discoverer, orbitalPeriod, ...) are never seen in training. Properties shared with seen
categories (birthPlace, nationality, ...) are, which is what makes transfer possible.

Texts are built by a small sentence planner: the triples are ordered, grouped into sentences,
each property is verbalised from a few templates, later mentions of the subject become a
pronoun or "the airport", and a triple about a mentioned entity becomes a "which" clause.
"""
from __future__ import annotations

import random

from .formats import Triple, WebNLGEntry
from .world import SEEN_CATEGORIES, UNSEEN_CATEGORIES, Date, Entity, Quantity, World

# the properties of each category's entities that entries draw triples from
# (triple property name -> fact key in the world; the same name unless written "prop=key")
CATEGORY_PROPS = {
    "Airport": ["cityServed", "country", "elevationAboveTheSeaLevel", "runwayLength",
                "runwayName", "operatingOrganisation", "iataLocationIdentifier"],
    "Astronaut": ["birthPlace", "birthDate", "nationality", "occupation=background",
                  "almaMater", "mission", "selectedBy", "status", "selectionYear"],
    "Building": ["location", "architect", "floorCount", "buildingStartDate", "completionDate",
                 "architecturalStyle", "currentTenants", "builder"],
    "City": ["country", "isPartOf=region", "leaderName", "populationTotal", "foundingYear",
             "river"],
    "ComicsCharacter": ["creator", "alternativeName", "publisher", "firstAppearanceYear"],
    "Company": ["location", "foundingYear", "industry", "product", "numberOfEmployees"],
    "Food": ["country", "region", "mainIngredient", "ingredient", "course"],
    "Monument": ["location", "country", "designer", "material", "established", "dedicatedTo"],
    "SportsTeam": ["city", "ground", "league", "manager", "foundingYear", "capacity", "captain"],
    "University": ["city", "country", "established", "numberOfStudents"],
    "WrittenWork": ["author", "publisher", "publicationYear", "literaryGenre=genre",
                    "numberOfPages", "language", "followedBy"],
    "Artist": ["birthPlace", "birthDate", "nationality", "genre", "instrument", "associatedBand",
               "recordLabel", "activeYearsStartYear"],
    "Athlete": ["birthPlace", "birthDate", "nationality", "club", "position", "height"],
    "CelestialBody": ["discoverer", "discovered", "orbitalPeriod", "periapsis", "apoapsis",
                      "averageTemperature", "absoluteMagnitude"],
    "MeanOfTransportation": ["manufacturer", "countryOrigin", "length", "powerType",
                             "productionStartYear", "topSpeed"],
    "Politician": ["birthPlace", "birthDate", "nationality", "party", "office", "inOfficeSince",
                   "successor", "almaMater"],
}
# properties a *mentioned* entity may add in a second hop, by its kind
CHAIN_PROPS = {
    "city": ["country", "leaderName"], "country": ["capital", "leaderName=leader", "language",
                                                   "currency", "demonym"],
    "person": ["birthPlace", "nationality"], "company": ["location", "foundingYear"],
    "university": ["city"], "agency": ["country"], "team": ["city", "league"],
    "book": ["author"],
}
# string values written as quoted literals in triples (the others become Concept_Names)
QUOTED = {"runwayName", "iataLocationIdentifier", "alternativeName", "mainIngredient",
          "ingredient", "status", "demonym"}

# property -> verb phrases, subject omitted. {o} is the object; {a_o} the object with "a/an".
# A key "Category:prop" overrides "prop" for one category.
LEX = {
    "cityServed": ["serves the city of {o}", "serves {o}", "is the airport of {o}"],
    "country": ["is in {o}", "is located in {o}", "is found in {o}"],
    "Food:country": ["comes from {o}", "is a dish from {o}", "is eaten in {o}"],
    "elevationAboveTheSeaLevel": ["is {o} above sea level", "lies {o} above sea level",
                                  "has an elevation of {o} above sea level"],
    "runwayLength": ["has a runway length of {o}", "has a runway that is {o} long"],
    "runwayName": ["has a runway named {o}", "has the runway name {o}"],
    "operatingOrganisation": ["is operated by {o}", "is run by {o}"],
    "iataLocationIdentifier": ["has the IATA code {o}", "has the IATA location identifier {o}"],
    "birthPlace": ["was born in {o}", "is a native of {o}", "comes from {o}"],
    "birthDate": ["was born on {o}"],
    "nationality": ["is {dem}", "is a {dem} national", "has {dem} nationality"],
    "occupation": ["worked as {a_o}", "was {a_o}", "served as {a_o}"],
    "almaMater": ["studied at {o}", "graduated from {o}", "is a graduate of {o}"],
    "mission": ["was a crew member of {o}", "flew on the {o} mission", "took part in {o}"],
    "selectedBy": ["was selected by the {o}", "was chosen by the {o}"],
    "status": ["is {o}", "has the status {o}"],
    "selectionYear": ["was selected in {o}", "joined the astronaut programme in {o}"],
    "location": ["is located in {o}", "is in {o}", "can be found in {o}"],
    "Company:location": ["is based in {o}", "has its headquarters in {o}"],
    "architect": ["was designed by {o}", "was designed by the architect {o}"],
    "floorCount": ["has {o} floors", "has a total of {o} floors"],
    "buildingStartDate": ["was started in {o}", "began construction in {o}"],
    "completionDate": ["was completed in {o}", "was finished in {o}"],
    "architecturalStyle": ["is built in the {o} style", "is an example of {o} architecture"],
    "currentTenants": ["is home to {o}", "houses {o}", "has {o} as its tenant"],
    "builder": ["was built by {o}", "was constructed by {o}"],
    "isPartOf": ["is part of the {o}", "lies in the {o}"],
    "region": ["is a speciality of {o}", "comes from the region of {o}"],
    "leaderName": ["is led by {o}", "has {o} as its leader"],
    "City:leaderName": ["is led by {o}", "has {o} as its mayor", "has the leader {o}"],
    "populationTotal": ["has a population of {o}", "is home to {o} people"],
    "foundingYear": ["was founded in {o}", "was established in {o}"],
    "river": ["lies on the {o}", "is on the {o}"],
    "creator": ["was created by {o}", "is the creation of {o}"],
    "alternativeName": ["is also known as {o}", "has the alter ego {o}"],
    "publisher": ["is published by {o}", "was published by {o}"],
    "firstAppearanceYear": ["first appeared in {o}", "made a first appearance in {o}"],
    "industry": ["works in the {o} industry", "operates in the {o} sector"],
    "product": ["makes {o}", "produces {o}"],
    "numberOfEmployees": ["has {o} employees", "employs {o} people"],
    "mainIngredient": ["is made with {o}", "has {o} as its main ingredient"],
    "ingredient": ["contains {o}", "includes {o}"],
    "course": ["is served as {a_o}", "is {a_o}"],
    "designer": ["was designed by {o}", "is the work of {o}"],
    "material": ["is made of {o}", "is built from {o}"],
    "established": ["was established in {o}", "was erected in {o}"],
    "University:established": ["was established in {o}", "was founded in {o}"],
    "dedicatedTo": ["is dedicated to {o}", "commemorates {o}", "honours {o}"],
    "city": ["is based in {o}", "comes from {o}"],
    "University:city": ["is in {o}", "is located in the city of {o}"],
    "ground": ["plays its home games at {o}", "has its ground at {o}", "plays at {o}"],
    "league": ["plays in the {o}", "competes in the {o}"],
    "manager": ["is managed by {o}", "has {o} as manager"],
    "capacity": ["has a ground capacity of {o}", "has a ground that holds {o} people"],
    "captain": ["is captained by {o}", "has {o} as captain"],
    "numberOfStudents": ["has {o} students", "has a student body of {o}"],
    "author": ["was written by {o}", "is by {o}"],
    "publicationYear": ["was published in {o}", "came out in {o}"],
    "literaryGenre": ["is {a_o}", "is a work of the {o} genre"],
    "numberOfPages": ["has {o} pages", "is {o} pages long"],
    "language": ["is written in {o}", "was written in {o}"],
    "country:language": ["has {o} as its language", "speaks {o}"],
    "followedBy": ["was followed by {o}", "has the sequel {o}"],
    "genre": ["performs {o} music", "plays {o}", "is {a_o} musician"],
    "instrument": ["plays the {o}"],
    "associatedBand": ["played with {o}", "is associated with the band {o}"],
    "recordLabel": ["is signed to {o}", "records for {o}"],
    "activeYearsStartYear": ["started performing in {o}", "has been active since {o}"],
    "club": ["plays for {o}", "is a player at {o}"],
    "position": ["plays as {a_o}", "plays in the position of {o}"],
    "height": ["is {o} tall", "has a height of {o}"],
    "discoverer": ["was discovered by {o}"],
    "discovered": ["was discovered on {o}"],
    "orbitalPeriod": ["has an orbital period of {o}", "orbits the sun every {o}"],
    "periapsis": ["has a periapsis of {o}"],
    "apoapsis": ["has an apoapsis of {o}"],
    "averageTemperature": ["has an average temperature of {o}"],
    "absoluteMagnitude": ["has an absolute magnitude of {o}"],
    "manufacturer": ["was made by {o}", "is manufactured by {o}", "is built by {o}"],
    "countryOrigin": ["comes from {o}", "was made in {o}", "originates from {o}"],
    "length": ["is {o} long", "has a length of {o}"],
    "powerType": ["is powered by {a_o}", "runs on {a_o}"],
    "productionStartYear": ["has been produced since {o}", "went into production in {o}"],
    "topSpeed": ["has a top speed of {o}", "can reach {o}"],
    "party": ["is a member of the {o}", "belongs to the {o}"],
    "office": ["serves as {o}", "holds the office of {o}"],
    "inOfficeSince": ["has been in office since {o}", "took office in {o}"],
    "successor": ["was succeeded by {o}", "has {o} as successor"],
    "capital": ["has {o} as its capital", "has its capital at {o}"],
    "currency": ["uses the {o}", "has the {o} as its currency"],
    "demonym": ["has the demonym {o}", "is the country of the {o} people"],
}
NOUNS = {"Airport": "airport", "Building": "building", "City": "city",
         "ComicsCharacter": "character", "Company": "company", "Food": "dish",
         "Monument": "monument", "SportsTeam": "team", "University": "university",
         "WrittenWork": "book", "CelestialBody": "asteroid"}


def _split_prop(spec: str) -> tuple[str, str]:
    prop, _, key = spec.partition("=")
    return prop, key or prop


def rdf(value) -> str:
    """A fact value as WebNLG writes it in a triple."""
    if isinstance(value, Entity):
        return value.name.replace(" ", "_")
    if isinstance(value, Date):
        return f'"{value.iso()}"'
    if isinstance(value, Quantity):
        return value.number()
    if isinstance(value, (int, float)):
        return str(value)
    return str(value).replace(" ", "_")


def _text(value, rng: random.Random) -> str:
    """A fact value as a sentence writes it (dates and numbers in one of several styles)."""
    if isinstance(value, Entity):
        return value.name
    if isinstance(value, Date):
        return rng.choice((value.long(), value.us(), value.iso()))
    if isinstance(value, Quantity):
        return rng.choice((value.text(), value.text(), f"{value.number()} {value.unit}"))
    if isinstance(value, int) and value >= 10000:
        return rng.choice((f"{value:,}", str(value)))
    return str(value)


def _vp(subject: Entity, prop: str, value, rng: random.Random) -> str:
    cat = subject.category or subject.kind
    templates = LEX.get(f"{cat}:{prop}") or LEX[prop]
    t = rng.choice(templates)
    o = _text(value, rng)
    dem = value.facts["demonym"] if isinstance(value, Entity) and value.kind == "country" else o
    a_o = ("an " if o[:1].lower() in "aeiou" else "a ") + o
    return t.format(o=o, a_o=a_o, dem=dem)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def lexicalise(root: Entity, triples: list[tuple[Entity, str, object]],
               rng: random.Random) -> str:
    """One reference text for the triples (subject entity, property, value)."""
    own = [t for t in triples if t[0] is root]
    rng.shuffle(own)
    chains: dict[int, list] = {}
    for t in triples:
        if t[0] is not root:
            chains.setdefault(id(t[0]), []).append(t)
    n_sent = 1 if len(own) <= 2 else rng.choice((1, 2, 2, 3) if len(own) > 3 else (1, 2))
    n_sent = min(n_sent, len(own))
    cuts = sorted(rng.sample(range(1, len(own)), n_sent - 1)) if n_sent > 1 else []
    groups = [own[i:j] for i, j in zip([0] + cuts, cuts + [len(own)])]
    noun = NOUNS.get(root.category or "")
    sentences: list[str] = []
    pending = []                          # chain subjects still to be described
    for gi, group in enumerate(groups):
        subj = root.name if gi == 0 else rng.choice(
            [root.pronoun.capitalize(), root.name] + ([f"The {noun}"] if noun else []))
        vps = [_vp(root, p, v, rng) for _, p, v in group]
        last_value = group[-1][2]
        relative = ""
        extra = chains.pop(id(last_value), None) if isinstance(last_value, Entity) else None
        if extra:
            if rng.random() < 0.65:
                rel = "who" if last_value.kind == "person" else "which"
                relative = f", {rel} " + _join([_vp(e[0], e[1], e[2], rng) for e in extra])
            else:
                pending.append(extra)
        if len(vps) >= 2 and rng.random() < 0.3 and not relative and \
                subj not in ("He", "She", "It"):       # "She, who ..." reads badly
            rel = "who" if root.kind == "person" else "which"
            sentences.append(f"{subj}, {rel} {vps[0]}, {_join(vps[1:])}")
        else:
            sentences.append(f"{subj} {_join(vps)}{relative}")
    pending += list(chains.values())
    for extra in pending:
        who = extra[0][0]
        sentences.append(f"{who.name} " + _join([_vp(e[0], e[1], e[2], rng) for e in extra]))
    return " ".join(s[:1].upper() + s[1:] + "." for s in sentences)


def _props(entity: Entity, specs: list[str]) -> list[tuple[str, object]]:
    out = []
    for spec in specs:
        prop, key = _split_prop(spec)
        if key in entity.facts:
            out.append((prop, entity.facts[key]))
    return out


def sample_entry(world: World, category: str, allowed: set[str], rng: random.Random):
    """Triples about one random entity of `category`: 1-5 in all, some of them (a "chain")
    about an entity that the first ones mention, if its category is `allowed`."""
    root = rng.choice(world.by_category(category))
    size = rng.choices((1, 2, 3, 4, 5), (20, 24, 22, 18, 16))[0]
    own_all = _props(root, CATEGORY_PROPS[category])
    n_chain = 0 if size == 1 or rng.random() < 0.55 else rng.randint(1, min(2, size - 1))
    own = rng.sample(own_all, min(len(own_all), size - n_chain))
    triples = [(root, p, v) for p, v in own]
    if n_chain:
        hops = [v for _, v in own if isinstance(v, Entity) and v.kind in CHAIN_PROPS
                and (v.category is None or v.category in allowed)]
        if hops:
            hop = rng.choice(hops)
            cand = [(p, v) for p, v in _props(hop, CHAIN_PROPS[hop.kind]) if v is not root]
            for p, v in rng.sample(cand, min(n_chain, len(cand))):
                triples.append((hop, p, v))
    return root, triples


def to_triple(t) -> Triple:
    s, p, v = t
    o = rdf(v)
    if p in QUOTED or isinstance(v, Date):
        o = '"' + o.strip('"').replace("_", " ") + '"'
    return Triple(rdf(s), p, o)


def make_webnlg(world: World, seed: int, sizes=(3000, 300, 600)
                ) -> dict[str, list[WebNLGEntry]]:
    """Train/dev/test entries. Train and dev draw from SEEN categories only; test holds
    sizes[2] // 2 seen-category entries and the rest from the five UNSEEN categories.
    Triple sets are distinct across all splits. Each entry has 1-3 distinct references."""
    rng = random.Random(f"minipeft-webnlg:{seed}")
    seen_keys: set[tuple] = set()
    plan = [("train", SEEN_CATEGORIES, sizes[0]), ("dev", SEEN_CATEGORIES, sizes[1]),
            ("test", SEEN_CATEGORIES, sizes[2] // 2),
            ("test", UNSEEN_CATEGORIES, sizes[2] - sizes[2] // 2)]
    out: dict[str, list[WebNLGEntry]] = {"train": [], "dev": [], "test": []}
    for split, cats, n in plan:
        allowed = set(SEEN_CATEGORIES) | (set(UNSEEN_CATEGORIES) if split == "test" else set())
        made = 0
        while made < n:
            category = cats[made % len(cats)]
            root, triples = sample_entry(world, category, allowed, rng)
            rdf_triples = [to_triple(t) for t in triples]
            key = tuple(sorted(str(t) for t in rdf_triples))
            if key in seen_keys:
                continue
            seen_keys.add(key)
            want = rng.choices((1, 2, 3), (25, 40, 35))[0]
            lexes: list[str] = []
            for _ in range(6 * want):
                text = lexicalise(root, triples, rng)
                if text not in lexes:
                    lexes.append(text)
                if len(lexes) == want:
                    break
            original = [Triple(t.s, t.p, t.o + "@en" if t.o.startswith('"') and
                               not t.o[1:5].isdigit() else t.o) for t in rdf_triples]
            out[split].append(WebNLGEntry("", category, rdf_triples, lexes, original))
            made += 1
    for split, entries in out.items():
        if split == "test":   # interleave seen and unseen entries, as in the real test file
            rng.shuffle(entries)
        for i, e in enumerate(entries, 1):
            e.eid = f"Id{i}"
    return out
