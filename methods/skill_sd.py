"""Skill-SD: GRPO plus an importance-weighted k3 divergence to the skill-aware teacher (SPEC §4).

    ℓ_t = logp_t − teach_t
    ρ_t = exp(min(logp_t − old_t, 10))                       keeps its gradient (as released)
    L   = L_GRPO + λ·Agg(ρ_t·(exp(min(−ℓ_t, 20)) − 1 + ℓ_t))

exp(−ℓ) − 1 + ℓ is the k3 estimate of KL(π_θ ‖ π_teacher) on the sampled token; ρ corrects for
the tokens being sampled by π_old. The two clamps (10 on the log-ratio, 20 on −ℓ) keep it
finite. Unlike PPO's ratio, ρ is not detached, so the term also pushes logp through ρ.
"""

from __future__ import annotations

import torch
from pydantic import Field

from sdar_bench.objectives import TeacherParams, gap_metrics, grpo_terms, teacher_gap
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView, agg

RHO_LOG_CLAMP = 10.0
"""ρ = exp(min(logp − old, 10)): at most e^10."""
NEG_ELL_CLAMP = 20.0
"""exp(min(−ℓ, 20)): at most e^20."""


class SkillSD(Method):
    """GRPO plus a ρ-weighted k3 KL from the student to the skill-aware teacher."""

    class Params(TeacherParams):
        coef: float = Field(0.001, ge=0)
        """λ ≥ 0, weight of the divergence term (SPEC default 0.001)."""

    name = "skill_sd"
    label = "Skill-SD"
    description = "GRPO plus an importance-weighted k3 KL to the skill-aware teacher."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        p = self.params
        assert view.logp is not None and view.old_logp is not None
        assert view.teacher_logp is not None
        grpo, metrics = grpo_terms(view, p)

        ell = view.logp - view.teacher_logp  # [B, T], with grad
        rho = torch.exp(torch.clamp(view.logp - view.old_logp, max=RHO_LOG_CLAMP))  # [B, T], grad
        k3 = torch.exp(torch.clamp(-ell, max=NEG_ELL_CLAMP)) - 1.0 + ell  # [B, T]
        aux = agg(rho * k3, view.mask)

        metrics |= {"loss/aux": aux.item(), **gap_metrics(teacher_gap(view), None, view.mask)}
        return grpo | {"aux": p.coef * aux}, metrics
