"""Id sequences of different lengths as one left-padded batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` [B, L] and ``attention`` [B, L] (1 on real tokens), each sequence right-aligned
    to L, the longest: the last column is every row's last token, as generation and the
    prompt's last-position logits need."""
    L = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)  # [B, L]
    attention = torch.zeros((len(seqs), L), dtype=torch.long)  # [B, L]
    for row, s in enumerate(seqs):
        if s:
            ids[row, L - len(s) :] = torch.tensor(s, dtype=torch.long)
            attention[row, L - len(s) :] = 1
    return ids, attention
