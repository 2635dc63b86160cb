"""One small, coherent synthetic world that every minipeft corpus and task is drawn from.

Why a world? Parameter-efficient fine-tuning adapts a *pretrained* model. If the pretraining
corpus and the downstream tasks talk about the same things, a tiny model pretrained on the
corpus already knows the vocabulary and the facts ("The Golden Eagle is a pub by the river"),
and a PEFT method only has to teach it the task format, which is the situation the PEFT papers
study on GPT-2 and RoBERTa. Real data (E2E, WebNLG, GLUE) cannot be downloaded everywhere this
course runs, so the world is generated, deterministically from a seed.

The world is a list of `Entity` objects. Each entity has a `kind` ("venue", "person", "city",
...), an optional WebNLG `category` ("Airport", "Astronaut", ...), and `facts`: a dict from a
property name (WebNLG style, e.g. "birthPlace") to a value. A value is another `Entity`, a
`Date`, a `Quantity`, an `int` (a year or a count), a `bool` or a `str`. All tasks read these
facts, so a text about an entity in one task never contradicts another task or the corpus.

    world = build_world(seed=0)
    eagle = world.by_kind("venue")[0]
    eagle.name, eagle.facts["food"], eagle.facts["near"].name
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import gen_names as N

HOME_CITY = "Millbrook"        # the town all E2E venues are in (area: city centre / riverside)
HOME_RIVER = "Wend"


@dataclass(frozen=True)
class Date:
    """A calendar date. `iso()` is the form written in WebNLG triples ("1961-03-12")."""
    year: int
    month: int
    day: int

    def iso(self) -> str:
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"

    def long(self) -> str:          # "12 March 1961"
        return f"{self.day} {N.MONTHS[self.month - 1]} {self.year}"

    def us(self) -> str:            # "March 12, 1961"
        return f"{N.MONTHS[self.month - 1]} {self.day}, {self.year}"


@dataclass(frozen=True)
class Quantity:
    """A measured value with its unit, e.g. Quantity(2776.0, "metres")."""
    value: float
    unit: str

    def number(self) -> str:
        """The number as WebNLG writes it in triples: always one decimal ("2776.0")."""
        return f"{self.value:.1f}"

    def text(self) -> str:
        """The number as a sentence writes it: "2,776 metres", "4.5 days"."""
        v = self.value
        s = f"{int(v):,}" if v == int(v) else f"{v:,.1f}"
        return f"{s} {self.unit}"


@dataclass(eq=False)
class Entity:
    """A thing in the world. `facts` maps a property name to a value (see the module doc)."""
    name: str
    kind: str
    category: str | None = None
    gender: str = "n"              # "f" / "m" for people, "n" otherwise (chooses he/she/it)
    facts: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Entity({self.name!r}, {self.kind})"

    @property
    def pronoun(self) -> str:
        return {"f": "she", "m": "he"}.get(self.gender, "it")

    @property
    def possessive(self) -> str:
        return {"f": "her", "m": "his"}.get(self.gender, "its")


@dataclass
class World:
    """All entities of one seed, in creation order (so iteration order is deterministic)."""
    seed: int
    entities: list[Entity]

    def __post_init__(self):
        self._by_name = {e.name: e for e in self.entities}
        self._kinds: dict[str, list[Entity]] = {}
        if len(self._by_name) != len(self.entities):
            raise ValueError("entity names must be unique")

    def by_kind(self, kind: str) -> list[Entity]:
        """Entities of one kind, in creation order (the list is cached: do not modify it)."""
        if kind not in self._kinds:
            self._kinds[kind] = [e for e in self.entities if e.kind == kind]
        return self._kinds[kind]

    def by_category(self, category: str) -> list[Entity]:
        return [e for e in self.entities if e.category == category]

    def get(self, name: str) -> Entity:
        return self._by_name[name]


# WebNLG categories. The split into seen (train/dev/test) and unseen (test only) follows the
# WebNLG 2017 challenge, plus Company (added in WebNLG 2020) as an eleventh seen category.
SEEN_CATEGORIES = ("Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Company",
                   "Food", "Monument", "SportsTeam", "University", "WrittenWork")
UNSEEN_CATEGORIES = ("Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician")


class _Builder:
    """Holds the random stream and the set of used names while the world is built."""

    def __init__(self, seed: int):
        self.rng = random.Random(f"minipeft-world:{seed}")
        self.entities: list[Entity] = []
        self.used: set[str] = set()   # only for membership tests, never iterated

    def add(self, name: str, kind: str, category: str | None = None, gender: str = "n",
            **facts) -> Entity:
        e = Entity(name, kind, category, gender, dict(facts))
        self.used.add(name)
        self.entities.append(e)
        return e

    def unique(self, make, tries: int = 200) -> str:
        """Call `make()` until it returns a name not used yet."""
        for _ in range(tries):
            name = make()
            if name not in self.used:
                return name
        raise RuntimeError("name pool exhausted")

    def date(self, lo: int, hi: int) -> Date:
        r = self.rng
        return Date(r.randint(lo, hi), r.randint(1, 12), r.randint(1, 28))

    def person(self, kind_word: str, category: str | None, birth: tuple[int, int],
               cities: list[Entity], **facts) -> Entity:
        r = self.rng
        gender = r.choice("fm")
        first = N.FIRST_F if gender == "f" else N.FIRST_M
        name = self.unique(lambda: f"{r.choice(first)} {r.choice(N.SURNAMES)}")
        place = r.choice(cities)
        return self.add(name, "person", category, gender, occupation=kind_word,
                        birthPlace=place, birthDate=self.date(*birth),
                        nationality=place.facts["country"], **facts)


def build_world(seed: int = 0) -> World:
    """Build the world of `seed`: countries, cities, people, venues and the WebNLG entities.

    Same seed, same world (names, facts, order). Only `random.Random(seed-string)` is used, and
    no set or dict is iterated in hash order, so the result does not depend on PYTHONHASHSEED.
    """
    b = _Builder(seed)
    r = b.rng

    # --- places -----------------------------------------------------------------------------
    countries = [b.add(name, "country", demonym=dem, language=lang, currency=f"{dem} {cur}")
                 for name, dem, lang, cur in N.COUNTRIES]
    cities: list[Entity] = []
    home = b.add(HOME_CITY, "city", "City", country=countries[0], region=N.REGIONS[4],
                 populationTotal=184_000 + r.randint(0, 9000), foundingYear=r.randint(900, 1200),
                 river=f"River {HOME_RIVER}")
    cities.append(home)
    rivers = [f"River {x}" for x in N.RIVERS if x != HOME_RIVER]
    for i in range(59):
        country = countries[i % len(countries)]
        name = b.unique(lambda: r.choice(N.CITY_HEADS) + r.choice(N.CITY_TAILS))
        pop = r.choice((8, 20, 45, 90, 150, 300, 700, 1500)) * 1000 + r.randint(0, 999) * 7
        cities.append(b.add(name, "city", "City", country=country, region=r.choice(N.REGIONS),
                            populationTotal=pop, foundingYear=r.randint(700, 1850),
                            river=r.choice(rivers)))
    for c in countries:   # the first city of each country is its capital
        c.facts["capital"] = next(x for x in cities if x.facts["country"] is c)

    # --- organisations ------------------------------------------------------------------------
    companies = []
    for i in range(48):
        suffix, industry = N.COMPANY_KINDS[i % len(N.COMPANY_KINDS)]
        name = b.unique(lambda: f"{r.choice(N.COMPANY_WORDS)} {suffix}")
        companies.append(b.add(name, "company", "Company", location=r.choice(cities),
                               foundingYear=r.randint(1850, 2010), industry=industry,
                               product=N.PRODUCTS[industry],
                               numberOfEmployees=r.choice((40, 120, 600, 2500, 9000, 30000))
                               + 10 * r.randint(0, 90)))
    by_industry = {ind: [c for c in companies if c.facts["industry"] == ind]
                   for _, ind in N.COMPANY_KINDS}
    universities = []
    for i in range(26):
        city = cities[(i * 7) % len(cities)]
        form = r.randrange(3)
        name = (f"University of {city.name}" if form == 0 else
                f"{city.name} Institute of Technology" if form == 1 else "")
        if not name or name in b.used:
            name = b.unique(lambda: f"{r.choice(N.SURNAMES)} College")
        universities.append(b.add(name, "university", "University", city=city,
                                  country=city.facts["country"],
                                  established=r.randint(1300, 1990),
                                  numberOfStudents=r.randint(20, 400) * 100))
    parties = [b.add(p, "party") for p in N.PARTIES]

    # --- people -------------------------------------------------------------------------------
    def people(kind_word, category, n, birth, **make_facts):
        out = []
        for _ in range(n):
            facts = {k: f() for k, f in make_facts.items()}
            out.append(b.person(kind_word, category, birth, cities, **facts))
        return out

    uni = lambda: r.choice(universities)  # noqa: E731
    politicians = people("politician", "Politician", 40, (1935, 1985), almaMater=uni,
                         party=lambda: r.choice(parties), office=lambda: r.choice(N.OFFICES),
                         inOfficeSince=lambda: r.randint(1995, 2021))
    for i, c in enumerate(cities):             # every city has a mayor (leaderName)
        c.facts["leaderName"] = politicians[i % len(politicians)]
    for i, c in enumerate(countries):
        c.facts["leader"] = politicians[(i * 3 + 1) % len(politicians)]
    for i, p in enumerate(politicians):        # a chain of successors inside each office
        later = [q for q in politicians[i + 1:] if q.facts["office"] == p.facts["office"]]
        if later:
            p.facts["successor"] = later[0]
    scientists = people("astronomer", None, 20, (1900, 1975), almaMater=uni)
    writers = people("writer", None, 40, (1900, 1990))
    architects = people("architect", None, 16, (1880, 1970), almaMater=uni)
    owners = people("chef", None, 120, (1950, 1995))
    directors = people("film director", None, 20, (1930, 1985))
    managers = people("football manager", None, 24, (1950, 1985))
    agencies = [b.add(f"{c.facts['demonym']} Space Agency", "agency", country=c)
                for c in countries[:6]]
    astro_jobs = ("test pilot", "fighter pilot", "engineer", "physician", "geologist")
    astronauts = people("astronaut", "Astronaut", 34, (1930, 1985), almaMater=uni,
                        status=lambda: r.choice(("retired", "active", "retired", "deceased")))
    for i, a in enumerate(astronauts):
        agency = agencies[i % len(agencies)]
        a.facts.update(background=r.choice(astro_jobs), selectedBy=agency,
                       mission=f"{r.choice(N.STAR_NAMES)} {r.randint(2, 19)}",
                       selectionYear=a.facts["birthDate"].year + r.randint(26, 38))
    labels = by_industry["music"]
    bands = [b.add(x, "band") for x in N.BAND_WORDS]
    artists = people("musician", "Artist", 40, (1940, 1995),
                     genre=lambda: r.choice(N.MUSIC_GENRES),
                     instrument=lambda: r.choice(N.INSTRUMENTS),
                     associatedBand=lambda: r.choice(bands),
                     recordLabel=lambda: r.choice(labels))
    for a in artists:
        a.facts["activeYearsStartYear"] = a.facts["birthDate"].year + r.randint(17, 28)

    # --- venues (the E2E domain) -------------------------------------------------------------
    def venue_name():
        form = r.randrange(6)
        if form == 0:
            return f"The {r.choice(N.VENUE_ADJ)} {r.choice(N.VENUE_NOUN)}"
        if form == 1:
            return f"{r.choice(N.VENUE_HOUSE)} House"
        if form == 2:
            return f"{r.choice(N.SURNAMES)}'s"
        if form == 3:
            return f"Café {r.choice(N.VENUE_CAFE)}"
        if form == 4:
            return f"The {r.choice(N.VENUE_NOUN)} {r.choice(N.VENUE_SUFFIX)}"
        return r.choice(N.VENUE_SINGLE)

    foods = _foods(b, countries, cities)
    venues = []
    for i in range(240):
        owner = owners[i % len(owners)]
        food = r.choice(N.FOODS)
        eat = r.choices(N.EAT_TYPES, (3, 3, 4))[0]
        dish = b.rng.choice([f for f in foods if f.facts.get("cuisine") == food])
        venues.append(b.add(b.unique(venue_name), "venue", None,
                            eatType=eat, food=food, priceRange=r.choice((0, 0, 1, 1, 2)),
                            customerRating=r.choice((0, 1, 1, 2, 2)), area=r.choice(N.AREAS),
                            familyFriendly=r.random() < 0.5, owner=owner,
                            opened=_after(r, owner, 22, 45), dish=dish,
                            street=r.choice(N.STREETS), city=home))
    landmarks = venues[:40]                     # the venues that others are "near"
    for v in venues:
        v.facts["near"] = r.choice([x for x in landmarks if x is not v])
        v.facts["dish"].facts.setdefault("servedAt", v)

    # --- the remaining WebNLG categories ------------------------------------------------------
    _places(b, cities, countries, companies, by_industry, architects, people)
    teams = _teams(b, cities, managers)
    athletes = people("footballer", "Athlete", 40, (1975, 2003),
                      position=lambda: r.choice(N.POSITIONS),
                      height=lambda: Quantity(r.randint(165, 198) / 100, "metres"))
    for i, a in enumerate(athletes):
        a.facts["club"] = teams[i % len(teams)]
    for i, t in enumerate(teams):
        t.facts["captain"] = athletes[i % len(athletes)]
    _works(b, writers, directors, by_industry, cities)
    _comics(b, writers, by_industry)
    _bodies(b, scientists)
    _vehicles(b, companies, by_industry, countries)
    return World(seed, b.entities)


def _after(r: random.Random, person: Entity, lo: int, hi: int, last: int = 2023) -> int:
    """A year `lo`..`hi` years after `person` was born, but not after `last`: keeps the
    world's dates consistent (nobody founds a restaurant before they are born)."""
    born = person.facts["birthDate"].year
    return min(born + r.randint(lo, hi), last)


