"""vLLM ÷ transformers rollout throughput on one GPU, and how closely their log-probs agree.

    python benchmarks/vllm_rollout.py [--tasks 4 --group 8]

The quickstart's warm-started policy (float32 on the GPU) plays the same tasks with the same
sampling settings through each backend: throughput is generated tokens per second of the whole
multi-turn rollout (the engine's start-up is reported apart, after a warm-up rollout on each
side). Agreement: the log-probs vLLM returned for its sampled tokens against the ones the
trainer recomputes for the same prompts and responses (scoring.response_logprobs), max and mean
|Δ logp|. Last, one sleep → weight sync → wake cycle of the engine is timed.

Without a CUDA GPU or the vllm extra it prints why, in one line, and exits 0.
"""

from __future__ import annotations

import argparse
import time

from sdar_bench.policy.vllm_backend import vllm_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    problem = vllm_problem()
    if problem is not None:
        print(f"vllm_rollout: not run: {problem}")
        return

    import torch
    from _common import RecordingBackend, quickstart_spec, warm_policy

    from sdar_bench.envs import make_env
    from sdar_bench.policy.backend import TransformersBackend
    from sdar_bench.policy.scoring import score_in_chunks
    from sdar_bench.policy.vllm_backend import VLLMBackend, logprob_gaps
    from sdar_bench.rollout import collect

    spec = quickstart_spec()
    options = spec.policy.model_copy(update={"rollout": "vllm", "device": "cuda"})
    spec = spec.model_copy(update={"policy": options})
    policy = warm_policy(spec)
    env = make_env(spec.env, **spec.env_params)
    tasks = env.train_tasks(0, 0, args.tasks)
    kwargs = dict(temperature=1.0, max_new_tokens=spec.train.max_new_tokens)

    def timed_rollout(backend) -> RecordingBackend:
        collect(policy, backend, env, tasks[:1], 1, seed=1, **kwargs)  # warm-up, not timed
        recording = RecordingBackend(backend)
        collect(policy, recording, env, tasks, args.group, seed=0, **kwargs)
        return recording

    hf = timed_rollout(TransformersBackend(policy.model, policy.pad_id, policy.eos_id))
    start = time.perf_counter()
    engine = VLLMBackend(policy)
    start_s = time.perf_counter() - start
    vl = timed_rollout(engine)

    with torch.no_grad():
        recomputed = score_in_chunks(policy.model, vl.prompts, vl.responses, policy.pad_id)
    gaps = logprob_gaps(vl.logprobs, recomputed)

    start = time.perf_counter()
    engine.sleep()
    engine.sync_weights()
    engine.generate(vl.prompts[:1], 1, 1.0, generator_seed=0)
    cycle_s = time.perf_counter() - start

    hf_rate, vl_rate = hf.tokens / hf.seconds, vl.tokens / vl.seconds
    print(f"device: {torch.cuda.get_device_name()}, {args.tasks} tasks x {args.group} copies")
    print(f"transformers: {hf_rate:.0f} tokens/s ({hf.tokens} tokens in {hf.seconds:.1f}s)")
    print(
        f"vllm:         {vl_rate:.0f} tokens/s ({vl.tokens} tokens in {vl.seconds:.1f}s; "
        f"engine start {start_s:.1f}s)"
    )
    print(f"ratio vllm/transformers = {vl_rate / hf_rate:.1f}x")
    print(
        f"agreement over {gaps.numel()} sampled tokens: max |Δ logp| = {gaps.max().item():.2e}, "
        f"mean = {gaps.mean().item():.2e}"
    )
    print(f"sleep + weight sync + wake: {cycle_s:.2f}s")


if __name__ == "__main__":
    main()
