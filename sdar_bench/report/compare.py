"""Paired comparisons of every method against a baseline (``sdar-bench compare``, the table's Δ).

For each (model, env, method label ≠ baseline, metric, final | best) of a results folder: the
number of pairs n, the mean paired difference Δ = A − baseline, its 95% interval, a paired
sign-flip p-value and rliable's probability of improvement P(A > baseline). The statistics are
``sdar_bench.report.stats``; this module only decides what is paired with what:

* runs pair by seed when everything that decides what a seed means is the same
  (``RunRecord.pairing_key``: warm start, env settings, evaluation, panel, model, policy);
* within a pair the tasks of the test panel pair too, where both runs have per-episode records
  of the reported evaluation on the same task list (``pairing: task``); otherwise the pair is
  the two runs' summary numbers (``pairing: seed``; runs written by 0.1.0);
* a method with no run that pairs with a baseline run is compared unpaired (Welch's interval on
  the seed-level numbers, no p-value; ``pairing: unpaired``), and says so;
* a multitask row ("SDAR (multitask)", one per env of the mix) is compared only with the
  baseline trained on the same mix ("GRPO (multitask)"), never with a single-env run: their
  starts differ (vocabulary, warm start, training distribution), so a seed is not a pair, and
  "multitask vs single-env" is another question than "method vs baseline".

``power`` uses the same pairs to estimate how small a difference the folder's seeds × panel
can detect, and what it would take to detect a given one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

from sdar_bench.report import stats
from sdar_bench.report.columns import headline_metric
from sdar_bench.report.results import ResultsError, ResultsFolder, RunRecord, check_settings

WHICH = ("final", "best")
MULTITASK = " (multitask)"  # the label suffix of a multitask run's rows (trainer.row_label)
METRIC_RANGE = (0.0, 100.0)  # every reported metric is a percentage (success, EM, score × 100)
JSON_KEYS = (
    "model", "env", "method", "baseline", "metric", "which", "n", "delta", "ci_low", "ci_high",
    "p_value", "prob_improvement",
)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One row of ``sdar-bench compare``; ``method`` and ``baseline`` are table row labels."""

    model: str
    env: str
    method: str
    baseline: str
    metric: str
    which: str
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    prob_improvement: float
    pairing: str  # "task", "seed" or "unpaired"
    n_tasks: int | None = None
    n_baseline: int | None = None  # baseline seeds, when unpaired

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (what bold means in the tables)."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, object]:
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


def baseline_label(runs: Sequence[RunRecord], baseline: str) -> str:
    """The row label of ``baseline``, given as a method name (grpo) or a row label (GRPO)."""
    for run in runs:  # a multitask run's label is the baseline's plus MULTITASK: not this one
        if run.spec.get("method") == baseline and not run.variant and run.member is None:
            return run.train_label
    for run in runs:
        if run.spec.get("method") == baseline and not run.variant:
            return run.train_label.removesuffix(MULTITASK)
    return baseline


def _values(run: RunRecord, which: str, label: str, metric: str) -> float | None:
    row = run.row(which, label)
    if row is None or metric not in row or row[metric] is None:
        return None
    return float(row[metric])


@dataclass(frozen=True)
class _Side:
    """The runs of one row label in one (model, env): seed → run, and the label in result.json."""

    label: str  # the eval label in result.json ("SDAR", "Skill-GRPO*")
    runs: dict[tuple[int, str], RunRecord]  # (seed, pairing key) → run


def _sides(runs: Sequence[RunRecord]) -> dict[tuple[str, str], dict[str, _Side]]:
    """(model, env) → row label → its runs."""
    out: dict[tuple[str, str], dict[str, _Side]] = {}
    for run in runs:
        key = (str(run.spec["model"]), str(run.spec["env"]))
        for label in run.result.get("final", {}):
            row_label = run.row_label(label)
            side = out.setdefault(key, {}).setdefault(row_label, _Side(label, {}))
            side.runs[(int(run.spec["seed"]), run.pairing_key)] = run
    return out


def paired_arrays(
    a: _Side, b: _Side, which: str, metric: str
) -> tuple[list[np.ndarray], list[np.ndarray], str, int | None]:
    """Per pair the values of A and B (per task where both have them, else one number each),
    the pairing level ("task" / "seed") and the tasks per pair."""
    keys = sorted(k for k in a.runs.keys() & b.runs.keys())
    per_task = []
    for key in keys:
        ta = a.runs[key].task_values(which, a.label, metric)
        tb = b.runs[key].task_values(which, b.label, metric)
        if ta is None or tb is None or ta[0] != tb[0]:
            per_task = []
            break
        per_task.append((ta[1], tb[1]))
    if keys and per_task:
        return [x for x, _ in per_task], [y for _, y in per_task], "task", len(per_task[0][0])
    xs, ys = [], []
    for key in keys:
        x = _values(a.runs[key], which, a.label, metric)
        y = _values(b.runs[key], which, b.label, metric)
        if x is not None and y is not None:
            xs.append(np.array([x]))
            ys.append(np.array([y]))
    return xs, ys, "seed", None


def compare_runs(
    folder: ResultsFolder,
    baseline: str = "grpo",
    metric: str | None = None,
    which: Sequence[str] = WHICH,
    *,
    n_boot: int = 4000,
) -> list[Comparison]:
    """Every comparison of the folder's reported runs against ``baseline`` (module docstring).
    ``metric`` None: each env's headline metric. Raises ResultsError on mixed settings."""
    out = []
    for model, env, label, a, against, b, wanted in _pairs_of_sides(folder, baseline, metric):
        for w in which:
            result = _compare(a, b, w, wanted, n_boot)
            if result is not None:
                out.append(Comparison(model, env, label, against, wanted, w, *result))
    return out


