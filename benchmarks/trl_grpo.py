"""Our GRPO step ÷ TRL ``GRPOTrainer`` step on the same single-turn workload (target ≤ 1.0).

    python benchmarks/trl_grpo.py [--steps 4] [--tasks 4] [--group 8] [--length 20]
                                  [--no-warm] [--free-length] [--profile] [--threads N]

Both sides get the quickstart's tiny model (the shipped warm start unless ``--no-warm``), in
their own copies loaded from the same weights, and each step the same P ALFWorld first-turn
prompts (rendered by the env, tokenised identically), G samples per prompt, L new tokens (the
EOS is held off until L with ``min_new_tokens`` on both sides, so every completion is exactly L
tokens, unless ``--free-length``), one PPO epoch and one optimiser step on all P·G samples,
fp32, k3 KL to a reference model with weight 0.01, entropy bonus 0.001, AdamW lr 5e-4.

Ours is ``sdar_bench.trainer.train_step`` with the env cut to one turn (max_turns 1); its reward
is the env's (10 on success, −0.1 for an invalid action). TRL's reward function is 1 when the
env's parser finds an admissible action: the reward's cost is nothing next to the model's.
TRL takes the plain-text prompts and our word-level tokenizer as they are (no chat template,
no BOS; the asserted ids are ours); its gradient checkpointing, on by default, is turned off
as ours has none, and its ``dapo`` loss is our token mean over the batch.

The two are interleaved in one process: a TRL callback runs one of our steps after each TRL
step, so machine load hits both alike. The first step of each side is a warm-up and is not
timed. Prints the median seconds per step of each side (TRL's from its step-begin to step-end
callbacks, which hold generation, scoring and the update) with a breakdown (generate; the rest
of the rollout or TRL's reference pass and rewards; the update), the mean completion length of
each side, every step's time, and the ratio ours/TRL of the medians. ``--profile`` then runs
cProfile on one more step of ours and prints where it went.

On a machine shared with other jobs use ``--threads 1``: two OpenMP threads on two busy cores
wait at every parallel region for a descheduled thread, and a step then takes 10–30× longer.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import RecordingBackend, quickstart_spec, warm_policy

from sdar_bench.config import RunSpec
from sdar_bench.envs import Env, make_env
from sdar_bench.policy import Policy, load_policy
from sdar_bench.trainer import RunState, setup, train_step

BETA = 0.01  # KL weight: our GRPO's c_kl default on ALFWorld, TRL's beta
C_ENT = 0.001  # our GRPO's entropy bonus, TRL's entropy_coef


class Stopwatch:
    """Wraps a callable and records the seconds of each call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - start)


def breakdown(parts: list[dict[str, float]]) -> str:
    """Median seconds of each phase over the timed steps."""
    return ", ".join(f"{k} {statistics.median(p[k] for p in parts):.3f}" for k in parts[0])


def single_turn_spec(tasks: int, group: int, length: int, steps: int) -> RunSpec:
    """The quickstart GRPO run, cut to one turn per episode and the given batch shape."""
    spec = quickstart_spec("grpo")
    return spec.model_copy(
        update={
            "env_params": {**spec.env_params, "max_turns": 1},
            "method_params": {**spec.method_params, "c_kl": BETA, "c_ent": C_ENT},
            "train": spec.train.model_copy(
                update={
                    "steps": steps,
                    "tasks_per_step": tasks,
                    "group_size": group,
                    "max_new_tokens": length,
                    "micro_batch_size": tasks * group,  # one forward/backward, as TRL's
                }
            ),
        }
    )


def first_turn_rows(env: Env, spec: RunSpec, steps: int) -> list[dict[str, Any]]:
    """The prompts our trainer plays, step by step, with their admissible actions."""
    rows = []
    for step in range(steps):
        for task in env.train_tasks(spec.seed, step, spec.train.tasks_per_step):
            observation = env.new_game(task).reset()
            rows.append(
                {
                    "prompt": env.render_prompt(task, [], observation, 0),
                    "admissible": list(observation.admissible or ()),
                }
            )
    return rows


