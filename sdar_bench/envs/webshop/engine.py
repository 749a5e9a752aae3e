"""WebShop's pages as a state machine: search → results → item (→ description / features).

Actions are WebShop's text-mode actions: ``search[query]`` on the search page and ``click[x]``
on an admissible clickable: ``back to search``, ``next >``, ``< prev``, a product id on the
results page, an option value, ``description``, ``features`` and ``buy now`` on the item page.
The episode ends at ``buy now`` (scored with WebShop's reward) or after ``max_turns`` turns
(score 0). Search is BM25 (``bm25s``) over each product's title, options, bullet points and
description, indexed once per shop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sdar_bench.envs.base import ExpertStep, Game, Observation, Task
from sdar_bench.envs.webshop.catalog import Goal, Product
from sdar_bench.envs.webshop.scoring import ScoreParts, score_purchase
from sdar_bench.retrieval import BM25Retriever

# ---- clickables and page texts ----------------------------------------------------------------
BACK, NEXT, PREV = "back to search", "next >", "< prev"
DESCRIPTION, FEATURES, BUY = "description", "features", "buy now"
BUTTONS = (BACK, NEXT, PREV, DESCRIPTION, FEATURES, BUY)
SEARCH_ACTION = "search[<your query>]"  # how the admissible list offers the search box

SEARCH_TEXT = "You are on the search page."
PAGE_TEMPLATES: tuple[str, ...] = (
    SEARCH_TEXT,
    "Results for {query}: page {page} of {pages}.",
    "No results for {query}.",
    "{id}: {title}, ${price}",
    "Item {id}: {title}",
    "Price: ${price}",
    "{name}: {values}",
    "Selected: {selected}",
    "Selected: none",
    "Description of {id}:",
    "Features of {id}:",
    "Thank you for shopping. Your score is {score}.",
)
MAX_TITLE_WORDS = 16  # real WebShop titles are long; the results page shows their start
MAX_TEXT_WORDS = 60  # description / each bullet point, trimmed for a compact prompt
MAX_BULLETS = 5
SEARCH_CACHE_SIZE = 4096  # distinct queries whose ranking a shop keeps

_TOKEN = re.compile(r"\w+|[^\w\s]")
_ACTION = re.compile(r"^(search|click)\s*\[(.*)\]$", re.S)


def token_key(text: str) -> str:
    """Spacing-insensitive key: ``"3 . 4 fl oz"`` and ``"3.4 fl oz"`` compare equal."""
    return " ".join(_TOKEN.findall(text.lower()))


def detokenize(text: str) -> str:
    """Canonical text of a query the model's tokenizer decoded with spaces around punctuation."""
    out = token_key(text)
    out = re.sub(r"(?<=\d) \. (?=\d)", ".", out)
    out = re.sub(r"(?<=\w) ([-'/]) (?=\w)", r"\1", out)
    out = re.sub(r"\$ (?=\d)", "$", out)
    return re.sub(r" (?=[,.!?;:%)])", "", out)


def trim(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[:limit]) + (" ..." if len(words) > limit else "")


def price_text(price: float) -> str:
    return f"{price:.2f}"


def result_line(product: Product) -> str:
    return f"{product.asin}: {trim(product.title, MAX_TITLE_WORDS)}, ${price_text(product.price)}"


def item_text(product: Product, selected: Mapping[str, str]) -> str:
    lines = [f"Item {product.asin}: {product.title}", f"Price: ${price_text(product.price)}"]
    lines += [f"{name}: {', '.join(values)}" for name, values in product.options]
    chosen = ", ".join(f"{name} {value}" for name, value in selected.items())
    lines.append(f"Selected: {chosen or 'none'}")
    return "\n".join(lines)


def description_text(product: Product) -> str:
    return f"Description of {product.asin}:\n{trim(product.description, MAX_TEXT_WORDS)}"


def features_text(product: Product) -> str:
    bullets = [trim(b, MAX_TEXT_WORDS) for b in product.bullets[:MAX_BULLETS]]
    return f"Features of {product.asin}:\n" + "\n".join(bullets)


def product_pages(product: Product) -> list[str]:
    """Every page text a product can show (``vocabulary`` reads its words from these)."""
    return [
        result_line(product),
        item_text(product, {}),
        description_text(product),
        features_text(product),
    ]


