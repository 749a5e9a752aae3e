"""WebShop's reward for a purchase (SPEC §5).

Source: WebShop (Yao et al., 2022), ``web_agent_site/engine/goal.py``, ``get_reward``::

    score = r_type · (n_attr + n_opt + price_ok) / (|goal attributes| + |goal options| + 1)

* ``n_attr``: goal attributes that match: rapidfuzz ``token_set_ratio`` > 85 with one of the
  product's attributes, or the attribute appears verbatim in the title, the bullet points or
  the description (all lower-cased).
* ``n_opt``: goal options that match a selected option: an option named ``size`` must be
  equal (WebShop's ``EXACT_MATCH_OPTS``), any other ``token_set_ratio`` > 85; both sides go
  through WebShop's ``normalize_color`` first ("navy blue" → "blue").
* ``price_ok``: the product's price ≤ the goal's ``price_upper``.
* ``r_type`` (``get_type_reward``): 1 if the product's query equals the goal's, or ≥ 2 levels of
  the category paths match, or the title overlap > 0.2; else 0.5; then 0.1 if the title overlap
  < 0.1 and 0 if it is 0. The title overlap is |T(bought title) ∩ T(goal title)| / |T(goal
  title)| (0.2 where T(goal title) is empty).

**[choice]** WebShop's T is the set of spaCy nouns/proper nouns of a title; offline we use the
title's words minus English stop words (no spaCy model to download; titles here are noun
phrases, so the two agree on what matters: the product type words).
**[choice]** ``n_opt`` counts goal options hit (as SPEC §5 states it). The released code loops
over the *selected* options instead and also counts a selected value found in the product
text; counting per goal option keeps the score in [0, 1] and is the same on every goal whose
options are all selected once.
``token_set_ratio`` is applied with rapidfuzz's ``default_process`` (lower-case, punctuation to
spaces), which is what ``thefuzz``'s ``full_process`` does before calling rapidfuzz.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from rapidfuzz import fuzz, utils

from sdar_bench.envs.webshop.catalog import Goal, Product

MATCH_THRESHOLD = 85
EXACT_MATCH_OPTS = ("size",)

# WebShop's ``web_agent_site/engine/normalize.py`` ``COLOR_SET`` (order matters: the first colour
# contained in an option value is its normal form).
COLOR_SET: tuple[str, ...] = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black",
    "blue", "blush", "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel",
    "champagne", "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee", "cognac",
    "copper", "coral", "cranberry", "cream", "crystal", "dark", "denim", "eggplant", "elephant",
    "espresso", "fuchsia", "gold", "granite", "grape", "graphite", "grass", "gray", "green",
    "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light",
    "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach",
    "pewter", "pink", "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand",
    "sapphire", "seashell", "silver", "skull", "slate", "steel", "stone", "stonewash",
    "sunflower", "tan", "taupe", "teal", "tiger", "turquoise", "violet", "walnut", "wheat",
    "white", "wine", "yellow",
)  # fmt: skip

_STOP_WORDS_TEXT = (
    "a an and are as at be by for from has have in is it its of on or s set that the this to "
    "with without your you i me my we our"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_TITLE_WORD = re.compile(r"[a-z0-9]+")


def normalize_color(value: str) -> str:
    """WebShop's ``normalize_color``: the first known colour inside ``value``, else ``value``."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def similarity(a: str, b: str) -> float:
    return fuzz.token_set_ratio(a, b, processor=utils.default_process)


def title_words(title: str) -> set[str]:
    """The stop-word-filtered words of a title (the offline stand-in for spaCy's nouns)."""
    return {w for w in _TITLE_WORD.findall(title.lower()) if w not in STOP_WORDS}


@dataclass(frozen=True)
class ScoreParts:
    """The reward and its components, as WebShop's ``verbose`` mode reports them."""

    score: float
    r_type: float
    n_attr: int
    n_opt: int
    price_ok: bool
    query_match: bool
    category_match: bool
    title_score: float


def type_reward(product: Product, goal: Goal) -> tuple[float, bool, bool, float]:
    """``get_type_reward``: (r_type, query match, category match, title score)."""
    query_match = product.query.strip().lower() == goal.query.strip().lower()
    bought_path = {x.strip().lower() for x in product.product_category.split("›")}
    goal_path = {x.strip().lower() for x in goal.product_category.split("›")}
    category_match = len((bought_path & goal_path) - {""}) >= 2
    desired = title_words(goal.name)
    bought = title_words(product.title)
    title_score = len(bought & desired) / len(desired) if desired else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(product: Product, goal: Goal) -> int:
    """``get_attribute_reward``'s count of goal attributes the product has."""
    text = (product.title, " ".join(product.bullets), product.description)
    text = tuple(t.lower() for t in text)
    count = 0
    for wanted in goal.attributes:
        fuzzy = any(similarity(have, wanted) > MATCH_THRESHOLD for have in product.attributes)
        count += fuzzy or any(wanted.lower() in t for t in text)
    return count


def option_matches(selected: Mapping[str, str], goal: Goal) -> int:
    """Goal options hit by a selected option (``size`` exactly, others fuzzily)."""
    chosen = [(name.lower(), normalize_color(value.lower())) for name, value in selected.items()]
    count = 0
    for wanted in goal.options:
        target = normalize_color(wanted.lower())
        for name, value in chosen:
            hit = (
                value == target
                if name in EXACT_MATCH_OPTS
                else similarity(target, value) > MATCH_THRESHOLD
            )
            if hit:
                count += 1
                break
    return count


def score_purchase(product: Product, goal: Goal, selected: Mapping[str, str]) -> ScoreParts:
    """WebShop's ``get_reward`` for buying ``product`` with the ``selected`` options."""
    r_type, query_match, category_match, title_score = type_reward(product, goal)
    n_attr = attribute_matches(product, goal)
    n_opt = option_matches(selected, goal)
    price_ok = product.price <= goal.price_upper
    total = (n_attr + n_opt + int(price_ok)) / (len(goal.attributes) + len(goal.options) + 1)
    return ScoreParts(
        total * r_type, r_type, n_attr, n_opt, price_ok, query_match, category_match, title_score
    )
