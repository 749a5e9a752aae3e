"""Tests of sdar_bench.report.stats: hand-computed examples, calibration on simulated
benchmark data, bounds, power analysis, input errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from sdar_bench.report.stats import (
    aggregate_iqm,
    aggregate_prob_improvement,
    compare_paired,
    detectable_difference,
    iqm,
    mean_interval,
    prob_improvement,
    seeds_needed,
    sign_flip_pvalue,
    variance_components,
)

# ---- a simulated benchmark ------------------------------------------------------------------
# Gauss–Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(60)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


@dataclass(frozen=True)
class Dataset:
    a: np.ndarray  # [S, J] per-task success of A, 0 or 100
    b: np.ndarray  # [S, J]
    true_delta: float  # E over seeds and episodes of mean_j (a − b), on this panel
    true_mean_a: float  # E over seeds and episodes of mean_j a


def simulate(
    rng: np.random.Generator,
    seeds: int = 5,
    tasks: int = 48,
    *,
    effect: float = 0.3,  # A's advantage on the logit scale
    sd_difficulty: float = 1.5,  # task difficulty, drawn once per dataset (the panel)
    sd_seed_shared: float = 0.5,  # the seed's warm start, common to A and B
    sd_seed_method: float = 0.3,  # how a method's training on this seed went
    sd_seed_task: float = 0.8,  # which tasks this seed's warm start can do, common to A and B
    sd_method_task: float = 0.3,  # A helps some tasks more than others (fixed per panel)
) -> Dataset:
    """One benchmark result: S seeds of A and B on a panel of J tasks, one episode each.

    logit P(success of method m, seed s, task j) = θ_j + g_mj + effect·[m = A] + u_s + v_ms
    + w_sj. θ and g define the panel (drawn once); u, v, w are redrawn with every seed. The
    truth is conditional on the panel, the quantity a researcher re-running seeds would
    converge to: E[σ(η + Z)], Z ~ N(0, sd_u² + sd_v² + sd_w²), by Gauss–Hermite quadrature.
    """
    theta = rng.normal(0.0, sd_difficulty, tasks)  # [J]
    fixed = theta[None, :] + rng.normal(0.0, sd_method_task, (2, tasks))  # [2, J]: A, B
    fixed[0] += effect
    u = rng.normal(0.0, sd_seed_shared, seeds)  # [S]
    v = rng.normal(0.0, sd_seed_method, (2, seeds))  # [2, S]
    w = rng.normal(0.0, sd_seed_task, (seeds, tasks))  # [S, J]
    logit = fixed[:, None, :] + u[None, :, None] + v[:, :, None] + w[None, :, :]  # [2, S, J]
    success = 100.0 * (rng.random(logit.shape) < special.expit(logit))  # [2, S, J]
    sd_random = math.sqrt(sd_seed_shared**2 + sd_seed_method**2 + sd_seed_task**2)
    p = special.expit(fixed[:, :, None] + sd_random * _GH_NODES) @ _GH_WEIGHTS  # [2, J]
    return Dataset(
        a=success[0],
        b=success[1],
        true_delta=float(100.0 * (p[0] - p[1]).mean()),
        true_mean_a=float(100.0 * p[0].mean()),
    )


def welch_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The unpaired alternative: Welch's t interval on the seed means of A and B."""
    ma, mb = a.mean(axis=1), b.mean(axis=1)  # [S]
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)
    df = (va + vb) ** 2 / (va**2 / (len(ma) - 1) + vb**2 / (len(mb) - 1))
    half = stats.t.ppf((1 + level) / 2, df) * math.sqrt(va + vb)
    diff = ma.mean() - mb.mean()
    return diff - half, diff + half


def seed_level(values: list[float]) -> list[np.ndarray]:
    return [np.array([v]) for v in values]


def test_simulated_truth_matches_brute_force_monte_carlo() -> None:
    # Catches a wrong truth (e.g. forgetting a random effect in the quadrature's variance),
    # which would make every calibration number meaningless.
    rng = np.random.default_rng(7)
    data = simulate(rng, seeds=20_000)
    # 20 000 seeds × 48 tasks: Monte Carlo sd of the mean difference < 0.1 points.
    assert data.a.mean() - data.b.mean() == pytest.approx(data.true_delta, abs=0.4)
    assert data.a.mean() == pytest.approx(data.true_mean_a, abs=0.4)


