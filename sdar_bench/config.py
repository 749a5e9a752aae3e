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

from sdar_bench.policy.options import PolicyOptions
from sdar_bench.tune_spec import TuneField


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
    """Size of the fixed test panel (the first N tasks of the eval split): every reported number
    is measured on it."""
    valid_panel: int | None = Field(None, ge=0)
    """Size of the validation panel (the first N tasks of the ``valid`` split, disjoint from the
    test panel), evaluated alongside it; the best step is chosen on it and reported on the test
    panel. None: as large as ``panel``; 0: no validation panel, so no best-step table."""

    @property
    def valid_size(self) -> int:
        """The validation panel's size (0: none)."""
        return self.panel if self.valid_panel is None else self.valid_panel

    @property
    def panels(self) -> tuple[str, ...]:
        """The panels every evaluation plays, in the order it writes them."""
        return ("test", "valid") if self.valid_size else ("test",)

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
    policy: PolicyOptions = PolicyOptions()

    @property
    def run_id(self) -> str:
        """A readable, unique directory name for the run."""
        fields = self.model_dump(mode="json")
        if self.policy.rollout == "transformers":
            # The default rollout leaves the id as it was before the option existed, so the
            # runs already on disk are still found (finished, or resumed from a checkpoint).
            for key in ("rollout", "vllm"):
                del fields["policy"][key]
        tag = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        short = (
            ""
            if not self.method_params
            else "-" + "-".join(f"{k}{v}" for k, v in sorted(self.method_params.items()))
        )
        model = Path(self.model).name
        return f"{model}__{self.env}__{self.method}{short}__s{self.seed}__{tag}".replace("/", "_")


MethodEntry = str | dict[str, dict[str, Any] | None]
AXES = ("model", "env", "method", "seed")


class Override(Strict):
    """Settings for the runs that match ``when``, on top of the suite's shared ones.

    ``when: {model: Qwen/Qwen2.5-7B-Instruct}`` with ``train: {lr: 5.0e-7}`` gives that model
    its own learning rate; ``when: {env: searchqa}`` with ``method_params: {c_kl: 0.001}`` sets
    the KL weight of every method on Search-QA that has one. Later overrides win.
    """

    when: dict[str, Any] = {}
    """Axis values to match: model, env, method, seed (a value or a list of values)."""
    train: dict[str, Any] = {}
    eval: dict[str, Any] = {}
    warmstart: dict[str, Any] = {}
    env_params: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    """Model loading options, e.g. LoRA and gradient checkpointing for the largest model."""
    method_params: dict[str, Any] = {}
    """Applied to the matched methods that have each parameter."""

    @field_validator("when")
    @classmethod
    def _known_axes(cls, value: dict[str, Any]) -> dict[str, Any]:
        for axis in value:
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} (match on {', '.join(AXES)})")
        return value

    def matches(self, **axes: Any) -> bool:
        for axis, wanted in self.when.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            if axes[axis] not in values:
                return False
        return True


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
    policy: PolicyOptions = PolicyOptions()
    """How models load: dtype, device, gradient checkpointing, LoRA (sdar_bench.policy.options)."""
    overrides: list[Override] = []
    """Per-axis settings, e.g. a learning rate per model or ``c_kl`` per env (see Override)."""
    tune: TuneField = None
    """A hyper-parameter search over one method (``sdar-bench tune``); ``run`` ignores it.
    Kept the last field: its check reads the fields validated before it."""

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
        self._check_overrides()
        self._check_distinct_runs()
        return self

    def _check_distinct_runs(self) -> None:
        """A grid that lists a value twice, or an empty list of values, is a mistake."""
        for name, params in self.method_items():
            for key, value in params.items():
                if isinstance(value, list) and not value:
                    raise ValueError(
                        f"methods.{name}.{key}: empty list of values; give at least one"
                    )
        for axis in ("models", "envs", "seeds"):
            values = getattr(self, axis)
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"{axis}: {', '.join(twice)} listed twice; list each once")
        seen: set[str] = set()
        for name, params in self.method_items():
            for combo in _expand(params):
                key = json.dumps([name, combo], sort_keys=True)
                if key in seen:
                    raise ValueError(f"methods: {name} {combo or ''} listed twice; list each once")
                seen.add(key)

    def _check_overrides(self) -> None:
        """Every override matches something and every key it sets is valid where it lands."""
        from sdar_bench.registry import get_method_class

        names = [name for name, _ in self.method_items()]
        axes = {"model": self.models, "env": self.envs, "method": names, "seed": self.seeds}
        for i, override in enumerate(self.overrides):
            where = f"overrides.{i}"
            for axis, wanted in override.when.items():
                for value in wanted if isinstance(wanted, list) else [wanted]:
                    if value not in axes[axis]:
                        raise ValueError(
                            f"{where}.when.{axis}: {value!r} is not in the suite's {axis}s "
                            f"{axes[axis]}"
                        )
            for section, spec in (("train", self.train), ("eval", self.eval),
                                  ("warmstart", self.warmstart), ("policy", self.policy)):  # fmt: skip
                changes = getattr(override, section)
                try:
                    type(spec)(**{**spec.model_dump(), **changes})
                except ValidationError as exc:
                    raise ValueError(f"{where}.{section}.{describe(exc)}") from None
            matched = [n for n in names if override.matches(method=n, **_any_axis(override))]
            for key in override.method_params:
                if not any(key in get_method_class(n).Params.model_fields for n in matched):
                    raise ValueError(
                        f"{where}.method_params.{key}: no matched method has this parameter "
                        f"(matched: {', '.join(matched) or 'none'})"
                    )

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
                            runs.append(self._run(model, env, name, combo, seed))
        return runs

    def _run(self, model: str, env: str, method: str, params: dict[str, Any], seed: int) -> RunSpec:
        """One run's spec: the shared settings, then each matching override in order."""
        from sdar_bench.registry import get_method_class

        sections = {
            "train": self.train.model_dump(),
            "eval": self.eval.model_dump(),
            "warmstart": self.warmstart.model_dump(),
            "env_params": dict(self.env_params.get(env, {})),
            "policy": self.policy.model_dump(),
        }
        accepted = get_method_class(method).Params.model_fields
        for override in self.overrides:
            if not override.matches(model=model, env=env, method=method, seed=seed):
                continue
            for section, values in sections.items():
                values.update(getattr(override, section))
            # A suite's own method entry is more specific than an override: it wins.
            extra = {k: v for k, v in override.method_params.items() if k in accepted}
            params = {**extra, **params}
        return RunSpec(
            suite=self.name,
            model=model,
            env=env,
            env_params=sections["env_params"],
            method=method,
            method_params=params,
            seed=seed,
            train=TrainSpec(**sections["train"]),
            eval=EvalSpec(**sections["eval"]),
            warmstart=WarmStartSpec(**sections["warmstart"]),
            policy=PolicyOptions(**sections["policy"]),
        )


