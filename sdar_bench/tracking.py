"""MLflow tracking: an experiment per suite, a parent run per invocation, a child per run.

Layout in the tracking store:

* **experiment** = the suite's name. With the default store (``sqlite:///<results>/mlflow.db``)
  its artifacts live next to the database, in ``<results>/mlartifacts``, so a results directory
  stays self-contained and ``mlflow ui`` needs no server.
* **parent run** = one ``sdar-bench run`` invocation (tags ``suite``, ``sdar_bench.role=suite``),
  with the flattened suite spec as params and the suite's tables/plots as artifacts.
* **child run** = one benchmark run, nested under the parent through the ``mlflow.parentRunId``
  tag (tags ``run_id``, ``suite``, ``sdar_bench.role=run``), with the flattened run spec as
  params, every training step as metrics (``reward/mean`` …), every evaluation under
  ``eval/<label>/…`` and the run's ``spec.yaml``, ``manifest.json`` and ``result.json`` as
  artifacts.

Resume: finished runs are skipped by the suite, so an invocation only opens children for runs
it actually executes. Anything still ``RUNNING`` in the experiment with our role tag when a new
invocation starts was left behind by a crashed or killed process, and is marked ``KILLED``;
its re-execution becomes a fresh child of the new parent. A run that continues from its
checkpoint calls :meth:`RunTracker.backfill` so the new child still holds the whole curve. Two
invocations on one results folder cannot overlap (its lock, ``sdar_bench.locking``), but two
folders of the same suite name logging to one shared tracking server share an experiment: the
second to start marks the first's live runs as KILLED (their files on disk are unaffected).

The files under ``runs/<run_id>/`` stay the source of truth. Tracking is best effort: the first
error talking to MLflow during training is reported as one warning and tracking stops for the
rest of the invocation, instead of stalling or killing a long training run over a monitoring
hiccup. Errors while opening the suite (a wrong URI, an unreachable server) are raised, so a
misconfiguration is seen before anything trains.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sdar_bench.jsonl import read_jsonl

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
ROLE_TAG = "sdar_bench.role"

# MLflow's documented limits (mlflow.utils.validation); copied as numbers so that importing
# this module stays cheap: mlflow itself is imported only once a tracker is opened.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
# MLflow also accepts ':' except on Windows; leaving it out keeps names portable across stores.
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_./\- ]")

T = TypeVar("T")


def default_uri(results_dir: Path) -> str:
    """``sqlite:///<absolute results_dir>/mlflow.db``: a local store that needs no server."""
    return f"sqlite:///{(Path(results_dir) / DEFAULT_DB).resolve()}"


