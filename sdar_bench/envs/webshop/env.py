"""The WebShop env: tasks, games, the prompt template, the parser and the vocabulary (SPEC §5).

Offline it plays a generated catalogue (``catalog.py``); with ``data_dir`` it plays WebShop's
own product and goal files (``data.py``) with the same pages, parser, expert and reward.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sdar_bench.envs.base import (
    Env,
    EnvParams,
    Game,
    Observation,
    Task,
    task_seed,
    words,
)
from sdar_bench.envs.parsing import ParsedTurn, parse_tagged
from sdar_bench.envs.webshop.catalog import (
    CATEGORIES,
    Goal,
    catalog_phrases,
    generate_catalog,
    generate_goal,
)
from sdar_bench.envs.webshop.data import load_webshop
from sdar_bench.envs.webshop.engine import (
    BUTTONS,
    PAGE_TEMPLATES,
    SEARCH_ACTION,
    Shop,
    WebshopGame,
    canonical_action,
    product_pages,
)
from sdar_bench.envs.webshop.expert import FALLBACK_THOUGHT, THOUGHT_TEMPLATES, plan

# The goal comes last, right before the answer, as in the ALFWorld env. History pairs show only
# the first line of each past page (its header) to keep the prompt short for a tiny model.
PROMPT_PAIR = "Observation: {observation}\nAction: {action}\n"
PROMPT_TAIL = (
    "Current observation: {observation}\n"
    "Admissible actions: {actions}\n"
    "Your task is to: {goal}\n"
    "Answer with <think> your reasoning </think> <action> one admissible action </action>."
)
_PUNCT_PAIR = re.compile(r"([^\w\s])(?=[^\w\s])")
# The search box's template in canonical form, "search[< your query >]" (see ``parse``).
_TEMPLATE_SEARCH = canonical_action(SEARCH_ACTION, (SEARCH_ACTION,))[0]

# WebShop's split of its human goals (``web_agent_text_env.py``): shuffle with seed 233, the
# first 500 are the test goals, 500–1500 validation, the rest training.
REAL_SHUFFLE_SEED = 233
REAL_TEST, REAL_TRAIN_START = 500, 1500
EVAL_SPLITS = ("eval", "test", "valid")


def display(text: str) -> str:
    """Text as the prompt shows it: a space between two punctuation marks ("click[< prev]" →
    "click[ < prev]"), so a whitespace pre-tokenizer never glues them into an unknown token."""
    return _PUNCT_PAIR.sub(r"\1 ", text)


def headline(text: str) -> str:
    return text.split("\n", 1)[0]


class WebshopParams(EnvParams):
    """Knobs of the WebShop env; the defaults suit a tiny model and match the paper's turns."""

    max_turns: int = Field(15, ge=1)
    """Turns per episode before it ends unbought (score 0); the paper uses 15."""
    history_length: int = Field(2, ge=0)
    """How many past (observation, action) pairs the prompt shows (each as its page header)."""
    catalog_size: int = Field(420, ge=70, le=5000)
    """Products in the generated catalogue (ten types per category, balanced)."""
    catalog_seed: int = 0
    """Seed of the generated catalogue; tasks are drawn from it by ``task_seed`` alone."""
    results_per_page: int = Field(10, ge=1, le=50)
    """Products per results page (WebShop: 10)."""
    max_results: int = Field(50, ge=1, le=1000)
    """Products a search returns in all (WebShop: 50, i.e. five pages)."""
    data_dir: str | None = None
    """Folder with WebShop's JSON files (see ``data.py``); None plays the generated catalogue."""


@lru_cache(maxsize=8)
def offline_shop(seed: int, size: int) -> Shop:
    """The generated catalogue's shop, shared by every env with the same settings."""
    return Shop(generate_catalog(seed, size))


@lru_cache(maxsize=4)
def real_shop(data_dir: str) -> tuple[Shop, tuple[Goal, ...]]:
    products, goals = load_webshop(data_dir)
    return Shop(products), goals


