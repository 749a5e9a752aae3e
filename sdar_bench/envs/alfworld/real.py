"""ALFWorld's own engine behind the Env protocol: the ``alfworld`` package plays ALFWorld's games.

Used by ``AlfworldEnv`` with ``engine: real``; the prompt, parser, reward and metrics stay the
offline engine's. Games are read where ``alfworld-download`` puts them::

    $ALFWORLD_DATA/json_2.1.1/<split>/<task folder>/<trial>/{game.tw-pddl, traj_data.json, ...}

``game.tw-pddl`` is ALFWorld's compiled game (JSON: the ALFRED PDDL domain, the TextWorld grammar
with the goal filled in, the problem, ``solvable``); ``traj_data.json`` carries the task
parameters ALFWorld's hand-coded expert reads. The task type comes from the task folder's name
(``pick_heat_then_place_in_recep-Egg-None-Fridge-13`` → ``heat``), as in ALFWorld's own loader.

The game runs on textworld's PDDL engine wrapped the way ALFWorld wraps it
(``AlfredExpert(AlfredInfos(AlfredDemangler(PddlEnv(infos))))``), and the expert action is the
first command of the ``expert_plan`` that wrapper computes after every step.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import random
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sdar_bench.envs.alfworld.world import NOTHING
from sdar_bench.envs.base import Game, Observation, Task, task_seed
from sdar_bench.envs.parsing import normalize_command

if TYPE_CHECKING:
    from sdar_bench.envs.alfworld.params import AlfworldParams

DATA_VAR = "ALFWORLD_DATA"
DATA_FOLDER = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
# No "[extra]" brackets: plan and run print errors through rich, which reads them as markup.
INSTALL = "pip install alfworld (the sdar-bench extra 'alfworld' pins the tested version)"

# ALFWorld's task folder prefixes → the paper's six task types.
FOLDER_TASK_TYPES: dict[str, str] = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick2",
}
VALID_SPLIT = "valid"  # the harness's validation panel (trainer.VALID_SPLIT)
# Harness splits that play ALFWorld's train games; every other harness split (the evaluation
# panel's "eval") plays ``eval_split``.
TRAIN_SPLITS = frozenset({"train", "warmstart"})
# The goal as the game's grammar states it: a JSON string in the grammar's "task" rule.
_GOAL = re.compile(r'Your task is to: ((?:[^"\\\n]|\\.)*)"')


def task_type_of(path: Path | str) -> str | None:
    """The paper's task type from the nearest ALFWorld task folder in ``path`` (None: none)."""
    for part in reversed(Path(path).parts):
        task_type = FOLDER_TASK_TYPES.get(part.split("-", 1)[0])
        if task_type is not None:
            return task_type
    return None


def goal_of(grammar: str) -> str | None:
    """The goal written into a game's grammar ("put a clean apple in fridge."), None if absent."""
    match = _GOAL.search(grammar)
    return json.loads(f'"{match.group(1)}"').strip() if match else None


def intro_text(feedback: str) -> str:
    """ALFWorld's opening text without its banner and task line.

    The prompt states the goal on its own line, and the offline engine's first observation is
    the room alone; the handcoded expert still reads the full text inside the wrapper.
    """
    paragraphs = [p.strip() for p in feedback.split("\n\n")]
    kept = [p for p in paragraphs if p and not p.startswith(("-=", "Your task is to:"))]
    return "\n\n".join(kept)


@dataclass(frozen=True)
class GameRecord:
    path: Path  # the game.tw-pddl file
    task_type: str
    goal: str


def find_games(split_dir: Path, task_types: tuple[str, ...], order_seed: int) -> list[GameRecord]:
    """ALFWorld's playable games under ``split_dir``, in a fixed shuffled order.

    Kept as ALFWorld's ``AlfredTWEnv`` keeps them: a trial folder with ``traj_data.json`` and
    ``game.tw-pddl`` marked solvable, no movable receptacles or sliced objects (the text engine
    does not support them). The order is a seeded shuffle of the sorted relative paths: it does
    not depend on the file system, and a panel or a training step that takes consecutive
    indices gets a mix of task types instead of one folder's trials.
    """
    records: list[GameRecord] = []
    for path in sorted(split_dir.rglob(GAME_FILE), key=lambda p: p.relative_to(split_dir).parts):
        relative = path.relative_to(split_dir)
        if "movable" in str(relative) or "Sliced" in str(relative):
            continue
        task_type = task_type_of(relative)
        if task_type not in task_types or not (path.parent / TRAJ_FILE).is_file():
            continue
        data = json.loads(path.read_text())
        if not data.get("solvable"):
            continue
        goal = goal_of(data.get("grammar", ""))
        if goal is None:
            raise ValueError(f"{path}: its grammar has no 'Your task is to:' line")
        records.append(GameRecord(path, task_type, goal))
    random.Random(order_seed).shuffle(records)
    return records


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global ``random`` for one engine call and restore it after.

    ALFWorld's hand-coded expert draws from the global generator (which of two apples to take,
    a random command when it repeats itself); seeding it per turn makes expert plans, and so
    the warm-start data, reproducible without touching anyone else's random stream.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


