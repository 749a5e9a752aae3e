"""The comparison table of a results directory, in the layout of the paper's Table 1.

Rows are method labels in the paper's order (a variant with parameters follows its base
label), one block per model, each with its number of seeds ``n``; column groups are ALFWorld (six
task types + All), Search-QA (seven sources + Avg) and WebShop (Score, Acc), for the envs and
metrics the results hold (``report.columns``).

* A cell is the mean over seeds with its 95% interval from ``stats.mean_interval``: seeds as
  clusters and the panel's tasks within them where per-episode records exist, the seeds alone
  otherwise. The interval never leaves the metric's 0–100 range. The paper's number is shown
  beside it when ``data/paper_table1.csv`` has that (model, method, column).
* Each env group ends with Δ vs GRPO on the env's headline metric (its last column), from
  ``compare``: paired by seed (and task) where the runs pair, Welch and marked "unpaired" where
  they do not. **Bold marks only a Δ whose interval excludes 0.**
* ``final`` (the last evaluation) and ``best`` (the step with the best headline metric on the
  validation panel, reported on the test panel) are separate tables and never mixed.
* Below the tables: the rliable aggregates (IQM over the task-type cells of every env, and the
  probability of improvement over GRPO), the runs the suite still misses (unfinished, failed,
  crashed, damaged), runs left out as stale, and the collapse check.

``write_report`` writes ``table.md``, ``table.csv`` (one row per which, model, env and label,
machine-readable) and ``table.tex`` (booktabs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdar_bench.jsonl import read_jsonl
from sdar_bench.report import stats
from sdar_bench.report.collapse import CollapseVerdict, detect_collapse
from sdar_bench.report.columns import (
    ENV_TITLES,
    Column,
    env_columns,
    env_order,
    row_order_key,
)
from sdar_bench.report.compare import METRIC_RANGE, Comparison, compare_runs, value_bounds
from sdar_bench.report.results import ResultsFolder, RunRecord, check_settings, read_results

WHICH = {"final": "final step", "best": "best step"}
BASELINE = "GRPO"  # the row every Δ is measured against


def which_title(which: str, selection: str) -> str:
    """A table's title, saying where its best step was chosen."""
    if which == "final":
        return "Final step"
    if selection == "valid":
        return "Best step (chosen on the validation panel, reported on the test panel)"
    return (
        "Best step (chosen on the test panel itself by runs written before the validation "
        "panel existed: biased upwards)"
    )


def teacher_quality(spec: dict[str, Any]) -> str:
    """The warm-start setting that decides how much better the skill-conditioned teacher is."""
    ws = spec.get("warmstart") or {}
    if not ws.get("enabled", False) or not str(spec.get("model", "")).startswith("tiny-"):
        return "pretrained"
    if not {"noise_with_skills", "noise_without_skills", "skill_share"} <= ws.keys():
        return "warm start (its settings are not recorded)"
    return (
        f"warm start: {ws['noise_with_skills']:.0%} random actions with skills, "
        f"{ws['noise_without_skills']:.0%} without, skill share {ws['skill_share']:.0%}"
    )


@cache
def paper_table() -> pd.DataFrame:
    """The paper's Table 1 (packaged copy of reference/paper_table1.csv), indexed by
    (model, method label); models are HF ids, so tiny models never match."""
    with resources.files("sdar_bench").joinpath("data/paper_table1.csv").open() as f:
        return pd.read_csv(f).set_index(["model", "method"])


def paper_value(model: str, label: str, column: Column) -> float:
    """The paper's number for this cell, or NaN. A variant label ("SDAR [beta=1.0]") never
    matches: the paper ran the defaults, so its number would mislead beside a variant."""
    table = paper_table()
    if not column.paper or (model, label) not in table.index or column.paper not in table:
        return math.nan
    return float(table.loc[(model, label), column.paper])


# ---- cells -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """A table cell: the mean over seeds and its 95% interval (NaN where there is none)."""

    mean: float
    low: float = math.nan
    high: float = math.nan

    def text(self, digits: int = 1) -> str:
        """ "81.0 [68.3, 93.7]", "81.0" without an interval, "–" when absent."""
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def seed_values(runs: list[RunRecord], which: str, label: str, metric: str) -> list[np.ndarray]:
    """Per seed, the per-task values of ``metric`` when every seed has them, else one number
    each (the cell's input to ``stats.mean_interval``)."""
    per_task = [run.task_values(which, label, metric) for run in runs]
    if per_task and all(v is not None for v in per_task):
        return [v[1] for v in per_task if v is not None]
    out = []
    for run in runs:
        row = run.row(which, label)
        if row is not None and row.get(metric) is not None:
            out.append(np.array([float(row[metric])]))
    return out


