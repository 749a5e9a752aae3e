"""Flag a training run that shows the signature of a GRPO collapse.

A collapsing group-relative run loses its learning signal and its stability at the same time:

* the **reward std within groups** falls: the G copies of a task end alike, so GRPO's
  advantage ``(r − mean) / std`` is zero for most groups and the policy gradient vanishes;
* the **token entropy** falls: the policy has become (nearly) deterministic, so sampling no
  longer explores and the groups stay uniform;
* the **gradient norm spikes**: the few tokens that still carry an advantage, or the KL and
  auxiliary terms on tokens whose probability is now tiny, produce very large gradients
  (the logged norm is the one before clipping).

One of these alone is common in healthy training (entropy drifts down as a policy improves;
groups become uniform once a task is solved; single large gradients happen), so the detector
only flags a run where all three happen together. It compares an early window of the run's
``metrics.jsonl`` rows with a late window; the thresholds are heuristics chosen to sit well
outside the step-to-step noise of a healthy run, not values calibrated on paper-scale runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REWARD_STD = "reward/std_in_group"
ENTROPY = "entropy/mean"
GRAD_NORM = "grad/norm"

WINDOW_FRACTION = 1 / 3
"""Each window is this share of the run's steps (rounded up): long enough to average out a
single noisy step, short enough that the early window is still the run's starting behaviour."""

MIN_STEPS = 6
"""Fewer logged steps than this give windows of one or two rows: too noisy to call a collapse."""

STD_DROP_RATIO = 0.5
"""The late mean of the in-group reward std must be at most this share of the early mean. A
halving is far larger than its step-to-step noise (a mean over all groups of a step)."""

ENTROPY_DROP_RATIO = 0.5
"""The late mean entropy must be at most this share of the early mean. Healthy RL fine-tuning
lowers the entropy slowly; halving it within one run means the policy turned deterministic."""

GRAD_SPIKE_RATIO = 5.0
"""The late maximum of the gradient norm must be at least this multiple of the early median.
The median ignores an early outlier; healthy runs stay within about twice their early norm."""


@dataclass(frozen=True)
class CollapseVerdict:
    """Whether a run looks collapsed, and the numbers that decided it (in words)."""

    flagged: bool
    reason: str


def detect_collapse(
    metrics_rows: Sequence[dict[str, Any]],
    *,
    window_fraction: float = WINDOW_FRACTION,
    min_steps: int = MIN_STEPS,
    std_drop_ratio: float = STD_DROP_RATIO,
    entropy_drop_ratio: float = ENTROPY_DROP_RATIO,
    grad_spike_ratio: float = GRAD_SPIKE_RATIO,
) -> CollapseVerdict:
    """Judge one run from its ``metrics.jsonl`` rows (one dict per training step, in order).

    Flagged iff, comparing the last ``window_fraction`` of the steps with the first:
    mean in-group reward std ≤ ``std_drop_ratio`` × its early mean, and mean entropy ≤
    ``entropy_drop_ratio`` × its early mean, and max gradient norm ≥ ``grad_spike_ratio`` ×
    its early median. The reason always says which test decided the verdict.
    """
    series: dict[str, list[float]] = {}
    for name in (REWARD_STD, ENTROPY, GRAD_NORM):
        values = [_as_float(row.get(name)) for row in metrics_rows]
        series[name] = [v for v in values if math.isfinite(v)]
        if not series[name]:
            return CollapseVerdict(False, f"not judged: {name} was not logged")

    n_steps = min(len(values) for values in series.values())
    if n_steps < min_steps:
        return CollapseVerdict(
            False, f"not judged: {n_steps} logged steps, fewer than the {min_steps} needed"
        )
    window = math.ceil(window_fraction * n_steps)

    def early(name: str) -> list[float]:
        return series[name][:window]

    def late(name: str) -> list[float]:
        return series[name][-window:]

    std_early, std_late = statistics.fmean(early(REWARD_STD)), statistics.fmean(late(REWARD_STD))
    ent_early, ent_late = statistics.fmean(early(ENTROPY)), statistics.fmean(late(ENTROPY))
    grad_early, grad_late = statistics.median(early(GRAD_NORM)), max(late(GRAD_NORM))

    # A quantity that starts at 0 cannot "fall"; one that is 0 early spikes from nothing, which
    # is still a spike (the ratio is infinite).
    std_fell = std_early > 0 and std_late <= std_drop_ratio * std_early
    entropy_fell = ent_early > 0 and ent_late <= entropy_drop_ratio * ent_early
    grad_ratio = grad_late / grad_early if grad_early > 0 else math.inf
    grad_spiked = grad_late > 0 and grad_ratio >= grad_spike_ratio

    reason = (
        f"reward std in group {std_early:.3g} → {std_late:.3g}, "
        f"entropy {ent_early:.3g} → {ent_late:.3g}, "
        f"grad norm late max {grad_late:.3g} vs early median {grad_early:.3g} (×{grad_ratio:.3g})"
    )
    failed = [
        name
        for name, ok in (
            ("reward std did not fall", std_fell),
            ("entropy did not fall", entropy_fell),
            ("grad norm did not spike", grad_spiked),
        )
        if not ok
    ]
    if failed:
        return CollapseVerdict(False, f"healthy ({'; '.join(failed)}): {reason}")
    return CollapseVerdict(True, reason)


def _as_float(value: object) -> float:
    """A logged number as float; anything else (missing, None, text) as NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)
