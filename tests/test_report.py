"""The Table-1 report of a hand-written results directory, and the collapse detector.

The fixture ``tests/fixtures/report_results`` is a folder written before per-episode records
and the validation panel existed (0.1.0), so runs pair by seed only and its best step was chosen
on the test panel. It holds finished runs of two models:

* Qwen/Qwen2.5-3B-Instruct on ALFWorld (metrics pick, look, all): Vanilla (seed 0), GRPO and
  SDAR (seeds 0, 1), SDAR with beta=1.0 (seed 0); on WebShop: GRPO and SDAR (seeds 0, 1).
  GRPO seed 1's metrics.jsonl collapses (reward std and entropy fall, grad norm spikes).
  SDAR seed 2 failed at step 6 (result.json status "failed"): it is in no table.
* tiny-qwen-1m on ALFWorld: SDAR only (seeds 0, 1), so it has no Δ and no paper numbers.

Every number below is worked out by hand. A cell of two seeds a, b is the mean ± the t interval
t(0.975, 1)·s/√2 = 12.7062·|a − b|/2 = 6.3531·|a − b|, clipped to [0, 100]. Δ vs GRPO is paired
by seed: the mean of the per-seed differences ± 12.7062·s_d/√2.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest

from sdar_bench.report.collapse import CollapseVerdict, detect_collapse
from sdar_bench.report.columns import row_order_key
from sdar_bench.report.compare import welch
from sdar_bench.report.table import write_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_results"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A writable copy of the fixture results directory (write_report writes into it)."""
    target = tmp_path / "report_results"
    shutil.copytree(FIXTURE, target)
    return target


