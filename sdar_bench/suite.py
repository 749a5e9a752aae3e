"""Run a suite: expand the grid, skip finished runs, execute the rest, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sdar_bench.config import RunSpec, SuiteSpec
from sdar_bench.run import execute_run, is_finished


def run_dir(results: Path, spec: RunSpec) -> Path:
    return results / "runs" / spec.run_id


def run_suite(
    suite: SuiteSpec, results: Path, console: Console | None = None
) -> list[dict[str, Any]]:
    """Execute every unfinished run of ``suite`` one after another; returns their results."""
    console = console or Console()
    runs = suite.expand()
    todo = [r for r in runs if not is_finished(run_dir(results, r))]
    console.print(
        f"[bold]{suite.name}[/]: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
        f"results in {results}"
    )
    outcomes = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("suite", total=len(todo), info="")
        for spec in todo:
            label = f"{spec.method} s{spec.seed}"
            bar = progress.add_task(label, total=spec.train.steps, info="")

            def callback(event: str, info: dict[str, Any], bar: int = bar) -> None:
                if event == "warmstart":
                    progress.update(bar, info="warm start (cached after the first run)")
                elif event == "step":
                    progress.update(
                        bar,
                        advance=1,
                        info=f"reward {info['reward/mean']:.2f}  train success {info['success/train']:.0%}",
                    )
                elif event == "eval":
                    progress.update(
                        bar,
                        info=f"eval@{info['step']} {info['label']}: {info.get('success/all', 0):.1f}%",
                    )

            outcomes.append(execute_run(spec, run_dir(results, spec), callback))
            progress.update(bar, completed=spec.train.steps)
            progress.update(overall, advance=1)
    return outcomes
