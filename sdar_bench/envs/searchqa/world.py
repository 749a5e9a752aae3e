"""The offline Search-QA world: fictional entities, the passage corpus and the questions.

Every name is built from invented syllables ("Nepovas Lebabas", "Kodago Institute"), so no fact
of this world is something a pretrained model could know: the answer has to be searched. The
name-word pool comes from a fixed seed and does not depend on any knob, so ``vocabulary`` is the
same for every world size; ``world_seed`` and the sizes only decide who is born where, who wrote
what, and so on. Numbers stay inside the tiny models' vocabulary (0–99): a year is spelt as two
tokens, century then the two-digit rest ("19 52", "18 05"), and "1952" is accepted as an alias.

A question names one entity (two for a comparison); its answer lies in that entity's passage
(single-hop), or in the passage of a bridge entity named there (two-hop), or it compares two
passages (comparison). ``Question.hops`` lists the entities whose passages are needed, in the
order the expert searches them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from sdar_bench.envs.base import task_seed

# ---- the data sources and the question forms the skills key on ----------------------------
DATA_SOURCES: tuple[str, ...] = (
    "nq",
    "triviaqa",
    "popqa",
    "hotpotqa",
    "2wiki",
    "musique",
    "bamboogle",
)
TASK_TYPES: tuple[str, ...] = ("direct_lookup", "entity_attribute", "multi_hop", "comparison")
SOURCE_TYPE: dict[str, str] = {
    "nq": "direct_lookup",  # "who wrote the amber harbor": the answer is an entity
    "triviaqa": "direct_lookup",  # trivia phrasing of the same lookups
    "popqa": "entity_attribute",  # "what is X's occupation?": the answer is an attribute value
    "hotpotqa": "multi_hop",  # bridge: the entity's passage names a second entity
    "2wiki": "comparison",  # "who was born first, X or Y?"
    "musique": "multi_hop",  # composed: "the country where the city of X is"
    "bamboogle": "multi_hop",  # short composed questions
}
EVAL_SPLITS = frozenset({"eval", "test", "valid", "validation", "dev"})

# ---- the vocabulary of names -----------------------------------------------------------------
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_CODAS = ("", "", "n", "r", "l", "s")
POOL_SIZES: dict[str, int] = {"given": 80, "family": 120, "city": 150, "country": 24, "org": 150}
"""Name words per role; the world-size knobs are capped by these (see ``SearchQAParams``)."""

TITLE_ADJECTIVES: tuple[str, ...] = (
    "amber", "broken", "crimson", "distant", "empty", "fading", "frozen", "gentle",
    "golden", "hidden", "hollow", "iron", "last", "lonely", "narrow", "pale",
    "quiet", "scarlet", "silent", "silver", "velvet", "wandering", "white", "winter",
)  # fmt: skip
TITLE_NOUNS: tuple[str, ...] = (
    "bridge", "candle", "castle", "circle", "crown", "door", "garden", "harbor",
    "island", "lantern", "meadow", "mirror", "mountain", "ocean", "orchard", "river",
    "road", "shadow", "song", "stone", "storm", "tower", "valley", "window",
)  # fmt: skip
ORG_KINDS: tuple[str, ...] = (
    "Institute", "Company", "Academy", "Society", "Bank", "Museum", "Theatre", "University",
)  # fmt: skip
OCCUPATIONS: tuple[str, ...] = (
    "novelist", "poet", "director", "singer", "composer", "painter",
    "chemist", "architect", "physicist", "engineer", "historian", "sculptor",
)  # fmt: skip
# A work's kind, the verb of its passage ("written by"), the question verb ("who wrote") and the
# occupation of whoever made it.
WORK_KINDS: dict[str, tuple[str, str, str]] = {
    "novel": ("written", "wrote", "novelist"),
    "poem": ("written", "wrote", "poet"),
    "film": ("directed", "directed", "director"),
    "album": ("recorded", "recorded", "singer"),
    "opera": ("composed", "composed", "composer"),
    "painting": ("painted", "painted", "painter"),
}
YEAR_RANGES: dict[str, tuple[int, int]] = {
    "person": (1800, 1990),
    "city": (1100, 1899),
    "org": (1700, 2005),
    "work": (1850, 2015),
}


@cache
def name_pools() -> dict[str, tuple[str, ...]]:
    """Disjoint pools of capitalised three-syllable words, from a fixed seed.

    None of them is a whole word of a common English vocabulary (checked once against BERT's
    uncased word list); they never change, whatever the world's knobs.
    """
    rng = random.Random(task_seed("searchqa", "name-words"))
    seen: set[str] = set()
    words: list[str] = []
    total = sum(POOL_SIZES.values())
    while len(words) < total:
        syllables = (rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3))
        word = "".join(syllables) + rng.choice(_CODAS)
        if word not in seen:
            seen.add(word)
            words.append(word.capitalize())
    pools: dict[str, tuple[str, ...]] = {}
    start = 0
    for role, size in POOL_SIZES.items():
        pools[role] = tuple(words[start : start + size])
        start += size
    return pools


def spell_year(year: int) -> str:
    """``1952`` → ``"19 52"``, ``1805`` → ``"18 05"``: two tokens of the 0–99 vocabulary."""
    return f"{year // 100} {year % 100:02d}"


# ---- entities ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Entity:
    """One entity of the world and the facts its passage states.

    ``kind`` is person / city / country / org / work. ``links`` names other entities by key
    (birthplace, country, capital, founder, creator, base); ``year`` is birth, founding or
    release; ``label`` is the occupation (person), the org kind or the work kind.
    """

    key: str
    kind: str
    name: str  # as written in passages and questions ("the" for orgs and works included)
    title: str  # the passage title
    year: int
    label: str
    links: tuple[tuple[str, str], ...]

    def link(self, relation: str) -> str:
        return dict(self.links)[relation]

    @property
    def query(self) -> str:
        """What the expert searches to find this entity's passage."""
        return self.title.lower()


