"""The ``sdar-bench`` command line."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from sdar_bench.quiet import quiet_libraries

if TYPE_CHECKING:
    from sdar_bench.config import SuiteSpec
    from sdar_bench.tracking import SuiteTracker

app = typer.Typer(
    help="Compare agentic RL methods (GRPO, OPSD hybrids, SDAR, …) on ALFWorld-style envs, reproducibly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

# Options several commands share.
ResultsOption = Annotated[
    Path | None,
    typer.Option("--results", "-o", help="Results directory (default: results/<suite name>)."),
]
TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite file "
        "results/<suite>/mlflow.db)."
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="If another sdar-bench process is writing the results folder, wait for it "
        "instead of stopping.",
    ),
]
NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc",
        help="Processes (ranks) per run on this machine: one per GPU, or CPU processes with "
        "gloo. Each rank plays its share of a step's tasks and the gradients are summed "
        "(policy: {fsdp: true} shards them). Needs policy: {sampling: per_sample}.",
    ),
]
DistTimeoutOption = Annotated[
    float,
    typer.Option(
        "--dist-timeout",
        help="Seconds a rank waits for the others at one collective before the run fails "
        "(default 1800).",
    ),
]
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _fail(message: str) -> None:
    """A user mistake: one line on stderr, exit code 2, no traceback."""
    Console(stderr=True).print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _interrupted() -> None:
    console.print("interrupted: run the same command to resume", highlight=False)
    raise typer.Exit(INTERRUPTED)


def _lock_folder(stack: ExitStack, folder: Path, wait: bool, shared: bool = False) -> None:
    """Take the results folder's lock for the rest of ``stack``; another holder: exit 2."""
    from sdar_bench.locking import FolderInUse, folder_lock

    try:
        stack.enter_context(folder_lock(folder, shared=shared, wait=wait))
    except FolderInUse as exc:
        _fail(str(exc))


def _open_tracker(
    stack: ExitStack, make: Callable[[], SuiteTracker], uri: str | None
) -> SuiteTracker:
    """Open the suite's MLflow run; a store that cannot be opened stops here, in one line.

    Tracking was asked for, so the run refuses rather than train for hours untracked; the
    message names the ways on.
    """
    from sdar_bench.tracking import DEFAULT_DB

    try:
        return stack.enter_context(make())
    except Exception as exc:  # noqa: BLE001 - sqlite, alembic and HTTP errors all end here
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        fix = f"move {DEFAULT_DB} aside, " if uri and uri.startswith("sqlite:") else ""
        _fail(
            f"MLflow store {uri} cannot be opened ({detail}); {fix}pass another "
            "--tracking-uri, or --no-mlflow"
        )
        raise  # unreachable: _fail exits


FORMATS = ("table", "json", "csv")
FormatOption = Annotated[str, typer.Option("--format", help="table, json or csv.")]
WIDE_CELL = 40  # a free-text column wider than this wraps on words instead of widening


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        _fail(f"--format: unknown format {fmt!r} (choose {', '.join(FORMATS)})")


def _fitted_tables(
    title: str,
    columns: list[str],
    rows: list[dict[str, str]],
    keys: int = 1,
    width: int | None = None,
    right: tuple[str, ...] = (),
) -> list[Table]:
    """Rows (rich markup allowed) as one or more tables that fit ``width`` columns.

    The first ``keys`` columns (ids, row labels) are never wrapped and repeat in every table;
    the other columns are split over as many tables as the width needs, the way a wide data
    frame prints, so a cell is never cut to ``tiny…``. Text wider than ``WIDE_CELL`` wraps on
    words within its column.
    """
    width = width or console.width

    def needed(col: str) -> int:
        cells = [Text.from_markup(r.get(col, "")).cell_len for r in rows]
        return max([len(col), *cells])

    key_cols, rest = columns[:keys], columns[keys:]
    key_width = sum(needed(c) + 3 for c in key_cols) + 1
    chunks: list[list[str]] = [[]]
    used = key_width
    for col in rest:
        cost = min(needed(col), WIDE_CELL) + 3
        if chunks[-1] and used + cost > width:
            chunks.append([])
            used = key_width
        chunks[-1].append(col)
        used += cost
    tables = []
    for i, chunk in enumerate(chunks):
        suffix = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=title + suffix if title or suffix else None)
        for col in key_cols:
            table.add_column(col, no_wrap=True, min_width=needed(col))
        for col in chunk:
            table.add_column(
                col, justify="right" if col in right else "left", max_width=max(WIDE_CELL, len(col))
            )
        for row in rows:
            table.add_row(*(row.get(c, "") for c in [*key_cols, *chunk]))
        tables.append(table)
    return tables


