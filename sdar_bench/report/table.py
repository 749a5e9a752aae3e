"""The comparison table of a results directory, in the layout of the paper's Table 1.

Rows are method labels in the paper's order (a variant with parameters follows its base
label), one block per model; column groups are ALFWorld (six task types + All), Search-QA
(seven sources + Avg) and WebShop (Score, Acc), for the envs and metrics the results hold.
Every cell is the mean over seeds ± the half-width of its 95% Student-t interval, with the
paper's number beside it when ``data/paper_table1.csv`` has that (model, method, column).
Each env group ends with Δ vs GRPO: the difference of the env's headline metric (its last
column) to the GRPO row of the same model, with a Welch 95% interval. The best mean of each
column within a model block is bold. ``final`` (the last evaluation) and ``best`` (the step
with the highest overall success) are separate tables and never mixed.

``write_report`` writes ``table.md`` (which also lists the failed runs, left out of the
tables, and the runs the collapse detector flags), ``table.csv`` (one row per model, env and
label, machine-readable) and ``table.tex`` (booktabs).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from sdar_bench.jsonl import read_jsonl
from sdar_bench.report.collapse import CollapseVerdict, detect_collapse

ROW_ORDER = [
    "Vanilla", "Skill-Prompt*", "OPSD", "GRPO", "Skill-GRPO", "Skill-GRPO*",
    "GRPO+OPSD", "Skill-SD", "RLSD", "SDAR",
]  # fmt: skip

WHICH = {"final": "final step", "best": "best step (highest overall success)"}

BASELINE = "GRPO"  # the row every Δ is measured against


# ---- the Table-1 columns ---------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One Table-1 column: where its value lives in a result row and in the paper's CSV."""

    metric: str  # key of the eval row, e.g. "success/pick"
    title: str  # header text, e.g. "Pick"
    paper: str  # column of paper_table1.csv, e.g. "alfworld_pick"


# The paper's Table 1, group by group; each group's last column is its headline metric. These
# are the envs' ``table_columns()`` except WebShop, whose per-category success the paper omits.
TABLE1: dict[str, list[Column]] = {
    "alfworld": [
        Column("success/pick", "Pick", "alfworld_pick"),
        Column("success/look", "Look", "alfworld_look"),
        Column("success/clean", "Clean", "alfworld_clean"),
        Column("success/heat", "Heat", "alfworld_heat"),
        Column("success/cool", "Cool", "alfworld_cool"),
        Column("success/pick2", "Pick2", "alfworld_pick2"),
        Column("success/all", "All", "alfworld_all"),
    ],
    "searchqa": [
        Column("em/nq", "NQ", "searchqa_nq"),
        Column("em/triviaqa", "TriviaQA", "searchqa_triviaqa"),
        Column("em/popqa", "PopQA", "searchqa_popqa"),
        Column("em/hotpotqa", "HotpotQA", "searchqa_hotpotqa"),
        Column("em/2wiki", "2Wiki", "searchqa_2wiki"),
        Column("em/musique", "MuSiQue", "searchqa_musique"),
        Column("em/bamboogle", "Bamboogle", "searchqa_bamboogle"),
        Column("em/avg", "Avg", "searchqa_avg"),
    ],
    "webshop": [
        Column("score", "Score", "webshop_score"),
        Column("accuracy", "Acc", "webshop_acc"),
    ],
}
ENV_TITLES = {"alfworld": "ALFWorld", "searchqa": "Search-QA", "webshop": "WebShop"}


def env_columns(env: str) -> list[Column]:
    """The Table-1 columns of ``env``; an env the paper lacks shows its ``table_columns()``."""
    if env in TABLE1:
        return TABLE1[env]
    from sdar_bench.envs import ENVS

    metrics = ENVS[env].table_columns() if env in ENVS else []
    return [Column(m, m.split("/", 1)[-1], "") for m in metrics]


def headline_metric(env: str) -> str:
    """The metric Δ vs GRPO and the validation plot use: the env's last table column."""
    return env_columns(env)[-1].metric


