"""SDAR: Self-Distilled Agentic RL (SPEC §4).

    Δ_t = teach_t − sg(logp_t)                          teacher–student gap on the sampled token
    g_t = sg(σ(β·Δ_t))                                  gate: ≈1 where the teacher endorses y_t
    L   = L_GRPO + λ·Agg(g_t·(teach_t − logp_t))

The auxiliary gradient on a token is −λ·g_t·∇logp_t / Σm: it raises every sampled token, the
ones the skill-aware teacher endorses (Δ > 0) strongly and the rejected ones (Δ < 0) weakly; it
never pushes a token down. β = 0 gives g = ½ (GRPO+OPSD, uniform); λ = 0 gives GRPO.

Ablation axes (config, SPEC §4), all gates detached:
    gate "gap"      g = σ(β·Δ)                                   (default)
    gate "entropy"  g = σ(β·h),  h = H / log|V|
    gate "soft_or"  g = σ(β·[1 − (1 − h)(1 − σ(Δ))])             [choice: normalisation unpublished]
    gate "none"     g = 1
``teacher`` (live / frozen / ema [choice]) and ``retrieval`` are read by the trainer. Only the
sampled-token divergence ``reverse_sampled`` is implemented here: the full-vocabulary
divergences of the paper's ablation need logits, which the TokenView does not carry.
"""

from __future__ import annotations

from typing import Literal

import torch

from sdar_bench.objectives import (
    TeacherParams,
    gap_metrics,
    grpo_objective,
    normalised_entropy,
    teacher_gap,
)
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView, agg


class SDAR(Method):
    """GRPO plus sampled-token distillation to the skill-aware teacher, gated by the gap."""

    class Params(TeacherParams):
        coef: float = 0.01
        """λ, weight of the gated distillation term (SPEC default 0.01; sweep 0.001–0.1)."""
        beta: float = 5.0
        """β, sharpness of the gate σ(β·…) (SPEC default 5; sweep 0, 1, 5, 10)."""
        gate: Literal["gap", "entropy", "soft_or", "none"] = "gap"
        """What the gate looks at: the gap Δ (default), the normalised entropy, both, or nothing."""
        divergence: Literal["reverse_sampled"] = "reverse_sampled"
        """The divergence on the sampled token (the paper's default and the only one here)."""

    name = "sdar"
    label = "SDAR"
    description = "GRPO plus gap-gated self-distillation towards the skill-aware teacher."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)

    def gate(self, view: TokenView, delta: torch.Tensor) -> torch.Tensor:
        """g_t [B, T], no gradient (Δ and h are detached)."""
        beta = self.params.beta
        if self.params.gate == "gap":
            return torch.sigmoid(beta * delta)
        if self.params.gate == "entropy":
            return torch.sigmoid(beta * normalised_entropy(view))
        if self.params.gate == "soft_or":  # high where the student is unsure OR the teacher agrees
            h = normalised_entropy(view)  # [B, T]
            return torch.sigmoid(beta * (1.0 - (1.0 - h) * (1.0 - torch.sigmoid(delta))))
        return torch.ones_like(delta)  # "none"

    def loss(self, view: TokenView) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        assert view.logp is not None and view.teacher_logp is not None
        grpo, metrics = grpo_objective(view, p)

        delta = teacher_gap(view)  # [B, T]
        g = self.gate(view, delta).detach()  # [B, T]
        aux = agg(g * (view.teacher_logp - view.logp), view.mask)

        metrics |= {"loss/aux": aux.item(), **gap_metrics(delta, g, view.mask)}
        return grpo + p.coef * aux, metrics
