"""sdar-bench: compare agentic RL methods for LLM agents fairly and reproducibly.

The method contract is ``from sdar_bench import TokenView, get_method`` (and the other names
of ``__all__``). They are loaded on first use (PEP 562): they import torch, and ``sdar-bench
--help`` or ``plan``, which import this package first, must not pay for it.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# bm25s imports jax, which would reserve 75% of a GPU's memory where jax has CUDA: keep jax
# on the CPU and allocating on demand (the harness never runs jax work of its own).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

if TYPE_CHECKING:
    from sdar_bench.registry import (
        Method,
        MethodParams,
        get_method,
        method_names,
        register_method,
    )
    from sdar_bench.token_view import TokenView, agg

# name → the module that defines it
_LAZY = {
    "Method": "sdar_bench.registry",
    "MethodParams": "sdar_bench.registry",
    "get_method": "sdar_bench.registry",
    "method_names": "sdar_bench.registry",
    "register_method": "sdar_bench.registry",
    "TokenView": "sdar_bench.token_view",
    "agg": "sdar_bench.token_view",
}
__all__ = [
    "Method",
    "MethodParams",
    "TokenView",
    "agg",
    "get_method",
    "method_names",
    "register_method",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value
