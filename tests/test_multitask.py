"""Multitask runs (envs/mix.py): one policy on ALFWorld, WebShop and Search-QA at once.

The shares of each step's tasks per env, the suite form ``envs: [[a, b, c]]``, each env's own
turn limit and invalid penalty, per-env metrics and evaluation rows, and the report reading a
multitask run as one row per env labelled "<method> (multitask)"."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sdar_bench.config import EvalSpec, RunSpec, SpecError, TrainSpec, WarmStartSpec, load_suite
from sdar_bench.envs import make_env
from sdar_bench.envs.mix import split_counts
from sdar_bench.report.compare import baseline_for, compare_runs
from sdar_bench.report.results import read_results
from sdar_bench.rollout import Episode, Turn
from sdar_bench.run import execute_run
from sdar_bench.trainer import build_batch

MIX = "alfworld+webshop+searchqa"


def mix_params(**weights: float) -> dict:
    return {
        "alfworld": {"max_turns": 3},
        "webshop": {"max_turns": 3, "catalog_size": 120},
        "searchqa": {"max_turns": 2, "invalid_penalty": 0.02},
        "mix_weights": {"alfworld": 1.0, "webshop": 1.0, "searchqa": 1.0, **weights},
    }


def test_split_counts_by_largest_remainder() -> None:
    assert split_counts(8, [2, 1, 1]) == [4, 2, 2]
    assert split_counts(6, [1, 1, 1]) == [2, 2, 2]
    assert split_counts(4, [1, 1, 1]) == [2, 1, 1]  # ties: the earlier env first
    assert split_counts(5, [0, 1, 1]) == [0, 3, 2]
    assert split_counts(7, [3, 2, 2]) == [3, 2, 2]
    assert split_counts(7, [1, 1, 1, 1]) == [2, 2, 2, 1]  # 1.75 each: floors, then remainders
    for count in range(13):
        assert sum(split_counts(count, [0.5, 2.0, 1.0])) == count


def test_each_step_draws_the_configured_share_of_tasks_per_env() -> None:
    env = make_env(MIX, **mix_params(alfworld=2.0))
    seen: set[str] = set()
    for step in range(5):
        tasks = env.train_tasks(seed=3, step=step, count=8)
        counts = Counter(t.env for t in tasks)
        assert counts == {"alfworld": 4, "webshop": 2, "searchqa": 2}
        ids = [t.id for t in tasks]
        assert all(i.split("/")[1] == "train" for i in ids)
        assert not seen & set(ids)  # a fresh window of each env's stream every step
        seen |= set(ids)
    # each member keeps its own turn limit and invalid penalty
    assert env.members["searchqa"].params.max_turns == 2
    assert env.members["searchqa"].invalid_penalty == 0.02
    assert env.members["alfworld"].invalid_penalty == 0.1
    assert env.params.max_turns == 3
    # evaluation: every env its own panel
    assert [t.id for t in env.panel(2)] == [
        "alfworld/eval/0", "alfworld/eval/1", "webshop/eval/0", "webshop/eval/1",
        "searchqa/eval/0", "searchqa/eval/1",
    ]  # fmt: skip


def test_invalid_penalty_is_the_tasks_own_env(tiny_policy) -> None:
    env = make_env(MIX, **mix_params())
    episodes = []
    for group, name in enumerate(("alfworld", "searchqa")):
        task = env.members[name].task("eval", 0)
        episode = Episode(task, group, reward=0.0)
        episode.turns.append(Turn(0, "p", [5], [7], "x", None, None, "s"))
        episodes.append(episode)
    batch = build_batch(episodes, env, tiny_policy, None)
    assert batch.rewards.tolist() == pytest.approx([-0.1, -0.02])


def _suite(tmp_path: Path, **extra) -> Path:
    data = {
        "name": "mt",
        "models": ["tiny-qwen-1m"],
        "envs": ["alfworld", ["alfworld", "webshop", "searchqa"]],
        "methods": ["grpo"],
        "env_params": {"searchqa": {"max_turns": 4, "invalid_penalty": 0.01}},
        "mix_weights": {"alfworld": 2.0},
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_suite_lists_a_mix_as_a_list_of_envs(tmp_path) -> None:
    suite = load_suite(_suite(tmp_path))
    runs = suite.expand()
    assert [r.env for r in runs] == ["alfworld", MIX]
    assert runs[0].env_params == {}
    assert runs[1].env_params == {
        "alfworld": {},
        "webshop": {},
        "searchqa": {"max_turns": 4, "invalid_penalty": 0.01},
        "mix_weights": {"alfworld": 2.0, "webshop": 1.0, "searchqa": 1.0},
    }
    assert f"__{MIX}__grpo__" in runs[1].run_id
    with pytest.raises(SpecError, match="unknown env 'alfwrld'"):
        load_suite(_suite(tmp_path, envs=[["alfwrld", "webshop"]]))
    with pytest.raises(SpecError, match="two or more distinct envs"):
        load_suite(_suite(tmp_path, envs=[["webshop", "webshop"]]))
    with pytest.raises(SpecError, match="mix_weights: 'alfworld' is in no multitask mix"):
        load_suite(_suite(tmp_path, envs=["alfworld"], env_params={}))
    with pytest.raises(SpecError, match="env_params.searchqa"):
        load_suite(_suite(tmp_path, env_params={"searchqa": {"max_turns": "4"}}))


def _spec(method: str, env: str = MIX, **params) -> RunSpec:
    return RunSpec(
        model="tiny-qwen-1m",
        env=env,
        env_params=mix_params() if env == MIX else {"max_turns": 3},
        method=method,
        method_params=params,
        train=TrainSpec(
            steps=1,
            tasks_per_step=3,
            group_size=2,
            lr=1e-3,
            max_new_tokens=8,
            max_prompt_tokens=256,
        ),  # fmt: skip
        eval=EvalSpec(every=1, panel=2, valid_panel=2),
        warmstart=WarmStartSpec(enabled=False),
    )


@pytest.fixture(scope="module")
def mixed_results(tmp_path_factory) -> Path:
    """One-step multitask SDAR and GRPO runs, and a single-env GRPO run, in one folder."""
    root = tmp_path_factory.mktemp("mt")
    for spec in (_spec("sdar"), _spec("grpo"), _spec("grpo", env="alfworld")):
        result = execute_run(spec, root / "runs" / spec.run_id)
        assert result["status"] == "finished", result
    return root


def _run_dir(root: Path, method: str, env: str = MIX) -> Path:
    return root / "runs" / _spec(method, env).run_id


def test_one_step_multitask_sdar_run_logs_per_env_metrics(mixed_results) -> None:
    run = _run_dir(mixed_results, "sdar")
    (row,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # 3 tasks a step, equal weights: one task of each env, G = 2 copies each
    assert {k: row[f"{k}/tasks"] for k in ("alfworld", "webshop", "searchqa")} == {
        "alfworld": 1, "webshop": 1, "searchqa": 1,
    }  # fmt: skip
    for env in ("alfworld", "webshop", "searchqa"):
        assert 0.0 <= row[f"{env}/success/train"] <= 1.0
        assert 1.0 <= row[f"{env}/turns/mean"] <= (2 if env == "searchqa" else 3)
    assert row["nonfinite/skipped"] == 0
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    # steps 0 and 1 × (test, valid) × three envs, each on its own 2-task panel
    assert len(evals) == 12
    assert {(e["step"], e["panel"], e["env"]) for e in evals} == {
        (s, p, e)
        for s in (0, 1)
        for p in ("test", "valid")
        for e in ("alfworld", "webshop", "searchqa")
    }
    assert {e["label"] for e in evals} == {"SDAR (multitask)"}
    assert all(e["panel_size"] == 2 for e in evals)
    records = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    for e, r in zip(evals, records, strict=True):
        assert r["env"] == e["env"] and all(t.startswith(e["env"] + "/") for t in r["task"])
    result = json.loads((run / "result.json").read_text())
    assert result["final"] == {}
    assert set(result["by_env"]) == {"alfworld", "webshop", "searchqa"}
    for env, part in result["by_env"].items():
        assert part["final"]["SDAR (multitask)"]["env"] == env
        assert part["final"]["SDAR (multitask)"]["step"] == 1


def test_report_reads_a_multitask_run_as_one_row_per_env(mixed_results) -> None:
    folder = read_results(mixed_results)
    members = [(r.spec["env"], r.spec.get("mix"), r.train_label) for r in folder.reported]
    assert ("webshop", MIX, "SDAR (multitask)") in members
    assert ("searchqa", MIX, "GRPO (multitask)") in members
    assert ("alfworld", None, "GRPO") in members
    assert len(members) == 7  # 2 multitask runs × 3 envs + 1 single-env run
    comparisons = compare_runs(folder, n_boot=200)
    pairs = {(c.env, c.method, c.baseline, c.which, c.pairing) for c in comparisons}
    # the multitask SDAR row is paired with the multitask GRPO run, in every env ...
    for env in ("alfworld", "webshop", "searchqa"):
        assert (env, "SDAR (multitask)", "GRPO (multitask)", "final", "task") in pairs
    # ... and neither multitask row is compared with the single-env GRPO
    assert not [c for c in comparisons if c.baseline == "GRPO"]


def test_mix_warm_start_data_covers_every_env_in_one_vocabulary() -> None:
    """The mix's tiny model has the union vocabulary: every env's expert episodes encode with
    exactly as few unknown words as under that env's own tokenizer (0 for ALFWorld and WebShop),
    and the warm start's episodes are spread evenly over the envs."""
    from sdar_bench.config import WarmStartSpec
    from sdar_bench.policy import load_policy
    from sdar_bench.warmstart import WARMSTART_SPLIT, expert_samples

    env = make_env(MIX, **mix_params())
    assert [env.task(WARMSTART_SPLIT, i).env for i in range(6)] == [
        "alfworld", "webshop", "searchqa", "alfworld", "webshop", "searchqa",
    ]  # fmt: skip
    spec = WarmStartSpec(episodes=3, noise_without_skills=0.0)
    mixed = load_policy("tiny-qwen-1m", 512, env=MIX)
    assert len(expert_samples(env, mixed, spec, 0)) > 3  # one episode of each env, several turns

    def unknown(policy, member) -> int:
        unk = policy.tokenizer.convert_tokens_to_ids("<|unk|>")
        return sum((p + r).count(unk) for p, r in expert_samples(member, policy, spec, 0))

    for name, member in env.members.items():
        own = load_policy("tiny-qwen-1m", 512, env=name)
        assert len(mixed.tokenizer) > len(own.tokenizer)
        assert unknown(mixed, member) == unknown(own, member)
        if name != "searchqa":  # Search-QA's passages hold words outside any tiny vocabulary
            assert unknown(mixed, member) == 0


def test_a_multitask_row_with_parameters_is_compared_with_the_mixs_baseline() -> None:
    # the label a suite's "sdar: {beta: 5.0}" gets: the parameters follow "(multitask)"; a
    # first version checked endswith and compared this row with the single-env GRPO, unpaired
    assert baseline_for("SDAR (multitask) [beta=5.0,coef=0.01]", "GRPO") == "GRPO (multitask)"
    assert baseline_for("SDAR (multitask)", "GRPO") == "GRPO (multitask)"
    assert baseline_for("SDAR [beta=5.0,coef=0.01]", "GRPO") == "GRPO"
