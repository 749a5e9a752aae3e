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
``teacher`` (live / frozen / ema [choice]) and ``retrieval`` are read by the trainer.

Advantage (``advantage``): ``grpo`` (default) uses GRPO's group-normalised A in L_GRPO;
``gigpo`` uses GiGPO's A = A_episode + ω·A_step (``methods/gigpo.py``, with its defaults
γ 0.95, ω 1, mean/std normalisation), so a suite can ask whether SDAR's gain over its RL
backbone survives a stronger backbone: compare ``sdar: {advantage: gigpo}`` with ``gigpo``.

Divergence ablation (``divergence``, SPEC §4). ``reverse_sampled`` is the sampled-token term
above (default). The full forms replace it by a per-token divergence D_t between the teacher's
and the student's next-token distributions, with the same gate g_t (still from Δ_t, detached):

    L   = L_GRPO + λ·Agg(g_t·D_t)
    S_t = the teacher's k likeliest tokens at t (``topk``; k ≥ |V| is the exact full vocabulary)
    p_T = π_teacher(·|s_t⁺), p_S = π_θ(·|s_t) (with grad), both renormalised over S_t
    forward_full   D_t = KL(p_T ‖ p_S) = Σ_{v∈S_t} p_T(v)·(log p_T(v) − log p_S(v))
    reverse_full   D_t = KL(p_S ‖ p_T) = Σ_{v∈S_t} p_S(v)·(log p_S(v) − log p_T(v))
    jsd_full       D_t = ½·KL(p_T ‖ M) + ½·KL(p_S ‖ M),  M = ½(p_T + p_S)

D_t ≥ 0 and is minimised: it pulls the student's whole distribution towards the teacher's, down
on tokens the teacher rejects as well as up on those it prefers. ``loss/aux`` is then Agg(g·D)
(≥ 0), whereas for ``reverse_sampled`` it is Agg(g·(teach − logp)) (≤ 0 on average); the two are
not on one scale. ``divergence/mean`` logs the ungated Agg(D).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sdar_bench.objectives import (
    TeacherParams,
    gap_metrics,
    gigpo_advantages,
    grpo_terms,
    kl_from_logp,
    mixture_logp,
    normalised_entropy,
    renormalised,
    teacher_gap,
)
from sdar_bench.registry import Method, SampleInfo
from sdar_bench.token_view import TokenView, agg


class SDAR(Method):
    """GRPO plus sampled-token distillation to the skill-aware teacher, gated by the gap."""

    class Params(TeacherParams):
        coef: float = Field(0.01, ge=0)
        """λ ≥ 0, weight of the gated distillation term (SPEC default 0.01; sweep 0.001–0.1)."""
        beta: float = Field(5.0, ge=0)
        """β ≥ 0, sharpness of the gate σ(β·…) (SPEC default 5; sweep 0, 1, 5, 10)."""
        gate: Literal["gap", "entropy", "soft_or", "none"] = "gap"
        """What the gate looks at: the gap Δ (default), the normalised entropy, both, or nothing."""
        divergence: Literal["reverse_sampled", "reverse_full", "forward_full", "jsd_full"] = (
            "reverse_sampled"
        )
        """What the gated term distils: ``reverse_sampled`` the sampled token (teach − logp, the
        paper's default); ``forward_full`` KL(p_T ‖ p_S), ``reverse_full`` KL(p_S ‖ p_T),
        ``jsd_full`` their Jensen–Shannon over the teacher's top-``topk`` tokens (ablation)."""
        topk: int = Field(64, ge=1)
        """k of the full forms: both distributions are renormalised over the teacher's k likeliest
        tokens per position; k ≥ |V| is the exact full vocabulary. The trainer keeps the teacher's
        ids and log-probs for every response token: N·T·k·12 bytes of CPU memory per step."""
        advantage: Literal["grpo", "gigpo"] = "grpo"
        """The RL backbone's advantage: GRPO's (default) or GiGPO's episode + anchor-state
        step advantage (γ 0.95, ω 1)."""

    name = "sdar"
    label = "SDAR"
    description = "GRPO plus gap-gated self-distillation towards the skill-aware teacher."
    trains = True
    needs_teacher = True
    student_sees_skills = False
    eval_skill_modes = (False,)
    needs_samples = True  # only read with advantage: gigpo
    reads_old_logp = False

    def advantages(
        self,
        view: TokenView,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        step: int,
        samples: SampleInfo | None = None,
    ) -> torch.Tensor:
        """GRPO's advantage, or GiGPO's with ``advantage: gigpo`` ([B, T])."""
        if self.params.advantage == "grpo":
            return super().advantages(view, rewards, group_ids, step)
        if samples is None:
            raise ValueError("sdar with advantage: gigpo needs samples=SampleInfo(...)")
        adv, _ = gigpo_advantages(rewards, samples)  # [N]
        return adv.to(view.mask.dtype)[:, None] * view.mask  # [B, T]

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

    def teacher_topk(self) -> int | None:
        """The full forms need the teacher's top-k tokens and the student's log-probs there."""
        return None if self.params.divergence == "reverse_sampled" else self.params.topk

    def divergence(self, view: TokenView) -> torch.Tensor:
        """D_t [B, T] over the teacher's top-k set, with the student's gradient (full forms)."""
        if view.teacher_topk_logp is None or view.student_topk_logp is None:
            raise ValueError(
                f"divergence {self.params.divergence!r} needs view.teacher_topk_logp and "
                "view.student_topk_logp (the trainer fills them when teacher_topk() is set)"
            )
        log_t = renormalised(view.teacher_topk_logp)  # [B, T, K] log p_T over S_t
        log_s = renormalised(view.student_topk_logp)  # [B, T, K] log p_S over S_t, with grad
        if self.params.divergence == "forward_full":
            return kl_from_logp(log_t, log_s)  # KL(p_T ‖ p_S)
        if self.params.divergence == "reverse_full":
            return kl_from_logp(log_s, log_t)  # KL(p_S ‖ p_T)
        log_m = mixture_logp(log_t, log_s)  # [B, T, K] log M, M = ½(p_T + p_S)
        return 0.5 * kl_from_logp(log_t, log_m) + 0.5 * kl_from_logp(log_s, log_m)  # jsd_full

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        p = self.params
        assert view.logp is not None and view.teacher_logp is not None
        grpo, metrics = grpo_terms(view, p)

        delta = teacher_gap(view)  # [B, T]
        g = self.gate(view, delta).detach()  # [B, T]
        if p.divergence == "reverse_sampled":
            aux = agg(g * (view.teacher_logp - view.logp), view.mask)
        else:
            d = self.divergence(view)  # [B, T]
            aux = agg(g * d, view.mask)
            metrics["divergence/mean"] = agg(d.detach(), view.mask).item()

        metrics |= {"loss/aux": aux.item(), **gap_metrics(delta, g, view.mask)}
        return grpo | {"aux": p.coef * aux}, metrics
