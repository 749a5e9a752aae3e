"""The pieces every method's loss is built from (SPEC §2 and the Δ / gate diagnostics of §4).

Each function does one thing and comments its tensor shapes. ``[N]`` is one entry per turn
sample, ``[B, T]`` is per response token of a mini-batch (see ``sdar_bench.token_view``).
``Agg`` is the token-mean ``sdar_bench.token_view.agg`` over the whole mini-batch.

The shared parameter classes live here too, so that the trainer (which reads ``teacher``,
``ema_decay`` and ``retrieval``) never has to import the ``methods`` package:

* ``SkillParams``: methods that retrieve skills at all (``retrieval``);
* ``TeacherParams``: methods with a teacher branch (adds ``teacher`` and ``ema_decay``).

``[B, T, K]`` is K vocabulary entries per response token (the teacher's top-k), for the
full-vocabulary divergences of SDAR's ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

# re-exported: they moved below the registry, whose default advantages hook uses them
from sdar_bench.advantages import STD_EPS as STD_EPS
from sdar_bench.advantages import group_advantages as group_advantages
from sdar_bench.registry import MethodParams, SampleInfo
from sdar_bench.token_view import TokenView, agg

KL_CLAMP = 10.0
"""The k3 KL estimate is clamped to [−KL_CLAMP, KL_CLAMP] (SPEC §2)."""
LOGP_FLOOR = -1.0e4
"""Log-probs entering the full-vocabulary divergences are floored here, so a token of probability
0 (a −inf logit) adds 0·finite = 0 to a KL, in its value and its gradient, not 0·inf = NaN."""
LOG_RATIO_CLAMP = 20.0
"""Log-ratios are clamped to ±20 before ``exp`` (as verl does) so padding or outliers never
overflow to inf, whose 0·inf would turn the masked token-mean into NaN."""


# --------------------------------------------------------------------------- parameters


class SkillParams(MethodParams):
    """Knobs of methods that put a skill block in some prompt (student's or teacher's)."""

    retrieval: Literal["keyword", "full", "random", "ucb", "embedding"] = "keyword"
    """Skill retrieval mode (SPEC §3; ``sdar_bench.skills.RETRIEVERS``): keyword (default), full,
    random, ucb, embedding. Read by the trainer; kept on the method so a suite can sweep it like
    any other method parameter."""


class TeacherParams(SkillParams):
    """Knobs of methods with a teacher branch (SPEC §3)."""

    teacher: Literal["live", "frozen", "ema"] = "live"
    """Whose weights score the skill-augmented prompt: live = the rollout weights θ_old (as
    released), frozen = the initial weights, ema = an exponential moving average [choice]."""
    ema_decay: float = Field(0.99, ge=0, lt=1)
    """Decay of the EMA teacher in [0, 1) (used only when teacher == "ema") [choice]."""


# --------------------------------------------------------------------------- advantages


def group_normalised(
    values: torch.Tensor, group_ids: torch.Tensor, scale: bool = True
) -> torch.Tensor:
    """``(v − mean_group) / (std_group + 1e-6)`` [N] (``scale``), or ``v − mean_group`` [N].

    The same group statistics as ``group_advantages`` (unbiased std; a one-member group gets 0
    either way, as its value is its own mean). GiGPO's two normalisation modes.
    """
    if scale:
        return group_advantages(values, group_ids)
    values = values.detach().float()  # [N]
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [N] group index 0..K-1
    k = int(inverse.max().item()) + 1 if inverse.numel() else 0
    count = torch.zeros(k).index_add_(0, inverse, torch.ones_like(values))  # [K]
    total = torch.zeros(k).index_add_(0, inverse, values)  # [K]
    return values - (total / count)[inverse]  # [N]


def discounted_returns(
    turn_rewards: torch.Tensor, episode_ids: torch.Tensor, turn_index: torch.Tensor, gamma: float
) -> torch.Tensor:
    """G_t = Σ_{k ≥ t} γ^(k−t)·r_k [N]: each turn's discounted return over the rest of its episode.

    ``turn_rewards`` [N] holds r_t, ``episode_ids`` [N] and ``turn_index`` [N] say which episode
    and which turn each sample is; samples may come in any order. Computed backwards per episode:
    G_last = r_last, G_t = r_t + γ·G_{t+1}.
    """
    returns = torch.zeros(len(turn_rewards), dtype=torch.float32)  # [N]
    rewards = turn_rewards.detach().float()
    for episode in episode_ids.unique():
        rows = (episode_ids == episode).nonzero().flatten()  # [n] this episode's samples
        rows = rows[torch.argsort(turn_index[rows])]  # in turn order
        running = 0.0
        for row in reversed(rows.tolist()):
            running = rewards[row].item() + gamma * running
            returns[row] = running
    return returns  # [N]


def anchor_groups(group_ids: torch.Tensor, anchors: Sequence[str]) -> torch.Tensor:
    """[N] an id per (task group, anchor state): GiGPO's step-level groups. Samples share an id
    exactly when they are of the same task group and their anchor texts are equal."""
    ids: dict[tuple[int, str], int] = {}
    out = [
        ids.setdefault((int(g), a), len(ids))
        for g, a in zip(group_ids.tolist(), anchors, strict=True)
    ]
    return torch.tensor(out, dtype=torch.long)  # [N]


GIGPO_GAMMA = 0.95
"""γ of GiGPO's step-level discounted return (verl-agent's ALFWorld scripts)."""
GIGPO_OMEGA = 1.0
"""ω, the weight of GiGPO's step-level advantage (verl-agent's ALFWorld scripts)."""


def gigpo_advantages(
    rewards: torch.Tensor,
    samples: SampleInfo,
    gamma: float = GIGPO_GAMMA,
    omega: float = GIGPO_OMEGA,
    scale: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GiGPO's per-sample advantage ``A = A_episode + ω·A_step`` [N] (``methods/gigpo.py`` has the
    maths) and its diagnostics: the mean anchor-group size and the share of samples whose anchor
    group has one member (their A_step is 0)."""
    a_episode = group_normalised(rewards, samples.group_ids, scale)  # [N]
    returns = discounted_returns(
        samples.turn_rewards, samples.episode_ids, samples.turn_index, gamma
    )  # [N]
    anchor = anchor_groups(samples.group_ids, samples.anchors)  # [N]
    a_step = group_normalised(returns, anchor, scale)  # [N]
    sizes = torch.bincount(anchor)[anchor].float()  # [N] size of each sample's anchor group
    metrics = {
        "gigpo/anchor_group_size": sizes.mean().item() if len(sizes) else 0.0,
        "gigpo/singleton_share": (sizes == 1).float().mean().item() if len(sizes) else 0.0,
        "gigpo/step_adv_abs": a_step.abs().mean().item() if len(sizes) else 0.0,
    }
    return a_episode + omega * a_step, metrics


