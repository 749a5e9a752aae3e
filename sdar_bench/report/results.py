"""Reading a results folder: which runs it holds, which belong together, and their numbers.

Everything the report, ``compare`` and ``power`` know about a results folder comes from here:

* **runs**: every run folder with a readable ``result.json`` (failed runs included, flagged);
  a folder whose ``result.json`` or ``manifest.json`` is unreadable is a *problem* (listed, and
  redone by the next ``sdar-bench run``), never a crash and never a finished run;
* **missing**: every run the suite expects (``suite.json``, written by ``sdar-bench run``) that
  has not finished: not started, unfinished (with its last step), failed or crashed. Runs in the
  folder that the current suite no longer expands to are *stale* and left out of every table;
* **settings**: runs are seeds of one cell only when everything but the seed is the same
  (model, env, method and its parameters, train, eval, warm start, env and policy settings, the
  test panel's hash). Two cells that would print under one row label are refused in one line
  (``MixedSettings``) instead of being pooled;
* **pairs**: runs of two methods pair when they share the seed and everything that decides
  what a seed means (warm start, env settings, evaluation protocol, panel, model, policy);
  their training settings may differ, as they are part of the method compared;
* **values**: per seed, the per-task outcomes of the test-panel evaluation at the final or best
  step (``episodes.jsonl``), in metric units (0–100), or the one summary number of a run
  written before per-episode records existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from sdar_bench.jsonl import read_jsonl
from sdar_bench.run_files import EPISODES_FILE, MANIFEST_FILE, RESULT_FILE, SUITE_FILE

# Spec fields that do not decide what a seed of a cell means.
_NOT_SETTINGS = ("seed", "suite")
# ... and those that may differ between two methods whose runs still pair by seed.
_NOT_PAIRING = (*_NOT_SETTINGS, "method", "method_params", "train")


class ResultsError(ValueError):
    """A results folder that cannot be reported as asked: one line naming what and the fix."""


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass(frozen=True)
class RunRecord:
    """A run with a readable ``result.json``: its folder, its spec and its result."""

    path: Path
    spec: dict[str, Any]
    result: dict[str, Any]
    member: str | None = None
    """For one env of a multitask run: that env (``spec.env`` is then the env and
    ``spec.mix`` the mix); its numbers and episodes are that env's only."""

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def failed(self) -> bool:
        """A run that stopped early (e.g. non-finite updates) still writes ``result.json``."""
        return self.result.get("status", "finished") == "failed"

    @property
    def variant(self) -> str:
        """The method parameters a suite set, as ``k=v,…`` ("" for the defaults)."""
        params = self.spec.get("method_params") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(params.items()))

    def row_label(self, label: str) -> str:
        """An eval label (e.g. "SDAR") with this run's variant: "SDAR [beta=1.0]"."""
        return label + (f" [{self.variant}]" if self.variant else "")

    @property
    def train_label(self) -> str:
        """The label of the trained policy: a starred label is only an evaluation mode."""
        labels = list(self.result.get("final", {}))
        plain = [label for label in labels if not label.endswith("*")]
        return self.row_label((plain or labels or [str(self.spec.get("method"))])[0])

    @property
    def selection(self) -> str:
        """The panel the best step was chosen on: "valid", or "test" for runs written before
        the validation panel existed (their best step is biased upwards)."""
        return str(self.result.get("selection", "test"))

    @property
    def test_panel_hash(self) -> str:
        rows = list(self.result.get("final", {}).values())
        return str(rows[0].get("panel_hash", "")) if rows else ""

    @cached_property
    def settings_key(self) -> str:
        """Equal for runs that are seeds of one cell."""
        spec = {k: v for k, v in self.spec.items() if k not in _NOT_SETTINGS}
        return _fingerprint([spec, self.test_panel_hash])

    @cached_property
    def pairing_key(self) -> str:
        """Equal (with the seed) for runs of two methods that form a pair."""
        spec = {k: v for k, v in self.spec.items() if k not in _NOT_PAIRING}
        return _fingerprint([spec, self.test_panel_hash])

    @cached_property
    def episodes(self) -> list[dict[str, Any]]:
        """The per-episode records of every evaluation ([] for runs written before them)."""
        records = read_jsonl(self.path / EPISODES_FILE)
        if self.member is None:
            return records
        return [r for r in records if r.get("env") == self.member]

    def row(self, which: str, label: str) -> dict[str, Any] | None:
        """The test-panel evaluation row reported as ``which`` (final / best) for ``label``."""
        return self.result.get(which, {}).get(label)

    def task_values(
        self, which: str, label: str, metric: str
    ) -> tuple[list[str], np.ndarray] | None:
        """The task ids and per-task values [J] of ``metric`` at the reported evaluation, or
        None where no per-episode record covers it (or the metric has no per-task form)."""
        row = self.row(which, label)
        if row is None:
            return None
        for record in self.episodes:
            if (
                record.get("step") == row["step"]
                and record.get("label") == label
                and record.get("panel", "test") == "test"
            ):
                values = episode_values(record, metric)
                return None if values is None else (list(record["task"]), values)
        return None


