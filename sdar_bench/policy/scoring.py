"""Per-token log-probabilities and entropies of responses given prompts.

Layout: prompts left-padded to a common length P, responses right-padded to R, so every
response token sits in the same column for every row — and for the teacher, whose prompts are
longer, the response columns line up with the student's. Logits are computed only for the
R positions that predict response tokens (``logits_to_keep``), which matters for large vocabularies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


def pack(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [B, P+R], response ``mask`` [B, R]."""
    P = max(len(p) for p in prompts)
    R = max(max((len(r) for r in responses), default=0), 1)
    B = len(prompts)
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + R), dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        input_ids[i, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, P - len(p) : P + len(r)] = 1
        mask[i, : len(r)] = 1.0
    return input_ids, attention, mask


def response_logprobs(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``logp`` [B, R], ``entropy`` [B, R] or None, response ``mask`` [B, R], on the CPU.

    Gradients flow when the caller has them enabled (also through the move off the GPU);
    padded positions hold 0. The [B, R, V] logits stay on the model's device; the [B, R]
    results come back to the CPU, where the trainer keeps masks, advantages and old log-probs,
    so the loss maths is the same code on either device (B·R floats: negligible traffic).
    """
    input_ids, attention, mask = pack(prompts, responses, pad_id)
    R = mask.shape[1]
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding shifts positions
    out = model(
        input_ids=input_ids.to(model.device),
        attention_mask=attention.to(model.device),
        position_ids=position_ids.to(model.device),
        logits_to_keep=R + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # [B, R, V]: position P-1+t predicts response token t
    logprobs_all = F.log_softmax(logits, dim=-1)  # [B, R, V]
    targets = input_ids[:, -R:].to(logits.device)  # [B, R]
    mask = mask.to(logits.device)
    logp = logprobs_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask  # [B, R]
    entropy = None
    if with_entropy:
        entropy = (-(logprobs_all.exp() * logprobs_all).sum(-1) * mask).cpu()  # [B, R]
    return logp.cpu(), entropy, mask.cpu()


@torch.no_grad()
def score_in_chunks(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    chunk: int = 64,
) -> torch.Tensor:
    """No-grad ``logp`` [B, R] computed ``chunk`` rows at a time, padded to the global R."""
    R = max(max((len(r) for r in responses), default=0), 1)
    rows = []
    for start in range(0, len(prompts), chunk):
        logp, _, _ = response_logprobs(
            model, prompts[start : start + chunk], responses[start : start + chunk], pad_id
        )
        rows.append(F.pad(logp, (0, R - logp.shape[1])))
    return torch.cat(rows)
