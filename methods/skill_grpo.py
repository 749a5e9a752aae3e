"""Skill-GRPO: GRPO where the **student's** prompt carries the skill block during training
(SPEC §4, rows "Skill-GRPO" and "Skill-GRPO*").

    L = L_GRPO  (SPEC §2), on samples whose prompt is "[Privileged Skill Information]\\n…" + prompt

The loss is GRPO's unchanged; what differs is the trainer's rollout (``student_sees_skills``)
and evaluation, which runs both without skills ("Skill-GRPO") and with them ("Skill-GRPO*").
"""

from __future__ import annotations

import torch

from sdar_bench.objectives import SkillParams, grpo_terms
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView


class SkillGRPO(Method):
    """GRPO trained with skills in the student prompt; evaluated with and without them."""

    class Params(SkillParams):
        """The shared PPO knobs plus ``retrieval`` (which skills the student prompt carries)."""

    name = "skill_grpo"
    label = "Skill-GRPO"
    description = "GRPO with the skill block in the student's prompt during training."
    trains = True
    needs_teacher = False
    student_sees_skills = True
    eval_skill_modes = (False, True)

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        terms, metrics = grpo_terms(view, self.params)
        metrics["loss/aux"] = 0.0
        return terms, metrics
