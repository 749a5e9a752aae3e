"""`sdar-bench tune`: the tune: block, real studies over tiny runs, workers, failures, pruning."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

import sdar_bench.tune as tune_module
from sdar_bench.cli import app
from sdar_bench.config import SpecError, SuiteSpec, load_suite
from sdar_bench.tune import (
    BEST_FILE,
    Curves,
    TuneError,
    build_pruner,
    build_sampler,
    open_study,
    report,
    tune_suite,
)
from sdar_bench.tune_spec import ObjectiveSpec, PrunerSpec, SamplerSpec

TINY: dict[str, Any] = {
    "name": "tiny_tune",
    "models": ["tiny-qwen-1m"],
    "envs": ["alfworld"],
    "env_params": {"alfworld": {"max_turns": 3}},
    "methods": [{"sdar": {"gate": "gap"}}],
    "seeds": [0],
    "train": {"steps": 2, "tasks_per_step": 2, "group_size": 2, "lr": 1e-3, "max_new_tokens": 8},
    "eval": {"every": 1, "panel": 3},
    "warmstart": {"enabled": False},
    "tune": {
        "space": {"beta": {"log_uniform": [0.5, 20]}, "coef": {"log_uniform": [1e-3, 1e-1]}},
        "trials": 3,
        "pruner": {"name": "none"},
    },
}


def _suite_file(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, two threads per process slow runs ~5×."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trials_csv(results: Path) -> list[dict[str, str]]:
    with (results / "tune" / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def _mlflow_states(results: Path, experiment: str) -> dict[str, str]:
    """trial run name → its optuna.state tag, for the children in ``results``' MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {
        r.info.run_name: r.data.tags["optuna.state"] for r in found if "optuna.state" in r.data.tags
    }


# --------------------------------------------------------------------------- the tune: block


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            {"space": {"bta": {"uniform": [0, 1]}}},
            "tune: space.bta: not a parameter of method sdar (allowed: clip_eps,",
        ),
        ({"space": {"beta": {"uniform": [0, 1]}}, "sampler": {"nam": "tpe"}}, "tune.sampler.nam:"),
        ({"space": {"beta": {"log_uniform": [0, 1]}}}, "tune.space.beta: log_uniform: low must"),
        ({"space": {"teacher": {"choice": ["live", "lvie"]}}}, "tune: space.teacher: value 'lvie'"),
        ({"space": {"gate": {"choice": ["gap"]}}}, "tune: space.gate: also fixed in methods.sdar"),
        (
            {"space": {"beta": {"uniform": [0, 1]}}, "method": "grpo"},
            "tune: method: 'grpo' is not one of the suite's methods (sdar)",
        ),
    ],
)
def test_tune_block_mistakes_are_one_line_errors_naming_the_field(
    tmp_path: Path, tune: dict[str, Any], message: str
) -> None:
    path = _suite_file(tmp_path / "s.yaml", tune=tune)
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    out = CliRunner().invoke(app, ["tune", str(path)])
    assert out.exit_code == 2 and message in out.output, out.output


def test_a_suite_with_several_methods_must_name_the_tuned_one(tmp_path: Path) -> None:
    path = _suite_file(tmp_path / "s.yaml", methods=["grpo", "sdar"])
    with pytest.raises(SpecError, match="tune: method: the suite has 2 methods"):
        load_suite(path)
    no_tune = {k: v for k, v in TINY.items() if k != "tune"}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(no_tune))
    out = CliRunner().invoke(app, ["tune", str(tmp_path / "plain.yaml")])
    assert out.exit_code == 2 and "no tune: block" in out.output


def test_a_shared_study_refuses_a_different_suite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_study(SuiteSpec(**TINY), url, "shared")
    open_study(SuiteSpec(**{**TINY, "tune": {**TINY["tune"], "trials": 9}}), url, "shared")
    other = SuiteSpec(**{**TINY, "seeds": [0, 1]})
    with pytest.raises(TuneError, match="different suite"):
        open_study(other, url, "shared")


def test_trial_seeded_sampler_is_reproducible_and_differs_between_trials() -> None:
    def draws() -> list[float]:
        study = optuna.create_study(sampler=build_sampler(SamplerSpec(name="random", seed=3)))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        return [t.params["x"] for t in study.trials]

    first = draws()
    assert first == draws() and len(set(first)) == 3


# --------------------------------------------------------------------------- pruning


