"""The ``tune:`` block of a suite: a hyper-parameter search over one method's parameters.

It lives in its own module (config.py imports it, never the reverse) and is checked against the
rest of the suite when the suite is loaded, so a typo in the search space is a one-line error
before any trial runs, like every other mistake in a suite file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    import optuna

Scalar = str | bool | int | float | None
"""What a categorical choice may hold (what Optuna stores and YAML writes back unchanged)."""


def _list_as_tuple(value: Any) -> Any:
    # Strict validation takes only a tuple for a tuple field; YAML and JSON dumps give a list.
    return tuple(value) if isinstance(value, list) else value


# Aliases bound before Distribution: inside its body the field named ``int`` shadows the builtin.
FloatRange = Annotated[tuple[float, float], BeforeValidator(_list_as_tuple)]
IntRange = Annotated[tuple[int, int], BeforeValidator(_list_as_tuple)]
BEST_SUFFIX = "-best"
"""``sdar-bench tune`` saves the best parameters as the suite ``<name>-best``."""


class _Strict(BaseModel):
    # The same rules as config.Strict (strict types, finite floats); not imported from there
    # to keep the import one-way.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Distribution(_Strict):
    """One parameter's range: exactly one of the four keys.

    ``{uniform: [lo, hi]}``, ``{log_uniform: [lo, hi]}`` (lo > 0), ``{int: [lo, hi]}``
    (both ends included) or ``{choice: [a, b, ...]}``.
    """

    uniform: FloatRange | None = None
    log_uniform: FloatRange | None = None
    int: IntRange | None = None
    choice: list[Scalar] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("uniform", "log_uniform", "int", "choice") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of uniform: [lo, hi], log_uniform: [lo, hi], int: [lo, hi], "
                "choice: [...]" + (f" (got {', '.join(given)})" if given else "")
            )
        bounds = self.uniform or self.log_uniform or self.int
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError(f"{given[0]}: low {bounds[0]} is above high {bounds[1]}")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("log_uniform: low must be > 0 (a log scale has no zero)")
        return self

    def candidates(self) -> list[Any]:
        """Values that must all be valid for the method: both ends of a range, every choice."""
        bounds = self.uniform or self.log_uniform or self.int
        return list(bounds) if bounds is not None else list(self.choice or [])

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.uniform is not None:
            return trial.suggest_float(name, *self.uniform)
        if self.log_uniform is not None:
            return trial.suggest_float(name, *self.log_uniform, log=True)
        if self.int is not None:
            return trial.suggest_int(name, *self.int)
        return trial.suggest_categorical(name, list(self.choice or []))


class ObjectiveSpec(_Strict):
    metric: str = "success/all"
    """An evaluation metric (a key of the eval rows: success/all, success/<type>, score/mean, …)."""
    which: Literal["final", "best"] = "final"
    """The final evaluation, or the best one (highest success/all, as in the report table)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    label: str | None = None
    """Which evaluation mode (row label, e.g. ``Skill-GRPO*``); None: the method's first one."""


class SamplerSpec(_Strict):
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = Field(0, ge=0, lt=2**31)
    """Seed of trial n's sampler is derived from (seed, n): reproducible with one worker,
    different across workers that share a study (a shared seed would repeat their draws)."""
    n_startup_trials: int = Field(10, ge=0)
    """TPE only: completed trials sampled at random before TPE takes over."""


class PrunerSpec(_Strict):
    name: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)
    """Trials that finish before any pruning happens."""
    n_warmup_steps: int = Field(0, ge=0)
    """Intermediate steps of a trial that are never pruned (see tune.py for the step numbering)."""
    interval_steps: int = Field(1, ge=1)


class TuneSpec(_Strict):
    space: dict[str, Distribution] = Field(min_length=1)
    """Parameter name → range, e.g. ``{beta: {log_uniform: [0.5, 20]}, gate: {choice: [gap]}}``."""
    method: str | None = None
    """The method of the suite to tune; None: the suite's only method."""
    objective: ObjectiveSpec = ObjectiveSpec()
    trials: int = Field(20, ge=1)
    """The study's budget in trials, shared by every worker (pruned and failed ones count)."""
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    @field_validator("space")
    @classmethod
    def _not_a_grid_key(cls, value: dict[str, Distribution]) -> dict[str, Distribution]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a parameter name")
        return value


def tuned_method(methods: list[Any], tune: TuneSpec) -> tuple[str, dict[str, Any]]:
    """(name, fixed params) of the suite's method entry that ``tune`` searches over.

    ``methods`` is the suite's raw list (names or one-key mappings). Raises ValueError with a
    message that names the field.
    """
    entries: list[tuple[str, dict[str, Any]]] = []
    for entry in methods:
        if isinstance(entry, str):
            entries.append((entry, {}))
        else:
            ((name, params),) = entry.items()
            entries.append((name, dict(params or {})))
    names = [name for name, _ in entries]
    if tune.method is None:
        if len(entries) != 1:
            raise ValueError(
                f"method: the suite has {len(entries)} methods ({', '.join(names)}); "
                "name the one to tune"
            )
        wanted = names[0]
    else:
        wanted = tune.method
    matches = [e for e in entries if e[0] == wanted]
    if not matches:
        raise ValueError(
            f"method: {wanted!r} is not one of the suite's methods ({', '.join(names)})"
        )
    if len(matches) > 1:
        raise ValueError(f"method: {wanted!r} appears {len(matches)} times in methods; keep one")
    return matches[0]


def _check_against_suite(tune: TuneSpec | None, info: ValidationInfo) -> TuneSpec | None:
    """Cross-check ``tune`` with the suite fields validated before it (it is the last field)."""
    if tune is None or "methods" not in info.data:
        return tune  # methods itself is invalid: that error is the one to report
    from sdar_bench.registry import get_method_class, method_names, param_error

    name, fixed = tuned_method(info.data["methods"], tune)
    if name not in method_names():
        return tune  # the suite's own check names the unknown method
    allowed = list(get_method_class(name).Params.model_fields)
    for key, value in fixed.items():
        if isinstance(value, list):
            raise ValueError(
                f"methods.{name}.{key}: a list makes a grid, and a tuned method's fixed "
                "parameters need single values (put the range in tune.space)"
            )
    for key, dist in tune.space.items():
        if key not in allowed:
            raise ValueError(
                f"space.{key}: not a parameter of method {name} (allowed: {', '.join(allowed)})"
            )
        if key in fixed:
            raise ValueError(
                f"space.{key}: also fixed in methods.{name}; remove it from one of the two"
            )
        for candidate in dist.candidates():
            problem = param_error(name, {**fixed, key: candidate})
            if problem:
                raise ValueError(f"space.{key}: value {candidate!r}: {problem}")
    return tune


TuneField = Annotated[TuneSpec | None, AfterValidator(_check_against_suite)]
"""The type of ``SuiteSpec.tune``: a TuneSpec (or None) that is checked against the suite."""
