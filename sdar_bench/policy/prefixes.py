"""Prompt prefixes that several rows of a batch share, planned and run once.

The teacher's prompt is the skill block, the task's text and a window of the episode's history:
every row of a task shares the first two, and the G copies of a first turn share all of it.
``plan_prefixes`` groups rows into runs sharing a prefix, ``run_prefixes`` runs each prefix once
for the batch, and each row then runs only what is left of its prompt, and its response, on top
of its prefix's cache (``PrefixCache.for_rows``).

Measured and not kept: a prefix *tree* (runs split again by the history their rows share) cut
the quickstart teacher pass's positions by 15% but not its time, since its extra passes and
padding ate the gain (README, "Performance"; branch ``prefix-tree-experiment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from sdar_bench.policy.last_layer import last_layer_on
from sdar_bench.policy.padding import left_padded


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):  # stops at the shorter one
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class PrefixPlan:
    """Which prefix each row shares: row ``i`` uses prefix ``inverse[i]``, which is
    ``prompts[owners[u]][: shared[u]]`` and equals ``prompts[i][: shared[u]]``.

    Every prefix is shorter than each prompt using it, so each row keeps at least its last
    prompt token for the second pass: that position's logits predict response token 0.
    """

    owners: list[int]
    inverse: torch.Tensor  # [B] long
    shared: list[int]  # [U] prefix lengths, 1 ≤ shared[u] < len(prompt) of its rows

    def cut(self, row: int) -> int:
        """How many of ``row``'s prompt tokens its shared prefix holds."""
        return self.shared[int(self.inverse[row])]

    def saved_tokens(self) -> int:
        """Prompt tokens not recomputed: each prefix runs once instead of once per row."""
        counts = torch.bincount(self.inverse, minlength=len(self.owners)).tolist()
        return sum((n - 1) * length for n, length in zip(counts, self.shared, strict=True))


def plan_prefixes(prompts: Sequence[Sequence[int]]) -> PrefixPlan | None:
    """Group rows into runs that share a prompt prefix; None when nothing can be shared.

    Rows are sorted by their ids, so prompts with long common prefixes are neighbours; a run
    grows while adding the next row does not lower the tokens the run saves, ``(n - 1) × L``
    for n rows sharing L tokens. On the teacher's prompts (skill block + task text + history)
    this finds one run per task sharing the skill block and the task's fixed text, and a run
    of its own for copies of one prompt (the G first turns), which share all but the last token.
    """
    if not prompts or min(len(p) for p in prompts) < 2:
        return None  # a one-token prompt has nothing to share but the token that scores
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    owners: list[int] = []
    shared: list[int] = []
    inverse = [0] * len(prompts)
    size = 0
    for pos, row in enumerate(order):
        prompt = prompts[row]
        if owners:
            prev = prompts[order[pos - 1]]
            length = min(shared[-1], _common_length(prev, prompt), len(prompt) - 1)
            if length >= 1 and size * length >= (size - 1) * shared[-1]:
                shared[-1] = length
                inverse[row] = len(owners) - 1
                size += 1
                continue
        owners.append(row)
        shared.append(len(prompt) - 1)
        inverse[row] = len(owners) - 1
        size = 1
    return PrefixPlan(owners, torch.tensor(inverse, dtype=torch.long), shared)


def worth_sharing(prompts: Sequence[Sequence[int]]) -> PrefixPlan | None:
    """The prefix plan of ``prompts`` if it skips at least a tenth of their tokens (below that
    the extra pass and the cache copies cost more than the tokens they save)."""
    plan = plan_prefixes(prompts)
    if plan is None or 10 * plan.saved_tokens() < sum(len(p) for p in prompts):
        return None
    return plan


# A chunk of rows sorted by width closes early rather than pad more than this share of its
# positions: on the quickstart's first teacher batch, fixed chunks of 64 rows ran 64.2k positions
# for 56.9k real ones, these runs 60.6k.
PAD_SLACK = 0.25


def like_widths(order: Sequence[int], widths: Sequence[int], chunk: int) -> list[list[int]]:
    """``order`` (sorted by ``widths`` ascending, ``widths[i]`` of item i) cut into runs of at
    most ``chunk`` items, each closed early where the next item would leave more than
    ``PAD_SLACK`` of the run's positions padding."""
    runs: list[list[int]] = []
    run: list[int] = []
    used = 0  # real positions in the run
    for i in order:
        w = widths[i]
        size = (len(run) + 1) * w  # the run's positions with item i, padded to its width
        if run and (len(run) == chunk or size - used - w > PAD_SLACK * size):
            runs.append(run)
            run, used = [], 0
        run.append(i)
        used += w
    return runs + [run] if run else runs


