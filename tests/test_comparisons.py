"""Paired comparisons of a results folder: what pairs with what, the numbers ``compare``,
``power`` and the report print, and the folder states they must not hide.

Run folders are written by hand in the format ``execute_run`` writes (manifest.json,
result.json, episodes.jsonl, eval.jsonl), so every expected number is computed in the comments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdar_bench.cli import app
from sdar_bench.report import stats
from sdar_bench.report.compare import compare_runs, power_rows
from sdar_bench.report.results import ResultsError, episode_values, read_results
from sdar_bench.report.table import write_report
from sdar_bench.run import summarize

runner = CliRunner()
LABELS = {"grpo": "GRPO", "sdar": "SDAR"}


def _spec(method: str, seed: int, **changes: object) -> dict:
    spec = {
        "suite": "s", "model": "tiny-qwen-1m", "env": "alfworld", "env_params": {"max_turns": 3},
        "method": method, "method_params": {}, "seed": seed, "train": {"steps": 4},
        "eval": {"panel": 4, "valid_panel": 4}, "warmstart": {"enabled": False}, "policy": {},
    }  # fmt: skip
    spec.update(changes)
    return spec


def write_run(
    root: Path,
    method: str,
    seed: int,
    final: float | list[int],
    *,
    run_id: str | None = None,
    types: list[str] | None = None,
    **spec_changes: object,
) -> Path:
    """A finished run. ``final``: the summary success/all (a 0.1.0 run, no per-episode file), or
    the per-task successes (0/1) of the final test evaluation, written to episodes.jsonl."""
    run = root / "runs" / (run_id or f"{method}-s{seed}")
    run.mkdir(parents=True)
    spec = _spec(method, seed, **spec_changes)
    (run / "manifest.json").write_text(json.dumps({"spec": spec}))
    label = LABELS[method]
    row: dict = {"step": 4, "panel": "test", "label": label, "panel_hash": "h"}
    if isinstance(final, list):
        row["success/all"] = 100.0 * sum(final) / len(final)
        record = {
            "step": 4, "label": label, "panel": "test", "with_skills": False,
            "task": [f"alfworld/eval/{i}" for i in range(len(final))],
            "type": types or ["pick"] * len(final), "source": types or ["pick"] * len(final),
            "success": final, "score": [float(x) for x in final],
            "turns": [3] * len(final), "invalid": [0] * len(final),
        }  # fmt: skip
        (run / "episodes.jsonl").write_text(json.dumps(record) + "\n")
    else:
        row["success/all"] = float(final)
    result = {"final": {label: row}, "best": {label: row}, "selection": "valid"}
    (run / "result.json").write_text(json.dumps({**result, "status": "finished"}))
    return run


def _json(args: list[str]) -> list[dict]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# ---- the worked example of the README ---------------------------------------------------------
# SDAR − GRPO per seed: −1.0, −9.4, −1.0, −5.2, −6.3 (the 5-seed run of the issue).
# Δ = −22.9 / 5 = −4.58; deviations 3.58, −4.82, 3.58, −0.62, −1.72, squares sum 52.208,
# s² = 13.052, s = 3.61275, se = s/√5 = 1.61567, t(0.975, 4) = 2.776445, half = 4.48575:
# [−9.066, −0.094]. Sign-flip: all five negative, so only the all-minus and all-plus patterns
# reach |mean| ≥ 4.58: p = 2/32 = 0.0625. P(SDAR > GRPO) over seed pairs: every SDAR value
# (40.6–49.0) is below every GRPO value (50): 0.
SDAR_FINAL = [49.0, 40.6, 49.0, 44.8, 43.7]


def test_five_seed_worked_example_gives_the_hand_computed_paired_interval_and_p(
    tmp_path: Path,
) -> None:
    for seed, value in enumerate(SDAR_FINAL):
        write_run(tmp_path, "grpo", seed, 50.0)
        write_run(tmp_path, "sdar", seed, value)
    rows = _json(["compare", str(tmp_path), "--which", "final", "--format", "json"])
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == [
        "model", "env", "method", "baseline", "metric", "which", "n", "delta", "ci_low",
        "ci_high", "p_value", "prob_improvement", "pairing", "n_tasks",
    ]  # fmt: skip
    assert (row["model"], row["env"], row["method"], row["baseline"]) == (
        "tiny-qwen-1m", "alfworld", "SDAR", "GRPO",
    )  # fmt: skip
    assert (row["metric"], row["which"], row["n"], row["pairing"]) == (
        "success/all", "final", 5, "seed",
    )  # fmt: skip
    assert row["delta"] == pytest.approx(-4.58)
    assert row["ci_low"] == pytest.approx(-9.06575, abs=1e-4)
    assert row["ci_high"] == pytest.approx(-0.09425, abs=1e-4)
    assert row["p_value"] == 0.0625
    assert row["prob_improvement"] == 0.0
    # The report shows it paired and bold (the interval excludes 0); Welch would say ± 5.5
    write_report(tmp_path)
    md = (tmp_path / "table.md").read_text()
    assert "| SDAR | 5 |" in md and "**-4.6 [-9.1, -0.1]**" in md


def test_identical_runs_give_zero_difference_and_a_zero_width_interval(tmp_path: Path) -> None:
    outcomes = [[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]]
    for seed, tasks in enumerate(outcomes):
        write_run(tmp_path, "grpo", seed, tasks)
        write_run(tmp_path, "sdar", seed, tasks)
    (row,) = _json(["compare", str(tmp_path), "--which", "final", "--format", "json"])
    assert (row["delta"], row["ci_low"], row["ci_high"], row["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert (row["pairing"], row["n_tasks"], row["prob_improvement"]) == ("task", 4, 0.5)


def test_per_episode_records_pair_the_tasks_within_each_seed(tmp_path: Path) -> None:
    # seed 0: GRPO 1,0,0,0 (25%), SDAR 1,1,0,0 (50%) → +25; seed 1: 0,0,1,0 vs 1,0,1,0 → +25;
    # seed 2: 1,1,0,0 vs 1,1,1,1 → +50. Δ = 33.333; s_m = 14.4338, se = 8.33333,
    # t(0.975, 2) = 4.302653 → half 35.8554.
    grpo = [[1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]]
    sdar = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    for seed in range(3):
        write_run(tmp_path, "grpo", seed, grpo[seed])
        write_run(tmp_path, "sdar", seed, sdar[seed])
    (c,) = compare_runs(read_results(tmp_path), which=("final",))
    assert (c.pairing, c.n, c.n_tasks) == ("task", 3, 4)
    assert c.delta == pytest.approx(100 / 3)
    assert c.ci_low == pytest.approx(100 / 3 - 35.8554, abs=1e-3)
    assert c.ci_high == pytest.approx(100 / 3 + 35.8554, abs=1e-3)
    assert c.p_value == 0.25  # all three positive: 2 of 8 sign patterns
    # a per-episode file whose task list differs from its pair's falls back to seed-level pairs
    other = tmp_path / "runs" / "sdar-s2" / "episodes.jsonl"
    record = json.loads(other.read_text())
    record["task"] = [t.replace("eval", "valid") for t in record["task"]]
    other.write_text(json.dumps(record) + "\n")
    (c,) = compare_runs(read_results(tmp_path), which=("final",))
    assert (c.pairing, c.n_tasks) == ("seed", None)
    assert c.delta == pytest.approx(100 / 3)  # same numbers, summarised per seed


def test_a_0_1_0_folder_mixed_with_new_runs_pairs_by_seed_only(tmp_path: Path) -> None:
    write_run(tmp_path, "grpo", 0, [1, 0, 0, 0])
    write_run(tmp_path, "sdar", 0, 50.0)  # written before per-episode records
    write_run(tmp_path, "grpo", 1, 25.0)
    write_run(tmp_path, "sdar", 1, [1, 1, 1, 0])
    (c,) = compare_runs(read_results(tmp_path), which=("final",))
    assert (c.pairing, c.n) == ("seed", 2)
    assert c.delta == pytest.approx(((50 - 25) + (75 - 25)) / 2)


def test_runs_that_do_not_pair_are_compared_unpaired_and_say_so(tmp_path: Path) -> None:
    # SDAR's runs started from another warm start: not pairs of GRPO's runs
    for seed, (g, s) in enumerate([(20.0, 30.0), (30.0, 50.0)]):
        write_run(tmp_path, "grpo", seed, g)
        write_run(tmp_path, "sdar", seed, s, warmstart={"enabled": True, "seed": 7})
    (c,) = compare_runs(read_results(tmp_path), which=("final",))
    # Welch: means 40 and 25, s² 200 and 50 → se = √(100 + 25) = 11.1803,
    # dof = 125² / (100² + 25²) = 1.470588, t = 6.188115 → half 69.185
    assert c.pairing == "unpaired" and c.n == 2 and c.n_baseline == 2
    assert c.delta == 15.0
    assert c.ci_high == pytest.approx(15.0 + 69.185, abs=1e-2)
    assert c.p_value != c.p_value  # no paired test: NaN
    write_report(tmp_path)
    assert "+15.0 [-54.2, +84.2] (unpaired)" in (tmp_path / "table.md").read_text()


def test_runs_of_different_settings_are_never_pooled_as_seeds(tmp_path: Path) -> None:
    write_run(tmp_path, "grpo", 0, 50.0, run_id="grpo-short")
    write_run(tmp_path, "grpo", 0, 10.0, run_id="grpo-long", env_params={"max_turns": 15})
    write_run(tmp_path, "sdar", 0, 60.0)
    with pytest.raises(ResultsError, match=r"env_params\.max_turns \(15 vs 3\)|max_turns"):
        compare_runs(read_results(tmp_path))
    for command in (["compare", str(tmp_path)], ["report", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: runs grpo-")
        assert "max_turns" in lines[0] and "not seeds of one setting" in lines[0]


def test_the_report_lists_every_run_of_the_suite_without_a_result(tmp_path: Path) -> None:
    write_run(tmp_path, "grpo", 0, 50.0)
    write_run(tmp_path, "sdar", 0, 60.0)
    unfinished = tmp_path / "runs" / "sdar-s1"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    crashed = tmp_path / "runs" / "grpo-s1"
    crashed.mkdir()
    (crashed / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    damaged = tmp_path / "runs" / "grpo-s2"
    damaged.mkdir()
    (damaged / "result.json").write_text('{"final": ')  # torn
    write_run(tmp_path, "sdar", 9, 99.0, run_id="old-run")  # from an earlier suite
    suite = ["grpo-s0", "sdar-s0", "grpo-s1", "sdar-s1", "grpo-s2", "sdar-s2"]
    (tmp_path / "suite.json").write_text(json.dumps({"name": "s", "run_ids": suite}))
    folder = read_results(tmp_path)
    assert [m.line() for m in folder.missing] == [
        "`grpo-s1`: crashed (RuntimeError: out of memory)",
        "`sdar-s1`: unfinished (last logged step 2)",
        "`grpo-s2`: damaged (result.json or manifest.json unreadable (JSONDecodeError: "
        "Expecting value: line 1 column 11 (char 10)))",
        "`sdar-s2`: not started",
    ]
    assert folder.stale == ["old-run"]
    assert [r.run_id for r in folder.reported] == ["grpo-s0", "sdar-s0"]  # old-run left out
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "missing run `sdar-s2`: not started" in result.output
    md = (tmp_path / "table.md").read_text()
    assert "4 run(s) of the suite have no result in the tables" in md
    assert "`old-run`" in md and "| SDAR | 1 |" in md


def test_summarize_chooses_the_best_step_on_the_validation_panel() -> None:
    def row(step: int, panel: str, value: float) -> dict:
        return {"step": step, "panel": panel, "label": "GRPO", "success/all": value}

    # the test panel peaks at step 4 (80), the validation panel at step 8 (60): step 8 is chosen
    # and reported with its test value 70; choosing on the test panel would report 80
    evals = [
        row(0, "test", 50.0), row(0, "valid", 40.0), row(4, "test", 80.0),
        row(4, "valid", 45.0), row(8, "test", 70.0), row(8, "valid", 60.0),
    ]  # fmt: skip
    result = summarize(evals)
    assert result["final"]["GRPO"]["step"] == 8
    assert result["best"]["GRPO"]["step"] == 8 and result["best"]["GRPO"]["success/all"] == 70.0
    assert result["best"]["GRPO"]["selected_on"] == {"panel": "valid", "success/all": 60.0}
    # no validation panel: no best step at all rather than one chosen on the test panel
    assert summarize([r for r in evals if r["panel"] == "test"])["best"] == {}


def test_em_avg_weights_make_the_plain_mean_the_average_over_sources() -> None:
    record = {
        "success": [1, 0, 0, 1, 1],
        "type": ["a"] * 5,
        "source": ["nq", "nq", "nq", "hotpotqa", "hotpotqa"],
    }
    values = episode_values(record, "em/avg")
    assert values is not None
    # nq 1/3, hotpotqa 2/2: their average 66.667, not the pooled 3/5 = 60
    assert values.mean() == pytest.approx((100 / 3 + 100) / 2)
    assert list(episode_values(record, "em/nq")) == [100.0, 0.0, 0.0]


def test_power_from_a_pilot_matches_the_variance_components(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for seed in range(4):
        write_run(tmp_path, "grpo", seed, [int(x) for x in rng.random(24) < 0.4])
        write_run(tmp_path, "sdar", seed, [int(x) for x in rng.random(24) < 0.5])
    (row,) = power_rows(read_results(tmp_path), target=3.0)
    folder = read_results(tmp_path)
    runs = {(r.spec["method"], r.spec["seed"]): r for r in folder.reported}
    a = [runs[("sdar", s)].task_values("final", "SDAR", "success/all")[1] for s in range(4)]
    b = [runs[("grpo", s)].task_values("final", "GRPO", "success/all")[1] for s in range(4)]
    between, within = stats.variance_components(a, b)
    assert (row.seeds, row.tasks) == (4, 24)
    assert row.detectable == pytest.approx(stats.detectable_difference(between, within, 4, 24))
    assert row.seeds_for_target == stats.seeds_needed(3.0, between, within, 24)
    assert row.grid["20×96"] < row.grid["5×24"]  # more seeds and tasks resolve less
    result = runner.invoke(app, ["power", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "detectable" in result.output and "seeds \\ tasks" in result.output
