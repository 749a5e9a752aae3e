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


@pytest.fixture(scope="session")
def tiny_sdar_step():
    """``step(method_params, **train)``: one real training step of a tiny SDAR run (ALFWorld,
    3 turns, 2 tasks × 2 copies, 8 new tokens, micro-batches of 4, lr 1e-3, no warm start), from
    fresh weights seeded as ``execute_run`` seeds them; ``train`` overrides those settings.
    Returns the step's metrics and the policy after it."""
    import torch

    from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
    from sdar_bench.policy import load_policy
    from sdar_bench.trainer import setup, train_step

    def step(method_params: dict, **train):  # noqa: ANN003, ANN202
        settings = {
            "steps": 1,
            "tasks_per_step": 2,
            "group_size": 2,
            "lr": 1e-3,
            "max_new_tokens": 8,
            "micro_batch_size": 4,
        }
        spec = RunSpec(
            model="tiny-qwen-1m",
            env="alfworld",
            env_params={"max_turns": 3},
            method="sdar",
            method_params=method_params,
            seed=0,
            train=TrainSpec(**(settings | train)),
            eval=EvalSpec(every=2, panel=3),
            warmstart=WarmStartSpec(enabled=False),
        )
        torch.manual_seed(spec.seed)  # as execute_run does
        policy = load_policy(spec.model, env=spec.env)
        torch.manual_seed(spec.seed)
        return train_step(setup(spec, policy), 0), policy

    return step
