"""No-grad passes that skip the last decoder layer's work where no logit is read.

A scoring pass reads logits at the last ``keep`` positions only (the response). Elsewhere the
last layer's attention output and MLP output feed nothing: its keys and values come from its
input, before either, and the final norm and LM head read only the kept positions. On the
teacher's rest pass that is 85% of the last layer's positions.

The attention side goes through transformers' documented extension point: a function
registered with ``AttentionInterface`` (and ``AttentionMaskInterface``, which builds the same
masks as "sdpa") under ``SCORING_ATTENTION``, switched on with ``set_attn_implementation`` for
the pass only. Besides the last layer's skip it calls PyTorch's SDPA with ``enable_gqa`` on the
CPU, where transformers' "sdpa" would copy the keys and values once per query head whenever a
padding mask is present (every cached or padded scoring pass): 5% of the quickstart's teacher
pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SCORING_ATTENTION = "sdar_scoring_sdpa"

# Positions whose outputs the current pass reads in the last layer; None outside a pass.
_KEEP: ContextVar[int | None] = ContextVar("keep", default=None)

# Arguments that change the attention's maths beyond a mask: left to transformers' own "sdpa".
_OTHER_MATHS = ("s_aux", "position_bias", "softcap")


def _copies_kv(device: torch.device) -> bool:
    """Whether to copy keys and values per query head rather than pass ``enable_gqa``: off the
    CPU, where CUDA's memory-efficient kernel takes a mask but not ``enable_gqa`` (the slower
    math kernel would run instead), as transformers' "sdpa" does."""
    return device.type != "cpu"


def _scoring_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, T, d]
    key: torch.Tensor,  # [B, Hkv, S, d]
    value: torch.Tensor,  # [B, Hkv, S, d]
    attention_mask: torch.Tensor | None,  # [B, 1, T, S] bool, or None for plain causal
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention output [B, T, H, d]; in the last layer, zeros except at the kept positions."""
    keep = _KEEP.get()
    if keep is None or dropout or any(kwargs.get(name) is not None for name in _OTHER_MATHS):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    T, S = query.shape[2], key.shape[2]
    last = getattr(module, "layer_idx", None) == module.config.num_hidden_layers - 1
    rows = keep if last and keep < T else T
    mask = attention_mask
    if mask is None and rows < T:  # plain causal: the kept rows' part of it, bottom-right aligned
        mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)[None, None]
    if mask is not None:
        mask = mask[:, :, T - rows :]  # [B, 1, rows, S]
    causal = mask is None and T > 1 and getattr(module, "is_causal", True)
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and _copies_kv(query.device):
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(
        query[:, :, T - rows :],
        key,
        value,
        attn_mask=mask,
        scale=scaling,
        is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    ).transpose(1, 2)  # [B, rows, H, d]
    if rows < T:
        full = out.new_zeros(out.shape[0], T, *out.shape[2:])  # [B, T, H, d]
        full[:, T - rows :] = out
        out = full
    return out.contiguous(), None


AttentionInterface.register(SCORING_ATTENTION, _scoring_sdpa)
AttentionMaskInterface.register(SCORING_ATTENTION, sdpa_mask)


@contextmanager
def last_layer_on(model: PreTrainedModel, keep: int) -> Iterator[None]:
    """Within a no-grad pass whose logits are read at the last ``keep`` positions only, the last
    decoder layer's attention and MLP run on those positions alone.

    The skipped positions hold their residual stream (attention and MLP outputs of zero), so the
    same pass must not read their hidden states. The attention part applies to models on
    "sdpa" that take an attention implementation at run time; the MLP part to models with the
    usual ``layers[-1].mlp``. With gradients on, nothing changes.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    mlp = getattr(layers[-1], "mlp", None) if layers else None
    if torch.is_grad_enabled() or keep < 1:
        yield
        return
    with _attention_on(model, keep):
        if mlp is None:
            yield
            return
        own = mlp.__dict__.get("forward")
        inner = mlp.forward

        def forward(hidden: torch.Tensor) -> torch.Tensor:  # [B, T, H]
            out = torch.zeros_like(hidden)
            out[:, -keep:] = inner(hidden[:, -keep:])
            return out

        mlp.forward = forward
        try:
            yield
        finally:
            if own is None:
                del mlp.forward
            else:
                mlp.forward = own


@contextmanager
def _attention_on(model: PreTrainedModel, keep: int) -> Iterator[None]:
    """``SCORING_ATTENTION`` for the pass, where the model is on "sdpa"."""
    config = getattr(model, "config", None)
    switch = getattr(model, "set_attn_implementation", None)
    # not where an outer pass already switched it, nor on another implementation
    switched = switch is not None and getattr(config, "_attn_implementation", None) == "sdpa"
    if switched:
        switch(SCORING_ATTENTION)
    token = _KEEP.set(keep)
    try:
        yield
    finally:
        _KEEP.reset(token)
        if switched:
            switch("sdpa")
