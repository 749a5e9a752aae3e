"""Statistics for "is method A better than B, and by how much?": pure numpy/scipy, no I/O.

Data model
----------
Metrics are on a bounded scale, 0–100 by default (success %, EM %, score ×100). A *run* is one
training seed of one method; evaluated on the fixed panel of J tasks it gives a vector of J
per-task values ``x[j]`` (0 or 100 for one episode's success). Runs of A and B with the same seed
form a *pair* (same warm start, same panel), and inside a pair task j of A and task j of B are
the same task. Results without per-task values give one number per seed (a length-1 array);
then J = 1 and everything below still holds, pairing by seed only.

Notation: S paired seeds, d[s, j] = a[s, j] − b[s, j] (shape [S, J]), m[s] = mean_j d[s, j]
(the seed's difference of means), Δ̂ = mean_s m[s].

The interval for Δ (``compare_paired``)
---------------------------------------
S ≥ 2: a cluster bootstrap over seeds. Each of ``n_boot`` replicates draws S seeds with
replacement, keeps each drawn seed's tasks as they are, and averages its m[s]; the interval is

    Δ̂ ± t_{S−1, (1+level)/2} · SE*,   SE* = sd(replicates) · sqrt(S / (S − 1)),

with SE* the ideal bootstrap's (infinitely many replicates), which for a mean is exactly s_m/√S:
it is computed in closed form, so the interval is free of Monte Carlo noise and equals the
paired t interval on the seed differences (the numbers below were measured with drawn
replicates, which agree within their Monte Carlo error),

clipped to [lo − hi, hi − lo]. SE*² ≈ s²_m / S, the usual paired-t variance: the bootstrap's
plug-in variance is (S−1)/S · s²_m / S, which S/(S−1) undoes (the small-sample correction), and
t on S − 1 degrees of freedom is the few-clusters critical value Cameron, Gelbach & Miller (2008)
recommend. Tasks are *not* resampled inside a drawn seed: each m[s] already carries its own
evaluation noise, so resampling seeds reproduces Var(m[s]) = σ²_between + σ²_within / J in full,
and a second, task-level stage counts σ²_within / J twice (Davison & Hinkley 1997, §3.8: with
two-stage data, resample the top level and keep the units). Per-task pairing still matters for
``variance_components`` and for a single seed.

Measured (5 seeds × 48 binary tasks, logit model of ``tests/test_stats.py``: task difficulty
sd 1.5, a seed effect shared by A and B sd 0.5, a per-method seed effect sd 0.3, a seed × task
effect shared by the pair sd 0.8, a method × task effect sd 0.3, Δ = 0.3 logits), coverage of
the 95% interval of the true Δ (the expectation over seeds and episodes on that panel), 1500
datasets per row, bootstrap of 1000:

    variant                                       per-method seed sd   0.3     0.6     1.0
    seed bootstrap, percentile                                         0.825   0.836   0.848
    seed + task (two-stage) bootstrap, percentile                      0.967   0.921   0.893
    two-stage bootstrap, SE·sqrt(S/(S−1)), t(S−1)                      0.999   0.993   0.983
    seed bootstrap, SE, normal critical value                          0.839   0.851   0.857
    seed bootstrap, SE·sqrt(S/(S−1)), t(S−1)   <- chosen               0.949   0.958   0.957

With per-method seed sd 0.3 the chosen interval covers 0.944 with 3 seeds and 0.956 with 10.
In the test suite's 1000 datasets (same model, per-method sd 0.3) it covers 0.944, the cell
interval of A's mean 0.948, and Welch's unpaired interval on seed means 0.991 while being
wider (32.1 vs 24.6 points on average, wider in 75% of the datasets): pairing removes the
seed effect A and B share.
The percentile two-stage bootstrap looks fine in one regime only because its double counting
happens to offset the few-cluster under-coverage; it drifts to 0.89 as seeds differ more.

S = 1 with per-task values: the bootstrap resamples the J paired task differences (same task
indices for A and B) and uses a normal critical value with the J/(J−1) correction. The interval
then measures evaluation noise only: it says nothing about how much another seed would differ.
S = 1 with one seed-level value: no interval (NaN). The p-value is over seeds, so one seed
gives p = 1.

Seeds whose per-task values are identical, every one of them (for a comparison, in both A and
B), are one run played again: the same weights evaluated deterministically, as greedy Search-QA
evaluation of an untrained policy is. Their seed differences have no spread, so the seed
bootstrap would give an interval of width 0 and call any Δ ≠ 0 certain; they count as S = 1 for
the interval (the panel's evaluation noise), while ``n`` still reports every seed.

Other quantities
----------------
* p-value: two-sided sign-flip test over seeds. Under H0 (no difference) each m[s] is
  symmetric about 0, so all 2^S sign patterns ε are equally likely;
  p = #{ε : |mean_s ε_s m[s]| ≥ |Δ̂|} / 2^S (exact for S ≤ 16, else Monte Carlo with
  p = (1 + hits) / (1 + draws)). With 5 seeds the smallest possible p is 2/32 = 0.0625.
* P(A > B) (rliable's probability of improvement) for one task column:
  P(X > Y) = (#{x_i > y_k} + ½ #{x_i = y_k}) / (n·m), the Mann–Whitney U over n·m.
* IQM: the mean of the middle 50% of all values (scipy.stats.trim_mean(x, 0.25)).
* ``aggregate_iqm`` / ``aggregate_prob_improvement``: rliable's stratified bootstrap (runs
  resampled independently inside every task column) with percentile intervals, as rliable
  reports them; with 3–5 runs these intervals are too narrow (see the table above).
* Table cells (``mean_interval``): mean over seeds of per-seed means, with the same seed
  bootstrap and t(S−1) interval as Δ, clipped to the metric's range. A single seed with
  per-task values gets the Wilson score interval when the values are binary (lo or hi: a
  proportion's interval, inside the range and not degenerate at 0% or 100%), else the task
  bootstrap with a normal critical value.
* Variance components (paired per-task data, S ≥ 2, J ≥ 2), from the two-way layout of d:

      within  = Σ_{s,j} (d[s,j] − m[s] − c[j] + d̄)² / ((S−1)(J−1)),   c[j] = mean_s d[s, j]
      between = max(s²_m − within / J, 0),   s²_m = sample variance (ddof 1) of m[s]

  ``within`` is the per-task variance of the paired difference inside a seed, with the task's
  own effect c[j] removed: the panel is the same in every seed, so how much A beats B on task j
  is part of Δ, not noise. Under a one-way model (tasks unrelated across seeds) this is still
  unbiased. E[s²_m] = σ²_between + σ²_within / J gives ``between``.
* Power: Var(Δ̂) = between / S + within / (S·J); the smallest |Δ| that a two-sided paired
  t-test at level α rejects with probability ``power`` solves
  P(|T| > t_{S−1, 1−α/2}) = power for T ~ noncentral t(S − 1, Δ / sqrt(Var(Δ̂))) (exact for
  normal seed means, not the t_{1−α/2} + t_{power} approximation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

__all__ = [
    "Paired",
    "aggregate_iqm",
    "aggregate_prob_improvement",
    "compare_paired",
    "detectable_difference",
    "iqm",
    "mean_interval",
    "prob_improvement",
    "seeds_needed",
    "sign_flip_pvalue",
    "variance_components",
]

# Largest number of values one vectorised bootstrap chunk holds (~64 MB of float64).
_CHUNK = 8_000_000
_EXACT_MAX_SEEDS = 16


@dataclass(frozen=True)
class Paired:
    """A paired comparison of method A against method B; Δ = A − B on the metric's scale."""

    n: int  # number of paired seeds
    n_tasks: int | None  # tasks per seed when per-task values were given, else None
    delta: float  # mean over seeds of (mean over tasks of a − b)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired sign-flip (permutation) test over seeds
    prob_improvement: float  # P(A > B) as rliable defines it, over the seed-level means