# ---- hand-computed examples -----------------------------------------------------------------
def test_hand_example_all_negative() -> None:
    diffs = [-1.0, -9.4, -1.0, -5.2, -6.3]
    b = [50.0] * 5
    r = compare_paired(seed_level([x + y for x, y in zip(diffs, b, strict=True)]), seed_level(b))
    assert r.n == 5 and r.n_tasks is None
    assert r.delta == pytest.approx(-22.9 / 5, abs=1e-12)  # −4.58
    # Σ|d| = 22.9 is reached only by the all-minus and all-plus patterns; flipping any one
    # value (smallest |d| = 1.0) gives |sum| ≤ 20.9 < 22.9. So p = 2 / 2^5.
    assert r.p_value == 0.0625
    # The interval is the paired t interval up to bootstrap noise: deviations from the mean
    # 3.58, −4.82, 3.58, −0.62, −1.72, Σ² = 52.208, sd = √(52.208/4) = 3.6128;
    # t_{4, 0.975} = 2.7764, half-width 2.7764 · 3.6128 / √5 = 4.486.
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(4.486, rel=0.03)
    assert (r.ci_high + r.ci_low) / 2 == pytest.approx(-4.58, abs=1e-9)
    # Seed means of A are 49, 40.6, 49, 44.8, 43.7 and all of B are 50: A never wins, ties
    # none, so P(A > B) = 0.
    assert r.prob_improvement == 0.0


def test_hand_example_mixed_signs() -> None:
    diffs = np.array([2.1, -1.3, 4.2, 3.5, -0.8])
    # Σ|d| = 11.9 and a pattern whose negative set is N has sum 11.9 − 2·Σ_{N}|d|. The observed
    # N = {1.3, 0.8} has Σ_N = 2.1 and sum 7.7. |sum| ≥ 7.7 needs Σ_N ≤ 2.1 or Σ_N ≥ 9.8:
    #   Σ_N ≤ 2.1: {}, {0.8}, {1.3}, {2.1}, {1.3, 0.8}  (the last two tie the observed value)
    #   Σ_N ≥ 9.8: the complements of those five.
    # 10 of 32 patterns: p = 0.3125. The ties only count with a float tolerance.
    assert sign_flip_pvalue(diffs) == 0.3125
    r = compare_paired(seed_level(list(diffs + 50.0)), seed_level([50.0] * 5))
    assert r.p_value == 0.3125
    assert r.delta == pytest.approx(1.54, abs=1e-12)


def test_sign_flip_edge_cases() -> None:
    assert sign_flip_pvalue(np.zeros(6)) == 1.0
    assert sign_flip_pvalue(np.array([3.0])) == 1.0  # both patterns are as extreme
    with pytest.raises(ValueError):
        sign_flip_pvalue(np.array([]))


def test_sign_flip_monte_carlo_matches_enumeration() -> None:
    # n = 17 takes the Monte Carlo path; enumerate 2^17 patterns here to check it.
    d = np.random.default_rng(3).normal(0.8, 2.0, 17)
    bits = (np.arange(2**17)[:, None] >> np.arange(17)) & 1
    means = ((1 - 2 * bits) * d).mean(axis=1)
    exact = np.mean(np.abs(means) >= abs(d.mean()) - 1e-12)
    assert 0.05 < exact < 0.95  # measured 0.538: not a trivial 0 or 1
    assert sign_flip_pvalue(d, n_resamples=200_000) == pytest.approx(exact, abs=0.004)


def test_prob_improvement_hand_example() -> None:
    # a=[1,2,3], b=[2,2,0]: 1 beats only 0 (1); 2 ties 2 twice (½+½) and beats 0 (1); 3 beats
    # all three (3). Total 6 of 9 pairs.
    assert prob_improvement(np.array([1, 2, 3]), np.array([2, 2, 0])) == pytest.approx(6 / 9)
    assert prob_improvement(np.array([2, 2, 0]), np.array([1, 2, 3])) == pytest.approx(3 / 9)


def test_iqm_hand_example() -> None:
    # 8 values: trim 2 from each end, mean of 2, 3, 4, 5 = 3.5 (the outlier 100 drops out).
    assert iqm(np.array([[5, 0, 100, 3], [1, 6, 2, 4]])) == 3.5