# --------------------------------------------------------------------------- per-token terms


def ppo_dual_clip(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    clip_eps: float,
    dual_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO surrogate with dual clip (SPEC §2), per token.

    ``pg = max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε))``, then where A < 0 ``pg = min(pg, −A·c)``.

    Returns ``pg`` [B, T] and ``clipped`` [B, T] (bool): tokens where the ε-clip branch is the
    active one (verl's ``pg_clipfrac``); the dual-clip cap is not counted in it.
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)  # [B, T]
    pg = torch.maximum(unclipped, clipped)  # [B, T] pessimistic bound
    # Dual clip: for A < 0 a huge ratio would make −A·ratio unbounded; cap it at −A·c.
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)  # [B, T]
    return pg, clipped > unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ ‖ π_ref) on sampled tokens, clamped to [−10, 10] (SPEC §2).

    ``kl = exp(ref − logp) − (ref − logp) − 1`` [B, T].
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return (torch.exp(d) - d - 1.0).clamp(-KL_CLAMP, KL_CLAMP)  # [B, T]


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """``ppo/approx_kl``: the k3 estimate of KL(π_old ‖ π_θ) on the rollout's tokens.

    ``Agg(exp(logp − old) − (logp − old) − 1)``; non-negative per token, unlike the plain
    ``Agg(old − logp)`` which can go negative on a mini-batch [choice].
    """
    with torch.no_grad():
        d = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
        return agg(torch.exp(d) - d - 1.0, mask).item()


