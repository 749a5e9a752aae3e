"""The ``sdar-bench`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

app = typer.Typer(
    help="Compare agentic RL methods (GRPO, OPSD hybrids, SDAR, …) on ALFWorld-style envs, reproducibly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _quiet_libraries() -> None:
    """Our progress bars are the ones a user reads: silence the libraries' own."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(message: str) -> None:
    """A user mistake: one line on stderr, exit code 2, no traceback."""
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    suite_file: Annotated[Path, typer.Argument(help="Suite YAML, e.g. suites/quickstart.yaml.")],
    results: Annotated[
        Path | None,
        typer.Option("--results", "-o", help="Results directory (default: results/<suite name>)."),
    ] = None,
) -> None:
    """Run every unfinished run of a suite, then print and write its comparison table."""
    from sdar_bench.config import SpecError, load_suite
    from sdar_bench.policy import ModelNotFound

    _quiet_libraries()
    try:
        suite = load_suite(suite_file)
    except SpecError as exc:
        _fail(str(exc))
    out = results or Path("results") / suite.name
    from sdar_bench.suite import run_suite

    try:
        run_suite(suite, out, console)
    except ModelNotFound as exc:
        _fail(str(exc))
    _print_report(out)


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

    _quiet_libraries()
    try:
        suite = load_suite(suite_file)
    except SpecError as exc:
        _fail(str(exc))
    seen: set[str] = set()
    for spec in suite.expand():
        if spec.model not in TINY_MODELS or not spec.warmstart.enabled:
            continue
        policy = load_policy(spec.model, spec.train.max_prompt_tokens, env=spec.env)
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
) -> None:
    """Rebuild table.md / table.csv from a results directory and print the tables."""
    if not (results_dir / "runs").is_dir():
        _fail(f"{results_dir}: no runs/ folder here; pass the directory `sdar-bench run` wrote")
    _print_report(results_dir)


def _print_report(results_dir: Path) -> None:
    from sdar_bench.report.table import WHICH, format_cell, write_report

    report = write_report(results_dir)
    if not report.tables:
        console.print("no finished runs yet")
        return
    for (env, which), frame in report.tables.items():
        columns = report.columns[env]
        table = Table(title=f"{env}: evaluation panel, {WHICH[which]} (mean ± 95% CI over seeds)")
        for head in ["model", "method", "seeds", *(c.split("/", 1)[-1] for c in columns)]:
            table.add_column(head, justify="left" if head in ("model", "method") else "right")
        for _, row in frame.iterrows():
            table.add_row(
                str(row["model"]), str(row["label"]), str(row["seeds"]),
                *(format_cell(row.get(c)) for c in columns),
            )  # fmt: skip
        console.print(table)
    for setting in report.teacher_quality:
        console.print(f"teacher quality — {setting}")
    console.print(f"tables written to {results_dir}/table.md and table.csv")


@app.command()
def methods() -> None:
    """List the registered methods with their defaults and a one-line description."""
    from sdar_bench.registry import get_method_class, method_names

    table = Table(title="methods (entry-point group sdar_bench.methods)")
    for head in ("name", "row", "trains", "teacher", "parameters (defaults)", "description"):
        table.add_column(head)
    for name in method_names():
        cls = get_method_class(name)
        defaults = ", ".join(f"{k}={v}" for k, v in cls.Params().model_dump().items())
        table.add_row(
            name, cls.label, "yes" if cls.trains else "no", "yes" if cls.needs_teacher else "no",
            defaults if cls.trains else "–", cls.description,
        )  # fmt: skip
    console.print(table)


@app.command()
def envs() -> None:
    """List the environments: engines, task types, default settings, how to use real data."""
    from sdar_bench.envs import ENVS

    table = Table(
        title="environments (offline engines ship with the package; panels are generated, any size)"
    )
    for head in ("name", "task types", "defaults", "real data", "description"):
        table.add_column(head)
    for name, cls in sorted(ENVS.items()):
        defaults = ", ".join(
            f"{k}={v}" for k, v in cls.Params().model_dump().items() if v is not None
        )
        real = cls.real_data or "not yet (offline engine only)"
        table.add_row(name, ", ".join(cls.task_types), defaults, real, cls.description)
    console.print(table)


if __name__ == "__main__":
    app()