def _foods(b: _Builder, countries, cities) -> list[Entity]:
    """Dishes: every E2E cuisine gets its dishes (signature dishes of venues), plus invented
    regional dishes of the world's countries (the WebNLG Food category)."""
    r = b.rng
    out = []
    for cuisine, dishes in N.DISHES.items():
        for d in dishes:
            out.append(b.add(d, "dish", None, cuisine=cuisine))
    for i in range(34):
        country = countries[i % len(countries)]
        name = b.unique(lambda: r.choice(N.FOOD_STEMS) + r.choice(N.FOOD_ENDS))
        ings = r.sample(N.INGREDIENTS, 3)
        out.append(b.add(name, "dish", "Food", country=country,
                         region=r.choice([c for c in cities if c.facts["country"] is country]),
                         mainIngredient=ings[0], ingredient=ings[1], course=r.choice(N.COURSES),
                         cuisine=country.facts["demonym"]))
    return out


def _places(b, cities, countries, companies, by_industry, architects, people) -> None:
    """Airports, buildings and monuments, each located in a city of the world."""
    r = b.rng
    airlines = by_industry["air transport"]
    for city in r.sample(cities, 30):          # at most one airport per city
        form = r.randrange(3)
        name = b.unique(lambda: f"{city.name} International Airport" if form == 0 else
                        f"{city.name} {r.choice(N.SURNAMES)} Airport" if form == 1 else
                        f"{city.name} Airfield")
        code = "".join(r.choice("ABCDEFGHJKLMNPRSTVWXZ") for _ in range(3))
        b.add(name, "airport", "Airport", cityServed=city, country=city.facts["country"],
              elevationAboveTheSeaLevel=Quantity(float(r.randint(2, 900)), "metres"),
              runwayLength=Quantity(float(r.randint(1200, 4200)), "metres"),
              runwayName=f"{r.randint(1, 18):02d}/{r.randint(19, 36):02d}",
              operatingOrganisation=r.choice(airlines), iataLocationIdentifier=code)
    builders = by_industry["construction"]
    for i in range(34):
        city = cities[(i * 3 + 2) % len(cities)]
        name = b.unique(lambda: r.choice((f"{r.choice(N.SURNAMES)} Tower",
                                          f"{r.choice(N.WORK_NOUN)} House",
                                          f"The {r.choice(N.COMPANY_WORDS)} Building",
                                          f"{city.name} Central Library")))
        architect = r.choice(architects)
        start = _after(r, architect, 28, 60, 2015)
        b.add(name, "building", "Building", location=city, architect=architect,
              floorCount=r.randint(3, 70), buildingStartDate=start,
              completionDate=start + r.randint(1, 6), architecturalStyle=r.choice(N.ARCH_STYLES),
              currentTenants=r.choice(companies), builder=r.choice(builders))
    designers = people("sculptor", None, 14, (1850, 1960))
    for i in range(30):
        city = cities[(i * 11 + 3) % len(cities)]
        hon = r.choice(cities[:20]).facts["leaderName"]
        name = b.unique(lambda: r.choice((f"{hon.name} Memorial", f"{city.name} War Memorial",
                                          f"The {r.choice(N.WORK_ADJ)} Arch",
                                          f"{r.choice(N.SURNAMES)} Column")))
        designer = r.choice(designers)
        b.add(name, "monument", "Monument", location=city, country=city.facts["country"],
              designer=designer, material=r.choice(N.MATERIALS),
              established=_after(r, designer, 25, 60),
              dedicatedTo=hon if name.endswith(" Memorial") and hon.name in name else
              r.choice(("the fallen soldiers", "the city's founders", "the river workers",
                        "the victims of the great flood", "peace")))


