"""OPSD: on-policy self-distillation alone, no RL term (SPEC §4).

    Δ_t = teach_t − sg(logp_t)
    g_t = sg(σ(β·Δ_t))
    L   = λ·Agg(g_t·(teach_t − logp_t)) + c_kl·Agg(kl) − c_ent·Agg(H)

The rewards and advantages play no part in the loss: the student is pulled only towards the
tokens the skill-aware teacher endorses. Gate and defaults (λ 0.01, β 5) as released.
"""

from __future__ import annotations

import torch
from pydantic import Field

from sdar_bench.objectives import (
    TeacherParams,
    approx_kl,
    gap_metrics,
    regulariser_terms,
    teacher_gap,
)
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView, agg


class OPSD(Method):
    """Gated sampled-token distillation towards the skill-aware teacher, without a pg term."""

    class Params(TeacherParams):
        coef: float = Field(0.01, ge=0)
        """λ ≥ 0, weight of the distillation term (SPEC default 0.01)."""
        beta: float = Field(5.0, ge=0)
        """β ≥ 0, sharpness of the gate σ(β·Δ) (SPEC default 5, as released)."""

    name = "opsd"
    label = "OPSD"
    description = "On-policy self-distillation towards the skill-aware teacher, no RL term."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        p = self.params
        assert view.logp is not None and view.teacher_logp is not None
        delta = teacher_gap(view)  # [B, T], no grad
        gate = torch.sigmoid(p.beta * delta)  # [B, T], no grad (Δ is detached)
        aux = agg(gate * (view.teacher_logp - view.logp), view.mask)
        reg, metrics = regulariser_terms(view, p)

        metrics |= {"loss/pg": 0.0, "loss/aux": aux.item(), **gap_metrics(delta, gate, view.mask)}
        if view.old_logp is not None:
            metrics["ppo/approx_kl"] = approx_kl(view.logp, view.old_logp, view.mask)
        return {"aux": p.coef * aux, **reg}, metrics
