"""Run a suite: expand the grid, skip finished runs, execute the rest, write the report.

Three executors share one unit of work, ``execute_run`` on one ``RunSpec``:

* ``local`` with one worker: runs one after another in this process, with a progress bar per
  run (the default; the CPU quickstart);
* ``local`` with N workers: N spawned processes, each with cores ÷ N torch threads;
* ``ray``: one Ray task per run with its CPU/GPU request, on a local Ray instance or the
  cluster at ``--address``. Workers write into the results folder and read the warm-start
  cache, so on a multi-node cluster both must be on shared storage.

One run can also span several processes (README, "Scale"): ``--nproc N`` spawns N ranks per
run on this machine (``launch_run``; torch's spawn tears every rank down when one dies), and
``torchrun ... -m sdar_bench run-rank`` makes every torchrun process a rank of each run in turn
(``run_suite_ranks``, for several nodes).

Warm starts are trained here, before any run starts, so parallel runs never train the same one
twice. A run that crashes is recorded (``error.txt`` with the traceback) and the suite goes on.

The suite holds ``<results>/.lock`` while it runs and records itself in ``<results>/suite.json``
(its name, fingerprint, spec and run ids: what the report expects to find); every executor
takes a run's own lock before executing it (``sdar_bench.locking``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sdar_bench import distributed
from sdar_bench.checkpoint import CHECKPOINT_FILE
from sdar_bench.config import RunSpec, SuiteSpec
from sdar_bench.jsonl import write_json_atomic
from sdar_bench.locking import RunInUse, folder_lock, run_lock
from sdar_bench.run import Callback, execute_run, execute_run_rank
from sdar_bench.run_files import SUITE_FILE, is_finished, read_result
from sdar_bench.tracking import RunTracker, SuiteTracker

EXECUTORS = ("local", "ray")


class FolderHoldsAnotherSuite(ValueError):
    """The results folder records a suite of another name."""


def suite_record(suite: SuiteSpec) -> dict[str, Any]:
    """What ``suite.json`` holds: the suite's name, a fingerprint of its spec, the spec, and the
    id of every run it expands to (the runs a complete results folder has)."""
    spec = suite.model_dump(mode="json")
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return {
        "name": suite.name,
        "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
        "spec": spec,
        "run_ids": [run.run_id for run in suite.expand()],
    }


def record_suite(suite: SuiteSpec, results: Path) -> None:
    """Write ``<results>/suite.json``; refuse a folder that records a suite of another name.

    Call it under the folder lock. A changed spec of the same suite (more seeds, another
    method) replaces the record: the folder holds that suite's runs, now as it is.
    """
    path = results / SUITE_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
            name = old.get("name") if isinstance(old, dict) else None
        except ValueError:
            name = None  # a damaged record is rewritten below
        if name is not None and name != suite.name:
            raise FolderHoldsAnotherSuite(
                f"{results} holds suite {name}; use another --results folder"
            )
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, suite_record(suite))


def unfinished(
    suite: SuiteSpec, results: Path, outcomes: list[dict[str, Any]] | None = None
) -> list[tuple[str, str]]:
    """(run id, why) for every run of the suite that has not finished successfully; ``outcomes``
    (of the runs just executed) give the reason of a crash."""
    reasons = {o["run_id"]: f"{o.get('status')}: {o.get('reason')}" for o in outcomes or []}
    out = []
    for spec in suite.expand():
        folder = run_dir(results, spec)
        result = read_result(folder) if is_finished(folder) else None
        if result is None:
            error = folder / "error.txt"
            why = "crashed, see its error.txt" if error.exists() else "not finished"
            out.append((spec.run_id, reasons.get(spec.run_id, why)))
        elif result.get("status") != "finished":
            out.append((spec.run_id, f"{result.get('status')}: {result.get('reason')}"))
    return out


def run_dir(results: Path, spec: RunSpec) -> Path:
    return results / "runs" / spec.run_id


def safe_execute(spec: RunSpec, folder: Path, callback: Callback | None = None) -> dict[str, Any]:
    """``execute_run``, but a crash becomes a recorded outcome instead of ending the suite."""
    try:
        return execute_run(spec, folder, callback) if callback else execute_run(spec, folder)
    except KeyboardInterrupt:
        raise
    except RunInUse as exc:  # its folder belongs to the process executing it: write nothing
        return {"run_id": spec.run_id, "status": "crashed", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any bug in one run must not lose the others
        (folder / (CHECKPOINT_FILE + ".tmp")).unlink(missing_ok=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass  # a full disk: the reason below still reaches the console
        return {"run_id": spec.run_id, "status": "crashed", "reason": crash_reason(exc)}


def crash_reason(exc: BaseException) -> str:
    """One line for the console and the report; a full disk says which write it stopped."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "a file of the run"
        return f"no space left on device while writing {where}; free some space and rerun"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _worker(spec_json: str, folder: str, threads: int) -> dict[str, Any]:
    """Entry point of a worker process or Ray task: one run, its own torch thread budget."""
    import torch

    from sdar_bench.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    return safe_execute(RunSpec.model_validate_json(spec_json), Path(folder))


