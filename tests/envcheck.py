"""Shared by the engine tests: play expert episodes and collect every word a tiny model reads."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from sdar_bench.envs.base import Env, Observation, Task, words

# (rng, observation, expert action) → the action actually played (None = an invalid turn)
Detour = Callable[[random.Random, Observation, str], str | None]


def played_words(env: Env, tasks: Iterable[Task], detour: Detour, seed: int = 0) -> set[str]:
    """Words of every prompt, expert response and observation of the expert's episodes, with
    ``detour`` replacing some of its actions so that rarer pages and notices show up too."""
    seen: set[str] = set()
    rng = random.Random(seed)
    for task in tasks:
        game = env.new_game(task)
        obs = game.reset()
        history: list[tuple[str, str]] = []
        while not obs.done:
            expert = game.expert_action()
            assert expert is not None
            seen.update(words(env.render_prompt(task, history, obs, len(history))))
            seen.update(words(env.format_response(expert, env.expert_thought(game, expert))))
            action = detour(rng, obs, expert)
            history.append((obs.text, action or "invalid"))
            obs = game.step(action)
        seen.update(words(obs.text))
    return seen


def wander(share: float) -> Detour:
    """Replace the expert's action by a random admissible one with probability ``share``."""

    def detour(rng: random.Random, obs: Observation, expert: str) -> str | None:
        return rng.choice(obs.admissible) if rng.random() < share else expert

    return detour
