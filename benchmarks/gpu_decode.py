"""Rollout decoding of tiny models on a GPU: dynamic cache vs static cache + CUDA graphs.

    python benchmarks/gpu_decode.py [--models tiny-qwen-1m tiny-qwen-5m] [--procs 1 14]
                                    [--batch 32] [--turns 15] [--new-tokens 20]

Needs a CUDA device; without one it prints why and exits 0. For each model and each process
count N (N processes on the one GPU, each with its own model, as a suite's workers would run),
every process decodes ``--turns`` calls of ``--batch`` quickstart-like prompts (ALFWorld
prompts of the warm start's length) × ``--new-tokens`` tokens, with:

* ``dynamic``: the default transformers backend (the "before");
* ``static``: ``policy: {generation: static}``, a static cache compiled with CUDA graphs (the
  "after"; its first call compiles and is not timed);
* ``bare``: the physical limit of this device: a loop of single-token forward calls on a
  prefilled static cache captured in one CUDA graph, no sampling and no ``generate`` logic.

Prints decoded tokens/s and decode steps/s (forward calls per second of one process) per
process and summed over the N processes. EOS is ignored (``min_new_tokens``) so every variant
decodes the same number of tokens.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

import torch


def _prompts(model_name: str, batch: int) -> tuple[Any, list[list[int]]]:
    from sdar_bench.envs import make_env
    from sdar_bench.policy import load_policy

    policy = load_policy(model_name, 512, env="alfworld")
    env = make_env("alfworld", max_turns=15, history_length=2)
    prompts = []
    for i, task in enumerate(env.panel(batch)):
        obs = env.new_game(task).reset()
        prompts.append(policy.encoder.encode(env.render_prompt(task, [], obs, i % 3)))
    return policy, prompts


def _time_backend(policy: Any, prompts: list[list[int]], mode: str, turns: int, new: int) -> float:
    from sdar_bench.policy.backend import TransformersBackend

    backend = TransformersBackend(policy.model, policy.pad_id, -1, generation=mode)
    backend.generate(prompts, new, 1.0, 0)  # warm-up: kernels, and the compile for static
    torch.cuda.synchronize()
    start = time.perf_counter()
    for turn in range(turns):
        backend.generate(prompts, new, 1.0, turn)  # eos -1: every row decodes ``new`` tokens
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def _time_bare(policy: Any, prompts: list[list[int]], turns: int, new: int) -> float:
    """``turns × new`` single-token forward calls replayed from one captured CUDA graph."""
    from transformers import StaticCache

    model = policy.model.eval()
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), policy.pad_id, dtype=torch.long, device="cuda")
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, device="cuda")
    cache = StaticCache(config=model.config, max_cache_len=P + new + 1)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = ids[:, -1:].clone()  # [B, 1]
    position = torch.full((B, 1), P, dtype=torch.long, device="cuda")  # [B, 1]
    step = lambda: model(  # noqa: E731
        input_ids=token,
        position_ids=position,
        cache_position=position[0],
        past_key_values=cache,
        use_cache=True,
    )
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(turns * new):
        graph.replay()  # the same position each time: the limit of the launch, not of the data
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _worker(args: tuple[str, int, int, int, Any]) -> dict[str, float]:
    model_name, batch, turns, new, barrier = args
    torch.manual_seed(0)
    policy, prompts = _prompts(model_name, batch)
    out = {}
    for mode in ("dynamic", "static"):
        barrier.wait()  # all processes time the same variant at the same time
        out[mode] = _time_backend(policy, prompts, mode, turns, new)
    barrier.wait()
    out["bare"] = _time_bare(policy, prompts, turns, new)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-qwen-1m", "tiny-qwen-5m"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 14])
    parser.add_argument("--batch", type=int, default=32, help="episodes per forward call")
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_decode: no CUDA device here; nothing measured")
        sys.exit(0)

    ctx = mp.get_context("spawn")  # CUDA cannot be initialised in a forked child
    tokens = args.turns * args.new_tokens * args.batch
    calls = args.turns * args.new_tokens
    print(
        f"device {torch.cuda.get_device_name()}; per process {args.turns} generate calls × "
        f"{args.batch} episodes × {args.new_tokens} tokens"
    )
    for model_name in args.models:
        for n in args.procs:
            with ctx.Manager() as manager:
                barrier = manager.Barrier(n)
                with ctx.Pool(n) as pool:
                    job = (model_name, args.batch, args.turns, args.new_tokens, barrier)
                    results = pool.map(_worker, [job] * n)
            for mode in ("dynamic", "static", "bare"):
                seconds = [r[mode] for r in results]
                med = statistics.median(seconds)
                print(
                    f"{model_name} procs {n:2d} {mode:7s}: {tokens / med:10.0f} tokens/s and "
                    f"{calls / med:7.1f} decode steps/s per process (median), "
                    f"{n * tokens / med:10.0f} tokens/s in all"
                )


if __name__ == "__main__":
    main()