# ---- input checks ---------------------------------------------------------------------------
def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    return lo, hi


def _as_runs(values: Sequence[np.ndarray], name: str, bounds: tuple[float, float]) -> np.ndarray:
    """Stack per-seed value arrays into [S, J]; every seed must have the same J."""
    if len(values) == 0:
        raise ValueError(f"{name}: no seeds")
    rows = [np.asarray(v, dtype=float).ravel() for v in values]
    n_tasks = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"{name}: seed {i} has no values")
        if len(row) != n_tasks:
            raise ValueError(
                f"{name}: seed {i} has {len(row)} values, seed 0 has {n_tasks}; every seed must "
                "be evaluated on the same panel (or all be seed-level, one value each)"
            )
        if not np.all(np.isfinite(row)):
            raise ValueError(f"{name}: seed {i} has a non-finite value")
        if row.min() < bounds[0] or row.max() > bounds[1]:
            raise ValueError(
                f"{name}: seed {i} has values in [{row.min():g}, {row.max():g}], outside the "
                f"metric's range {bounds}"
            )
    return np.stack(rows)  # [S, J]


def _paired_runs(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], bounds: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} seeds, b has {len(b)}: pairs need the same seeds")
    if len(a) == 0:
        raise ValueError("no seeds to compare")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        nx, ny = np.asarray(x).size, np.asarray(y).size
        if nx != ny:
            raise ValueError(
                f"seed {i}: a has {nx} task values, b has {ny}; a pair must cover the same tasks"
            )
    return _as_runs(a, "a", bounds), _as_runs(b, "b", bounds)  # [S, J] each