@functools.cache
def _alfworld(data_dir: str) -> SimpleNamespace:
    """The alfworld and textworld pieces the adapter uses; ValueError with the install line.

    Importing alfworld creates ``$ALFWORLD_DATA`` (default ``~/.cache/alfworld``) and exports
    it. The variable points at the folder in use during the import and is restored after, so
    an env built later without ``$ALFWORLD_DATA`` still reports it missing.
    """
    before = os.environ.get(DATA_VAR)
    os.environ[DATA_VAR] = data_dir
    try:
        importlib.import_module("alfworld")  # first: a missing package fails here, not deeper
        importlib.import_module("fast_downward")  # textworld's PDDL engine (textworld[pddl])
        textworld = importlib.import_module("textworld")
        pddl = importlib.import_module("textworld.envs.pddl")
        tw_env = importlib.import_module("alfworld.agents.environment.alfred_tw_env")
    except ImportError as exc:
        raise ValueError(
            f"alfworld engine real needs the alfworld package ({exc}): {INSTALL}"
        ) from None
    finally:
        if before is None:
            os.environ.pop(DATA_VAR, None)
        else:
            os.environ[DATA_VAR] = before

    class GuardedExpert(tw_env.AlfredExpert):
        """ALFWorld's expert wrapper, except that an expert that gives up ends its plan rather
        than the episode: the hand-coded expert raises when it times out or runs out of
        subgoals, after the wrapper has already applied the agent's command."""

        def _gather_infos(self) -> None:
            try:
                super()._gather_infos()
            except Exception:  # any failure of the heuristic expert: no plan from here
                self.state["extra.expert_plan"] = []

    return SimpleNamespace(
        EnvInfos=textworld.EnvInfos,
        PddlEnv=pddl.PddlEnv,
        AlfredDemangler=tw_env.AlfredDemangler,
        AlfredInfos=tw_env.AlfredInfos,
        GuardedExpert=GuardedExpert,
    )