# Final step (each run's last evaluation), per seed (pick, look, all):
#   Vanilla s0 (40, 10, 20), paper (44.4, 11.1, 21.9)
#   GRPO    s0 (80, 50, 70), s1 (81, 50, 72) → pick 80.5 ± 6.4 = [74.1, 86.9], look 50 ± 0,
#           all 71.0 ± 12.7 = [58.3, 83.7]; paper (91.2, 62.5, 75.0)
#   SDAR    s0 (90, 50, 80), s1 (91, 50, 82) → [84.1, 96.9], [50.0, 50.0], 81.0 [68.3, 93.7];
#           paper (97.1, 62.5, 84.4)
#   SDAR [beta=1.0] s0 (85, 40, 75): one seed, no interval; a variant gets no paper number.
# Δ vs GRPO on All, paired by seed: Vanilla s0 20 − 70 = −50.0 (one pair: no interval); SDAR
#   80 − 70 = 10 and 82 − 72 = 10: Δ +10.0 with s_d = 0, so [+10.0, +10.0] (bold: excludes 0;
#   Welch, unpaired, would say ± 6.1); beta=1.0: 75 − 70 = +5.0.
# WebShop (score, acc): GRPO s0 (70, 60), s1 (72, 62) → 71.0 [58.3, 83.7], 61.0 [48.3, 73.7];
#   SDAR s0 = s1 = (80, 66) → zero-width; Δ acc = 6 and 4: +5.0 ± 12.7062·1.4142/1.4142 =
#   [−7.7, +17.7] (not bold). Paper: GRPO (79.8, 63.3), SDAR (85.0, 68.0).
# tiny-qwen-1m SDAR s0 (20, 0, 10), s1 (30, 0, 14) → 25.0 ± 63.5 clipped to [0.0, 88.5],
#   [0.0, 0.0], 12.0 ± 25.4 → [0.0, 37.4]; no GRPO row (Δ "–"), no paper model.
HEAD = (
    "| method | n | ALFWorld Pick | ALFWorld Look | ALFWorld All | ALFWorld Δ vs GRPO "
    "| WebShop Score | WebShop Acc | WebShop Δ vs GRPO |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)
EXPECTED_FINAL = (
    "## Final step\n"
    "\n"
    "### Qwen/Qwen2.5-3B-Instruct\n"
    "\n"
    + HEAD
    + "| Vanilla | 1 | 40.0 (paper 44.4) | 10.0 (paper 11.1) | 20.0 (paper 21.9) | -50.0 "
    "| – | – | – |\n"
    "| GRPO | 2 | 80.5 [74.1, 86.9] (paper 91.2) | 50.0 [50.0, 50.0] (paper 62.5) "
    "| 71.0 [58.3, 83.7] (paper 75.0) | ref | 71.0 [58.3, 83.7] (paper 79.8) "
    "| 61.0 [48.3, 73.7] (paper 63.3) | ref |\n"
    "| SDAR | 2 | 90.5 [84.1, 96.9] (paper 97.1) | 50.0 [50.0, 50.0] (paper 62.5) "
    "| 81.0 [68.3, 93.7] (paper 84.4) | **+10.0 [+10.0, +10.0]** "
    "| 80.0 [80.0, 80.0] (paper 85.0) | 66.0 [66.0, 66.0] (paper 68.0) | +5.0 [-7.7, +17.7] |\n"
    "| SDAR [beta=1.0] | 1 | 85.0 | 40.0 | 75.0 | +5.0 | – | – | – |\n"
    "\n"
    "### tiny-qwen-1m\n"
    "\n"
    + HEAD
    + "| SDAR | 2 | 25.0 [0.0, 88.5] | 0.0 [0.0, 0.0] | 12.0 [0.0, 37.4] | – | – | – | – |\n"
)

# Best step (highest All of each run, chosen on the test panel by these old runs, and the table
# says so): GRPO s0 step 4 (78, 55, 74), s1 step 8 (81, 50, 72) → 79.5 ± 19.1 = [60.4, 98.6],
#   52.5 ± 31.8 = [20.7, 84.3], 73.0 ± 12.7 = [60.3, 85.7];
#   SDAR s0 step 8 (90, 50, 80), s1 step 4 (91, 55, 84) → [84.1, 96.9], [20.7, 84.3],
#   82.0 ± 25.4 = [56.6, 107.4] clipped to [56.6, 100.0]; Δ: 80 − 74 = 6, 84 − 72 = 12 →
#   +9.0 ± 12.7062·4.2426/1.4142 = ± 38.1 → [−29.1, +47.1]. Vanilla s0: 20 − 74 = −54.0;
#   beta=1.0 s0 step 4 (86, 45, 76): 76 − 74 = +2.0.
EXPECTED_BEST_QWEN_ROWS = (
    "| Vanilla | 1 | 40.0 (paper 44.4) | 10.0 (paper 11.1) | 20.0 (paper 21.9) | -54.0 "
    "| – | – | – |\n"
    "| GRPO | 2 | 79.5 [60.4, 98.6] (paper 91.2) | 52.5 [20.7, 84.3] (paper 62.5) "
    "| 73.0 [60.3, 85.7] (paper 75.0) | ref | 71.0 [58.3, 83.7] (paper 79.8) "
    "| 61.0 [48.3, 73.7] (paper 63.3) | ref |\n"
    "| SDAR | 2 | 90.5 [84.1, 96.9] (paper 97.1) | 52.5 [20.7, 84.3] (paper 62.5) "
    "| 82.0 [56.6, 100.0] (paper 84.4) | +9.0 [-29.1, +47.1] "
    "| 80.0 [80.0, 80.0] (paper 85.0) | 66.0 [66.0, 66.0] (paper 68.0) | +5.0 [-7.7, +17.7] |\n"
    "| SDAR [beta=1.0] | 1 | 86.0 | 45.0 | 76.0 | +2.0 | – | – | – |\n"
)
BEST_TITLE = (
    "## Best step (chosen on the test panel itself by runs written before the validation "
    "panel existed: biased upwards)"
)


def test_markdown_table_equals_the_hand_computed_one(results: Path) -> None:
    report = write_report(results)
    md = (results / "table.md").read_text()
    assert EXPECTED_FINAL in md
    best = md[md.index(BEST_TITLE) :]
    assert EXPECTED_BEST_QWEN_ROWS in best
    assert md.index("## Final step") < md.index("## Best step")  # labelled, never mixed
    assert report.columns == {
        "alfworld": ["success/pick", "success/look", "success/all"],
        "webshop": ["score", "accuracy"],
    }
    # Teacher quality is still reported: pretrained for Qwen, the warm-start noise for tiny.
    assert "Teacher quality — pretrained" in md
    assert "Teacher quality — warm start: 5% random actions with skills, 30% without" in md


def test_paper_number_only_for_a_matching_hf_model_and_default_method(results: Path) -> None:
    write_report(results)
    md = (results / "table.md").read_text()
    grpo = next(line for line in md.splitlines() if line.startswith("| GRPO |"))
    all_cell = grpo.split(" | ")[4]  # method, n, Pick, Look, All
    assert all_cell == "71.0 [58.3, 83.7] (paper 75.0)"  # paper: Qwen2.5-3B, GRPO, alfworld_all
    variant = next(line for line in md.splitlines() if line.startswith("| SDAR [beta=1.0] |"))
    assert "paper" not in variant
    tiny_block = md[md.index("### tiny-qwen-1m") : md.index("## Best step")]
    assert "paper" not in tiny_block


def test_bold_marks_only_a_difference_whose_interval_excludes_zero(results: Path) -> None:
    write_report(results)
    md = (results / "table.md").read_text()
    final = md[md.index("## Final step") : md.index("## Best step")]
    assert final.count("**") == 2  # one bold cell: SDAR's ALFWorld Δ
    assert "**+10.0 [+10.0, +10.0]**" in final
    tex = (results / "table.tex").read_text()
    first = tex[: tex.index(r"\end{table}")]
    assert first.count(r"\textbf") == 1 and r"\textbf{+10.0 [+10.0, +10.0]}" in first
    assert r"\multicolumn{4}{c}{ALFWorld} & \multicolumn{3}{c}{WebShop}" in first
    assert tex.count(r"\begin{tabular}") == 2  # final and best


def test_csv_holds_means_intervals_paper_and_paired_delta(results: Path) -> None:
    write_report(results)
    with (results / "table.csv").open() as f:
        rows = {(r["which"], r["model"], r["env"], r["label"]): r for r in csv.DictReader(f)}
    sdar = rows[("final", "Qwen/Qwen2.5-3B-Instruct", "alfworld", "SDAR")]
    assert float(sdar["success/all/mean"]) == 81.0
    assert float(sdar["success/all/ci_low"]) == pytest.approx(81.0 - 12.706205, abs=1e-5)
    assert float(sdar["success/all/ci_high"]) == pytest.approx(81.0 + 12.706205, abs=1e-5)
    assert float(sdar["success/all/paper"]) == 84.4
    assert float(sdar["delta_vs_grpo/mean"]) == 10.0
    assert float(sdar["delta_vs_grpo/ci_low"]) == float(sdar["delta_vs_grpo/ci_high"]) == 10.0
    assert float(sdar["delta_vs_grpo/p_value"]) == 0.5  # both of 2 seeds +10: 2 of 4 patterns
    assert sdar["delta_vs_grpo/pairing"] == "seed"
    best = rows[("best", "Qwen/Qwen2.5-3B-Instruct", "alfworld", "SDAR")]
    assert float(best["success/all/ci_high"]) == 100.0  # clipped: never past the range
    assert len(rows) == 14  # (5 ALFWorld + 2 WebShop rows) × (final, best)


def test_report_tables_keep_the_per_env_shape_the_cli_prints(results: Path) -> None:
    report = write_report(results)
    final = report.tables[("alfworld", "final")]
    assert list(final["label"]) == ["Vanilla", "GRPO", "SDAR", "SDAR [beta=1.0]", "SDAR"]
    assert list(final["model"]) == ["Qwen/Qwen2.5-3B-Instruct"] * 4 + ["tiny-qwen-1m"]
    assert list(final["n"]) == [1, 2, 2, 1, 2]
    cell = final.set_index(["model", "label"]).loc[
        ("Qwen/Qwen2.5-3B-Instruct", "SDAR"), "success/all"
    ]
    assert (cell.mean, round(cell.high - cell.mean, 4)) == (81.0, 12.7062)


def test_an_empty_results_dir_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    report = write_report(tmp_path)
    assert not report.tables
    assert not (tmp_path / "table.md").exists()


def test_row_order_follows_the_paper_and_sorts_variants_by_number() -> None:
    labels = ["SDAR [beta=10.0]", "SDAR", "GRPO", "Skill-Prompt*", "SDAR [beta=5.0]", "Mine"]
    assert sorted(labels, key=row_order_key) == [
        "Skill-Prompt*", "GRPO", "SDAR", "SDAR [beta=5.0]", "SDAR [beta=10.0]", "Mine",
    ]  # fmt: skip


def test_welch_interval_of_a_difference() -> None:
    import numpy as np

    # a = (1, 2, 3): mean 2, s² = 1, s²/n = 1/3; b = (0, 0): mean 0, s² = 0 → se = √(1/3),
    # dof = (1/3)² / ((1/3)²/2) = 2, half = 4.302653·0.577350 = 2.484138.
    diff, half = welch(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0]))
    assert diff == 2.0
    assert half == pytest.approx(2.484138, abs=1e-6)
    assert math.isnan(welch(np.array([1.0]), np.array([0.0, 1.0]))[1])  # one seed: no CI