def test_the_pruner_stops_a_clearly_worse_trial_through_the_reporting_helper() -> None:
    """Synthetic evaluations through Curves + report, the path the real callback takes."""
    steps, runs = 2, 2
    objective = ObjectiveSpec(metric="success/all", which="final")

    def objective_fn(trial: optuna.Trial) -> float:
        level = trial.suggest_float("level", 0, 100)
        curves = Curves(objective, "SDAR", steps)
        positions = []
        for run in range(runs):
            for step in range(steps + 1):
                row = {
                    "label": "SDAR", "panel": "valid", "step": step,
                    "success/all": level * step / steps,
                }  # fmt: skip
                position, value = curves.add(run, row)
                positions.append(position)
                report(trial, position, value)
        assert positions == [0, 1, 2, 3, 4, 5]  # run i's eval s is step i·(steps + 1) + s
        return level

    study = optuna.create_study(
        direction="maximize",
        pruner=build_pruner(PrunerSpec(n_startup_trials=3, n_warmup_steps=1)),
    )
    for level in (60, 70, 80, 5):
        study.enqueue_trial({"level": level})
    study.optimize(objective_fn, n_trials=4)
    states = [t.state for t in study.trials]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED
    # stopped at its first prunable step, with the mean over the runs available then
    assert study.trials[3].intermediate_values == {0: 0.0, 1: 2.5}


def test_curves_average_the_runs_available_at_each_step() -> None:
    curves = Curves(ObjectiveSpec(which="best"), "SDAR", steps=2)
    rows = [(0, 0, 10.0), (0, 1, 30.0), (0, 2, 20.0), (1, 0, 0.0), (1, 1, 10.0), (1, 2, 50.0)]
    got = [
        curves.add(run, {"label": "SDAR", "panel": "valid", "step": s, "success/all": v})
        for run, s, v in rows
    ]
    # best so far per run; run 1's step s is averaged with run 0's step s
    assert got == [(0, 10.0), (1, 30.0), (2, 30.0), (3, 5.0), (4, 20.0), (5, 40.0)]
    assert (
        curves.add(0, {"label": "SDAR*", "panel": "valid", "step": 2, "success/all": 1.0}) is None
    )
    # the test panel never feeds the objective: parameters are chosen on the validation panel
    assert curves.add(0, {"label": "SDAR", "panel": "test", "step": 2, "success/all": 99.0}) is None
    assert curves.add(0, {"label": "SDAR", "step": 2, "success/all": 99.0}) is None  # old rows
    with pytest.raises(TuneError, match="'success/all' is not in the evaluation rows"):
        curves.add(0, {"label": "SDAR", "panel": "valid", "step": 2, "success/al": 1.0})


# --------------------------------------------------------------------------- real studies


