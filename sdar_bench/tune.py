"""Hyper-parameter search over one method of a suite with Optuna (``sdar-bench tune``).

A **trial** is the suite's runs (models × envs × seeds) of the tuned method with the sampled
parameters, each executed by :func:`sdar_bench.run.execute_run` into
``<results>/tune/trial_<n>/<run_id>/``; its value is the objective metric (final or best
evaluation) on the **validation panel**, averaged over those runs: parameters chosen on the test
panel would make the report's test-panel numbers look better than they are.

**Pruning.** Every evaluation of a run gives the trial an intermediate value: the mean over the
runs evaluated so far of the metric at that step (for ``which: best``, at the best evaluation up
to that step). Runs of a trial execute one after another, so the intermediate step of
evaluation ``s`` in run ``i`` is ``i·(train.steps + 1) + s``: every trial reports the same steps
in the same order, which is what the pruner compares across trials.

**Failures.** A run that ends ``failed`` (non-finite updates in a row) or crashes makes its trial
FAIL with the reason in the trial's ``fail_reason`` user attribute; the study goes on.

**Workers.** The study lives in an Optuna RDB storage (default: SQLite ``<results>/optuna.db``);
any number of ``sdar-bench tune`` processes, on one machine or several, that name the same
storage and study share it: trial numbers are unique, and the study stops at ``tune.trials``
trials in all. Running the command again resumes the study. A trial interrupted with Ctrl-C is
marked FAIL and its parameters are queued again; a worker killed outright leaves a heartbeat
that goes stale, and the next worker does the same for its trial. Neither counts against the
budget.

**Outputs** (``<results>/tune/``, rewritten by every worker when it stops): ``best_params.yaml``
(the suite without ``tune:``, named ``<suite>-best``, with the best parameters, for
``sdar-bench run``), ``trials.csv``, ``trials.md`` and ``plots/*.png``. With MLflow on, each worker
opens a parent run in the experiment ``<study>-tune`` and one nested run per trial.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from sdar_bench.config import SuiteSpec
from sdar_bench.tracking import RunTracker, SuiteTracker
from sdar_bench.tune_spec import ObjectiveSpec, PrunerSpec, SamplerSpec, TuneSpec, tuned_method

TUNE_DIR = "tune"
STUDY_DB = "optuna.db"
BEST_FILE = "best_params.yaml"
FINGERPRINT_ATTR = "sdar_bench.fingerprint"
RETRY_ATTR = "retry_of"
HEARTBEAT_S = 60
GRACE_S = 300


class TuneError(ValueError):
    """A mistake that stops the study (wrong storage, changed suite, unknown metric): one line."""


# --------------------------------------------------------------------------- suites


def trial_suite(suite: SuiteSpec, params: Mapping[str, Any]) -> SuiteSpec:
    """The runs of one trial: only the tuned method, its fixed parameters plus ``params``."""
    assert suite.tune is not None
    name, fixed = tuned_method(suite.methods, suite.tune)
    data = suite.model_dump(mode="json", exclude={"tune"})
    data["methods"] = [{name: {**fixed, **params}}]
    return SuiteSpec(**data)


def best_suite(suite: SuiteSpec, params: Mapping[str, Any]) -> SuiteSpec:
    """The tuning suite as a plain suite named ``<name>-best``: every method it had (baselines
    included, so ``sdar-bench run`` compares against them), the tuned one with ``params``."""
    assert suite.tune is not None
    name, fixed = tuned_method(suite.methods, suite.tune)
    # only what the tuning suite sets: the file reads like the suite it came from
    data = suite.model_dump(mode="json", exclude={"tune"}, exclude_unset=True)
    data["name"] = f"{suite.name}-best"
    data["methods"] = [
        {name: {**fixed, **params}}
        if (entry == name or (isinstance(entry, dict) and name in entry))
        else entry
        for entry in data["methods"]
    ]
    return SuiteSpec(**data)


def fingerprint(suite: SuiteSpec) -> str:
    """What must not change while a study is resumed or shared: the runs and what is searched.

    The budget, sampler and pruner may change between invocations; anything that changes the
    meaning of a trial's value may not.
    """
    assert suite.tune is not None
    tune = suite.tune.model_dump(mode="json", include={"space", "method", "objective"})
    body = {"suite": suite.model_dump(mode="json", exclude={"tune", "name"}), "tune": tune}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def objective_label(suite: SuiteSpec) -> str:
    """The eval row label the objective reads: the given one, else the method's first mode."""
    from sdar_bench.registry import get_method_class

    assert suite.tune is not None
    if suite.tune.objective.label is not None:
        return suite.tune.objective.label
    name, _ = tuned_method(suite.methods, suite.tune)
    cls = get_method_class(name)
    return cls.row_label(cls.eval_skill_modes[0])