def make_cell(values: list[np.ndarray]) -> Cell:
    if not values:
        return Cell(math.nan)
    mean, low, high = stats.mean_interval(values, bounds=value_bounds(values))
    if math.isnan(low):
        return Cell(mean)
    return Cell(mean, max(low, METRIC_RANGE[0]), min(high, METRIC_RANGE[1]))


def format_delta(c: Comparison, digits: int = 1) -> str:
    """A Δ with its sign and interval: "+9.0 [2.1, 15.8]"; "(unpaired)" when runs do not pair."""
    delta = round(c.delta, digits) + 0.0  # + 0.0 turns a rounded −0.0 into 0.0
    text = f"{delta:+.{digits}f}"
    if not math.isnan(c.ci_low):
        text += f" [{c.ci_low:+.{digits}f}, {c.ci_high:+.{digits}f}]"
    return text + (" (unpaired)" if c.pairing == "unpaired" else "")


# ---- the per-env tables ----------------------------------------------------------------------
def metric_columns(runs: list[RunRecord], env: str) -> list[str]:
    """The env's Table-1 metrics that the results actually hold, in Table-1 order."""
    held = {
        metric
        for run in runs
        if run.spec.get("env") == env
        for row in run.result.get("final", {}).values()
        for metric, value in row.items()
        if value is not None
    }
    return [c.metric for c in env_columns(env) if c.metric in held]


@dataclass(frozen=True)
class Aggregate:
    """rliable's aggregates of one label over every task-type cell of every env."""

    model: str
    label: str
    n: int
    cells: int
    iqm: tuple[float, float, float]  # point, low, high
    prob_improvement: tuple[float, float, float] | None  # P(label > GRPO), or None for GRPO


@dataclass
class Report:
    """Per env its shown columns and its final / best tables, the comparisons behind the Δ
    column, the aggregates, the folder's missing / stale / damaged runs and the collapse
    verdict of every run that trained (failed ones included: a collapse is a common cause)."""

    folder: ResultsFolder
    columns: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)
    teacher_quality: list[str] = field(default_factory=list)
    collapse: list[tuple[RunRecord, CollapseVerdict]] = field(default_factory=list)
    selection: str = "valid"

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.folder.runs if r.failed]


def summary_table(
    runs: list[RunRecord], env: str, which: str, columns: list[str], deltas: dict[tuple, Comparison]
) -> pd.DataFrame:
    """Rows (model, env, label) of one env: ``n``, a Cell per metric column, ``paper:<metric>``
    (the paper's number or NaN) and ``delta`` (the Comparison vs GRPO, or None)."""
    by_column = {c.metric: c for c in env_columns(env)}
    groups: dict[tuple[str, str], tuple[str, list[RunRecord]]] = {}
    for run in runs:
        if run.spec.get("env") != env:
            continue
        for label in run.result.get(which, {}):
            key = (str(run.spec["model"]), run.row_label(label))
            groups.setdefault(key, (label, []))[1].append(run)
    rows = []
    for (model, row_label), (label, members) in groups.items():
        row: dict[str, object] = {"model": model, "env": env, "label": row_label}
        row["n"] = len(members)
        for metric in columns:
            row[metric] = make_cell(seed_values(members, which, label, metric))
            row[f"paper:{metric}"] = paper_value(model, row_label, by_column[metric])
        row["delta"] = deltas.get((model, env, row_label, which))
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    keys = [(m, row_order_key(lab)) for m, lab in zip(table["model"], table["label"], strict=True)]
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