def prefix_order(prompts: Sequence[Sequence[int]], plan: PrefixPlan) -> list[int]:
    """All rows ordered for chunked scoring with shared prefixes: by the length of what is left
    after the row's shared prefix (the width of the second pass, so chunks pad little), then by
    that prefix (so a chunk holds few distinct prefixes)."""
    inverse = plan.inverse.tolist()
    return sorted(
        range(len(prompts)),
        key=lambda i: (len(prompts[i]) - plan.cut(i), inverse[i], prompts[i]),
    )


@dataclass(frozen=True)
class PrefixCache:
    """The KV cache of every prefix of a ``PrefixPlan``, each run once for the whole batch.

    Prefixes are left-padded to ``Lp`` = the longest, so the last ``n`` columns hold every
    prefix of length ≤ n: a chunk whose rows use short prefixes attends to fewer columns.
    Memory: U·Lp tokens of KV, where a chunk's own cache holds rows·(Lp + rest) anyway.
    """

    plan: PrefixPlan
    keys: list[torch.Tensor]  # per layer [U, kv heads, Lp, head dim]
    values: list[torch.Tensor]  # per layer [U, kv heads, Lp, head dim]
    attention: torch.Tensor  # [U, Lp] long, 1 on real tokens

    def for_rows(self, rows: Sequence[int]) -> tuple[DynamicCache, torch.Tensor]:
        """A fresh cache holding row ``rows[i]``'s prefix in row i, cut to the longest of them,
        and its attention mask [B, Lc]."""
        inverse = self.plan.inverse[list(rows)]  # [B]
        width = max(self.plan.shared[u] for u in inverse.tolist())
        cache = DynamicCache()
        device = self.keys[0].device
        pick = inverse.to(device)
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k[pick, :, -width:], v[pick, :, -width:], layer)
        return cache, self.attention[inverse, -width:]


def run_with_cache(
    model: PreTrainedModel,
    cache: DynamicCache,
    past: torch.Tensor,
    ids: torch.Tensor,
    attention: torch.Tensor,
    keep: int,
) -> CausalLMOutputWithPast | None:
    """One forward pass of ``ids`` [B, L] with ``attention`` [B, L] after the cached ``past``
    [B, Lc] (mask), the last ``keep`` positions' logits kept; without gradients the last layer
    works on those positions only (``last_layer_on``). Positions count real tokens only, so
    padding may sit anywhere. Returns the model's output; None where the model kept no cache
    (gradient checkpointing in training mode)."""
    full = torch.cat([past, attention], dim=1)  # [B, Lc+L]
    positions = (full.cumsum(-1) - 1).clamp(min=0)[:, past.shape[1] :]  # [B, L]
    device = model.device
    with last_layer_on(model, keep):
        out = model(
            input_ids=ids.to(device),
            attention_mask=full.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
    if cache.get_seq_length() != full.shape[1]:
        return None
    return out


def run_prefixes(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    plan: PrefixPlan,
    pad_id: int,
    chunk: int,
) -> PrefixCache | None:
    """Run each prefix of ``plan`` once, ``chunk`` prefixes at a time; None where the model
    kept no cache (gradient checkpointing in training mode)."""
    U = len(plan.owners)
    ids, attention = left_padded(  # [U, Lp] each
        [prompts[row][:length] for row, length in zip(plan.owners, plan.shared, strict=True)],
        pad_id,
    )
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    for start in range(0, U, chunk):
        part = slice(start, start + chunk)
        cache = DynamicCache(config=model.config)
        none = attention[part, :0]  # [n, 0]: nothing cached before the prefixes
        if run_with_cache(model, cache, none, ids[part], attention[part], keep=1) is None:
            return None
        layers = cache.layers
        keys.append([layer.keys for layer in layers])
        values.append([layer.values for layer in layers])
    return PrefixCache(
        plan,
        [torch.cat(parts) for parts in zip(*keys, strict=True)],
        [torch.cat(parts) for parts in zip(*values, strict=True)],
        attention,
    )
