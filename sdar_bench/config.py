"""Validated specifications: a suite (a grid) expands into runs.

Every field has a docstring under it; defaults are the paper's (SPEC §7) where they make sense
on any hardware, and CPU suites override them. Unknown keys are errors everywhere, so a typo in
a suite never silently falls back to a default.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdar_bench.policy.options import PolicyOptions
from sdar_bench.tune_spec import BEST_SUFFIX, TuneField
from sdar_bench.validation import _kind, _shown, describe, printable

# ---- caps ---------------------------------------------------------------------------------------
# Generous limits that no real suite reaches, all checked when a suite is loaded: a slip of the
# keyboard (three extra zeros, an alias bomb) is refused before any work instead of running for
# weeks or filling the memory. README "Commands" lists them.
MAX_FILE_BYTES = 1024 * 1024
"""A suite file's size (checked before it is parsed)."""
MAX_YAML_DEPTH = 64
"""Nesting of lists and mappings in a suite file (a suite needs about 5)."""
MAX_YAML_VALUES = 100_000
"""Values in a suite file, each alias counted as a copy of what it names."""
MAX_RUNS = 10_000
"""Runs a suite expands to (models × envs × method settings × seeds)."""
MAX_SEEDS = 1_000
"""Seeds in one suite."""
SEED_LIMIT = 2**31
"""Seeds are in [0, 2^31): torch generators are seeded with seed * 1_000_003 + step."""
MAX_STEPS = 100_000
"""train.steps and warmstart.steps."""
MAX_TASKS_PER_STEP = 10_000
MAX_GROUP_SIZE = 1_024
MAX_PPO_EPOCHS = 1_000
MAX_TOKENS = 131_072
"""train.max_new_tokens and train.max_prompt_tokens (128 Ki tokens)."""
MAX_PANEL = 100_000
"""eval.panel and eval.valid_panel."""
MAX_WARMSTART_EPISODES = 100_000
MAX_NAME_LENGTH = 100
"""Characters in a suite's name (it names the results folder)."""

Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class Strict(BaseModel):
    # strict: a YAML true or "8" is not silently the integer 1 or 8 (a plain int is still a
    # valid float). allow_inf_nan: .inf and .nan are refused in every float field.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TrainSpec(Strict):
    steps: int = Field(150, ge=0, le=MAX_STEPS)
    """Training steps (one rollout batch and one update each)."""
    tasks_per_step: int = Field(16, ge=1, le=MAX_TASKS_PER_STEP)
    """Distinct tasks per step; each is played ``group_size`` times (the GRPO group)."""
    group_size: int = Field(8, ge=1, le=MAX_GROUP_SIZE)
    """G: copies of each task with the same initial state."""
    lr: float = Field(1e-6, gt=0)
    """AdamW learning rate (paper: 1e-6 for 1.7B–7B models; tiny CPU models need ~5e-4)."""
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    ppo_epochs: int = Field(1, ge=1, le=MAX_PPO_EPOCHS)
    """Passes over each rollout batch (paper: 1)."""
    mini_batches: int = Field(1, ge=1)
    """Optimiser steps per epoch; the batch is split into this many mini-batches."""
    micro_batch_size: int = Field(64, ge=1)
    """Samples per forward/backward; gradients accumulate to the mini-batch (exact token-mean)."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature (paper: 1.0, top-p 1.0)."""
    max_new_tokens: int = Field(512, ge=1, le=MAX_TOKENS)
    """Response token budget per turn."""
    max_prompt_tokens: int = Field(2048, ge=16, le=MAX_TOKENS)
    """Prompt budget without the skill block; older history is cut first, skills never."""
    checkpoint_every: int = Field(10, ge=0)
    """Save weights, optimiser and RNG state every this many steps, so an interrupted run
    resumes there with the same numbers (0: never; the run restarts from step 0)."""
    term_norms_every: int = Field(1, ge=0)
    """Every this many steps, log the gradient norm of each loss term (``grad/pg``,
    ``grad/kl``, ``grad/entropy``, ``grad/aux`` and their sum ``grad/terms``) on the step's
    first micro-batch: what each term contributes to the update. One extra backward pass per
    term over that micro-batch (22% of the quickstart's update), holding two more
    gradient-sized buffers while it runs: raise it, or 0 (never), where gradients fill the GPU.
    Not with ``fsdp``. A measurement only: it changes no number of the run, nor its id."""
    max_nonfinite_in_a_row: int = Field(3, ge=1)
    """Steps in a row whose every update had a non-finite loss or gradient (and was skipped)
    after which the run stops as failed; the suite goes on with the next run."""


