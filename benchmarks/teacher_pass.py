"""The teacher pass against its floor, on recorded quickstart batches (target teacher ≤ 0.40 of
the update).

    python benchmarks/teacher_pass.py [--steps 2] [--reps 3] [--model tiny-qwen-5m]

Records the batches of ``--steps`` SDAR steps from the quickstart's warm start, then times, on
exactly those rows, median of ``--reps`` repetitions (order alternating):

* update:  the student's forward + backward over every (prompt, response), micro-batches of
  the quickstart's size, as the update runs them (the loss here is logp + entropy: the
  method's own loss terms cost little next to the passes);
* student: the student's no-grad forward over the same rows (the floor: the teacher's pass runs
  as many positions, over longer contexts);
* teacher: ``score_topk_in_chunks(..., share_prefix=True)`` over the teacher's prompts.

``--model`` times another model on the same token ids (a tiny-qwen size, randomly initialised:
timing only). Printed: each pass in seconds and as a share of the update.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import method_cost_spec, warm_policy

import sdar_bench.trainer as trainer
from sdar_bench.policy import load_policy
from sdar_bench.policy.scoring import (
    by_prompt,
    score_in_chunks,
    score_responses,
    score_topk_in_chunks,
)
from sdar_bench.trainer import setup, train_step


def record(steps: int) -> list[Any]:
    """The batches (student prompts, teacher prompts, responses) of ``steps`` SDAR steps."""
    spec = method_cost_spec("sdar")
    torch.manual_seed(0)
    state = setup(spec, warm_policy(spec))
    batches: list[Any] = []
    inner = trainer.build_batch

    def keep(*args: Any, **kwargs: Any) -> Any:
        batches.append(inner(*args, **kwargs))
        return batches[-1]

    trainer.build_batch = keep
    try:
        for step in range(steps):
            train_step(state, step)
    finally:
        trainer.build_batch = inner
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default=None, help="time this model instead (tiny-qwen-*)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = method_cost_spec("sdar")
    chunk = spec.train.micro_batch_size
    batches = record(args.steps)
    policy = warm_policy(spec)
    if args.model:
        policy = load_policy(args.model, spec.train.max_prompt_tokens, env=spec.env)
    model, pad = policy.model, policy.pad_id

    def update(b: Any) -> None:
        model.train()
        rows = by_prompt(b.prompt_ids)
        for start in range(0, len(rows), chunk):
            idx = rows[start : start + chunk]
            s = score_responses(
                model,
                [b.prompt_ids[i] for i in idx],
                [b.response_ids[i] for i in idx],
                pad,
                with_entropy=True,
            )
            assert s.entropy is not None
            (s.logp.sum() + s.entropy.sum()).backward()
        model.zero_grad(set_to_none=True)

    def student(b: Any) -> None:
        model.eval()
        score_in_chunks(model, b.prompt_ids, b.response_ids, pad, chunk)

    def teacher(b: Any) -> None:
        model.eval()
        score_topk_in_chunks(model, b.teacher_ids, b.response_ids, pad, None, chunk, 1.0, True)

    passes: dict[str, Callable[[Any], None]] = {
        "update": update,
        "student": student,
        "teacher": teacher,
    }
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for rep in range(args.reps):
        names = list(passes) if rep % 2 == 0 else list(passes)[::-1]
        for name in names:
            start = time.perf_counter()
            for b in batches:
                passes[name](b)
            seconds[name].append(time.perf_counter() - start)

    rows = sum(len(b) for b in batches)
    print(
        f"{args.model or spec.model + ' (warm start)'}; torch threads {torch.get_num_threads()}; "
        f"{len(batches)} recorded batches, {rows} rows; median of {args.reps}:"
    )
    update_s = statistics.median(seconds["update"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"  {name:8s} {median:6.2f} s ({min(values):.2f}-{max(values):.2f}), "
            f"{median / update_s:.2f} of the update"
        )


if __name__ == "__main__":
    main()