# --------------------------------------------------------------------------- the GRPO objective


def grpo_terms(
    view: TokenView, params: MethodParams
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``L_GRPO = Agg(pg) + c_kl·Agg(kl) − c_ent·Agg(H)`` (SPEC §2) on the view's advantages,
    as its weighted terms ``{"pg", "kl", "entropy"}`` (the loss is their sum).

    The KL term is 0 when ``view.ref_logp`` is None or ``c_kl == 0``; the entropy term is 0 when
    ``view.entropy`` is None. Metrics: ``loss/pg``, ``loss/kl``, ``entropy/mean``,
    ``ppo/clipfrac``, ``ppo/approx_kl`` (python floats).
    """
    assert view.logp is not None and view.old_logp is not None and view.advantages is not None
    m = view.mask  # [B, T]
    pg, clipped = ppo_dual_clip(
        view.logp, view.old_logp, view.advantages, params.clip_eps, params.dual_clip
    )  # [B, T], [B, T]
    pg_loss = agg(pg, m)
    regularisers, reg_metrics = regulariser_terms(view, params)

    metrics = {
        "loss/pg": pg_loss.item(),
        **reg_metrics,
        "ppo/clipfrac": agg(clipped.float(), m).item(),
        "ppo/approx_kl": approx_kl(view.logp, view.old_logp, m),
    }
    return {"pg": pg_loss, **regularisers}, metrics


def regulariser_terms(
    view: TokenView, params: MethodParams
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The regularisers shared by every trained method, weighted: ``{"kl": c_kl·Agg(kl),
    "entropy": −c_ent·Agg(H)}``.

    The KL term is 0 when ``view.ref_logp`` is None or ``c_kl == 0``; the entropy term is 0 when
    ``view.entropy`` is None. Metrics: ``loss/kl`` (Agg(kl), unweighted) and ``entropy/mean``.
    """
    assert view.logp is not None
    m = view.mask  # [B, T]
    zero = view.logp.new_zeros(())
    kl_loss, ent_mean = zero, zero
    if view.ref_logp is not None and params.c_kl != 0:
        kl_loss = agg(kl_k3(view.logp, view.ref_logp), m)
    if view.entropy is not None:
        ent_mean = agg(view.entropy, m)
    # The entropy enters as a bonus: higher entropy lowers the loss.
    terms = {"kl": params.c_kl * kl_loss, "entropy": -params.c_ent * ent_mean}
    return terms, {"loss/kl": kl_loss.item(), "entropy/mean": ent_mean.item()}


def term_grad_norms(
    terms: dict[str, torch.Tensor], params: Sequence[torch.Tensor]
) -> dict[str, float]:
    """``grad/<term>``: the L2 norm of each weighted loss term's gradient in ``params``, and
    ``grad/terms`` that of their sum, all on the same rows: one backward pass per term that
    depends on ``params`` (a zero KL does not: norm 0). The graph is kept for the update's own
    backward pass, and nothing is accumulated in ``.grad``.

    The norms do not add up (the gradients point different ways); a term's norm against
    ``grad/terms`` is its weight in the update.
    """
    out: dict[str, float] = {}
    summed: list[torch.Tensor | None] = [None] * len(params)
    for name, term in terms.items():
        if not term.requires_grad:
            out[f"grad/{name}"] = 0.0
            continue
        grads = torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)
        out[f"grad/{name}"] = _norm(grads)
        summed = [
            s if g is None else (g if s is None else s + g)
            for s, g in zip(summed, grads, strict=True)
        ]
    out["grad/terms"] = _norm(summed)
    return out


def _norm(grads: Sequence[torch.Tensor | None]) -> float:
    """The L2 norm of a list of gradients (None: no gradient)."""
    return math.sqrt(sum(g.detach().float().pow(2).sum().item() for g in grads if g is not None))


# --------------------------------------------------------------------------- teacher gap / gates