class EvalSpec(Strict):
    every: int = Field(5, ge=1)
    """Evaluate before training and every this many steps (and after the last step)."""
    panel: int = Field(128, ge=1, le=MAX_PANEL)
    """Size of the fixed test panel (the first N tasks of the eval split): every reported number
    is measured on it."""
    valid_panel: int | None = Field(None, ge=0, le=MAX_PANEL)
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
    episodes: int = Field(400, ge=1, le=MAX_WARMSTART_EPISODES)
    """Expert episodes generated for the SFT data."""
    steps: int = Field(300, ge=1, le=MAX_STEPS)
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
    seed: Seed | None = None
    """Warm-start seed; None uses each run's seed (one warm start per seed)."""


class RunSpec(Strict):
    suite: str = "adhoc"
    model: str
    env: str
    env_params: dict[str, Any] = {}
    method: str
    method_params: dict[str, Any] = {}
    seed: Seed = 0
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
        # A measurement, not a setting of the run: the same update to the last bit (tested)
        del fields["train"]["term_norms_every"]
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
    """Suite name; results land in ``results/<name>/``: letters, digits, ``-``, ``_`` and ``.``
    (not only dots), at most 100 characters."""
    models: list[str] = Field(min_length=1)
    envs: list[str | list[str]] = Field(min_length=1)
    """Env names; a list of names is one multitask run on all of them at once
    (``envs: [alfworld, [alfworld, webshop, searchqa]]``: ALFWorld alone, then the mix)."""
    methods: list[MethodEntry] = Field(min_length=1)
    """Method names, or ``{name: {param: value}}``; a list of values expands the grid."""
    seeds: list[Seed] = Field([0], min_length=1, max_length=MAX_SEEDS)
    env_params: dict[str, dict[str, Any]] = {}
    """Per-env engine settings, e.g. ``{alfworld: {max_turns: 10}}``; a multitask mix uses each
    member's own (its turn limit, its ``invalid_penalty``)."""
    mix_weights: dict[str, Annotated[float, Field(ge=0)]] = {}
    """Share of each step's tasks per env in a multitask mix, e.g. ``{alfworld: 2, webshop: 1,
    searchqa: 1}`` (normalised; an env left out weighs 1). Only for mixes."""
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

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value) or set(value) == {"."}:
            length = f" ({len(value):,} characters)" if len(value) > MAX_NAME_LENGTH else ""
            raise ValueError(
                f"must be 1 to {MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', not only "
                f"dots, as it names the results folder (e.g. my-suite); got {_shown(value)}"
                + length
            )
        return value

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

        self._check_size()
        if self.tune is not None and len(self.name) + len(BEST_SUFFIX) > MAX_NAME_LENGTH:
            raise ValueError(
                f"name: at most {MAX_NAME_LENGTH - len(BEST_SUFFIX)} characters in a suite with "
                f"a tune: block (its best parameters are saved as the suite <name>{BEST_SUFFIX})"
            )
        members: list[str] = []
        for entry in self.envs:
            names = entry if isinstance(entry, list) else [entry]
            for env in names:
                if env not in ENVS:
                    raise ValueError(
                        f"envs: unknown env {env!r} (known: {', '.join(sorted(ENVS))})"
                    )
            if isinstance(entry, list) and (len(entry) < 2 or len(set(entry)) != len(entry)):
                raise ValueError(
                    f"envs: a multitask mix lists two or more distinct envs; got {entry}"
                )
            members += names
        for env in self.env_params:
            if env not in members:
                raise ValueError(f"env_params: {env!r} is not in envs {self.envs}")
        for env in self.mix_weights:
            if not any(isinstance(e, list) and env in e for e in self.envs):
                raise ValueError(f"mix_weights: {env!r} is in no multitask mix of envs")
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

    def _check_size(self) -> None:
        """At most MAX_RUNS runs, counted without expanding the grid (10^7 runs would take
        minutes and gigabytes just to list)."""
        combos = 0
        for _, params in self.method_items():
            combos += math.prod(len(v) if isinstance(v, list) else 1 for v in params.values())
        factors = {
            "models": len(self.models),
            "envs": len(self.env_names),
            "methods": combos,
            "seeds": len(self.seeds),
        }
        runs = math.prod(factors.values())
        if runs > MAX_RUNS:
            largest = max(factors, key=lambda axis: factors[axis])  # the field to blame
            grid = " × ".join(f"{axis} {n:,}" for axis, n in factors.items())
            raise ValueError(
                f"{largest}: the suite expands to {runs:,} runs ({grid}), more than the cap of "
                f"{MAX_RUNS:,}; list fewer values or split it into several suites"
            )

    def _check_distinct_runs(self) -> None:
        """A grid that lists a value twice, or an empty list of values, is a mistake."""
        for name, params in self.method_items():
            for key, value in params.items():
                if isinstance(value, list) and not value:
                    raise ValueError(
                        f"methods.{name}.{key}: empty list of values; give at least one"
                    )
        for axis in ("models", "env_names", "seeds"):
            counts = Counter(getattr(self, axis))  # one pass: a long list is not quadratic
            twice = sorted(str(v) for v, n in counts.items() if n > 1)
            if twice:
                field = "envs" if axis == "env_names" else axis
                raise ValueError(f"{field}: {', '.join(twice)} listed twice; list each once")
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
        axes = {"model": self.models, "env": self.env_names, "method": names, "seed": self.seeds}
        for i, override in enumerate(self.overrides):
            where = f"overrides.{i}"
            for axis, wanted in override.when.items():
                if wanted == []:
                    raise ValueError(f"{where}.when.{axis}: empty list; give at least one value")
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
                    strict_validate(type(spec), {**spec.model_dump(mode="json"), **changes})
                except ValidationError as exc:
                    raise ValueError(f"{where}.{section}.{describe(exc)}") from None
            matched = [n for n in names if override.matches(method=n, **_any_axis(override))]
            for key, value in override.method_params.items():
                owners = [n for n in matched if key in get_method_class(n).Params.model_fields]
                if not owners:
                    raise ValueError(
                        f"{where}.method_params.{key}: no matched method has this parameter "
                        f"(matched: {', '.join(matched) or 'none'})"
                    )
                if isinstance(value, list):
                    raise ValueError(
                        f"{where}.method_params.{key}: one value, not a list; a list of values "
                        f"makes a grid only under methods (e.g. {{{owners[0]}: {{{key}: [a, b]}}}})"
                    )
                for owner in owners:
                    try:
                        get_method_class(owner).Params.model_validate({key: value})
                    except ValidationError as exc:
                        raise ValueError(
                            f"{where}.method_params.{describe(exc)} (for {owner})"
                        ) from None

    @property
    def env_names(self) -> list[str]:
        """The run-level env names: a multitask mix is its members joined by ``+``."""
        from sdar_bench.envs.mix import mix_name

        return [mix_name(e) if isinstance(e, list) else e for e in self.envs]

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
            for env in self.env_names:
                for name, params in self.method_items():
                    for combo in _expand(params):
                        for seed in self.seeds:
                            runs.append(self._run(model, env, name, combo, seed))
        return runs

    def _env_params(self, env: str) -> dict[str, Any]:
        """A run's env settings; for a mix ``a+b``: ``{a: {...}, b: {...}, mix_weights: {...}}``
        (envs/mix.py), each member's from ``env_params``, the weights from ``mix_weights``."""
        from sdar_bench.envs.mix import WEIGHTS_KEY, is_mix, mix_members

        if not is_mix(env):
            return dict(self.env_params.get(env, {}))
        members = mix_members(env)
        out: dict[str, Any] = {m: dict(self.env_params.get(m, {})) for m in members}
        out[WEIGHTS_KEY] = {m: float(self.mix_weights.get(m, 1.0)) for m in members}
        return out

    def _run(self, model: str, env: str, method: str, params: dict[str, Any], seed: int) -> RunSpec:
        """One run's spec: the shared settings, then each matching override in order."""
        from sdar_bench.registry import get_method_class

        sections = {
            "train": self.train.model_dump(),
            "eval": self.eval.model_dump(),
            "warmstart": self.warmstart.model_dump(),
            "env_params": self._env_params(env),
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
    """A user mistake in a suite file: one line naming the field and the fix.

    Characters that are not printable (a newline or an ANSI escape in a key or a value the
    message quotes) are shown escaped, so the message stays one line and cannot drive the
    terminal it is printed on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


_SLUG = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME_LENGTH}}}")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SuiteLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so ``train:`` written twice would drop the first block's settings. A merge key
    (``<<: *base``) is not a duplicate of the keys it brings: a key of the mapping itself
    overrides the merged one, as YAML defines merges."""


# The same on libyaml's parser where PyYAML was built with it: several times faster. Its error
# messages say less (no "'\t'" in "found character that cannot start any token"), so a file it
# refuses is read again with the pure-Python parser for the message.
_FastSuiteLoader: type[yaml.SafeLoader] = (
    type("_FastSuiteLoader", (yaml.CSafeLoader,), {}) if yaml.__with_libyaml__ else _SuiteLoader
)


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            key: Any = "<<"  # two merge keys in one mapping are a duplicate like any other
        else:
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
    return loader.construct_mapping(node, deep=True)  # merges first, then the mapping's own keys


for _loader in (_SuiteLoader, _FastSuiteLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)

_SUITE_SHAPE = "a suite is a YAML mapping with at least name, models, envs, methods"


def _check_yaml_size(text: str, loader: type[yaml.SafeLoader]) -> None:
    """Refuse a document nested deeper than MAX_YAML_DEPTH, or holding more than MAX_YAML_VALUES
    values once its aliases are expanded, before anything is built from it.

    The composer recurses once per level (100,000 brackets end in a RecursionError), and an
    alias bomb ("billion laughs": ten lines, each alias naming ten copies of the one before)
    expands to 10^9 values wherever the suite is copied, hashed or printed. One pass over the
    parser's events, which does not recurse, with each anchor's expanded size recorded when its
    node closes: linear in the file, whatever its aliases expand to.
    """
    open_nodes: list[list[Any]] = []  # [anchor, values so far] of each open list or mapping
    sizes: dict[str, int | None] = {}  # anchor → values it expands to (None: still open)
    total = 0
    for event in yaml.parse(text, Loader=loader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if len(open_nodes) == MAX_YAML_DEPTH:
                raise ValueError(
                    f"nested too deeply at line {line}: more than {MAX_YAML_DEPTH} levels of "
                    "lists and mappings; check the brackets (a suite needs about five levels)"
                )
            if event.anchor is not None:
                sizes[event.anchor] = None
            open_nodes.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            anchor, count = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = count
        elif isinstance(event, yaml.ScalarEvent):
            count = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in sizes and sizes[event.anchor] is None:
                raise ValueError(
                    f"line {line}: the alias *{event.anchor} is inside the value it names "
                    "(a cycle); copy the values instead"
                )
            count = sizes.get(event.anchor) or 1  # an undefined alias: the composer says so
        else:
            continue
        if open_nodes:
            open_nodes[-1][1] += count
            reached = open_nodes[-1][1]
        else:
            total += count
            reached = total
        if reached > MAX_YAML_VALUES:
            raise ValueError(
                f"more than {MAX_YAML_VALUES:,} values with its aliases (*name) expanded, at "
                f"line {line}; a suite holds a few hundred (is an alias repeated in a loop?)"
            )


def _load_yaml(text: str, loader: type[yaml.SafeLoader]) -> Any:
    _check_yaml_size(text, loader)
    return yaml.load(text, Loader=loader)  # noqa: S506 (SafeLoader subclasses)


def _read_yaml(path: Path, text: str) -> Any:
    try:
        try:
            return _load_yaml(text, _FastSuiteLoader)
        except yaml.YAMLError as exc:
            problem = exc
        if _FastSuiteLoader is not _SuiteLoader:
            try:
                _load_yaml(text, _SuiteLoader)
            except yaml.YAMLError as exc:
                problem = exc  # the pure-Python parser's words
    except ValueError as exc:  # _check_yaml_size
        raise SpecError(f"{path}: {exc}") from None
    mark = getattr(problem, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    raise SpecError(f"{path}: not valid YAML{where}: {getattr(problem, 'problem', problem)}")


class _NotPlain(ValueError):
    """A YAML value that is not text, a number, a boolean, null, a list or a mapping."""


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data; a date, a timestamp, ``!!binary`` or ``!!set`` is refused with
    the field it is in (YAML reads an unquoted 2024-01-01 as a date)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not (key is None or isinstance(key, str | int | float | bool)):
                _plain(key, f"{where}.{key}" if where else str(key))
            out[key] = _plain(item, f"{where}.{key}" if where else str(key))
        return out
    if isinstance(value, list):
        return [_plain(item, f"{where}.{i}") for i, item in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime.date):  # datetime.datetime is a date too
        raise _NotPlain(f"{where}: YAML reads {value} as a date; quote it to make it text")
    raise _NotPlain(
        f"{where}: a {type(value).__name__} (a YAML !!binary or !!set); use text, numbers, "
        "lists and mappings"
    )


def strict_validate(model: type[BaseModel], data: Any) -> Any:
    """``model`` validated from JSON data ``data`` in pydantic's strict mode.

    Strict refuses what lax mode converts silently (``steps: true`` is 1, ``steps: "8"`` is 8),
    in every nested model, also those whose own config is lax (policy options, env settings).
    The data goes through JSON because strict JSON takes an array for a tuple field (YAML has
    no tuples), where strict Python validation takes only a tuple.
    """
    return model.model_validate_json(json.dumps(data), strict=True)


def load_suite(path: str | Path) -> SuiteSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such suite file")
    with path.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)  # never more: the file may be huge or growing
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(
            f"{path}: more than {MAX_FILE_BYTES:,} bytes (1 MiB), the cap for a suite file; "
            "is it the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    data = _read_yaml(path, text)
    if data is None:
        raise SpecError(f"{path}: the file is empty; {_SUITE_SHAPE}")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: {_SUITE_SHAPE}, not a {_kind(data)}")
    try:
        suite = strict_validate(SuiteSpec, _plain(data, ""))
        problem = _runs_problem(suite)
    except _NotPlain as exc:
        raise SpecError(f"{path}: {exc}") from None
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe(exc)}") from None
    if problem:
        raise SpecError(f"{path}: {problem}")
    return suite


def _runs_problem(suite: SuiteSpec) -> str | None:
    """The first setting of an expanded run that its env or its method refuses.

    Checked per run, because a run's settings combine the suite's, the grid's and every
    matching override's: an env setting is a one-line error naming the field here, not a
    pydantic dump when the engine is built, and a method parameter is not a crash at step 0.
    """
    from sdar_bench.envs import ENVS
    from sdar_bench.registry import param_error

    seen: set[str] = set()
    for spec in suite.expand():
        env_key = json.dumps(["env", spec.env, spec.env_params], sort_keys=True)
        if env_key not in seen:
            seen.add(env_key)
            members = spec.env.split("+")
            for env in members:  # a mix: each member's own settings
                params = spec.env_params.get(env, {}) if len(members) > 1 else spec.env_params
                try:
                    strict_validate(ENVS[env].Params, params)
                except ValidationError as exc:
                    return describe(exc, prefix=f"env_params.{env}")
        method_key = json.dumps(["method", spec.method, spec.method_params], sort_keys=True)
        if method_key not in seen:
            seen.add(method_key)
            problem = param_error(spec.method, spec.method_params)
            if problem:
                return (
                    f"methods.{spec.method}: {problem} (in the run of {spec.model} on "
                    f"{spec.env}, seed {spec.seed}, with the overrides that match it)"
                )
    return None
