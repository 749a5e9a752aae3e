"""Per-token log-probabilities and entropies of responses given prompts.

Layout: prompts left-padded to a common length P, responses right-padded to R, so every
response token sits in the same column for every row — and for the teacher, whose prompts are
longer, the response columns line up with the student's. Logits are computed only for the
R positions that predict response tokens (``logits_to_keep``), which matters for large vocabularies.
Prompts that share prefixes (the teacher's skill block, a task's text, agreeing history, the G
copies of a first turn) can have each run once for the whole batch (``share_prefix``, see
``prefixes.py``), and a no-grad pass skips the last layer's attention and MLP where no logit
is read (``last_layer_on``).
On request the same pass also keeps a token's top-k vocabulary entries (the teacher side of
SDAR's full-vocabulary divergences) or gathers log-probs at given ids (the student side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from sdar_bench.policy.last_layer import last_layer_on
from sdar_bench.policy.padding import left_padded
from sdar_bench.policy.prefixes import (
    PrefixCache,
    like_widths,
    prefix_order,
    run_prefixes,
    run_with_cache,
    worth_sharing,
)


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


# Chunked scoring stores every shared prefix's KV for the whole batch when they hold no more
# tokens than this many chunks of full-length rows (a chunk's own cache holds one chunk's worth).
STORED_PREFIX_CHUNKS = 2


def distinct_rows(prompts: Sequence[Sequence[int]]) -> tuple[list[int], torch.Tensor]:
    """``owners``: the row of each distinct prompt's first copy; ``inverse`` [B]: which
    distinct prompt each row holds (``prompts[i] == prompts[owners[inverse[i]]]``)."""
    index: dict[tuple[int, ...], int] = {}
    owners: list[int] = []
    inverse: list[int] = []
    for row, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in index:
            index[key] = len(owners)
            owners.append(row)
        inverse.append(index[key])
    return owners, torch.tensor(inverse, dtype=torch.long)


def shared_prompt_cache(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    inverse: torch.Tensor,
) -> tuple[DynamicCache, torch.Tensor] | None:
    """Run the distinct left-padded prompts ``input_ids`` [U, P] once and repeat their KV cache
    to the rows of ``inverse`` [B]; returns the cache and the last position's logits [U, V],
    or None where the model kept no cache (gradient checkpointing in training mode).

    Differentiable when gradients are on: the copies' gradients add up in the shared prompt.
    """
    cache = DynamicCache(config=model.config)
    nothing = attention[:, :0]  # [U, 0]: no cache before the prompts
    out = run_with_cache(model, cache, nothing, input_ids, attention, keep=1)
    if out is None:
        return None
    cache.batch_select_indices(inverse.to(model.device))
    return cache, out.logits[:, -1]


def _shared_prompt_logits(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Response logits [B, R, V], targets [B, R] and mask [B, R] with each distinct prompt run
    once (the G copies of a task's first turn, identical histories); None when every prompt
    differs or the model recomputes activations in backward (its cache would be off)."""
    owners, inverse = distinct_rows(prompts)
    if len(owners) == len(prompts) or getattr(model, "is_gradient_checkpointing", False):
        return None
    input_ids, attention = left_padded([prompts[i] for i in owners], pad_id)  # [U, P] each
    shared = shared_prompt_cache(model, input_ids, attention, inverse)
    if shared is None:
        return None
    cache, first = shared
    R = max(max((len(r) for r in responses), default=0), 1)
    targets = torch.full((len(responses), R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), R), dtype=torch.float32)
    for i, r in enumerate(responses):
        targets[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1.0
    last = attention.sum(-1, keepdim=True)[inverse]  # [B, 1] position of the first response token
    device = model.device
    out = model(
        input_ids=targets.to(device),
        attention_mask=torch.cat([attention[inverse], mask.long()], dim=1).to(device),
        position_ids=(last + torch.arange(R)).to(device),
        past_key_values=cache,
        use_cache=True,
    )
    # The prompt's last position predicts response token 0; response token t predicts t + 1.
    logits = torch.cat([first[inverse.to(device)].unsqueeze(1), out.logits[:, :-1]], dim=1)
    return logits, targets, mask


def _rest_logits(
    model: PreTrainedModel,
    prefixes: PrefixCache,
    rows: Sequence[int],
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Response logits [B, R, V], targets [B, R] and mask [B, R] of ``rows``, their prefixes
    read from ``prefixes``.

    Layout after the cached prefix (left-padded to Lc): each row's rest of the prompt
    left-padded to Ls (the padding sits between prefix and rest; the attention mask hides it
    and positions count real tokens only), then the response right-padded to R.
    """
    cache, prefix_att = prefixes.for_rows(rows)  # prefix_att [B, Lc]
    cut = [prefixes.plan.cut(i) for i in rows]
    Ls = max(len(prompts[i]) - c for i, c in zip(rows, cut, strict=True))
    R = max(max((len(responses[i]) for i in rows), default=0), 1)
    B = len(rows)
    ids = torch.full((B, Ls + R), pad_id, dtype=torch.long)  # [B, Ls+R]
    att = torch.zeros((B, Ls + R), dtype=torch.long)  # [B, Ls+R]
    mask = torch.zeros((B, R), dtype=torch.float32)  # [B, R]
    for b, (i, c) in enumerate(zip(rows, cut, strict=True)):
        rest, r = prompts[i][c:], responses[i]
        ids[b, Ls - len(rest) : Ls] = torch.tensor(rest, dtype=torch.long)
        ids[b, Ls : Ls + len(r)] = torch.tensor(r, dtype=torch.long)
        att[b, Ls - len(rest) : Ls + len(r)] = 1
        mask[b, : len(r)] = 1.0
    out = run_with_cache(model, cache, prefix_att, ids, att, keep=R + 1)
    assert out is not None  # the prefixes were cached, so the model keeps a cache
    # Position Ls-1 (the prompt's last token) predicts response token 0; Ls-1+t predicts t.
    return out.logits[:, :-1], ids[:, -R:], mask


@dataclass(frozen=True)
class ResponseScores:
    """What one forward pass over (prompt, response) pairs yields, on the CPU; padding holds 0.

    ``K`` is the number of vocabulary entries kept per response token (the teacher's top-k, or
    the ids the caller asked for). Tensors carry the gradient when the caller had it enabled.
    """

    logp: torch.Tensor  # [B, R] log π(y_t|s_t) of the response tokens
    mask: torch.Tensor  # [B, R] 1 on response tokens
    entropy: torch.Tensor | None = None  # [B, R] H(π(·|s_t)) in nats, if asked for
    topk_ids: torch.Tensor | None = None  # [B, R, K] long: the K most likely tokens, if asked for
    topk_logp: torch.Tensor | None = None  # [B, R, K] log π(v|s_t) at topk_ids (full softmax)
    logp_at: torch.Tensor | None = None  # [B, R, K] log π(v|s_t) at the caller's ``at_ids``


def score_responses(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    with_entropy: bool = False,
    topk: int | None = None,
    at_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    share_prefix: bool = False,
) -> ResponseScores:
    """Log-probs of the responses and, on request, per response token: the entropy, the ``topk``
    most likely tokens with their log-probs (``K = min(topk, |V|)``), and the log-probs at given
    token ids ``at_ids`` [B, R', K] (R' ≥ the longest response here; columns past it are ignored).

    Everything is of the distribution the rollout sampled from, softmax(logits / temperature):
    at T ≠ 1 the plain softmax would give PPO ratios and KL terms of another policy.

    One forward pass whichever is asked for; the [B, R, V] log-softmax stays on the model's
    device and only [B, R] / [B, R, K] results come back to the CPU.

    ``share_prefix``: run each prefix of ``plan_prefixes`` once (then the second pass over the
    rest of the prompts and the responses) where that skips at least a tenth of the prompt
    tokens. Same log-probs up to float rounding; meant for no-grad scoring (the teacher).
    """
    shared = None
    if share_prefix and not getattr(model, "is_gradient_checkpointing", False):
        plan = worth_sharing(prompts)
        prefixes = run_prefixes(model, prompts, plan, pad_id, len(prompts)) if plan else None
        if prefixes is not None:
            shared = _rest_logits(model, prefixes, range(len(prompts)), prompts, responses, pad_id)
    if shared is None:
        shared = _shared_prompt_logits(model, prompts, responses, pad_id)
    if shared is not None:
        logits, targets, mask = shared
    else:
        input_ids, attention, mask = pack(prompts, responses, pad_id)
        R = mask.shape[1]
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding shifts positions
        with last_layer_on(model, R + 1):
            out = model(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                position_ids=position_ids.to(model.device),
                logits_to_keep=R + 1,
                use_cache=False,
            )
        logits = out.logits[:, :-1]  # [B, R, V]: position P-1+t predicts response token t
        targets = input_ids[:, -R:]  # [B, R]
    return _scores(logits, targets, mask, temperature, with_entropy, topk, at_ids)


def _scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    topk: int | None = None,
    at_ids: torch.Tensor | None = None,
) -> ResponseScores:
    """``ResponseScores`` from response ``logits`` [B, R, V], ``targets`` [B, R] and ``mask``
    [B, R]: the [B, R, V] log-softmax stays on the logits' device."""
    logits = logits.float() / temperature
    logprobs_all = F.log_softmax(logits, dim=-1)  # [B, R, V]
    targets = targets.to(logits.device)
    mask = mask.to(logits.device)
    logp = logprobs_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask  # [B, R]
    entropy = None
    if with_entropy:
        entropy = (-(logprobs_all.exp() * logprobs_all).sum(-1) * mask).cpu()  # [B, R]
    topk_ids = topk_logp = logp_at = None
    if topk is not None:
        k = min(topk, logprobs_all.shape[-1])
        values, ids = logprobs_all.topk(k, dim=-1)  # [B, R, K], [B, R, K]
        topk_logp = (values * mask.unsqueeze(-1)).cpu()  # [B, R, K]
        topk_ids = (ids * mask.long().unsqueeze(-1)).cpu()  # [B, R, K], 0 on padding
    if at_ids is not None:
        R = logprobs_all.shape[1]
        ids = at_ids[:, :R].to(logits.device)  # [B, R, K]
        logp_at = (logprobs_all.gather(-1, ids) * mask.unsqueeze(-1)).cpu()  # [B, R, K]
    return ResponseScores(logp.cpu(), mask.cpu(), entropy, topk_ids, topk_logp, logp_at)


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
    ``score_responses`` is the same pass with the top-k / per-id extras.
    """
    scores = score_responses(model, prompts, responses, pad_id, with_entropy=with_entropy)
    return scores.logp, scores.entropy, scores.mask


def score_in_chunks(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    chunk: int = 64,
    temperature: float = 1.0,
    share_prefix: bool = False,
) -> torch.Tensor:
    """No-grad ``logp`` [B, R] computed ``chunk`` rows at a time, padded to the global R."""
    return score_topk_in_chunks(
        model, prompts, responses, pad_id, None, chunk, temperature, share_prefix
    )[0]


@torch.no_grad()
def score_topk_in_chunks(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    topk: int | None,
    chunk: int = 64,
    temperature: float = 1.0,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """No-grad ``logp`` [B, R] computed ``chunk`` rows at a time, padded to the global R, and
    when ``topk`` is set, per response token the ``topk`` most likely tokens: ``topk_ids``
    [B, R, K] long and ``topk_logp`` [B, R, K], K = min(topk, |V|) (None otherwise).

    Memory of the top-k: B·R·K·12 bytes on the CPU (8 for the id, 4 for the log-prob); 0 on
    padding.

    ``share_prefix``: each shared prefix (the teacher's skill block and task text) runs once
    for the whole batch, and chunks are runs of like rest lengths in ``prefix_order`` (little
    padding in the rest of the prompts); where storing every prefix's KV would take more than
    ``STORED_PREFIX_CHUNKS`` chunks' worth, each chunk runs its own prefixes.
    """
    R = max(max((len(r) for r in responses), default=0), 1)
    logp_out = torch.zeros(len(prompts), R)
    ids_out = topk_out = None
    if topk is not None:
        k = min(topk, model.config.vocab_size)
        ids_out = torch.zeros(len(prompts), R, k, dtype=torch.long)
        topk_out = torch.zeros(len(prompts), R, k)
    prefixes = plan = None
    if share_prefix and not getattr(model, "is_gradient_checkpointing", False):
        plan = worth_sharing(prompts)
        # Stored prefixes hold U·Lp tokens of KV; past STORED_PREFIX_CHUNKS chunks' worth of
        # tokens, each chunk runs its own prefixes instead.
        budget = STORED_PREFIX_CHUNKS * chunk * max(len(p) for p in prompts)
        if plan is not None and len(plan.owners) * max(plan.shared) <= budget:
            prefixes = run_prefixes(model, prompts, plan, pad_id, chunk)
    if plan is not None:  # runs of like rest lengths, in prefix_order (sorted by them)
        rests = [len(p) - plan.cut(i) for i, p in enumerate(prompts)]
        chunks = like_widths(prefix_order(prompts, plan), rests, chunk)
    else:
        order = by_prompt(prompts)
        chunks = [order[start : start + chunk] for start in range(0, len(prompts), chunk)]
    for rows in chunks:
        if prefixes is not None:
            logits, targets, mask = _rest_logits(model, prefixes, rows, prompts, responses, pad_id)
            s = _scores(logits, targets, mask, temperature, topk=topk)
        else:
            s = score_responses(
                model,
                [prompts[i] for i in rows],
                [responses[i] for i in rows],
                pad_id,
                topk=topk,
                temperature=temperature,
                share_prefix=share_prefix,
            )
        pad = R - s.logp.shape[1]
        logp_out[rows] = F.pad(s.logp, (0, pad))
        if ids_out is not None and topk_out is not None:
            assert s.topk_ids is not None and s.topk_logp is not None
            ids_out[rows] = F.pad(s.topk_ids, (0, 0, 0, pad))
            topk_out[rows] = F.pad(s.topk_logp, (0, 0, 0, pad))
    return logp_out, ids_out, topk_out


def by_prompt(prompts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> list[int]:
    """``rows`` (default: all) ordered by prompt length, then prompt: chunks then pad little
    and hold every copy of a prompt together, so ``response_logprobs`` runs it once."""
    rows = range(len(prompts)) if rows is None else rows
    return sorted(rows, key=lambda i: (len(prompts[i]), prompts[i]))
