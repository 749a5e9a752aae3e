"""The real ALFWorld engine (``engine: real``) on small hand-written ALFRED-domain games.

The ``alfworld`` wheel ships the ALFRED PDDL domain and TextWorld grammar but no games, so the
tests write one small room per task type against those two files, laid out as
``alfworld-download`` lays ALFWorld's data out, and compiled as ``alfworld-generate`` compiles a
trial folder (``game.tw-pddl`` = domain + grammar with the goal filled in + problem + solvable).
The error tests need no alfworld package; the engine tests skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdar_bench.config import SuiteSpec
from sdar_bench.envs import make_env
from sdar_bench.envs.alfworld import AlfworldEnv
from sdar_bench.envs.alfworld.real import (
    DATA_FOLDER,
    FOLDER_TASK_TYPES,
    RealAlfworldGame,
    goal_of,
    intro_text,
    task_type_of,
)
from sdar_bench.envs.base import Game, Observation, Task
from sdar_bench.plan import preflight

# find_spec, not importorskip: importing alfworld creates and exports $ALFWORLD_DATA, which
# would hide the missing-variable error the tests below check.
needs_alfworld = pytest.mark.skipif(
    importlib.util.find_spec("alfworld") is None,
    reason="the alfworld package is not installed (pip install 'sdar-bench[alfworld]')",
)

TRIAL = "trial_T20190101_000000_000001"


# ---- a tiny ALFRED problem builder ----------------------------------------------------------
@dataclass(frozen=True)
class Room:
    """One small ALFRED scene and its goal: what a trial folder's initial_state.pddl says."""

    task_type: str  # ALFWorld folder prefix, e.g. "pick_heat_then_place_in_recep"
    receptacles: tuple[str, ...]  # ALFRED receptacle types, one of each
    objects: tuple[tuple[str, str], ...]  # (object type, the receptacle type it starts in)
    goal_pddl: str
    goal: str  # the instruction, as ALFWorld's templates word it
    params: dict[str, str]  # traj_data.json's pddl_params (what the hand-coded expert reads)


OPENABLE = {"Cabinet", "Drawer", "Fridge", "Microwave"}


def alfred_id(kind: str, i: int) -> str:
    """An ALFRED-style mangled id (``Apple|+01.50|+00.90|-01.25``); the demangler numbers it."""
    coords = f"_bar__plus_0{i}_dot_50_bar__plus_00_dot_90_bar__minus_01_dot_25"
    # ALFRED's sink basin hangs off its sink: "Sink|...|SinkBasin" demangles to "sinkbasin".
    return f"Sink{coords}_bar_SinkBasin" if kind == "SinkBasin" else f"{kind}{coords}"


def problem_pddl(room: Room) -> str:
    recep_ids = {r: alfred_id(r, i + 1) for i, r in enumerate(room.receptacles)}
    locs = {r: f"loc_bar_{i + 1}_bar_{i + 2}_bar_0_bar_30" for i, r in enumerate(room.receptacles)}
    start = "loc_bar_0_bar_0_bar_0_bar_30"  # no receptacle here: "in the middle of a room"
    obj_ids = [(alfred_id(o, i + 1), o, r) for i, (o, r) in enumerate(room.objects)]
    otypes = sorted({o for _, o, _ in obj_ids})
    rtypes = sorted(room.receptacles)
    declared = [
        "agent1 - agent",
        *(f"{t}Type - otype" for t in otypes),
        *(f"{t}Type - rtype" for t in rtypes),
        *(f"{oid} - object" for oid, _, _ in obj_ids),
        *(f"{rid} - receptacle" for rid in recep_ids.values()),
        f"{start} - location",
        *(f"{loc} - location" for loc in locs.values()),
    ]
    facts = [f"(atLocation agent1 {start})"]
    for r, rid in recep_ids.items():
        facts += [f"(receptacleAtLocation {rid} {locs[r]})", f"(receptacleType {rid} {r}Type)"]
        facts += [f"(openable {rid})"] if r in OPENABLE else []
    for oid, o, r in obj_ids:
        facts += [
            f"(objectType {oid} {o}Type)",
            f"(inReceptacle {oid} {recep_ids[r]})",
            f"(objectAtLocation {oid} {locs[r]})",
        ]
        if o == "DeskLamp":
            facts.append(f"(toggleable {oid})")
        else:
            facts += [f"({p} {oid})" for p in ("pickupable", "cleanable", "heatable", "coolable")]
    facts += [f"(canContain {r}Type {o}Type)" for r in rtypes for o in otypes if o != "DeskLamp"]
    body = "\n".join
    return (
        f"(define (problem plan_{room.task_type})\n(:domain alfred)\n"
        f"(:objects\n{body(declared)}\n)\n(:init\n{body(facts)}\n)\n"
        f"(:goal\n{room.goal_pddl}\n)\n)\n"
    )


