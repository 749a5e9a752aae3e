"""Search-QA: an offline world of fictional entities with BM25, or Search-R1 data (SPEC §5)."""

from sdar_bench.envs.searchqa.engine import SearchQAGame, exact_match, normalize_answer
from sdar_bench.envs.searchqa.env import SearchQAEnv, SearchQAParams

__all__ = ["SearchQAEnv", "SearchQAGame", "SearchQAParams", "exact_match", "normalize_answer"]
