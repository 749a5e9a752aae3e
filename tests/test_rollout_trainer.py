"""Rollout bookkeeping, per-turn rewards, and short end-to-end runs of every method."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
from sdar_bench.envs import make_env
from sdar_bench.policy.backend import TransformersBackend
from sdar_bench.registry import get_method_class, method_names
from sdar_bench.rollout import Episode, Turn, collect
from sdar_bench.run import execute_run
from sdar_bench.skills import SkillRetriever
from sdar_bench.trainer import build_batch


def _expert_episode(env, task, group: int, invalid_at: set[int]) -> Episode:
    """Play the expert, replacing the turns in ``invalid_at`` with unparsable output."""
    game = env.new_game(task)
    obs = game.reset()
    episode = Episode(task, group)
    turn = 0
    while not obs.done:
        expert = game.expert_action()
        action = None if turn in invalid_at else expert
        episode.turns.append(Turn(turn, "p", [5, 6], [7, 1], "x", action, expert))
        obs = game.step(action)
        turn += 1
    episode.score, episode.reward = game.score(), env.episode_reward(game)
    return episode


def test_every_turn_gets_the_episode_reward_minus_the_invalid_penalty(tiny_policy) -> None:
    env = make_env("alfworld", max_turns=30)
    task = env.task("eval", 0)
    won = _expert_episode(env, task, 0, invalid_at={1})
    lost = _expert_episode(make_env("alfworld", max_turns=2), task, 1, invalid_at={0, 1})
    batch = build_batch([won, lost], env, tiny_policy, None)
    assert won.reward == 10.0 and lost.reward == 0.0
    expected = [10.0, 9.9] + [10.0] * (len(won.turns) - 2) + [-0.1, -0.1]
    assert batch.rewards.tolist() == pytest.approx(expected)
    assert batch.group_ids.tolist() == [0] * len(won.turns) + [1, 1]
    assert batch.turn_index.tolist() == list(range(len(won.turns))) + [0, 1]
    # expert agreement: the invalid turn disagrees, every other turn of the expert agrees
    assert batch.expert_agree.tolist()[:2] == [1, 0]


def test_teacher_batch_prepends_the_task_skill(tiny_policy) -> None:
    env = make_env("alfworld", max_turns=3)
    tasks = env.panel(2)
    backend = TransformersBackend(tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id)
    episodes = collect(
        tiny_policy, backend, env, tasks, 2, temperature=1.0, max_new_tokens=6, seed=0
    )
    assert [e.group for e in episodes] == [0, 0, 1, 1]
    assert all(len(e.turns) == 3 for e in episodes)  # random weights never finish a task
    retriever = SkillRetriever("alfworld")
    batch = build_batch(episodes, env, tiny_policy, retriever)
    i = 0
    for e in episodes:
        block = tiny_policy.encoder.skill_ids(retriever.retrieve(e.task))
        for turn in e.turns:
            assert batch.teacher_ids[i] == block + batch.prompt_ids[i]
            assert batch.response_ids[i] == turn.response_ids
            i += 1


def _spec(method: str, **overrides) -> RunSpec:
    return RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 3},
        method=method,
        seed=0,
        train=TrainSpec(steps=2, tasks_per_step=2, group_size=2, lr=1e-3, max_new_tokens=8),
        eval=EvalSpec(every=2, panel=3),
        warmstart=WarmStartSpec(enabled=False),
        **overrides,
    )


@pytest.mark.parametrize("method", sorted(method_names()))
def test_two_step_run_of_every_method_logs_finite_metrics(method: str, tmp_path) -> None:
    spec = _spec(method)
    result = execute_run(spec, tmp_path / "run")
    cls = get_method_class(method)
    labels = {cls.row_label(s) for s in cls.eval_skill_modes}
    assert set(result["final"]) == labels
    evals = [
        json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
    ]
    expected_steps = [0, 2] if cls.trains else [0]
    for panel in ("test", "valid"):  # the validation panel is evaluated alongside the test panel
        steps = [e["step"] for e in evals if e["panel"] == panel]
        assert sorted(steps) == sorted(expected_steps * len(labels))
    # every evaluation row has its per-episode record, and the two agree
    records = [
        json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    ]
    assert len(records) == len(evals)
    for row, record in zip(evals, records, strict=True):
        assert (record["step"], record["label"], record["panel"]) == (
            row["step"], row["label"], row["panel"],
        )  # fmt: skip
        assert len(record["task"]) == row["panel_size"] == 3
        assert 100 * sum(record["success"]) / 3 == pytest.approx(row["success/all"])
        assert record["turns"] and all(1 <= t <= 3 for t in record["turns"])
    test_ids = {t for r in records if r["panel"] == "test" for t in r["task"]}
    valid_ids = {t for r in records if r["panel"] == "valid" for t in r["task"]}
    assert test_ids == {f"alfworld/eval/{i}" for i in range(3)}
    assert valid_ids == {f"alfworld/valid/{i}" for i in range(3)}
    assert result["selection"] == "valid"
    for label in labels:  # the best step's row is a test-panel row, chosen on the valid panel
        assert result["best"][label]["panel"] == "test"
        assert result["best"][label]["selected_on"]["panel"] == "valid"
    if not cls.trains:
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
        return
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in (
            "loss/pg",
            "loss/kl",
            "entropy/mean",
            "grad/norm",
            "reward/mean",
            "invalid/ratio",
        ):
            assert math.isfinite(row[key]), key
        assert row["nonfinite/skipped"] == 0
        if cls.needs_teacher:
            assert math.isfinite(row["gap/mean"]) and row["gap/by_turn"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["panel_hash"] == evals[0]["panel_hash"]
    assert set(manifest["skill_hashes"]) >= {"general", "heat", "pick2"}


def test_same_seed_same_numbers(tmp_path) -> None:
    a = execute_run(_spec("sdar"), tmp_path / "a")
    b = execute_run(_spec("sdar"), tmp_path / "b")
    rows_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()

    def strip(line: str) -> dict:
        row = json.loads(line)
        return {k: v for k, v in row.items() if not k.startswith(("time/", "tokens/"))}

    assert [strip(r) for r in rows_a] == [strip(r) for r in rows_b]
    assert a["final"]["SDAR"]["success/all"] == b["final"]["SDAR"]["success/all"]


def test_sdar_update_changes_the_weights_and_reference_stays(tmp_path) -> None:
    from sdar_bench.policy import load_policy
    from sdar_bench.trainer import setup, train_step

    spec = _spec("sdar")
    policy = load_policy(spec.model, env=spec.env)
    before = [p.detach().clone() for p in policy.model.parameters()]
    state = setup(spec, policy)
    metrics = train_step(state, 0)
    assert metrics["samples"] == 2 * 2 * 3
    changed = any(
        not torch.equal(a, p) for a, p in zip(before, policy.model.parameters(), strict=True)
    )
    assert changed
    for a, r in zip(before, state.reference.parameters(), strict=True):
        assert torch.equal(a, r)
    assert state.teacher is policy.model  # live teacher = the same weights


@pytest.mark.parametrize("env", ["webshop", "searchqa"])
def test_sdar_trains_on_the_other_offline_envs(env: str, tmp_path) -> None:
    spec = _spec("sdar").model_copy(
        update={
            "env": env,
            "env_params": {"max_turns": 2},
            "train": _spec("sdar").train.model_copy(update={"steps": 1}),
        }
    )
    result = execute_run(spec, tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["loss/pg"]) and math.isfinite(row["gap/mean"])
    assert row["invalid/ratio"] == 1.0  # random weights never produce a well-formed turn
    penalty = 0.1 if env == "webshop" else 0.01  # c_inv per env (SPEC §1)
    assert row["reward/mean"] == pytest.approx(-penalty)
    assert "SDAR" in result["final"]