def _replicas(x: np.ndarray) -> bool:
    """Whether the seeds of ``x`` [S, J] (S ≥ 2, J ≥ 2) hold the very same per-task values."""
    return x.shape[0] >= 2 and x.shape[1] >= 2 and bool(np.all(x == x[:1]))


# ---- bootstrap building blocks --------------------------------------------------------------
def _resampled_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the 1-D array ``x``."""
    n = len(x)
    out = np.empty(n_boot)
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))  # [chunk, n]
        out[start:stop] = x[idx].mean(axis=1)
    return out  # [n_boot]


def _t_interval(
    estimate: float, units: np.ndarray, level: float, n_boot: int, seed: int, *, normal: bool
) -> tuple[float, float]:
    """estimate ± crit · SE*, SE* the bootstrap standard error of the mean of the unit means
    ``units`` ([n]) with the n/(n−1) correction.

    SE* is the *ideal* bootstrap's (n_boot → ∞), computed exactly rather than by drawing
    replicates: resampling n units with replacement gives the mean a variance of
    (n−1)/n · s²/n, so SE* = s/√n. No Monte Carlo noise, the same number on every machine, and
    a table cell a reader can check by hand. (``n_boot`` and ``seed`` are kept for the
    signature's sake; the drawn version agrees within its Monte Carlo error, tested.)
    """
    n = len(units)
    se = float(np.std(units, ddof=1)) / math.sqrt(n)
    q = (1.0 + level) / 2.0
    crit = float(stats.norm.ppf(q) if normal else stats.t.ppf(q, n - 1))
    if se == 0.0:
        return estimate, estimate
    return estimate - crit * se, estimate + crit * se


def bootstrap_se(units: np.ndarray, n_boot: int, seed: int) -> float:
    """The drawn bootstrap standard error of the mean of ``units`` with the n/(n−1)
    correction: what ``_t_interval`` computes exactly, for the test that checks it."""
    n = len(units)
    reps = _resampled_means(units, n_boot, np.random.default_rng(seed))
    return float(reps.std(ddof=1)) * math.sqrt(n / (n - 1))


def _clip(lo: float, hi: float, low: float, high: float) -> tuple[float, float]:
    return float(min(max(lo, low), high)), float(min(max(hi, low), high))


def _wilson(p_hat: float, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (on [0, 1])."""
    z = float(stats.norm.ppf((1.0 + level) / 2.0))
    denom = 1.0 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    # At p̂ = 0 or 1 one end is exactly 0 or 1; rounding would leave it a few ulps inside.
    low = 0.0 if p_hat == 0.0 else max(0.0, centre - half)
    high = 1.0 if p_hat == 1.0 else min(1.0, centre + half)
    return low, high


# ---- the paired comparison ------------------------------------------------------------------
def compare_paired(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 100.0),
) -> Paired:
    """Compare A with B over paired seeds: Δ̂, its interval, the sign-flip p-value, P(A > B).

    ``a[i]``, ``b[i]``: the per-task values of seed i (same tasks, same order), or length-1
    arrays (seed-level). The interval is described in the module docstring.
    """
    _check_level(level)
    lo, hi = _check_bounds(bounds)
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    xa, xb = _paired_runs(a, b, (lo, hi))  # [S, J] each
    n_seeds, n_tasks = xa.shape
    d = xa - xb  # [S, J]
    m = d.mean(axis=1)  # [S]
    delta = float(m.mean())

    if n_seeds >= 2 and not (_replicas(xa) and _replicas(xb)):
        low, high = _t_interval(delta, m, level, n_boot, seed, normal=False)
    elif n_tasks >= 2:
        # One seed: only the tasks can be resampled; this is evaluation noise, not seed noise.
        low, high = _t_interval(delta, d[0], level, n_boot, seed, normal=True)
    else:
        low, high = math.nan, math.nan
    if not math.isnan(low):
        low, high = _clip(low, high, lo - hi, hi - lo)

    return Paired(
        n=n_seeds,
        n_tasks=n_tasks if n_tasks > 1 else None,
        delta=delta,
        ci_low=low,
        ci_high=high,
        p_value=sign_flip_pvalue(m, seed=seed),
        prob_improvement=prob_improvement(xa.mean(axis=1), xb.mean(axis=1)),
    )


