"""The offline ALFWorld env: tasks, games, the prompt template and the vocabulary (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field, field_validator

from sdar_bench.envs.alfworld.expert import FALLBACK_THOUGHT, THOUGHT_TEMPLATES
from sdar_bench.envs.alfworld.world import (
    COMMAND_TEMPLATES,
    GOAL_TEMPLATES,
    LAMP,
    MAX_NUMBER,
    OBJECT_TYPES,
    RECEPTACLE_TYPES,
    RESPONSE_TEMPLATES,
    TASK_TYPES,
    AlfworldGame,
    generate_scene,
)
from sdar_bench.envs.base import (
    Env,
    EnvParams,
    Game,
    Observation,
    Task,
    distinct_known,
    task_seed,
    words,
)

# The goal comes last, right before the answer: a tiny model attends to recent tokens first, and
# a real model loses nothing by reading the task after the state it applies to.
PROMPT_PAIR = "Observation: {observation}\nAction: {action}\n"
PROMPT_TAIL = (
    "Current observation: {observation}\n"
    "Admissible actions: {actions}\n"
    "Your task is to: {goal}\n"
    "Answer with <think> your reasoning </think> <action> one admissible action </action>."
)


class AlfworldParams(EnvParams):
    """Difficulty knobs of the offline ALFWorld engine; the defaults suit a tiny model."""

    max_turns: int = Field(20, ge=1)
    """Turns per episode before it ends unsolved (the paper's real ALFWorld uses 50)."""
    history_length: int = Field(2, ge=0)
    """How many past (observation, action) pairs the prompt shows."""
    n_receptacles: int = Field(6, ge=1, le=16)
    """Ordinary receptacles besides the fridge, microwave, sinkbasin and the desklamp's table."""
    n_distractors: int = Field(4, ge=0, le=16)
    """Objects of other types scattered around the room."""
    task_types: tuple[str, ...] = TASK_TYPES
    """Which of the six task types the tasks cycle through (task index modulo this list)."""

    @field_validator("task_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_known(value, TASK_TYPES, "task_types")


class AlfworldEnv(Env):
    """Procedural household with ALFWorld's six task types, commands and wording (offline)."""

    name: ClassVar[str] = "alfworld"
    description: ClassVar[str] = (
        "Offline ALFWorld-style household: six task types, admissible commands, reactive expert."
    )
    Params: ClassVar[type[EnvParams]] = AlfworldParams
    task_types: ClassVar[tuple[str, ...]] = TASK_TYPES
    invalid_penalty: ClassVar[float] = 0.1
    eval_temperature: ClassVar[float] = 0.4

    params: AlfworldParams  # narrows the base class's EnvParams for type checkers

    # ---- tasks ---------------------------------------------------------------------------
    def task(self, split: str, index: int) -> Task:
        seed = task_seed(self.name, split, index)
        types = self.params.task_types
        task_type = types[index % len(types)]
        size = {
            "n_receptacles": self.params.n_receptacles,
            "n_distractors": self.params.n_distractors,
        }
        scene = generate_scene(seed, task_type, **size)
        return Task(self.name, split, index, task_type, scene.goal.text, seed, extra=size)

    def new_game(self, task: Task) -> AlfworldGame:
        """A fresh game of ``task``: the scene is regenerated from the task's seed and size."""
        scene = generate_scene(
            task.seed,
            task.task_type,
            task.extra.get("n_receptacles", self.params.n_receptacles),
            task.extra.get("n_distractors", self.params.n_distractors),
        )
        if scene.goal.text != task.goal:
            raise ValueError(f"task {task.id} does not regenerate its goal {task.goal!r}")
        return AlfworldGame(task, scene, self.params.max_turns)

    # ---- prompt and expert ---------------------------------------------------------------
    def render_prompt(
        self, task: Task, history: Sequence[tuple[str, str]], observation: Observation, turn: int
    ) -> str:
        n = self.params.history_length
        shown = list(history)[-n:] if n > 0 else []
        pairs = "".join(PROMPT_PAIR.format(observation=o, action=a) for o, a in shown)
        actions = ", ".join(observation.admissible or ())
        return pairs + PROMPT_TAIL.format(
            observation=observation.text, actions=actions, goal=task.goal
        )

    def expert_thought(self, game: Game, action: str) -> str:
        """The expert's reason when ``action`` is its own choice; a neutral line otherwise."""
        step = game.expert_step() if isinstance(game, AlfworldGame) else None
        return step.thought if step is not None and step.action == action else FALLBACK_THOUGHT

    # ---- vocabulary ----------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        from sdar_bench.skills import skill_bank  # skills imports envs: import here

        texts: list[str] = [
            PROMPT_PAIR,
            PROMPT_TAIL,
            *RESPONSE_TEMPLATES,
            *COMMAND_TEMPLATES,
            *THOUGHT_TEMPLATES,
            *(t for pair in GOAL_TEMPLATES.values() for t in pair),
            *OBJECT_TYPES,
            *RECEPTACLE_TYPES,
            LAMP,
            *(str(i) for i in range(1, MAX_NUMBER + 1)),
            *skill_bank(self.name).values(),  # the teacher's prompts show them
        ]
        return sorted({w for text in texts for w in words(text)})
