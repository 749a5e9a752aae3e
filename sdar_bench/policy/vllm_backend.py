"""The vLLM rollout backend (``policy: {rollout: vllm}``): sampling on a CUDA GPU that the
trainer shares.

vLLM's offline ``LLM`` engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``
unless the environment says otherwise), on the trainer's GPU, with its own copy of the weights.
One training step, as the trainer drives it:

    rollout       generate()       wake the KV cache if it sleeps; sample; keep vLLM's log-probs
    training      sleep()          release weights and KV cache (sleep level 2) for scoring and
                                   the update
    after update  sync_weights()   wake the weight memory; load the trainer's current weights
                                   (LoRA adapters merged in); drop prefix-cache entries

Only vLLM's public API is used, as documented for the pinned range (pyproject: vllm >=0.22,
<0.32, the versions TRL 1.16 supports):

* ``LLM.generate`` with token-id prompts (``{"prompt_token_ids": ids}``, a ``TokensPrompt``)
  and one ``SamplingParams`` per prompt: ``logprobs=0`` returns the sampled token's log-prob,
  ``top_k=0`` and ``top_p=1`` leave the distribution whole, a per-request ``seed`` makes a
  rollout a function of (weights, prompts, seed) as with the transformers backend.
* Sleep mode (docs/features/sleep_mode.md): ``enable_sleep_mode=True``, ``sleep(level=2)``,
  then ``wake_up(tags=["weights"])`` before the weights are loaded and
  ``wake_up(tags=["kv_cache"])`` after, which is the sequence the docs give for RLHF weight
  updates (waking the KV cache last keeps the peak memory low).
* Weight updates through ``LLM.collective_rpc`` and a ``worker_extension_cls`` whose method calls
  the model's ``load_weights``, the pattern of vLLM's RLHF examples. With the engine in this
  process the tensors are handed over by reference, no copy through another process.

The engine's log-probs are of the raw logits (``logprobs_mode="raw_logprobs"``), the quantity
the trainer recomputes (scoring.response_logprobs): their agreement is what
benchmarks/vllm_rollout.py measures.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from sdar_bench import distributed
from sdar_bench.policy.errors import RolloutUnavailable

if TYPE_CHECKING:
    from sdar_bench.policy import Policy

# Weights go to the engine in chunks of about this many bytes: a LoRA policy's merged weights
# exist only one chunk at a time.
PUSH_BYTES = 1 << 30
ENGINE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def vllm_installed() -> bool:
    if sys.modules.get("vllm") is not None:
        return True
    return importlib.util.find_spec("vllm") is not None


def vllm_problem(cuda: bool | None = None) -> str | None:
    """Why ``rollout: vllm`` cannot run on this machine, in one line; None when it can.

    ``cuda``: whether a CUDA GPU is visible (None: look).
    """
    if not vllm_installed():
        return (
            "policy.rollout: vllm needs the vllm extra, which is not installed: "
            "`pip install sdar-bench[vllm]` on a machine with a CUDA GPU, "
            "or use rollout: transformers"
        )
    if not (cuda_available() if cuda is None else cuda):
        return (
            "policy.rollout: vllm needs a CUDA GPU and none is visible; "
            "use rollout: transformers on this machine"
        )
    return None


def trainer_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The trainer's current weights under the plain model's names, as the engine loads them.

    A LoRA (peft) model gives its base weights with the adapters merged in, ``W + ΔW`` with
    peft's own ``get_delta_weight``, computed out of place: the trainer's modules are untouched
    and the engine serves exactly the policy that is trained.
    """
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapted = {
        name: module
        for name, module in base.named_modules()
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")
    }
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        owner, _, leaf = key.rpartition(".")
        layer = adapted.get(owner)
        if leaf == "weight" and layer is not None and not getattr(layer, "merged", False):
            delta = sum(
                layer.get_delta_weight(a).float()
                for a in layer.active_adapters
                if a in layer.lora_A
            )
            value = (value.float() + delta).to(value.dtype)
        yield key, value


def logprob_gaps(engine: Sequence[Sequence[float]], trainer: torch.Tensor) -> torch.Tensor:
    """``|engine − trainer|`` for every response token, flattened: the engine's log-probs
    (``last_logprobs``) against the trainer's recomputed ``logp`` [B, R] of the same responses."""
    rows = [
        (torch.tensor(row, dtype=torch.float32) - trainer[i, : len(row)].float().cpu()).abs()
        for i, row in enumerate(engine)
    ]
    return torch.cat(rows) if rows else torch.zeros(0)


def _chunks(
    weights: Iterable[tuple[str, torch.Tensor]], limit: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        chunk.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class WeightLoader:
    """Mixed into vLLM's GPU worker by ``worker_extension_cls``; called by ``collective_rpc``.

    ``model_runner.model.load_weights`` takes (name, tensor) pairs under Hugging Face names and
    maps them onto vLLM's fused layers (q/k/v, gate/up), as in vLLM's RLHF examples.
    """

    def sdar_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]
        return len(weights)


