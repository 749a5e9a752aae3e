"""The procedural household: scene generation and the state machine that plays it.

A scene is generated from a seed alone (``random.Random(seed)``, never the global generator), so
the task, every game copy and the expert all see the same room. Observations and commands use
ALFWorld's wording ("You arrive at cabinet 1. The cabinet 1 is closed.", "take apple 1 from
countertop 1", "a apple 1" included: ALFWorld writes "a" before every name).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sdar_bench.envs.base import ExpertStep, Game, Observation, Task
from sdar_bench.envs.parsing import normalize_command

# ---- the catalogue ---------------------------------------------------------------------------
TASK_TYPES: tuple[str, ...] = ("pick", "look", "clean", "heat", "cool", "pick2")

FOOD = ("apple", "bread", "egg", "lettuce", "potato", "tomato")
DISHES = ("bowl", "cup", "mug", "pan", "plate", "pot")
UTENSILS = ("fork", "knife", "ladle", "spatula", "spoon")
HANDHELD = (
    "alarmclock",
    "book",
    "cd",
    "cellphone",
    "creditcard",
    "keychain",
    "pen",
    "statue",
    "vase",
)
OTHER = ("bottle", "candle", "cloth", "soapbar", "spraybottle", "tissuebox")
OBJECT_TYPES: tuple[str, ...] = FOOD + DISHES + UTENSILS + HANDHELD + OTHER

HEATABLE = frozenset(FOOD + ("mug", "cup"))
COOLABLE = frozenset(FOOD + ("mug", "cup", "pan", "pot", "bottle"))
CLEANABLE = frozenset(FOOD + DISHES + UTENSILS)

# Which object types a task type may ask for: a goal must be physically sensible.
GOAL_OBJECTS: dict[str, tuple[str, ...]] = {
    "pick": OBJECT_TYPES,
    "pick2": OBJECT_TYPES,
    "look": HANDHELD,
    "clean": tuple(sorted(CLEANABLE)),
    "heat": tuple(sorted(HEATABLE)),
    "cool": tuple(sorted(COOLABLE)),
}

# Ordinary receptacles and how often the generator draws them (kitchens have many cabinets).
ORDINARY_WEIGHTS: dict[str, int] = {
    "cabinet": 4,
    "drawer": 3,
    "countertop": 2,
    "shelf": 2,
    "diningtable": 1,
    "garbagecan": 1,
    "sidetable": 1,
    "desk": 1,
    "dresser": 1,
    "coffeetable": 1,
}
OPENABLE_TYPES = frozenset({"cabinet", "drawer", "fridge", "microwave"})
LAMP_HOSTS = ("desk", "sidetable")
RECEPTACLE_TYPES: tuple[str, ...] = (*ORDINARY_WEIGHTS, "fridge", "microwave", "sinkbasin")

FRIDGE, MICROWAVE, SINK, LAMP = "fridge 1", "microwave 1", "sinkbasin 1", "desklamp 1"
# The appliance (and its verb) that turns an object into the state a goal asks for.
CONDITION_OF = {"clean": "clean", "heat": "hot", "cool": "cool"}
APPLIANCE_OF = {"clean": SINK, "hot": MICROWAVE, "cool": FRIDGE}
VERB_OF = {"clean": "clean", "hot": "heat", "cool": "cool"}
ELIGIBLE_OF = {"clean": CLEANABLE, "hot": HEATABLE, "cool": COOLABLE}

# Which object types the appliances may hold at the start (nobody keeps a book in the fridge).
APPLIANCE_CONTENTS: dict[str, frozenset[str]] = {
    FRIDGE: frozenset(FOOD + ("bottle", "bowl", "cup", "mug", "pan", "plate", "pot")),
    MICROWAVE: frozenset(FOOD + ("bowl", "cup", "mug", "plate")),
    SINK: frozenset(FOOD + DISHES + UTENSILS),
}

# ALFWorld's two goal phrasings per task type; {o} object type, {r} receptacle type.
GOAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": ("put a {o} in {r}.", "put some {o} on {r}."),
    "look": ("look at {o} under the desklamp.", "examine the {o} with the desklamp."),
    "clean": ("put a clean {o} in {r}.", "clean some {o} and put it in {r}."),
    "heat": ("put a hot {o} in {r}.", "heat some {o} and put it in {r}."),
    "cool": ("put a cool {o} in {r}.", "cool some {o} and put it in {r}."),
    "pick2": ("find two {o} and put them in {r}.", "put two {o} in {r}."),
}

# Every fixed response and command pattern; ``vocabulary`` reads its words from these.
RESPONSE_TEMPLATES: tuple[str, ...] = (
    "You arrive at {r}.",
    "The {r} is closed.",
    "The {r} is open. In it, you see nothing.",
    "On the {r}, you see a {o}, and a {o}.",
    "You open the {r}.",
    "You close the {r}.",
    "You pick up the {o} from the {r}.",
    "You move the {o} to the {r}.",
    "You heat the {o} using the {r}.",
    "You cool the {o} using the {r}.",
    "You clean the {o} using the {r}.",
    "You turn on the {o}.",
    "You are facing the {r}. Next to it, you see nothing.",
    "You are in the middle of a room. Looking quickly around you, you see nothing.",
    "You are carrying: a {o}.",
    "You are not carrying anything.",
    "Nothing happens.",
)
COMMAND_TEMPLATES: tuple[str, ...] = (
    "go to {r}",
    "open {r}",
    "close {r}",
    "take {o} from {r}",
    "move {o} to {r}",
    "heat {o} with {r}",
    "cool {o} with {r}",
    "clean {o} with {r}",
    "use {o}",
    "examine {r}",
    "look",
    "inventory",
)
NOTHING = "Nothing happens."
MAX_NUMBER = 20  # names never carry a number above this (the vocabulary lists 1..20)


def kind(name: str) -> str:
    """The type of a numbered name: ``"cabinet 2"`` → ``"cabinet"``."""
    return name.rsplit(" ", 1)[0]


def _number(name: str) -> int:
    return int(name.rsplit(" ", 1)[1])


def name_key(name: str) -> tuple[str, int]:
    """Natural order: cabinet 2 before cabinet 10."""
    return kind(name), _number(name)


def list_items(items: Iterable[str]) -> str:
    """ALFWorld's listing: "a apple 1", "a apple 1, and a mug 2", "a x, a y, and a z"."""
    names = [f"a {item}" for item in items]
    if not names:
        return "nothing"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + ", and " + names[-1]