def _any_axis(override: Override) -> dict[str, Any]:
    """Axis values that make ``override`` match on every axis but method."""
    first = {a: (v[0] if isinstance(v, list) else v) for a, v in override.when.items()}
    return {a: first.get(a) for a in AXES if a != "method"}


def _expand(params: dict[str, Any]) -> list[dict[str, Any]]:
    """``{a: [1, 2], b: 3}`` → ``[{a: 1, b: 3}, {a: 2, b: 3}]``."""
    combos: list[dict[str, Any]] = [{}]
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


class SpecError(ValueError):
    """A user mistake in a suite file: one line naming the field and the fix."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so ``train:`` written twice would drop the first block's settings."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep one", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)

_SUITE_SHAPE = "a suite is a YAML mapping with at least name, models, envs, methods"


def load_suite(path: str | Path) -> SuiteSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such suite file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise SpecError(f"{path}: the file is empty; {_SUITE_SHAPE}")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: {_SUITE_SHAPE}, not a {_kind(data)}")
    try:
        # model_validate, not SuiteSpec(**data): a YAML key such as 1 is not a keyword.
        suite = SuiteSpec.model_validate(data)
        problem = _env_params_problem(suite)
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe(exc)}") from None
    if problem:
        raise SpecError(f"{path}: {problem}")
    return suite


def _env_params_problem(suite: SuiteSpec) -> str | None:
    """The first env setting its engine rejects, checked here so that a typo in ``env_params``
    is a one-line error naming the field, not a pydantic dump when the engine is built."""
    from sdar_bench.envs import ENVS

    seen: set[str] = set()
    for spec in suite.expand():
        key = json.dumps([spec.env, spec.env_params], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            ENVS[spec.env].Params(**spec.env_params)
        except ValidationError as exc:
            return describe(exc, prefix=f"env_params.{spec.env}")
    return None


# Messages for a value of the wrong shape, where pydantic's wording is about Python types.
_UNION_HINTS = {
    "methods": "a method entry is a name such as grpo, or {name: {param: value}} such as "
    "{sdar: {beta: 5.0}}",
}
# Pydantic's tags for the members of a union (e.g. "str", "dict[str,nullable[...]]"); they are
# part of an error's location but not a field a user wrote.
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part)


def _kind(value: object) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: object) -> str:
    text = "nothing (null)" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(exc: ValidationError, prefix: str = "") -> str:
    """The first validation error as one line: the field's dotted path and what to do.

    ``prefix`` is the path of the model that raised, for models validated on their own (an
    env's settings under ``env_params.<env>``).
    """
    err = exc.errors()[0]
    loc = list(err["loc"])
    branch = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
    if branch is not None:
        loc = loc[:branch]  # the value matched no member of a union: name the value itself
    field = ".".join(str(p) for p in [*([prefix] if prefix else []), *loc])
    message = err["msg"].removeprefix("Value error, ")
    kind, value = err["type"], err.get("input")
    scalar = value is None or isinstance(value, str | int | float | bool)
    if kind in ("extra_forbidden", "invalid_key"):
        message = "unknown key; remove it or check its spelling"
    elif kind == "missing":
        message = "required; add it"
    elif branch is not None:
        hint = _UNION_HINTS.get(str(loc[0]) if loc else "", "")
        message = f"{hint or 'not a valid value'}; got {_shown(value)}"
    elif kind in ("model_type", "dict_type"):
        message = f"should be a mapping {{setting: value}}; got {_shown(value)}"
    elif kind == "list_type":
        example = f"[{value}]" if scalar and value is not None else "[a, b]"
        message = f"should be a list such as {example}; got {_shown(value)}"
    elif scalar and kind != "value_error":
        message = f"{message}; got {_shown(value)}"
    return f"{field}: {message}" if field else message  # model-level checks name their field