class VLLMBackend:
    """Rollouts from a vLLM engine that follows the trainer's weights (see the module doc).

    ``last_logprobs``: the engine's log-prob of every sampled token of the last ``generate``
    call, one list per prompt, aligned with the returned ids.
    """

    def __init__(self, policy: Policy) -> None:
        problem = vllm_problem()
        if problem is not None:
            raise RolloutUnavailable(problem)
        # vLLM's public entry points; imported here so that the extra stays optional.
        from vllm import LLM, SamplingParams

        self.model, self.eos_id = policy.model, policy.eos_id
        self.options = policy.options.vllm
        self._sampling_params = SamplingParams
        base = policy.model.get_base_model() if policy.uses_lora else policy.model
        dtype = ENGINE_DTYPES.get(base.dtype)
        if dtype is None:
            raise RolloutUnavailable(f"policy.rollout: vllm cannot serve {base.dtype} weights")
        # The engine core in this process: collective_rpc then hands the trainer's tensors to
        # the worker by reference. Set it in the environment to run the engine apart instead.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        ranks = {}
        if distributed.active():
            # One engine per rank, on the rank's own GPU (LOCAL_RANK): vLLM's external-launcher
            # mode takes the torch.distributed environment instead of starting workers, as
            # TRL's colocated GRPO runs it (tensor parallel 1: each rank its own engine, fed
            # its own share). Not yet run on GPUs by the project.
            ranks = {"distributed_executor_backend": "external_launcher"}
        self.llm = LLM(
            model=str(base.name_or_path),  # a LoRA policy's base; the adapters arrive merged
            dtype=dtype,  # the trainer's precision, so the two compute the same log-probs
            gpu_memory_utilization=self.options.gpu_memory_utilization,
            enable_sleep_mode=self.options.sleep,
            enforce_eager=self.options.enforce_eager,
            # Prompts arrive as ids and responses leave as ids: the engine never needs the
            # tokenizer (the tiny models' word-level one is not one vLLM could load).
            skip_tokenizer_init=True,
            logprobs_mode="raw_logprobs",
            worker_extension_cls=f"{__name__}.WeightLoader",
            **ranks,
        )
        self.last_logprobs: list[list[float]] = []
        self._weights_asleep = self._kv_asleep = False
        self._prefix_cache_stale = False
        # The engine loaded the checkpoint from disk; the trainer's weights are what count.
        self.sync_weights()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
        row_seeds: Sequence[int] | None = None,
    ) -> list[list[int]]:
        self._wake()
        if row_seeds is None:
            # Distinct per prompt: the G copies of a task's first turn must not sample alike.
            seeds = [(generator_seed * 1_000_003 + i) % 2**31 for i in range(len(prompts))]
        else:  # sampling: per_sample; vLLM gives every seeded request its own generator
            seeds = [s % 2**31 for s in row_seeds]
        params = [
            self._sampling_params(
                n=1,
                temperature=temperature,  # 0: greedy
                top_p=1.0,
                top_k=0,  # 0 (or -1) keeps every token in the pinned versions
                max_tokens=max_new_tokens,
                seed=seeds[i],
                logprobs=0,  # only the sampled token's log-prob
                stop_token_ids=[self.eos_id],  # no tokenizer to take EOS from; kept in the ids
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False
        )
        responses: list[list[int]] = []
        self.last_logprobs = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            responses.append(ids)
            self.last_logprobs.append(
                [float(step[t].logprob) for step, t in zip(sample.logprobs, ids, strict=True)]
            )
        return responses

    def sleep(self) -> None:
        """Release weights and KV cache until the next sync / generate (when ``sleep`` is on)."""
        if not self.options.sleep or self._kv_asleep:
            return
        self.llm.sleep(level=2)  # level 2 drops the weights: the next sync reloads all of them
        self._weights_asleep = self._kv_asleep = True

    def sync_weights(self) -> None:
        """Load the trainer's current weights into the engine (every tensor, LoRA merged)."""
        if self._weights_asleep:
            _free_cached_memory()
            self.llm.wake_up(tags=["weights"])
            self._weights_asleep = False
        for chunk in _chunks(trainer_weights(self.model), PUSH_BYTES):
            self.llm.collective_rpc("sdar_load_weights", args=(chunk,))
        self._prefix_cache_stale = True  # cached prompt KV was computed with the old weights

    def _wake(self) -> None:
        if self._weights_asleep:  # slept without a sync since (every update was skipped)
            self.sync_weights()
        if self._kv_asleep:
            _free_cached_memory()
            self.llm.wake_up(tags=["kv_cache"])
            self._kv_asleep = False
        if self._prefix_cache_stale:
            self.llm.reset_prefix_cache()
            self._prefix_cache_stale = False


def _free_cached_memory() -> None:
    """Hand the trainer's cached-but-free blocks back to the driver before vLLM reallocates."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