def placed(obj: str, recep: str, condition: str = "") -> str:
    extra = f" ({condition} ?o)" if condition else ""
    return (
        "(and (exists (?r - receptacle) (exists (?o - object) (and "
        f"(objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (inReceptacle ?o ?r){extra}))))"
    )


def params(obj: str, parent: str = "", toggle: str = "") -> dict[str, str]:
    return {"object_target": obj, "parent_target": parent, "toggle_target": toggle}


KITCHEN = ("CounterTop", "Cabinet", "Fridge", "Microwave", "SinkBasin")
ROOMS: dict[str, Room] = {
    "pick": Room(
        "pick_and_place_simple",
        KITCHEN,
        (("Apple", "CounterTop"), ("Mug", "Cabinet")),
        placed("Apple", "Fridge"),
        "put a apple in fridge.",
        params("Apple", "Fridge"),
    ),
    "look": Room(
        "look_at_obj_in_light",
        ("Desk", "SideTable", "Drawer"),
        (("Book", "Desk"), ("DeskLamp", "SideTable")),
        "(and (exists (?t - object) (and (objectType ?t DeskLampType) (isToggled ?t)))"
        " (exists (?a - agent) (exists (?o - object) (and (objectType ?o BookType) (holds ?a ?o)))))",
        "look at book under the desklamp.",
        params("Book", toggle="DeskLamp"),
    ),
    "clean": Room(
        "pick_clean_then_place_in_recep",
        KITCHEN,
        (("Mug", "CounterTop"), ("Apple", "Fridge")),
        placed("Mug", "Cabinet", "isClean"),
        "put a clean mug in cabinet.",
        params("Mug", "Cabinet"),
    ),
    "heat": Room(
        "pick_heat_then_place_in_recep",
        KITCHEN,
        (("Egg", "Fridge"), ("Mug", "CounterTop")),
        placed("Egg", "CounterTop", "isHot"),
        "put a hot egg in countertop.",
        params("Egg", "CounterTop"),
    ),
    "cool": Room(
        "pick_cool_then_place_in_recep",
        KITCHEN,
        (("Tomato", "CounterTop"),),
        placed("Tomato", "Cabinet", "isCool"),
        "put a cool tomato in cabinet.",
        params("Tomato", "Cabinet"),
    ),
    "pick2": Room(
        "pick_two_obj_and_place",
        ("CounterTop", "Cabinet", "Shelf"),
        # both phones on the counter: alfworld 0.4.2's hand-coded expert loses track of a
        # second one hidden elsewhere (it still checks for "put", not "move", after a placement)
        (("CellPhone", "CounterTop"), ("CellPhone", "CounterTop"), ("Mug", "Shelf")),
        "(and (exists (?r - receptacle) (exists (?o1 - object) (exists (?o2 - object) (and"
        " (objectType ?o1 CellPhoneType) (objectType ?o2 CellPhoneType) (receptacleType ?r"
        " ShelfType) (inReceptacle ?o1 ?r) (inReceptacle ?o2 ?r) (not (= ?o1 ?o2)))))))",
        "put two cellphone in shelf.",
        params("CellPhone", "Shelf"),
    ),
}


def write_trial(split_dir: Path, room: Room, number: int, solvable: bool = True) -> Path:
    """A trial folder as ``alfworld-generate`` leaves it: problem, task data, compiled game."""
    # The domain and grammar the wheel ships (alfworld/data/), found without importing alfworld.
    spec = importlib.util.find_spec("alfworld")
    assert spec is not None and spec.origin is not None
    shipped = Path(spec.origin).parent / "data"
    p = room.params
    folder = f"{room.task_type}-{p['object_target']}-None-{p['parent_target'] or 'None'}-{number}"
    trial = split_dir / folder / TRIAL
    trial.mkdir(parents=True)
    problem = problem_pddl(room)
    (trial / "initial_state.pddl").write_text(problem)
    pddl_params = {**p, "mrecep_target": "", "object_sliced": False}
    traj = {"task_type": room.task_type, "pddl_params": pddl_params}
    (trial / "traj_data.json").write_text(json.dumps(traj))
    # alfworld-generate fills the grammar's "UNKNOWN GOAL" from a random template; the goal is
    # written here in the same words, so the test knows it.
    grammar = (shipped / "alfred.twl2").read_text().replace("UNKNOWN GOAL.", room.goal)
    game = {
        "pddl_domain": (shipped / "alfred.pddl").read_text(),
        "grammar": grammar,
        "pddl_problem": problem,
        "solvable": solvable,
        "walkthrough": None,
    }
    (trial / "game.tw-pddl").write_text(json.dumps(game))
    return trial


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$ALFWORLD_DATA with one game per task type in valid_seen and train, plus two games
    ALFWorld's loader skips (unsolvable; movable receptacle)."""
    if importlib.util.find_spec("alfworld") is None:
        pytest.skip("the alfworld package is not installed")
    root = tmp_path_factory.mktemp("alfworld_data")
    for split in ("train", "valid_seen"):
        split_dir = root / DATA_FOLDER / split
        for number, room in enumerate(ROOMS.values(), start=1):
            write_trial(split_dir, room, number)
        write_trial(split_dir, ROOMS["pick"], 90, solvable=False)
        movable = split_dir / "pick_and_place_with_movable_recep-Apple-Bowl-Fridge-1" / TRIAL
        movable.mkdir(parents=True)
        (movable / "traj_data.json").write_text("{}")
        (movable / "game.tw-pddl").write_text("{}")
    return root


