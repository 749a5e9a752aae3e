"""The reactive expert: the next action from any page, plus a short reason for it.

It knows which product the goal was written for. From the search page it searches with the
goal's content words (the target's title if those do not find it); on a results page it opens
the target, pages toward it, or searches again when that is shorter; on the target's page it
clicks each option the goal asks for, then ``buy now``; anywhere else it goes back. It reads the
state afresh on every call, so it recovers from any detour, and every action it returns is
admissible on the page it was computed from.
"""

from __future__ import annotations

import re

from sdar_bench.envs.base import ExpertStep
from sdar_bench.envs.webshop.catalog import Goal, Product
from sdar_bench.envs.webshop.engine import (
    BACK,
    BUY,
    NEXT,
    PREV,
    WebshopGame,
    clickable_options,
    detokenize,
)
from sdar_bench.envs.webshop.scoring import (
    EXACT_MATCH_OPTS,
    MATCH_THRESHOLD,
    normalize_color,
    similarity,
)

# The expert's reasons; ``vocabulary`` reads their words from here.
THOUGHT_TEMPLATES: tuple[str, ...] = (
    "search for the item",
    "open the matching item",
    "check the next page",
    "check the previous page",
    "search again",
    "wrong item, go back",
    "go back to the item",
    "choose the {name}",
    "choose an option",
    "buy the item",
    "find the right item",
)
FALLBACK_THOUGHT = "find the right item"

# Words of an instruction that say nothing about the product (kept out of the expert's query).
_QUERY_STOP_WORDS_TEXT = (
    "i i'm im am need looking for find me want to buy would like a an some in and with color "
    "size scent flavor that is are which can you please"
)
QUERY_STOP_WORDS = frozenset(_QUERY_STOP_WORDS_TEXT.split())
_PRICE_CLAUSE = re.compile(r",?\s*and price lower than .*$")
_QUERY_WORD = re.compile(r"[\w']+(?:\.\d+)?")


def goal_query(instruction: str) -> str:
    """The instruction's content words: "soft cotton hoodie red large" (no price clause)."""
    text = _PRICE_CLAUSE.sub("", instruction.lower())
    words = [w for w in _QUERY_WORD.findall(text) if w not in QUERY_STOP_WORDS]
    return detokenize(" ".join(words))


def expert_query(game: WebshopGame) -> str:
    """The goal's words if they find the target, else the target's title."""
    query = goal_query(game.goal.instruction)
    if game.goal.asin in game.shop.search(query, game.max_results):
        return query
    return detokenize(game.shop.by_id[game.goal.asin].title)


def wanted_options(product: Product, goal: Goal) -> list[tuple[str, str]]:
    """The (option name, value) clicks that satisfy each goal option on ``product``."""
    offered = clickable_options(product)
    wanted: list[tuple[str, str]] = []
    for i, value in enumerate(goal.options):
        name_hint = goal.option_names[i] if i < len(goal.option_names) else ""
        target = value.lower()
        pool = [(n, v) for n, v in offered if not name_hint or n == name_hint] or offered
        exact = [(n, v) for n, v in pool if v.lower() == target]
        normal = [(n, v) for n, v in pool if normalize_color(v) == normalize_color(target)]
        fuzzy = [
            (n, v)
            for n, v in pool
            if n not in EXACT_MATCH_OPTS
            and similarity(normalize_color(target), normalize_color(v)) > MATCH_THRESHOLD
        ]
        choice = (exact or normal or fuzzy or [None])[0]
        if choice is not None and choice[0] not in {n for n, _ in wanted}:
            wanted.append(choice)
    return wanted


def _option_thought(name: str) -> str:
    return f"choose the {name}" if 1 <= len(name.split()) <= 3 else "choose an option"


def plan(game: WebshopGame) -> ExpertStep | None:
    """The expert's next step, or None once the episode is over."""
    if game.done:
        return None
    target = game.goal.asin
    if game.page == "search":
        return ExpertStep(f"search[{expert_query(game)}]", "search for the item")
    if game.page == "results":
        return _on_results(game, target)
    if game.page in ("description", "features"):
        return ExpertStep(f"click[{PREV}]", "go back to the item")
    if game.item != target:
        return ExpertStep(f"click[{PREV}]", "wrong item, go back")
    for name, value in wanted_options(game.product(), game.goal):
        if game.selected.get(name) != value:
            return ExpertStep(f"click[{value}]", _option_thought(name))
    return ExpertStep(f"click[{BUY}]", "buy the item")


def _on_results(game: WebshopGame, target: str) -> ExpertStep:
    """Open the target, page toward it, or search again, whichever takes fewer turns."""
    here = game.results.index(target) // game.per_page if target in game.results else None
    fresh = game.shop.search(expert_query(game), game.max_results)
    again = 2 + fresh.index(target) // game.per_page if target in fresh else None
    if here == game.page_no:
        return ExpertStep(f"click[{target}]", "open the matching item")
    if here is not None and (again is None or abs(here - game.page_no) <= again):
        if here > game.page_no:
            return ExpertStep(f"click[{NEXT}]", "check the next page")
        return ExpertStep(f"click[{PREV}]", "check the previous page")
    return ExpertStep(f"click[{BACK}]", "search again")
