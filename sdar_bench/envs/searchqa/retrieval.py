"""Search-QA's side of retrieval: how retrieved passages read in an observation.

The retrievers themselves are shared with WebShop and the skills (``sdar_bench.retrieval``);
they are re-exported here for the engine's callers.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdar_bench.retrieval import BM25Retriever as BM25Retriever
from sdar_bench.retrieval import DenseRetriever as DenseRetriever
from sdar_bench.retrieval import HttpRetriever as HttpRetriever
from sdar_bench.retrieval import Retriever as Retriever
from sdar_bench.retrieval import make_retriever as make_retriever


def format_information(passages: Sequence[str]) -> str:
    """Search-R1's rendering of retrieved passages: ``Doc i(Title: t) text`` per line."""
    lines = []
    for i, contents in enumerate(passages, start=1):
        title, _, text = contents.partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}".rstrip())
    return "\n".join(lines)
