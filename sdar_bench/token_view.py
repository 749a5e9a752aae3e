"""The per-token tensors a method's loss sees: one mini-batch of turn samples.

Every tensor is ``[B, T]`` over the *response* tokens of B turn samples, right-padded to T;
``mask`` is 1 on real response tokens and 0 on padding. Prompts never appear here: observations
receive no loss (SPEC §1). The optional top-k fields are ``[B, T, K]``: K vocabulary entries per
response token (the teacher's K most likely tokens), for the full-vocabulary divergences.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TokenView:
    """Inputs of ``Method.loss``.

    ``logp``, ``entropy`` and ``student_topk_logp`` carry the gradient; everything else is
    detached. ``teacher_logp`` is None for methods without a teacher branch; ``logp`` is None
    while advantages are being computed (before the update pass). The ``*topk*`` fields are None
    unless the method asks for them (``Method.teacher_topk``).
    """

    mask: torch.Tensor  # [B, T] float, 1 on response tokens
    logp: torch.Tensor | None = None  # [B, T] log π_θ(y_t|s_t), with grad
    old_logp: torch.Tensor | None = None  # [B, T] log π_θold(y_t|s_t) at rollout time
    ref_logp: torch.Tensor | None = None  # [B, T] log π_ref(y_t|s_t), initial weights
    teacher_logp: torch.Tensor | None = (
        None  # [B, T] log π_teacher(y_t|s_t⁺), skill block in prompt
    )
    entropy: torch.Tensor | None = None  # [B, T] H(π_θ(·|s_t)) in nats, with grad in the update
    advantages: torch.Tensor | None = None  # [B, T] per-token advantage
    teacher_topk_ids: torch.Tensor | None = None  # [B, T, K] long: the teacher's K likeliest v
    teacher_topk_logp: torch.Tensor | None = None  # [B, T, K] log π_teacher(v|s_t⁺), full softmax
    student_topk_logp: torch.Tensor | None = None  # [B, T, K] log π_θ(v|s_t) at those v, with grad
    vocab_size: int = 0  # |V|, for gates that normalise the entropy by log|V|

    def with_(self, **changes: torch.Tensor | int | None) -> TokenView:
        return replace(self, **changes)

    def select(self, rows: torch.Tensor | slice) -> TokenView:
        """The view restricted to some samples (a micro-batch)."""
        fields = {}
        for name in (
            "mask",
            "logp",
            "old_logp",
            "ref_logp",
            "teacher_logp",
            "entropy",
            "advantages",
            "teacher_topk_ids",
            "teacher_topk_logp",
            "student_topk_logp",
        ):
            value = getattr(self, name)
            fields[name] = None if value is None else value[rows]
        return TokenView(**fields, vocab_size=self.vocab_size)


def agg(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean over the whole mini-batch: Σ m·x / Σ m (SPEC §1, ``Agg``)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """A loss from its weighted terms (``Method.loss_terms``): their sum, in their order."""
    return functools.reduce(operator.add, terms.values())