def _load(suite_file: Path) -> SuiteSpec:
    from sdar_bench.config import SpecError, load_suite

    try:
        return load_suite(suite_file)
    except SpecError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@app.command()
def run(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML, e.g. suites/quickstart.yaml.")],
    results: ResultsOption = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-j", min=1, help="Runs at a time on this machine (local executor)."
        ),
    ] = 1,
    executor: Annotated[
        str,
        typer.Option(help="local (this machine) or ray (one Ray task per run)."),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (ray executor); default: start a local Ray."),
    ] = None,
    tracking_uri: TrackingUriOption = None,
    mlflow: Annotated[bool, typer.Option(help="Log runs to MLflow.")] = True,
    wait: WaitOption = False,
    nproc: NprocOption = 1,
    dist_timeout: DistTimeoutOption = 1800.0,
) -> None:
    """Run every unfinished run of a suite, then print and write its comparison table.

    Re-running the same command skips finished runs and resumes unfinished ones from their last checkpoint. Everything a run needs (weights, data, a writable results folder, the tracking store) is checked first.

    Exit code: 0 every run finished, 1 some run failed or crashed (the table is still written), 2 bad input, 130 interrupted.
    """
    from sdar_bench.plan import preflight
    from sdar_bench.suite import EXECUTORS, FolderHoldsAnotherSuite, record_suite, run_suite
    from sdar_bench.suite import unfinished as unfinished_runs
    from sdar_bench.tracking import SuiteTracker
    from sdar_bench.tracking import tracking_uri as resolve_uri

    quiet_libraries()
    suite = _load(suite_file)
    if executor not in EXECUTORS:
        _fail(f"--executor: unknown executor {executor!r} (choose {' or '.join(EXECUTORS)})")
    _check_nproc(suite, nproc, dist_timeout, workers, executor)
    out = results or Path("results") / suite.name
    uri = resolve_uri(out, tracking_uri) if mlflow else None
    problems = preflight(suite, out, needs_gpu_ok=True if executor == "ray" else None, uri=uri)
    if problems:
        more = f" (and {len(problems) - 1} more: see `sdar-bench plan {suite_file}`)"
        _fail(problems[0] + (more if len(problems) > 1 else ""))
    params = suite.model_dump(mode="json")
    try:
        with ExitStack() as stack:
            # The lock comes first: the MLflow store is created (and migrated) by one process.
            _lock_folder(stack, out, wait)
            try:
                record_suite(suite, out)
            except FolderHoldsAnotherSuite as exc:
                _fail(str(exc))
            tracker = _open_tracker(
                stack, lambda: SuiteTracker(suite.name, out, uri, params, enabled=mlflow), uri
            )
            outcomes = run_suite(
                suite, out, console, workers=workers, executor=executor, address=address,
                tracker=tracker, nproc=nproc, timeout_s=dist_timeout,
            )  # fmt: skip
            _print_report(out)
            tracker.log_artifacts(
                [p for p in (out / "table.md", out / "table.csv", out / "table.tex", out / "plots")
                 if p.exists()]
            )  # fmt: skip
    except KeyboardInterrupt:
        _interrupted()
    if mlflow:
        console.print(
            f"MLflow: {tracker.uri} (experiment {suite.name}); browse: sdar-bench ui {out}"
        )
    _exit_if_unfinished(suite, unfinished_runs(suite, out, outcomes))