def clickable_options(product: Product) -> list[tuple[str, str]]:
    """(option name, value) pairs offered as clicks: the first of equal values, never a button."""
    seen = {token_key(b) for b in BUTTONS}
    pairs = []
    for name, value in product.option_values():
        if token_key(value) not in seen:
            seen.add(token_key(value))
            pairs.append((name, value))
    return pairs


# ---- action text ------------------------------------------------------------------------------
def canonical_action(
    text: str, admissible: Sequence[str], title_ids: Mapping[str, Sequence[str]] | None = None
) -> tuple[str | None, str]:
    """The canonical form of an action body, or (None, why it is invalid). Never raises.

    ``search [ long lasting perfume ]`` → ``search[long lasting perfume]`` (only where the
    admissible list offers the search box); ``click [ B0A1C2 ]`` → ``click[b0a1c2]`` when that
    click is admissible (case and spacing ignored); a product's title clicks its id.
    """
    match = _ACTION.match(" ".join(text.split()).lower())
    if match is None:
        return None, "expected search[...] or click[...]"
    verb, arg = match.group(1), match.group(2).strip()
    if "[" in arg or "]" in arg:
        return None, "one action only"
    if verb == "search":
        if SEARCH_ACTION not in admissible:
            return None, "search is only available on the search page"
        query = detokenize(arg)
        return (f"search[{query}]", "") if query else (None, "empty search query")
    key = token_key(arg)
    clicks = {token_key(a[6:-1]): a for a in admissible if a.startswith("click[")}
    if key in clicks:
        return clicks[key], ""
    for asin in (title_ids or {}).get(key, ()):
        if f"click[{asin}]" in admissible:
            return f"click[{asin}]", ""
    return None, "click target not admissible"


# ---- the shop: products and their search index ----------------------------------------------
class Shop:
    """A product list with a BM25 index (built on first search) and a title → ids map."""

    def __init__(self, products: Sequence[Product]) -> None:
        self.products = tuple(products)
        self.by_id = {p.asin: p for p in self.products}
        if len(self.by_id) != len(self.products):
            raise ValueError("product ids must be unique")
        title_ids: dict[str, list[str]] = {}
        for p in self.products:
            title_ids.setdefault(token_key(p.title), []).append(p.asin)
        self.title_ids = {k: tuple(v) for k, v in title_ids.items()}
        self._index: BM25Retriever | None = None
        self._cache: dict[str, tuple[str, ...]] = {}

    def _build(self) -> BM25Retriever:
        docs = [
            " ".join([p.title, *(v for _, v in p.option_values()), *p.bullets, p.description])
            for p in self.products
        ]
        # keep one-character words: sizes such as "7"
        return BM25Retriever(docs, token_pattern=r"(?u)\b\w+\b")

    def search(self, query: str, limit: int) -> tuple[str, ...]:
        """Ids of the products matching ``query`` best first (ties: catalogue order)."""
        if query not in self._cache:
            if len(self._cache) >= SEARCH_CACHE_SIZE:  # a policy's queries are unbounded
                self._cache.clear()
            if self._index is None:
                self._index = self._build()
            scores = self._index.scores(query)  # 0 everywhere when no word of it is indexed
            order = np.lexsort((np.arange(len(scores)), -scores))
            ranked = tuple(self.products[i].asin for i in order if scores[i] > 0)
            self._cache[query] = ranked
        return self._cache[query][:limit]


