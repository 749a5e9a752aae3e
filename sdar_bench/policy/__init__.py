"""Policies: a causal LM, its tokenizer and prompt encoder, loaded by name or path.

Names: the tiny family (``tiny-qwen-*``, built per env), packaged GGUF models
(``smollm2-135m``), a local checkpoint directory, or a Hugging Face id already in the local
cache. Nothing is ever downloaded: a missing model is a ``ModelNotFound`` whose one-line
message says how to get it.

The names below are loaded on first use (PEP 562): ``policy.model`` imports transformers, and
the light submodules (``options``, ``catalog``, ``errors``) must not pay for it, since the
suite loader and ``sdar-bench plan`` import them and load no model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdar_bench.policy.errors import ModelNotFound
    from sdar_bench.policy.model import (
        AdapterFreeView,
        Policy,
        load_policy,
        load_tokenizer,
        prepare_model,
        resolve_model_path,
    )
    from sdar_bench.policy.options import LoraOptions, PolicyOptions, VLLMOptions

# name → the submodule that defines it
_LAZY = {
    "AdapterFreeView": "model",
    "Policy": "model",
    "load_policy": "model",
    "load_tokenizer": "model",
    "prepare_model": "model",
    "resolve_model_path": "model",
    "ModelNotFound": "errors",
    "LoraOptions": "options",
    "PolicyOptions": "options",
    "VLLMOptions": "options",
}
__all__ = [
    "AdapterFreeView",
    "LoraOptions",
    "ModelNotFound",
    "Policy",
    "PolicyOptions",
    "VLLMOptions",
    "load_policy",
    "load_tokenizer",
    "prepare_model",
    "resolve_model_path",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