def _exit_if_unfinished(suite: SuiteSpec, failed: list[tuple[str, str]]) -> None:
    """Name every run that did not finish in one line and exit 1 (the table is written)."""
    if failed:
        console.print(
            f"{len(failed)} of {len(suite.expand())} runs did not finish: "
            + "; ".join(f"{run_id} ({why})" for run_id, why in failed),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _check_nproc(
    suite: SuiteSpec, nproc: int, timeout: float, workers: int = 1, executor: str = "local"
) -> None:
    """``--nproc`` and its companions, refused in one line (exit 2) before any work."""
    from sdar_bench.plan import nproc_problems

    if nproc > 1 and workers > 1:
        _fail("--nproc: not with -j/--workers (each run already takes --nproc processes)")
    if nproc > 1 and executor != "local":
        _fail(
            "--nproc: only with the local executor; for one run over several nodes start "
            '`torchrun ... -m sdar_bench run-rank` on each (README, "Scale")'
        )
    if not timeout > 0:
        _fail(f"--dist-timeout: must be a positive number of seconds (got {timeout})")
    problems = nproc_problems(suite, nproc)
    if problems:
        _fail(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


@app.command(name="run-rank")
def run_rank(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML, the same on every node.")],
    results: ResultsOption = None,
    tracking_uri: TrackingUriOption = None,
    mlflow: Annotated[bool, typer.Option(help="Log runs to MLflow (rank 0).")] = True,
    dist_timeout: DistTimeoutOption = 1800.0,
) -> None:
    """One rank of a suite's runs under torchrun: every process torchrun starts executes each unfinished run together with the others, as `run --nproc` does on one machine.

    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m sdar_bench run-rank SUITE.yaml

    The results folder (and the warm-start cache) must be shared storage; warm starts are trained first (`sdar-bench warmstart SUITE.yaml`). Rank 0 writes the files, logs to MLflow and prints the table. A rank that fails ends the job (torchrun stops the others); the same command resumes from the last checkpoints.

    Exit code: 0 every run finished, 1 some run failed, 2 bad input.
    """
    from sdar_bench import distributed
    from sdar_bench.plan import nproc_problems, plan_suite, preflight
    from sdar_bench.suite import run_suite_ranks
    from sdar_bench.suite import unfinished as unfinished_runs
    from sdar_bench.tracking import SuiteTracker
    from sdar_bench.tracking import tracking_uri as resolve_uri

    quiet_libraries()
    if not distributed.under_torchrun():
        _fail(
            "run-rank: start it with torchrun (`torchrun --nproc-per-node N -m sdar_bench "
            "run-rank SUITE.yaml`); on one machine `sdar-bench run SUITE.yaml --nproc N` does "
            "the same"
        )
    suite = _load(suite_file)
    if not dist_timeout > 0:
        _fail(f"--dist-timeout: must be a positive number of seconds (got {dist_timeout})")
    out = results or Path("results") / suite.name
    distributed.init_from_env(dist_timeout)
    try:
        problem = None
        if distributed.is_main():
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            local = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world()))
            problems = [
                *nproc_problems(suite, distributed.world(), gpus=0),
                *(nproc_problems(suite, local, gpus=gpus) if gpus else []),
            ]
            uri = resolve_uri(out, tracking_uri) if mlflow else None
            problems += preflight(suite, out, uri=uri)
            problems += [
                f"warm start of {p.spec.model} on {p.spec.env} is not trained yet; run "
                f"`sdar-bench warmstart {suite_file}` first (ranks never train one)"
                for p in plan_suite(suite, out)
                if p.warmstart == "to train" and p.state != "finished"
            ]
            problem = problems[0] if problems else None
        problem = distributed.broadcast_object(problem)
        if problem is not None:
            if distributed.is_main():
                _fail(problem)
            raise typer.Exit(2)
        params = suite.model_dump(mode="json")
        with ExitStack() as stack:
            tracker = None
            if distributed.is_main():
                uri = resolve_uri(out, tracking_uri) if mlflow else None
                tracker = _open_tracker(
                    stack, lambda: SuiteTracker(suite.name, out, uri, params, enabled=mlflow), uri
                )
            outcomes = run_suite_ranks(suite, out, tracker)
            if distributed.is_main():
                _print_report(out)
    finally:
        distributed.shutdown()
    if distributed.is_main():
        _exit_if_unfinished(suite, unfinished_runs(suite, out, outcomes))


