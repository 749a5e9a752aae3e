"""Helpers shared by the benchmarks: the quickstart's first run spec and its warm-started policy."""

from __future__ import annotations

import os
from pathlib import Path

from sdar_bench.config import RunSpec, load_suite
from sdar_bench.envs import make_env
from sdar_bench.policy import Policy, load_policy
from sdar_bench.warmstart import warm_start

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def quickstart_spec(method: str = "grpo") -> RunSpec:
    spec = next(
        r for r in load_suite(ROOT / "suites" / "quickstart.yaml").expand() if r.method == method
    )
    return spec


def warm_policy(spec: RunSpec) -> Policy:
    """The quickstart's warm-started policy (trained once if neither shipped nor cached)."""
    policy = load_policy(
        spec.model, spec.train.max_prompt_tokens, env=spec.env, options=spec.policy
    )
    env = make_env(spec.env, **spec.env_params)
    path, _ = warm_start(policy, env, spec, str(policy.model.name_or_path))
    return load_policy(str(path), spec.train.max_prompt_tokens, options=spec.policy)
