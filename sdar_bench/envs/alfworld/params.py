"""The offline and the real ALFWorld engines' settings: below both, so neither imports the other
to name them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdar_bench.envs.alfworld.world import TASK_TYPES
from sdar_bench.envs.base import EnvParams, distinct_known


class AlfworldParams(EnvParams):
    """Difficulty knobs of the offline ALFWorld engine (the defaults suit a tiny model), and the
    switch to ALFWorld's own games."""

    engine: Literal["offline", "real"] = "offline"
    """offline: the procedural household below; real: ALFWorld's games on the alfworld package
    (``real.py``; ``pip install 'sdar-bench[alfworld]'``)."""
    data_dir: str | None = None
    """engine real: ALFWorld's data folder, the one holding json_2.1.1/ (None: $ALFWORLD_DATA)."""
    eval_split: Literal["valid_seen", "valid_unseen"] = "valid_seen"
    """engine real: the ALFWorld split the evaluation panel plays (the paper: valid_seen);
    training and the warm start play train."""
    expert: Literal["handcoded", "planner"] = "handcoded"
    """engine real: ALFWorld's hand-coded expert (searches the room like a player) or its PDDL
    planner (knows where everything is; replans at every step, slower)."""
    max_turns: int = Field(50, ge=1)
    """Turns per episode before it ends unsolved (the paper: 50; CPU suites use fewer)."""
    history_length: int = Field(2, ge=0)
    """How many past (observation, action) pairs the prompt shows."""
    n_receptacles: int = Field(6, ge=1, le=16)
    """Ordinary receptacles besides the fridge, microwave, sinkbasin and the desklamp's table."""
    n_distractors: int = Field(4, ge=0, le=16)
    """Objects of other types scattered around the room."""
    task_types: tuple[str, ...] = TASK_TYPES
    """Which of the six task types the tasks cycle through (task index modulo this list); with
    engine real, which ALFWorld games are played."""

    @field_validator("task_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_known(value, TASK_TYPES, "task_types")

    @model_validator(mode="after")
    def _data_needs_real(self) -> AlfworldParams:
        # A data folder with the offline engine would be ignored: say so instead.
        if self.data_dir is not None and self.engine != "real":
            raise ValueError("data_dir names ALFWorld's games: set engine: real to play them")
        return self
