"""Multitask training: one policy on several envs at once (``envs: [[alfworld, webshop, searchqa]]``).

A ``MixEnv`` is an ``Env`` whose tasks come from its member envs: every task keeps its member's
address (``alfworld/train/17``, ``searchqa/eval/3``), so ids never collide, and every
convention that depends on the env (prompt, parser, turn limit, reward, invalid penalty,
evaluation temperature, skill bank) is the member's, found with ``for_task``. The run's name
for it is the members joined by ``+`` (``alfworld+webshop+searchqa``), and its settings are
each member's own ``env_params`` plus ``mix_weights``:

    env_params = {"alfworld": {...}, "webshop": {...}, "searchqa": {...},
                  "mix_weights": {"alfworld": 1.0, "webshop": 1.0, "searchqa": 1.0}}

* Training step: ``tasks_per_step`` is split across members by the weights, largest remainder
  first (ties in member order), so every step has the same share of each env; each member draws
  its tasks from its own train stream.
* Evaluation: each member plays its own test (and validation) panel of ``eval.panel`` tasks
  with its own protocol; rows carry the member's name (``trainer.evaluate``).
* Warm start: task ``i`` of a split is member ``i mod k``'s task ``i div k`` (k members), so
  the expert episodes are spread evenly over the members.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from sdar_bench.envs.base import Env, EnvParams, Game, Observation, Task
from sdar_bench.envs.parsing import ParsedTurn

MIX_SEPARATOR = "+"
WEIGHTS_KEY = "mix_weights"


def is_mix(name: str) -> bool:
    return MIX_SEPARATOR in name


def mix_members(name: str) -> list[str]:
    """The member envs of a run's env name (one name for a single env)."""
    return name.split(MIX_SEPARATOR)


def mix_name(members: Sequence[str]) -> str:
    return MIX_SEPARATOR.join(members)


def split_counts(count: int, weights: Sequence[float]) -> list[int]:
    """``count`` split in proportion to ``weights``: floors first, then the largest remainders
    (earlier members first on ties). Sums to ``count``."""
    total = sum(weights)
    exact = [count * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: count - sum(counts)]:
        counts[i] += 1
    return counts


class MixEnv(Env):
    """Several envs behind one ``Env``: each task is played by the member it belongs to."""

    description = "A multitask mix of offline engines (one policy, per-env tasks and rules)."

    def __init__(self, name: str, engines: dict[str, type[Env]], **params: Any) -> None:
        """``engines``: the env classes by name (``envs.ENVS``, passed in so that this module
        stays below the registry that imports it)."""
        names = mix_members(name)
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"a mix names two or more distinct envs; got {name!r}")
        weights = dict(params.pop(WEIGHTS_KEY, None) or {})
        unknown = set(params) - set(names)
        if unknown:
            raise ValueError(f"mix {name!r}: settings for envs not in it: {sorted(unknown)}")
        if set(weights) - set(names):
            raise ValueError(
                f"{WEIGHTS_KEY}: envs not in the mix {name!r}: {sorted(set(weights) - set(names))}"
            )
        self.name = name  # type: ignore[misc]  # an instance's name: the mix's members
        missing = [m for m in names if m not in engines]
        if missing:
            raise KeyError(f"unknown env {missing[0]!r}; known: {', '.join(sorted(engines))}")
        self.members: dict[str, Env] = {m: engines[m](**params.get(m, {})) for m in names}
        self.weights = [float(weights.get(m, 1.0)) for m in names]
        if any(w < 0 or not math.isfinite(w) for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"{WEIGHTS_KEY}: finite weights ≥ 0 with a positive sum; got {weights}"
            )
        first = self.members[names[0]]
        # collect() bounds its loop by max_turns; each member's games end at their own limit.
        self.params = EnvParams(
            max_turns=max(e.params.max_turns for e in self.members.values()),
            history_length=max(e.params.history_length for e in self.members.values()),
        )
        self.task_types = tuple(  # type: ignore[misc]
            f"{m}:{t}" for m, e in self.members.items() for t in e.task_types
        )
        # One policy, one KL weight: the first member's default unless the suite sets c_kl.
        self.default_c_kl = first.default_c_kl  # type: ignore[misc]

    def for_task(self, task: Task) -> Env:
        return self.members[task.env]

    # ---- tasks -----------------------------------------------------------------------------
    def task(self, split: str, index: int) -> Task:
        envs = list(self.members.values())
        return envs[index % len(envs)].task(split, index // len(envs))

    def panel(self, size: int, split: str = "eval") -> list[Task]:
        """Every member's own panel of ``size`` tasks, one after another."""
        return [t for env in self.members.values() for t in env.panel(size, split)]

    def member_tasks(self, count: int) -> dict[str, int]:
        """How many of ``count`` tasks each member gets (``mix_weights``)."""
        return dict(zip(self.members, split_counts(count, self.weights), strict=True))

    def train_tasks(self, seed: int, step: int, count: int) -> list[Task]:
        out: list[Task] = []
        for name, n in self.member_tasks(count).items():
            if n:
                out += self.members[name].train_tasks(seed, step, n)
        return out

    def task_identity(self, task: Task) -> str:
        return self.for_task(task).task_identity(task)

    def new_game(self, task: Task) -> Game:
        return self.for_task(task).new_game(task)

    # ---- conventions: the task's member's ------------------------------------------------------
    def render_prompt(
        self, task: Task, history: Sequence[tuple[str, str]], observation: Observation, turn: int
    ) -> str:
        return self.for_task(task).render_prompt(task, history, observation, turn)

    def parse(self, text: str, admissible: Sequence[str] | None) -> ParsedTurn:
        raise TypeError("a mix parses with the task's own env: use env.for_task(task).parse")

    def format_response(self, action: str, thought: str = "") -> str:
        raise TypeError("a mix formats with the task's own env: use env.for_task(task)")

    def expert_thought(self, game: Game, action: str) -> str:
        return self.for_task(game.task).expert_thought(game, action)

    def random_action(self, game: Game, rng: random.Random, observation: Observation) -> str | None:
        return self.for_task(game.task).random_action(game, rng, observation)

    def episode_reward(self, game: Game) -> float:
        return self.for_task(game.task).episode_reward(game)

    def metrics(self, results: Sequence[tuple[Task, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, env in self.members.items():
            mine = [(t, s) for t, s in results if t.env == name]
            out |= {f"{name}/{k}": v for k, v in env.metrics(mine).items()} if mine else {}
        return out

    def vocabulary(self) -> list[str]:
        return [w for env in self.members.values() for w in env.vocabulary()]

    def data_status(self) -> tuple[bool, str]:
        states = [(n, *e.data_status()) for n, e in self.members.items()]
        return all(ok for _, ok, _ in states), "; ".join(f"{n}: {line}" for n, _, line in states)

    def panel_hash(self, tasks: Sequence[Task]) -> str:
        return Env.panel_hash(self, tasks)