def episode_values(record: dict[str, Any], metric: str) -> np.ndarray | None:
    """Per-task values [J] whose plain mean is ``metric`` of the evaluation, in 0–100 units.

    A per-group metric (``success/<type>``, ``em/<source>``) keeps only its group's tasks. The
    unweighted average over sources (Search-QA ``em/avg``) weighs each task by
    J / (K · n_source), so that the plain mean of the weighted values is the average of the K
    per-source means. Returns None for metrics that are not means over episodes.
    """
    success = 100.0 * np.asarray(record["success"], dtype=float)  # [J]
    if metric in ("success/all", "accuracy"):
        return success
    if metric in ("score", "score/mean"):
        return 100.0 * np.asarray(record["score"], dtype=float)
    if metric.startswith("success/"):
        keep = np.asarray(record["type"]) == metric.split("/", 1)[1]
        return success[keep] if keep.any() else None
    sources = np.asarray(record.get("source", record["type"]))
    if metric == "em/avg":
        names, counts = np.unique(sources, return_counts=True)
        n_of = dict(zip(names.tolist(), counts.tolist(), strict=True))
        weights = np.array([len(sources) / (len(names) * n_of[s]) for s in sources.tolist()])
        return success * weights
    if metric.startswith("em/"):
        keep = sources == metric.split("/", 1)[1]
        return success[keep] if keep.any() else None
    return None


@dataclass(frozen=True)
class MissingRun:
    """A run the suite expects that has no usable result."""

    run_id: str
    state: str  # "not started", "unfinished", "failed", "crashed", "damaged"
    detail: str = ""

    def line(self) -> str:
        return f"`{self.run_id}`: {self.state}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ResultsFolder:
    """A results folder as the report sees it (module docstring)."""

    path: Path
    runs: list[RunRecord] = field(default_factory=list)
    missing: list[MissingRun] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    suite: dict[str, Any] | None = None

    @property
    def reported(self) -> list[RunRecord]:
        """The runs the tables show: finished, not failed."""
        return [r for r in self.runs if not r.failed]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_results(results_dir: Path) -> ResultsFolder:
    """Every run of ``results_dir`` sorted into usable, missing, stale and damaged."""
    folder = ResultsFolder(results_dir)
    expected: list[str] | None = None
    suite_file = results_dir / SUITE_FILE
    if suite_file.exists():
        try:
            folder.suite = _read_json(suite_file)
            expected = [str(r) for r in folder.suite["run_ids"]]
        except (OSError, ValueError, KeyError, TypeError):
            folder.problems.append(f"{SUITE_FILE} is unreadable: every run folder is reported")
    present = sorted(p for p in (results_dir / "runs").glob("*") if p.is_dir())
    wanted = set(expected) if expected is not None else None
    for run_dir in present:
        if wanted is not None and run_dir.name not in wanted:
            folder.stale.append(run_dir.name)
            continue
        record, missing = _read_run(run_dir)
        if record is not None:
            folder.runs += multitask_members(record)
            if record.failed:
                reason = record.result.get("reason") or "no reason recorded"
                folder.missing.append(MissingRun(record.run_id, "failed", str(reason)))
        elif missing is not None:
            folder.missing.append(missing)
            if missing.state == "damaged":
                folder.problems.append(f"runs/{missing.run_id}: {missing.detail}")
    if expected is not None:
        names = {p.name for p in present}
        folder.missing += [MissingRun(r, "not started") for r in expected if r not in names]
    order = {run_id: i for i, run_id in enumerate(expected or [])}
    folder.missing.sort(key=lambda m: (order.get(m.run_id, len(order)), m.run_id))
    return folder


