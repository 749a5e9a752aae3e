"""The environment protocol every engine (offline or real) speaks.

An ``Env`` is a factory of tasks and games plus the env's fixed conventions: prompt template,
action parser, episode reward, metrics. A ``Game`` is one live episode. Tasks are addressed by
``(split, index)`` and generated from that address alone, so a panel is the same list on every
machine, batch size and worker count (SPEC §6).
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from sdar_bench.envs.parsing import ParsedTurn, parse_action_response


@dataclass(frozen=True)
class Task:
    env: str
    split: str  # "train" or an evaluation split such as "eval"
    index: int
    task_type: str  # e.g. "pick", "heat"; the skill retriever and the metrics key on it
    goal: str  # the instruction shown to the agent
    seed: int  # derived from (env, split, index); the engine's only source of randomness
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.env}/{self.split}/{self.index}"


@dataclass(frozen=True)
class Observation:
    text: str
    admissible: tuple[str, ...] | None  # None where the env has no closed action list
    done: bool = False
    won: bool = False


@dataclass(frozen=True)
class ExpertStep:
    """One expert decision: the action and its 2–5 word reason."""

    action: str
    thought: str


class Game(ABC):
    """One live episode of a task."""

    task: Task

    @abstractmethod
    def reset(self) -> Observation: ...

    @abstractmethod
    def step(self, action: str | None) -> Observation:
        """Apply an action; ``None`` is the no-op an invalid turn gets (SPEC §1)."""

    @abstractmethod
    def expert_action(self) -> str | None:
        """The expert's action from the current state (None once the task is solved)."""

    @abstractmethod
    def score(self) -> float:
        """The env's own task score in [0, 1] (ALFWorld: won; WebShop: goal score; QA: EM)."""


class EnvParams(BaseModel):
    """Settings every env has; engines subclass this with their own knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_turns: int = 50
    """Turns per episode before it ends unsolved."""
    history_length: int = 2
    """How many past (observation, action) pairs the prompt shows."""
    invalid_penalty: float | None = Field(None, ge=0)
    """c_inv, taken from a turn whose output does not parse (SPEC §1); None: the env's default
    (0.1 ALFWorld/WebShop, 0.01 Search-QA). Per env, so a multitask mix keeps each env's own."""


