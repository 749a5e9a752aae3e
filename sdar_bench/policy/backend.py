"""Rollout backends: turn a batch of prompt ids into sampled response ids.

The trainer calls ``generate`` during rollouts, ``sleep`` when a rollout is over and training
begins, and ``sync_weights`` after the step's updates. The transformers backend is the default
and the CPU path: it samples from the trainer's own model, so the other two are no-ops. The
vLLM backend (``policy: {rollout: vllm}``, vllm_backend.py) holds its own copy of the weights
on the GPU and needs both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import (
    CompileConfig,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)

from sdar_bench.policy.padding import left_padded
from sdar_bench.policy.scoring import distinct_rows, shared_prompt_cache

if TYPE_CHECKING:
    from sdar_bench.policy import Policy


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
        row_seeds: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """One sampled response per prompt, ending with EOS when the model emitted it.

        ``row_seeds`` (``sampling: per_sample``): one seed per prompt; row i's tokens are then a
        function of (weights, prompt i, row_seeds[i]) alone. None: one stream for the call,
        seeded with ``generator_seed``.
        """
        ...

    def sync_weights(self) -> None:
        """Make the next ``generate`` use the trainer's current weights."""
        ...

    def sleep(self) -> None:
        """Free the backend's accelerator memory for training until the next ``generate``."""
        ...


def make_backend(policy: Policy) -> RolloutBackend:
    """The rollout backend ``policy.options.rollout`` names, sampling from ``policy``."""
    if policy.options.rollout == "vllm":
        from sdar_bench.policy.vllm_backend import VLLMBackend

        return VLLMBackend(policy)
    return TransformersBackend(
        policy.model, policy.pad_id, policy.eos_id, generation=policy.options.generation
    )


def stream_seed(*keys: int) -> int:
    """A 63-bit seed for the random stream named by ``keys`` (e.g. run seed and step, task
    index, copy, turn). A hash, not arithmetic on the keys: nearby keys give unrelated streams,
    and no two key tuples of a run collide in practice."""
    digest = hashlib.blake2b(repr(tuple(keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def gumbel_noise(size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` i.i.d. standard Gumbel draws [size] in float64 from ``generator``'s device.

    float64 uniforms (53 bits): the extreme draws that a 24-bit uniform would clip change the
    odds of very unlikely tokens; clamping at the smallest positive double avoids log(0).
    """
    u = torch.rand(size, generator=generator, dtype=torch.float64, device=generator.device)
    return -torch.log(-torch.log(u.clamp_(min=torch.finfo(torch.float64).tiny)))


class PerRowSampler(LogitsProcessor):
    """Sampling from softmax(scores / T) with one random stream per row (Gumbel-max).

    argmax(scores / T + g), g i.i.d. standard Gumbel, is distributed exactly as
    softmax(scores / T) (the Gumbel-max trick). Row i's noise comes from its own generator,
    seeded with ``seeds[i]``, so its tokens do not depend on the other rows of the batch (nor
    on how many there are). The processor makes the choice itself and returns scores whose
    only finite entry is the chosen token, for ``generate`` to run in greedy mode.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, device: torch.device) -> None:
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        V = scores.shape[-1]
        noise = torch.stack([gumbel_noise(V, g) for g in self.generators])  # [B, V] float64
        choice = (scores.double() / self.temperature + noise).argmax(-1)  # [B]
        out = torch.full_like(scores, -math.inf)  # [B, V]
        return out.scatter_(1, choice[:, None], 0.0)  # type: ignore[return-value]


def bucket(n: int, step: int) -> int:
    """``n`` rounded up to a power of two below ``step``, else to a multiple of ``step``: few
    distinct shapes, so a compiled decoding step is captured a few times and then reused."""
    if n <= step:
        return 1 << max(n - 1, 0).bit_length()
    return -(-n // step) * step


class TransformersBackend:
    """Batched ``model.generate`` with left padding, chunked to bound memory.

    ``generation="static"``: a static KV cache whose batch and length are rounded up to
    buckets (``bucket``), compiled with CUDA graphs on a CUDA device (PolicyOptions.generation).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int,
        eos_id: int,
        chunk: int = 256,
        generation: str = "dynamic",
    ):
        self.model, self.pad_id, self.eos_id, self.chunk = model, pad_id, eos_id, chunk
        self.generation = generation

    def sync_weights(self) -> None:  # the model *is* the trainer's model
        return None

    def sleep(self) -> None:  # nothing of its own to free
        return None

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
        row_seeds: Sequence[int] | None = None,
    ) -> list[list[int]]:
        # transformers samples with the global RNG; seeding it per call makes a rollout a function
        # of (weights, prompts, seed) rather than of everything that ran before.
        torch.manual_seed(generator_seed)
        per_row = row_seeds is not None and temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            # per row: PerRowSampler draws the token and greedy decoding takes it
            do_sample=temperature > 0 and not per_row,
            temperature=temperature if temperature > 0 and not per_row else None,
            top_k=0
            if temperature > 0 and not per_row
            else None,  # true temperature sampling, as the paper's rollouts
            top_p=1.0 if temperature > 0 and not per_row else None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        if self.generation == "static":
            config.cache_implementation = "static"
            if self.model.device.type == "cuda":
                # transformers compiles the decoding step itself for a static cache on CUDA;
                # dynamic=False keeps one graph per (batch, cache length) bucket.
                config.compile_config = CompileConfig(dynamic=False, mode="reduce-overhead")
        was_training = self.model.training
        self.model.eval()
        out: list[list[int]] = []
        for start in range(0, len(prompts), self.chunk):
            seeds = row_seeds[start : start + self.chunk] if per_row and row_seeds else None
            sampler = (
                PerRowSampler(seeds, temperature, self.model.device) if seeds is not None else None
            )
            out.extend(self._generate_chunk(prompts[start : start + self.chunk], config, sampler))
        self.model.train(was_training)
        return out

    def _generate_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        sampler: PerRowSampler | None = None,
    ) -> list[list[int]]:
        n = len(prompts)
        if self.generation == "static":
            # Fixed shapes for the compiled step: the batch is filled up with copies of its
            # last prompt (sampled after the real rows, then dropped) and the cache length is
            # rounded up to a multiple of 64.
            prompts = [*prompts, *[prompts[-1]] * (bucket(n, 64) - n)]
            if sampler is not None:  # filler rows draw from copies of the last row's stream
                sampler.generators += [
                    torch.Generator(device=self.model.device).set_state(
                        sampler.generators[-1].get_state()
                    )
                    for _ in range(len(prompts) - n)
                ]
            longest = max(len(p) for p in prompts) + (config.max_new_tokens or 0)
            config.max_cache_len = bucket(longest, 64)
        input_ids, attention = left_padded(prompts, self.pad_id)  # [B, P] each
        P = input_ids.shape[1]
        device = self.model.device
        owners, inverse = distinct_rows(prompts)
        extra = {}
        if len(owners) < len(prompts) and P > 1 and self.generation != "static":
            # Copies of one prompt (a task's G first turns) are prefilled once: the cache holds
            # every prompt but its last token, and generate() runs from there. Not with the
            # static cache, which generate() allocates itself.
            shared = shared_prompt_cache(
                self.model, input_ids[owners, :-1], attention[owners, :-1], inverse
            )
            if shared is not None:
                extra["past_key_values"] = shared[0]
        sequences = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]) if sampler is not None else None,
            **extra,
        )
        responses = []
        for row in sequences[:n, P:].tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id) + 1]
            responses.append(row)
        return responses
