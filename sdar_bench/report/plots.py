"""Training curves of a results directory, as PNG and PDF under ``RESULTS/plots/``.

Per (model, env) two figures, one line per method label (a variant is its own line), the
mean over seeds with a band from the lowest to the highest seed (with two or three seeds a
min–max band shows the actual spread, where a ± std band would pretend to a distribution):

* ``validation_<env>_<model>``: the env's headline metric on the evaluation panel vs step
  (ALFWorld All, Search-QA Avg, WebShop Acc), from each run's ``eval.jsonl``;
* ``stability_<env>_<model>``: the training diagnostics of SPEC §4 vs step from
  ``metrics.jsonl``: entropy, gradient norm and each loss term's, reward std within groups,
  KL to the reference, the teacher–student gap (mean, |Δ|, 10th and 90th percentiles), the
  gate (mean, active ratio, percentiles; on a fixed [0, 1] axis), and the mean gap per turn
  index (``gap/by_turn`` averaged over a run's steps). A panel whose metric no run logged is
  left out.

The validation figure draws the runs of the table (failed runs left out); the stability figure
also draws failed runs up to where they stopped, since that is where their cause shows.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sdar_bench.jsonl import read_jsonl
from sdar_bench.report.columns import (
    ENV_TITLES,
    env_columns,
    env_order,
    headline_metric,
    row_order_key,
)
from sdar_bench.report.results import RunRecord, read_results


def finished_runs(results_dir: Path) -> list[RunRecord]:
    """The runs with a readable result (failed ones included), as the tables read them."""
    return read_results(results_dir).runs


# (metric in metrics.jsonl, panel title), in the order the stability figure shows them.
STABILITY_METRICS: list[tuple[str, str]] = [
    ("entropy/mean", "entropy (token mean)"),
    ("grad/norm", "gradient norm (before clipping)"),
    ("grad/pg", "‖∇ policy-gradient term‖ (1st micro-batch)"),
    ("grad/aux", "‖∇ auxiliary term‖ (1st micro-batch)"),
    ("grad/kl", "‖∇ KL term‖ (1st micro-batch)"),
    ("grad/entropy", "‖∇ entropy term‖ (1st micro-batch)"),
    ("reward/std_in_group", "reward std within groups"),
    ("loss/kl", "KL to reference (k3)"),
    ("gap/mean", "teacher–student gap Δ (mean)"),
    ("gap/abs_mean", "|Δ| (mean): how far the teacher is"),
    ("gap/q10", "Δ, 10th percentile of tokens"),
    ("gap/q90", "Δ, 90th percentile of tokens"),
    ("gate/mean", "gate mean"),
    ("gate/active_ratio", "gate active ratio (g > 0.5)"),
    ("gate/q10", "gate, 10th percentile of tokens"),
    ("gate/q90", "gate, 90th percentile of tokens"),
]
GAP_BY_TURN = "gap/by_turn"
# shares and gates in [0, 1]: drawn on that scale, not zoomed (a gate stuck at 0.5 must look so)
UNIT_RANGE = ("gate/mean", "gate/active_ratio", "gate/q10", "gate/q90")
PANELS_PER_ROW = 4
FORMATS = ("png", "pdf")


# ---- the curves as tables --------------------------------------------------------------------
def load_eval_curves(results_dir: Path) -> pd.DataFrame:
    """One row per (finished run, evaluation, label): model, env, label, seed, step, value of
    the env's headline metric. Failed runs are left out, as in the table."""
    records = []
    for run in finished_runs(results_dir):
        if run.failed:
            continue
        env = run.spec["env"]
        headline = headline_metric(env)
        for row in read_jsonl(run.path / "eval.jsonl"):
            if headline in row and row.get("panel", "test") == "test":  # what the table reports
                records.append(
                    {
                        "model": run.spec["model"],
                        "env": env,
                        "label": run.row_label(row["label"]),
                        "seed": run.spec["seed"],
                        "step": row["step"],
                        "value": row[headline],
                    }
                )
    return pd.DataFrame.from_records(records)