def _read_run(run_dir: Path) -> tuple[RunRecord | None, MissingRun | None]:
    result_file, manifest_file = run_dir / RESULT_FILE, run_dir / MANIFEST_FILE
    if not result_file.exists():
        if (run_dir / "error.txt").exists():
            lines = (run_dir / "error.txt").read_text(errors="replace").strip().splitlines()
            return None, MissingRun(run_dir.name, "crashed", lines[-1] if lines else "")
        steps = [row.get("step") for row in read_jsonl(run_dir / "metrics.jsonl")]
        detail = f"last logged step {steps[-1]}" if steps else "no step logged"
        return None, MissingRun(run_dir.name, "unfinished", detail)
    try:
        result = _read_json(result_file)
        spec = _read_json(manifest_file)["spec"]
        if not isinstance(result, dict) or "final" not in result:
            raise ValueError("no 'final' evaluations")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = f"result.json or manifest.json unreadable ({type(exc).__name__}: {exc})"
        return None, MissingRun(run_dir.name, "damaged", detail)
    return RunRecord(run_dir, spec, result), None


def multitask_members(run: RunRecord) -> list[RunRecord]:
    """A multitask run (``spec.env`` = ``a+b+c``, ``result.by_env``) as one record per member
    env: ``spec.env`` the member, ``spec.mix`` the mix, the member's final/best rows (labelled
    "<method> (multitask)") and its episodes. Every other run: itself.

    The member records keep the mix's settings in their spec, so they are never seeds of a
    single-env cell and never pair with a single-env run (a different warm start, vocabulary and
    training distribution: a seed does not mean the same start); two multitask runs of the same
    mix do pair with each other."""
    by_env = run.result.get("by_env")
    env = str(run.spec.get("env", ""))
    if "+" not in env or not isinstance(by_env, dict):
        return [run]
    out = []
    for member in env.split("+"):
        part = by_env.get(member) or {"final": {}, "best": {}}
        spec = {**run.spec, "env": member, "mix": env}
        result = {**run.result, **part}
        result.pop("by_env", None)
        out.append(RunRecord(run.path, spec, result, member))
    return out


def check_settings(runs: Iterable[RunRecord]) -> None:
    """Refuse, in one line, two runs that would print as seeds of one row but differ in any
    setting other than the seed (ResultsError names the first differing field)."""
    first: dict[tuple[str, str, str], RunRecord] = {}
    for run in runs:
        for label in run.result.get("final", {}):
            key = (str(run.spec.get("model")), str(run.spec.get("env")), run.row_label(label))
            other = first.setdefault(key, run)
            if other.settings_key == run.settings_key:
                continue
            a = _flatten({k: v for k, v in other.spec.items() if k not in _NOT_SETTINGS})
            b = _flatten({k: v for k, v in run.spec.items() if k not in _NOT_SETTINGS})
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            what = (
                f"{diff[0]} ({a.get(diff[0])!r} vs {b.get(diff[0])!r})"
                if diff
                else "the test panel (its hash)"
            )
            raise ResultsError(
                f"runs {other.run_id} and {run.run_id} are both '{key[2]}' on {key[0]}/{key[1]} "
                f"but differ in {what}: they are not seeds of one setting; report them from "
                "separate results folders (or rerun the suite, which records the runs it expects)"
            )
