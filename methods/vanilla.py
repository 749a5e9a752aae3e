"""Vanilla: no training; evaluate the initial policy without skills (SPEC §4, row "Vanilla").

Equation: none. The policy is π_θ₀ as loaded (or warm-started); the trainer only evaluates it.
"""

from __future__ import annotations

import torch

from sdar_bench.registry import Method, MethodParams
from sdar_bench.token_view import TokenView


class Vanilla(Method):
    """The untrained policy, evaluated without skills."""

    class Params(MethodParams):
        """No knobs of its own (the shared PPO fields are accepted and ignored)."""

    name = "vanilla"
    label = "Vanilla"
    description = "No training: evaluate the initial policy without skills."
    trains = False
    needs_teacher = False
    student_sees_skills = False
    eval_skill_modes = (False,)

    def loss(self, view: TokenView) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("vanilla does not train; the trainer only evaluates it")