def _teams(b, cities, managers) -> list[Entity]:
    r = b.rng
    teams = []
    for i in range(30):
        city = cities[(i * 2) % len(cities)]
        name = b.unique(lambda: f"{city.name} {r.choice(N.TEAM_MASCOTS)}" if r.random() < 0.7
                        else f"FC {city.name}")
        ground = f"{r.choice(N.SURNAMES)} {r.choice(('Park', 'Stadium', 'Arena', 'Road'))}"
        teams.append(b.add(name, "team", "SportsTeam", city=city, ground=ground,
                           league=r.choice(N.LEAGUES), manager=managers[i % len(managers)],
                           foundingYear=r.randint(1870, 1990),
                           capacity=r.randint(30, 600) * 100))
    return teams


def _works(b, writers, directors, by_industry, cities) -> None:
    """Books (the WebNLG WrittenWork category) and films (used by reviews and the corpus)."""
    r = b.rng
    title = lambda: r.choice((f"The {r.choice(N.WORK_ADJ)} {r.choice(N.WORK_NOUN)}",  # noqa
                              f"{r.choice(N.WORK_NOUN)} of {r.choice(cities).name}",
                              f"A {r.choice(N.WORK_NOUN)} in {r.choice(cities).name}",
                              f"{r.choice(N.WORK_ADJ)} {r.choice(N.WORK_NOUN)}"))
    books = []
    for i in range(44):
        author = writers[i % len(writers)]
        books.append(b.add(b.unique(title), "book", "WrittenWork", author=author,
                           publisher=r.choice(by_industry["publishing"]),
                           publicationYear=_after(r, author, 22, 60),
                           genre=r.choice(N.BOOK_GENRES), numberOfPages=r.randint(90, 700),
                           language=author.facts["nationality"].facts["language"]))
    for a, nxt in zip(books, books[1:]):
        if a.facts["author"] is nxt.facts["author"] or r.random() < 0.2:
            a.facts["followedBy"] = nxt
    for i in range(40):
        director = directors[i % len(directors)]
        b.add(b.unique(title), "film", None, director=director,
              studio=r.choice(by_industry["film production"]), genre=r.choice(N.FILM_GENRES),
              releaseYear=_after(r, director, 25, 60),
              runtime=Quantity(float(r.randint(80, 170)), "minutes"),
              filmedIn=r.choice(cities))


