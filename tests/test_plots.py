"""Validation and stability plots from the hand-written results directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sdar_bench.report.plots import (
    GAP_BY_TURN,
    STABILITY_METRICS,
    common_seeds,
    load_training_curves,
    plot_stability,
    plot_validation,
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
    # The fixture's runs predate |Δ|, the percentiles and the terms' gradient norms: no run
    # logged them, so no panel.
    later = {"gap/abs_mean", "gap/q10", "gap/q90", "gate/q10", "gate/q90"}
    later |= {"grad/pg", "grad/aux", "grad/kl", "grad/entropy"}
    assert later <= {name for name, _ in STABILITY_METRICS}
    all_panels = [name for name, _ in STABILITY_METRICS if name not in later] + [GAP_BY_TURN]
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


def _evals(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [
            {"model": "m", "env": "alfworld", "label": lab, "seed": s, "step": st, "value": v}
            for lab, s, st, v in rows
        ]
    )


def test_a_trained_line_starts_on_vanilla_when_seeds_differ() -> None:
    """The issue's case: Vanilla with seeds 0 and 1 (47.9, 62.5), GRPO finished for seed 0
    only; GRPO's step-0 point is Vanilla's seed-0 value (same weights, same evaluation noise).
    Averaged over their own seeds the lines start 7.3 points apart; over the common seed, on
    one another."""
    evals = _evals(
        [("Vanilla", 0, 0, 47.9), ("Vanilla", 1, 0, 62.5)]
        + [("GRPO", 0, 0, 47.9), ("GRPO", 0, 4, 52.1), ("GRPO", 0, 8, 56.2)]
    )
    kept, note = common_seeds(evals)
    assert note == "seeds 0 (those every line has)"
    assert sorted(set(kept["seed"])) == [0]
    fig = plot_validation(evals, "alfworld", "m", {"Vanilla": "C0", "GRPO": "C1"})
    ax = fig.axes[0]
    level = next(line for line in ax.lines if line.get_label().startswith("Vanilla"))
    curve = next(line for line in ax.lines if line.get_label().startswith("GRPO"))
    assert level.get_ydata()[0] == curve.get_ydata()[0] == 47.9
    assert [line.get_label() for line in ax.lines] == [
        "Vanilla (no training, n=1)",
        "GRPO (n=1)",
    ]
    assert "seeds 0 (those every line has)" in ax.get_title()


def test_same_seeds_everywhere_keep_every_row_and_disjoint_seeds_say_so() -> None:
    same = _evals([("Vanilla", 0, 0, 50.0), ("Vanilla", 1, 0, 60.0), ("GRPO", 0, 4, 1.0)])
    same = pd.concat([same, _evals([("GRPO", 1, 4, 2.0)])])
    kept, note = common_seeds(same)
    assert (len(kept), note) == (4, "seeds 0, 1")
    apart = _evals([("Vanilla", 0, 0, 50.0), ("GRPO", 1, 4, 2.0)])
    kept, note = common_seeds(apart)
    assert (len(kept), note) == (2, "each line's own seeds (no seed common to all)")


def test_gate_panels_are_drawn_on_the_unit_interval() -> None:
    """A constant gate of 0.500–0.503 must read as flat, not as a zoomed jagged line."""
    steps = pd.DataFrame.from_records(
        [
            {
                "model": "m",
                "env": "alfworld",
                "label": "SDAR",
                "seed": 0,
                "step": s,
                "gate/mean": 0.5 + 0.001 * (s % 3),
                "gate/active_ratio": 0.5,
                "gate/q90": 0.5 + 0.002 * (s % 2),
                "entropy/mean": 1.0,
            }
            for s in range(1, 9)
        ]  # fmt: skip
    )
    fig = plot_stability(steps, pd.DataFrame(), "alfworld", "m", {"SDAR": "C0"})
    limits = {ax.get_title(): ax.get_ylim() for ax in fig.axes}
    titles = dict(STABILITY_METRICS)
    assert limits[titles["gate/mean"]] == limits[titles["gate/active_ratio"]] == (-0.02, 1.02)
    assert limits[titles["gate/q90"]] == (-0.02, 1.02)
    assert limits[titles["entropy/mean"]] != (-0.02, 1.02)