# ---- goal and scene --------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """What the task asks: ``count`` objects of ``obj_type`` (in ``condition``) in ``recep_type``.

    For "look" there is no receptacle: the object must be held under the lit desklamp.
    """

    task_type: str
    obj_type: str
    recep_type: str | None
    count: int
    condition: str | None  # "clean", "hot", "cool" or None
    text: str


@dataclass(frozen=True)
class Scene:
    """A generated room: receptacles in display order, initial contents and the goal."""

    receptacles: tuple[str, ...]
    contents: dict[str, tuple[str, ...]]
    lamp_host: str
    goal: Goal


def _draw_receptacles(rng: random.Random, n_receptacles: int) -> tuple[list[str], str]:
    """The numbered receptacles: appliances, the lamp's desk/sidetable, then ordinary ones."""
    host_type = rng.choice(LAMP_HOSTS)
    types = rng.choices(list(ORDINARY_WEIGHTS), list(ORDINARY_WEIGHTS.values()), k=n_receptacles)
    counts: dict[str, int] = {}
    names: list[str] = []
    for recep_type in ["fridge", "microwave", "sinkbasin", host_type, *types]:
        counts[recep_type] = counts.get(recep_type, 0) + 1
        names.append(f"{recep_type} {counts[recep_type]}")
    return sorted(names, key=name_key), f"{host_type} 1"


def _can_hold(recep: str, obj_type: str) -> bool:
    allowed = APPLIANCE_CONTENTS.get(recep)
    return allowed is None or obj_type in allowed


def _goal_receptacle_types(task_type: str, receptacles: list[str]) -> list[str]:
    """Goal receptacle types present in the room: never an appliance, a bin only for pick."""
    excluded = {"fridge", "microwave", "sinkbasin"}
    if task_type not in ("pick", "pick2"):
        excluded.add("garbagecan")
    return sorted({kind(r) for r in receptacles} - excluded)


def _pick_goal(
    rng: random.Random, task_type: str, receptacles: list[str]
) -> tuple[str, str | None]:
    """The goal's object and receptacle types, such that the object can start somewhere else."""
    if task_type == "look":
        return rng.choice(GOAL_OBJECTS[task_type]), None
    recep_types = _goal_receptacle_types(task_type, receptacles)

    def fits(obj_type: str, recep_type: str) -> bool:
        return any(kind(r) != recep_type and _can_hold(r, obj_type) for r in receptacles)

    objs = [o for o in GOAL_OBJECTS[task_type] if any(fits(o, t) for t in recep_types)]
    obj_type = rng.choice(objs)
    return obj_type, rng.choice([t for t in recep_types if fits(obj_type, t)])


