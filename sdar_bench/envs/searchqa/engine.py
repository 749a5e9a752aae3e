"""The Search-QA game: search turns return ``<information>``, an answer turn ends the episode.

Actions are strings ``"search: <query>"`` and ``"answer: <text>"`` (what ``SearchQAEnv.parse``
makes of ``<search>…</search>`` and ``<answer>…</answer>``, lower-cased and single-spaced).
``None`` (an invalid turn) and any other string are a no-op that still counts a turn. The
episode ends at the first answer or after ``max_turns`` turns; the score is Search-R1's exact
match of the answer against the gold answers.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdar_bench.envs.base import ExpertStep, Game, Observation, Task
from sdar_bench.envs.searchqa.retrieval import Retriever, format_information

SEARCH, ANSWER = "search", "answer"
INVALID_TEXT = "Your last response was invalid."
ANSWERED_TEXT = "Your answer was given."
START_TEXT = ""  # nothing has been retrieved before the first turn

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1's (and SQuAD's) answer normalisation: lower-case, drop punctuation, drop the
    articles a/an/the, squeeze white space (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: Sequence[str]) -> float:
    """1.0 iff the normalised prediction equals any normalised gold answer."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(g) for g in gold))


def encode_action(kind: str, text: str) -> str:
    return f"{kind}: {text}"


def decode_action(action: str | None) -> tuple[str, str] | None:
    """``"search: q"`` → ``("search", "q")``; None for anything else (the no-op)."""
    if action is None:
        return None
    kind, sep, text = action.partition(":")
    kind, text = kind.strip().lower(), text.strip()
    if not sep or kind not in (SEARCH, ANSWER) or not text:
        return None
    return kind, text


@dataclass(frozen=True)
class Hop:
    """One search the expert makes: the query, the passage it must find (None: any result
    will do) and what it looks for (a word of its thought: "person", "city", "question")."""

    query: str
    passage: str | None
    target: str


class SearchQAGame(Game):
    """One episode of a question against a retriever.

    ``hops`` is the expert's plan (queries and the passages they must surface); the game keeps
    every passage retrieved so far, so the expert re-plans from whatever the agent searched.
    """

    def __init__(
        self,
        task: Task,
        retriever: Retriever,
        topk: int,
        max_turns: int,
        hops: Sequence[Hop],
        expert: Callable[[SearchQAGame], ExpertStep | None],
    ) -> None:
        self.task = task
        self.expert = expert  # given by the env: the expert builds on this module
        self.retriever = retriever
        self.topk = topk
        self.max_turns = max_turns
        self.hops = tuple(hops)
        self.reset()

    @property
    def golden_answers(self) -> tuple[str, ...]:
        return tuple(self.task.extra["golden_answers"])

    def reset(self) -> Observation:
        self.turns = 0
        self.answer: str | None = None
        self.searches: list[str] = []
        self.retrieved: set[str] = set()
        self.text = START_TEXT
        return self._observe()

    @property
    def done(self) -> bool:
        return self.answer is not None or self.turns >= self.max_turns

    def step(self, action: str | None) -> Observation:
        if self.done:
            return self._observe()
        self.turns += 1
        decoded = decode_action(action)
        if decoded is None:
            self.text = INVALID_TEXT
        elif decoded[0] == SEARCH:
            passages = self.retriever.search([decoded[1]], self.topk)[0]
            self.searches.append(decoded[1])
            self.retrieved.update(passages)
            self.text = format_information(passages)
        else:
            self.answer = decoded[1]
            self.text = ANSWERED_TEXT
        return self._observe()

    def _observe(self) -> Observation:
        return Observation(self.text, None, done=self.done, won=self.score() >= 1.0)

    def score(self) -> float:
        return 0.0 if self.answer is None else exact_match(self.answer, self.golden_answers)

    def expert_action(self) -> str | None:
        step = self.expert_step()
        return None if step is None else step.action

    def expert_step(self) -> ExpertStep | None:
        """The expert's action and its reason (None once an answer was given)."""
        return None if self.answer is not None else self.expert(self)