class WebshopEnv(Env):
    """WebShop: search, results, item pages and WebShop's score (offline catalogue or real data)."""

    name: ClassVar[str] = "webshop"
    real_data: ClassVar[str] = "data_dir: a folder with WebShop's product and goal JSON files"
    description: ClassVar[str] = (
        "WebShop shopping: BM25 search, results and item pages, options, WebShop's score."
    )
    Params: ClassVar[type[EnvParams]] = WebshopParams
    task_types: ClassVar[tuple[str, ...]] = CATEGORIES
    invalid_penalty: ClassVar[float] = 0.1
    reward_scale: ClassVar[float] = 10.0
    eval_temperature: ClassVar[float] = 0.4
    default_c_kl: ClassVar[float] = 0.01

    params: WebshopParams  # narrows the base class's EnvParams for type checkers

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.goals: tuple[Goal, ...] | None = None
        if self.params.data_dir is not None:
            self.shop, self.goals = real_shop(str(Path(self.params.data_dir).expanduser()))
        else:
            self.shop = offline_shop(self.params.catalog_seed, self.params.catalog_size)
        self._real_order: list[int] = []
        if self.goals is not None and len(self.goals) > REAL_TRAIN_START:
            self._real_order = list(range(len(self.goals)))
            random.Random(REAL_SHUFFLE_SEED).shuffle(self._real_order)
        self._by_category = {
            c: [p for p in self.shop.products if p.category == c] for c in CATEGORIES
        }

    # ---- tasks ---------------------------------------------------------------------------
    def goal(self, split: str, index: int) -> Goal:
        """The goal at ``(split, index)``: generated from its seed, or WebShop's goal list."""
        if self.goals is not None:
            return self.goals[self._real_goal_index(split, index)]
        seed = task_seed(self.name, split, index)
        category = CATEGORIES[index % len(CATEGORIES)]
        rng = random.Random(seed)
        return generate_goal(rng, rng.choice(self._by_category[category]))

    def _real_goal_index(self, split: str, index: int) -> int:
        """WebShop's split when the goal list is WebShop-sized; else every split cycles it."""
        assert self.goals is not None
        n = len(self.goals)
        if n <= REAL_TRAIN_START:
            return index % n
        order = self._real_order
        if split == "valid":  # WebShop's own validation goals: disjoint from its test goals
            part = order[REAL_TEST:REAL_TRAIN_START]
        elif split in EVAL_SPLITS:
            part = order[:REAL_TEST]
        else:
            part = order[REAL_TRAIN_START:]
        return part[index % len(part)]

    def task_identity(self, task: Task) -> str:
        """The goal's position in WebShop's goal list for real goals (splits may share it)."""
        if self.goals is None:
            return task.id
        return f"goal/{self._real_goal_index(task.split, task.index)}"

    def task(self, split: str, index: int) -> Task:
        goal = self.goal(split, index)
        seed = task_seed(self.name, split, index)
        return Task(self.name, split, index, goal.category, goal.instruction, seed)

    def new_game(self, task: Task) -> WebshopGame:
        """A fresh game of ``task``: its goal is regenerated from the task's address."""
        goal = self.goal(task.split, task.index)
        if goal.instruction != task.goal:
            raise ValueError(f"task {task.id} does not regenerate its goal {task.goal!r}")
        p = self.params
        return WebshopGame(
            task, goal, self.shop, p.max_turns, p.results_per_page, p.max_results, expert=plan
        )

    # ---- prompt, parser, expert ----------------------------------------------------------
    def render_prompt(
        self, task: Task, history: Sequence[tuple[str, str]], observation: Observation, turn: int
    ) -> str:
        n = self.params.history_length
        shown = list(history)[-n:] if n > 0 else []
        pairs = "".join(
            PROMPT_PAIR.format(observation=display(headline(o)), action=display(a))
            for o, a in shown
        )
        actions = display(", ".join(observation.admissible or ()))
        return pairs + PROMPT_TAIL.format(
            observation=display(observation.text), actions=actions, goal=display(task.goal)
        )

    def parse(self, text: str, admissible: Sequence[str] | None) -> ParsedTurn:
        """``<think>…</think><action>…</action>`` with a ``search[...]`` / ``click[...]`` action,
        spacing and case forgiven (``click [ B0A1C2 ]``); never raises."""
        parsed = parse_tagged(text, ("action",))
        if not parsed.valid or parsed.action is None or admissible is None:
            return parsed
        action, reason = canonical_action(parsed.action, admissible, self.shop.title_ids)
        if action is not None and action == _TEMPLATE_SEARCH:
            # The admissible list offers the search box as a template. Copied as is, it would
            # be a valid turn that searches for "your query": a policy could dodge the
            # invalid-turn penalty without ever writing a query.
            return ParsedTurn(None, "search[<your query>] is a template: write a query in it")
        return ParsedTurn(action, "", "action") if action else ParsedTurn(None, reason)

    def format_response(self, action: str, thought: str = "") -> str:
        """The expert's response, its action spaced as the prompt shows it (``click[ < prev]``)."""
        return f"<think>{thought}</think><action>{display(action)}</action>"

    def random_action(self, game: Game, rng: random.Random, observation: Observation) -> str | None:
        """A random clickable, or on the search page a search for random goal words: the
        admissible list offers the search box only as a template, never to be sent as is."""
        clickables = [a for a in observation.admissible or () if a != SEARCH_ACTION]
        if clickables and rng.random() < 0.9:
            return rng.choice(clickables)
        if SEARCH_ACTION not in (observation.admissible or ()):
            return rng.choice(clickables) if clickables else None
        words = game.task.goal.split()
        return f"search[{' '.join(rng.sample(words, k=min(3, len(words))))}]"

    def expert_thought(self, game: Game, action: str) -> str:
        """The expert's reason when ``action`` is its own choice; a neutral line otherwise."""
        step = game.expert_step() if isinstance(game, WebshopGame) else None
        return step.thought if step is not None and step.action == action else FALLBACK_THOUGHT

    # ---- metrics -------------------------------------------------------------------------
    def metrics(self, results: Sequence[tuple[Task, float]]) -> dict[str, float]:
        """``score`` (mean score ×100), ``accuracy`` (success %), ``success/<category>``."""
        out = super().metrics(results)
        if results:
            out["score"] = 100.0 * sum(s for _, s in results) / len(results)
            out["accuracy"] = out["success/all"]
        return out

    @classmethod
    def table_columns(cls) -> list[str]:
        """Success per category, then the paper's two WebShop columns: score and accuracy."""
        return [*(f"success/{t}" for t in cls.task_types), "score", "accuracy"]

    # ---- vocabulary ----------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        from sdar_bench.skills import skill_bank  # skills imports envs: import here

        texts: list[str] = [
            PROMPT_PAIR,
            PROMPT_TAIL,
            *PAGE_TEMPLATES,
            *BUTTONS,
            SEARCH_ACTION,
            "search click [ ] $ . , : ...",
            *THOUGHT_TEMPLATES,
            *catalog_phrases(),
            *(str(i) for i in range(201)),
            *(f"{i:02d}" for i in range(10)),
            *(text for p in self.shop.products for text in product_pages(p)),
            *(p.asin for p in self.shop.products),
            *skill_bank(self.name).values(),  # the teacher's prompts show them
        ]
        if self.goals is not None:
            texts += [g.instruction for g in self.goals]
        return sorted({w for text in texts for w in words(text)})