@app.command()
def plan(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML to expand.")],
    results: ResultsOption = None,
    fmt: FormatOption = "table",
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", help="Ranks per run (as `run --nproc`): adds each rank's memory estimate."
        ),
    ] = 1,
) -> None:
    """Print the runs a suite expands to, what each needs, and a rough cost; loads no model.

    The table shows one block per model and env, each run by its short id (method, seed, hash; the folder under runs/ is <model>__<env>__<short id>); what every run of a block shares is printed once under it. --format json or csv prints one row per run with its full id.
    """
    from sdar_bench.plan import GIB, plan_suite, preflight, rank_memory

    _check_format(fmt)
    suite = _load(suite_file)
    _check_nproc(suite, nproc, 1.0)
    out = results or Path("results") / suite.name
    plans = plan_suite(suite, out)
    records: list[dict[str, object]] = []
    for p in plans:
        seconds = p.seconds if p.state != "finished" and p.seconds == p.seconds else None
        records.append({
            "run_id": p.spec.run_id, "model": p.spec.model, "env": p.spec.env,
            "method": p.spec.method, "seed": p.spec.seed, "state": p.state,
            "weights": "present" if p.model.present else f"missing: {p.model.how_to_get}",
            "warm_start": p.warmstart, "warm_start_seconds": p.warmstart_seconds or None,
            "data": p.data, "data_ok": p.data_ok, "device": "GPU" if p.needs_gpu else "CPU",
            "est_seconds": seconds,
        })  # fmt: skip
        if nproc > 1:
            memory = rank_memory(p.spec, p.model.params, nproc)
            records[-1]["nproc"] = nproc
            records[-1]["rank_memory_gib"] = None if memory is None else round(memory / GIB, 3)
    if fmt != "table":
        _emit(records, fmt, "", list(records[0]) if records else ["run_id"])
        return
    console.print(f"[bold]{escape(suite.name)}[/]: {len(plans)} runs → {escape(str(out))}")
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for p, record in zip(plans, records, strict=True):
        warm = p.warmstart
        if warm == "to train":
            at = p.warmstart_resumes_at
            resume = f"; resumes at step {at} of {p.spec.warmstart.steps}" if at else ""
            warm = f"[yellow]to train[/] (~{_duration(p.warmstart_seconds)} on 2 cores{resume})"
        groups.setdefault((p.spec.model, p.spec.env), []).append({
            "run": escape(p.spec.run_id.split("__", 2)[-1]),
            "state": escape(p.state),
            "weights": "[green]present[/]" if p.model.present
            else f"[red]missing[/]: {escape(p.model.how_to_get)}",
            "warm start": warm,
            "data": escape(p.data) if p.data_ok else f"[red]{escape(p.data)}[/]",
            "device": str(record["device"]),
            "est. time": "–" if record["est_seconds"] is None
            else _duration(float(record["est_seconds"])),  # type: ignore[arg-type]
            "memory/rank": "–" if record.get("rank_memory_gib") is None
            else _gib(float(record["rank_memory_gib"])),  # type: ignore[arg-type]
        })  # fmt: skip
    heads = ["run", "state", "weights", "warm start", "data", "device", "est. time"]
    if nproc > 1:  # model state only; a micro-batch's activations come on top, alike per rank
        heads.append("memory/rank")
    for (model, env), rows in groups.items():
        shared = [h for h in heads[1:] if len({r[h] for r in rows}) == 1 and len(rows) > 1]
        varying = [h for h in heads if h not in shared]
        console.print(
            f"[bold]{escape(model)} · {escape(env)}[/]: {len(rows)} runs", highlight=False
        )
        for table in _fitted_tables("", varying, rows, right=("est. time", "memory/rank")):
            console.print(table)
        if shared:
            console.print(
                "every run above: " + "; ".join(f"{h} {rows[0][h]}" for h in shared),
                highlight=False,
            )
    if nproc > 1:
        console.print(
            f"memory/rank: each of the {nproc} ranks' weights, gradients, AdamW moments and "
            "reference/teacher copies (FSDP2: moments ÷ ranks); a micro-batch's activations "
            "come on top",
            highlight=False,
        )
    left = [p for p in plans if p.state != "finished"]
    gpu = sum(p.seconds for p in left if p.needs_gpu and p.data_ok)
    cpu = sum(p.seconds for p in left if not p.needs_gpu and p.data_ok)
    # one warm start serves every run of its (model, env, settings): count it once
    warm_starts = {p.warmstart_name: p for p in left if p.warmstart == "to train"}
    warm_cpu = sum(p.warmstart_seconds for p in warm_starts.values())
    console.print(
        f"{len(left)} runs to do: about {_duration(cpu)} of CPU time and {_duration(gpu)} of GPU "
        "time (rough upper bound: every episode at max_turns)"
        + (
            f", plus {len(warm_starts)} warm start(s) to train first: about "
            f"{_duration(warm_cpu)} of CPU time (`sdar-bench warmstart {suite_file}`)"
            if warm_starts
            else ""
        )
        + (
            f"; {len(blind)} runs whose data is missing are not counted"
            if (blind := [p for p in left if not p.data_ok])
            else ""
        )
    )
    problems = preflight(suite, out, needs_gpu_ok=True, uri=os.environ.get("MLFLOW_TRACKING_URI"))
    for problem in problems:
        # one line per problem, however long: a list to read or grep, as the errors are
        console.print(f"[red]missing:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if not problems:
        console.print("[green]everything these runs need is on this machine[/]")


def _gib(gib: float) -> str:
    return f"{gib * 1024:.0f} MiB" if gib < 1 else f"{gib:.1f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _progress_callback(progress: Progress, bar: TaskID) -> object:
    """A ``transformers.TrainerCallback`` that moves a rich progress bar with the SFT steps."""
    from transformers import TrainerCallback  # slow to import: only when a warm start runs

    class MoveBar(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            progress.update(bar, completed=state.global_step)

    return MoveBar()


@app.command()
def warmstart(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML whose tiny models to warm-start.")],
    export: Annotated[
        bool,
        typer.Option(
            "--export",
            help="Also copy each checkpoint into the package (sdar_bench/data/warmstart/) so that "
            "a fresh install finds it instead of training it.",
        ),
    ] = False,
) -> None:
    """Run (or find) the supervised warm start of every tiny model × env × seed of a suite."""
    import shutil

    from rich.progress import Progress

    from sdar_bench.config import SpecError, load_suite
    from sdar_bench.envs import make_env
    from sdar_bench.policy import load_policy
    from sdar_bench.policy.tiny import TINY_MODELS
    from sdar_bench.warmstart import SHIPPED, warm_start, warmstart_key

    quiet_libraries()
    try:
        suite = load_suite(suite_file)
    except SpecError as exc:
        _fail(str(exc))
    seen: set[str] = set()
    for spec in suite.expand():
        if spec.model not in TINY_MODELS or not spec.warmstart.enabled:
            continue
        policy = load_policy(
            spec.model, spec.train.max_prompt_tokens, env=spec.env, options=spec.policy
        )
        model_dir = str(policy.model.name_or_path)
        key = warmstart_key(spec, model_dir)
        if key in seen:
            continue
        seen.add(key)
        env = make_env(spec.env, **spec.env_params)
        with Progress(console=console) as progress:
            bar = progress.add_task(
                f"warm start {spec.model} on {spec.env}", total=spec.warmstart.steps
            )

            path, found = warm_start(
                policy, env, spec, model_dir, callbacks=[_progress_callback(progress, bar)]
            )
            progress.update(bar, completed=spec.warmstart.steps)
        console.print(f"{'found' if found else 'trained'}: {path}")
        if export and path.parent != SHIPPED:
            SHIPPED.mkdir(parents=True, exist_ok=True)
            shutil.copytree(path, SHIPPED / path.name, dirs_exist_ok=True)
            console.print(f"exported to {SHIPPED / path.name}")


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="A suite's results directory.")],
    wait: WaitOption = False,
    fmt: FormatOption = "table",
) -> None:
    """Rebuild table.md, table.csv, table.tex and plots/ from a results directory; print them.

    --format json or csv prints the tables' rows instead (one per which, model, env and row label: n, each metric's mean, interval and the paper's number, the Δ vs GRPO).
    """
    _check_format(fmt)
    if not (results_dir / "runs").is_dir():
        _fail(f"{results_dir}: no runs/ folder here; pass the directory `sdar-bench run` wrote")
    with ExitStack() as stack:
        # a read-only folder (OSError): no process can write there, so there is nothing to lock
        with suppress(OSError):
            _lock_folder(stack, results_dir, wait)
        if fmt == "table":
            _print_report(results_dir)
        else:
            _emit_report_rows(results_dir, fmt)