def _comics(b, writers, by_industry) -> None:
    r = b.rng
    for _ in range(30):
        name = b.unique(lambda: f"{r.choice(N.COMICS_FIRST)} {r.choice(N.COMICS_SECOND)}")
        alter = f"{r.choice(N.FIRST_F + N.FIRST_M)} {r.choice(N.SURNAMES)}"
        creator = r.choice(writers)
        b.add(name, "comics", "ComicsCharacter", creator=creator,
              alternativeName=alter, publisher=r.choice(by_industry["publishing"]),
              firstAppearanceYear=_after(r, creator, 20, 50))


def _bodies(b, scientists) -> None:
    r = b.rng
    for _ in range(30):
        name = b.unique(lambda: f"{r.randint(100, 9999)} {r.choice(N.STAR_NAMES)}")
        peri = r.randint(150, 600) * 1_000_000
        discoverer = r.choice(scientists)
        year = _after(r, discoverer, 25, 55)
        b.add(name, "body", "CelestialBody", discoverer=discoverer,
              discovered=Date(year, r.randint(1, 12), r.randint(1, 28)),
              orbitalPeriod=Quantity(float(r.randint(300, 4000)), "days"),
              periapsis=Quantity(float(peri), "kilometres"),
              apoapsis=Quantity(float(peri + r.randint(10, 300) * 1_000_000), "kilometres"),
              averageTemperature=Quantity(float(r.randint(90, 260)), "kelvins"),
              absoluteMagnitude=round(r.uniform(8.0, 18.0), 1))


