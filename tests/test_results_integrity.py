"""Results folders a hostile (or unlucky) user cannot corrupt: locks, suite.json, damaged
files, torn logs, exit codes, full disks, plain logs, and the UI's port."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from sdar_bench.checkpoint import CHECKPOINT_FILE
from sdar_bench.cli import app
from sdar_bench.config import SuiteSpec, load_suite
from sdar_bench.locking import RunInUse
from sdar_bench.plan import plan_suite
from sdar_bench.run import execute_run
from sdar_bench.suite import SUITE_FILE, run_dir, run_suite, safe_execute, suite_record

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def fast_suite(**changes: object) -> dict:
    """The quickstart shrunk to seconds on a CPU: GRPO, two seeds, four steps."""
    raw = yaml.safe_load((ROOT / "suites" / "quickstart.yaml").read_text())
    raw["env_params"]["alfworld"]["max_turns"] = 3
    raw["methods"] = ["grpo"]
    raw["train"].update(
        steps=4, tasks_per_step=1, group_size=2, max_new_tokens=8, checkpoint_every=1
    )
    raw["eval"] = {"every": 2, "panel": 1}
    raw["warmstart"] = {"enabled": False}
    raw.update(changes)
    return raw


def write_suite(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump(fast_suite(**changes)))
    return path


def steps(folder: Path, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(line)["step"] for line in (folder / name).read_text().splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sdar_bench.cli import app; app()", *args]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class Interrupted(Exception):
    pass


def cut_after(step: int):  # noqa: ANN201 - a callback
    def callback(event: str, info: dict) -> None:
        if event == "step" and info["step"] == step:
            raise Interrupted

    return callback


def one_run(tmp_path: Path):  # noqa: ANN201 - a RunSpec
    return SuiteSpec(**fast_suite(seeds=[0])).expand()[0]


# ---- 1. one lock per results folder, and per run ------------------------------------------


def test_two_runs_on_one_folder_one_refused_nothing_doubled(tmp_path) -> None:
    from mlflow import MlflowClient

    # long enough that the second process starts while the first still trains
    path = write_suite(tmp_path / "s.yaml", train={**fast_suite()["train"], "steps": 16})
    results = tmp_path / "res"
    cmd = cli("run", str(path), "-o", str(results))
    first = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not list(results.glob("runs/*/metrics.jsonl")):  # the first one trains
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert re.fullmatch(
        rf"error: {re.escape(str(results))} is in use by another sdar-bench process "
        rf"\(pid {first.pid}, started [0-9: -]+\); wait for it \(--wait\) or use another "
        r"--results folder\n",
        second.stderr,
    ), second.stderr
    specs = load_suite(path).expand()
    for spec in specs:
        assert steps(run_dir(results, spec)) == list(range(1, 17))  # once each, none doubled
        assert json.loads((run_dir(results, spec) / "result.json").read_text())["status"] == (
            "finished"
        )
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    children = [
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("quickstart").experiment_id],
            filter_string="tags.`sdar_bench.role` = 'run'",
        )
    ]
    assert sorted(r.data.tags["run_id"] for r in children) == sorted(s.run_id for s in specs)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "reward/mean")
        assert sorted(m.step for m in history) == list(range(1, 17))

    later = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert later.returncode == 0, later.stderr
    assert "2 already finished" in later.stdout


def test_a_held_folder_is_refused_in_one_line_and_waited_for_with_wait(tmp_path) -> None:
    path = write_suite(tmp_path / "s.yaml")
    results = tmp_path / "res"
    (results / "runs").mkdir(parents=True)
    with (results / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242, started 2030-01-01 00:00:00")
        held.flush()
        for args in (["run", str(path), "-o", str(results)], ["report", str(results)]):
            out = CliRunner().invoke(app, args)
            assert out.exit_code == 2, out.output
            assert out.output == (
                f"error: {results} is in use by another sdar-bench process (pid 4242, started "
                "2030-01-01 00:00:00); wait for it (--wait) or use another --results folder\n"
            )
        assert not list((results / "runs").iterdir())  # nothing ran

        threading.Timer(1.0, fcntl.flock, (held, fcntl.LOCK_UN)).start()
        started = time.monotonic()
        out = CliRunner().invoke(app, ["report", str(results), "--wait"])
    assert out.exit_code == 0, out.output
    assert time.monotonic() - started >= 0.9  # it waited for the holder
    assert "no finished runs yet" in out.output


def test_a_run_is_never_executed_twice_at_once(tmp_path) -> None:
    spec = one_run(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')  # the other process's work
    with (folder / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242, started 2030-01-01 00:00:00")
        held.flush()
        with pytest.raises(RunInUse):
            execute_run(spec, folder)
        outcome = safe_execute(spec, folder)
    assert outcome == {
        "run_id": spec.run_id,
        "status": "crashed",
        "reason": f"run {folder.name} is being executed by another process "
        "(pid 4242, started 2030-01-01 00:00:00)",
    }
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched
    assert not (folder / "error.txt").exists()


# ---- 2. suite.json --------------------------------------------------------------------------


def test_the_results_folder_records_its_suite_and_refuses_another(tmp_path) -> None:
    suite = SuiteSpec(**fast_suite(train={**fast_suite()["train"], "steps": 1}))
    results = tmp_path / "res"
    run_suite(suite, results)
    record = json.loads((results / SUITE_FILE).read_text())
    assert set(record) == {"name", "fingerprint", "spec", "run_ids"}
    assert record["name"] == "quickstart"
    assert record["spec"] == suite.model_dump(mode="json")
    assert record["run_ids"] == [r.run_id for r in suite.expand()]
    assert re.fullmatch("[0-9a-f]{64}", record["fingerprint"])
    other = SuiteSpec(**fast_suite(seeds=[0, 1, 2], train={**fast_suite()["train"], "steps": 1}))
    assert suite_record(other)["fingerprint"] != record["fingerprint"]

    path = write_suite(tmp_path / "other.yaml", name="another")
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(results), "--no-mlflow"])
    assert out.exit_code == 2
    assert out.output == f"error: {results} holds suite quickstart; use another --results folder\n"
    assert json.loads((results / SUITE_FILE).read_text()) == record


# ---- 3. checkpoints load with weights_only=True; damaged ones are set aside -----------------


def test_checkpoints_load_weights_only_and_a_damaged_one_restarts_the_run(tmp_path, capsys) -> None:
    spec = one_run(tmp_path)
    folder = tmp_path / "run"
    with pytest.raises(Interrupted):
        execute_run(spec, folder, cut_after(3))
    checkpoint = folder / CHECKPOINT_FILE
    assert torch.load(checkpoint, weights_only=True)["step"] == 2  # step 3 ran past it

    path = write_suite(tmp_path / "s.yaml", seeds=[0])
    results = tmp_path / "res"
    target = run_dir(results, spec)
    target.parent.mkdir(parents=True)
    folder.rename(target)
    checkpoint = target / CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated by a full disk or a kill
    (target / (CHECKPOINT_FILE + ".tmp")).write_bytes(b"half")
    out = CliRunner().invoke(app, ["plan", str(path), "-o", str(results)])
    assert out.exit_code == 0, out.output
    assert [p.state for p in plan_suite(load_suite(path), results)] == [
        "to run (its checkpoint is damaged: restarts from step 0)"
    ]

    capsys.readouterr()
    result = execute_run(spec, target)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert re.fullmatch(
        rf"warning: {re.escape(str(checkpoint))} does not load \(\w+\); set aside as "
        rf"checkpoint\.pt\.damaged\. {spec.run_id} restarts from step 0 \(a run keeps only its "
        r"last checkpoint\)",
        warnings[0],
    ), warnings
    assert result["status"] == "finished"
    assert steps(target) == [1, 2, 3, 4]
    assert (target / "checkpoint.pt.damaged").stat().st_size == 1000
    assert not (target / (CHECKPOINT_FILE + ".tmp")).exists()
    assert "resumed_from_step" not in json.loads((target / "manifest.json").read_text())


# ---- 4. damaged result.json / manifest.json -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [("result.json", "{"), ("result.json", '{"status": "finished"}'), ("manifest.json", "[1")],
)
def test_a_damaged_result_or_manifest_means_the_run_is_redone(tmp_path, name, content) -> None:
    path = write_suite(tmp_path / "s.yaml", seeds=[0], train={**fast_suite()["train"], "steps": 2})
    results = tmp_path / "res"
    spec = SuiteSpec(**yaml.safe_load(path.read_text())).expand()[0]
    run_suite(load_suite(path), results)
    (run_dir(results, spec) / name).write_text(content)

    out = CliRunner().invoke(app, ["plan", str(path), "-o", str(results)])
    assert out.exit_code == 0, out.output
    assert [p.state for p in plan_suite(load_suite(path), results)] == [
        "to run (its result.json or manifest.json is damaged: redone)"
    ]

    out = CliRunner().invoke(app, ["run", str(path), "-o", str(results), "--no-mlflow"])
    assert out.exit_code == 0, out.output
    assert "1 runs, 0 already finished" in out.output
    assert f"warning: {run_dir(results, spec) / name} is damaged" in out.output
    assert (run_dir(results, spec) / (name + ".damaged")).read_text() == content
    assert json.loads((run_dir(results, spec) / "result.json").read_text())["status"] == "finished"
    assert steps(run_dir(results, spec)) == [1, 2]


# ---- 5. logs validated on resume -------------------------------------------------------------


def _tear_metrics(folder: Path) -> None:
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2]  # step 2 cut in the middle; steps 1 and 3 intact
    (folder / "metrics.jsonl").write_text("".join(lines))


def _drop_metrics_step_2(folder: Path) -> None:
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    (folder / "metrics.jsonl").write_text("".join(lines[:1] + lines[2:]))


def _drop_eval_step_2(folder: Path) -> None:
    rows = (folder / "eval.jsonl").read_text().splitlines(keepends=True)
    kept = [r for r in rows if json.loads(r)["step"] != 2]
    assert len(kept) < len(rows)
    (folder / "eval.jsonl").write_text("".join(kept))


def _drop_episodes_step_2(folder: Path) -> None:
    rows = (folder / "episodes.jsonl").read_text().splitlines(keepends=True)
    (folder / "episodes.jsonl").write_text("".join(r for r in rows if json.loads(r)["step"] != 2))


@pytest.mark.parametrize(
    "damage", [_tear_metrics, _drop_metrics_step_2, _drop_eval_step_2, _drop_episodes_step_2]
)
def test_logs_that_do_not_match_the_checkpoint_restart_the_run(tmp_path, capsys, damage) -> None:
    spec = one_run(tmp_path)
    folder = tmp_path / "run"
    with pytest.raises(Interrupted):
        execute_run(spec, folder, cut_after(4))  # checkpoint at 3, step 4 logged past it
    assert torch.load(folder / CHECKPOINT_FILE, weights_only=True)["step"] == 3
    damage(folder)
    capsys.readouterr()
    result = execute_run(spec, folder)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {folder}: "), warnings
    assert warnings[0].endswith(
        f"{spec.run_id} restarts from step 0 so that no step is skipped or repeated"
    )
    assert result["status"] == "finished"
    assert steps(folder) == [1, 2, 3, 4]
    # every evaluation plays the test and the validation panel
    assert steps(folder, "eval.jsonl") == [0, 0, 2, 2, 4, 4]
    assert steps(folder, "episodes.jsonl") == [0, 0, 2, 2, 4, 4]
    assert "resumed_from_step" not in json.loads((folder / "manifest.json").read_text())


def test_intact_logs_resume_from_the_checkpoint(tmp_path, capsys) -> None:
    spec = one_run(tmp_path)
    folder = tmp_path / "run"
    with pytest.raises(Interrupted):
        execute_run(spec, folder, cut_after(4))
    capsys.readouterr()
    execute_run(spec, folder)
    assert "warning" not in capsys.readouterr().err
    assert steps(folder) == [1, 2, 3, 4]
    assert json.loads((folder / "manifest.json").read_text())["resumed_from_step"] == 3


# ---- 6. exit codes ---------------------------------------------------------------------------


def test_a_crashed_run_exits_1_and_says_which(tmp_path, monkeypatch) -> None:
    import sdar_bench.run as run_module

    real = run_module.train_step

    def crash_seed_1(state, step):  # noqa: ANN001, ANN202
        if state.spec.seed == 1 and step == 1:
            raise RuntimeError("boom")
        return real(state, step)

    monkeypatch.setattr(run_module, "train_step", crash_seed_1)
    path = write_suite(tmp_path / "s.yaml")
    results = tmp_path / "res"
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(results), "--no-mlflow"])
    assert out.exit_code == 1, out.output
    crashed = SuiteSpec(**fast_suite()).expand()[1].run_id
    lines = out.output.splitlines()
    assert f"crashed: {crashed}: RuntimeError: boom" in lines
    assert lines[-1] == f"1 of 2 runs did not finish: {crashed} (crashed: RuntimeError: boom)"
    assert (results / "table.md").exists()  # the finished run still has its table


def test_a_full_disk_ends_the_run_as_crashed_and_removes_the_partial_checkpoint(
    tmp_path, monkeypatch
) -> None:
    def full_disk(obj, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    path = write_suite(tmp_path / "s.yaml", seeds=[0])
    results = tmp_path / "res"
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(results), "--no-mlflow"])
    assert out.exit_code == 1, out.output
    spec = SuiteSpec(**fast_suite(seeds=[0])).expand()[0]
    tmp = run_dir(results, spec) / (CHECKPOINT_FILE + ".tmp")
    assert (
        f"crashed: {spec.run_id}: no space left on device while writing {tmp}; free some space "
        "and rerun"
    ) in out.output.splitlines()
    assert not tmp.exists()
    assert not (run_dir(results, spec) / CHECKPOINT_FILE).exists()


def test_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch) -> None:
    import sdar_bench.suite as suite_module

    def interrupt(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(suite_module, "execute_run", interrupt)
    path = write_suite(tmp_path / "s.yaml")
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "res"), "--no-mlflow"])
    assert out.exit_code == 130
    assert out.output.splitlines()[-1] == "interrupted: run the same command to resume"
    with (tmp_path / "res" / ".lock").open("a+") as lock:  # the lock went with the command
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- 7. report on a read-only folder; a corrupt mlflow.db -----------------------------------


def test_report_on_a_read_only_folder_prints_the_tables_and_says_so(tmp_path, monkeypatch) -> None:
    import sdar_bench.report.table as table

    results = tmp_path / "res"
    run_suite(SuiteSpec(**fast_suite(train={**fast_suite()["train"], "steps": 1})), results)

    def read_only(results_dir):  # noqa: ANN001, ANN202 - what a read-only mount raises
        raise OSError(errno.EROFS, "Read-only file system", str(results_dir / "table.md"))

    monkeypatch.setattr(table, "write_report", read_only)
    out = CliRunner().invoke(app, ["report", str(results)])
    assert out.exit_code == 0, out.output
    assert "test panel" in out.output  # the tables are printed
    assert out.output.splitlines()[-1] == (
        f"could not write the tables and plots into {results} (Read-only file system); the "
        "tables above are complete"
    )


def test_a_corrupt_mlflow_db_refuses_in_one_line(tmp_path) -> None:
    path = write_suite(tmp_path / "s.yaml")
    results = tmp_path / "res"
    results.mkdir()
    (results / "mlflow.db").write_bytes(b"this is not a database" * 100)
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(results)])
    assert out.exit_code == 2
    assert len(out.output.splitlines()) == 1, out.output
    assert out.output.startswith(
        f"error: MLflow store sqlite:///{(results / 'mlflow.db').resolve()} cannot be opened ("
    )
    assert out.output.endswith(
        "; move mlflow.db aside, pass another --tracking-uri, or --no-mlflow\n"
    )
    assert not (results / "runs").exists()


# ---- 8. paper_table: the real ALFWorld, and every missing dataset ----------------------------


def test_paper_table_plays_real_alfworld_and_plan_lists_every_missing_dataset(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    suite = load_suite(ROOT / "suites" / "paper_table.yaml")
    assert {s.env_params["engine"] for s in suite.expand() if s.env == "alfworld"} == {"real"}
    out = CliRunner().invoke(app, ["plan", str(ROOT / "suites" / "paper_table.yaml")])
    assert out.exit_code == 0, out.output
    missing = [line for line in out.output.splitlines() if line.startswith("missing: ")]
    data = [line for line in missing if "models:" not in line]
    assert len(data) == 5, missing
    assert data[0].startswith("missing: alfworld engine real: $ALFWORLD_DATA is not set")
    assert data[1].startswith("missing: WebShop data_dir 'data/webshop' does not exist")
    assert data[2] == "missing: qa_path: no such file 'data/searchr1/test.jsonl'"
    assert data[3].startswith(
        "missing: searchqa: env_params.searchqa.train_qa_path 'data/searchr1/train.jsonl' does "
        "not exist"
    )
    assert data[4].startswith(
        "missing: searchqa: the retrieval server http://127.0.0.1:8000/retrieve does not answer"
    )


# ---- 9. plain log lines without a terminal --------------------------------------------------


def test_without_a_terminal_every_step_and_evaluation_is_one_plain_line(tmp_path) -> None:
    path = write_suite(tmp_path / "s.yaml", seeds=[0])
    out = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "res"), "--no-mlflow"])
    assert out.exit_code == 0, out.output
    run_id = SuiteSpec(**fast_suite(seeds=[0])).expand()[0].run_id
    step_lines = [line for line in out.output.splitlines() if line.startswith(f"{run_id} step ")]
    assert len(step_lines) == 4
    for step, line in enumerate(step_lines, start=1):
        assert re.fullmatch(
            rf"{re.escape(run_id)} step {step}/4 reward -?\d+\.\d{{3}} train success "
            r"\d+\.\d% \d+\.\d s",
            line,
        ), line
    evals = [line for line in out.output.splitlines() if line.startswith(f"{run_id} eval ")]
    assert [line.split()[3] for line in evals] == ["0", "0", "2", "2", "4", "4"]
    assert [line.split()[5] for line in evals] == ["test", "valid"] * 3
    assert all(re.fullmatch(r".* GRPO (test|valid) panel success \d+\.\d%", line) for line in evals)


# ---- 10. ui --port ----------------------------------------------------------------------------


class Exec(Exception):
    pass


def test_ui_picks_a_free_port_by_default_and_takes_one_given(tmp_path, monkeypatch) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"")
    seen: list[list[str]] = []

    def fake_execv(path, argv):  # noqa: ANN001, ANN202
        seen.append(argv)
        raise Exec

    monkeypatch.setattr(os, "execv", fake_execv)
    out = CliRunner().invoke(app, ["ui", str(tmp_path)])
    assert isinstance(out.exception, Exec)
    port = int(re.fullmatch(r"MLflow UI on http://127\.0\.0\.1:(\d+) \(Ctrl-C stops it\)\n",
                            out.output).group(1))  # fmt: skip
    assert seen[0][seen[0].index("--port") + 1] == str(port)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # it was free

    out = CliRunner().invoke(app, ["ui", str(tmp_path), "--port", "5123"])
    assert out.output == "MLflow UI on http://127.0.0.1:5123 (Ctrl-C stops it)\n"
    assert seen[1][seen[1].index("--port") + 1] == "5123"