def teacher_gap(view: TokenView) -> torch.Tensor:
    """Δ_t = teach_t − sg(logp_t) [B, T] (SPEC §4): > 0 where the skill-aware teacher endorses
    the student's sampled token more than the student does. Carries no gradient."""
    if view.teacher_logp is None or view.logp is None:
        raise ValueError("teacher_gap needs view.teacher_logp and view.logp (needs_teacher=True)")
    return (view.teacher_logp - view.logp).detach()  # [B, T]


def gap_metrics(
    delta: torch.Tensor, gate: torch.Tensor | None, mask: torch.Tensor
) -> dict[str, float]:
    """Diagnostics of the gap Δ [B, T] and the gate g [B, T] over response tokens (SPEC §4).

    ``gap/std`` is the population std over the batch's response tokens; ``gap/abs_mean`` the
    mean |Δ| (how far the teacher is from the student at all); ``gap/q10|q50|q90`` and
    ``gate/q10|q50|q90`` quantiles over the response tokens (linear interpolation). The trainer
    averages a step's micro-batches by their token shares, so a step's quantile is that average
    of its micro-batches' quantiles. With ``gate`` None (a method without a gate) only the
    ``gap/*`` entries are returned.
    """
    with torch.no_grad():
        delta = delta.detach()
        mean = agg(delta, mask)
        tokens = mask.bool()  # [B, T]
        out = {
            "gap/mean": mean.item(),
            "gap/std": agg((delta - mean) ** 2, mask).sqrt().item(),
            "gap/abs_mean": agg(delta.abs(), mask).item(),
            "gap/positive_ratio": agg((delta > 0).float(), mask).item(),
            **_quantiles("gap", delta[tokens]),
        }
        if gate is not None:
            gate = gate.detach().expand_as(delta)  # [B, T]; a constant gate broadcasts
            out["gate/mean"] = agg(gate, mask).item()
            out["gate/active_ratio"] = agg((gate > 0.5).float(), mask).item()
            out |= _quantiles("gate", gate[tokens])
    return out


QUANTILES = (0.1, 0.5, 0.9)


def _quantiles(name: str, values: torch.Tensor) -> dict[str, float]:
    """``{name}/q10`` … of ``values`` [n]; nothing when there are none (an empty batch)."""
    if values.numel() == 0:
        return {}
    levels = torch.tensor(QUANTILES, device=values.device)
    qs = torch.quantile(values.float(), levels).tolist()
    return {f"{name}/q{round(level * 100)}": q for level, q in zip(QUANTILES, qs, strict=True)}


def normalised_entropy(view: TokenView) -> torch.Tensor:
    """h_t = H_t / log|V| in [0, 1] [B, T], detached; for the entropy-based gates (SPEC §4)."""
    if view.entropy is None:
        raise ValueError("this gate needs view.entropy")
    if view.vocab_size < 2:
        raise ValueError(
            f"this gate normalises the entropy by log|V| but view.vocab_size is {view.vocab_size}; "
            "the trainer must set TokenView.vocab_size"
        )
    return view.entropy.detach() / math.log(view.vocab_size)  # [B, T]


# --------------------------------------------------------------------------- top-k divergences


def renormalised(logp_k: torch.Tensor) -> torch.Tensor:
    """log p̃(v) = log p(v) − log Σ_{u∈S} p(u) [B, T, K]: the distribution whose full-softmax
    log-probs ``logp_k`` [B, T, K] are given on K kept tokens S, restricted and renormalised to S.

    With K = |V| this is the distribution itself (the sum is 1, up to rounding). Keeps the
    gradient of ``logp_k`` (through the normaliser as well).
    """
    logp_k = logp_k.clamp(min=LOGP_FLOOR)  # [B, T, K]
    return logp_k - torch.logsumexp(logp_k, dim=-1, keepdim=True)  # [B, T, K]


def kl_from_logp(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_k p_k·(log p_k − log q_k) [B, T] from log-probs [B, T, K] of two
    distributions over the same K entries (each summing to 1 over them)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)  # [B, T]


def mixture_logp(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """log M [B, T, K] of the mixture M = ½(p + q), from log p and log q [B, T, K]."""
    return torch.logaddexp(log_p, log_q) - math.log(2.0)  # [B, T, K]