@dataclass(frozen=True)
class World:
    """The generated world: entities by key and one passage per entity (the corpus)."""

    entities: dict[str, Entity]
    passages: tuple[str, ...]  # Search-R1 ``contents``: '"Title"\ntext'
    passage_of: dict[str, int]  # entity key → index into ``passages``
    heldout: frozenset[str]  # keys only eval-split questions name

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]

    def __getitem__(self, key: str) -> Entity:
        return self.entities[key]


# Passage sentences; ``vocabulary`` reads their words from here. {p} person, {c} city, {k}
# country, {o} org, {w} work, {y} year, {j} occupation, {n} work kind, {v} verb.
PASSAGE_TEMPLATES: tuple[str, ...] = (
    "{p} was a {j} born in {c} in {y}.",
    "{p} later lived in {c}.",
    "{c} is a city in {k}. {c} was founded in {y}.",
    "{k} is a country. Its capital is {c}.",
    "{k} borders {k}.",
    "The {o} was founded by {p} in {y}. It is based in {c}.",
    "{w} is a {n} {v} by {p} in {y}.",
    "{w} is an {n} {v} by {p} in {y}.",
)


def _passage(world_entities: dict[str, Entity], entity: Entity, extra: dict[str, str]) -> str:
    name = {k: e.name for k, e in world_entities.items()}
    year = spell_year(entity.year)
    if entity.kind == "person":
        text = f"{entity.name} was a {entity.label} born in {name[entity.link('born')]} in {year}."
        if "moved" in extra:
            text += f" {entity.name} later lived in {name[extra['moved']]}."
    elif entity.kind == "city":
        text = (
            f"{entity.name} is a city in {name[entity.link('country')]}. "
            f"{entity.name} was founded in {year}."
        )
    elif entity.kind == "country":
        text = f"{entity.name} is a country. Its capital is {name[entity.link('capital')]}."
        if "borders" in extra:
            text += f" {entity.name} borders {name[extra['borders']]}."
    elif entity.kind == "org":
        text = (
            f"{entity.name[0].upper()}{entity.name[1:]} was founded by "
            f"{name[entity.link('founder')]} in {year}. It is based in {name[entity.link('base')]}."
        )
    else:
        verb = WORK_KINDS[entity.label][0]
        article = "an" if entity.label[0] in "aeiou" else "a"
        creator = name[entity.link("creator")]
        text = f"{entity.name} is {article} {entity.label} {verb} by {creator} in {year}."
    return f'"{entity.title}"\n{text}'


