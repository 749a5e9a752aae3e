"""Checkpoints and resume: an interrupted run ends with the numbers of an uninterrupted one;
non-finite updates stop a run as failed without stopping the suite."""

from __future__ import annotations

import json

import pytest
import torch

from sdar_bench.checkpoint import CHECKPOINT_FILE
from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
from sdar_bench.registry import get_method_class
from sdar_bench.run import execute_run


def _spec(method: str = "sdar", **method_params) -> RunSpec:
    return RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 3},
        method=method,
        method_params=method_params,
        seed=3,
        train=TrainSpec(
            steps=4,
            tasks_per_step=2,
            group_size=2,
            lr=1e-3,
            max_new_tokens=8,
            checkpoint_every=2,
            max_nonfinite_in_a_row=2,
        ),
        eval=EvalSpec(every=2, panel=3),
        warmstart=WarmStartSpec(enabled=False),
    )


class Interrupted(Exception):
    pass


def _rows(path) -> list[dict]:
    drop = ("time/", "tokens/")
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(drop)}
        for line in path.read_text().splitlines()
    ]


def test_a_resumed_run_logs_the_numbers_of_an_uninterrupted_run(tmp_path) -> None:
    # ucb retrieval and an EMA teacher: both carry state that the checkpoint must restore
    spec = _spec("sdar", retrieval="ucb", teacher="ema")
    whole = execute_run(spec, tmp_path / "whole")

    def stop_after_step_3(event: str, info: dict) -> None:
        if event == "step" and info["step"] == 3:
            raise Interrupted  # after step 3 is logged; the last checkpoint is step 2

    with pytest.raises(Interrupted):
        execute_run(spec, tmp_path / "cut", stop_after_step_3)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).exists()
    assert torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=False)["step"] == 2
    assert len(_rows(tmp_path / "cut" / "metrics.jsonl")) == 3  # step 3 ran past the checkpoint

    resumed = execute_run(spec, tmp_path / "cut")
    assert _rows(tmp_path / "cut" / "metrics.jsonl") == _rows(tmp_path / "whole" / "metrics.jsonl")
    assert [r["step"] for r in _rows(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert _rows(tmp_path / "cut" / "eval.jsonl") == _rows(tmp_path / "whole" / "eval.jsonl")
    for label, row in whole["final"].items():
        assert resumed["final"][label]["success/all"] == row["success/all"]
    assert not (tmp_path / "cut" / CHECKPOINT_FILE).exists()  # finished runs drop their weights
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == 2


def test_a_half_written_log_line_is_dropped_on_resume(tmp_path) -> None:
    spec = _spec("grpo")

    def stop_after_step_2(event: str, info: dict) -> None:
        if event == "step" and info["step"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        execute_run(spec, tmp_path / "run", stop_after_step_2)
    # step 2's metrics are logged but its checkpoint is not written yet (the eval comes first)
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss/p')  # a kill in the middle of a write
    result = execute_run(spec, tmp_path / "run")  # no checkpoint: starts over cleanly
    assert [r["step"] for r in _rows(log)] == [1, 2, 3, 4]
    assert result["status"] == "finished"


def test_non_finite_updates_in_a_row_fail_the_run_with_its_reason(tmp_path, monkeypatch) -> None:
    # Fault injection: the method's loss turns NaN (what a diverging run produces), so every
    # update of every step is skipped.
    grpo = get_method_class("grpo")
    real_terms = grpo.loss_terms

    def nan_terms(self, view):  # noqa: ANN001
        terms, metrics = real_terms(self, view)
        return {**terms, "pg": terms["pg"] * float("nan")}, metrics

    monkeypatch.setattr(grpo, "loss_terms", nan_terms)
    result = execute_run(_spec("grpo"), tmp_path / "run")
    assert result["status"] == "failed"
    assert "2 steps in a row" in result["reason"] and "max_nonfinite_in_a_row" in result["reason"]
    assert result["nonfinite_steps"] == 2
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["nonfinite/skipped"] for r in rows] == [1, 1]  # stopped after the second step
    assert (tmp_path / "run" / "result.json").exists()  # the suite sees it as done, not lost
