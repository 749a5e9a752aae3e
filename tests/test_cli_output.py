"""The command line answers without loading models, and its output reads at 80 columns.

Import cost is asserted on ``sys.modules`` in a fresh interpreter, never on wall time (the
timing lives in ``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdar_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]  # type: ignore[union-attr]
FIXTURE = Path(__file__).parent / "fixtures" / "report_results"

PROBE = """
import sys
from sdar_bench.cli import app
try:
    app(sys.argv[1:], prog_name="sdar-bench")
except SystemExit:
    pass
print(sorted(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
"""


def cli(*args: str, columns: int = 80, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter at a fixed terminal width; stderr ends with the heavy
    libraries it imported."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": str(columns),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def heavy(result: subprocess.CompletedProcess[str]) -> list[str]:
    return json.loads(result.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_every_command_is_probed() -> None:
    assert sorted(COMMANDS) == sorted(
        [
            "run",
            "run-rank",
            "plan",
            "warmstart",
            "report",
            "ui",
            "methods",
            "envs",
            "tune",
            "compare",
            "power",
        ]
    )


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_transformers(command: str | None) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: sdar-bench" in result.stdout
    assert heavy(result) == []


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        (("plan", "suites/quickstart.yaml"), ["torch"]),  # the method classes; no model
        (("methods",), ["torch"]),
        (("envs",), []),
    ],
)
def test_listing_and_planning_load_no_model(args: tuple[str, ...], loaded: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert heavy(result) == loaded


def test_help_texts_are_wrapped_by_rich_not_by_hand() -> None:
    """A docstring paragraph holds no line break of its own: rich wraps it to the terminal
    (a hand-wrapped one breaks mid-sentence when rich re-wraps it at another width)."""
    for command in app.registered_commands:
        doc = command.callback.__doc__ or ""  # type: ignore[union-attr]
        paragraphs = [p.strip() for p in doc.strip().split("\n\n")]
        assert [p for p in paragraphs if "\n" in p] == [], command.callback.__name__  # type: ignore[union-attr]
    result = cli("run", "--help")
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    # the first paragraph, re-wrapped by rich at 80 columns: whole words, in order
    text = " ".join(line.strip() for line in lines[3:5])
    assert text == "Run every unfinished run of a suite, then print and write its comparison table."


def test_plan_of_243_runs_fits_80_columns_with_whole_ids() -> None:
    result = cli("plan", "suites/paper_table.yaml")
    lines = result.stdout.splitlines()
    # what is missing is one line per problem, however long (grep-able, like the errors)
    assert max(len(line) for line in lines if not line.startswith("missing: ")) <= 80
    listed = json.loads(cli("plan", "suites/paper_table.yaml", "--format", "json").stdout)
    assert len(listed) == 243
    # every short id (the run id without model and env) is whole on one table line, once per run
    rows = [line for line in lines if line.startswith("│ ")]
    assert len(rows) == 243
    shown = sorted(line.split("│")[1].strip() for line in rows)
    assert shown == sorted(r["run_id"].split("__", 2)[2] for r in listed)
    assert len(lines) < 243 + 30 * 9  # a line per run plus a few per (model, env) block


def test_plan_json_and_csv_hold_one_row_per_run() -> None:
    rows = json.loads(cli("plan", "suites/quickstart.yaml", "--format", "json").stdout)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("vanilla", 0), ("vanilla", 1), ("skill_prompt", 0), ("skill_prompt", 1),
        ("grpo", 0), ("grpo", 1), ("sdar", 0), ("sdar", 1),
    ]  # fmt: skip
    assert rows[0]["run_id"].startswith("tiny-qwen-1m__alfworld__vanilla__s0__")
    assert {r["device"] for r in rows} == {"CPU"}
    assert {r["weights"] for r in rows} == {"present"}
    table = list(
        csv.DictReader(io.StringIO(cli("plan", "suites/quickstart.yaml", "--format", "csv").stdout))
    )
    assert [r["run_id"] for r in table] == [r["run_id"] for r in rows]


def test_methods_and_envs_list_everything_whole_at_80_columns() -> None:
    text = cli("methods").stdout
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "…" not in text
    flat = " ".join(text.split())  # undo rich's wrapping at word boundaries
    rows = json.loads(cli("methods", "--format", "json").stdout)
    assert [r["name"] for r in rows] == [
        "gigpo", "grpo", "grpo_opsd", "opsd", "rlsd", "sdar", "skill_grpo", "skill_prompt", "skill_sd",
        "vanilla",
    ]  # fmt: skip
    for row in rows:
        assert f"parameters: {row['parameters']}" in flat or row["parameters"] == "–"
        assert row["description"] in flat
    sdar = next(r for r in rows if r["name"] == "sdar")
    assert (sdar["row"], sdar["trains"], sdar["teacher"]) == ("SDAR", True, True)
    envs_text = cli("envs").stdout
    assert max(len(line.rstrip()) for line in envs_text.splitlines()) <= 80
    envs = list(csv.DictReader(io.StringIO(cli("envs", "--format", "csv").stdout)))
    assert [e["name"] for e in envs] == ["alfworld", "searchqa", "webshop"]
    assert envs[0]["task_types"] == "pick, look, clean, heat, cool, pick2"
    for env in envs:
        assert env["defaults"] in " ".join(envs_text.split())


@pytest.fixture
def results(tmp_path: Path) -> Path:
    target = tmp_path / "report_results"
    shutil.copytree(FIXTURE, target)
    return target


def test_report_tables_fit_80_columns_with_labels_and_cells_whole(results: Path) -> None:
    text = cli("report", str(results)).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text
    cells = [c.strip() for line in lines if line.startswith("│ ") for c in line.split("│")[1:-1]]
    assert {"Vanilla", "GRPO", "SDAR", "SDAR [beta=1.0]"} <= set(cells)
    assert "81.0 [68.3, 93.7]" in cells  # a whole cell: mean and interval on one line


def test_report_json_prints_the_table_rows(results: Path) -> None:
    from sdar_bench.report.table import build_report, to_records

    rows = json.loads(cli("report", str(results), "--format", "json").stdout)
    frame = to_records(build_report(results))
    assert len(rows) == len(frame)
    sdar = next(
        r
        for r in rows
        if r["label"] == "SDAR" and r["which"] == "final" and r["model"].startswith("Qwen")
    )
    assert (sdar["n"], sdar["success/all/mean"]) == (2, 81.0)
    assert (sdar["success/all/ci_low"], sdar["success/all/ci_high"]) == pytest.approx(
        (68.3, 93.7), abs=0.05
    )
    assert sdar["delta_vs_grpo/mean"] == pytest.approx(10.0)
    listed = list(
        csv.DictReader(io.StringIO(cli("report", str(results), "--format", "csv").stdout))
    )
    assert [r["label"] for r in listed] == [r["label"] for r in rows]


@pytest.mark.parametrize("command", ["plan", "methods", "envs", "report", "compare"])
def test_an_unknown_format_is_one_line_exit_2(command: str, results: Path) -> None:
    target = {
        "plan": ["suites/quickstart.yaml"],
        "report": [str(results)],
        "compare": [str(results)],
    }
    result = cli(command, *target.get(command, []), "--format", "xml")
    assert result.returncode == 0  # the probe swallows SystemExit: read the message instead
    assert "error: --format: unknown format 'xml' (choose table, json, csv)" in result.stderr


def test_python_dash_m_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "sdar_bench", "--help"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and "Usage: sdar-bench" in result.stdout


def test_compare_table_fits_80_columns_with_labels_and_intervals_whole(results: Path) -> None:
    text = cli("compare", str(results)).stdout
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [c.strip() for line in lines if line.startswith("│ ") for c in line.split("│")[1:-1]]
    assert {"SDAR [beta=1.0]", "+9.0 [-29.1, +47.1]", "+10.0 [+10.0, +10.0]"} <= set(cells)
