"""Validated specifications: a suite (a grid) expands into runs.

Every field has a docstring under it; defaults are the paper's (SPEC §7) where they make sense
on any hardware, and CPU suites override them. Unknown keys are errors everywhere, so a typo in
a suite never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSpec(Strict):
    steps: int = Field(150, ge=0)
    """Training steps (one rollout batch and one update each)."""
    tasks_per_step: int = Field(16, ge=1)
    """Distinct tasks per step; each is played ``group_size`` times (the GRPO group)."""
    group_size: int = Field(8, ge=1)
    """G: copies of each task with the same initial state."""
    lr: float = Field(1e-6, gt=0)
    """AdamW learning rate (paper: 1e-6 for 1.7B–7B models; tiny CPU models need ~5e-4)."""
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each rollout batch (paper: 1)."""
    mini_batches: int = Field(1, ge=1)
    """Optimiser steps per epoch; the batch is split into this many mini-batches."""
    micro_batch_size: int = Field(64, ge=1)
    """Samples per forward/backward; gradients accumulate to the mini-batch (exact token-mean)."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature (paper: 1.0, top-p 1.0)."""
    max_new_tokens: int = Field(512, ge=1)
    """Response token budget per turn."""
    max_prompt_tokens: int = Field(2048, ge=16)
    """Prompt budget without the skill block; older history is cut first, skills never."""
    checkpoint_every: int = Field(10, ge=0)
    """Save weights, optimiser and RNG state every this many steps, so an interrupted run
    resumes there with the same numbers (0: never; the run restarts from step 0)."""
    max_nonfinite_in_a_row: int = Field(3, ge=1)
    """Steps in a row whose every update had a non-finite loss or gradient (and was skipped)
    after which the run stops as failed; the suite goes on with the next run."""


class EvalSpec(Strict):
    every: int = Field(5, ge=1)
    """Evaluate before training and every this many steps (and after the last step)."""
    panel: int = Field(128, ge=1)
    """Size of the fixed evaluation panel (the first N tasks of the eval split)."""
    temperature: float | None = Field(None, ge=0)
    """Sampling temperature; None takes the env's protocol (ALFWorld/WebShop 0.4, QA greedy)."""


class WarmStartSpec(Strict):
    enabled: bool = True
    """Supervised warm start on expert trajectories (tiny models only; ignored for pretrained)."""
    episodes: int = Field(400, ge=1)
    """Expert episodes generated for the SFT data."""
    steps: int = Field(300, ge=1)
    """SFT optimiser steps; few enough that the policy stays mediocre and RL has room."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    skill_share: float = Field(0.5, ge=0, le=1)
    """Share of warm-start episodes played with the skill block in the prompt."""
    noise_with_skills: float = Field(0.05, ge=0, le=1)
    """Share of random actions in episodes that show the skill block (teacher quality knob)."""
    noise_without_skills: float = Field(0.3, ge=0, le=1)
    """Share of random actions in episodes without skills (student quality knob)."""
    prompt_loss: bool = True
    """Train on the prompt tokens too, not only the response. A model trained from scratch
    learns to copy names (the skill every action needs) from the prompts' own repetitions
    ("You arrive at cabinet 1. The cabinet 1 is closed."), which are ten times more tokens
    than the responses; with response-only loss a 1M model had not learnt it after 1,200 steps."""
    seed: int | None = None
    """Warm-start seed; None uses each run's seed (one warm start per seed)."""


class RunSpec(Strict):
    suite: str = "adhoc"
    model: str
    env: str
    env_params: dict[str, Any] = {}
    method: str
    method_params: dict[str, Any] = {}
    seed: int = 0
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    warmstart: WarmStartSpec = WarmStartSpec()

    @property
    def run_id(self) -> str:
        """A readable, unique directory name for the run."""
        tag = hashlib.sha256(
            json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()[:8]
        short = (
            ""
            if not self.method_params
            else "-" + "-".join(f"{k}{v}" for k, v in sorted(self.method_params.items()))
        )
        model = Path(self.model).name
        return f"{model}__{self.env}__{self.method}{short}__s{self.seed}__{tag}".replace("/", "_")


MethodEntry = str | dict[str, dict[str, Any] | None]


class SuiteSpec(Strict):
    name: str
    """Suite name; results land in ``results/<name>/``."""
    models: list[str] = Field(min_length=1)
    envs: list[str] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    """Method names, or ``{name: {param: value}}``; a list of values expands the grid."""
    seeds: list[int] = Field([0], min_length=1)
    env_params: dict[str, dict[str, Any]] = {}
    """Per-env engine settings, e.g. ``{alfworld: {max_turns: 10}}``."""
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    warmstart: WarmStartSpec = WarmStartSpec()

    @field_validator("methods")
    @classmethod
    def _method_entries(cls, value: list[MethodEntry]) -> list[MethodEntry]:
        for entry in value:
            if isinstance(entry, dict) and len(entry) != 1:
                raise ValueError("each method entry is a name or a one-key mapping {name: params}")
        return value

    @model_validator(mode="after")
    def _known_names(self) -> SuiteSpec:
        from sdar_bench.envs import ENVS
        from sdar_bench.registry import method_names, param_error

        for env in self.envs:
            if env not in ENVS:
                raise ValueError(f"envs: unknown env {env!r} (known: {', '.join(sorted(ENVS))})")
        for env in self.env_params:
            if env not in self.envs:
                raise ValueError(f"env_params: {env!r} is not in envs {self.envs}")
        for name, params in self.method_items():
            if name not in method_names():
                raise ValueError(
                    f"methods: unknown method {name!r} (known: {', '.join(method_names())})"
                )
            for combo in _expand(params):
                problem = param_error(name, combo)
                if problem:
                    raise ValueError(f"methods.{name}: {problem}")
        return self

    def method_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for entry in self.methods:
            if isinstance(entry, str):
                out.append((entry, {}))
            else:
                ((name, params),) = entry.items()
                out.append((name, dict(params or {})))
        return out

    def expand(self) -> list[RunSpec]:
        """The grid: models × envs × methods (× parameter lists) × seeds, in a stable order."""
        runs = []
        for model in self.models:
            for env in self.envs:
                for name, params in self.method_items():
                    for combo in _expand(params):
                        for seed in self.seeds:
                            runs.append(
                                RunSpec(
                                    suite=self.name,
                                    model=model,
                                    env=env,
                                    env_params=self.env_params.get(env, {}),
                                    method=name,
                                    method_params=combo,
                                    seed=seed,
                                    train=self.train,
                                    eval=self.eval,
                                    warmstart=self.warmstart,
                                )
                            )
        return runs


def _expand(params: dict[str, Any]) -> list[dict[str, Any]]:
    """``{a: [1, 2], b: 3}`` → ``[{a: 1, b: 3}, {a: 2, b: 3}]``."""
    combos: list[dict[str, Any]] = [{}]
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


class SpecError(ValueError):
    """A user mistake in a suite file: one line naming the field and the fix."""


def load_suite(path: str | Path) -> SuiteSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{path}: a suite is a YAML mapping with at least name, models, envs, methods"
        )
    try:
        return SuiteSpec(**data)
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as one line: the field's dotted path and what to do."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key; remove it or check its spelling"
    elif err["type"] == "missing":
        message = "required; add it"
    return f"{field}: {message}" if field else message  # model-level checks name their field
