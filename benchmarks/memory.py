"""Resident memory over many GRPO steps of the quickstart configuration (target: growth < 5 %).

    python benchmarks/memory.py [--steps 200] [--baseline 20] [--threads N]

Runs ``train_step`` ``--steps`` times in one process from the shipped warm start and reads the
process's resident set size after every step. Prints the RSS every 10 steps, the RSS at step
``--baseline`` (the first steps allocate the optimiser state, caches and allocator arenas, so
they are not the baseline) and at the end, and the growth between them in per cent.

One step's RSS swings by a few hundred MiB (batches vary from ~380 to ~460 turn samples, and
the allocator hands large blocks back to the OS or keeps them), so two more figures tell a leak
from noise: the growth of the median RSS of the last 10 steps over that of the 10 steps up to
the baseline, and the least-squares slope after the baseline (MiB per 100 steps; noisy over
few steps). ``--steps 40`` is a quick check; with ``--steps`` at or below the baseline, the
baseline moves to half the steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import quickstart_spec, warm_policy

from sdar_bench.trainer import setup, train_step

MIB = 2**20


def rss_bytes() -> int:
    """This process's resident set size now (not the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import psutil

        return int(psutil.Process().memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--baseline", type=int, default=20, help="step whose RSS is the baseline")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = args.baseline if args.steps > args.baseline else max(args.steps // 2, 1)

    spec = quickstart_spec("grpo")
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    rss = [rss_bytes()]  # rss[k]: after k steps
    start = time.perf_counter()
    for step in range(args.steps):
        train_step(state, step)
        rss.append(rss_bytes())
        if (step + 1) % 10 == 0 or step + 1 == args.steps:
            print(
                f"step {step + 1:4d}: RSS {rss[-1] / MIB:7.1f} MiB  "
                f"({(time.perf_counter() - start) / (step + 1):.1f} s/step)",
                flush=True,
            )

    end = rss[-1]
    growth = (end - rss[baseline]) / rss[baseline]
    after = list(range(baseline, args.steps + 1))
    slope = (
        statistics.linear_regression(after, [rss[k] for k in after]).slope
        if len(after) > 1
        else 0.0
    )
    window = 10

    def median_mib(last: int) -> float:
        return statistics.median(rss[max(last - window + 1, 1) : last + 1]) / MIB

    before, after_med = median_mib(baseline), median_mib(args.steps)
    print(f"RSS before the first step: {rss[0] / MIB:.1f} MiB")
    print(f"RSS at step {baseline}: {rss[baseline] / MIB:.1f} MiB")
    print(f"RSS at step {args.steps}: {end / MIB:.1f} MiB (peak {max(rss) / MIB:.1f})")
    print(
        f"growth {growth:+.1%} (target < 5%), trend {slope * 100 / MIB:+.1f} MiB per 100 steps "
        f"after step {baseline}"
    )
    print(
        f"median RSS of the {window} steps up to {baseline}: {before:.1f} MiB, of the last "
        f"{window}: {after_med:.1f} MiB, growth {(after_med - before) / before:+.1%}"
    )


if __name__ == "__main__":
    main()