def _aggregates(runs: list[RunRecord], comparisons_base: str) -> list[Aggregate]:
    """IQM and P(> GRPO) per (model, label) over the task-type cells of every env, final step.
    A seed counts when it has every cell (all envs of the label); tasks = the non-headline
    Table-1 columns of each env (ALFWorld's types, Search-QA's sources, WebShop's score)."""
    scores: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    cells: dict[str, set[str]] = {}
    for run in runs:
        env = str(run.spec["env"])
        wanted = [c.metric for c in env_columns(env)[:-1]]
        for label, row in run.result.get("final", {}).items():
            key = (str(run.spec["model"]), run.row_label(label))
            seed = scores.setdefault(key, {}).setdefault(int(run.spec["seed"]), {})
            for metric in wanted:
                if row.get(metric) is not None:
                    seed[f"{env}:{metric}"] = float(row[metric])
                    cells.setdefault(key[0], set()).add(f"{env}:{metric}")
    matrices: dict[tuple[str, str], np.ndarray] = {}
    for (model, label), seeds in scores.items():
        names = sorted(cells.get(model, set()))
        full = [s for s in seeds.values() if names and all(n in s for n in names)]
        if full:
            matrices[(model, label)] = np.array([[s[n] for n in names] for s in full])  # [S, C]
    out = []
    for (model, label), matrix in sorted(matrices.items(), key=lambda kv: row_order_key(kv[0][1])):
        base = matrices.get((model, comparisons_base))
        prob = None
        if base is not None and label != comparisons_base:
            prob = stats.aggregate_prob_improvement(matrix, base)
        out.append(
            Aggregate(
                model, label, matrix.shape[0], matrix.shape[1], stats.aggregate_iqm(matrix), prob
            )
        )
    return out


def build_report(results_dir: Path) -> Report:
    folder = read_results(results_dir)
    runs = folder.reported
    check_settings(runs)
    report = Report(folder)
    selections = {r.selection for r in runs}
    report.selection = "valid" if selections <= {"valid"} else "test"
    comparisons = compare_runs(folder, baseline="grpo")
    report.comparisons = comparisons
    deltas = {(c.model, c.env, c.method, c.which): c for c in comparisons}
    if runs:
        report.teacher_quality = sorted({teacher_quality(r.spec) for r in runs})
        for env in sorted({str(r.spec["env"]) for r in runs}, key=env_order):
            columns = metric_columns(runs, env)
            report.columns[env] = columns
            for which in WHICH:
                table = summary_table(runs, env, which, columns, deltas)
                if not table.empty:
                    report.tables[(env, which)] = table
        base = next((c.baseline for c in comparisons), BASELINE)
        report.aggregates = _aggregates(runs, base)
    for run in folder.runs:
        rows = read_jsonl(run.path / "metrics.jsonl")
        if rows:  # methods that do not train log no steps
            report.collapse.append((run, detect_collapse(rows)))
    return report


# ---- cells as shown --------------------------------------------------------------------------
@dataclass(frozen=True)
class ShownCell:
    """One cell of the Table-1 layout before it is written as markdown or LaTeX."""

    text: str  # "84.4 [80.1, 88.0]", "+3.0 [0.4, 5.6]", "ref", "–"
    bold: bool = False
    paper: float = math.nan


@dataclass
class Block:
    """The rows of one model in one table: (label, n, cells in header order)."""

    model: str
    rows: list[tuple[str, str, list[ShownCell]]]


def table1_header(report: Report, which: str) -> list[tuple[str, list[str]]]:
    """Column groups (env title, column titles), each group ending with its Δ column."""
    groups = []
    for env, metrics in report.columns.items():
        if (env, which) not in report.tables:
            continue
        titles = {c.metric: c.title for c in env_columns(env)}
        groups.append((ENV_TITLES.get(env, env), [titles[m] for m in metrics] + ["Δ vs GRPO"]))
    return groups


def table1_blocks(report: Report, which: str) -> list[Block]:
    """One block per model: every label that model has in any env, in paper order. The n
    column reads "3/2" when the label's env groups hold different numbers of seeds."""
    frames = {
        env: report.tables[(env, which)] for env in report.columns if (env, which) in report.tables
    }
    models = sorted({m for f in frames.values() for m in f["model"]})
    blocks = []
    for model in models:
        per_env = {env: f[f["model"] == model].set_index("label") for env, f in frames.items()}
        labels = sorted({lab for f in per_env.values() for lab in f.index}, key=row_order_key)
        rows = []
        for label in labels:
            ns = [str(f.loc[label, "n"]) for f in per_env.values() if label in f.index]
            cells: list[ShownCell] = []
            for env, frame in per_env.items():
                cells += _env_cells(frame, label, report.columns[env])
            rows.append((label, "/".join(dict.fromkeys(ns)), cells))
        blocks.append(Block(model, rows))
    return blocks


def _env_cells(frame: pd.DataFrame, label: str, metrics: list[str]) -> list[ShownCell]:
    """One label's cells of one env group: its metrics, then Δ vs GRPO (bold iff its interval
    excludes 0)."""
    if label not in frame.index:
        return [ShownCell("–") for _ in [*metrics, "delta"]]
    cells = [
        ShownCell(frame.loc[label, m].text(), False, float(frame.loc[label, f"paper:{m}"]))
        for m in metrics
    ]
    delta = frame.loc[label, "delta"]
    if label == BASELINE:
        cells.append(ShownCell("ref"))
    elif isinstance(delta, Comparison):
        cells.append(ShownCell(format_delta(delta), delta.significant))
    else:
        cells.append(ShownCell("–"))
    return cells