def _vehicles(b, companies, by_industry, countries) -> None:
    r = b.rng
    makers = {"ship": by_industry["shipbuilding"], "car": by_industry["car manufacturing"],
              "aircraft": by_industry["aerospace"], "locomotive": by_industry["rail transport"]}
    for i in range(30):
        kind, prefix = N.VEHICLE_KINDS[i % len(N.VEHICLE_KINDS)]
        maker = r.choice(makers[kind])
        brand = maker.name.split()[0]
        name = b.unique(lambda: f"MS {r.choice(N.STAR_NAMES)}" if kind == "ship" else
                        f"{brand} {r.choice(N.COMICS_SECOND)}" if kind == "car" else
                        f"{brand} A{r.randint(1, 9)}{r.randint(0, 9)}" if kind == "aircraft"
                        else f"Class {r.randint(10, 99)}")
        length = {"ship": (90, 300), "car": (3, 5), "aircraft": (20, 70),
                  "locomotive": (15, 25)}[kind]
        speed = {"ship": (30, 60), "car": (150, 260), "aircraft": (600, 950),
                 "locomotive": (120, 320)}[kind]
        b.add(name, "vehicle", "MeanOfTransportation", vehicleType=kind, manufacturer=maker,
              countryOrigin=maker.facts["location"].facts["country"],
              length=Quantity(float(r.randint(*length)), "metres"),
              powerType=r.choice(N.ENGINES[kind]), productionStartYear=r.randint(1950, 2020),
              topSpeed=Quantity(float(r.randint(*speed)), "km/h"))