def test_aggregate_iqm_interval() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(50, 10, (5, 12)) + np.linspace(-20, 20, 12)  # [runs, tasks]
    point, low, high = aggregate_iqm(scores)
    assert point == iqm(scores)
    assert low < point < high
    # Stratified: a column that is constant across runs stays constant in every resample, so
    # runs that differ only between tasks give a zero-width interval (a bootstrap mixing
    # columns would not).
    constant_runs = np.tile(np.arange(12.0), (5, 1))
    assert aggregate_iqm(constant_runs) == (iqm(constant_runs),) * 3


def test_aggregate_prob_improvement() -> None:
    a = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])  # [runs, tasks]
    b = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    point, low, high = aggregate_prob_improvement(a, b)
    # Column 0 is the hand example above (6/9), column 1 is always won (1): mean 5/6.
    assert point == pytest.approx((6 / 9 + 1.0) / 2)
    assert 0.0 <= low <= point <= high <= 1.0
    assert low < high
    with pytest.raises(ValueError, match="task columns"):
        aggregate_prob_improvement(a, b[:, :1])


# ---- calibration on simulated benchmarks ----------------------------------------------------
@pytest.fixture(scope="module")
def simulated() -> list[Dataset]:
    # 1000 rather than 200 datasets: the Monte Carlo sd of a coverage is then 0.7 points
    # instead of 1.5, so the 93–97% window tests the method, not the RNG seed.
    rng = np.random.default_rng(0)
    return [simulate(rng) for _ in range(1000)]


def test_paired_interval_is_calibrated_and_beats_welch(simulated: list[Dataset]) -> None:
    covered, paired_width, welch_width = [], [], []
    for data in simulated:
        r = compare_paired(list(data.a), list(data.b))
        assert r.n == 5 and r.n_tasks == 48
        covered.append(r.ci_low <= data.true_delta <= r.ci_high)
        paired_width.append(r.ci_high - r.ci_low)
        low, high = welch_interval(data.a, data.b)
        welch_width.append(high - low)
    coverage = float(np.mean(covered))
    # A percentile bootstrap covers ~0.83 here, a seed-and-task bootstrap with t ~0.999.
    assert 0.93 <= coverage <= 0.97, coverage
    paired, welch = np.array(paired_width), np.array(welch_width)
    assert paired.mean() < 0.85 * welch.mean()  # measured: 24.6 vs 32.1 points
    assert np.mean(paired < welch) > 0.65  # measured: 0.75


def test_cell_interval_is_calibrated(simulated: list[Dataset]) -> None:
    covered = []
    for data in simulated:
        mean, low, high = mean_interval(list(data.a))
        assert mean == pytest.approx(data.a.mean())
        covered.append(low <= data.true_mean_a <= high)
    assert 0.93 <= float(np.mean(covered)) <= 0.97


def test_single_seed_interval_reflects_task_noise() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(60, 15, 96), rng.normal(55, 15, 96)
    r = compare_paired([a], [b])
    assert r.n == 1 and r.n_tasks == 96
    d = a - b
    # Task bootstrap SE · √(J/(J−1)) ≈ sd(d)/√J, normal critical value.
    half = stats.norm.ppf(0.975) * d.std(ddof=1) / math.sqrt(96)
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half, rel=0.03)
    assert r.p_value == 1.0  # one seed: both sign patterns are as extreme


# ---- degenerate inputs and bounds -----------------------------------------------------------
def test_identical_runs() -> None:
    rng = np.random.default_rng(2)
    runs = [100.0 * (rng.random(48) < 0.6) for _ in range(5)]
    r = compare_paired(runs, [x.copy() for x in runs])
    assert r.delta == 0.0
    assert r.ci_low == r.ci_high == 0.0
    assert r.p_value == 1.0
    assert r.prob_improvement == 0.5


def test_one_seed_level_value() -> None:
    mean, low, high = mean_interval([np.array([42.0])])
    assert mean == 42.0 and math.isnan(low) and math.isnan(high)
    r = compare_paired([np.array([42.0])], [np.array([40.0])])
    assert r.delta == 2.0 and math.isnan(r.ci_low) and math.isnan(r.ci_high)


def test_single_seed_binary_cell_is_wilson() -> None:
    # Wilson, p̂ = 0.5, n = 48, z = 1.95996: centre 0.5, half-width
    # z/(1 + z²/n) · √(p̂(1−p̂)/n + z²/(4n²)) = 1.81473 · 0.075002 = 0.136107.
    cell = mean_interval([np.array([100.0] * 24 + [0.0] * 24)])
    assert cell == pytest.approx((50.0, 36.389, 63.611), abs=1e-3)
    # All successes: (1 − z²/(2n)… ) gives a lower end of 92.59%, the upper end exactly 100.
    mean, low, high = mean_interval([np.full(48, 100.0)])
    assert mean == 100.0 and high == 100.0 and low == pytest.approx(92.590, abs=1e-3)


