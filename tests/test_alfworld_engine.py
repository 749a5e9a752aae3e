"""The offline ALFWorld engine: expert coverage, determinism, transitions, vocabulary."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from envcheck import played_words, wander
from pydantic import ValidationError

from sdar_bench.envs.alfworld import AlfworldEnv, AlfworldGame
from sdar_bench.envs.alfworld.env import words
from sdar_bench.envs.alfworld.world import TASK_TYPES, kind
from sdar_bench.envs.base import Observation, Task


def play_expert(
    env: AlfworldEnv, task: Task, noise: float = 0.0, rng: random.Random | None = None
) -> tuple[AlfworldGame, list[tuple[str, str]], Observation]:
    """Play the expert (with ``noise`` random admissible actions) to the end of the episode."""
    game = env.new_game(task)
    obs = game.reset()
    history: list[tuple[str, str]] = []
    while not obs.done:
        action = game.expert_action()
        assert action is not None
        assert action in obs.admissible, (task.id, action, obs.admissible)
        if rng is not None and rng.random() < noise:
            action = rng.choice(obs.admissible)
        history.append((obs.text, action))
        obs = game.step(action)
    return game, history, obs


def find_task(env: AlfworldEnv, task_type: str, closed_target: bool = False) -> Task:
    """The first eval task of a type (optionally with its target hidden in a closed container)."""
    for index in range(200):
        task = env.task("eval", index)
        if task.task_type != task_type:
            continue
        world = env.new_game(task).world
        spots = [world.where(o) for o in world.objects_of(world.goal.obj_type)]
        if not closed_target or any(world.is_closed(s) for s in spots if s):
            return task
    raise AssertionError(f"no {task_type} task found")


# ---- the expert ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [{}, {"n_receptacles": 10, "n_distractors": 8}])
def test_expert_solves_every_panel_task(size: dict[str, int]) -> None:
    env = AlfworldEnv(**size)
    for task in env.panel(120):
        game, _, obs = play_expert(env, task)
        assert obs.won and obs.done, task.id
        assert game.score() == 1.0
        assert game.expert_action() is None


def test_expert_recovers_from_random_actions() -> None:
    env = AlfworldEnv(max_turns=40)
    rng = random.Random(0)
    wins = sum(play_expert(env, t, 0.3, rng)[2].won for t in env.panel(60))
    assert wins >= 54


def test_expert_puts_down_a_wrong_object() -> None:
    env = AlfworldEnv()
    task = find_task(env, "heat")
    game = env.new_game(task)
    world = game.world
    wrong = next(
        o
        for r in world.receptacles
        for o in world.contents[r]
        if kind(o) not in ("desklamp", world.goal.obj_type)
    )
    spot = world.where(wrong)
    assert spot is not None
    game.step(f"go to {spot}")
    if world.is_closed(spot):
        game.step(f"open {spot}")
    game.step(f"take {wrong} from {spot}")
    assert world.held == wrong
    assert game.expert_action() == f"move {wrong} to {spot}"
    assert env.expert_thought(game, f"move {wrong} to {spot}") == f"put down the {kind(wrong)}"


# ---- determinism and balance --------------------------------------------------------------
def test_panel_is_deterministic_and_prefix_stable() -> None:
    first, second = AlfworldEnv().panel(50), AlfworldEnv().panel(50)
    assert [(t.id, t.goal, t.seed, t.task_type) for t in first] == [
        (t.id, t.goal, t.seed, t.task_type) for t in second
    ]
    assert first == second
    assert AlfworldEnv().panel(20) == first[:20]
    assert AlfworldEnv().panel_hash(first) == AlfworldEnv().panel_hash(second)


def test_same_commands_give_same_observations() -> None:
    env = AlfworldEnv()
    task = env.task("train", 7)
    _, history, _ = play_expert(env, task, 0.3, random.Random(5))
    runs = []
    for _ in range(2):
        game = env.new_game(task)
        runs.append([game.reset()] + [game.step(action) for _, action in history])
    assert runs[0] == runs[1]


def test_task_types_are_balanced() -> None:
    counts = Counter(t.task_type for t in AlfworldEnv().panel(120))
    assert counts == {task_type: 20 for task_type in TASK_TYPES}


def test_params_validate_task_types() -> None:
    env = AlfworldEnv(task_types=["heat", "look"])
    assert [t.task_type for t in env.panel(4)] == ["heat", "look", "heat", "look"]
    with pytest.raises(ValidationError):
        AlfworldEnv(task_types=["fly"])
    with pytest.raises(ValidationError):
        AlfworldEnv(colour="red")


def test_goal_not_satisfied_at_start() -> None:
    env = AlfworldEnv()
    for task in env.panel(60):
        world = env.new_game(task).world
        assert not world.won()
        assert len(world.objects_of(world.goal.obj_type)) >= world.goal.count
        assert task.goal == world.goal.text and task.goal.endswith(".")


# ---- hand-checked transitions --------------------------------------------------------------
def test_initial_observation_lists_the_room() -> None:
    env = AlfworldEnv()
    game = env.new_game(env.task("eval", 0))
    obs = game.reset()
    assert obs.text.startswith("You are in the middle of a room. Looking quickly around you")
    assert "a fridge 1" in obs.text and "a microwave 1" in obs.text
    assert "a sinkbasin 1" in obs.text and obs.text.endswith(".")
    assert env.task("eval", 0).goal not in obs.text
    assert obs.admissible == tuple(sorted(obs.admissible))
    assert {"look", "inventory", "go to fridge 1"} <= set(obs.admissible)
    assert not obs.done and not obs.won


def test_closed_container_open_take_and_nothing_happens() -> None:
    env = AlfworldEnv()
    task = find_task(env, "pick", closed_target=True)
    game = env.new_game(task)
    world = game.world
    target = next(
        o for o in world.objects_of(world.goal.obj_type) if world.is_closed(world.where(o) or "")
    )
    spot = world.where(target)
    assert spot is not None
    obs = game.step(f"go to {spot}")
    assert obs.text == f"You arrive at {spot}. The {spot} is closed."
    assert f"take {target} from {spot}" not in obs.admissible
    assert f"open {spot}" in obs.admissible
    obs = game.step(f"open {spot}")
    assert obs.text.startswith(f"You open the {spot}. The {spot} is open. In it, you see ")
    assert f"a {target}" in obs.text
    obs = game.step(f"take {target} from {spot}")
    assert obs.text == f"You pick up the {target} from the {spot}."
    assert game.step("inventory").text == f"You are carrying: a {target}."
    assert game.step("fly to the moon").text == "Nothing happens."
    assert game.step(f"go to {spot}").text == "Nothing happens."  # already there
    turns = game.turns
    obs = game.step(None)
    assert obs.text == "Nothing happens." and game.turns == turns + 1
    assert world.held == target
    assert game.step(f"close {spot}").text == f"You close the {spot}."


def test_empty_hand_and_look() -> None:
    env = AlfworldEnv()
    game = env.new_game(env.task("eval", 1))
    assert game.step("inventory").text == "You are not carrying anything."
    assert game.step("look").text.startswith("You are in the middle of a room.")
    obs = game.step("go to fridge 1")
    assert game.step("look").text == "You are facing the fridge 1. Next to it, you see nothing."
    assert game.step("examine fridge 1").text == "The fridge 1 is closed."
    assert obs.text == "You arrive at fridge 1. The fridge 1 is closed."


@pytest.mark.parametrize(
    ("task_type", "verb", "appliance"),
    [
        ("heat", "heat", "microwave 1"),
        ("clean", "clean", "sinkbasin 1"),
        ("cool", "cool", "fridge 1"),
    ],
)
def test_transformation_is_required(task_type: str, verb: str, appliance: str) -> None:
    env = AlfworldEnv()
    game = env.new_game(find_task(env, task_type))
    world = game.world
    target_type = world.goal.obj_type
    # Fetch the object with the expert, then carry it straight to the goal untransformed.
    while world.held is None:
        game.step(game.expert_action())
    obj = world.held
    assert kind(obj) == target_type
    dest = next(r for r in world.receptacles if kind(r) == world.goal.recep_type)
    game.step(f"go to {dest}")
    if world.is_closed(dest):
        game.step(f"open {dest}")
    obs = game.step(f"move {obj} to {dest}")
    assert obs.text == f"You move the {obj} to the {dest}."
    assert not obs.won and not obs.done
    # The expert takes it back out, transforms it and brings it back: only then it is won.
    assert game.expert_action() == f"take {obj} from {dest}"
    game.step(f"take {obj} from {dest}")
    game.step(f"go to {appliance}")
    obs = game.step(f"{verb} {obj} with {appliance}")
    assert obs.text == f"You {verb} the {obj} using the {appliance}."
    game.step(f"go to {dest}")
    if world.is_closed(dest):
        game.step(f"open {dest}")
    obs = game.step(f"move {obj} to {dest}")
    assert obs.won and obs.done and game.score() == 1.0


def test_look_needs_the_lamp_on_while_holding() -> None:
    env = AlfworldEnv()
    game = env.new_game(find_task(env, "look"))
    world = game.world
    host = world.scene.lamp_host
    obs = game.step(f"go to {host}")
    assert "a desklamp 1" in obs.text
    obs = game.step("use desklamp 1")
    assert obs.text == "You turn on the desklamp 1." and not obs.won
    assert "use desklamp 1" not in obs.admissible
    while not obs.done:
        obs = game.step(game.expert_action())
    assert obs.won and world.held is not None and kind(world.held) == world.goal.obj_type


def test_turn_limit_ends_the_episode() -> None:
    env = AlfworldEnv(max_turns=3)
    game = env.new_game(env.task("eval", 2))
    game.reset()
    assert not game.step(None).done and not game.step("look").done
    obs = game.step(None)
    assert obs.done and not obs.won and game.score() == 0.0


# ---- prompts, vocabulary, parser -----------------------------------------------------------
def test_prompt_shows_goal_history_and_actions() -> None:
    env = AlfworldEnv()
    task = env.task("eval", 4)
    game = env.new_game(task)
    obs = game.reset()
    history = [("obs one", "look"), ("obs two", "inventory"), ("obs three", "look")]
    prompt = env.render_prompt(task, history, obs, 3)
    assert prompt.startswith("Observation: obs two\n")
    # the goal comes last, right before the answer instruction
    assert (
        f"Admissible actions: {', '.join(obs.admissible)}\nYour task is to: {task.goal}\n" in prompt
    )
    assert "obs one" not in prompt and "Observation: obs two\nAction: inventory\n" in prompt
    assert f"Current observation: {obs.text}\n" in prompt
    assert "Admissible actions: " + ", ".join(obs.admissible) in prompt
    assert prompt.endswith("</action>.")
    assert "obs two" not in AlfworldEnv(history_length=0).render_prompt(task, history, obs, 3)


def test_vocabulary_covers_prompts_and_expert_responses() -> None:
    env = AlfworldEnv()
    vocab = set(env.vocabulary())
    seen = played_words(env, env.panel(200, split="train"), wander(0.2), seed=1)
    assert seen - vocab == set()
    assert "think" not in seen


def test_skill_bank_words_in_vocabulary() -> None:
    from importlib.resources import files

    vocab = set(AlfworldEnv().vocabulary())
    folder = files("sdar_bench") / "skills" / "alfworld"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".md"))
    assert names == sorted(f"{n}.md" for n in ("general", *TASK_TYPES))
    for path in folder.iterdir():
        if path.name.endswith(".md"):
            text = path.read_text()
            assert text.startswith("# ")
            assert len(text.split()) <= 62
            assert set(words(text)) <= vocab


def test_expert_thoughts_are_short() -> None:
    env = AlfworldEnv()
    for task in env.panel(30):
        game = env.new_game(task)
        obs = game.reset()
        while not obs.done:
            action = game.expert_action()
            thought = env.expert_thought(game, action)
            assert 2 <= len(thought.split()) <= 5
            obs = game.step(action)
    assert env.expert_thought(game, "look") == "work toward the goal"


def test_parser_accepts_expert_responses() -> None:
    env = AlfworldEnv()
    for task in env.panel(12):
        game = env.new_game(task)
        obs = game.reset()
        while not obs.done:
            action = game.expert_action()
            response = env.format_response(action, env.expert_thought(game, action))
            parsed = env.parse(response, obs.admissible)
            assert parsed.valid and parsed.action == action
            obs = game.step(parsed.action)
        assert obs.won
    assert not env.parse("<think>x</think><action>fly away</action>", obs.admissible).valid


def test_env_class_attributes() -> None:
    assert AlfworldEnv.name == "alfworld"
    assert AlfworldEnv.task_types == TASK_TYPES
    assert AlfworldEnv.invalid_penalty == 0.1 and AlfworldEnv.reward_scale == 10.0
    assert AlfworldEnv.eval_temperature == 0.4
    params = AlfworldEnv().params
    assert (params.max_turns, params.history_length) == (50, 2)  # the paper's ALFWorld
    assert (params.n_receptacles, params.n_distractors) == (6, 4)
