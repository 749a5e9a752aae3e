"""How long the command line takes to answer, against a bare Python start in the same run.

    python benchmarks/cli_startup.py [--repeats 5] [--ref REF]

Each command runs in a fresh interpreter (as a user's shell starts it); the figure is the median
wall time of ``--repeats`` runs, and ``--help`` is also given as the excess over ``python -c
pass``. Targets: ``--help`` of every command within 0.33 s of a bare start; ``methods``,
``envs`` and ``plan suites/quickstart.yaml`` about a second on a quiet machine. ``--ref`` times
a git revision too (checked out into a temporary worktree), for a before/after on one machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: list[list[str]] = [
    ["--help"],
    ["run", "--help"],
    ["methods"],
    ["envs"],
    ["plan", "suites/quickstart.yaml"],
]


def timed(argv: list[str], tree: Path, repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=tree, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(tree: Path, repeats: int) -> dict[str, float]:
    cli = [sys.executable, "-c", "from sdar_bench.cli import app; app(prog_name='sdar-bench')"]
    return {" ".join(args): timed([*cli, *args], tree, repeats) for args in COMMANDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref", help="a git revision to time as well (e.g. main)")
    args = parser.parse_args()
    bare = timed([sys.executable, "-c", "pass"], ROOT, args.repeats)
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.ref:
            ref_tree = Path(tmp) / "ref"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(ref_tree), args.ref],
                cwd=ROOT, check=True, capture_output=True,
            )  # fmt: skip
            trees[args.ref] = ref_tree
        try:
            results = {name: measure(tree, args.repeats) for name, tree in trees.items()}
        finally:
            if args.ref:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(trees[args.ref])],
                    cwd=ROOT, check=False, capture_output=True,
                )  # fmt: skip
    print(f"bare python -c pass: {bare:.3f} s (median of {args.repeats})")
    names = list(results)
    print(f"{'command':32}" + "".join(f"{n:>14}" for n in names))
    for command in results[names[0]]:
        print(f"{command:32}" + "".join(f"{results[n][command]:>12.2f} s" for n in names))
    for name in names:
        excess = results[name]["--help"] - bare
        print(f"{name}: --help is {excess:.2f} s over a bare start (target ≤ 0.33)")


if __name__ == "__main__":
    main()