# ---- writers ---------------------------------------------------------------------------------
def _md_cell(cell: ShownCell) -> str:
    text = f"**{cell.text}**" if cell.bold else cell.text
    return text if math.isnan(cell.paper) else f"{text} (paper {cell.paper:.1f})"


def to_markdown(report: Report, which: str) -> str:
    """One which-table: a header line, then one markdown table per model."""
    groups = table1_header(report, which)
    head = ["method", "n", *(f"{env} {title}" for env, titles in groups for title in titles)]
    lines = [f"## {which_title(which, report.selection)}", ""]
    for block in table1_blocks(report, which):
        lines += [f"### {block.model}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, n, cells in block.rows:
            lines.append("| " + " | ".join([label, n, *map(_md_cell, cells)]) + " |")
        lines.append("")
    return "\n".join(lines)


def _triple(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]"


def aggregates_markdown(report: Report) -> str:
    lines = [
        "## Aggregates over task types and envs (rliable, final step)",
        "",
        "IQM: the interquartile mean of every (seed, cell) score, cells = the task-type columns "
        "of every env of the model; P(> GRPO): the probability that a run of the method beats a "
        "run of GRPO on a cell, averaged over cells. Both with 95% stratified-bootstrap "
        "intervals; a seed counts only when it has every cell.",
        "",
        "| model | method | n | cells | IQM | P(> GRPO) |",
        "|---|---|---|---|---|---|",
    ]
    for a in report.aggregates:
        prob = "ref" if a.label == BASELINE else "–"
        if a.prob_improvement is not None:
            p, lo, hi = a.prob_improvement
            prob = f"{p:.2f} [{lo:.2f}, {hi:.2f}]"
        lines.append(f"| {a.model} | {a.label} | {a.n} | {a.cells} | {_triple(a.iqm)} | {prob} |")
    return "\n".join(lines) + "\n"


def missing_markdown(report: Report) -> str:
    """Every run of the suite without a usable result, and the runs left out as stale."""
    folder = report.folder
    lines = ["## Missing runs", ""]
    if not folder.missing:
        lines.append("None: every run of the suite finished.")
    else:
        lines.append(
            f"{len(folder.missing)} run(s) of the suite have no result in the tables "
            "(`sdar-bench run` with the same suite redoes or resumes them):"
        )
        lines += ["", *(f"- {m.line()}" for m in folder.missing)]
    if folder.stale:
        lines += [
            "",
            f"{len(folder.stale)} run folder(s) are not in the suite this folder was last run "
            "with (suite.json) and are left out: " + ", ".join(f"`{s}`" for s in folder.stale),
        ]
    for problem in folder.problems:
        lines += ["", f"Problem: {problem}"]
    return "\n".join(lines) + "\n"


def collapse_markdown(report: Report) -> str:
    """The runs the collapse detector flags, each with its reason."""
    lines = ["## Collapse check", ""]
    flagged = [(run, verdict) for run, verdict in report.collapse if verdict.flagged]
    if not flagged:
        n = len(report.collapse)
        lines.append(f"No run shows the collapse signature ({n} training run(s) checked).")
    else:
        lines.append(
            "Runs whose in-group reward std and entropy both fell while the gradient norm "
            "spiked (sdar_bench/report/collapse.py):"
        )
        lines.append("")
        for run, verdict in flagged:
            lines.append(
                f"- `{run.run_id}` ({run.train_label}, {run.spec['model']}, {run.spec['env']}, "
                f"seed {run.spec['seed']}): {verdict.reason}"
            )
    return "\n".join(lines) + "\n"


# Characters LaTeX reads as commands; method labels and model names may contain "_" or "%".
_TEX_SPECIAL = {
    **{c: "\\" + c for c in "&%$#_{}"},
    "~": r"\~{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(c, c) for c in text)


def _tex_cell(cell: ShownCell) -> str:
    text = _tex_escape(cell.text).replace("–", "--").replace("Δ", r"$\Delta$")
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    return text if math.isnan(cell.paper) else f"{text} (paper {cell.paper:.1f})"


def to_latex(report: Report, which: str, name: str) -> str:
    """One which-table as a booktabs ``table`` (needs \\usepackage{booktabs, graphicx})."""
    groups = table1_header(report, which)
    n_cols = 2 + sum(len(titles) for _, titles in groups)
    spans, rules, start = [], [], 3
    for env, titles in groups:
        spans.append(rf"\multicolumn{{{len(titles)}}}{{c}}{{{_tex_escape(env)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(titles) - 1}}}")
        start += len(titles)
    titles = [_tex_cell(ShownCell(t)) for _, ts in groups for t in ts]
    caption = (
        f"{_tex_escape(name)}: {_tex_escape(which_title(which, report.selection).lower())}; "
        r"mean [95\% interval] over seeds, $\Delta$ paired by seed, bold: interval excludes 0"
    )
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{ll{'r' * (n_cols - 2)}}}",
        r"\toprule",
        " & & " + " & ".join(spans) + r" \\",
        " ".join(rules),
        " & ".join(["Method", "$n$", *titles]) + r" \\",
    ]
    for block in table1_blocks(report, which):
        model = rf"\textit{{{_tex_escape(block.model)}}}"
        lines += [r"\midrule", rf"\multicolumn{{{n_cols}}}{{l}}{{{model}}} \\"]
        for label, n, cells in block.rows:
            lines.append(" & ".join([_tex_escape(label), n, *map(_tex_cell, cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def to_records(report: Report) -> pd.DataFrame:
    """The tables flat: one row per (which, model, env, label): n; per metric its mean, the
    interval's ends and the paper's number; the Δ vs GRPO of the headline metric, its interval,
    p-value and pairing."""
    records = []
    for (env, which), table in report.tables.items():
        for _, row in table.iterrows():
            record: dict[str, object] = {k: row[k] for k in ("model", "env", "label", "n")}
            record["which"] = which
            for metric in report.columns[env]:
                cell = row[metric]
                record[f"{metric}/mean"] = cell.mean
                record[f"{metric}/ci_low"], record[f"{metric}/ci_high"] = cell.low, cell.high
                record[f"{metric}/paper"] = row[f"paper:{metric}"]
            delta = row["delta"]
            if isinstance(delta, Comparison):
                record["delta_vs_grpo/mean"] = delta.delta
                record["delta_vs_grpo/ci_low"] = delta.ci_low
                record["delta_vs_grpo/ci_high"] = delta.ci_high
                record["delta_vs_grpo/p_value"] = delta.p_value
                record["delta_vs_grpo/pairing"] = delta.pairing
            records.append(record)
    return pd.DataFrame.from_records(records)


HEADER_NOTE = (
    "Cells: mean over seeds [95% interval]; seeds are clusters and the panel's tasks are "
    "resampled within them where per-episode records exist (`sdar_bench/report/stats.py`). "
    "Δ vs GRPO: the paired difference of the env's headline metric (ALFWorld All, Search-QA "
    "Avg, WebShop Acc) to GRPO with the same seed (and task), with its 95% interval; "
    "**bold: the interval excludes 0**; (unpaired): no GRPO run pairs, Welch's interval. "
    "n: seeds. (paper x): the paper's Table 1 for the same model and method. "
    "`sdar-bench compare` prints every comparison with its p-value and P(A > B)."
)


def write_report(results_dir: Path) -> Report:
    """Write ``table.md``, ``table.csv`` and ``table.tex`` (final and best) and return the
    report. With no successful run there is no table: only ``table.md`` is written, to list
    the missing runs and why, and nothing at all when no run has ended yet."""
    report = build_report(results_dir)
    folder = report.folder
    if not report.tables and not folder.runs and not folder.missing:
        return report
    md = [f"# {results_dir.name}: test panel results", ""]
    if report.tables:
        md += [f"Teacher quality — {setting}" for setting in report.teacher_quality]
        md += ["", HEADER_NOTE, ""]
        md += [to_markdown(report, which) for which in WHICH if _has(report, which)]
        if report.aggregates:
            md.append(aggregates_markdown(report))
    md.append(missing_markdown(report))
    md.append(collapse_markdown(report))
    (results_dir / "table.md").write_text("\n".join(md))
    if report.tables:
        to_records(report).to_csv(results_dir / "table.csv", index=False)
        tex = [to_latex(report, which, results_dir.name) for which in WHICH if _has(report, which)]
        (results_dir / "table.tex").write_text(
            "% Generated by sdar_bench.report.table\n" + "\n".join(tex)
        )
    return report


def _has(report: Report, which: str) -> bool:
    return any(w == which for _, w in report.tables)