def test_replayed_seeds_count_as_one_for_the_interval() -> None:
    """Three seeds that are one run played again (deterministic evaluation, as greedy Search-QA
    of an untrained policy): the seed bootstrap would give a zero-width interval and call any Δ
    certain; they get the single seed's (task-noise) interval instead."""
    rng = np.random.default_rng(3)
    a, b = 100.0 * (rng.random(96) < 0.12), 100.0 * (rng.random(96) < 0.16)
    replayed = compare_paired([a] * 3, [b] * 3)
    once = compare_paired([a], [b])
    assert replayed.n == 3 and replayed.delta == pytest.approx(once.delta)
    assert (replayed.ci_low, replayed.ci_high) == (once.ci_low, once.ci_high)
    assert replayed.ci_high - replayed.ci_low > 5.0  # not a point: 96 tasks are noisy
    # A cell likewise: Wilson over one seed's 96 tasks
    assert mean_interval([a] * 3) == mean_interval([a])
    # Seeds that differ task by task keep the seed bootstrap, even with equal means
    swapped = np.roll(a, 1)
    assert mean_interval([a, swapped, a]) == (a.mean(), a.mean(), a.mean())


def test_cells_never_leave_bounds() -> None:
    # Five replays of one all-success run: one seed's Wilson interval, ending exactly at 100
    mean, low, high = mean_interval([np.full(48, 100.0)] * 5)
    assert mean == 100.0 and high == 100.0 and low == pytest.approx(92.590, abs=1e-3)
    # Four seeds at 100 and one at 40: mean 88, the t interval reaches past 100 unclipped.
    mean, low, high = mean_interval(seed_level([100, 100, 100, 100, 40]))
    assert mean == 88.0 and high == 100.0 and 0.0 <= low < 88.0
    r = compare_paired(seed_level([100, 100, 100, 100, 40]), seed_level([0, 0, 0, 0, 30]))
    assert r.delta == 82.0 and r.ci_high == 100.0
    # Another metric range: a 0–1 score.
    _, low, high = mean_interval(seed_level([0.01, 0.0, 0.02]), bounds=(0.0, 1.0))
    assert low == 0.0 and high <= 1.0


