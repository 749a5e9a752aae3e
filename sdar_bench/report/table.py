"""Comparison tables from a suite's results: mean over seeds ± 95% confidence interval.

Rows are Table-1 method labels; columns are the env's metrics (success per task type and
overall). ``final`` (the last evaluation) and ``best`` (the step with the highest overall
success) are separate tables and never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROW_ORDER = [
    "Vanilla", "Skill-Prompt*", "OPSD", "GRPO", "Skill-GRPO", "Skill-GRPO*",
    "GRPO+OPSD", "Skill-SD", "RLSD", "SDAR",
]  # fmt: skip


def load_results(results_dir: Path) -> pd.DataFrame:
    """One row per (finished run, label, final|best) with the run's spec fields and metrics."""
    records = []
    for result_file in sorted(results_dir.glob("runs/*/result.json")):
        result = json.loads(result_file.read_text())
        manifest = json.loads((result_file.parent / "manifest.json").read_text())
        spec = manifest["spec"]
        variant = ",".join(f"{k}={v}" for k, v in sorted(spec["method_params"].items()))
        for which in ("final", "best"):
            for label, row in result[which].items():
                metrics = {k: v for k, v in row.items() if k not in _NOT_METRICS}
                records.append(
                    {
                        "model": spec["model"],
                        "env": spec["env"],
                        "method": spec["method"],
                        "variant": variant,
                        "label": label + (f" [{variant}]" if variant else ""),
                        "seed": spec["seed"],
                        "which": which,
                        "step": row["step"],
                        "panel_hash": row["panel_hash"],
                        "teacher_quality": teacher_quality(spec),
                        **metrics,
                    }
                )
    return pd.DataFrame.from_records(records)


_NOT_METRICS = {"step", "with_skills", "label", "panel_hash", "panel_size", "temperature"}


def teacher_quality(spec: dict) -> str:
    """The warm-start setting that decides how much better the skill-conditioned teacher is."""
    ws = spec.get("warmstart") or {}
    if not ws.get("enabled", False) or not str(spec.get("model", "")).startswith("tiny-"):
        return "pretrained"
    return (
        f"warm start: {ws['noise_with_skills']:.0%} random actions with skills, "
        f"{ws['noise_without_skills']:.0%} without, skill share {ws['skill_share']:.0%}"
    )


def mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (NaN for a single seed)."""
    x = values.dropna().to_numpy(dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def _label_key(label: str) -> tuple[int, str]:
    base = label.split(" [")[0]
    return (ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER), label)


def summary_table(frame: pd.DataFrame, which: str, columns: list[str]) -> pd.DataFrame:
    """Rows (model, env, label) × metric columns, each cell a (mean, ci, n) triple."""
    sub = frame[frame["which"] == which]
    rows = []
    for (model, env, label), group in sub.groupby(["model", "env", "label"], sort=False):
        row: dict[str, object] = {"model": model, "env": env, "label": label, "seeds": len(group)}
        for column in columns:
            if column in group:
                row[column] = mean_ci(group[column])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["_key"] = table["label"].map(_label_key)
    return table.sort_values(["model", "env", "_key"]).drop(columns="_key").reset_index(drop=True)


def format_cell(cell: object, digits: int = 1) -> str:
    if not isinstance(cell, tuple):
        return "–"
    mean, half = cell
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if np.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def metric_columns(frame: pd.DataFrame, env: str) -> list[str]:
    """The env's table columns (``Env.table_columns``) that the results actually hold."""
    from sdar_bench.envs import ENVS

    wanted = ENVS[env].table_columns() if env in ENVS else sorted(c for c in frame if "/" in c)
    sub = frame[frame["env"] == env]
    return [c for c in wanted if c in sub and sub[c].notna().any()]


def _column_title(column: str) -> str:
    return column.split("/", 1)[-1]


def to_markdown(table: pd.DataFrame, columns: list[str], title: str) -> str:
    head = ["model", "method", "seeds", *(_column_title(c) for c in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["model"]), str(row["label"]), str(row["seeds"])]
        cells += [format_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """Per env: its columns and its final / best tables (cells are (mean, ci) pairs)."""

    columns: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    teacher_quality: list[str] = field(default_factory=list)


WHICH = {"final": "final step", "best": "best step (highest overall success)"}


def build_report(results_dir: Path) -> Report:
    frame = load_results(results_dir)
    report = Report()
    if frame.empty:
        return report
    report.teacher_quality = sorted(set(frame["teacher_quality"]))
    for env in dict.fromkeys(frame["env"]):
        columns = metric_columns(frame, env)
        report.columns[env] = columns
        for which in WHICH:
            report.tables[(env, which)] = summary_table(frame[frame["env"] == env], which, columns)
    return report


def write_report(results_dir: Path) -> Report:
    """Write ``table.md`` and ``table.csv`` (final and best, per env) and return the report."""
    report = build_report(results_dir)
    if not report.tables:
        return report
    md = [f"# {results_dir.name}: evaluation panel results, mean ± 95% CI over seeds\n"]
    md += [f"Teacher quality — {s}\n" for s in report.teacher_quality]
    flat = []
    for (env, which), table in report.tables.items():
        columns = report.columns[env]
        md.append(to_markdown(table, columns, f"{env}, {WHICH[which]}"))
        for _, row in table.iterrows():
            record = {k: row[k] for k in ("model", "env", "label", "seeds")}
            record["which"] = which
            for c in columns:
                mean, half = row[c] if isinstance(row.get(c), tuple) else (np.nan, np.nan)
                record[f"{c}/mean"], record[f"{c}/ci95"] = mean, half
            flat.append(record)
    (results_dir / "table.md").write_text("\n".join(md))
    pd.DataFrame(flat).to_csv(results_dir / "table.csv", index=False)
    return report
