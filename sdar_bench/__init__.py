"""sdar-bench: compare agentic RL methods for LLM agents fairly and reproducibly."""

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