@pytest.fixture(scope="module")
def env(data_dir: Path) -> AlfworldEnv:
    built = make_env("alfworld", engine="real", data_dir=str(data_dir))
    assert isinstance(built, AlfworldEnv)
    return built


def panel_task(env: AlfworldEnv, task_type: str) -> Task:
    return next(t for t in env.panel(len(ROOMS)) if t.task_type == task_type)


def play_expert(game: Game, obs: Observation) -> list[str]:
    """Play the expert's plan from ``obs`` to the end of the episode; its actions."""
    actions: list[str] = []
    while not obs.done:
        action = game.expert_action()
        assert obs.admissible is not None
        assert action is not None and action in obs.admissible, (game.task.id, action, actions)
        actions.append(action)
        obs = game.step(action)
    return actions


# ---- no package needed ----------------------------------------------------------------------
def test_task_type_and_goal_are_read_from_alfworld_files() -> None:
    assert sorted(FOLDER_TASK_TYPES.values()) == sorted(AlfworldEnv.task_types)
    path = "json_2.1.1/valid_seen/pick_heat_then_place_in_recep-Egg-None-Fridge-13/trial_T1/"
    assert task_type_of(path + "game.tw-pddl") == "heat"
    assert task_type_of("x/pick_two_obj_and_place-Pen-None-Desk-3/trial_1") == "pick2"
    assert task_type_of("x/pick_and_place_simple-Pen-None-Desk-3/trial_1") == "pick"
    assert task_type_of("x/something_else-1/trial_1") is None
    grammar = '"task": [{"rhs": "Your task is to: put a hot egg in countertop."}]'
    assert goal_of(grammar) == "put a hot egg in countertop."
    feedback = (
        "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking "
        "quickly around you, you see a fridge 1.\n\nYour task is to: put a egg in fridge."
    )
    assert intro_text(feedback) == (
        "You are in the middle of a room. Looking quickly around you, you see a fridge 1."
    )


def test_missing_alfworld_data_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(ValueError, match=r"\$ALFWORLD_DATA is not set") as caught:
        make_env("alfworld", engine="real")
    message = str(caught.value)
    assert "\n" not in message and "data_dir" in message and DATA_FOLDER in message

    # plan and run report it as the suite's one data problem, before anything runs
    suite = SuiteSpec(
        name="real",
        models=["tiny-qwen-1m"],
        envs=["alfworld"],
        env_params={"alfworld": {"engine": "real"}},
        methods=["vanilla"],
        seeds=[0],
        warmstart={"enabled": False},
    )
    assert preflight(suite, tmp_path / "results", needs_gpu_ok=False) == [message]

    # a folder without ALFWorld's layout is named, never played as something else
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"no json_2\.1\.1/train in .* \(\$ALFWORLD_DATA\)"):
        make_env("alfworld", engine="real")
    with pytest.raises(ValueError, match="set engine: real"):
        make_env("alfworld", data_dir=str(tmp_path))  # the offline engine would ignore it


def test_missing_package_names_the_extra(monkeypatch, tmp_path) -> None:
    for split in ("train", "valid_seen"):
        (tmp_path / DATA_FOLDER / split).mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "alfworld", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs the alfworld package .*: pip install alfworld"):
        make_env("alfworld", engine="real", data_dir=str(tmp_path))