def generate_scene(seed: int, task_type: str, n_receptacles: int, n_distractors: int) -> Scene:
    """The room of one task, from its seed alone.

    The goal objects (one or two, sometimes one spare) lie outside every receptacle of the goal
    type, so the initial state never satisfies the goal; distractors are other object types.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}")
    rng = random.Random(seed)
    receptacles, lamp_host = _draw_receptacles(rng, n_receptacles)
    obj_type, recep_type = _pick_goal(rng, task_type, receptacles)
    count = 2 if task_type == "pick2" else 1
    contents: dict[str, list[str]] = {r: [] for r in receptacles}
    contents[lamp_host].append(LAMP)
    numbers: dict[str, int] = {}

    def place(object_type: str, spots: list[str]) -> None:
        numbers[object_type] = numbers.get(object_type, 0) + 1
        contents[rng.choice(spots)].append(f"{object_type} {numbers[object_type]}")

    target_spots = [r for r in receptacles if kind(r) != recep_type and _can_hold(r, obj_type)]
    for _ in range(count + rng.choice((0, 0, 1))):
        place(obj_type, target_spots)
    others = [t for t in OBJECT_TYPES if t != obj_type]
    for _ in range(n_distractors):
        distractor = rng.choice(others)
        place(distractor, [r for r in receptacles if _can_hold(r, distractor)])
    text = rng.choice(GOAL_TEMPLATES[task_type]).format(o=obj_type, r=recep_type)
    goal = Goal(task_type, obj_type, recep_type, count, CONDITION_OF.get(task_type), text)
    frozen = {r: tuple(items) for r, items in contents.items()}
    return Scene(tuple(receptacles), frozen, lamp_host, goal)


# ---- the state machine -----------------------------------------------------------------------
@dataclass
class World:
    """The live state of one room: where everything is, what is open, held, heated, lit."""

    scene: Scene
    contents: dict[str, list[str]] = field(init=False)
    opened: set[str] = field(init=False, default_factory=set)
    states: dict[str, set[str]] = field(init=False, default_factory=dict)
    location: str | None = field(init=False, default=None)
    held: str | None = field(init=False, default=None)
    lamp_on: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.contents = {r: list(items) for r, items in self.scene.contents.items()}

    # -- queries ------------------------------------------------------------------------------
    @property
    def goal(self) -> Goal:
        return self.scene.goal

    @property
    def receptacles(self) -> tuple[str, ...]:
        return self.scene.receptacles

    def is_closed(self, recep: str) -> bool:
        return kind(recep) in OPENABLE_TYPES and recep not in self.opened

    def visible(self, recep: str) -> list[str]:
        """What one sees in/on ``recep``: nothing inside a closed container."""
        return [] if self.is_closed(recep) else list(self.contents[recep])

    def where(self, obj: str) -> str | None:
        """The receptacle holding ``obj``; None when it is in the agent's hand."""
        for recep, items in self.contents.items():
            if obj in items:
                return recep
        return None

    def objects_of(self, obj_type: str) -> list[str]:
        """Every object of a type, held or not, in natural order."""
        found = [o for items in self.contents.values() for o in items if kind(o) == obj_type]
        if self.held is not None and kind(self.held) == obj_type:
            found.append(self.held)
        return sorted(found, key=name_key)

    def has_condition(self, obj: str) -> bool:
        condition = self.goal.condition
        return condition is None or condition in self.states.get(obj, set())

    def counts_for_goal(self, obj: str) -> bool:
        """``obj`` already does its part: right type and state, inside a goal receptacle."""
        recep = self.where(obj)
        return (
            kind(obj) == self.goal.obj_type
            and recep is not None
            and kind(recep) == self.goal.recep_type
            and self.has_condition(obj)
        )

    def won(self) -> bool:
        goal = self.goal
        if goal.task_type == "look":
            return (
                self.held is not None
                and kind(self.held) == goal.obj_type
                and self.location == self.scene.lamp_host
                and self.lamp_on
            )
        placed = [o for o in self.objects_of(goal.obj_type) if self.counts_for_goal(o)]
        return len(placed) >= goal.count

    # -- descriptions -------------------------------------------------------------------------
    def describe(self, recep: str) -> str:
        """What arriving at or examining ``recep`` shows."""
        if self.is_closed(recep):
            return f"The {recep} is closed."
        if kind(recep) in OPENABLE_TYPES:
            return f"The {recep} is open. In it, you see {list_items(self.contents[recep])}."
        return f"On the {recep}, you see {list_items(self.contents[recep])}."

    def initial_text(self) -> str:
        return (
            "You are in the middle of a room. Looking quickly around you, you see "
            f"{list_items(self.receptacles)}."
        )

    # -- commands -----------------------------------------------------------------------------
    def admissible(self) -> tuple[str, ...]:
        """Every command that does something from here, sorted."""
        commands = [f"go to {r}" for r in self.receptacles if r != self.location]
        commands += ["look", "inventory"]
        here = self.location
        if here is not None:
            commands += [f"examine {here}", *self._local_commands(here)]
        return tuple(sorted(set(commands)))

    def _local_commands(self, here: str) -> list[str]:
        commands: list[str] = []
        if kind(here) in OPENABLE_TYPES:
            commands.append(f"close {here}" if here in self.opened else f"open {here}")
        if not self.is_closed(here):
            if self.held is None:
                commands += [f"take {o} from {here}" for o in self.contents[here] if o != LAMP]
            else:
                commands.append(f"move {self.held} to {here}")
        if self.held is not None:
            for condition, appliance in APPLIANCE_OF.items():
                if here == appliance and kind(self.held) in ELIGIBLE_OF[condition]:
                    commands.append(f"{VERB_OF[condition]} {self.held} with {appliance}")
        if here == self.scene.lamp_host and not self.lamp_on:
            commands.append(f"use {LAMP}")
        return commands

    def execute(self, command: str) -> str:
        """Apply a command and return the response; anything not admissible is a no-op."""
        if command not in self.admissible():
            return NOTHING
        if command == "look":
            return self._look()
        if command == "inventory":
            return (
                f"You are carrying: a {self.held}."
                if self.held
                else "You are not carrying anything."
            )
        verb, _, rest = command.partition(" ")
        if verb in VERB_OF.values():
            return self._transform(verb, rest)
        handler = {
            "go": self._go,
            "open": self._open,
            "close": self._close,
            "take": self._take,
            "move": self._move,
            "use": self._use,
            "examine": self.describe,
        }[verb]
        return handler(rest)

    def _look(self) -> str:
        if self.location is None:
            return self.initial_text()
        return f"You are facing the {self.location}. Next to it, you see nothing."

    def _go(self, rest: str) -> str:
        recep = rest.removeprefix("to ")
        self.location = recep
        return f"You arrive at {recep}. {self.describe(recep)}"

    def _open(self, recep: str) -> str:
        self.opened.add(recep)
        return f"You open the {recep}. {self.describe(recep)}"

    def _close(self, recep: str) -> str:
        self.opened.discard(recep)
        return f"You close the {recep}."

    def _take(self, rest: str) -> str:
        obj, recep = _split_pair(rest, " from ")
        self.contents[recep].remove(obj)
        self.held = obj
        return f"You pick up the {obj} from the {recep}."

    def _move(self, rest: str) -> str:
        obj, recep = _split_pair(rest, " to ")
        self.contents[recep].append(obj)
        self.held = None
        return f"You move the {obj} to the {recep}."

    def _transform(self, verb: str, rest: str) -> str:
        obj, appliance = _split_pair(rest, " with ")
        condition = {v: c for c, v in VERB_OF.items()}[verb]
        self.states.setdefault(obj, set()).add(condition)
        return f"You {verb} the {obj} using the {appliance}."

    def _use(self, device: str) -> str:
        self.lamp_on = True
        return f"You turn on the {device}."


