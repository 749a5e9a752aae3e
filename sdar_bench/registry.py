"""The method registry and the one contract every method follows.

A method is a class with a ``Params`` model (its knobs, with SPEC's defaults), three class-level
answers to the trainer's questions (``trains``, ``needs_teacher``, ``student_sees_skills``), an
``advantages`` hook (GRPO's group normalisation unless the method reshapes it), optionally how
much of the teacher's distribution it needs (``teacher_topk``) and ``loss`` on one mini-batch. Methods are discovered through the entry-point group ``sdar_bench.methods``, so a
third-party package can add one without touching this repository.

The advantages contract. The trainer calls ``advantages(view, rewards, group_ids, step)`` with
one entry per turn sample (``rewards`` [N], ``group_ids`` [N]) and expects ``[N, T]`` back. A
method that needs more of the batch's structure than the task group (GiGPO: which episode a
sample is from, its turn number, the state it was taken in) sets ``needs_samples = True`` and
then also gets ``samples=SampleInfo(...)`` as a keyword; methods that do not set it are called
exactly as before, so a method written for the four-argument form keeps working unchanged.
``reads_old_logp`` says whether ``advantages`` reads ``view.old_logp`` (RLSD does): when it
does not, the trainer may skip the separate scoring pass that fills it (one PPO epoch, one
mini-batch); None (the default) means "only if the method overrides ``advantages``".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdar_bench.token_view import TokenView, total

ENTRY_POINT_GROUP = "sdar_bench.methods"


@dataclass(frozen=True)
class SampleInfo:
    """Where each turn sample of a step's batch comes from (one entry per sample, ``[N]``).

    Passed to ``Method.advantages`` as ``samples=`` when the method sets ``needs_samples``.
    """

    group_ids: torch.Tensor
    """[N] the task group (GRPO's group): the task's index within the step."""
    episode_ids: torch.Tensor
    """[N] the episode (one of the G copies of a task): unique within the step."""
    turn_index: torch.Tensor
    """[N] the turn number within its episode, from 0."""
    turn_rewards: torch.Tensor
    """[N] the turn's own reward r_t: the episode reward R on the episode's last turn, 0 on
    the others, minus the env's invalid-action penalty c_inv on an invalid turn. Summed over an
    episode it is R − c_inv·(invalid turns). (``rewards`` gives R − c_inv·invalid to every turn.)"""
    anchors: tuple[str, ...]
    """[N] the state the turn was taken in, as text (``rollout.Turn.anchor``: the current
    observation and the admissible actions); equal texts within a task group are one state."""

    def __len__(self) -> int:
        return len(self.anchors)


class MethodParams(BaseModel):
    """Knobs every training method shares (SPEC §2). Unknown keys are an error."""

    # strict: a YAML true or "8" is not silently 1 or 8.0; no .inf or .nan in any parameter.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    clip_eps: float = Field(0.2, gt=0, lt=1)
    """PPO clip range ε in (0, 1): the ratio is clipped to [1−ε, 1+ε]."""
    dual_clip: float = Field(3.0, gt=1)
    """Dual-clip constant c > 1: for A < 0 the surrogate is capped at −A·c."""
    c_kl: float = Field(0.01, ge=0)
    """Weight (≥ 0) of the k3 KL to the reference policy (SPEC uses 0.001 on Search-QA)."""
    c_ent: float = Field(0.001, ge=0)
    """Entropy bonus weight (≥ 0; subtracted from the loss)."""


class Method:
    """Base class of every method. Subclasses set the class attributes and override
    ``loss_terms`` (or ``loss``)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    """Row name in the paper's Table 1 (``*`` is appended for rows evaluated with skills)."""
    description: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams

    trains: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = False
    student_sees_skills: ClassVar[bool] = False
    eval_skill_modes: ClassVar[tuple[bool, ...]] = (False,)
    """Evaluate without skills (False), with skills (True), or both (Skill-GRPO / Skill-GRPO*)."""
    needs_samples: ClassVar[bool] = False
    """True: ``advantages`` also gets ``samples=SampleInfo(...)`` (episodes, turns, states)."""
    reads_old_logp: ClassVar[bool | None] = None
    """Whether ``advantages`` reads ``view.old_logp``; None: iff it overrides ``advantages``."""

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    def advantages(
        self,
        view: TokenView,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        step: int,
        samples: SampleInfo | None = None,
    ) -> torch.Tensor:
        """Per-token advantages ``[B, T]``; GRPO's group-normalised reward by default.

        ``samples`` is given only to methods with ``needs_samples`` (see the module docstring).
        """
        from sdar_bench.advantages import group_advantages

        return group_advantages(rewards, group_ids)[:, None] * view.mask  # [B, T]

    def teacher_topk(self) -> int | None:
        """How many of the teacher's likeliest tokens per response token the trainer keeps for
        this method (``TokenView.teacher_topk_*``, and the student's log-probs at the same ids
        in ``student_topk_logp``), or None: nothing beyond the sampled token (the default).
        Only asked of methods with ``needs_teacher``; costs B·T·K·12 bytes of CPU memory."""
        return None

    def loss_terms(self, view: TokenView) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The loss as its named, weighted terms, which sum to it (``"pg"``, ``"kl"``,
        ``"entropy"``, ``"aux"``: what each contributes to the update is then measurable), and
        the step's metrics. Training methods override this; a method that overrides ``loss``
        alone has one term, ``"total"``."""
        if type(self).loss is Method.loss:
            raise NotImplementedError(f"method {self.name!r} does not train")
        loss, metrics = self.loss(view)
        return {"total": loss}, metrics

    def loss(self, view: TokenView) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss (the sum of ``loss_terms``) and the metrics."""
        if type(self).loss_terms is Method.loss_terms:
            raise NotImplementedError(f"method {self.name!r} does not train")
        terms, metrics = self.loss_terms(view)
        return total(terms), metrics

    @classmethod
    def advantages_read_old_logp(cls) -> bool:
        """Whether the trainer must fill ``view.old_logp`` before calling ``advantages``."""
        if cls.reads_old_logp is not None:
            return cls.reads_old_logp
        return cls.advantages is not Method.advantages

    @classmethod
    def row_label(cls, with_skills: bool) -> str:
        return cls.label + ("*" if with_skills else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


_REGISTRY: dict[str, type[Method]] = {}
_LOADED = False


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Register a method class under ``name``; refuses a second class under the same name."""

    def decorate(cls: type[Method]) -> type[Method]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"method {name!r} is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _LOADED
    if _LOADED:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        register_method(ep.name)(cls)
    _LOADED = True


def method_names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_method(name: str, **params: Any) -> Method:
    """Instantiate a registered method with its parameters validated against ``Params``."""
    return get_method_class(name)(**params)


def param_error(name: str, params: dict[str, Any]) -> str | None:
    """A one-line description of what is wrong with ``params`` for method ``name``, or None."""
    from sdar_bench.validation import explain

    try:
        get_method_class(name).Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(get_method_class(name).Params.model_fields)
        if err["type"] == "extra_forbidden":
            return f"unknown parameter {field!r} (allowed: {allowed})"
        # worded as every other field's error: the value got, hints for YAML's surprises
        return f"parameter {field!r}: {explain(exc)}"
    return None
