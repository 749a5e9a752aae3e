"""Environment registry: name → Env class (offline engine or real adapter)."""

from __future__ import annotations

from typing import Any

from sdar_bench.envs.alfworld import AlfworldEnv
from sdar_bench.envs.base import Env, Game, Observation, Task
from sdar_bench.envs.searchqa import SearchQAEnv
from sdar_bench.envs.webshop import WebshopEnv

ENVS: dict[str, type[Env]] = {
    "alfworld": AlfworldEnv,
    "webshop": WebshopEnv,
    "searchqa": SearchQAEnv,
}


def make_env(name: str, **params: Any) -> Env:
    """The env ``name`` with its settings; ``a+b+c`` is a multitask mix of those envs, whose
    settings are each member's (``{a: {...}, b: {...}}``) and ``mix_weights`` (envs/mix.py)."""
    from sdar_bench.envs.mix import MixEnv, is_mix

    if is_mix(name):
        return MixEnv(name, ENVS, **params)
    if name not in ENVS:
        raise KeyError(f"unknown env {name!r}; known: {', '.join(sorted(ENVS))}")
    return ENVS[name](**params)


__all__ = ["ENVS", "Env", "Game", "Observation", "Task", "make_env"]
