"""Comparison tables from a suite's results: mean over seeds ± 95% confidence interval.

Rows are Table-1 method labels; columns are the env's metrics (success per task type and
overall). ``final`` (the last evaluation) and ``best`` (the step with the highest overall
success) are separate tables and never mixed.
"""

from __future__ import annotations

import json
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
                metrics = {k: v for k, v in row.items() if "/" in k}
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
                        **metrics,
                    }
                )
    return pd.DataFrame.from_records(records)


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


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Success per task type in the env's order, then overall."""
    cols = [c for c in frame.columns if c.startswith("success/") and c != "success/all"]
    return [*cols, "success/all"] if "success/all" in frame else cols


def to_markdown(table: pd.DataFrame, columns: list[str], title: str) -> str:
    head = ["model", "env", "method", "seeds", *(c.split("/", 1)[1] for c in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["model"]), str(row["env"]), str(row["label"]), str(row["seeds"])]
        cells += [format_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results_dir: Path) -> dict[str, pd.DataFrame]:
    """Write ``table.md`` and ``table.csv`` (final and best) and return the tables."""
    frame = load_results(results_dir)
    if frame.empty:
        return {}
    columns = metric_columns(frame)
    tables = {which: summary_table(frame, which, columns) for which in ("final", "best")}
    md = [
        f"# {results_dir.name}: success (%) on the fixed evaluation panel, mean ± 95% CI over seeds\n",
        to_markdown(tables["final"], columns, "Final step"),
        to_markdown(tables["best"], columns, "Best step (highest overall success)"),
    ]
    (results_dir / "table.md").write_text("\n".join(md))
    flat = []
    for which, table in tables.items():
        for _, row in table.iterrows():
            record = {
                "which": which,
                "model": row["model"],
                "env": row["env"],
                "label": row["label"],
                "seeds": row["seeds"],
            }
            for c in columns:
                mean, half = row.get(c) if isinstance(row.get(c), tuple) else (np.nan, np.nan)
                record[f"{c}/mean"], record[f"{c}/ci95"] = mean, half
            flat.append(record)
    pd.DataFrame(flat).to_csv(results_dir / "table.csv", index=False)
    return tables