@cache
def generate_world(
    world_seed: int,
    n_people: int,
    n_cities: int,
    n_countries: int,
    n_orgs: int,
    n_works: int,
    heldout_share: float,
) -> World:
    """The world of one setting of the knobs, generated from ``world_seed`` alone (cached)."""
    rng = random.Random(task_seed("searchqa", "world", world_seed))
    pools = name_pools()
    entities: dict[str, Entity] = {}

    def year(kind: str) -> int:
        return rng.randint(*YEAR_RANGES[kind])

    countries = rng.sample(pools["country"], n_countries)
    city_names = rng.sample(pools["city"], n_cities)
    # Every country gets at least one city; the first city of a country is its capital.
    city_country = [i % n_countries for i in range(n_cities)]
    rng.shuffle(city_country)
    for c in range(n_countries):
        if c not in city_country:
            city_country[c] = c
    for i, name in enumerate(city_names):
        key = f"city:{i}"
        links = (("country", f"country:{city_country[i]}"),)
        entities[key] = Entity(key, "city", name, name, year("city"), "city", links)
    for c, name in enumerate(countries):
        capital = next(i for i, k in enumerate(city_country) if k == c)
        key = f"country:{c}"
        links = (("capital", f"city:{capital}"),)
        entities[key] = Entity(key, "country", name, name, 0, "country", links)

    # People: unique given+family pairs, every creator occupation present at least once.
    pairs = [(g, f) for g in pools["given"] for f in pools["family"]]
    chosen = rng.sample(pairs, n_people)
    occupations = [OCCUPATIONS[i % len(OCCUPATIONS)] for i in range(n_people)]
    rng.shuffle(occupations)
    for i, (given, family) in enumerate(chosen):
        key = f"person:{i}"
        name = f"{given} {family}"
        links = (("born", f"city:{rng.randrange(n_cities)}"),)
        entities[key] = Entity(key, "person", name, name, year("person"), occupations[i], links)

    by_occupation: dict[str, list[str]] = {}
    for i, occupation in enumerate(occupations):
        by_occupation.setdefault(occupation, []).append(f"person:{i}")
    for i, word in enumerate(rng.sample(pools["org"], n_orgs)):
        key = f"org:{i}"
        org_kind = rng.choice(ORG_KINDS)
        title = f"{word} {org_kind}"
        links = (
            ("founder", f"person:{rng.randrange(n_people)}"),
            ("base", f"city:{rng.randrange(n_cities)}"),
        )
        entities[key] = Entity(key, "org", f"the {title}", title, year("org"), org_kind, links)
    titles = [(a, n) for a in TITLE_ADJECTIVES for n in TITLE_NOUNS]
    for i, (adjective, noun) in enumerate(rng.sample(titles, n_works)):
        key = f"work:{i}"
        work_kind = rng.choice(sorted(WORK_KINDS))
        creator = rng.choice(by_occupation[WORK_KINDS[work_kind][2]])
        title = f"The {adjective.capitalize()} {noun.capitalize()}"
        links = (("creator", creator),)
        entities[key] = Entity(key, "work", title, title, year("work"), work_kind, links)

    # Distractor sentences: half the people moved away, most countries name a neighbour.
    extras: dict[str, dict[str, str]] = {key: {} for key in entities}
    for key, entity in entities.items():
        if entity.kind == "person" and rng.random() < 0.5:
            extras[key]["moved"] = f"city:{rng.randrange(n_cities)}"
        if entity.kind == "country" and n_countries > 1 and rng.random() < 0.7:
            other = rng.choice([c for c in range(n_countries) if f"country:{c}" != key])
            extras[key]["borders"] = f"country:{other}"

    keys = sorted(entities, key=_natural)
    passages = tuple(_passage(entities, entities[k], extras[k]) for k in keys)
    passage_of = {k: i for i, k in enumerate(keys)}
    heldout = frozenset(
        k
        for k in keys
        if task_seed("searchqa", "heldout", world_seed, k) % 10_000 < heldout_share * 10_000
    )
    return World(entities, passages, passage_of, heldout)