def test_three_trial_study_writes_a_best_suite_that_run_accepts(tmp_path: Path, one_thread) -> None:
    suite = SuiteSpec(**TINY)
    results = tmp_path / "results"
    console = Console(file=io.StringIO(), width=200)
    summary = tune_suite(suite, results, console=console)
    assert summary.trials == 3 and summary.ran == 3 and summary.best_number is not None

    rows = _trials_csv(results)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert all(r["intermediate_steps"] == "3" for r in rows)  # evals at steps 0, 1, 2
    for n in range(3):
        (run_dir,) = (results / "tune" / f"trial_{n}").iterdir()
        assert (run_dir / "result.json").exists()
    plots = {p.name for p in (results / "tune" / "plots").iterdir()}
    assert {"history.png", "slice.png", "intermediate.png", "importances.png"} <= plots
    assert "contour_beta_coef.png" in plots
    assert "**" in (results / "tune" / "trials.md").read_text()

    best_file = results / "tune" / BEST_FILE
    best = load_suite(best_file)
    assert best.name == "tiny_tune-best" and best.tune is None
    assert best.methods == [{"sdar": {"gate": "gap", **summary.best_params}}]
    study = optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{results / 'optuna.db'}")
    assert summary.best_params == study.best_trial.params
    out = CliRunner().invoke(app, ["plan", str(best_file), "-o", str(tmp_path / "best")])
    assert out.exit_code == 0 and "everything these runs need" in out.output, out.output

    # every trial is a child of the study's parent run, with its state and intermediate values
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny_tune-tune")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("sdar_bench.role") == "suite"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["trial_0", "trial_1", "trial_2"]
    assert {r.data.tags["optuna.state"] for r in children} == {"complete"}
    history = client.get_metric_history(children[0].info.run_id, "intermediate/success/all")
    assert [m.step for m in history] == [0, 1, 2]
    assert set(children[0].data.params) >= {"beta", "coef", "trial"}

    # resume: the budget is spent, nothing runs again, the outputs are the same
    again = tune_suite(suite, results, console=console)
    assert again.ran == 0 and again.best_number == summary.best_number


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(
    tmp_path: Path, one_thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 0: λ = 1e40 overflows float32, every update is non-finite, its run ends `failed`
    (genuine). Trial 1: pruned after its first step; that verdict is forced (tiny runs all score
    0, so a median never prunes them), the path is real: TrialPruned raised in execute_run's
    eval callback. Trial 2 completes. One study, to pay for one MLflow store."""
    real_report = tune_module.report

    def prune_trial_1_after_one_step(trial: optuna.Trial, position: int, value: float) -> None:
        if trial.number == 1 and position == 1:
            raise optuna.TrialPruned("forced at intermediate step 1")
        real_report(trial, position, value)

    monkeypatch.setattr(tune_module, "report", prune_trial_1_after_one_step)
    suite = SuiteSpec(
        **{
            **TINY,
            "train": {**TINY["train"], "max_nonfinite_in_a_row": 1},
            "tune": {"space": {"coef": {"choice": [1e40, 0.01, 0.02]}}, "trials": 3},
        }
    )
    results = tmp_path / "results"
    study = open_study(suite, f"sqlite:///{results.resolve() / 'optuna.db'}", suite.name)
    for coef in (1e40, 0.01, 0.02):
        study.enqueue_trial({"coef": coef})
    summary = tune_suite(suite, results, console=Console(file=io.StringIO()))

    failed, pruned, complete = optuna.load_study(
        study_name=suite.name, storage=f"sqlite:///{results / 'optuna.db'}"
    ).trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.params == {"coef": 1e40}
    assert "failed" in failed.user_attrs["fail_reason"]
    assert "non-finite" in failed.user_attrs["fail_reason"]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.user_attrs["pruned"] == "forced at intermediate step 1"
    (run_dir,) = (results / "tune" / "trial_1").iterdir()
    assert not (run_dir / "result.json").exists()  # stopped after its first of two steps
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert complete.state == optuna.trial.TrialState.COMPLETE and math.isfinite(complete.value)
    assert summary.best_params == {"coef": 0.02}

    rows = _trials_csv(results)
    assert [r["state"] for r in rows] == ["FAIL", "PRUNED", "COMPLETE"]
    assert "non-finite" in rows[0]["note"] and "forced" in rows[1]["note"]
    assert _mlflow_states(results, "tiny_tune-tune") == {
        "trial_0": "failed",
        "trial_1": "pruned",
        "trial_2": "complete",
    }


def test_an_interrupted_trial_is_queued_again_and_resume_runs_it(
    tmp_path: Path, one_thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during trial 0 (raised at its first evaluation); the same command again runs
    trial 0's parameters as trial 1 and the interrupted trial does not count against the budget."""
    real_report = tune_module.report

    def interrupt_trial_0(trial: optuna.Trial, position: int, value: float) -> None:
        if trial.number == 0:
            raise KeyboardInterrupt
        real_report(trial, position, value)

    monkeypatch.setattr(tune_module, "report", interrupt_trial_0)
    suite = SuiteSpec(**{**TINY, "tune": {**TINY["tune"], "trials": 2}})
    results = tmp_path / "results"
    console = Console(file=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        tune_suite(suite, results, console=console, mlflow=False)
    summary = tune_suite(suite, results, console=console, mlflow=False)

    assert summary.ran == 2 and summary.trials == 3
    interrupted, again, fresh = optuna.load_study(
        study_name=suite.name, storage=f"sqlite:///{results / 'optuna.db'}"
    ).trials
    assert interrupted.state == optuna.trial.TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted; queued again"
    assert again.params == interrupted.params and again.user_attrs["retry_of"] == 0
    assert again.state == fresh.state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path: Path, tiny_policy) -> None:
    """Two `sdar-bench tune` processes on one SQLite study: 4 trials, unique numbers and params.

    Cheap runs (one step, a one-task panel): the point is the shared study, not the training.
    ``tiny_policy`` builds the tiny model first, so the workers find it in the cache.
    """
    path = _suite_file(
        tmp_path / "s.yaml",
        train={**TINY["train"], "steps": 1, "tasks_per_step": 1},
        eval={"every": 1, "panel": 1},
        tune={**TINY["tune"], "trials": 4},
    )
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "sdar_bench.cli", "tune", str(path), "-o", str(results)]
    argv += ["--n-trials", "2", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all("4 trials (2 here)" in out for out in outputs), outputs

    study = optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{results / 'optuna.db'}")
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({(t.params["beta"], t.params["coef"]) for t in trials}) == 4
    assert sorted(p.name for p in (results / "tune").glob("trial_*")) == [
        f"trial_{n}" for n in range(4)
    ]
    assert load_suite(results / "tune" / BEST_FILE).name == "tiny_tune-best"