def _emit_report_rows(results_dir: Path, fmt: str) -> None:
    """The tables' rows (``report.table.to_records``) on stdout; the files are rebuilt too."""
    import math

    from sdar_bench.report.results import ResultsError
    from sdar_bench.report.table import build_report, to_records, write_report

    try:
        try:
            report = write_report(results_dir)
        except OSError:  # a read-only folder: the rows can still be printed
            report = build_report(results_dir)
    except ResultsError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    frame = to_records(report)
    rows = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
    _emit(rows, fmt, "", [str(c) for c in frame.columns])


def _print_report(results_dir: Path) -> None:
    from sdar_bench.report.plots import write_plots
    from sdar_bench.report.results import ResultsError
    from sdar_bench.report.table import build_report, format_delta, which_title, write_report

    unwritten: OSError | None = None
    try:
        report = write_report(results_dir)
    except ResultsError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    except OSError as exc:  # a read-only or full folder: the tables can still be shown
        unwritten = exc
        report = build_report(results_dir)
    for missing in report.folder.missing:
        console.print(f"[red]missing run[/] {escape(missing.line())}", highlight=False)
    for problem in report.folder.problems:
        console.print(f"[yellow]problem[/] {escape(problem)}", highlight=False)
    if report.folder.stale:
        console.print(
            f"{len(report.folder.stale)} run folder(s) not in the current suite are left out "
            "(listed in table.md)"
        )
    for record, verdict in report.collapse:
        if verdict.flagged:
            console.print(
                f"[yellow]collapse suspected[/] {record.run_id}: {verdict.reason}", highlight=False
            )
    if not report.tables:
        console.print("no finished runs yet" if not report.failed else "every run failed")
        return
    for (env, which), frame in report.tables.items():
        columns = report.columns[env]
        heads = ["method", "n", *(c.split("/", 1)[-1] for c in columns), "Δ vs GRPO"]
        by_model: dict[str, list[dict[str, str]]] = {}
        for _, row in frame.iterrows():
            delta = row["delta"]
            shown = "ref" if row["label"] == "GRPO" else "–"
            if delta is not None and not isinstance(delta, float):
                shown = format_delta(delta)
                shown = f"[bold]{shown}[/]" if delta.significant else shown
            cells = [row[c].text() for c in columns]
            by_model.setdefault(str(row["model"]), []).append(
                dict(
                    zip(
                        heads,
                        [escape(str(row["label"])), str(row["n"]), *cells, shown],
                        strict=True,
                    )
                )
            )
        for model, rows in by_model.items():
            console.print(
                f"[bold]{escape(model)} · {env}[/]: test panel, "
                f"{which_title(which, report.selection).lower()} "
                "(mean [95% interval] over seeds; Δ paired by seed)",
                highlight=False,
            )
            for table in _fitted_tables("", heads, rows, keys=2, right=tuple(heads[1:])):
                console.print(table)
    for setting in report.teacher_quality:
        console.print(f"teacher quality — {setting}")
    plots: list[Path] = []
    if unwritten is None:
        try:
            plots = write_plots(results_dir)
        except OSError as exc:
            unwritten = exc
    if unwritten is not None:
        console.print(
            f"[yellow]could not write the tables and plots into {escape(str(results_dir))}[/] "
            f"({escape(unwritten.strerror or str(unwritten))}); the tables above are complete",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"tables written to {results_dir}/table.md, table.csv and table.tex; "
        f"{len(plots)} plots in {results_dir}/plots/"
    )