# --------------------------------------------------------------------------- sampler, pruner


class TrialSeededSampler(BaseSampler):
    """A fresh inner sampler for every trial, seeded from (seed, trial number).

    One seeded sampler per worker would make workers that share a study draw the same values;
    seeding per trial keeps a single worker reproducible and gives every trial its own stream.
    TPE and random sampling keep no state besides their RNG (they read the history from the
    study), so nothing is lost by building them per trial.
    """

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._make = make
        self._seed = seed
        self._per_trial: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._per_trial:
            seed = None
            if self._seed is not None:
                seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
            self._per_trial[trial.number] = self._make(seed)
        return self._per_trial[trial.number]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._per_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._seed = None  # Optuna asks for this when it forks samplers (n_jobs > 1)


def build_sampler(spec: SamplerSpec) -> BaseSampler:
    def make(seed: int | None) -> BaseSampler:
        if spec.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: with several workers, running trials count as bad guesses, so two
        # workers do not pile onto the same region before either has a result
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=spec.n_startup_trials, constant_liar=True
        )

    return TrialSeededSampler(make, spec.seed)


def build_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.n_startup_trials,
        n_warmup_steps=spec.n_warmup_steps,
        interval_steps=spec.interval_steps,
    )


# --------------------------------------------------------------------------- storage, study


def default_storage(results: Path) -> str:
    """``sqlite:///<absolute results>/optuna.db``: one file, no server, fine for one machine."""
    return f"sqlite:///{(Path(results) / STUDY_DB).resolve()}"