# ---- the game ---------------------------------------------------------------------------------
class WebshopGame(Game):
    """One shopping episode: the page state, the options chosen, the purchase and its score.

    Every ``step`` counts a turn, the invalid turn's ``None`` included; an action that is not
    admissible on the current page changes nothing.
    """

    def __init__(
        self,
        task: Task,
        goal: Goal,
        shop: Shop,
        max_turns: int,
        per_page: int = 10,
        max_results: int = 50,
        *,
        expert: Callable[[WebshopGame], ExpertStep | None],
    ) -> None:
        self.task = task
        self.expert = expert  # given by the env: the expert builds on this module
        self.goal = goal
        self.shop = shop
        self.max_turns = max_turns
        self.per_page = per_page
        self.max_results = max_results
        self.reset()

    def reset(self) -> Observation:
        self.page = "search"  # search / results / item / description / features / done
        self.query = ""
        self.results: tuple[str, ...] = ()
        self.page_no = 0
        self.item: str | None = None
        self.selected: dict[str, str] = {}
        self.turns = 0
        self.purchase: ScoreParts | None = None
        return self._observe()

    # -- state --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.purchase is not None or self.turns >= self.max_turns

    @property
    def n_pages(self) -> int:
        return max(1, -(-len(self.results) // self.per_page))

    def page_items(self) -> tuple[str, ...]:
        start = self.page_no * self.per_page
        return self.results[start : start + self.per_page]

    def product(self) -> Product:
        assert self.item is not None
        return self.shop.by_id[self.item]

    def admissible(self) -> tuple[str, ...]:
        if self.page == "search":
            return (SEARCH_ACTION,)
        if self.page == "results":
            buttons = [BACK]
            if self.page_no + 1 < self.n_pages:
                buttons.append(NEXT)
            if self.page_no > 0:
                buttons.append(PREV)
            return tuple(f"click[{x}]" for x in [*buttons, *self.page_items()])
        if self.page == "item":
            values = [v for _, v in clickable_options(self.product())]
            clicks = [BACK, PREV, DESCRIPTION, FEATURES, *values, BUY]
            return tuple(f"click[{x}]" for x in clicks)
        if self.page in ("description", "features"):
            return (f"click[{BACK}]", f"click[{PREV}]")
        return ()

    def page_text(self) -> str:
        if self.page == "search":
            return SEARCH_TEXT
        if self.page == "results":
            if not self.results:
                return f"No results for {self.query}."
            header = f"Results for {self.query}: page {self.page_no + 1} of {self.n_pages}."
            lines = [result_line(self.shop.by_id[i]) for i in self.page_items()]
            return "\n".join([header, *lines])
        if self.page == "item":
            return item_text(self.product(), self.selected)
        if self.page == "description":
            return description_text(self.product())
        if self.page == "features":
            return features_text(self.product())
        assert self.purchase is not None
        return f"Thank you for shopping. Your score is {self.purchase.score:.2f}."

    def _observe(self) -> Observation:
        won = self.purchase is not None and self.purchase.score >= 1.0
        admissible = () if self.purchase is not None else self.admissible()
        return Observation(self.page_text(), admissible, done=self.done, won=won)

    # -- transitions --------------------------------------------------------------------------
    def step(self, action: str | None) -> Observation:
        if self.done:
            return self._observe()
        self.turns += 1
        if action is not None:
            canonical, _ = canonical_action(action, self.admissible(), self.shop.title_ids)
            if canonical is not None:
                self._apply(canonical)
        return self._observe()

    def _apply(self, action: str) -> None:
        verb, arg = action.split("[", 1)
        arg = arg[:-1]
        if verb == "search":
            self.query = arg
            self.results = self.shop.search(arg, self.max_results)
            self.page, self.page_no = "results", 0
        elif arg == BACK:
            self.page, self.item, self.selected = "search", None, {}
        elif self.page == "results":
            self._click_results(arg)
        elif self.page == "item":
            self._click_item(arg)
        elif arg == PREV:  # description / features → back to the item
            self.page = "item"

    def _click_results(self, arg: str) -> None:
        if arg == NEXT:
            self.page_no += 1
        elif arg == PREV:
            self.page_no -= 1
        else:
            self.page, self.item, self.selected = "item", arg, {}

    def _click_item(self, arg: str) -> None:
        if arg == PREV:
            self.page, self.item, self.selected = "results", None, {}
        elif arg == DESCRIPTION:
            self.page = "description"
        elif arg == FEATURES:
            self.page = "features"
        elif arg == BUY:
            self.purchase = score_purchase(self.product(), self.goal, self.selected)
            self.page = "done"
        else:
            name = next(n for n, v in clickable_options(self.product()) if v == arg)
            self.selected[name] = arg

    # -- expert and score ---------------------------------------------------------------------
    def expert_action(self) -> str | None:
        step = self.expert_step()
        return None if step is None else step.action

    def expert_step(self) -> ExpertStep | None:
        """The expert's action and its reason (None once the episode is over)."""
        return None if self.done else self.expert(self)

    def score(self) -> float:
        return 0.0 if self.purchase is None else self.purchase.score