class Env(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[EnvParams]] = EnvParams
    task_types: ClassVar[tuple[str, ...]]
    invalid_penalty: ClassVar[float] = 0.1  # c_inv (SPEC §1)
    reward_scale: ClassVar[float] = 10.0  # R = reward_scale · success (ALFWorld, WebShop)
    default_c_kl: ClassVar[float] = 0.01
    eval_temperature: ClassVar[float] = 0.4  # SPEC §6 (Search-QA: greedy)
    response_tag: ClassVar[str] = "action"
    real_data: ClassVar[str] = ""
    """How to run on the original data instead of the offline engine ("" = not available yet)."""

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)
        if self.params.invalid_penalty is not None:  # the instance's c_inv overrides the default
            self.invalid_penalty = self.params.invalid_penalty  # type: ignore[misc]

    def for_task(self, task: Task) -> Env:
        """The env that plays ``task``: this one (a multitask mix answers with its member)."""
        return self

    # ---- tasks ---------------------------------------------------------------------------
    @abstractmethod
    def task(self, split: str, index: int) -> Task:
        """The task at ``(split, index)``, generated deterministically from that address."""

    def panel(self, size: int, split: str = "eval") -> list[Task]:
        """The fixed evaluation panel: the first ``size`` tasks of ``split``."""
        return [self.task(split, i) for i in range(size)]

    def task_identity(self, task: Task) -> str:
        """What makes two tasks the same task: their address for generated tasks; real
        adapters, whose splits can map onto one data file, name the game or question itself.
        The validation and test panels must share none."""
        return task.id

    def train_tasks(self, seed: int, step: int, count: int) -> list[Task]:
        """The tasks of one training step: a seed-dependent window of the train split."""
        offset = task_seed(self.name, "train-offset", seed) % 1_000_000
        return [self.task("train", offset + step * count + k) for k in range(count)]

    @abstractmethod
    def new_game(self, task: Task) -> Game: ...

    # ---- conventions shared by the offline engine and the real adapter -------------------
    @abstractmethod
    def render_prompt(
        self, task: Task, history: Sequence[tuple[str, str]], observation: Observation, turn: int
    ) -> str:
        """The turn's prompt: task, last ``history_length`` (observation, action) pairs, the
        current observation and the admissible actions where the env has them."""

    def parse(self, text: str, admissible: Sequence[str] | None) -> ParsedTurn:
        return parse_action_response(text, admissible)

    def format_response(self, action: str, thought: str = "") -> str:
        """The response text an expert turn is trained on."""
        return f"<think>{thought}</think><action>{action}</action>"

    def expert_thought(self, game: Game, action: str) -> str:
        """A short reasoning line for expert trajectories (engines may override)."""
        return ""

    def random_action(self, game: Game, rng: random.Random, observation: Observation) -> str | None:
        """A random valid move, for the noisy episodes of the warm start (None: no noise here)."""
        return rng.choice(observation.admissible) if observation.admissible else None

    def episode_reward(self, game: Game) -> float:
        return self.reward_scale * float(game.score() >= 1.0)

    def metrics(self, results: Sequence[tuple[Task, float]]) -> dict[str, float]:
        """Success (%) per task type and overall from ``(task, score)`` pairs."""
        out: dict[str, float] = {}
        for task_type in self.task_types:
            scores = [s >= 1.0 for t, s in results if t.task_type == task_type]
            if scores:
                out[f"success/{task_type}"] = 100.0 * sum(scores) / len(scores)
        if results:
            out["success/all"] = 100.0 * sum(s >= 1.0 for _, s in results) / len(results)
        return out

    @classmethod
    def table_columns(cls) -> list[str]:
        """The metrics a results table shows for this env, in order (headline last)."""
        return [*(f"success/{t}" for t in cls.task_types), "success/all"]

    def vocabulary(self) -> list[str]:
        """Every word the engine can emit, for building the tiny models' word-level tokenizer."""
        return []

    def data_status(self) -> tuple[bool, str]:
        """Whether the data this env's settings name is on this machine, in one line.

        Settings whose name ends in ``_dir`` or ``_path`` point at real data; none set means
        the offline engine, which ships with the package.
        """
        paths = {
            name: value
            for name, value in self.params.model_dump().items()
            if name.endswith(("_dir", "_path")) and value
        }
        for name, value in paths.items():
            if not Path(value).expanduser().exists():
                return False, f"env_params.{self.name}.{name}: {value} does not exist"
        if paths:
            return True, "real data: " + ", ".join(f"{k}={v}" for k, v in paths.items())
        return True, "offline engine (ships with the package)"

    def panel_hash(self, tasks: Sequence[Task]) -> str:
        text = "\n".join(f"{t.id}|{t.task_type}|{t.seed}|{t.goal}" for t in tasks)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_WORD = re.compile(r"\w+|[^\w\s]")
_PLACEHOLDER = re.compile(r"\{\w*(:[^}]*)?\}")
_TAG = re.compile(r"</?\w+>")


def words(text: str) -> list[str]:
    """The word-level split of the tiny models' vocabulary (lower-cased), with response tags and
    ``str.format`` placeholders removed, so templates can list their words for ``vocabulary``."""
    return _WORD.findall(_TAG.sub(" ", _PLACEHOLDER.sub(" ", text)).lower())


def distinct_known(value: tuple[str, ...], known: tuple[str, ...], field: str) -> tuple[str, ...]:
    """Validate a non-empty tuple of distinct names from ``known`` (a pydantic field check)."""
    if not value or len(set(value)) != len(value) or any(v not in known for v in value):
        raise ValueError(f"{field} must be distinct names from {known}, got {list(value)}")
    return value


def task_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