def public_url(url: str) -> str:
    """The storage URL without its password: what goes into files, logs and MLflow."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
        return url.split("@")[-1]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers on one SQLite file: wait for the write lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    # A worker that died mid-trial stops its heartbeat: the next worker marks that trial FAIL and
    # queues its parameters once more (Optuna ≥ 4.9 names the callback differently).
    with warnings.catch_warnings():
        # heartbeats are "experimental" in Optuna's terms, and stable since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(1)
            retry = {"heartbeat_stale_trial_callback": callback}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(1)}
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    **retry,
                )
        except Exception as exc:  # noqa: BLE001 - retried below, reported in one line at the end
            # Workers that start together on a new database race to create its tables.
            last = exc
            time.sleep(0.5 + attempt)
    raise TuneError(
        f"--storage: cannot open {public_url(url)}: {type(last).__name__}: {last}".splitlines()[0]
    )


@contextmanager
def machine_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (other processes on this machine wait).

    Workers that start together on fresh SQLite files race to create and migrate their tables
    (MLflow's migrations fail outright when two run at once), so opening the stores is done
    one worker at a time. Without ``fcntl`` (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_study(suite: SuiteSpec, storage_url: str, study_name: str) -> optuna.Study:
    """Create the study, or join it (resume, or another worker) if it exists."""
    assert suite.tune is not None
    tune = suite.tune
    storage = open_storage(storage_url)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=build_sampler(tune.sampler),
            pruner=build_pruner(tune.pruner),
            direction=tune.objective.direction,
            load_if_exists=True,
        )
    except ValueError as exc:  # e.g. an existing study with the other direction
        raise TuneError(f"--study-name {study_name}: {exc}".splitlines()[0]) from None
    mine = fingerprint(suite)
    theirs = study.user_attrs.get(FINGERPRINT_ATTR)
    if theirs is None:
        study.set_user_attr(FINGERPRINT_ATTR, mine)
        study.set_user_attr("suite", suite.name)
    elif theirs != mine:
        raise TuneError(
            f"--study-name {study_name}: the study in {public_url(storage_url)} was started "
            f"from a different suite or tune space/objective (suite "
            f"{study.user_attrs.get('suite')!r}); pass another --study-name to start a new study"
        )
    return study


# --------------------------------------------------------------------------- intermediate values


class _StopRun(BaseException):
    """Leaves ``execute_run`` from its callback. A BaseException, so that ``safe_execute``
    (which turns any Exception into a crashed run) lets it through."""

    def __init__(self, message: str, pruned: bool) -> None:
        super().__init__(message)
        self.pruned = pruned


@dataclass
class Curves:
    """A trial's evaluations, per run, and the intermediate values they make (module docstring)."""

    objective: ObjectiveSpec
    label: str
    steps: int
    """train.steps of every run: it spaces the runs' intermediate steps apart."""
    panel: str = "valid"
    """The panel the objective reads: the validation panel, so that the parameters a study
    picks are never chosen on the test panel the report shows ("test" only when the suite
    turned the validation panel off)."""
    rows: list[list[dict[str, Any]]] = field(default_factory=list)

    def add(self, run: int, row: Mapping[str, Any]) -> tuple[int, float] | None:
        """Record an eval row of run ``run``; its (intermediate step, value), or None if the
        row is another evaluation mode."""
        if row.get("label") != self.label or row.get("panel", "test") != self.panel:
            return None
        if self.objective.metric not in row:
            have = ", ".join(k for k, v in row.items() if isinstance(v, int | float))
            raise TuneError(
                f"tune.objective.metric: {self.objective.metric!r} is not in the evaluation "
                f"rows (they have: {have})"
            )
        while len(self.rows) <= run:
            self.rows.append([])
        self.rows[run].append(dict(row))
        step = int(row["step"])
        values = [self._at(rows, step) for rows in self.rows[: run + 1] if rows]
        return run * (self.steps + 1) + step, sum(values) / len(values)

    def _at(self, rows: list[dict[str, Any]], step: int) -> float:
        """The run's value up to ``step``: its last evaluation, or its best one (the highest,
        or lowest when minimising, value of the metric)."""
        upto = [r for r in rows if r["step"] <= step] or rows[:1]
        values = [float(r[self.objective.metric]) for r in upto]
        if self.objective.which == "final":
            return values[-1]
        return max(values) if self.objective.direction == "maximize" else min(values)


def report(trial: optuna.Trial, position: int, value: float) -> None:
    """Give the trial an intermediate value; raise ``optuna.TrialPruned`` if the pruner says so."""
    trial.report(value, position)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at intermediate step {position} (value {value:.4g})")


# --------------------------------------------------------------------------- the objective


class TuneTracker(SuiteTracker):
    """The suite tracker, for several workers at once.

    ``SuiteTracker`` marks every run still RUNNING in its experiment as KILLED when it opens
    (left behind by a dead invocation); in a shared study the RUNNING trials belong to live
    workers, so that clean-up is skipped here.
    """

    def _kill_stale_runs(self) -> None:
        return None

    def set_tags(self, run: RunTracker, tags: Mapping[str, Any]) -> None:
        if run.mlflow_run_id is None:
            return
        for key, value in tags.items():
            self._conn.call(
                "set tag", self._conn.client.set_tag, run.mlflow_run_id, key, str(value)
            )


