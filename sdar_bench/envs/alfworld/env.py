"""The offline ALFWorld env: tasks, games, the prompt template and the vocabulary (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

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

if TYPE_CHECKING:
    from sdar_bench.envs.alfworld.real import RealAlfworld, RealAlfworldGame

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
    real_data: ClassVar[str] = (
        "engine: real + $ALFWORLD_DATA (or data_dir): ALFWorld's games on the alfworld package "
        "(pip install alfworld)"
    )

    params: AlfworldParams  # narrows the base class's EnvParams for type checkers

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # The real engine checks its data and the alfworld package when built (one-line
        # ValueErrors); its module is imported only here, as it loads the optional package.
        self.real: RealAlfworld | None = None
        if self.params.engine == "real":
            from sdar_bench.envs.alfworld.real import RealAlfworld

            self.real = RealAlfworld(self.params)

    # ---- tasks ---------------------------------------------------------------------------
    def task_identity(self, task: Task) -> str:
        """ALFWorld's game file for real games (two harness splits play one ALFWorld split)."""
        return str(task.extra["game"]) if self.real is not None else task.id

    def task(self, split: str, index: int) -> Task:
        if self.real is not None:
            return self.real.task(self.name, split, index)
        seed = task_seed(self.name, split, index)
        types = self.params.task_types
        task_type = types[index % len(types)]
        size = {
            "n_receptacles": self.params.n_receptacles,
            "n_distractors": self.params.n_distractors,
        }
        scene = generate_scene(seed, task_type, **size)
        return Task(self.name, split, index, task_type, scene.goal.text, seed, extra=size)

    def new_game(self, task: Task) -> AlfworldGame | RealAlfworldGame:
        """A fresh game of ``task``: the scene is regenerated from the task's seed and size."""
        if self.real is not None:
            return self.real.new_game(task)
        scene = generate_scene(
            task.seed,
            task.task_type,
            task.extra.get("n_receptacles", self.params.n_receptacles),
            task.extra.get("n_distractors", self.params.n_distractors),
        )
        if scene.goal.text != task.goal:
            raise ValueError(f"task {task.id} does not regenerate its goal {task.goal!r}")
        return AlfworldGame(task, scene, self.params.max_turns)

    def data_status(self) -> tuple[bool, str]:
        return super().data_status() if self.real is None else self.real.data_status()

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