class RealAlfworld:
    """ALFWorld's games under a data folder: task addresses, game files, pooled engines."""

    def __init__(self, params: AlfworldParams) -> None:
        self.params = params
        source = "env parameter data_dir" if params.data_dir else f"${DATA_VAR}"
        data_dir = params.data_dir or os.environ.get(DATA_VAR)
        if not data_dir:
            raise ValueError(
                f"alfworld engine real: ${DATA_VAR} is not set; set it (or the alfworld env "
                f"parameter data_dir) to ALFWorld's data folder, the one holding {DATA_FOLDER}/ "
                "(alfworld-download fills it)"
            )
        self.root = Path(data_dir).expanduser()
        self.games_dir = self.root / DATA_FOLDER
        # Both splits checked now: a training run should not fail after its first evaluation.
        for split in ("train", params.eval_split):
            if not (self.games_dir / split).is_dir():
                raise ValueError(
                    f"alfworld engine real: no {DATA_FOLDER}/{split} in {self.root} ({source}); "
                    f"point {source} at ALFWorld's data folder (alfworld-download fills it)"
                )
        self.modules = _alfworld(str(self.root))
        self._games: dict[str, list[GameRecord]] = {}
        self._idle: list[Any] = []  # textworld envs of finished games, reused by new ones
        self.engines_built = 0
        self.games(params.eval_split)  # an empty evaluation split fails here, not mid-run

    # ---- tasks ---------------------------------------------------------------------------
    def alfworld_split(self, split: str) -> str:
        return "train" if split in TRAIN_SPLITS else self.params.eval_split

    def games(self, alfworld_split: str) -> list[GameRecord]:
        """A split's games, read on first use (train holds thousands of game files)."""
        if alfworld_split not in self._games:
            seed = task_seed("alfworld-real", "order", alfworld_split)
            games = find_games(self.games_dir / alfworld_split, self.params.task_types, seed)
            if not games:
                raise ValueError(
                    f"alfworld engine real: no playable game ({GAME_FILE} + {TRAJ_FILE}, "
                    f"solvable, task types {list(self.params.task_types)}) under "
                    f"{self.games_dir / alfworld_split}"
                )
            self._games[alfworld_split] = games
        return self._games[alfworld_split]

    def record(self, split: str, index: int) -> GameRecord:
        """The game at a task address: training streams cycle the train games; an evaluation
        panel must fit its split (a repeated game would weigh twice in the success rate)."""
        games = self.games(self.alfworld_split(split))
        if split in TRAIN_SPLITS:
            return games[index % len(games)]
        if not 0 <= index < len(games):
            raise ValueError(
                f"alfworld engine real: task {index} of split {split!r} is past the "
                f"{len(games)} games of {self.alfworld_split(split)}; use a smaller eval panel"
            )
        # The validation panel plays the same ALFWorld split from its far end, so it and the
        # test panel (from the front) share no game until they cover the split together.
        return games[len(games) - 1 - index] if split == VALID_SPLIT else games[index]

    def task(self, name: str, split: str, index: int) -> Task:
        record = self.record(split, index)
        game = record.path.relative_to(self.games_dir).as_posix()
        seed = task_seed(name, split, index)
        return Task(name, split, index, record.task_type, record.goal, seed, extra={"game": game})

    def new_game(self, task: Task) -> RealAlfworldGame:
        record = self.record(task.split, task.index)
        if record.goal != task.goal:
            raise ValueError(f"task {task.id} does not find its goal {task.goal!r} again")
        engine = self._idle.pop() if self._idle else self._engine()
        engine.load(str(record.path))
        game = RealAlfworldGame(task, engine, self.params.max_turns)
        # Each engine holds a private copy of fast-downward's library: a finished game hands
        # its engine back instead of leaving one loaded library behind per episode. (tatsu,
        # textworld's grammar parser, keeps its last parse failure and so the frames of the
        # latest game for a while: one engine more at most.)
        weakref.finalize(game, self._idle.append, engine)
        return game

    def _engine(self) -> Any:
        self.engines_built += 1
        m = self.modules
        infos = m.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
        env = m.AlfredInfos(m.AlfredDemangler(m.PddlEnv(infos), shuffle=False))
        return m.GuardedExpert(env, expert_type=self.params.expert)

    def data_status(self) -> tuple[bool, str]:
        n = len(self.games(self.params.eval_split))
        return True, (
            f"ALFWorld games under {self.games_dir} ({n} in {self.params.eval_split}, "
            f"{self.params.expert} expert)"
        )


class RealAlfworldGame(Game):
    """One episode of an ALFWorld game on the alfworld package's engine.

    Like the offline game: every ``step`` counts a turn, ``None`` (an invalid turn) is a no-op
    that leaves the engine untouched, the win latches, and the episode ends when won or after
    ``max_turns`` steps.
    """

    def __init__(self, task: Task, engine: Any, max_turns: int) -> None:
        self.task = task
        self.engine = engine  # a loaded GuardedExpert(...) wrapper chain
        self.max_turns = max_turns
        self.state: Any = None
        self.turns = 0
        self.is_won = False

    def reset(self) -> Observation:
        with _seeded(task_seed(self.task.seed, 0)):
            self.state = self.engine.reset()
        self.turns = 0
        self.is_won = False
        return self._observe(intro_text(self.state.feedback))

    def step(self, action: str | None) -> Observation:
        if self.state is None:
            self.reset()
        self.turns += 1
        if action is None:
            text = NOTHING
        else:
            with _seeded(task_seed(self.task.seed, self.turns)):
                self.state, _, _ = self.engine.step(normalize_command(action))
            text = self.state.feedback.strip()
        self.is_won = self.is_won or bool(self.state["won"])
        return self._observe(text)

    def _observe(self, text: str) -> Observation:
        # ALFWorld's list as is ("help" included): its expert may pick any of them.
        admissible = tuple(self.state["admissible_commands"])
        done = self.is_won or self.turns >= self.max_turns
        return Observation(text, admissible, done=done, won=self.is_won)

    def expert_action(self) -> str | None:
        """The first command of ALFWorld's expert plan (None once won, or if the expert gave up)."""
        if self.state is None:
            self.reset()
        if self.is_won:
            return None
        plan = self.state.get("extra.expert_plan") or []
        return str(plan[0]) if plan else None

    def score(self) -> float:
        return 1.0 if self.is_won else 0.0
