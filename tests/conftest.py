"""Shared fixtures: a per-session cache so tests never touch the user's ~/.cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "SDAR_BENCH_TEST_CACHE" in os.environ:  # reuse built models across local test sessions
        os.environ["SDAR_BENCH_CACHE"] = os.environ["SDAR_BENCH_TEST_CACHE"]
    else:
        os.environ["SDAR_BENCH_CACHE"] = str(tmp_path_factory.mktemp("sdar-cache"))


@pytest.fixture(scope="session")
def tiny_policy():
    from sdar_bench.policy import load_policy

    return load_policy("tiny-qwen-1m", env="alfworld")