@dataclass
class Objective:
    """Optuna's objective: one call runs one trial's runs (see the module docstring)."""

    suite: SuiteSpec
    out: Path
    """``<results>/tune``."""
    tracker: TuneTracker
    console: Console
    study_name: str

    def __call__(self, trial: optuna.Trial) -> float:
        tune = self.suite.tune
        assert tune is not None
        params = {key: dist.suggest(trial, key) for key, dist in tune.space.items()}
        runs = trial_suite(self.suite, params).expand()
        folder = self.out / f"trial_{trial.number}"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        self._say(f"[bold]trial {trial.number}[/] ({shown}): {len(runs)} runs")
        trial.set_user_attr("dir", str(folder))
        panel = "test" if self.suite.eval.valid_panel == 0 else "valid"
        curves = Curves(
            tune.objective, objective_label(self.suite), self.suite.train.steps, panel=panel
        )
        tags = {"optuna.study": self.study_name, "optuna.trial": trial.number}
        with self.tracker.run(
            f"trial_{trial.number}", {**params, "trial": trial.number}
        ) as tracked:
            try:
                value, failure = self._runs(trial, runs, folder, curves, tracked)
            except KeyboardInterrupt:
                # The worker is stopping, the parameters did not fail: queue them again, so the
                # resumed study runs this trial afresh, and keep it out of the budget.
                trial.set_user_attr("fail_reason", "interrupted; queued again")
                trial.study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
                self.tracker.set_tags(tracked, {**tags, "optuna.state": "interrupted"})
                raise
            except _StopRun as stop:
                if not stop.pruned:
                    tracked.finish("FAILED")
                    raise TuneError(str(stop)) from None
                trial.set_user_attr("pruned", str(stop))
                self.tracker.set_tags(tracked, {**tags, "optuna.state": "pruned"})
                tracked.finish("KILLED")
                self._say(f"trial {trial.number} [yellow]pruned[/]: {stop}")
                raise optuna.TrialPruned(str(stop)) from None
            if failure is not None:
                trial.set_user_attr("fail_reason", failure)
                self.tracker.set_tags(tracked, {**tags, "optuna.state": "failed"})
                tracked.finish("FAILED")
                self._say(f"trial {trial.number} [red]failed[/]: {failure}")
                # NaN, not an exception: Optuna records FAIL and the study goes on, without
                # printing a traceback for what is an outcome of the parameters
                return float("nan")
            tracked.log_step(0, {"objective": value})
            self.tracker.set_tags(tracked, {**tags, "optuna.state": "complete"})
            tracked.finish("FINISHED")
        self._say(
            f"trial {trial.number} complete: {tune.objective.metric} ({tune.objective.which}) "
            f"= {value:.4g}"
        )
        return value

    def _say(self, text: str) -> None:
        # one line per event, never wrapped: worker logs are read in files and grepped
        self.console.print(text, soft_wrap=True, highlight=False)

    def _runs(
        self,
        trial: optuna.Trial,
        runs: list[Any],
        folder: Path,
        curves: Curves,
        tracked: RunTracker,
    ) -> tuple[float, str | None]:
        """Execute the trial's runs in order: (mean objective, None) or (nan, why it failed)."""
        from sdar_bench.suite import safe_execute

        tune = self.suite.tune
        assert tune is not None
        values = []
        for index, spec in enumerate(runs):

            def callback(event: str, info: dict[str, Any], index: int = index) -> None:
                if event != "eval":
                    return
                try:
                    point = curves.add(index, info)
                except TuneError as exc:
                    raise _StopRun(str(exc), pruned=False) from None
                if point is None:
                    return
                position, value = point
                tracked.log_step(position, {f"intermediate/{tune.objective.metric}": value})
                try:
                    report(trial, position, value)
                except optuna.TrialPruned as exc:
                    raise _StopRun(str(exc), pruned=True) from None

            outcome = safe_execute(spec, folder / spec.run_id, callback)
            if outcome.get("status") != "finished":
                return math.nan, f"{spec.run_id}: {outcome.get('status')}: {outcome.get('reason')}"
            row = outcome[tune.objective.which].get(curves.label)
            if row is None or tune.objective.metric not in row:
                raise _StopRun(
                    f"tune.objective: no {tune.objective.metric!r} for label {curves.label!r} "
                    f"in {spec.run_id}'s result (labels: {', '.join(outcome['final'])})",
                    pruned=False,
                )
            values.append(float(row[tune.objective.metric]))
        trial.set_user_attr("values_per_run", values)
        value = sum(values) / len(values)
        if not math.isfinite(value):
            return math.nan, f"the objective is not finite ({value})"
        return value, None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the study


