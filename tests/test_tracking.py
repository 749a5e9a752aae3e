"""MLflow tracking against real stores: the default sqlite file and a real ``mlflow server``."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sdar_bench.tracking import (
    SuiteTracker,
    default_uri,
    flatten_metrics,
    flatten_params,
    sanitize_key,
    tracking_uri,
    ui_command,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "suite": "unit",
    "model": "tiny-qwen-1m",
    "env_params": {},
    "method_params": {"beta": 5.0, "retrieval": "keyword"},
    "seed": 0,
    "train": {"lr": 5.0e-4, "steps": 3, "stages": [1, 2]},
}
# mlflow's own sqlalchemy models trigger this deprecation; nothing here can act on it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

REWARDS = [0.25, float("nan"), 0.75]  # step 2 is not finite: MLflow must never see it


def _write_run_files(run_dir: Path) -> list[Path]:
    run_dir.mkdir(parents=True)
    files = [run_dir / "spec.yaml", run_dir / "manifest.json", run_dir / "result.json"]
    for path in files:
        path.write_text("{}\n")
    return files


def _track_suite(results: Path, uri: str | None = None) -> SuiteTracker:
    """Two child runs as the suite would log them: params, steps, evaluations, artifacts."""
    table = results / "table.md"
    results.mkdir(parents=True, exist_ok=True)
    table.write_text("| method |\n")
    with SuiteTracker("unit", results, uri=uri, suite_params={"train": {"lr": 5e-4}}) as suite:
        for seed in (0, 1):
            run_id = f"run-s{seed}"
            files = _write_run_files(results / "runs" / run_id)
            with suite.run(run_id, {**SPEC, "seed": seed}) as run:
                run.log_eval(
                    0, {"step": 0, "label": "SDAR", "success/all": 10.0, "panel_hash": "x"}
                )
                for step, reward in enumerate(REWARDS, start=1):
                    run.log_step(
                        step,
                        {
                            "step": step,
                            "reward/mean": reward,
                            "loss/pg": math.inf,
                            "gap/by_turn": {0: 0.5, 1: -0.5},
                            "note": "text",
                            "flag": True,
                        },
                    )
                run.log_eval(3, {"step": 3, "label": "Skill-Prompt*", "success/all": 20.0})
                run.log_artifacts(files)
        suite.log_artifacts([table])
    return suite


def _check_store(client: MlflowClient, suite: SuiteTracker) -> None:
    experiment = client.get_experiment_by_name("unit")
    assert experiment is not None
    parent = client.get_run(suite.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.experiment_id == experiment.experiment_id
    assert parent.data.params == {"train.lr": "0.0005"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["table.md"]

    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`sdar_bench.role` = 'run'"
    )
    assert sorted(c.data.tags["run_id"] for c in children) == ["run-s0", "run-s1"]
    for child in children:
        run_id = child.info.run_id
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert params["train.lr"] == "0.0005"
        assert params["method_params.beta"] == "5.0"
        assert params["train.stages"] == "[1, 2]"
        assert params["env_params"] == "{}"
        assert params["seed"] == child.data.tags["run_id"][-1]

        history = client.get_metric_history(run_id, "reward/mean")
        assert [(m.step, m.value) for m in history] == [(1, 0.25), (3, 0.75)]
        assert [m.step for m in client.get_metric_history(run_id, "gap/by_turn/1")] == [1, 2, 3]
        assert client.get_metric_history(run_id, "loss/pg") == []  # only ever infinite
        assert set(child.data.metrics) == {
            "reward/mean",
            "gap/by_turn/0",
            "gap/by_turn/1",
            "eval/SDAR/success/all",
            "eval/Skill-Prompt with skills/success/all",
        }
        evals = client.get_metric_history(run_id, "eval/Skill-Prompt with skills/success/all")
        assert [(m.step, m.value) for m in evals] == [(3, 20.0)]
        artifacts = sorted(a.path for a in client.list_artifacts(run_id))
        assert artifacts == ["manifest.json", "result.json", "spec.yaml"]


def test_sqlite_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written relative to the cwd would show up here
    results = tmp_path / "results" / "unit"
    suite = _track_suite(results)

    assert suite.uri == f"sqlite:///{results.resolve()}/mlflow.db"
    assert (results / "mlflow.db").is_file()
    _check_store(MlflowClient(suite.uri), suite)
    # The results directory is self-contained: artifacts next to the db, no ./mlruns.
    assert list((results / "mlartifacts").rglob("manifest.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]

    # A crashed invocation leaves runs RUNNING; the next invocation marks them KILLED, and the
    # run that resumes from its checkpoint replays its logs into the new child.
    crashed = SuiteTracker("unit", results).__enter__()
    orphan = crashed.run("run-s2", SPEC)
    orphan.log_step(1, {"reward/mean": 1.0})
    client = MlflowClient(suite.uri)
    assert client.get_run(orphan.mlflow_run_id).info.status == "RUNNING"
    run_dir = results / "runs" / "run-s2"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 1, "reward/mean": 1.0}\n{"step": 2, "reward/mean": 0.5}\n{"step": 3, "rew'
    )
    (run_dir / "eval.jsonl").write_text('{"step": 0, "label": "SDAR", "success/all": 5.0}\n')
    with SuiteTracker("unit", results) as again, again.run("run-s2", SPEC) as run:
        assert run.backfill(run_dir) == 3
        run.log_step(3, {"reward/mean": 0.0})
    assert client.get_run(orphan.mlflow_run_id).info.status == "KILLED"
    assert client.get_run(crashed.parent_run_id).info.status == "KILLED"
    resumed = client.get_run(run.mlflow_run_id)
    assert resumed.data.tags["mlflow.parentRunId"] == again.parent_run_id
    history = client.get_metric_history(run.mlflow_run_id, "reward/mean")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.0)]
    assert resumed.data.metrics["eval/SDAR/success/all"] == 5.0


def test_failed_run_and_disabled_tracker(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with (
        pytest.raises(RuntimeError),
        SuiteTracker("unit", results, uri=default_uri(results)) as suite,
        suite.run("boom", SPEC) as run,
    ):
        raise RuntimeError("training diverged")
    client = MlflowClient(suite.uri)
    assert client.get_run(run.mlflow_run_id).info.status == "FAILED"
    assert client.get_run(suite.parent_run_id).info.status == "FAILED"

    off = tmp_path / "off"
    with SuiteTracker("unit", off, enabled=False) as suite, suite.run("r", SPEC) as run:
        run.log_step(1, {"reward/mean": 1.0})
        run.log_artifacts([tmp_path])
    assert run.mlflow_run_id is None
    assert not off.exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free local port, with proxied artifact storage."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--serve-artifacts",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: teardown stops its workers too
    )
    try:
        # Slow on a loaded 2-core machine: importing mlflow and migrating the db take a while.
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_tracking_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    results = tmp_path / "results"
    suite = _track_suite(results)

    assert suite.uri == mlflow_server
    assert not (results / "mlflow.db").exists()
    _check_store(MlflowClient(mlflow_server), suite)
    # Artifacts went through the server into its destination, not into the results dir.
    assert list((tmp_path / "server-artifacts").rglob("manifest.json"))
    assert not (results / "mlartifacts").exists()


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri(tmp_path) == default
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(Path(".")) == default  # absolute even for a relative results dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking_uri(tmp_path) == "http://env:5000"
    assert tracking_uri(tmp_path, "http://suite:5000") == "http://suite:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert tracking_uri(tmp_path) == default

    argv = ui_command(tmp_path, port=5123)
    assert argv[1:] == [
        "-m", "mlflow", "ui",
        "--backend-store-uri", default,
        "--host", "127.0.0.1",
        "--port", "5123",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        ui_command(tmp_path, uri="http://suite:5000")


def test_flattening() -> None:
    params = flatten_params({"train": {"lr": 5e-4, "opt": {"name": "adam"}}, "s": "x" * 7000})
    assert params == {"train.lr": "0.0005", "train.opt.name": "adam", "s": "x" * 6000}
    assert flatten_metrics({"a": {"b": 1, "c": [1.0]}, "n": None, "i": -math.inf}) == {"a/b": 1.0}
    assert sanitize_key("eval/Skill-Prompt*/success@1") == "eval/Skill-Prompt with skills/success_1"
    assert sanitize_key("/a//b/../c/") == "a/b/c"
    assert len(sanitize_key("k" * 300)) == 250


def test_the_validation_panel_logs_under_its_own_keys() -> None:
    """Catches the validation row of an evaluation overwriting the test row of the same step
    (both are logged at that step)."""
    from sdar_bench.tracking import _eval_metrics

    test = {"step": 4, "label": "SDAR", "panel": "test", "success/all": 50.0}
    valid = {"step": 4, "label": "SDAR", "panel": "valid", "success/all": 40.0}
    assert _eval_metrics(test) == {"eval/SDAR/success/all": 50.0}
    assert _eval_metrics(valid) == {"valid/SDAR/success/all": 40.0}
    assert _eval_metrics({"step": 4, "label": "SDAR", "success/all": 5.0}) == {
        "eval/SDAR/success/all": 5.0
    }  # rows written before the validation panel existed


def test_sdar_bench_run_logs_tables_and_plots_on_the_suite_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the command line, as a user runs it: the parent (suite) run holds the tables and
    plots, and a with-skills row keeps a readable key."""
    import yaml
    from typer.testing import CliRunner

    from sdar_bench.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    quickstart = yaml.safe_load((ROOT / "suites" / "quickstart.yaml").read_text())
    suite = {
        **quickstart,
        "name": "artifacts",
        "methods": ["vanilla", "skill_prompt"],  # evaluation only: seconds, not minutes
        "seeds": [0],
        "eval": {"panel": 2, "valid_panel": 2},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("artifacts")
    assert experiment is not None
    [parent] = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`sdar_bench.role` = 'suite'"
    )
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == [
        "plots", "table.csv", "table.md", "table.tex",
    ]  # fmt: skip
    plots = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "plots"))
    assert plots == sorted(f"plots/{p.name}" for p in (out / "plots").iterdir())
    [child] = client.search_runs(
        [experiment.experiment_id], filter_string="tags.run_id LIKE '%skill_prompt%'"
    )
    assert "eval/Skill-Prompt with skills/success/all" in child.data.metrics