def free_port(host: str) -> int:
    """A port nothing listens on now: the one the OS picks for a bind to port 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@app.command()
def ui(
    results_dir: Annotated[Path, typer.Argument(help="A suite's results directory.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on (default: a free one, printed)."),
    ] = None,
) -> None:
    """Start the MLflow UI over a results directory's tracking store and print its URL."""
    from sdar_bench.tracking import DEFAULT_DB, ui_command

    if not (results_dir / DEFAULT_DB).exists():
        _fail(
            f"{results_dir}: no {DEFAULT_DB} here; pass the directory `sdar-bench run` wrote "
            "(runs logged to a tracking server have their UI there)"
        )
    if port is None:
        try:
            port = free_port(host)
        except OSError as exc:
            _fail(f"--host {host}: cannot listen there ({exc.strerror}); pass another --host")
            raise  # unreachable: _fail exits
    argv = ui_command(results_dir, host, port)
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    os.execv(argv[0], argv)


def _print_records(
    title: str, records: list[dict[str, object]], name: str, lines: list[str]
) -> None:
    """One block per record: its name in bold, then each field on its own wrapped line.

    For lists whose free text (descriptions, parameter defaults) would not fit the columns of
    a table at 80 characters: nothing is cut, and a line wraps on words.
    """
    console.print(f"[bold]{escape(title)}[/]", highlight=False)
    for record in records:
        console.print(f"\n[bold]{escape(str(record[name]))}[/]", highlight=False)
        for field in lines:
            value = record.get(field)
            if value not in (None, "", "–"):
                console.print(
                    Padding(f"{field}: {escape(str(value))}", (0, 0, 0, 2)), highlight=False
                )


@app.command()
def methods(fmt: FormatOption = "table") -> None:
    """List the registered methods with their defaults and a one-line description."""
    from sdar_bench.registry import get_method_class, method_names

    _check_format(fmt)
    records: list[dict[str, object]] = []
    for name in method_names():
        cls = get_method_class(name)
        defaults = cls.Params().model_dump(mode="json") if cls.trains else {}
        records.append({
            "name": name, "row": cls.label, "trains": cls.trains, "teacher": cls.needs_teacher,
            "description": cls.description,
            "parameters": ", ".join(f"{k}={v}" for k, v in defaults.items()) or "–",
        })  # fmt: skip
    if fmt != "table":
        _emit(records, fmt, "", list(records[0]))
        return
    shown = [
        {**r, "trains": "yes" if r["trains"] else "no", "teacher": "yes" if r["teacher"] else "no"}
        for r in records
    ]
    _print_records(
        "methods (entry-point group sdar_bench.methods)",
        shown,
        "name",
        ["row", "trains", "teacher", "description", "parameters"],
    )


@app.command()
def envs(fmt: FormatOption = "table") -> None:
    """List the environments: engines, task types, default settings, how to use real data."""
    from sdar_bench.envs import ENVS

    _check_format(fmt)
    records: list[dict[str, object]] = []
    for name, cls in sorted(ENVS.items()):
        defaults = cls.Params().model_dump(mode="json")
        records.append({
            "name": name, "task_types": ", ".join(cls.task_types), "description": cls.description,
            "defaults": ", ".join(f"{k}={v}" for k, v in defaults.items() if v is not None),
            "real_data": cls.real_data or "not yet (offline engine only)",
        })  # fmt: skip
    if fmt != "table":
        _emit(records, fmt, "", list(records[0]))
        return
    _print_records(
        "environments (offline engines ship with the package; panels are generated, any size)",
        records,
        "name",
        ["description", "task_types", "defaults", "real_data"],
    )


