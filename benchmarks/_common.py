"""Helpers shared by the benchmarks: the quickstart's first run spec, its warm-started policy, and a
rollout backend that records what it generated."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from sdar_bench.config import RunSpec, load_suite
from sdar_bench.envs import make_env
from sdar_bench.policy import Policy, load_policy
from sdar_bench.policy.backend import RolloutBackend
from sdar_bench.warmstart import warm_start

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def quickstart_spec(method: str = "grpo") -> RunSpec:
    spec = next(
        r for r in load_suite(ROOT / "suites" / "quickstart.yaml").expand() if r.method == method
    )
    return spec


def method_cost_spec(method: str = "grpo") -> RunSpec:
    """The quickstart's run spec without the per-term gradient norms: those are a measurement
    (one backward pass per loss term, about a fifth of the update), not a method's own work."""
    spec = quickstart_spec(method)
    return spec.model_copy(update={"train": spec.train.model_copy(update={"term_norms_every": 0})})


def warm_policy(spec: RunSpec) -> Policy:
    """The quickstart's warm-started policy (trained once if neither shipped nor cached)."""
    policy = load_policy(
        spec.model, spec.train.max_prompt_tokens, env=spec.env, options=spec.policy
    )
    env = make_env(spec.env, **spec.env_params)
    path, _ = warm_start(policy, env, spec, str(policy.model.name_or_path))
    return load_policy(str(path), spec.train.max_prompt_tokens, options=spec.policy)


class RecordingBackend:
    """A rollout backend, unchanged, plus every call's time, prompts, responses and (where the
    backend returns them, as vLLM does) the engine's log-probs of the sampled tokens."""

    def __init__(self, inner: RolloutBackend) -> None:
        self.inner = inner
        self.call_seconds: list[float] = []
        self.prompts: list[list[int]] = []
        self.responses: list[list[int]] = []
        self.logprobs: list[list[float]] = []

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
    ) -> list[list[int]]:
        start = time.perf_counter()
        out = self.inner.generate(prompts, max_new_tokens, temperature, generator_seed)
        self.call_seconds.append(time.perf_counter() - start)
        self.prompts += [list(p) for p in prompts]
        self.responses += out
        self.logprobs += getattr(self.inner, "last_logprobs", [])
        return out

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def sleep(self) -> None:
        self.inner.sleep()

    @property
    def seconds(self) -> float:
        return sum(self.call_seconds)

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.responses)
