"""GiGPO: Group-in-Group Policy Optimization (Feng et al., arXiv 2505.10978; verl-agent).

GRPO's episode-level group advantage plus a step-level advantage computed among the turns,
across the G episodes of one task, that were taken in the same state (an "anchor state"):

    A_episode(i) = (R_i − mean_g R) / (std_g R + 1e-6)     g: the task group (as GRPO, SPEC §2)
    r_t          = R·[t is the episode's last turn] − c_inv·[turn t is invalid]
    G_t          = Σ_{k ≥ t} γ^(k−t)·r_k                    discounted return of turn t
    s            = (task group, anchor text)                anchor group of a turn sample
    A_step(i)    = (G_i − mean_s G) / (std_s G + 1e-6)
    A            = A_episode + ω·A_step                       broadcast to every response token
    L            = L_GRPO with A                              (dual clip, k3 KL, entropy bonus)

γ = 0.95 and ω = 1 as in verl-agent's ALFWorld scripts; std is the unbiased (n − 1) std, as
torch.std (GRPO's in this project and verl-agent's). ``mode: mean_norm`` drops the division by
std at both levels (verl-agent's other option): A_episode = R − mean_g R, A_step = G − mean_s G.

Choices, and where they differ from verl-agent:

* Anchor key. A turn's anchor is its env observation text plus the admissible-action list
  (``rollout.Turn.anchor``), compared exactly within one task group. verl-agent keys on the
  observation alone; the admissible list is added because it carries state the offline ALFWorld
  text does not (what the agent holds: "put X in/on Y" is admissible only while holding X), so
  two turns that read the same but differ in inventory are not one state. History and turn number
  are left out: the same state reached along two paths (or at two turns) is one anchor, which is
  the point of GiGPO. Search-QA has no admissible list: its key is the observation alone. As in
  verl-agent the key is text, not the world state: after an invalid turn (a no-op) the engine
  says "Nothing happens.", so that turn is another anchor than the one before, unchanged world
  or not.
* One-member anchor group: A_step = 0 (its return is its own group mean), as in verl-agent;
  such a sample gets the episode advantage only. A one-member task group gets A_episode = 0 as in
  this project's GRPO; verl-agent leaves the raw reward there (mean 0, std 1) [choice].
* Step reward. The engines here reward only the end of an episode, so r_t is R on the last turn
  and 0 before it (as verl-agent's per-step env reward is for ALFWorld, where only the winning
  step scores). The invalid-action penalty c_inv is charged to the invalid turn's own r_t, so it
  reaches G_t of that turn and, discounted, of the turns before it; A_episode keeps the project's
  per-sample reward R − c_inv·[invalid] (SPEC §1), so both levels see the penalty [choice].
* Episode level over turn samples: every turn sample counts in the task group's mean and std
  (long episodes weigh more), as GRPO here and as verl-agent's default cross-step statistics.

``loss`` logs ``gigpo/anchor_group_size`` (mean over samples of their anchor group's size),
``gigpo/singleton_share`` and ``gigpo/step_adv_abs`` (mean |A_step|) of the last batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sdar_bench.objectives import GIGPO_GAMMA, GIGPO_OMEGA, gigpo_advantages, grpo_terms
from sdar_bench.registry import Method, MethodParams, SampleInfo
from sdar_bench.token_view import TokenView


class GiGPO(Method):
    """GRPO whose advantage adds a step-level term from turns taken in the same state."""

    class Params(MethodParams):
        gamma: float = Field(GIGPO_GAMMA, ge=0, le=1)
        """γ in [0, 1], discount of the step-level return (verl-agent: 0.95)."""
        omega: float = Field(GIGPO_OMEGA, ge=0)
        """ω ≥ 0, weight of the step-level advantage (verl-agent: 1; 0 gives GRPO)."""
        mode: Literal["mean_std_norm", "mean_norm"] = "mean_std_norm"
        """Normalise by mean and std (default, verl-agent's ALFWorld scripts) or by the mean only."""

    name = "gigpo"
    label = "GiGPO"
    description = "GRPO plus a step-level advantage over turns taken in the same (anchor) state."
    trains = True
    needs_teacher = False
    student_sees_skills = False
    eval_skill_modes = (False,)
    needs_samples = True
    reads_old_logp = False

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._metrics: dict[str, float] = {}  # diagnostics of the last advantages() call

    def advantages(
        self,
        view: TokenView,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        step: int,
        samples: SampleInfo | None = None,
    ) -> torch.Tensor:
        if samples is None:
            raise ValueError("gigpo needs samples=SampleInfo(...) (the trainer passes it)")
        p = self.params
        adv, self._metrics = gigpo_advantages(
            rewards, samples, p.gamma, p.omega, scale=p.mode == "mean_std_norm"
        )  # [N]
        return adv.to(view.mask.dtype)[:, None] * view.mask  # [B, T]

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        terms, metrics = grpo_terms(view, self.params)  # view.advantages are GiGPO's
        metrics["loss/aux"] = 0.0
        return terms, {**metrics, **self._metrics}