def env_order(env: str) -> tuple[int, str]:
    """Sort key: the paper's env order first, then any other env by name."""
    known = list(TABLE1)
    return (known.index(env) if env in known else len(known), env)


# ---- reading a results directory -------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """A finished run: its folder, the spec from ``manifest.json`` and ``result.json``."""

    path: Path
    spec: dict[str, Any]
    result: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def failed(self) -> bool:
        """A run that stopped early (e.g. non-finite updates) still writes ``result.json``."""
        return self.result.get("status", "finished") == "failed"

    @property
    def variant(self) -> str:
        """The method parameters a suite set, as ``k=v,…`` ("" for the defaults)."""
        params = self.spec.get("method_params") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(params.items()))

    def row_label(self, label: str) -> str:
        """An eval label (e.g. "SDAR") with this run's variant: "SDAR [beta=1.0]"."""
        return label + (f" [{self.variant}]" if self.variant else "")

    @property
    def train_label(self) -> str:
        """The label of the trained policy: a starred label is only an evaluation mode."""
        labels = list(self.result.get("final", {}))
        plain = [label for label in labels if not label.endswith("*")]
        return self.row_label((plain or labels or [str(self.spec.get("method"))])[0])


def finished_runs(results_dir: Path) -> list[RunRecord]:
    """Every run with a ``result.json`` (a run is finished exactly then), in folder order;
    failed runs included (``RunRecord.failed``)."""
    runs = []
    for result_file in sorted(results_dir.glob("runs/*/result.json")):
        manifest = json.loads((result_file.parent / "manifest.json").read_text())
        result = json.loads(result_file.read_text())
        runs.append(RunRecord(result_file.parent, manifest["spec"], result))
    return runs


_NOT_METRICS = {"step", "with_skills", "label", "panel_hash", "panel_size", "temperature"}


def load_results(results_dir: Path) -> pd.DataFrame:
    """One row per (finished run, label, final|best) with the run's spec fields and metrics.
    Failed runs are left out: their last evaluation is of a policy that stopped early, and
    averaging it with complete seeds would hide the failure in a lower mean."""
    records = []
    for run in finished_runs(results_dir):
        if run.failed:
            continue
        for which in ("final", "best"):
            for label, row in run.result[which].items():
                metrics = {k: v for k, v in row.items() if k not in _NOT_METRICS}
                records.append(
                    {
                        "run_id": run.run_id,
                        "model": run.spec["model"],
                        "env": run.spec["env"],
                        "method": run.spec["method"],
                        "variant": run.variant,
                        "label": run.row_label(label),
                        "seed": run.spec["seed"],
                        "which": which,
                        "step": row["step"],
                        "panel_hash": row["panel_hash"],
                        "teacher_quality": teacher_quality(run.spec),
                        **metrics,
                    }
                )
    return pd.DataFrame.from_records(records)


def teacher_quality(spec: dict[str, Any]) -> str:
    """The warm-start setting that decides how much better the skill-conditioned teacher is."""
    ws = spec.get("warmstart") or {}
    if not ws.get("enabled", False) or not str(spec.get("model", "")).startswith("tiny-"):
        return "pretrained"
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


# ---- statistics ------------------------------------------------------------------------------
def mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (NaN for a single seed)."""
    x = values.dropna().to_numpy(dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def diff_ci(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """mean(a) − mean(b) and the half-width of its 95% Welch interval (NaN if a side has one
    value). Welch, not paired: two methods' runs are independent even when seeds coincide."""
    x, y = a.dropna().to_numpy(dtype=float), b.dropna().to_numpy(dtype=float)
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan")
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, float("nan")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, 0.0
    # Welch–Satterthwaite degrees of freedom.
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return diff, float(stats.t.ppf(0.975, dof) * se)