def mean_interval(
    values: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 100.0),
) -> tuple[float, float, float]:
    """A table cell: (mean over seeds of per-seed means, low, high), inside ``bounds``."""
    _check_level(level)
    lo, hi = _check_bounds(bounds)
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    x = _as_runs(values, "values", (lo, hi))  # [S, J]
    if _replicas(x):  # one run played again: its interval is one seed's
        x = x[:1]
    n_seeds, n_tasks = x.shape
    per_seed = x.mean(axis=1)  # [S]
    mean = float(per_seed.mean())
    if n_seeds >= 2:
        low, high = _t_interval(mean, per_seed, level, n_boot, seed, normal=False)
    elif n_tasks == 1:
        return mean, math.nan, math.nan
    elif np.all((x == lo) | (x == hi)):
        p_lo, p_hi = _wilson((mean - lo) / (hi - lo), n_tasks, level)
        low, high = lo + p_lo * (hi - lo), lo + p_hi * (hi - lo)
    else:
        low, high = _t_interval(mean, x[0], level, n_boot, seed, normal=True)
    low, high = _clip(low, high, lo, hi)
    return mean, low, high


# ---- tests and effect sizes -----------------------------------------------------------------
def sign_flip_pvalue(diffs: np.ndarray, *, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided sign-flip p-value of the mean of paired differences ``diffs`` ([n])."""
    d = np.asarray(diffs, dtype=float).ravel()  # [n]
    n = len(d)
    if n == 0:
        raise ValueError("sign_flip_pvalue: no differences")
    if not np.all(np.isfinite(d)):
        raise ValueError("sign_flip_pvalue: non-finite difference")
    scale = float(np.abs(d).max())
    if scale == 0.0:
        return 1.0
    observed = abs(float(d.mean()))
    # Sign patterns that tie the observed |mean| in exact arithmetic can differ from it by a
    # few ulps after summation; they must count as "at least as extreme".
    tol = 1e-9 * scale
    if n <= _EXACT_MAX_SEEDS:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1  # [2^n, n]
        means = ((1 - 2 * bits) * d[None, :]).mean(axis=1)  # [2^n]
        return float(np.count_nonzero(np.abs(means) >= observed - tol) / 2**n)
    rng = np.random.default_rng(seed)
    hits = 0
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        size = min(step, n_resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))  # [chunk, n]
        hits += int(np.count_nonzero(np.abs((signs * d).mean(axis=1)) >= observed - tol))
    return (1 + hits) / (1 + n_resamples)


def _prob_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + ½ P(X = Y) over the last axis of x ([..., n]) and y ([..., m])."""
    xs, ys = x[..., :, None], y[..., None, :]  # [..., n, 1], [..., 1, m]
    return (xs > ys).mean(axis=(-2, -1)) + 0.5 * (xs == ys).mean(axis=(-2, -1))


def prob_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """rliable's P(A > B) for one task: Mann–Whitney U / (n·m), ties count ½."""
    x = np.asarray(a, dtype=float).ravel()  # [n]
    y = np.asarray(b, dtype=float).ravel()  # [m]
    if len(x) == 0 or len(y) == 0:
        raise ValueError("prob_improvement: both samples need at least one value")
    return float(_prob_greater(x, y))


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all values of ``x``."""
    flat = np.asarray(x, dtype=float).ravel()
    if len(flat) == 0:
        raise ValueError("iqm: no values")
    return float(stats.trim_mean(flat, 0.25))


def _percentile(reps: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _stratified_resample(scores: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` resamples of the runs of ``scores`` ([R, T]), independently per task column."""
    n_runs, n_tasks = scores.shape
    idx = rng.integers(0, n_runs, size=(size, n_runs, n_tasks))  # [size, R, T]
    return scores[idx, np.arange(n_tasks)[None, None, :]]  # [size, R, T]


def _as_score_matrix(scores: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [runs, tasks] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has a non-finite value")
    return x


def aggregate_iqm(
    scores: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """IQM of all entries of ``scores`` ([runs, tasks]) with a stratified percentile interval."""
    _check_level(level)
    x = _as_score_matrix(scores, "scores")  # [R, T]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    step = max(1, _CHUNK // x.size)
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        sample = _stratified_resample(x, size, rng).reshape(size, -1)  # [size, R·T]
        reps[start : start + size] = stats.trim_mean(sample, 0.25, axis=1)
    return (iqm(x), *_percentile(reps, level))


def aggregate_prob_improvement(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over task columns of P(A > B), with a stratified percentile interval.

    ``a`` is [runs_a, tasks], ``b`` is [runs_b, tasks]; column t of both is the same task.
    """
    _check_level(level)
    xa, xb = _as_score_matrix(a, "a"), _as_score_matrix(b, "b")  # [Ra, T], [Rb, T]
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"a has {xa.shape[1]} task columns, b has {xb.shape[1]}")
    point = float(_prob_greater(xa.T, xb.T).mean())  # columns as the leading axis: [T, R]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    step = max(1, _CHUNK // (xa.shape[0] * xb.shape[0] * xa.shape[1]))
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        sa = _stratified_resample(xa, size, rng).transpose(0, 2, 1)  # [size, T, Ra]
        sb = _stratified_resample(xb, size, rng).transpose(0, 2, 1)  # [size, T, Rb]
        reps[start : start + size] = _prob_greater(sa, sb).mean(axis=1)
    return (point, *_percentile(reps, level))


# ---- variance components and power ----------------------------------------------------------
def variance_components(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[float, float]:
    """(between, within): the seed-level and per-task variance of the paired difference.

    ``within`` is the seed × task residual variance of d = a − b (df (S−1)(J−1)); ``between``
    = max(s²_m − within / J, 0) with s²_m the sample variance of the seed means of d. See the
    module docstring for why the task's own effect is removed.
    """
    xa, xb = _paired_runs(a, b, (-math.inf, math.inf))
    d = xa - xb  # [S, J]
    n_seeds, n_tasks = d.shape
    if n_seeds < 2:
        raise ValueError("variance_components needs at least 2 seeds")
    if n_tasks < 2:
        raise ValueError("variance_components needs per-task values (at least 2 tasks per seed)")
    seed_means = d.mean(axis=1)  # [S]
    task_means = d.mean(axis=0)  # [J]
    resid = d - seed_means[:, None] - task_means[None, :] + d.mean()  # [S, J]
    within = float((resid**2).sum() / ((n_seeds - 1) * (n_tasks - 1)))
    between = max(float(seed_means.var(ddof=1)) - within / n_tasks, 0.0)
    return between, within


def _two_sided_power(noncentrality: float, df: int, crit: float) -> float:
    return float(stats.nct.sf(crit, df, noncentrality) + stats.nct.cdf(-crit, df, noncentrality))


def detectable_difference(
    var_between: float,
    var_within: float,
    seeds: int,
    tasks: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest |Δ| a two-sided paired t-test at level ``alpha`` detects with ``power``.

    Uses the noncentral t distribution on seeds − 1 degrees of freedom with
    Var(Δ̂) = var_between / seeds + var_within / (seeds · tasks). One seed: inf (no test).
    """
    if var_between < 0 or var_within < 0:
        raise ValueError("variances must be non-negative")
    if tasks < 1 or seeds < 1:
        raise ValueError("seeds and tasks must be at least 1")
    if not 0.0 < alpha < 1.0 or not alpha < power < 1.0:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    if seeds < 2:
        return math.inf
    se = math.sqrt(var_between / seeds + var_within / (seeds * tasks))
    if se == 0.0:
        return 0.0
    df = seeds - 1
    crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    upper = crit + float(stats.norm.ppf(power)) + 1.0
    while _two_sided_power(upper, df, crit) < power:
        upper *= 2.0
    nc = optimize.brentq(
        lambda x: _two_sided_power(x, df, crit) - power, 0.0, upper, xtol=1e-10, rtol=1e-12
    )
    return float(nc * se)


def seeds_needed(
    delta: float,
    var_between: float,
    var_within: float,
    tasks: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    max_seeds: int = 1000,
) -> int | None:
    """Smallest number of seeds whose ``detectable_difference`` is at most |delta|.

    None when more than ``max_seeds`` would be needed (or delta is 0). At least 2 seeds.
    """
    target = abs(float(delta))
    if target == 0.0 or max_seeds < 2:
        return None

    def detects(n: int) -> bool:
        dd = detectable_difference(var_between, var_within, n, tasks, alpha=alpha, power=power)
        return dd <= target

    if not detects(max_seeds):
        return None
    # The detectable difference falls with every added seed (smaller SE, more df): bisect.
    low, high = 1, max_seeds  # detects(low) is False (one seed tests nothing), detects(high)
    while high - low > 1:
        mid = (low + high) // 2
        if detects(mid):
            high = mid
        else:
            low = mid
    return high