def _natural(key: str) -> tuple[str, int]:
    kind, _, number = key.partition(":")
    return kind, int(number)


# ---- questions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    text: str
    answers: tuple[str, ...]  # gold answers; the first is the expert's
    data_source: str
    hops: tuple[str, ...]  # entity keys whose passages the expert searches, in order

    @property
    def task_type(self) -> str:
        return SOURCE_TYPE[self.data_source]


# Question patterns per data source; ``vocabulary`` reads their words from here. Placeholders
# as in PASSAGE_TEMPLATES, plus {q} a wh-word verb ("wrote") and {x} the second named entity.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "nq": (
        "where was {p} born",
        "who {q} {w}",
        "who founded {o}",
        "where is {o} based",
        "what country is {c} in",
        "what is the capital of {k}",
    ),
    "triviaqa": (
        "Which {j} {q} the {n} {w}?",
        "In which city was the {j} {p} born?",
        "{o} was founded by which {j}?",
        "Which city is the capital of {k}?",
        "In which city is {o} based?",
    ),
    "popqa": (
        "What is {p}'s occupation?",
        "In what year was {p} born?",
        "In what year was {o} founded?",
        "In what year was {w} made?",
        "What kind of work is {w}?",
        "In what year was {c} founded?",
    ),
    "hotpotqa": (
        "In which city was the creator of {w} born?",
        "What is the occupation of the founder of {o}?",
        "In which country is the city where {o} is based?",
    ),
    "2wiki": (
        "Who was born first, {p} or {x}?",
        "Which was founded first, {o} or {x}?",
        "Which work was made first, {w} or {x}?",
        "Which city was founded first, {c} or {x}?",
    ),
    "musique": (
        "What country is the birthplace of {p} in?",
        "In what year was the city where {p} was born founded?",
        "What is the capital of the country that {c} is in?",
    ),
    "bamboogle": (
        "When was the founder of {o} born?",
        "When was the city where {o} is based founded?",
        "Where was the person who {q} {w} born?",
    ),
}


def _year_answers(year: int) -> tuple[str, ...]:
    return (spell_year(year), str(year))


def generate_question(world: World, seed: int, data_source: str, split: str) -> Question:
    """The question of one task: a template of ``data_source`` filled from the world.

    Eval splits name only held-out entities, the others only the rest, so a model cannot learn
    an eval answer by heart from training questions (when ``heldout_share`` > 0).
    """
    rng = random.Random(seed)
    heldout = split in EVAL_SPLITS
    pool_cache: dict[str, list[Entity]] = {}

    def pool(kind: str) -> list[Entity]:
        if kind not in pool_cache:
            everyone = world.of_kind(kind)
            if world.heldout:
                mine = [e for e in everyone if (e.key in world.heldout) == heldout]
                everyone = mine if len(mine) >= 2 else everyone
            pool_cache[kind] = everyone
        return pool_cache[kind]

    makers = _MAKERS[data_source]
    for _ in range(100):  # a maker declines a degenerate draw (two equal years, ...)
        index = rng.randrange(len(makers))
        question = makers[index](world, rng, pool, QUESTION_TEMPLATES[data_source][index])
        if question is not None:
            return Question(question[0], question[1], data_source, question[2])
    raise RuntimeError(f"could not draw a {data_source} question from seed {seed}")


_Pool = Callable[[str], list[Entity]]
_Made = tuple[str, tuple[str, ...], tuple[str, ...]] | None
_Maker = Callable[[World, random.Random, _Pool, str], _Made]


def _fill(template: str, **values: str) -> str:
    """NQ-style templates (lower-case first letter) stay all lower-case; others are capitalised."""
    text = template.format(**values)
    return text.lower() if template[0].islower() else text[0].upper() + text[1:]


def _single(kind: str, answer: Callable[[World, Entity], tuple[str, ...]], **keys: str) -> _Maker:
    """A one-hop maker: name an entity of ``kind``; its own passage holds the answer."""

    def make(world: World, rng: random.Random, pool: _Pool, template: str) -> _Made:
        entity = rng.choice(pool(kind))
        values = _values(world, entity, keys)
        return _fill(template, **values), answer(world, entity), (entity.key,)

    return make


