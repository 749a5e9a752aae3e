"""GRPO's group-normalised advantage: the default of ``Method.advantages``.

Below the registry (whose default hook uses it) and the objectives (which re-export it), so the
contract does not depend on the method-side toolbox.
"""

from __future__ import annotations

import torch

STD_EPS = 1e-6
"""Added to the group std in the advantage denominator (SPEC §2)."""


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """GRPO advantage (SPEC §2): ``A = (r − mean_group) / (std_group + 1e-6)``.

    ``rewards`` [N] holds one reward per turn sample and ``group_ids`` [N] the task group it
    belongs to; every turn sample of every episode of the group counts (long episodes weigh more).

    The std is the **unbiased** (sample, n − 1) std, torch.std's default and what verl's GRPO
    uses. A group with a single sample has no spread: its advantage is 0.
    """
    rewards = rewards.detach()  # [N]
    if not rewards.is_floating_point():
        rewards = rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [N] group index 0..K-1
    k = int(inverse.max().item()) + 1 if inverse.numel() else 0
    count = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, rewards)
    mean = total / count  # [K]
    centred = rewards - mean[inverse]  # [N]
    sq = torch.zeros(k, dtype=rewards.dtype).index_add_(0, inverse, centred**2)
    # n − 1 in the denominator; for n = 1 the centred reward is 0 anyway, so std 0 gives A = 0.
    std = (sq / (count - 1).clamp(min=1.0)).sqrt()  # [K]
    return centred / (std[inverse] + STD_EPS)  # [N]
