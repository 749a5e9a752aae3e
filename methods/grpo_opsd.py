"""GRPO+OPSD: the naive hybrid of GRPO and self-distillation (SPEC §4).

    form "uniform" (as released):  L = L_GRPO + λ·Agg(g·(teach_t − logp_t)),  g = 0.5 constant
    form "signed"  [choice]:       L = L_GRPO − λ·Agg(sg(Δ_t)·logp_t),        Δ_t = teach_t − sg(logp_t)

"uniform" raises every sampled token equally, whatever the teacher thinks of it; "signed" uses
OPSD's token advantage Δ_t, so tokens the teacher rejects (Δ < 0) are pushed down.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sdar_bench.objectives import TeacherParams, gap_metrics, grpo_terms, teacher_gap
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView, agg


class GRPOOPSD(Method):
    """GRPO plus an ungated (constant-weight or gap-signed) distillation term."""

    class Params(TeacherParams):
        coef: float = Field(0.01, ge=0)
        """λ ≥ 0, weight of the distillation term (SPEC default 0.01)."""
        form: Literal["uniform", "signed"] = "uniform"
        """uniform: constant gate ``gate_value`` (as released); signed: −sg(Δ)·logp [choice]."""
        gate_value: float = Field(0.5, ge=0, le=1)
        """The constant gate g in [0, 1] of the uniform form (SPEC default 0.5 = σ(0))."""

    name = "grpo_opsd"
    label = "GRPO+OPSD"
    description = "Naive hybrid: GRPO plus a constant-gate (or gap-signed) distillation term."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        p = self.params
        assert view.logp is not None and view.teacher_logp is not None
        grpo, metrics = grpo_terms(view, p)
        delta = teacher_gap(view)  # [B, T], no grad

        if p.form == "uniform":
            gate = torch.full_like(delta, p.gate_value)  # [B, T]
            aux = agg(gate * (view.teacher_logp - view.logp), view.mask)
            metrics |= gap_metrics(delta, gate, view.mask)
        else:  # "signed": Δ is the per-token advantage of a REINFORCE-style term
            aux = -agg(delta * view.logp, view.mask)
            metrics |= gap_metrics(delta, None, view.mask)

        metrics["loss/aux"] = aux.item()
        return grpo | {"aux": p.coef * aux}, metrics