@app.command()
def tune(
    suite_file: Annotated[
        Path, typer.Argument(help="Suite YAML with a tune: block, e.g. suites/tune_gate.yaml.")
    ],
    results: ResultsOption = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL that every worker of the study shares (any RDB URL: "
            "sqlite:///…, postgresql://…, mysql://…); default sqlite:///<results>/optuna.db."
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(help="Study to create or join (resume); default: the suite's name."),
    ] = None,
    n_trials: Annotated[
        int | None,
        typer.Option(
            min=0, help="Trials this worker runs at most (the study stops at tune.trials in all)."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="Seconds after which this worker starts no new trial."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="torch threads of this worker (several workers on one machine: cores ÷ N)."
        ),
    ] = None,
    tracking_uri: TrackingUriOption = None,
    mlflow: Annotated[bool, typer.Option(help="Log every trial to MLflow.")] = True,
    wait: WaitOption = False,
) -> None:
    """Search one method's parameters with Optuna over the suite's runs (its tune: block).

    Start the same command on several machines with one --storage to share the study; run it again to resume. Writes best_params.yaml (a suite for `sdar-bench run`), trials.csv, trials.md and plots/ into <results>/tune/.
    """
    from sdar_bench.tune import TuneError, tune_suite

    quiet_libraries()
    suite = _load(suite_file)
    if suite.tune is None:
        _fail(f"{suite_file}: no tune: block; add one (see suites/tune_gate.yaml)")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    out = results or Path("results") / suite.name
    try:
        with ExitStack() as stack:
            # shared: tune workers may share a folder, but not with a `run` or `report`; an
            # unwritable folder (OSError) is left to tune_suite's pre-flight, which says so
            with suppress(OSError):
                _lock_folder(stack, out, wait, shared=True)
            summary = tune_suite(
                suite, out, storage=storage, study_name=study_name, n_trials=n_trials,
                timeout=timeout, tracking_uri=tracking_uri, mlflow=mlflow, console=console,
            )  # fmt: skip
    except TuneError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    except KeyboardInterrupt:
        _interrupted()
        raise  # unreachable: _interrupted exits
    if summary.best_number is None:
        console.print(
            f"{summary.trials} trials, none completed yet; tables in {out / 'tune'}", soft_wrap=True
        )
    else:
        shown = ", ".join(f"{k}={v}" for k, v in summary.best_params.items())
        console.print(
            f"{summary.trials} trials ({summary.ran} here); best: trial {summary.best_number}, "
            f"value {summary.best_value:.4g} ({shown})\n"
            f"run it: sdar-bench run {out / 'tune' / 'best_params.yaml'}",
            soft_wrap=True,
        )


def _results_folder(results_dir: Path) -> object:
    """The folder's runs, or a one-line refusal (no runs/ here, mixed settings)."""
    from sdar_bench.report.results import read_results

    if not (results_dir / "runs").is_dir():
        _fail(f"{results_dir}: no runs/ folder here; pass the directory `sdar-bench run` wrote")
    return read_results(results_dir)


def _emit(rows: list[dict[str, object]], fmt: str, title: str, columns: list[str]) -> None:
    """Rows as a rich table, JSON (a list of objects) or CSV on stdout."""
    import csv
    import json
    import sys

    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = Table(title=title)
        for head in columns:
            table.add_column(head, overflow="fold")
        for row in rows:
            table.add_row(*(escape(_shown_value(row.get(c))) for c in columns))
        console.print(table)


