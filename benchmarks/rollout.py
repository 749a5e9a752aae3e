"""Batched rollout ÷ one-episode-at-a-time rollout, in episodes per second (target ≥ 5×).

    python benchmarks/rollout.py [--tasks 4 --group 8]

Same policy, same tasks, same sampling settings; the batched collector issues one ``generate``
per turn for every live episode, the baseline one per episode per turn.
"""

from __future__ import annotations

import argparse
import time

from _common import quickstart_spec, warm_policy

from sdar_bench.envs import make_env
from sdar_bench.policy.backend import TransformersBackend
from sdar_bench.rollout import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    spec = quickstart_spec()
    policy = warm_policy(spec)
    env = make_env(spec.env, **spec.env_params)
    backend = TransformersBackend(policy.model, policy.pad_id, policy.eos_id)
    tasks = env.train_tasks(0, 0, args.tasks)
    kwargs = dict(temperature=1.0, max_new_tokens=spec.train.max_new_tokens)

    start = time.perf_counter()
    batched = collect(policy, backend, env, tasks, args.group, seed=0, **kwargs)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single = []
    for i, task in enumerate(tasks):
        for copy in range(args.group):
            single += collect(policy, backend, env, [task], 1, seed=1000 * i + copy, **kwargs)
    single_s = time.perf_counter() - start

    n = len(batched)
    turns_b, turns_s = sum(len(e.turns) for e in batched), sum(len(e.turns) for e in single)
    print(f"batched:    {n / batched_s:.2f} episodes/s ({turns_b} turns in {batched_s:.1f}s)")
    print(
        f"one by one: {len(single) / single_s:.2f} episodes/s ({turns_s} turns in {single_s:.1f}s)"
    )
    print(
        f"ratio batched/single = {(n / batched_s) / (len(single) / single_s):.1f}x  (target >= 5)"
    )


if __name__ == "__main__":
    main()
