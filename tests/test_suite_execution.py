"""Suites end to end: plan and pre-flight, resume after SIGKILL, worker processes, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sdar_bench.cli import app
from sdar_bench.config import SuiteSpec
from sdar_bench.plan import plan_suite, preflight
from sdar_bench.suite import run_dir, run_suite

TINY_SUITE = {
    "name": "tiny",
    "models": ["tiny-qwen-1m"],
    "envs": ["alfworld"],
    "env_params": {"alfworld": {"max_turns": 3}},
    "methods": ["grpo"],
    "seeds": [0, 1],
    "train": {
        "steps": 4,
        "tasks_per_step": 2,
        "group_size": 2,
        "lr": 1e-3,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
    },
    "eval": {"every": 2, "panel": 3},
    "warmstart": {"enabled": False},
}


def _write_suite(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY_SUITE, **changes}))
    return path


def _steps(folder: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]


def test_plan_lists_every_run_and_says_what_is_missing(tmp_path) -> None:
    suite = SuiteSpec(
        **{**TINY_SUITE, "models": ["tiny-qwen-1m", "Qwen/Qwen2.5-7B-Instruct"], "seeds": [0]}
    )
    plans = plan_suite(suite, tmp_path)
    assert [(p.spec.model, p.state) for p in plans] == [
        ("tiny-qwen-1m", "to run"),
        ("Qwen/Qwen2.5-7B-Instruct", "to run"),
    ]
    tiny, big = plans
    assert tiny.model.present and not tiny.needs_gpu
    assert not big.model.present and big.needs_gpu and big.model.params == pytest.approx(7.62e9)
    assert big.seconds > tiny.seconds
    problems = preflight(suite, tmp_path, needs_gpu_ok=False)
    assert problems == [
        "models: Qwen/Qwen2.5-7B-Instruct is not on this machine (not in the Hugging Face "
        "cache); get it with `hf download Qwen/Qwen2.5-7B-Instruct` or remove it "
        "from the suite"
    ]

    out = CliRunner().invoke(
        app, ["plan", str(_write_suite(tmp_path / "s.yaml")), "-o", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert "2 runs to do" in out.output and "everything these runs need" in out.output


def test_preflight_names_missing_data_and_an_unwritable_results_folder(tmp_path) -> None:
    suite = SuiteSpec(
        **{**TINY_SUITE, "envs": ["webshop"], "env_params": {"webshop": {"data_dir": "/no/such"}}}
    )
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        problems = preflight(suite, blocked / "results", needs_gpu_ok=False)
    finally:
        blocked.chmod(0o700)
    if os.geteuid() != 0:  # root writes anywhere: the permission check cannot fail for root
        assert problems[0].startswith(f"results folder {blocked / 'results'} is not writable")
    assert any(p.startswith("WebShop data_dir '/no/such' does not exist") for p in problems)


def test_run_with_missing_weights_fails_in_one_line_before_any_run(tmp_path) -> None:
    path = _write_suite(tmp_path / "s.yaml", models=["Qwen/Qwen3-1.7B"])
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "res")])
    assert out.exit_code == 2
    assert "Qwen/Qwen3-1.7B is not on this machine" in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "res" / "runs").exists()


def test_a_killed_suite_resumes_without_redoing_finished_runs(tmp_path) -> None:
    path = _write_suite(tmp_path / "s.yaml")
    results = tmp_path / "res"
    first, second = SuiteSpec(**TINY_SUITE).expand()
    cmd = [sys.executable, "-m", "sdar_bench.cli", "run", str(path), "-o", str(results)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second_dir = run_dir(results, second)
    try:
        deadline = time.monotonic() + 600
        # kill in the middle of the second run, once it has a checkpoint
        while not (second_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, "the suite ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first_result = run_dir(results, first) / "result.json"
    finished_at = first_result.stat().st_mtime_ns
    first_metrics = (run_dir(results, first) / "metrics.jsonl").read_text()
    assert not (second_dir / "result.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already finished" in rerun.stdout
    assert first_result.stat().st_mtime_ns == finished_at  # not redone
    assert (run_dir(results, first) / "metrics.jsonl").read_text() == first_metrics
    assert _steps(second_dir) == [1, 2, 3, 4]
    manifest = json.loads((second_dir / "manifest.json").read_text())
    assert manifest["resumed_from_step"] >= 1
    assert (results / "table.md").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "2 already finished" in again.stdout  # a second run trains nothing


def test_two_worker_processes_give_the_numbers_of_one(tmp_path) -> None:
    suite = SuiteSpec(**{**TINY_SUITE, "train": {**TINY_SUITE["train"], "steps": 2}})
    run_suite(suite, tmp_path / "one")
    outcomes = run_suite(suite, tmp_path / "two", workers=2)
    assert sorted(o["status"] for o in outcomes) == ["finished", "finished"]
    for spec in suite.expand():
        a = json.loads((run_dir(tmp_path / "one", spec) / "result.json").read_text())
        b = json.loads((run_dir(tmp_path / "two", spec) / "result.json").read_text())
        assert a["final"]["GRPO"]["success/all"] == b["final"]["GRPO"]["success/all"]
        assert _steps(run_dir(tmp_path / "two", spec)) == [1, 2]


def test_ray_executor_runs_a_two_run_suite_on_a_local_ray(tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    suite = SuiteSpec(**{**TINY_SUITE, "train": {**TINY_SUITE["train"], "steps": 1}})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcomes = run_suite(suite, tmp_path / "res", executor="ray")
    finally:
        ray.shutdown()
    assert sorted(o["status"] for o in outcomes) == ["finished", "finished"]
    for spec in suite.expand():
        assert _steps(run_dir(tmp_path / "res", spec)) == [1]


def test_plan_says_where_each_warm_start_comes_from(tmp_path, monkeypatch) -> None:
    from sdar_bench.config import load_suite
    from sdar_bench.policy.tiny import tiny_model_dirname
    from sdar_bench.warmstart import checkpoint_name

    monkeypatch.setenv("SDAR_BENCH_CACHE", str(tmp_path / "cache"))
    root = Path(__file__).resolve().parents[1]
    shipped = plan_suite(load_suite(root / "suites" / "quickstart.yaml"), tmp_path)
    assert {p.warmstart for p in shipped} == {"shipped"}

    assert {
        p.warmstart for p in plan_suite(load_suite(root / "suites" / "three_envs.yaml"), tmp_path)
    } == {"shipped"}

    # shorter warm starts for WebShop and Search-QA: nothing ships for those settings
    raw = yaml.safe_load((root / "suites" / "three_envs.yaml").read_text())
    raw["overrides"] += [
        {"when": {"env": env}, "warmstart": {"episodes": 1500, "steps": 600}}
        for env in ("webshop", "searchqa")
    ]
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(raw))
    suite = load_suite(tmp_path / "short.yaml")
    plans = {p.spec.env: p for p in plan_suite(suite, tmp_path) if p.spec.method == "grpo"}
    assert plans["alfworld"].warmstart == "shipped"
    webshop = plans["webshop"]
    assert webshop.warmstart == "to train"
    # 6 × params × (steps × batch × tokens per sample) ÷ the SFT rate: minutes, not hours
    assert 60 < webshop.warmstart_seconds < 3600

    spec = webshop.spec
    name = checkpoint_name(spec, tiny_model_dirname(spec.model, spec.env))
    (tmp_path / "cache" / "warmstart" / name).mkdir(parents=True)
    (tmp_path / "cache" / "warmstart" / name / "config.json").write_text("{}")
    again = {p.spec.env: p for p in plan_suite(suite, tmp_path) if p.spec.method == "grpo"}
    assert again["webshop"].warmstart == "cached" and again["searchqa"].warmstart == "to train"

    out = CliRunner().invoke(app, ["plan", str(tmp_path / "short.yaml"), "-o", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "1 warm start(s) to train first" in " ".join(out.output.split())
