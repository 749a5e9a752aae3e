"""RLSD: GRPO whose advantage is reshaped per token by the skill-aware teacher (SPEC §4).

    A   = GRPO's group-normalised advantage (SPEC §2)
    w   = weight·(1 − step/decay_steps) while step < decay_steps, else 0
    Â_t = A·[(1 − w) + w·clip(exp(sign(A)·(teach_t − old_t)), 1 − ε_w, 1 + ε_w)]
    L   = L_GRPO with Â in place of A

For A > 0 tokens the teacher likes more than the rollout policy did get a larger share of the
credit; for A < 0 tokens the teacher likes get a smaller share of the blame. The reshaping fades
out linearly over the first ``decay_steps`` steps. The mean reshaping factor of the last
``advantages`` call is logged by ``loss`` as ``rlsd/weight`` (and w itself as ``rlsd/w``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from sdar_bench.objectives import TeacherParams, gap_metrics, grpo_terms, teacher_gap
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView, agg


class RLSD(Method):
    """GRPO with teacher-reshaped per-token advantages, annealed to plain GRPO."""

    class Params(TeacherParams):
        eps_w: float = Field(0.2, gt=0, lt=1)
        """ε_w in (0, 1), clip range of the teacher's evidence factor exp(±(teach − old))
        (SPEC 0.2)."""
        weight: float = Field(0.5, ge=0, le=1)
        """Initial mixing weight w in [0, 1] of the reshaped advantage (SPEC 0.5)."""
        decay_steps: int = Field(100, ge=0)
        """w decays linearly to 0 over this many steps and stays 0 after (SPEC 100; 0: plain
        GRPO from the start)."""

    name = "rlsd"
    label = "RLSD"
    description = "GRPO with per-token advantages reshaped by the skill-aware teacher."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._w: float | None = None  # w of the last advantages() call, for the metrics
        self._factor_mean: float | None = None  # mean reshaping factor of that call

    def mixing_weight(self, step: int) -> float:
        p = self.params
        return p.weight * (1.0 - step / p.decay_steps) if step < p.decay_steps else 0.0

    def advantages(
        self, view: TokenView, rewards: torch.Tensor, group_ids: torch.Tensor, step: int
    ) -> torch.Tensor:
        p = self.params
        assert view.teacher_logp is not None and view.old_logp is not None
        adv = super().advantages(view, rewards, group_ids, step)  # [B, T], 0 on padding
        w = self.mixing_weight(step)
        evidence = torch.exp(torch.sign(adv) * (view.teacher_logp - view.old_logp))  # [B, T]
        factor = (1.0 - w) + w * evidence.clamp(1.0 - p.eps_w, 1.0 + p.eps_w)  # [B, T], > 0
        self._w, self._factor_mean = w, agg(factor, view.mask).item()
        return adv * factor  # [B, T]

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        terms, metrics = grpo_terms(view, self.params)  # view.advantages already reshaped
        metrics["loss/aux"] = 0.0
        if view.teacher_logp is not None:
            metrics |= gap_metrics(teacher_gap(view), None, view.mask)
        if self._factor_mean is not None:
            metrics |= {"rlsd/weight": self._factor_mean, "rlsd/w": float(self._w or 0.0)}
        return terms, metrics