def baseline_for(label: str, base: str) -> str:
    """The row ``label`` is compared with: the baseline trained on the same mix for a multitask
    row (whose label may go on with parameters: "SDAR (multitask) [beta=5.0]"), else ``base``."""
    return base + MULTITASK if MULTITASK in label else base


def _pairs_of_sides(
    folder: ResultsFolder, baseline: str, metric: str | None
) -> Iterator[tuple[str, str, str, _Side, str, _Side, str]]:
    """Every (model, env, label, its runs, baseline label, the baseline's runs, metric) that
    ``compare`` and ``power`` look at. Raises ResultsError on mixed settings."""
    runs = folder.reported
    check_settings(runs)
    base = baseline_label(runs, baseline)
    for (model, env), sides in sorted(_sides(runs).items()):
        wanted = metric or headline_metric(env)
        for label, a in sides.items():
            # A multitask row is compared with the baseline trained on the same mix, never with
            # the single-env baseline (a different start: see results.multitask_members).
            against = baseline_for(label, base)
            if label == against or against not in sides:
                continue
            yield model, env, label, a, against, sides[against], wanted


def _compare(a: _Side, b: _Side, which: str, metric: str, n_boot: int) -> tuple | None:
    xs, ys, pairing, n_tasks = paired_arrays(a, b, which, metric)
    if xs:
        p = stats.compare_paired(xs, ys, n_boot=n_boot, bounds=value_bounds(xs + ys))
        return (
            p.n, p.delta, p.ci_low, p.ci_high, p.p_value, p.prob_improvement, pairing, n_tasks, None
        )  # fmt: skip
    # No pair: Welch on the seed-level numbers, said as such.
    x = [v for r in a.runs.values() if (v := _values(r, which, a.label, metric)) is not None]
    y = [v for r in b.runs.values() if (v := _values(r, which, b.label, metric)) is not None]
    if not x or not y:
        return None
    delta, half = welch(np.array(x), np.array(y))
    span = METRIC_RANGE[1] - METRIC_RANGE[0]
    low, high = max(delta - half, -span), min(delta + half, span)
    prob = stats.prob_improvement(np.array(x), np.array(y))
    return (len(x), delta, low, high, math.nan, prob, "unpaired", None, len(y))


def value_bounds(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """The range the statistics may assume: 0–100, widened for the weighted per-task values of
    an average over groups (``episode_values`` of ``em/avg``), whose mean stays within 0–100."""
    top = max((float(v.max()) for v in values if len(v)), default=METRIC_RANGE[1])
    return METRIC_RANGE[0], max(METRIC_RANGE[1], top)


def welch(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """mean(x) − mean(y) and the half-width of Welch's interval (NaN with one value a side)."""
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, 0.0
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return diff, float(scipy_stats.t.ppf(0.5 + level / 2, dof) * se)


# ---- power -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerRow:
    """How much a (model, env, method vs baseline) comparison of this folder can resolve."""

    model: str
    env: str
    method: str
    baseline: str
    metric: str
    seeds: int
    tasks: int
    sd_between: float  # between-seed sd of the paired difference, beyond task noise
    sd_within: float  # per-task sd of the paired difference within a seed
    eval_noise: float  # sd of one evaluation's success from task sampling alone (one method)
    detectable: float  # smallest |Δ| detected with 80% power at this folder's seeds × tasks
    seeds_for_target: int | None  # seeds needed for ``target`` at this panel size
    target: float
    grid: dict[str, float]  # "seeds×tasks" → detectable |Δ|

    def as_dict(self) -> dict[str, object]:
        return {k: _plain(v) for k, v in asdict(self).items()}


GRID_SEEDS = (3, 5, 10, 20)
GRID_PANEL_FACTORS = (0.5, 1, 2, 4)


def power_rows(
    folder: ResultsFolder, baseline: str = "grpo", metric: str | None = None, target: float = 3.0
) -> list[PowerRow]:
    """From the folder as a pilot: per comparison with per-episode records on ≥ 2 seeds, the
    variance components of the paired difference and what they imply (module docstring)."""
    out = []
    for model, env, label, a, base, b, wanted in _pairs_of_sides(folder, baseline, metric):
        xs, ys, pairing, tasks = paired_arrays(a, b, "final", wanted)
        if pairing != "task" or len(xs) < 2 or not tasks:
            continue
        between, within = stats.variance_components(xs, ys)
        one = np.concatenate(ys)  # the baseline's per-task values, all seeds
        noise = float(one.std(ddof=1) / math.sqrt(tasks)) if len(one) > 1 else math.nan
        grid = {
            f"{s}×{max(1, round(tasks * f))}": stats.detectable_difference(
                between, within, s, max(1, round(tasks * f))
            )
            for s in GRID_SEEDS
            for f in GRID_PANEL_FACTORS
        }
        out.append(
            PowerRow(
                model,
                env,
                label,
                base,
                wanted,
                len(xs),
                tasks,
                math.sqrt(between),
                math.sqrt(within),
                noise,
                stats.detectable_difference(between, within, len(xs), tasks),
                stats.seeds_needed(target, between, within, tasks),
                target,
                grid,
            )  # fmt: skip
        )
    return out


__all__ = [
    "Comparison",
    "JSON_KEYS",
    "PowerRow",
    "ResultsError",
    "compare_runs",
    "power_rows",
    "welch",
]
