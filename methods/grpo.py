"""GRPO, as the paper runs it (SPEC §2).

    A      = (r − mean_group) / (std_group + 1e-6)           over all turn samples of a task group
    ratio  = exp(logp − old)
    pg     = max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε));  where A < 0: pg = min(pg, −A·c)
    kl     = exp(ref − logp) − (ref − logp) − 1, clamped to [−10, 10]
    L_GRPO = Agg(pg) + c_kl·Agg(kl) − c_ent·Agg(H)

[choice] the group std is the unbiased (n − 1) std, as in verl; a one-sample group gets A = 0.
"""

from __future__ import annotations

import torch

from sdar_bench.objectives import grpo_terms
from sdar_bench.registry import Method, MethodParams
from sdar_bench.token_view import TokenView


class GRPO(Method):
    """Group-relative PPO with dual clip, k3 KL to the reference and an entropy bonus."""

    class Params(MethodParams):
        """Only the shared PPO knobs: clip_eps 0.2, dual_clip 3.0, c_kl 0.01, c_ent 0.001."""

    name = "grpo"
    label = "GRPO"
    description = "GRPO with dual-clip PPO, k3 KL to the reference and an entropy bonus."
    trains = True
    needs_teacher = False
    student_sees_skills = False
    eval_skill_modes = (False,)

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        terms, metrics = grpo_terms(view, self.params)
        metrics["loss/aux"] = 0.0  # no auxiliary term; logged so every method has the column
        return terms, metrics