def prepare_warm_starts(runs: list[RunSpec], console: Console) -> None:
    """Train (or find) every warm start the runs need, once each, before they start."""
    from sdar_bench.policy.tiny import TINY_MODELS, tiny_model_dirname
    from sdar_bench.run import initial_policy
    from sdar_bench.warmstart import checkpoint_name

    seen: set[str] = set()
    for spec in runs:
        if spec.model not in TINY_MODELS or not spec.warmstart.enabled:
            continue
        key = checkpoint_name(spec, tiny_model_dirname(spec.model, spec.env))
        if key in seen:
            continue
        seen.add(key)
        console.print(f"warm start for {spec.model} on {spec.env} (cached after the first time)")
        initial_policy(spec, lambda event, info: None)


def run_suite(
    suite: SuiteSpec,
    results: Path,
    console: Console | None = None,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    tracker: SuiteTracker | None = None,
    nproc: int = 1,
    timeout_s: float = distributed.TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Execute every unfinished run of ``suite``; returns the outcomes of those it executed.

    ``tracker`` (an open ``SuiteTracker``) gets one nested MLflow run per executed run; without
    one nothing is tracked. ``nproc`` > 1: each run on that many ranks of this machine, every
    collective bounded by ``timeout_s``. Raises ``FolderInUse`` when another process holds
    ``results``, and ``FolderHoldsAnotherSuite`` when ``results`` records a suite of another
    name.
    """
    with folder_lock(results):
        record_suite(suite, results)
        return _run_suite(
            suite, results, console or Console(), workers, executor, address, tracker, nproc,
            timeout_s,
        )  # fmt: skip


def _run_suite(
    suite: SuiteSpec,
    results: Path,
    console: Console,
    workers: int,
    executor: str,
    address: str | None,
    tracker: SuiteTracker | None,
    nproc: int = 1,
    timeout_s: float = distributed.TIMEOUT_S,
) -> list[dict[str, Any]]:
    tracker = tracker or SuiteTracker(suite.name, results, enabled=False)
    runs = suite.expand()
    todo = [r for r in runs if not is_finished(run_dir(results, r))]
    console.print(
        f"[bold]{suite.name}[/]: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
        f"results in {results}"
    )
    if not todo:
        return []
    if nproc > 1:
        prepare_warm_starts(todo, console)
        outcomes = _run_ranks(todo, results, console, nproc, tracker, timeout_s)
    elif executor == "ray":
        prepare_warm_starts(todo, console)
        outcomes = _run_ray(todo, results, console, address, tracker)
    elif workers > 1:
        prepare_warm_starts(todo, console)
        outcomes = _run_processes(todo, results, console, workers, tracker)
    else:
        outcomes = _run_here(todo, results, console, tracker)
    for outcome in outcomes:
        if outcome.get("status") != "finished":
            console.print(
                f"[red]{outcome.get('status')}[/]: {outcome['run_id']}: "
                f"{escape(str(outcome.get('reason')))}",
                highlight=False,
                soft_wrap=True,
            )
    return outcomes


def _progress(console: Console) -> Progress:
    # Progress bars need a terminal; redirected to a file they would show nothing until the
    # end, so there the callbacks print plain lines instead (see ``_plain``).
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not console.is_terminal,
    )


def _plain(console: Console, text: str) -> None:
    """One unwrapped, unstyled line, flushed (rich flushes after every print)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _step_line(spec: RunSpec, info: dict[str, Any], seconds: float) -> str:
    return (
        f"{spec.run_id} step {info['step']}/{spec.train.steps} "
        f"reward {info['reward/mean']:.3f} train success {info['success/train']:.1%} "
        f"{seconds:.1f} s"
    )


def _eval_line(spec: RunSpec, info: dict[str, Any]) -> str:
    return (
        f"{spec.run_id} eval step {info['step']} {info['label']} "
        f"{info.get('panel', 'test')} panel success {info.get('success/all', 0):.1f}%"
    )


def _step_callback(
    progress: Progress, bar: Any, tracked: RunTracker, folder: Path, spec: RunSpec
) -> Callable[[str, dict[str, Any]], None]:
    plain = not progress.console.is_terminal
    last = [time.perf_counter()]

    def callback(event: str, info: dict[str, Any]) -> None:
        if event == "warmstart":
            progress.update(bar, info="warm start (cached after the first run)")
        elif event == "start":
            progress.update(bar, completed=info.get("from", 0))
            if info.get("from"):  # resumed: MLflow gets the curve up to the checkpoint first
                tracked.backfill(folder)
            last[0] = time.perf_counter()
        elif event == "step":
            tracked.log_step(info["step"], info)
            progress.update(
                bar,
                advance=1,
                info=f"reward {info['reward/mean']:.2f}  train success {info['success/train']:.0%}",
            )
            if plain:
                now = time.perf_counter()
                _plain(progress.console, _step_line(spec, info, now - last[0]))
                last[0] = now
        elif event == "eval":
            tracked.log_eval(info["step"], info)
            progress.update(
                bar,
                info=f"eval@{info['step']} {info['label']} {info.get('panel', 'test')}: "
                f"{info.get('success/all', 0):.1f}%",
            )
            if plain:
                _plain(progress.console, _eval_line(spec, info))
                last[0] = time.perf_counter()  # the next step's seconds exclude the evaluation

    return callback


def _done_line(console: Console, spec: RunSpec, outcome: dict[str, Any]) -> None:
    """Parallel executors see a run only when it ends: one plain line then (no terminal)."""
    if not console.is_terminal:
        _plain(console, f"{spec.run_id} {outcome.get('status')}")


def _run_here(
    todo: list[RunSpec], results: Path, console: Console, tracker: SuiteTracker
) -> list[dict[str, Any]]:
    outcomes = []
    with _progress(console) as progress:
        overall = progress.add_task("suite", total=len(todo), info="")
        for spec in todo:
            bar = progress.add_task(f"{spec.method} s{spec.seed}", total=spec.train.steps, info="")
            folder = run_dir(results, spec)
            with tracker.run(spec.run_id, spec.model_dump(mode="json")) as tracked:
                outcome = safe_execute(
                    spec, folder, _step_callback(progress, bar, tracked, folder, spec)
                )
                _close(tracked, folder, outcome)
            outcomes.append(outcome)
            progress.update(bar, completed=spec.train.steps)
            progress.update(overall, advance=1)
    return outcomes


def _close(tracked: RunTracker, folder: Path, outcome: dict[str, Any]) -> None:
    files = ("spec.yaml", "manifest.json", "result.json", "error.txt")
    tracked.log_artifacts([folder / name for name in files])
    tracked.finish("FINISHED" if outcome.get("status") == "finished" else "FAILED")


def _track_finished(
    tracker: SuiteTracker, spec: RunSpec, folder: Path, outcome: dict[str, Any]
) -> None:
    """Parallel executors: the parent process logs a run once it is done (one writer only)."""
    with tracker.run(spec.run_id, spec.model_dump(mode="json")) as tracked:
        tracked.backfill(folder)
        _close(tracked, folder, outcome)


def _run_processes(
    todo: list[RunSpec], results: Path, console: Console, workers: int, tracker: SuiteTracker
) -> list[dict[str, Any]]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    outcomes = []
    # spawn, not fork: torch's thread pools do not survive a fork
    with (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool,
        _progress(console) as progress,
    ):
        overall = progress.add_task(f"suite ({workers} workers)", total=len(todo), info="")
        futures = {
            pool.submit(_worker, spec.model_dump_json(), str(run_dir(results, spec)), threads): spec
            for spec in todo
        }
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            spec = futures[future]
            _track_finished(tracker, spec, run_dir(results, spec), outcome)
            _done_line(console, spec, outcome)
            progress.update(
                overall, advance=1, info=f"{futures[future].run_id} {outcome['status']}"
            )
    return outcomes


def _line_callback(spec: RunSpec) -> Callback:
    """Rank 0's progress: one plain line per step and evaluation on its stdout (the launching
    process sees a run only when it ends)."""
    console = Console()
    last = [time.perf_counter()]

    def callback(event: str, info: dict[str, Any]) -> None:
        if event == "step":
            now = time.perf_counter()
            _plain(console, _step_line(spec, info, now - last[0]))
            last[0] = now
        elif event == "eval":
            _plain(console, _eval_line(spec, info))
            last[0] = time.perf_counter()

    return callback


def _rank_entry(
    local_rank: int,
    nproc: int,
    port: int,
    timeout_s: float,
    spec_json: str,
    folder: str,
    threads: int,
) -> None:
    """A spawned rank: join the run's process group, execute its part, leave. An exception
    ends the process with its traceback, and the launcher ends the other ranks."""
    import torch

    from sdar_bench.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    distributed.spawn_env(local_rank, nproc, port)
    distributed.init_from_env(timeout_s)
    try:
        spec = RunSpec.model_validate_json(spec_json)
        execute_run_rank(spec, Path(folder), _line_callback(spec))  # rank 0's lines only
    finally:
        distributed.shutdown()


def launch_run(
    spec: RunSpec, folder: Path, nproc: int, timeout_s: float = distributed.TIMEOUT_S
) -> dict[str, Any]:
    """Execute ``spec`` on ``nproc`` spawned ranks of this machine; its outcome, as
    ``safe_execute`` gives it (a failed rank is a crash recorded in ``error.txt``).

    This process holds the run's lock while the ranks run. ``torch.multiprocessing`` watches
    them: when one exits with an error or is killed, it terminates the others at once, so a
    dead rank ends the run instead of leaving the rest blocked in a collective (which the
    process group's ``timeout_s`` bounds as well).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException, ProcessRaisedException

    threads = max(1, (os.cpu_count() or 1) // nproc)
    try:
        with run_lock(folder):
            args = (nproc, distributed.free_port(), timeout_s, spec.model_dump_json(), str(folder), threads)  # fmt: skip
            mp.start_processes(_rank_entry, args, nprocs=nproc, join=True, start_method="spawn")
    except RunInUse as exc:
        return {"run_id": spec.run_id, "status": "crashed", "reason": str(exc)}
    except ProcessException as exc:
        (folder / (CHECKPOINT_FILE + ".tmp")).unlink(missing_ok=True)
        detail = str(exc).strip()
        if isinstance(exc, ProcessRaisedException):  # the rank's traceback: its last line
            last = detail.splitlines()[-1] if detail else ""
            reason = f"rank {exc.error_index} failed: {last}"
        else:
            reason = f"rank {exc.error_index} died: {detail.splitlines()[0] if detail else ''}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(detail + "\n")
        except OSError:
            pass  # a full disk: the reason below still reaches the console
        return {"run_id": spec.run_id, "status": "crashed", "reason": reason}
    result = read_result(folder)
    if result is None:  # rank 0 returned without writing its result: say so, never hide it
        return {"run_id": spec.run_id, "status": "crashed", "reason": "no result.json written"}
    return result


def _run_ranks(
    todo: list[RunSpec],
    results: Path,
    console: Console,
    nproc: int,
    tracker: SuiteTracker,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """One run after another, each on ``nproc`` ranks; MLflow logs each once it is done."""
    outcomes = []
    for spec in todo:
        _plain(console, f"{spec.run_id}: {nproc} ranks")
        folder = run_dir(results, spec)
        outcome = launch_run(spec, folder, nproc, timeout_s)
        outcomes.append(outcome)
        _track_finished(tracker, spec, folder, outcome)
        _plain(console, f"{spec.run_id} {outcome.get('status')}")
    return outcomes


def run_suite_ranks(
    suite: SuiteSpec, results: Path, tracker: SuiteTracker | None = None
) -> list[dict[str, Any]]:
    """This process's part of ``suite`` when torchrun started it as one rank of many: every rank
    executes every unfinished run together. Rank 0 holds the results folder's lock and each
    run's, writes the files, logs to MLflow (``tracker``, rank 0 only) and returns the outcomes;
    other ranks return []. The process group is up; warm starts are trained beforehand.

    Any error ends this process (torchrun then ends the others): a run of several ranks cannot
    go on without one of them, and the next launch resumes it from its checkpoint.
    """
    from contextlib import ExitStack

    main = distributed.is_main()
    with ExitStack() as stack:
        todo_ids: list[str] = []
        if main:
            stack.enter_context(folder_lock(results))
            record_suite(suite, results)
            todo_ids = [r.run_id for r in suite.expand() if not is_finished(run_dir(results, r))]
        todo_ids = distributed.broadcast_object(todo_ids)
        by_id = {r.run_id: r for r in suite.expand()}
        tracker = tracker or SuiteTracker(suite.name, results, enabled=False)
        outcomes = []
        for run_id in todo_ids:
            spec = by_id[run_id]
            folder = run_dir(results, spec)
            if main:
                with run_lock(folder):
                    outcome = execute_run_rank(spec, folder, _line_callback(spec))
                outcomes.append(outcome)
                _track_finished(tracker, spec, folder, outcome)
            else:
                execute_run_rank(spec, folder)
        return outcomes


def run_resources(spec: RunSpec) -> dict[str, float]:
    """A run's Ray request: one GPU for models that need one (or a vLLM rollout), else CPUs."""
    from sdar_bench.policy.catalog import model_info

    gpu = model_info(spec.model).needs_gpu or spec.policy.rollout == "vllm"
    return {"num_gpus": 1, "num_cpus": 4} if gpu else {"num_cpus": 1}


def _run_ray(
    todo: list[RunSpec],
    results: Path,
    console: Console,
    address: str | None,
    tracker: SuiteTracker,
) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise SystemExit("the ray executor needs Ray: pip install 'sdar-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(_worker)
    pending = {}
    for spec in todo:
        resources = run_resources(spec)
        threads = int(resources["num_cpus"])
        ref = remote.options(**resources).remote(
            spec.model_dump_json(), str(run_dir(results, spec).resolve()), threads
        )
        pending[ref] = spec
    outcomes = []
    with _progress(console) as progress:
        overall = progress.add_task("suite (ray)", total=len(todo), info="")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            outcome = ray.get(done[0])
            outcomes.append(outcome)
            _track_finished(tracker, spec, run_dir(results, spec), outcome)
            _done_line(console, spec, outcome)
            progress.update(overall, advance=1, info=f"{spec.run_id} {outcome['status']}")
    if started_here:
        ray.shutdown()
    return outcomes