def _split_pair(rest: str, separator: str) -> tuple[str, str]:
    """``"apple 1 from cabinet 2"`` → ``("apple 1", "cabinet 2")`` (names hold no separator)."""
    left, _, right = rest.partition(separator)
    return left, right


# ---- the game --------------------------------------------------------------------------------
class AlfworldGame(Game):
    """One episode of a task: a fresh ``World`` from the task's scene, a turn counter, a latch.

    Every ``step`` call counts a turn, ``None`` (the invalid turn's no-op) included; the
    episode is done when won or after ``max_turns`` steps.
    """

    def __init__(
        self,
        task: Task,
        scene: Scene,
        max_turns: int,
        expert: Callable[[World], ExpertStep | None],
    ) -> None:
        self.task = task
        self.expert = expert  # given by the env: the expert builds on this module
        self.scene = scene
        self.max_turns = max_turns
        self.reset()

    def reset(self) -> Observation:
        self.world = World(self.scene)
        self.turns = 0
        self.is_won = False
        return self._observe(self.world.initial_text())

    def step(self, action: str | None) -> Observation:
        self.turns += 1
        text = NOTHING if action is None else self.world.execute(normalize_command(action))
        # Once won, the episode stays won even if later commands undo the placement.
        self.is_won = self.is_won or self.world.won()
        return self._observe(text)

    def _observe(self, text: str) -> Observation:
        done = self.is_won or self.turns >= self.max_turns
        return Observation(text, self.world.admissible(), done=done, won=self.is_won)

    def expert_action(self) -> str | None:
        step = self.expert_step()
        return None if step is None else step.action

    def expert_step(self) -> ExpertStep | None:
        """The expert's command and its reason (None once the task is solved)."""
        return None if self.is_won else self.expert(self.world)

    def score(self) -> float:
        return 1.0 if self.is_won else 0.0