# ---- the engine -----------------------------------------------------------------------------
@needs_alfworld
def test_tasks_come_from_the_game_files(env: AlfworldEnv, data_dir: Path, tmp_path) -> None:
    assert env.params.max_turns == 50  # the paper's ALFWorld setting unless a suite says so
    panel = env.panel(6)
    assert sorted(t.task_type for t in panel) == sorted(ROOMS)  # skipped games are not there
    for task in panel:
        assert task.goal == ROOMS[task.task_type].goal
        assert task.extra["game"].startswith(f"valid_seen/{ROOMS[task.task_type].task_type}-")
    # the panel is a fixed order: a second env over the same folder lists the same tasks
    again = make_env("alfworld", engine="real", data_dir=str(data_dir))
    assert again.panel_hash(again.panel(6)) == env.panel_hash(panel)
    with pytest.raises(ValueError, match="past the 6 games of valid_seen"):
        env.task("eval", 6)
    train = env.train_tasks(seed=0, step=3, count=8)  # the train stream cycles train's games
    assert {t.task_type for t in train} == set(ROOMS)
    assert all(t.extra["game"].startswith("train/") for t in train)
    ok, status = env.data_status()
    assert ok and "6 in valid_seen" in status
    for split in ("train", "valid_seen"):
        (tmp_path / DATA_FOLDER / split).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no playable game .* under .*valid_seen"):
        make_env("alfworld", engine="real", data_dir=str(tmp_path))
    # task_types picks which of ALFWorld's games are played
    some = make_env("alfworld", engine="real", data_dir=str(data_dir), task_types=["heat", "cool"])
    assert sorted(t.task_type for t in some.panel(2)) == ["cool", "heat"]


@needs_alfworld
@pytest.mark.parametrize("task_type", sorted(ROOMS))
def test_the_expert_plan_wins_every_task_type(env: AlfworldEnv, task_type: str) -> None:
    task = panel_task(env, task_type)
    game = env.new_game(task)
    assert isinstance(game, RealAlfworldGame)
    obs = game.reset()
    # ALFWorld's own text and command list, the banner and task line removed (the prompt
    # states the goal)
    assert obs.text.startswith("You are in the middle of a room. Looking quickly around you")
    assert obs.admissible is not None and {"look", "inventory", "help"} <= set(obs.admissible)
    assert any(a.startswith("go to ") for a in obs.admissible)
    prompt = env.render_prompt(task, [], obs, 0)
    assert f"Your task is to: {task.goal}" in prompt and "go to " in prompt

    actions = play_expert(game, obs)
    assert game.score() == 1.0 and env.episode_reward(game) == 10.0
    assert game.expert_action() is None  # nothing left to do once won
    verbs = {a.split()[0] for a in actions}
    wanted = {"clean": "clean", "heat": "heat", "cool": "cool", "look": "use"}.get(task_type)
    assert wanted is None or wanted in verbs
    assert env.metrics([(task, game.score())]) == {
        f"success/{task_type}": 100.0,
        "success/all": 100.0,
    }


@needs_alfworld
def test_expert_plans_are_reproducible(env: AlfworldEnv) -> None:
    # the hand-coded expert draws from the global random generator: seeded per turn
    games = [env.new_game(panel_task(env, "pick2")) for _ in range(2)]
    first, second = (play_expert(game, game.reset()) for game in games)
    assert first == second and all(game.score() == 1.0 for game in games)


@needs_alfworld
def test_an_expert_that_gives_up_ends_its_plan_not_the_game(env: AlfworldEnv) -> None:
    game = env.new_game(panel_task(env, "pick"))
    assert isinstance(game, RealAlfworldGame)
    game.reset()

    def give_up(*args: object) -> str:
        raise RuntimeError("the hand-coded expert timed out")

    game.engine._handcoded_expert.act = give_up  # the expert ALFWorld's wrapper consults
    obs = game.step("go to countertop 1")
    assert obs.text.startswith("You arrive at countertop 1.") and not obs.done
    assert game.expert_action() is None


@needs_alfworld
def test_the_planner_expert_wins_too(data_dir: Path) -> None:
    planner = make_env("alfworld", engine="real", data_dir=str(data_dir), expert="planner")
    assert isinstance(planner, AlfworldEnv)
    game = planner.new_game(panel_task(planner, "heat"))
    actions = play_expert(game, game.reset())
    assert game.score() == 1.0
    assert actions[0] != "look"  # the planner knows where the egg is; it does not look around


@needs_alfworld
def test_wrong_actions_do_not_win(data_dir: Path) -> None:
    short = make_env("alfworld", engine="real", data_dir=str(data_dir), max_turns=4)
    task = panel_task(short, "pick")
    game = short.new_game(task)
    first = game.reset()
    assert game.step("take apple 1 from fridge 1").text == "Nothing happens."  # not admissible
    assert game.step(None).text == "Nothing happens."  # an invalid turn's no-op
    obs = game.step("go to countertop 1")
    assert obs.text.startswith("You arrive at countertop 1.") and "apple" in obs.text
    assert obs.admissible != first.admissible and not obs.done
    obs = game.step("look")
    assert obs.done and not obs.won  # max_turns spent without the goal
    assert game.score() == 0.0 and short.episode_reward(game) == 0.0
    assert short.metrics([(task, game.score())])["success/all"] == 0.0
    # finished games hand their engines (each a loaded fast-downward library) to the next ones
    assert short.real is not None
    for index in range(4):
        game = short.new_game(short.task("eval", index))
        game.reset()
        game.step("look")
    assert short.real.engines_built <= 2
