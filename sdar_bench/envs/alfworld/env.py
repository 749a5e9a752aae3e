"""The offline ALFWorld env: tasks, games, the prompt template and the vocabulary (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sdar_bench.envs.alfworld.expert import FALLBACK_THOUGHT, THOUGHT_TEMPLATES, plan
from sdar_bench.envs.alfworld.params import AlfworldParams
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
        return AlfworldGame(task, scene, self.params.max_turns, expert=plan)

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
