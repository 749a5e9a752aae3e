"""Evaluation noise of the shipped settings: the same weights, evaluated with different seeds.

    python benchmarks/eval_noise.py [--seeds 8 --panels 48 96 192 --envs alfworld webshop searchqa]

For each env of ``suites/three_envs.yaml`` (the shipped tiny-qwen-1m warm start, the protocol's
evaluation temperature: ALFWorld and WebShop 0.4, Search-QA greedy), evaluate the warm-started
policy on the test panel of each size once per evaluation seed, and print per panel size:

* the success rate's mean and its standard deviation across evaluation seeds (the sampling noise
  of one evaluation: what two "seeds" of an untrained method differ by with identical weights);
* the binomial prediction sqrt(p(1−p)/J) for J tasks drawn afresh (panel composition + sampling),
  which the fixed panel's sampling noise stays under (tasks the policy always or never solves
  add no sampling noise);
* the share of tasks whose outcome changed between evaluation seeds;
* the same noise estimated from the per-task success rates p_j over the evaluation seeds,
  sqrt(Σ_j p_j(1 − p_j) · k/(k − 1)) / J for k seeds: far steadier than the sd of k rates.

Evaluation noise is what pairing by seed cancels only partly: two methods' evaluations use the
same evaluation seed but different weights, so their sampling noise is not shared exactly.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from _common import ROOT, warm_policy

from sdar_bench.config import load_suite
from sdar_bench.envs import make_env
from sdar_bench.policy.backend import TransformersBackend
from sdar_bench.rollout import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="evaluation seeds per panel size")
    parser.add_argument("--panels", type=int, nargs="+", default=[48, 96, 192])
    parser.add_argument("--envs", nargs="+", default=["alfworld", "webshop", "searchqa"])
    args = parser.parse_args()
    suite = load_suite(ROOT / "suites" / "three_envs.yaml")
    for env_name in args.envs:
        spec = next(r for r in suite.expand() if r.env == env_name and r.method == "vanilla")
        policy = warm_policy(spec)
        env = make_env(spec.env, **spec.env_params)
        backend = TransformersBackend(policy.model, policy.pad_id, policy.eos_id)
        temperature = env.eval_temperature
        print(f"\n{env_name}: tiny-qwen-1m shipped warm start, T = {temperature}")
        print(
            "panel | mean success | sd across eval seeds | from per-task rates | binomial sd "
            "| tasks that changed"
        )
        for size in args.panels:
            panel = env.panel(size)
            start = time.perf_counter()
            rates, outcomes = [], []
            for eval_seed in range(args.seeds):
                episodes = collect(
                    policy, backend, env, panel, 1, temperature=temperature,
                    max_new_tokens=spec.train.max_new_tokens, seed=10_000 + eval_seed,
                )  # fmt: skip
                won = [e.won for e in episodes]
                outcomes.append(won)
                rates.append(100.0 * sum(won) / size)
            mean = statistics.fmean(rates)
            sd = statistics.stdev(rates) if len(rates) > 1 else math.nan
            binomial = 100.0 * math.sqrt(mean / 100 * (1 - mean / 100) / size)
            changed = sum(len({o[j] for o in outcomes}) > 1 for j in range(size)) / size
            k = len(outcomes)
            rates_j = [sum(o[j] for o in outcomes) / k for j in range(size)]
            per_task = 100.0 * math.sqrt(sum(p * (1 - p) for p in rates_j) * k / (k - 1)) / size
            print(
                f"{size:5d} | {mean:12.1f} | {sd:20.2f} | {per_task:19.2f} | {binomial:11.2f} "
                f"| {changed:17.0%}"
                f"   ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