def tracking_uri(results_dir: Path, configured: str | None = None) -> str:
    """The store to track to: ``configured`` (suite file or CLI) > ``$MLFLOW_TRACKING_URI`` > default."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results_dir)


def ui_command(
    results_dir: Path, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None
) -> list[str]:
    """argv of ``mlflow ui`` over a suite's store (``uri``, default: the results dir's sqlite).

    Runs mlflow through this interpreter, so it works without an activated venv. A remote
    server (``http(s)://``) already has its own UI: there is nothing to start.
    """
    store = uri or default_uri(results_dir)
    if store.startswith(("http://", "https://")):
        raise ValueError(f"{store} is a tracking server: open it in a browser instead")
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", store,
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


WITH_SKILLS = " with skills"
"""How a key spells a row label's ``*`` (evaluated with skills): MLflow allows neither ``*`` nor
parentheses, and ``Skill-Prompt with skills`` reads back to ``Skill-Prompt*`` unambiguously."""


def sanitize_key(name: str) -> str:
    """A metric/param name MLflow accepts: allowed characters, a clean relative path, ≤ 250 chars.

    A row label's ``*`` becomes ``WITH_SKILLS``; any other character MLflow refuses becomes ``_``.
    """
    name = _BAD_NAME_CHARS.sub("_", str(name).replace("*", WITH_SKILLS))
    # MLflow rejects names that are not already a normalised relative path ('a//b', '/a', 'a/').
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return "/".join(parts)[:_MAX_KEY] or "_"


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return text[:_MAX_PARAM_VALUE]


def flatten_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec → ``{"train.lr": "0.0005", ...}``; MLflow params are flat strings.

    Lists are kept whole as JSON (a grid's values belong together), empty mappings as ``{}`` so
    that e.g. ``method_params`` shows up even when a method has none; values are cut at MLflow's
    6000-character limit rather than rejected.
    """
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[sanitize_key(name)] = "{}" if isinstance(value, Mapping) else _param_value(value)
    return out


def flatten_metrics(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numeric scalars of a (nested) row, nested mappings joined with ``/``.

    ``{"gap/by_turn": {0: 0.1}}`` → ``{"gap/by_turn/0": 0.1}``. Booleans, strings, lists, None and
    NaN/inf are left out: MLflow rejects non-finite values, and the rest is not a metric.
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                out[sanitize_key(name)] = number
    return out


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _quiet_mlflow() -> None:
    """MLflow's INFO logs (database migrations, 'View run … at' lines) break the progress bars."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # no 'git executable not found' warning
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


class _Connection:
    """An ``MlflowClient`` that turns itself off after its first error (see module docstring)."""

    def __init__(self, uri: str, enabled: bool) -> None:
        self.uri = uri
        self.enabled = enabled
        self.client: Any = None
        if enabled:
            from mlflow import MlflowClient

            _quiet_mlflow()  # after the import: importing mlflow sets its loggers to INFO
            self.client = MlflowClient(tracking_uri=uri)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not end the training
            self.enabled = False
            warnings.warn(
                f"MLflow tracking to {self.uri} stopped ({what}: {type(exc).__name__}: {exc}); "
                "the run files on disk are complete",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        entries = [Param(k, v) for k, v in params.items()]
        for chunk in _chunks(entries, _MAX_PARAMS_PER_BATCH):
            self.call("log params", self.client.log_batch, run_id, params=chunk)

    def log_metrics(self, run_id: str, steps: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for step, row in steps for k, v in row.items()]
        # A live step (~30 metrics) is one request; a backfill packs many steps per request.
        for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH):
            self.call("log metrics", self.client.log_batch, run_id, metrics=chunk)

    def log_artifacts(self, run_id: str, paths: Iterable[Path]) -> None:
        for path in map(Path, paths):
            # A failed run has no result.json: log what exists rather than fail on the rest.
            if path.is_dir():
                self.call("log artifacts", self.client.log_artifacts, run_id, str(path), path.name)
            elif path.is_file():
                self.call("log artifact", self.client.log_artifact, run_id, str(path))

    def terminate(self, run_id: str, status: str) -> None:
        self.call("end run", self.client.set_terminated, run_id, status)


class RunTracker:
    """The child run of one benchmark run; a context manager that ends it FINISHED or FAILED."""

    def __init__(self, connection: _Connection, run_id: str | None) -> None:
        self._conn = connection
        self.mlflow_run_id = run_id
        """MLflow's id of the child run (None when tracking is off)."""
        self._open = run_id is not None

    def log_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One training step's metrics (non-numeric and non-finite values are skipped)."""
        if self._open:
            self._conn.log_metrics(self.mlflow_run_id, [(step, _step_metrics(metrics))])

    def log_eval(self, step: int, row: Mapping[str, Any]) -> None:
        """One evaluation row, as ``eval/<label>/<metric>`` on the test panel and
        ``valid/<label>/<metric>`` on the validation panel (label = the row's skill mode)."""
        if self._open:
            self._conn.log_metrics(self.mlflow_run_id, [(step, _eval_metrics(row))])

    def backfill(self, run_dir: Path) -> int:
        """Log the steps and evaluations already in ``run_dir``'s ``metrics.jsonl``/``eval.jsonl``.

        For a run that resumes from its checkpoint: its earlier steps belong to a child that
        was killed, and this child should still show the whole curve. Returns the rows logged.
        """
        if not self._open:
            return 0
        steps = [(int(r["step"]), _step_metrics(r)) for r in _read_jsonl(run_dir / "metrics.jsonl")]
        evals = [(int(r["step"]), _eval_metrics(r)) for r in _read_jsonl(run_dir / "eval.jsonl")]
        self._conn.log_metrics(self.mlflow_run_id, steps + evals)
        return len(steps) + len(evals)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Files (e.g. spec.yaml, manifest.json, result.json) or folders; missing ones are skipped."""
        if self._open:
            self._conn.log_artifacts(self.mlflow_run_id, paths)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED; later calls do nothing."""
        if self._open:
            self._open = False
            self._conn.terminate(self.mlflow_run_id, status)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(_status_for(exc_type))


def _step_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return flatten_metrics({k: v for k, v in row.items() if k != "step"})


def _eval_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    body = {k: v for k, v in row.items() if k not in ("step", "label", "panel")}
    prefix = "valid" if row.get("panel") == "valid" else "eval"
    return flatten_metrics(body, f"{prefix}/{row.get('label', 'eval')}/")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for row in read_jsonl(path) if isinstance(row, dict) and "step" in row]


def _status_for(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


class SuiteTracker:
    """The parent run of one suite invocation; open children with :meth:`run`.

    ``enabled=False`` makes every method a no-op (and never imports mlflow), so callers need no
    branches when tracking is switched off.
    """

    def __init__(
        self,
        suite_name: str,
        results_dir: Path,
        uri: str | None = None,
        suite_params: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.suite_name = suite_name
        self.results_dir = Path(results_dir)
        self.uri = tracking_uri(self.results_dir, uri)
        self.suite_params = dict(suite_params or {})
        self._conn = _Connection(self.uri, enabled)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def __enter__(self) -> SuiteTracker:
        if not self._conn.enabled:
            return self
        client = self._conn.client
        self.experiment_id = self._experiment()
        self._kill_stale_runs()
        parent = client.create_run(
            self.experiment_id,
            run_name=f"{self.suite_name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"suite": self.suite_name, ROLE_TAG: "suite"},
        )
        self.parent_run_id = parent.info.run_id
        self._conn.log_params(self.parent_run_id, flatten_params(self.suite_params))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.parent_run_id is not None:
            self._conn.terminate(self.parent_run_id, _status_for(exc_type))

    def _experiment(self) -> str:
        client = self._conn.client
        found = client.get_experiment_by_name(self.suite_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            # A server picks its own artifact store; a store opened directly (sqlite, a database
            # URL, a folder) would otherwise put artifacts in ./mlruns of whatever the cwd is.
            location = (self.results_dir / ARTIFACT_DIR).resolve().as_uri()
        return client.create_experiment(self.suite_name, artifact_location=location)

    def _kill_stale_runs(self) -> None:
        from mlflow.entities import ViewType

        client = self._conn.client
        stale = client.search_runs(
            [self.experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
        )
        for run in stale:
            if ROLE_TAG in run.data.tags:
                client.set_terminated(run.info.run_id, "KILLED")

    def run(self, run_id: str, params: Mapping[str, Any] | None = None) -> RunTracker:
        """Open the child run of benchmark run ``run_id``; ``params`` is its (nested) spec."""
        if self.parent_run_id is None or not self._conn.enabled:
            return RunTracker(self._conn, None)
        child = self._conn.call(
            "start run",
            self._conn.client.create_run,
            self.experiment_id,
            run_name=run_id,
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "run_id": run_id,
                "suite": self.suite_name,
                ROLE_TAG: "run",
            },
        )
        if child is None:
            return RunTracker(self._conn, None)
        self._conn.log_params(child.info.run_id, flatten_params(params or {}))
        return RunTracker(self._conn, child.info.run_id)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Suite-level files (table.md, table.csv, plots) on the parent run."""
        if self.parent_run_id is not None:
            self._conn.log_artifacts(self.parent_run_id, paths)