# ---- collapse --------------------------------------------------------------------------------
def _rows(std: list[float], entropy: list[float], grad: list[float]) -> list[dict[str, float]]:
    return [
        {"step": i + 1, "reward/std_in_group": s, "entropy/mean": e, "grad/norm": g}
        for i, (s, e, g) in enumerate(zip(std, entropy, grad, strict=True))
    ]


# Nine steps: windows of ceil(9/3) = 3 steps.
COLLAPSING = _rows(
    std=[1.2, 1.1, 1.0, 0.8, 0.6, 0.3, 0.1, 0.0, 0.0],  # early mean 1.1, late 0.0333 (≤ 0.55)
    entropy=[0.9, 0.9, 0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 0.03],  # 0.9 → 0.06 (≤ 0.45)
    grad=[0.3, 0.4, 0.2, 0.5, 1.0, 2.0, 3.0, 4.5, 1.0],  # late max 4.5 / early median 0.3 = 15
)
HEALTHY = _rows(
    std=[1.2, 1.1, 1.3, 1.2, 1.1, 1.2, 1.0, 1.1, 1.2],
    entropy=[0.9, 0.89, 0.88, 0.86, 0.85, 0.84, 0.83, 0.82, 0.81],
    grad=[0.3, 0.34, 0.31, 0.36, 0.33, 0.35, 0.32, 0.34, 0.33],
)