runs_strategy = st.integers(1, 6).flatmap(
    lambda seeds: st.integers(1, 12).flatmap(
        lambda tasks: st.lists(
            st.lists(st.sampled_from([0.0, 100.0, 37.5, 99.0]), min_size=tasks, max_size=tasks),
            min_size=2 * seeds,
            max_size=2 * seeds,
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(runs_strategy)
def test_intervals_stay_in_range(rows: list[list[float]]) -> None:
    half = len(rows) // 2
    a = [np.array(r) for r in rows[:half]]
    b = [np.array(r) for r in rows[half:]]
    mean, low, high = mean_interval(a, n_boot=200)
    if not math.isnan(low):
        assert 0.0 <= low <= mean <= high <= 100.0
    r = compare_paired(a, b, n_boot=200)
    if not math.isnan(r.ci_low):
        assert -100.0 <= r.ci_low <= r.delta <= r.ci_high <= 100.0
    assert 0.0 < r.p_value <= 1.0
    assert 0.0 <= r.prob_improvement <= 1.0


# ---- input errors ---------------------------------------------------------------------------
def test_mismatched_tasks_name_the_seed() -> None:
    a = [np.zeros(48)] * 3
    b = [np.zeros(48), np.zeros(48), np.zeros(47)]
    with pytest.raises(ValueError, match="seed 2: a has 48 task values, b has 47"):
        compare_paired(a, b)
    with pytest.raises(ValueError, match="seed 2"):
        variance_components(a, b)


def test_other_input_errors() -> None:
    with pytest.raises(ValueError, match="no seeds"):
        compare_paired([], [])
    with pytest.raises(ValueError, match="3 seeds, b has 2"):
        compare_paired([np.zeros(4)] * 3, [np.zeros(4)] * 2)
    with pytest.raises(ValueError, match="seed 1 has 5 values, seed 0 has 4"):
        compare_paired([np.zeros(4), np.zeros(5)], [np.zeros(4), np.zeros(5)])
    with pytest.raises(ValueError, match="outside the metric's range"):
        mean_interval([np.array([0.5, 120.0])])


# ---- variance components and power ----------------------------------------------------------
def test_variance_components_hand_example() -> None:
    # d = [[1, 3], [5, 11]]: seed means 2, 8; task means 3, 7; grand mean 5. Residuals
    # d − m_s − c_j + 5 = [[1, −1], [−1, 1]]: SS 4 on (2−1)(2−1) = 1 df, within = 4.
    # Var(seed means) = (3² + 3²)/1 = 18, between = 18 − 4/2 = 16.
    a = [np.array([1.0, 3.0]), np.array([5.0, 11.0])]
    b = [np.zeros(2), np.zeros(2)]
    assert variance_components(a, b) == pytest.approx((16.0, 4.0))


def test_variance_components_recover_the_simulated_ones() -> None:
    # d = τ_j + b_s + e_sj with a strong task effect τ (sd 30): a one-way estimator would
    # report within ≈ 50² + 30² = 3400 and between ≈ 100 − 900/48 ≈ 81.
    rng = np.random.default_rng(4)
    seeds, tasks = 2000, 48
    tau = rng.normal(0, 30, tasks)
    d = tau + rng.normal(0, 10, (seeds, 1)) + rng.normal(0, 50, (seeds, tasks))  # [S, J]
    between, within = variance_components(list(d + 0.0), list(np.zeros_like(d)))
    assert within == pytest.approx(2500, rel=0.03)
    # sd of the between estimate ≈ (100 + 2500/48)·√(2/1999) ≈ 4.8
    assert between == pytest.approx(100, abs=15)


def test_detectable_difference_matches_normal_formula_with_many_seeds() -> None:
    # Var(Δ̂) = 2500 / (1000·48); with 999 df t ≈ normal: (1.95996 + 0.84162)·0.22822 = 0.63937
    dd = detectable_difference(0.0, 2500.0, 1000, 48)
    assert dd == pytest.approx(0.63937, rel=0.01)
    assert detectable_difference(0.0, 0.0, 5, 48) == 0.0
    assert detectable_difference(10.0, 2500.0, 1, 48) == math.inf


def test_detectable_difference_has_the_stated_power() -> None:
    # A few seeds, where t differs from the normal: simulate the paired t-test at Δ = dd.
    var_between, var_within, seeds, tasks = 40.0, 3000.0, 5, 48
    dd = detectable_difference(var_between, var_within, seeds, tasks)
    sd_seed = math.sqrt(var_between + var_within / tasks)
    m = np.random.default_rng(5).normal(dd, sd_seed, (40_000, seeds))  # [reps, S]
    t = m.mean(axis=1) / (m.std(axis=1, ddof=1) / math.sqrt(seeds))
    rejected = np.abs(t) > stats.t.ppf(0.975, seeds - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_seeds_needed_is_consistent_and_monotone() -> None:
    vb, vw, tasks = 40.0, 3000.0, 48
    previous = math.inf
    for delta in [2.0, 3.0, 5.0, 8.0, 13.0, 21.0]:
        n = seeds_needed(delta, vb, vw, tasks)
        assert n is not None and n <= previous
        previous = n
        assert detectable_difference(vb, vw, n, tasks) <= delta
        if n > 2:
            assert detectable_difference(vb, vw, n - 1, tasks) > delta
    assert seeds_needed(0.1, vb, vw, tasks) is None  # needs more than 1000 seeds
    assert seeds_needed(-13.0, vb, vw, tasks) == seeds_needed(13.0, vb, vw, tasks)


def test_the_exact_standard_error_is_the_limit_of_the_drawn_bootstrap() -> None:
    """Catches a closed form that drifted from the bootstrap it stands for: the ideal bootstrap
    SE of a mean, with the n/(n−1) correction, is s/√n; 20,000 drawn replicates agree within
    their Monte Carlo error (about 0.5% here)."""
    from sdar_bench.report.stats import bootstrap_se

    units = np.array([-1.0, -9.4, -1.0, -5.2, -6.3])
    exact = float(units.std(ddof=1)) / np.sqrt(len(units))  # 1.61567
    assert exact == pytest.approx(1.61567, abs=1e-5)
    assert bootstrap_se(units, 20_000, seed=3) == pytest.approx(exact, rel=0.02)