def load_training_curves(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished runs' ``metrics.jsonl``: one row per (run, step) with the stability
    metrics, and one row per (run, step, turn index) with that turn's mean gap. Failed runs
    are kept: their diagnostics up to the failure are what explains it."""
    steps, turns = [], []
    for run in finished_runs(results_dir):
        keys = {
            "model": run.spec["model"],
            "env": run.spec["env"],
            "label": run.train_label,
            "seed": run.spec["seed"],
        }
        for row in read_jsonl(run.path / "metrics.jsonl"):
            metrics = {name: row[name] for name, _ in STABILITY_METRICS if name in row}
            steps.append({**keys, "step": row["step"], **metrics})
            for turn, gap in _turn_items(row.get(GAP_BY_TURN)):
                turns.append({**keys, "step": row["step"], "turn": turn, "gap": gap})
    return pd.DataFrame.from_records(steps), pd.DataFrame.from_records(turns)


def _turn_items(by_turn: object) -> list[tuple[int, float]]:
    """``gap/by_turn`` as (turn index, gap) pairs: the trainer logs a dict whose keys JSON
    turned into strings; a list (one value per turn index) is accepted too."""
    if isinstance(by_turn, dict):
        return [(int(turn), float(gap)) for turn, gap in by_turn.items()]
    if isinstance(by_turn, list):
        return [(turn, float(gap)) for turn, gap in enumerate(by_turn) if gap is not None]
    return []


def stability_panels(steps: pd.DataFrame, turns: pd.DataFrame) -> list[str]:
    """The metrics the stability figure shows: those that some run logged (with a number)."""
    panels = [name for name, _ in STABILITY_METRICS if name in steps and steps[name].notna().any()]
    return panels + ([GAP_BY_TURN] if not turns.empty else [])


# ---- drawing ---------------------------------------------------------------------------------
def _colours(labels: list[str]) -> dict[str, str]:
    """One colour per label, fixed across all figures of a results directory."""
    palette = [f"C{i}" for i in range(10)]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _draw_band(ax: Axes, frame: pd.DataFrame, x: str, y: str, colours: dict[str, str]) -> None:
    """Per label: the mean over seeds of ``y`` at each ``x``, with a min–max band."""
    for label in sorted(frame["label"].unique(), key=row_order_key):
        # Average within a run first (gap per turn has one value per step), then over seeds.
        rows = frame[frame["label"] == label]
        per_seed = rows.groupby(["seed", x])[y].mean()
        spread = per_seed.groupby(level=x).agg(["mean", "min", "max"]).dropna()
        if spread.empty:
            continue
        colour = colours.get(label, "C0")
        n = rows["seed"].nunique()
        ax.plot(spread.index, spread["mean"], color=colour, label=f"{label} (n={n})", marker=".")
        ax.fill_between(spread.index, spread["min"], spread["max"], color=colour, alpha=0.2)


def common_seeds(evals: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the seeds every label has, and how the title names them.

    Runs of two methods with the same seed share the warm start and the evaluation noise, so a
    trained method's step-0 evaluation equals Vanilla's with that seed; averaged over different
    seed sets (a method with one seed finished, Vanilla with two) they differ by the seeds'
    spread. Every line is therefore drawn over the seeds common to all of them; where no seed is
    common, each line keeps its own (the legend's n says how many) and the title says so.
    """
    per_label = [set(group) for _, group in evals.groupby("label")["seed"]]
    common = set.intersection(*per_label) if per_label else set()
    every = set.union(*per_label) if per_label else set()
    if not common:
        return evals, "each line's own seeds (no seed common to all)"
    shown = ", ".join(str(s) for s in sorted(common))
    if common == every:
        return evals, f"seeds {shown}"
    return evals[evals["seed"].isin(common)], f"seeds {shown} (those every line has)"


def plot_validation(evals: pd.DataFrame, env: str, model: str, colours: dict[str, str]) -> Figure:
    """The headline metric on the evaluation panel vs step, one line per label."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    evals, seeds_note = common_seeds(evals)
    # A method that does not train (Vanilla, Skill-Prompt*) has one evaluation, at step 0: a
    # dashed level across the plot, where a single point would hide under the other curves.
    n_steps = evals.groupby("label")["step"].nunique()
    for label in sorted(n_steps[n_steps == 1].index, key=row_order_key):
        rows = evals[evals["label"] == label]
        colour = colours.get(label, "C0")
        n = rows["seed"].nunique()
        ax.axhline(
            rows["value"].mean(),
            color=colour,
            linestyle="--",
            label=f"{label} (no training, n={n})",
        )
    _draw_band(ax, evals[evals["label"].map(n_steps) > 1], "step", "value", colours)
    headline = {c.metric: c.title for c in env_columns(env)}[headline_metric(env)]
    ax.set(xlabel="training step", ylabel=f"{ENV_TITLES.get(env, env)} {headline} (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"{ENV_TITLES.get(env, env)} test panel, {model}\nmean over {seeds_note}, band min–max",
        fontsize="medium",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_stability(
    steps: pd.DataFrame, turns: pd.DataFrame, env: str, model: str, colours: dict[str, str]
) -> Figure | None:
    """One panel per logged diagnostic vs step, plus the mean gap per turn index."""
    panels = stability_panels(steps, turns)
    if not panels:
        return None
    n_rows = math.ceil(len(panels) / PANELS_PER_ROW)
    n_cols = min(len(panels), PANELS_PER_ROW)
    fig = Figure(figsize=(3.6 * n_cols, 2.9 * n_rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    titles = dict(STABILITY_METRICS)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        if name == GAP_BY_TURN:
            _draw_band(ax, turns, "turn", "gap", colours)
            ax.set(title="gap Δ by turn index (mean over steps)", xlabel="turn index")
            ax.axhline(0.0, color="grey", linewidth=0.8)
        else:
            _draw_band(ax, steps[steps[name].notna()], "step", name, colours)
            ax.set(title=titles[name], xlabel="training step")
            if name in UNIT_RANGE:
                ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize("medium")
        ax.grid(alpha=0.3)
    # One legend for all panels: a label may be missing from some (a gate only SDAR logs).
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=6)
    fig.suptitle(f"{ENV_TITLES.get(env, env)} training stability, {model} (band min–max)")
    return fig


def _slug(text: str) -> str:
    """A model name safe in a file name: "Qwen/Qwen2.5-3B-Instruct" → "Qwen-Qwen2.5-3B-Instruct"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _save(fig: Figure, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = stem.parent / f"{stem.name}.{fmt}"  # not with_suffix: "Qwen2.5" has a dot
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def _select(frame: pd.DataFrame, model: str, env: str) -> pd.DataFrame:
    """The rows of one (model, env); an empty frame (no columns) stays as it is."""
    if frame.empty:
        return frame
    return frame[(frame["model"] == model) & (frame["env"] == env)]


def write_plots(results_dir: Path) -> list[Path]:
    """Draw every (model, env) of the finished runs; return the files written."""
    evals = load_eval_curves(results_dir)
    steps, turns = load_training_curves(results_dir)
    if evals.empty and steps.empty:
        return []
    out = results_dir / "plots"
    out.mkdir(exist_ok=True)
    labels = {*evals.get("label", []), *steps.get("label", [])}
    colours = _colours(sorted(labels, key=row_order_key))
    pairs: set[tuple[str, str]] = set()
    for frame in (evals, steps):
        if not frame.empty:
            pairs |= set(zip(frame["model"], frame["env"], strict=True))
    written: list[Path] = []
    for model, env in sorted(pairs, key=lambda pair: (pair[0], env_order(pair[1]))):
        name = f"{env}_{_slug(model)}"
        run_evals = _select(evals, model, env)
        if not run_evals.empty:
            figure = plot_validation(run_evals, env, model, colours)
            written += _save(figure, out / f"validation_{name}")
        run_steps = _select(steps, model, env)
        if not run_steps.empty:
            figure = plot_stability(run_steps, _select(turns, model, env), env, model, colours)
            if figure is not None:
                written += _save(figure, out / f"stability_{name}")
    return written
