"""Validation and stability plots from the hand-written results directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sdar_bench.report.plots import (
    GAP_BY_TURN,
    STABILITY_METRICS,
    load_training_curves,
    stability_panels,
    write_plots,
)

FIXTURE = Path(__file__).parent / "fixtures" / "report_results"
QWEN = "Qwen-Qwen2.5-3B-Instruct"  # the model name made safe for a file name


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The fixture copied once and drawn once (drawing takes seconds on a busy CPU)."""
    target = tmp_path_factory.mktemp("plots") / "report_results"
    shutil.copytree(FIXTURE, target)
    return target, write_plots(target)


def test_every_model_and_env_gets_validation_and_stability_png_and_pdf(
    results: tuple[Path, list[Path]],
) -> None:
    results_dir, written = results
    expected = {
        f"{kind}_{pair}.{fmt}"
        for kind in ("validation", "stability")
        for pair in (f"alfworld_{QWEN}", f"webshop_{QWEN}", "alfworld_tiny-qwen-1m")
        for fmt in ("png", "pdf")
    }
    assert {p.name for p in written} == expected
    assert {p.name for p in (results_dir / "plots").iterdir()} == expected
    for path in written:
        data = path.read_bytes()
        assert len(data) > 5_000, path.name
        magic = b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF-"
        assert data.startswith(magic), path.name


def test_stability_panels_skip_metrics_no_run_logged() -> None:
    steps, turns = load_training_curves(FIXTURE)
    alfworld = (steps["env"] == "alfworld") & (steps["model"] == "Qwen/Qwen2.5-3B-Instruct")
    all_panels = [name for name, _ in STABILITY_METRICS] + [GAP_BY_TURN]
    assert stability_panels(steps[alfworld], turns[turns["env"] == "alfworld"]) == all_panels
    # The WebShop SDAR runs of the fixture log no gap/by_turn: seven panels, no per-turn one.
    webshop = steps["env"] == "webshop"
    assert stability_panels(steps[webshop], turns[turns["env"] == "webshop"]) == all_panels[:-1]
    # GRPO logs no gate: a GRPO-only figure has the four shared diagnostics.
    grpo = steps[webshop & (steps["label"] == "GRPO")]
    assert stability_panels(grpo, turns.iloc[0:0]) == all_panels[:4]


def test_gap_by_turn_is_read_per_turn_index() -> None:
    _, turns = load_training_curves(FIXTURE)
    run = turns[(turns["model"] == "tiny-qwen-1m") & (turns["seed"] == 1)]
    # The fixture logs, at step i (0-based), turn 0: −0.21, turn 1: −0.3, turn 2: −0.45 + 0.01·i;
    # averaged over its 8 steps turn 2 is −0.45 + 0.01·3.5 = −0.415.
    means = run.groupby("turn")["gap"].mean()
    assert list(means.index) == [0, 1, 2]
    assert means.to_list() == pytest.approx([-0.21, -0.3, -0.415])


def test_no_finished_runs_no_plots(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    assert write_plots(tmp_path) == []
    assert not (tmp_path / "plots").exists()