# ---- the per-env tables ----------------------------------------------------------------------
def _natural_key(text: str) -> list[object]:
    """Sort "beta=5.0" before "beta=10.0": numbers compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return [(0, float(p)) if re.fullmatch(r"\d+(?:\.\d+)?", p) else (1, p) for p in parts]


def row_order_key(label: str) -> tuple[int, list[object]]:
    """Paper row order, a base label before its variants, variants in natural order."""
    base = label.split(" [")[0]
    return (ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER), _natural_key(label))


def metric_columns(frame: pd.DataFrame, env: str) -> list[str]:
    """The env's Table-1 metrics that the results actually hold, in Table-1 order."""
    sub = frame[frame["env"] == env]
    return [c.metric for c in env_columns(env) if c.metric in sub and sub[c.metric].notna().any()]


def summary_table(frame: pd.DataFrame, which: str, columns: list[str]) -> pd.DataFrame:
    """Rows (model, env, label) of one env: ``seeds``, a (mean, ci) pair per metric column,
    ``paper:<metric>`` (the paper's number or NaN) and ``delta`` ((Δ, ci) vs GRPO or None)."""
    sub = frame[frame["which"] == which]
    if sub.empty:
        return pd.DataFrame()
    env = str(sub["env"].iloc[0])
    headline = headline_metric(env)
    by_column = {c.metric: c for c in env_columns(env)}
    rows = []
    for (model, label), group in sub.groupby(["model", "label"], sort=False):
        row: dict[str, object] = {"model": model, "env": env, "label": label, "seeds": len(group)}
        for metric in columns:
            row[metric] = mean_ci(group[metric])
            row[f"paper:{metric}"] = paper_value(str(model), str(label), by_column[metric])
        baseline = sub[(sub["model"] == model) & (sub["label"] == BASELINE)]
        row["delta"] = (
            diff_ci(group[headline], baseline[headline])
            if headline in columns and not baseline.empty and label != BASELINE
            else None
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    keys = [
        (m, row_order_key(label)) for m, label in zip(table["model"], table["label"], strict=True)
    ]
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


@dataclass
class Report:
    """Per env its shown columns and its final / best tables (cells are (mean, ci) pairs),
    the teacher-quality settings, the failed runs (not in the tables) and the collapse verdict
    of every run that trained (failed ones included: a collapse is a common cause)."""

    columns: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    teacher_quality: list[str] = field(default_factory=list)
    failed: list[RunRecord] = field(default_factory=list)
    collapse: list[tuple[RunRecord, CollapseVerdict]] = field(default_factory=list)


def build_report(results_dir: Path) -> Report:
    frame = load_results(results_dir)
    report = Report()
    if not frame.empty:
        report.teacher_quality = sorted(set(frame["teacher_quality"]))
        for env in sorted(dict.fromkeys(frame["env"]), key=env_order):
            columns = metric_columns(frame, env)
            report.columns[env] = columns
            for which in WHICH:
                env_rows = frame[frame["env"] == env]
                report.tables[(env, which)] = summary_table(env_rows, which, columns)
    for run in finished_runs(results_dir):
        if run.failed:
            report.failed.append(run)
        rows = read_jsonl(run.path / "metrics.jsonl")
        if rows:  # methods that do not train log no steps
            report.collapse.append((run, detect_collapse(rows)))
    return report


# ---- cells as shown --------------------------------------------------------------------------
def format_cell(cell: object, digits: int = 1) -> str:
    """A (mean, ci) pair as "12.3 ± 4.5" ("12.3" for one seed, "–" when absent)."""
    if not isinstance(cell, tuple):
        return "–"
    mean, half = cell
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def format_delta(cell: tuple[float, float], digits: int = 1) -> str:
    """A (Δ, ci) pair with its sign: "+9.0 ± 13.8"."""
    diff, half = cell
    diff = round(diff, digits) + 0.0  # + 0.0 turns a rounded −0.0 into 0.0
    text = f"{diff:+.{digits}f}"
    return text if np.isnan(half) else f"{text} ± {half:.{digits}f}"


@dataclass(frozen=True)
class ShownCell:
    """One cell of the Table-1 layout before it is written as markdown or LaTeX."""

    text: str  # "84.4 ± 2.1", "+3.0", "ref", "–"
    bold: bool = False
    paper: float = math.nan


@dataclass
class Block:
    """The rows of one model in one table: (label, seeds, cells in header order)."""

    model: str
    rows: list[tuple[str, str, list[ShownCell]]]


def table1_header(report: Report) -> list[tuple[str, list[str]]]:
    """Column groups (env title, column titles), each group ending with its Δ column."""
    groups = []
    for env, metrics in report.columns.items():
        titles = {c.metric: c.title for c in env_columns(env)}
        groups.append((ENV_TITLES.get(env, env), [titles[m] for m in metrics] + ["Δ vs GRPO"]))
    return groups


def table1_blocks(report: Report, which: str) -> list[Block]:
    """One block per model: every label that model has in any env, in paper order. The seeds
    column reads "3/2" when the label's env groups average different numbers of seeds."""
    frames = {env: report.tables[(env, which)] for env in report.columns}
    models = sorted({m for f in frames.values() if not f.empty for m in f["model"]})
    blocks = []
    for model in models:
        per_env = {
            env: f[f["model"] == model].set_index("label") if not f.empty else f
            for env, f in frames.items()
        }
        labels = sorted({lab for f in per_env.values() for lab in f.index}, key=row_order_key)
        rows = []
        for label in labels:
            seeds = [str(f.loc[label, "seeds"]) for f in per_env.values() if label in f.index]
            cells: list[ShownCell] = []
            for env, frame in per_env.items():
                cells += _env_cells(frame, label, report.columns[env])
            rows.append((label, "/".join(dict.fromkeys(seeds)), cells))
        blocks.append(Block(model, rows))
    return blocks


def _env_cells(frame: pd.DataFrame, label: str, metrics: list[str]) -> list[ShownCell]:
    """One label's cells of one env group: its metrics, bold where best, then Δ vs GRPO."""
    cells = []
    for metric in metrics:
        if label not in frame.index:
            cells.append(ShownCell("–"))
            continue
        mean = frame.loc[label, metric][0]
        # Bold compares the numbers as printed, so printed ties are all bold; a column with a
        # single value has no "best".
        shown = frame[metric].map(lambda cell: round(cell[0], 1)).dropna()
        bold = len(shown) >= 2 and round(mean, 1) == shown.max()
        paper = frame.loc[label, f"paper:{metric}"]
        cells.append(ShownCell(format_cell(frame.loc[label, metric]), bool(bold), float(paper)))
    if label == BASELINE and label in frame.index:
        cells.append(ShownCell("ref"))
    elif label in frame.index and isinstance(frame.loc[label, "delta"], tuple):
        cells.append(ShownCell(format_delta(frame.loc[label, "delta"])))
    else:
        cells.append(ShownCell("–"))
    return cells


# ---- writers ---------------------------------------------------------------------------------
def _md_cell(cell: ShownCell) -> str:
    text = f"**{cell.text}**" if cell.bold else cell.text
    return text if math.isnan(cell.paper) else f"{text} (paper {cell.paper:.1f})"


def to_markdown(report: Report, which: str) -> str:
    """One which-table: a header line, then one markdown table per model."""
    groups = table1_header(report)
    head = ["method", "seeds", *(f"{env} {title}" for env, titles in groups for title in titles)]
    lines = [f"## {WHICH[which].capitalize()}", ""]
    for block in table1_blocks(report, which):
        lines += [f"### {block.model}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, seeds, cells in block.rows:
            lines.append("| " + " | ".join([label, seeds, *map(_md_cell, cells)]) + " |")
        lines.append("")
    return "\n".join(lines)


def failed_markdown(report: Report) -> str:
    """The runs that stopped early, with the reason they wrote; they are in no table."""
    lines = ["## Failed runs (left out of the tables)", ""]
    for run in report.failed:
        lines.append(
            f"- `{run.run_id}` ({run.train_label}, {run.spec['model']}, {run.spec['env']}, "
            f"seed {run.spec['seed']}): {run.result.get('reason') or 'no reason recorded'}"
        )
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
    text = _tex_escape(cell.text).replace("±", r"$\pm$").replace("–", "--")
    text = text.replace("Δ", r"$\Delta$")
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    return text if math.isnan(cell.paper) else f"{text} (paper {cell.paper:.1f})"


def to_latex(report: Report, which: str, name: str) -> str:
    """One which-table as a booktabs ``table`` (needs \\usepackage{booktabs, graphicx})."""
    groups = table1_header(report)
    n_cols = 2 + sum(len(titles) for _, titles in groups)
    spans, rules, start = [], [], 3
    for env, titles in groups:
        spans.append(rf"\multicolumn{{{len(titles)}}}{{c}}{{{_tex_escape(env)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(titles) - 1}}}")
        start += len(titles)
    titles = [_tex_cell(ShownCell(t)) for _, ts in groups for t in ts]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex_escape(name)}: {WHICH[which]}, mean $\pm$ 95\% CI over seeds}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{ll{'r' * (n_cols - 2)}}}",
        r"\toprule",
        " & & " + " & ".join(spans) + r" \\",
        " ".join(rules),
        " & ".join(["Method", "Seeds", *titles]) + r" \\",
    ]
    for block in table1_blocks(report, which):
        model = rf"\textit{{{_tex_escape(block.model)}}}"
        lines += [r"\midrule", rf"\multicolumn{{{n_cols}}}{{l}}{{{model}}} \\"]
        for label, seeds, cells in block.rows:
            lines.append(" & ".join([_tex_escape(label), seeds, *map(_tex_cell, cells)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def to_records(report: Report) -> pd.DataFrame:
    """The tables flat: one row per (which, model, env, label); per metric its mean, ci95 and
    the paper's number; the Δ vs GRPO of the env's headline metric and its ci95."""
    records = []
    for (env, which), table in report.tables.items():
        for _, row in table.iterrows():
            record: dict[str, object] = {k: row[k] for k in ("model", "env", "label", "seeds")}
            record["which"] = which
            for metric in report.columns[env]:
                mean, half = row[metric]
                record[f"{metric}/mean"], record[f"{metric}/ci95"] = mean, half
                record[f"{metric}/paper"] = row[f"paper:{metric}"]
            delta = row["delta"] if isinstance(row["delta"], tuple) else (np.nan, np.nan)
            record["delta_vs_grpo/mean"], record["delta_vs_grpo/ci95"] = delta
            records.append(record)
    return pd.DataFrame.from_records(records)


def write_report(results_dir: Path) -> Report:
    """Write ``table.md``, ``table.csv`` and ``table.tex`` (final and best) and return the
    report. With no successful run there is no table: only ``table.md`` is written, to list
    the failed runs and why, and nothing at all when no run has ended yet."""
    report = build_report(results_dir)
    if not report.tables and not report.failed:
        return report
    md = [f"# {results_dir.name}: evaluation panel results, mean ± 95% CI over seeds", ""]
    if report.tables:
        md += [f"Teacher quality — {setting}" for setting in report.teacher_quality]
        md += [
            "",
            "Δ vs GRPO: difference of the env's headline metric (ALFWorld All, Search-QA Avg, "
            "WebShop Acc) to the GRPO row of the same model, Welch 95% CI. Bold: best mean of "
            "the column within a model. (paper x): the paper's Table 1 for the same model and "
            "method.",
            "",
        ]
        md += [to_markdown(report, which) for which in WHICH]
    if report.failed:
        md.append(failed_markdown(report))
    md.append(collapse_markdown(report))
    (results_dir / "table.md").write_text("\n".join(md))
    if report.tables:
        to_records(report).to_csv(results_dir / "table.csv", index=False)
        tex = [to_latex(report, which, results_dir.name) for which in WHICH]
        (results_dir / "table.tex").write_text(
            "% Generated by sdar_bench.report.table\n" + "\n".join(tex)
        )
    return report