def test_collapse_is_flagged_on_a_collapsing_series() -> None:
    verdict = detect_collapse(COLLAPSING)
    assert verdict.flagged
    assert verdict.reason == (
        "reward std in group 1.1 → 0.0333, entropy 0.9 → 0.06, "
        "grad norm late max 4.5 vs early median 0.3 (×15)"
    )


def test_a_healthy_run_is_not_flagged() -> None:
    verdict = detect_collapse(HEALTHY)
    assert verdict == CollapseVerdict(False, verdict.reason)
    assert verdict.reason.startswith(
        "healthy (reward std did not fall; entropy did not fall; grad norm did not spike)"
    )


def test_one_sign_alone_is_not_a_collapse() -> None:
    # Groups turn uniform and entropy falls (a task being solved), but gradients stay calm.
    solved = _rows([r["reward/std_in_group"] for r in COLLAPSING],
                   [r["entropy/mean"] for r in COLLAPSING],
                   [r["grad/norm"] for r in HEALTHY])  # fmt: skip
    verdict = detect_collapse(solved)
    assert not verdict.flagged and "grad norm did not spike" in verdict.reason
    assert "reward std did not fall" not in verdict.reason


def test_too_short_or_unlogged_runs_are_not_judged() -> None:
    assert detect_collapse(COLLAPSING[:5]) == CollapseVerdict(
        False, "not judged: 5 logged steps, fewer than the 6 needed"
    )
    no_grad = [{k: v for k, v in row.items() if k != "grad/norm"} for row in COLLAPSING]
    assert detect_collapse(no_grad) == CollapseVerdict(
        False, "not judged: grad/norm was not logged"
    )


def test_the_report_lists_flagged_runs_with_their_reason(results: Path) -> None:
    report = write_report(results)
    flagged = [run.run_id for run, verdict in report.collapse if verdict.flagged]
    assert flagged == ["qwen3b__alfworld__grpo__s1"]
    assert len(report.collapse) == 12  # the 13 runs but Vanilla trained and were checked
    md = (results / "table.md").read_text()
    section = md[md.index("## Collapse check") :]
    assert (
        "- `qwen3b__alfworld__grpo__s1` (GRPO, Qwen/Qwen2.5-3B-Instruct, alfworld, seed 1): "
        "reward std in group 1.1 → 0.0333, entropy 0.817 → 0.06, "
        "grad norm late max 4 vs early median 0.31 (×12.9)"
    ) in section


def test_a_failed_run_is_listed_with_its_reason_and_left_out_of_the_table(results: Path) -> None:
    # Had SDAR seed 2 (final All 5.0) counted, SDAR's final All would be (80 + 82 + 5)/3 = 55.7.
    report = write_report(results)
    assert [run.run_id for run in report.failed] == ["qwen3b__alfworld__sdar__s2"]
    md = (results / "table.md").read_text()
    assert "| 81.0 [68.3, 93.7] (paper 84.4) |" in md
    section = md[md.index("## Missing runs") : md.index("## Collapse")]
    assert (
        "- `qwen3b__alfworld__sdar__s2`: failed (6 steps in a row had only non-finite updates"
    ) in section


def test_with_only_failed_runs_table_md_lists_them_and_no_table_is_written(
    results: Path,
) -> None:
    for run in (results / "runs").iterdir():
        if run.name != "qwen3b__alfworld__sdar__s2":
            shutil.rmtree(run)
    report = write_report(results)
    assert not report.tables
    assert "qwen3b__alfworld__sdar__s2" in (results / "table.md").read_text()
    assert not (results / "table.csv").exists() and not (results / "table.tex").exists()