def _values(world: World, entity: Entity, keys: dict[str, str]) -> dict[str, str]:
    """Template values about ``entity``: its name under its kind's letter, plus derived ones."""
    letter = {"person": "p", "city": "c", "country": "k", "org": "o", "work": "w"}[entity.kind]
    values = {letter: entity.name}
    for placeholder, what in keys.items():
        if what == "occupation":
            values[placeholder] = entity.label
        elif what == "creator_job":
            values[placeholder] = world[entity.link("creator")].label
        elif what == "founder_job":
            values[placeholder] = world[entity.link("founder")].label
        elif what == "kind":
            values[placeholder] = entity.label
        elif what == "verb":
            values[placeholder] = WORK_KINDS[entity.label][1]
    return values


def _name_of(relation: str) -> Callable[[World, Entity], tuple[str, ...]]:
    return lambda world, entity: (world[entity.link(relation)].title,)


def _year(world: World, entity: Entity) -> tuple[str, ...]:
    return _year_answers(entity.year)


def _label(world: World, entity: Entity) -> tuple[str, ...]:
    return (entity.label,)


def _country_capital(world: World, entity: Entity) -> tuple[str, ...]:
    return (world[entity.link("capital")].title,)


def _bridge(
    kind: str,
    relation: str,
    answer: Callable[[World, Entity], tuple[str, ...]],
    answer_is_named: bool = False,
) -> _Maker:
    """A two-hop maker: the named entity's passage names a bridge entity (by ``relation``) whose
    passage holds the answer. Unless ``answer_is_named`` may be, a draw whose answer is the
    named entity itself (the capital of the country that its capital is in) is declined."""

    def make(world: World, rng: random.Random, pool: _Pool, template: str) -> _Made:
        entity = rng.choice(pool(kind))
        bridge = world[entity.link(relation)]
        if not answer_is_named and entity.title in answer(world, bridge):
            return None
        values = _values(world, entity, {"q": "verb"} if kind == "work" else {})
        return _fill(template, **values), answer(world, bridge), (entity.key, bridge.key)

    return make


def _comparison(kind: str) -> _Maker:
    """2Wiki-style: two named entities of ``kind``; the answer is the one with the earlier year."""

    def make(world: World, rng: random.Random, pool: _Pool, template: str) -> _Made:
        first, second = rng.sample(pool(kind), 2)
        if first.year == second.year:
            return None
        earlier = first if first.year < second.year else second
        letter = {"person": "p", "city": "c", "org": "o", "work": "w"}[kind]
        text = _fill(template, **{letter: first.name, "x": second.name})
        return text, (earlier.title,), (first.key, second.key)

    return make


_MAKERS: dict[str, tuple[_Maker, ...]] = {
    "nq": (
        _single("person", _name_of("born")),
        _single("work", _name_of("creator"), q="verb"),
        _single("org", _name_of("founder")),
        _single("org", _name_of("base")),
        _single("city", _name_of("country")),
        _single("country", _country_capital),
    ),
    "triviaqa": (
        _single("work", _name_of("creator"), j="creator_job", q="verb", n="kind"),
        _single("person", _name_of("born"), j="occupation"),
        _single("org", _name_of("founder"), j="founder_job"),
        _single("country", _country_capital),
        _single("org", _name_of("base")),
    ),
    "popqa": (
        _single("person", _label),
        _single("person", _year),
        _single("org", _year),
        _single("work", _year),
        _single("work", _label),
        _single("city", _year),
    ),
    "hotpotqa": (
        _bridge("work", "creator", _name_of("born")),
        _bridge("org", "founder", _label),
        _bridge("org", "base", _name_of("country")),
    ),
    "2wiki": (
        _comparison("person"),
        _comparison("org"),
        _comparison("work"),
        _comparison("city"),
    ),
    "musique": (
        _bridge("person", "born", _name_of("country")),
        _bridge("person", "born", _year),
        _bridge("city", "country", _country_capital),
    ),
    "bamboogle": (
        _bridge("org", "founder", _year),
        _bridge("org", "base", _year),
        _bridge("work", "creator", _name_of("born")),
    ),
}