@dataclass
class TuneSummary:
    study_name: str
    storage: str
    """The storage URL without its password."""
    trials: int
    """Trials in the study (all workers, all states) when this worker stopped."""
    ran: int
    """Trials this worker ran."""
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    files: list[Path]


def budget_used(study: optuna.Study) -> int:
    """Trials that count against ``tune.trials``: finished or running, all workers together,
    except those queued again (interrupted by Ctrl-C, or found stale after a worker died)."""
    trials = study.get_trials(deepcopy=False)
    retried = set()
    for t in trials:
        # our re-queue after an interrupt, or Optuna's after a stale heartbeat
        origin = t.user_attrs.get(RETRY_ATTR, t.system_attrs.get("failed_trial"))
        if origin is not None:
            retried.add(origin)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(1 for t in trials if t.state in counted and t.number not in retried)


def tune_suite(
    suite: SuiteSpec,
    results: Path,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    tracking_uri: str | None = None,
    mlflow: bool = True,
    console: Console | None = None,
) -> TuneSummary:
    """Run this worker's share of the study of ``suite.tune``, then write the outputs.

    ``n_trials``: at most this many trials here (None: until the study has ``tune.trials``);
    ``timeout``: start no trial after this many seconds (a running trial is not interrupted).
    """
    from sdar_bench.plan import preflight
    from sdar_bench.suite import prepare_warm_starts
    from sdar_bench.tracking import tracking_uri as resolve_uri

    if suite.tune is None:
        raise TuneError(f"{suite.name}: the suite has no tune: block")
    console = console or Console()
    results = Path(results)
    out = results / TUNE_DIR
    out.mkdir(parents=True, exist_ok=True)
    study_name = study_name or suite.name
    url = storage or default_storage(results)
    uri = resolve_uri(results, tracking_uri) if mlflow else None

    probe = trial_suite(suite, {})  # the runs with the method's defaults: what every trial needs
    problems = preflight(probe, out, uri=uri)
    if problems:
        raise TuneError(problems[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    lock = results / ".tune.lock"
    with machine_lock(lock):
        study = open_study(suite, url, study_name)
    budget = suite.tune.trials
    started = budget_used(study)
    console.print(
        f"[bold]{study_name}[/]: {started} of {budget} trials started, storage "
        f"{public_url(url)}, runs in {out}",
        soft_wrap=True,
        highlight=False,
    )
    mine: list[int] = []
    with ExitStack() as stack:
        if started < budget and (n_trials is None or n_trials > 0):
            suite_params = {
                "study": study_name,
                "storage": public_url(url),
                "fingerprint": fingerprint(suite),
                **suite.model_dump(mode="json"),
            }
            with machine_lock(lock):  # one warm-start training and one MLflow migration
                prepare_warm_starts(probe.expand(), console)
                tracker = stack.enter_context(
                    TuneTracker(f"{study_name}-tune", results, uri, suite_params, enabled=mlflow)
                )
            study.optimize(
                Objective(suite, out, tracker, console, study_name),
                n_trials=n_trials,
                timeout=timeout,
                callbacks=[lambda done, trial: _after_trial(done, trial, budget, mine)],
            )
            files = write_outputs(study, suite, out, url)
            tracker.log_artifacts(files)
        else:
            files = write_outputs(study, suite, out, url)
    best = _best(study)
    return TuneSummary(
        study_name=study_name,
        storage=public_url(url),
        trials=len(study.get_trials(deepcopy=False)),
        ran=len(mine),
        best_number=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        files=files,
    )


def _after_trial(study: optuna.Study, trial: FrozenTrial, budget: int, mine: list[int]) -> None:
    """Stop this worker once the study, all workers together, has used its budget."""
    mine.append(trial.number)
    if budget_used(study) >= budget:
        study.stop()


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


# --------------------------------------------------------------------------- outputs


def write_outputs(study: optuna.Study, suite: SuiteSpec, out: Path, url: str) -> list[Path]:
    """best_params.yaml (once a trial completed), trials.csv, trials.md and plots/*.png."""
    assert suite.tune is not None
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    files = [*_write_tables(trials, suite.tune, out)]
    best = _best(study)
    if best is not None:
        files.append(_write_best(suite, best, out, study.study_name, url))
    files.extend(write_plots(study, suite.tune, out / "plots"))
    return files


def _atomic(path: Path, text: str) -> Path:
    # several workers may write the same outputs at the same time: never a half-written file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _write_best(suite: SuiteSpec, best: FrozenTrial, out: Path, study_name: str, url: str) -> Path:
    assert suite.tune is not None
    objective = suite.tune.objective
    n_runs = len(best.user_attrs.get("values_per_run", []))
    spec = best_suite(suite, best.params)
    header = (
        f"# Best trial of the Optuna study {study_name!r} ({public_url(url)}): trial "
        f"{best.number}, {objective.metric} ({objective.which}, mean over {n_runs} run{'s' * (n_runs != 1)}) = "
        f"{best.value:.6g}.\n"
        f"# Written by `sdar-bench tune`; the tuning suite {suite.name!r} without its tune: "
        "block. Run it with:\n"
        f"#   sdar-bench run {out / BEST_FILE}\n"
    )
    body = yaml.safe_dump(
        spec.model_dump(mode="json", exclude={"tune"}, exclude_unset=True), sort_keys=False
    )
    return _atomic(out / BEST_FILE, header + body)


def trial_rows(trials: list[FrozenTrial], tune: TuneSpec) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        note = t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned") or ""
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **{k: t.params.get(k) for k in tune.space},
                "intermediate_steps": len(t.intermediate_values),
                "seconds": None if duration is None else round(duration, 1),
                "note": note,
            }
        )
    return rows


