"""The README's quickstart, end to end through the CLI (slow: several minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdar_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_and_a_second_run_trains_nothing(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "results"
    first = runner.invoke(app, ["run", str(ROOT / "suites" / "quickstart.yaml"), "-o", str(out)])
    assert first.exit_code == 0, first.output
    results = sorted(out.glob("runs/*/result.json"))
    assert len(results) == 8  # (vanilla, skill_prompt, grpo, sdar) × 2 seeds
    for path in results:
        manifest = json.loads((path.parent / "manifest.json").read_text())
        assert manifest["warmstart"]["cached"] is True  # the shipped checkpoint, no SFT
    table = (out / "table.md").read_text()
    for label in ("Vanilla", "Skill-Prompt*", "GRPO", "SDAR"):
        assert f"| {label} |" in table

    second = runner.invoke(app, ["run", str(ROOT / "suites" / "quickstart.yaml"), "-o", str(out)])
    assert second.exit_code == 0
    assert "8 already finished" in second.output
    assert (out / "table.md").read_text() == table
