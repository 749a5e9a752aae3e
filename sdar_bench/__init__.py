"""sdar-bench: compare agentic RL methods for LLM agents fairly and reproducibly."""

import os

# bm25s imports jax, which would reserve 75% of a GPU's memory where jax has CUDA: keep jax
# on the CPU and allocating on demand (the harness never runs jax work of its own).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from sdar_bench.registry import Method, MethodParams, get_method, method_names, register_method
from sdar_bench.token_view import TokenView, agg

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