def load_same_weights(spec: RunSpec, warm: bool) -> Policy:
    """The quickstart's shipped warm start (keyed by the quickstart's own spec, not the
    single-turn one, which would train a new one), or the untrained tiny model."""
    if warm:
        return warm_policy(quickstart_spec("grpo"))
    return load_policy(spec.model, spec.train.max_prompt_tokens, env=spec.env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (+1 warm-up)")
    parser.add_argument("--tasks", type=int, default=4, help="prompts per step (P)")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    parser.add_argument("--length", type=int, default=20, help="new tokens per sample (L)")
    parser.add_argument("--no-warm", action="store_true", help="start from the untrained model")
    parser.add_argument("--free-length", action="store_true", help="let completions end at EOS")
    parser.add_argument("--profile", action="store_true", help="cProfile one more step of ours")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    total = args.steps + 1

    spec = single_turn_spec(args.tasks, args.group, args.length, total)
    env = make_env(spec.env, **spec.env_params)
    rows = first_turn_rows(env, spec, total)

    torch.manual_seed(0)
    ours_policy = load_same_weights(spec, not args.no_warm)
    trl_policy = load_same_weights(spec, not args.no_warm)  # TRL patches its model: own copy
    if not args.free_length:
        # Our backend leaves min_new_tokens unset, so generate() takes it from the model's config.
        ours_policy.model.generation_config.min_new_tokens = args.length
    state: RunState = setup(spec, ours_policy)
    backend = RecordingBackend(state.backend)
    state.backend = backend
    for i in range(spec.train.tasks_per_step):  # the prompts are token-for-token the same
        ours_ids = ours_policy.encoder.encode(rows[i]["prompt"])
        assert trl_policy.tokenizer(text=[rows[i]["prompt"]])["input_ids"][0] == ours_ids

    from datasets import Dataset  # TRL's import is slow (~10 s): only here
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def admissible_reward(
        prompts: list[str], completions: list[str], admissible: list[list[str]], **_: Any
    ) -> list[float]:
        return [
            float(env.parse(text, actions).valid)
            for text, actions in zip(completions, admissible, strict=True)
        ]

    ours_times: list[float] = []
    ours_parts: list[dict[str, float]] = []
    trl_times: list[float] = []
    trl_parts: list[dict[str, float]] = []
    trl_lengths: list[float] = []
    trl_generate: Stopwatch | None = None
    trl_prepare: Stopwatch | None = None

    class Interleave(TrainerCallback):
        """Time each TRL step, then run and time one step of ours."""

        def __init__(self) -> None:
            self.start = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            trl_times.append(time.perf_counter() - self.start)
            assert trl_generate is not None and trl_prepare is not None
            trl_parts.append(
                {
                    "generate": trl_generate.seconds[-1],
                    "scoring": trl_prepare.seconds[-1] - trl_generate.seconds[-1],
                    "update": trl_times[-1] - trl_prepare.seconds[-1],
                }
            )
            start = time.perf_counter()
            metrics = train_step(state, len(ours_times))
            ours_times.append(time.perf_counter() - start)
            ours_parts.append(
                {
                    "generate": backend.call_seconds[-1],
                    "rollout rest": metrics["time/rollout"] - backend.call_seconds[-1],
                    "reference": metrics["time/teacher"],
                    "update": metrics["time/update"],
                }
            )

        def on_log(self, *_: Any, logs: dict[str, float] | None = None, **__: Any) -> None:
            if logs and "completions/mean_length" in logs:
                trl_lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            fp16=False,
            per_device_train_batch_size=args.tasks * args.group,
            gradient_accumulation_steps=1,
            num_generations=args.group,
            max_completion_length=args.length,
            num_iterations=1,
            beta=BETA,
            entropy_coef=C_ENT,
            epsilon=0.2,
            loss_type="dapo",  # token mean over the batch: our Agg
            learning_rate=spec.train.lr,
            weight_decay=spec.train.weight_decay,
            lr_scheduler_type="constant",
            max_grad_norm=spec.train.grad_clip,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            generation_kwargs=None if args.free_length else {"min_new_tokens": args.length},
            gradient_checkpointing=False,  # TRL's default is on; ours never checkpoints
            shuffle_dataset=False,  # the prompts in our order
            max_steps=total,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=trl_policy.model,
            reward_funcs=admissible_reward,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=trl_policy.tokenizer,
            callbacks=[Interleave()],
        )
        # Time TRL's phases from outside: its generation, and generation + reference pass +
        # rewards + advantages (everything before the loss); the rest of the step is the update.
        trl_generate = Stopwatch(trainer._generate)
        trl_prepare = Stopwatch(trainer._generate_and_score_completions)
        trainer._generate = trl_generate  # type: ignore[method-assign]
        trainer._generate_and_score_completions = trl_prepare  # type: ignore[method-assign]
        trainer.train()

    ours = statistics.median(ours_times[1:])
    trl = statistics.median(trl_times[1:])
    ours_len = statistics.mean(len(r) for r in backend.responses)
    trl_len = statistics.mean(trl_lengths) if trl_lengths else float("nan")
    print(
        f"workload: {args.tasks} prompts x G {args.group} = {args.tasks * args.group} "
        "samples/step, "
        f"prompt {len(ours_policy.encoder.encode(rows[0]['prompt']))} tokens, "
        f"L {args.length}, torch threads {torch.get_num_threads()}, "
        f"{args.steps} timed steps per side"
    )
    print(f"completion length: ours {ours_len:.1f}, TRL {trl_len:.1f} tokens")
    print(f"ours: {ours:.3f} s/step ({breakdown(ours_parts[1:])})")
    print(f"TRL:  {trl:.3f} s/step ({breakdown(trl_parts[1:])})")
    print(f"per-step seconds ours {[round(t, 3) for t in ours_times]}")
    print(f"per-step seconds TRL  {[round(t, 3) for t in trl_times]}")
    print(f"ratio ours/TRL = {ours / trl:.2f}  (target <= 1.0)")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        train_step(state, len(ours_times))
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        print(text.getvalue())


if __name__ == "__main__":
    main()
