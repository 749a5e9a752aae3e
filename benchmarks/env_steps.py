"""Env steps per second of each offline engine, and the env's share of a training step.

    python benchmarks/env_steps.py [--episodes 200] [--steps 2]

For each env (with the settings of suites/cpu_table.yaml) it plays the expert, timing one env
turn as the trainer pays for it: ``render_prompt`` + ``parse`` + ``step`` (and ``reset`` per
episode). Then it runs GRPO training steps with tiny-qwen-1m and counts their turns; the env's
share of a step is turns × seconds per env turn ÷ step time. Target: ≤ 10% for every engine.
The expert's turns are valid actions, the expensive kind (an invalid turn is a no-op), so the
share is an upper bound.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import ROOT

from sdar_bench.config import load_suite
from sdar_bench.envs import make_env
from sdar_bench.policy import load_policy
from sdar_bench.trainer import setup, train_step


def seconds_per_turn(env_name: str, env_params: dict, episodes: int) -> tuple[float, int]:
    env = make_env(env_name, **env_params)
    turns, start = 0, time.perf_counter()
    for i in range(episodes):
        task = env.task("train", i)
        game = env.new_game(task)
        observation = game.reset()
        history: list[tuple[str, str]] = []
        for turn in range(env.params.max_turns):
            action = game.expert_action()
            if observation.done or action is None:
                break
            env.render_prompt(
                task, history[len(history) - env.params.history_length :], observation, turn
            )
            env.parse(env.format_response(action, "go"), observation.admissible)
            history.append((observation.text, action))
            observation = game.step(action)
            turns += 1
    return (time.perf_counter() - start) / max(turns, 1), turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    suite = load_suite(ROOT / "suites" / "cpu_table.yaml")
    print(f"{'env':10} {'env turns/s':>12} {'turns/step':>11} {'step s':>8} {'env share':>10}")
    for env_name in suite.envs:
        spec = next(
            r for r in suite.expand()
            if r.env == env_name and r.method == "grpo" and r.model == "tiny-qwen-1m"
        )  # fmt: skip
        per_turn, _ = seconds_per_turn(env_name, spec.env_params, args.episodes)
        torch.manual_seed(0)
        state = setup(spec, load_policy(spec.model, spec.train.max_prompt_tokens, env=env_name))
        step_seconds, step_turns = 0.0, 0
        for step in range(args.steps):
            start = time.perf_counter()
            metrics = train_step(state, step)
            step_seconds += time.perf_counter() - start
            step_turns += metrics["samples"]
        step_seconds /= args.steps
        step_turns //= args.steps
        share = step_turns * per_turn / step_seconds
        print(
            f"{env_name:10} {1 / per_turn:12.0f} {step_turns:11d} {step_seconds:8.2f} {share:10.1%}"
        )


if __name__ == "__main__":
    main()
