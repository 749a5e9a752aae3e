"""SDAR step time ÷ GRPO step time on identical rollouts, quickstart configuration (target ≤ 1.25).

    python benchmarks/step_time.py [--steps 3] [--reps 3] [--threads 2] [--no-plain]

Left to themselves GRPO and SDAR sample different episodes after their first update, so their
rollouts (and the number of turn samples scored and trained on) differ and the ratio moves with
the episodes' lengths. Here the rollouts are collected once and replayed:

1. ``--steps`` GRPO steps from the warm start with the real rollout backend record every
   ``generate`` call (prompts and sampled responses) and time the rollout phase;
2. each of ``--reps`` repetitions then runs every method from the same warm weights over the
   same steps with a backend that returns the recorded responses (and checks that it is asked
   for exactly the recorded prompts), so every method scores and trains on the same samples.
   The methods' order alternates between repetitions (a loaded machine drifts).

A method's step time is the recorded rollout time (the same work for every method) plus its
own scoring and update. Printed per method: the phases' medians over repetitions, the teacher
pass alone (``score_topk_in_chunks`` timed) and its share of the update; then SDAR ÷ GRPO as
median (min–max) over repetitions, of the whole step and of the methods' own work. Unless
``--no-plain``, ``sdar-plain`` is SDAR with the teacher pass on the plain path (no shared
prefix): the "before" of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from _common import method_cost_spec, warm_policy

import sdar_bench.trainer as trainer
from sdar_bench.trainer import setup, train_step


class ReplayBackend:
    """Returns the responses recorded for the n-th ``generate`` call, in order."""

    def __init__(self, calls: Sequence[tuple[list[list[int]], list[list[int]]]]) -> None:
        self.calls, self.next = calls, 0

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        recorded_prompts, responses = self.calls[self.next]
        if [list(p) for p in prompts] != recorded_prompts:
            raise RuntimeError(f"generate call {self.next}: prompts differ from the recording")
        self.next += 1
        return [list(r) for r in responses]

    def sync_weights(self) -> None:
        return None

    def sleep(self) -> None:
        return None


class RecordingBackend:
    """The real backend, plus each call's prompts and responses."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list[list[int]], list[list[int]]]] = []

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        out = self.inner.generate(prompts, max_new_tokens, temperature, seed)
        self.calls.append(([list(p) for p in prompts], [list(r) for r in out]))
        return out

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def sleep(self) -> None:
        self.inner.sleep()


class TeacherTimer:
    """Wraps the trainer's ``score_topk_in_chunks`` (the teacher pass) and sums its seconds;
    ``plain`` forces the plain path (no shared prefix) for the "before" figure."""

    def __init__(self) -> None:
        self.inner = trainer.score_topk_in_chunks
        self.seconds = 0.0
        self.plain = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.plain:
            kwargs["share_prefix"] = False
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


def record(steps: int) -> tuple[list[Any], list[float]]:
    """GRPO's rollouts of ``steps`` steps from the warm start, and each step's rollout time."""
    spec = method_cost_spec("grpo")
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    recorder = RecordingBackend(state.backend)
    state.backend = recorder
    seconds = [train_step(state, step)["time/rollout"] for step in range(steps)]
    return recorder.calls, seconds


def replay(method: str, calls: list[Any], steps: int, timer: TeacherTimer) -> dict[str, float]:
    """Seconds of each phase summed over ``steps`` replayed steps."""
    spec = method_cost_spec("sdar" if method == "sdar-plain" else method)
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    state.backend = ReplayBackend(calls)
    timer.plain, timer.seconds = method == "sdar-plain", 0.0
    parts = {"replay": 0.0, "scoring": 0.0, "update": 0.0, "samples": 0.0}
    for step in range(steps):
        metrics = train_step(state, step)
        parts["replay"] += metrics["time/rollout"]  # env steps and prompt encoding only
        parts["scoring"] += metrics["time/teacher"]  # old/reference/teacher passes
        parts["update"] += metrics["time/update"]
        parts["samples"] += metrics["samples"]
    parts["teacher"] = timer.seconds
    return parts


def span(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's)")
    parser.add_argument("--no-plain", action="store_true", help="skip SDAR's plain teacher pass")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    calls, rollout_seconds = record(args.steps)
    rollout = sum(rollout_seconds)
    methods = ["grpo", "sdar"] + ([] if args.no_plain else ["sdar-plain"])
    timer = TeacherTimer()
    trainer.score_topk_in_chunks = timer
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for rep in range(args.reps):
        for method in methods if rep % 2 == 0 else methods[::-1]:
            runs[method].append(replay(method, calls, args.steps, timer))
    trainer.score_topk_in_chunks = timer.inner

    per_step = 1 / args.steps
    print(
        f"torch threads {torch.get_num_threads()}; {args.steps} steps replayed "
        f"{args.reps} times; recorded rollout {rollout * per_step:.2f} s/step "
        f"({runs['grpo'][0]['samples'] * per_step:.0f} turn samples/step)"
    )
    print("seconds per step, median (min-max) over repetitions:")
    for method in methods:
        rows = runs[method]
        step = [rollout + r["replay"] + r["scoring"] + r["update"] for r in rows]
        line = (
            f"  {method:10s} step {span([s * per_step for s in step])}: "
            f"scoring {span([r['scoring'] * per_step for r in rows])} "
            f"(teacher {span([r['teacher'] * per_step for r in rows])}), "
            f"update {span([r['update'] * per_step for r in rows])}"
        )
        if method != "grpo":
            line += f"; teacher/update {span([r['teacher'] / r['update'] for r in rows])}"
        print(line)
    for method in methods[1:]:
        total, own = [], []
        for g, s in zip(runs["grpo"], runs[method], strict=True):
            g_own = g["replay"] + g["scoring"] + g["update"]
            s_own = s["replay"] + s["scoring"] + s["update"]
            total.append((rollout + s_own) / (rollout + g_own))
            own.append(s_own / g_own)
        target = "  (target <= 1.25)" if method == "sdar" else ""
        print(
            f"ratio {method}/grpo = {span(total)} per step, "
            f"{span(own)} of the methods' own work (scoring + update){target}"
        )


if __name__ == "__main__":
    main()
