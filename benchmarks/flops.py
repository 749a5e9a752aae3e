"""GRPO update throughput against this CPU's measured fp32 matmul FLOP/s (quickstart config).

    python benchmarks/flops.py [--steps 2] [--threads N]

Measures the machine's fp32 matmul rate with torch (1024×1024 matmuls, the best of several
repetitions, with torch's thread count), once before and once after the training steps, and
keeps the better of the two. Then runs one warm-up and ``--steps`` timed GRPO steps of the
quickstart configuration from the shipped warm start and prints, per timed step and on
average:

* the update's model FLOP/s, ``6 × parameters × tokens ÷ time/update``, where tokens are the
  prompt + response tokens of every turn sample (what the trainer counts for ``tokens/per_s``),
  and its fraction of the measured matmul FLOP/s;
* the same for the reference pass (``2 × parameters × tokens ÷ time/teacher``);
* how many token positions a padded forward pass over each of the update's micro-batches
  runs, and how many tokens it holds once each distinct prompt of a micro-batch is counted once
  (copies of a prompt: a task's G first turns, identical histories). Where the trainer runs
  each distinct prompt once, the first figure counts its copies' tokens as processed: the
  ``distinct`` rate is then the FLOP/s the CPU actually did.

The 6·N rule leaves out attention (small here: 130-token prompts, hidden 128) and counts the
tied embedding as a matmul (it is one, as the LM head, on the response positions only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import quickstart_spec, warm_policy

import sdar_bench.trainer as trainer
from sdar_bench.trainer import setup, train_step


def matmul_flops(n: int = 1024, reps: int = 5, per_rep: int = 10) -> float:
    """Best fp32 matmul rate over ``reps`` repetitions of ``per_rep`` n×n products (FLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(per_rep):
            torch.mm(a, b)
        best = max(best, 2 * n**3 * per_rep / (time.perf_counter() - start))
    return best


class PositionCounter:
    """Wraps the trainer's ``score_responses`` and counts, per call, the positions of a padded
    forward pass (rows × (longest prompt + longest response)) and the tokens with each distinct
    prompt counted once."""

    def __init__(self) -> None:
        self.inner = trainer.score_responses
        self.positions = 0
        self.distinct_tokens = 0

    def __call__(self, model: Any, prompts: Any, responses: Any, *args: Any, **kwargs: Any) -> Any:
        longest = max(len(p) for p in prompts) + max(max(len(r) for r in responses), 1)
        self.positions += len(prompts) * longest
        self.distinct_tokens += sum(len(p) for p in {tuple(p) for p in prompts})
        self.distinct_tokens += sum(len(r) for r in responses)
        return self.inner(model, prompts, responses, *args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    peak_before = matmul_flops()
    spec = quickstart_spec("grpo")
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    params = sum(p.numel() for p in state.policy.model.parameters())
    counter = PositionCounter()
    trainer.score_responses = counter  # the update's calls; scoring imports its own copy

    rows: list[dict[str, float]] = []
    for step in range(args.steps + 1):
        counter.positions = counter.distinct_tokens = 0
        metrics = train_step(state, step)
        if step == 0:
            continue  # warm-up
        seconds = metrics["time/rollout"] + metrics["time/teacher"] + metrics["time/update"]
        tokens = metrics["tokens/per_s"] * seconds  # prompt + response tokens of all samples
        rows.append(
            {
                "samples": metrics["samples"],
                "tokens": tokens,
                "positions": counter.positions,
                "distinct": counter.distinct_tokens,
                "update_s": metrics["time/update"],
                "reference_s": metrics["time/teacher"],
                "update_flops": 6 * params * tokens / metrics["time/update"],
                "distinct_flops": 6 * params * counter.distinct_tokens / metrics["time/update"],
                "reference_flops": 2 * params * tokens / metrics["time/teacher"],
            }
        )
    trainer.score_responses = counter.inner
    peak = max(peak_before, matmul_flops())

    print(
        f"matmul fp32 1024x1024, torch threads {torch.get_num_threads()}: "
        f"{peak / 1e9:.1f} GFLOP/s (before the steps {peak_before / 1e9:.1f})"
    )
    print(f"model parameters: {params:,}")
    for i, row in enumerate(rows, start=1):
        print(
            f"step {i}: {row['samples']:.0f} samples, {row['tokens']:.0f} tokens "
            f"({row['positions']:.0f} positions with padding, {row['distinct']:.0f} distinct), "
            f"update {row['update_s']:.2f} s -> {row['update_flops'] / 1e9:.2f} GFLOP/s "
            f"({row['update_flops'] / peak:.1%}; distinct {row['distinct_flops'] / peak:.1%}), "
            f"reference {row['reference_s']:.2f} s -> {row['reference_flops'] / 1e9:.2f} GFLOP/s "
            f"({row['reference_flops'] / peak:.1%})"
        )
    update = statistics.mean(r["update_flops"] for r in rows)
    reference = statistics.mean(r["reference_flops"] for r in rows)
    distinct = statistics.mean(r["distinct_flops"] for r in rows)
    padding = 1 - statistics.mean(r["tokens"] / r["positions"] for r in rows)
    print(
        f"update: {update / 1e9:.2f} GFLOP/s = {update / peak:.1%} of the matmul rate "
        f"(distinct tokens: {distinct / peak:.1%}); "
        f"reference pass: {reference / 1e9:.2f} GFLOP/s = {reference / peak:.1%}; "
        f"padding {padding:.0%} of the update's positions"
    )


if __name__ == "__main__":
    main()