def _write_tables(trials: list[FrozenTrial], tune: TuneSpec, out: Path) -> list[Path]:
    rows = trial_rows(trials, tune)
    heads = ["number", "state", "value", *tune.space, "intermediate_steps", "seconds", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=heads, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    best = max(
        (r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None),
        key=lambda r: r["value"] if tune.objective.direction == "maximize" else -r["value"],
        default=None,
    )
    lines = [
        f"Objective: {tune.objective.metric} ({tune.objective.which} evaluation, mean over the "
        f"suite's runs), {tune.objective.direction}; best trial in bold.",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "|".join("---" for _ in heads) + "|",
    ]
    for row in rows:
        cells = ["" if row[h] is None else _short(row[h]) for h in heads]
        cells = [c.replace("|", "/").replace("\n", " ") for c in cells]
        if row is best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return [
        _atomic(out / "trials.csv", buffer.getvalue()),
        _atomic(out / "trials.md", "\n".join(lines) + "\n"),
    ]


def _contour_pair(tune: TuneSpec) -> list[str] | None:
    """beta × coef when both are searched (SDAR's gate), else the first two numeric params."""
    if {"beta", "coef"} <= set(tune.space):
        return ["beta", "coef"]
    numeric = [k for k, d in tune.space.items() if d.choice is None]
    return numeric[:2] if len(numeric) >= 2 else None


def write_plots(study: optuna.Study, tune: TuneSpec, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNG; the ones the trials cannot support yet are skipped."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker machine
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[[], Any]] = {
        "history": lambda: vis.plot_optimization_history(study),
        "slice": lambda: vis.plot_slice(study),
    }
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate"] = lambda: vis.plot_intermediate_values(study)
    if len(complete) >= 2 and len(tune.space) >= 2:
        plots["importances"] = lambda: vis.plot_param_importances(study)
    pair = _contour_pair(tune)
    if pair is not None and len(complete) >= 2:
        plots[f"contour_{pair[0]}_{pair[1]}"] = lambda: vis.plot_contour(study, params=pair)
    written = []
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. "too few trials" notes
            try:
                axes = draw()
            except Exception as exc:  # noqa: BLE001 - a plot must never lose the study's results
                warnings.warn(f"plot {name} skipped: {type(exc).__name__}: {exc}", stacklevel=2)
                plt.close("all")
                continue
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.{os.getpid()}.png"
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(figure)
        written.append(path)
    return written