def _shown_value(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


@app.command()
def compare(
    results_dir: Annotated[Path, typer.Argument(help="A suite's results directory.")],
    baseline: Annotated[
        str, typer.Option(help="Method (grpo) or row label (GRPO) every other row is compared to.")
    ] = "grpo",
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric to compare (e.g. success/all, em/avg, score); default: each "
            "env's headline metric (ALFWorld All, Search-QA Avg, WebShop Acc)."
        ),
    ] = None,
    which: Annotated[
        str | None,
        typer.Option(help="final or best (chosen on the validation panel); default: both."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """Paired comparisons of every method with the baseline: n, Δ, 95% interval, p, P(A > B).

    Runs of two methods with the same seed (same warm start, panel and evaluation) are pairs, and the panel's tasks pair within them where per-episode records exist. The interval comes from a bootstrap over seeds (README, "Statistics"), the p-value from a paired sign-flip test over seeds, and P(A > B) is rliable's probability of improvement.
    """
    from sdar_bench.report.compare import JSON_KEYS, WHICH, compare_runs
    from sdar_bench.report.results import ResultsError

    if fmt not in FORMATS:
        _fail(f"--format: unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    if which is not None and which not in WHICH:
        _fail(f"--which: unknown value {which!r} (choose final or best)")
    folder = _results_folder(results_dir)
    try:
        rows = compare_runs(folder, baseline, metric, (which,) if which else WHICH)  # type: ignore[arg-type]
    except ResultsError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    if not rows:
        _fail(
            f"{results_dir}: nothing to compare (no finished run of a method beside the baseline "
            f"{baseline!r}{f' with metric {metric!r}' if metric else ''}); see `sdar-bench report`"
        )
    records = [r.as_dict() for r in rows]
    if fmt != "table":
        keys = [*JSON_KEYS, "pairing", "n_tasks"]
        _emit([{k: r[k] for k in keys} for r in records], fmt, "", keys)
        return
    # One table per (model, env): ids stay whole at 80 columns.
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row.model, row.env), []).append(row)
    heads = ["method", "metric", "which", "n", "Δ [95% CI]", "p", "P(A>B)", "paired"]
    for (model, env), members in groups.items():
        rows: list[dict[str, str]] = []
        for c in members:
            interval = "" if c.ci_low != c.ci_low else f" [{c.ci_low:+.1f}, {c.ci_high:+.1f}]"
            delta = f"{c.delta:+.1f}{interval}"
            rows.append(dict(zip(heads, [
                escape(c.method), c.metric, c.which, str(c.n),
                f"[bold]{delta}[/]" if c.significant else delta,
                "–" if c.p_value != c.p_value else f"{c.p_value:.3f}",
                f"{c.prob_improvement:.2f}", c.pairing,
            ], strict=True)))  # fmt: skip
        console.print(
            f"[bold]{escape(model)} · {escape(env)}[/]: Δ vs {escape(members[0].baseline)} "
            "(test panel)",
            highlight=False,
        )
        for table in _fitted_tables("", heads, rows, right=tuple(heads[2:])):
            console.print(table)
    console.print(
        "bold: the interval excludes 0. With n seeds the sign-flip p cannot fall below 2/2^n "
        "(n = 5: 0.0625)."
    )


@app.command()
def power(
    results_dir: Annotated[Path, typer.Argument(help="A results directory to use as a pilot.")],
    baseline: Annotated[str, typer.Option(help="Method or row label compared against.")] = "grpo",
    metric: Annotated[
        str | None, typer.Option(help="Metric; default: each env's headline metric.")
    ] = None,
    target: Annotated[
        float, typer.Option(min=0.1, help="The difference (points) the suite should detect.")
    ] = 3.0,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """How small a difference this folder's seeds × panel can detect, and what it would take.

    From the pilot's paired per-task differences (final step, 2 or more seeds with per-episode records): the between-seed and within-seed (task) variance, the smallest |Δ| a paired test at α = 0.05 detects with 80% power, the seeds needed for --target points at this panel size, and the detectable |Δ| for other seeds × panel sizes.
    """
    from sdar_bench.report.compare import power_rows
    from sdar_bench.report.results import ResultsError

    if fmt not in FORMATS:
        _fail(f"--format: unknown format {fmt!r} (choose {', '.join(FORMATS)})")
    folder = _results_folder(results_dir)
    try:
        rows = power_rows(folder, baseline, metric, target)  # type: ignore[arg-type]
    except ResultsError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits
    if not rows:
        _fail(
            f"{results_dir}: no comparison with per-episode records on 2 or more paired seeds; "
            "a pilot needs runs written by this version with at least 2 seeds"
        )
    records = [r.as_dict() for r in rows]
    columns = [
        "model", "env", "method", "metric", "seeds", "tasks", "sd_between", "sd_within",
        "eval_noise", "detectable", "seeds_for_target",
    ]  # fmt: skip
    if fmt != "table":
        _emit(records, fmt, "", [*columns, "target", "grid"])
        return
    _emit(
        records, fmt, f"{results_dir.name}: power (α 0.05, 80%), target {target:g} points", columns
    )
    for row in rows:
        grid = Table(title=f"{row.env} {row.method} vs {row.baseline}: detectable |Δ| (points)")
        grid.add_column("seeds \\ tasks")
        sizes = sorted({int(k.split("×")[1]) for k in row.grid})
        for size in sizes:
            grid.add_column(str(size), justify="right")
        for seeds in sorted({int(k.split("×")[0]) for k in row.grid}):
            grid.add_row(str(seeds), *(f"{row.grid[f'{seeds}×{t}']:.1f}" for t in sizes))
        console.print(grid)


if __name__ == "__main__":
    app()
