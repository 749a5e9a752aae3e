"""Skill-Prompt: no training; evaluate the initial policy **with** the skill block in its prompt
(SPEC §4, row "Skill-Prompt*").

Equation: none. The skill block ``"[Privileged Skill Information]\\n{skills}\\n\\n" + prompt`` is
retrieved with ``retrieval`` (SPEC §3) and shown at evaluation time.
"""

from __future__ import annotations

import torch

from sdar_bench.objectives import SkillParams
from sdar_bench.registry import Method
from sdar_bench.token_view import TokenView


class SkillPrompt(Method):
    """The untrained policy, evaluated with skills in its prompt."""

    class Params(SkillParams):
        """Only ``retrieval`` matters (which skills the evaluation prompt carries)."""

    name = "skill_prompt"
    label = "Skill-Prompt"
    description = "No training: evaluate the initial policy with the skill block in its prompt."
    trains = False
    needs_teacher = False
    student_sees_skills = True
    eval_skill_modes = (True,)

    def loss(self, view: TokenView) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("skill_prompt does not train; the trainer only evaluates it")
