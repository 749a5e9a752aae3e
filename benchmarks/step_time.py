"""SDAR step time ÷ GRPO step time on the quickstart configuration (target ≤ 1.35).

    python benchmarks/step_time.py [--steps 4]

Both methods start from the same warm-started weights and play the same tasks; the only extra
work of SDAR is the teacher's forward pass over the same response tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import quickstart_spec, warm_policy

from sdar_bench.trainer import setup, train_step


def mean_step_seconds(method: str, steps: int) -> tuple[float, dict[str, float]]:
    spec = quickstart_spec(method)
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    times, parts = [], {"time/rollout": 0.0, "time/teacher": 0.0, "time/update": 0.0}
    for step in range(steps):
        start = time.perf_counter()
        metrics = train_step(state, step)
        times.append(time.perf_counter() - start)
        for key in parts:
            parts[key] += metrics[key] / steps
    return statistics.mean(times), parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    grpo, grpo_parts = mean_step_seconds("grpo", args.steps)
    sdar, sdar_parts = mean_step_seconds("sdar", args.steps)
    for name, seconds, parts in (("grpo", grpo, grpo_parts), ("sdar", sdar, sdar_parts)):
        detail = ", ".join(f"{k.split('/')[1]} {v:.2f}s" for k, v in parts.items())
        print(f"{name}: {seconds:.2f} s/step ({detail})")
    print(f"ratio sdar/grpo = {sdar / grpo:.2f}  (target <= 1.35)")


if __name__ == "__main__":
    main()
