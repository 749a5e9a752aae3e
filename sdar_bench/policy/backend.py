"""Rollout backends: turn a batch of prompt ids into sampled response ids.

The trainer needs only ``generate``; the transformers backend is the default and the CPU path,
and a vLLM backend can take its place on a GPU by implementing the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedModel

from sdar_bench.policy.scoring import distinct_rows, shared_prompt_cache


class RolloutBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
    ) -> list[list[int]]:
        """One sampled response per prompt, ending with EOS when the model emitted it."""
        ...

    def sync_weights(self) -> None:
        """Make the next ``generate`` use the trainer's current weights."""
        ...


class TransformersBackend:
    """Batched ``model.generate`` with left padding, chunked to bound memory."""

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int, chunk: int = 256):
        self.model, self.pad_id, self.eos_id, self.chunk = model, pad_id, eos_id, chunk

    def sync_weights(self) -> None:  # the model *is* the trainer's model
        return None

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        generator_seed: int,
    ) -> list[list[int]]:
        # transformers samples with the global RNG; seeding it per call makes a rollout a function
        # of (weights, prompts, seed) rather than of everything that ran before.
        torch.manual_seed(generator_seed)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0
            if temperature > 0
            else None,  # true temperature sampling, as the paper's rollouts
            top_p=1.0 if temperature > 0 else None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        was_training = self.model.training
        self.model.eval()
        out: list[list[int]] = []
        for start in range(0, len(prompts), self.chunk):
            out.extend(self._generate_chunk(prompts[start : start + self.chunk], config))
        self.model.train(was_training)
        return out

    def _generate_chunk(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig
    ) -> list[list[int]]:
        P = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):
            input_ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, P - len(p) :] = 1
        device = self.model.device
        owners, inverse = distinct_rows(prompts)
        extra = {}
        if len(owners) < len(prompts) and P > 1:
            # Copies of one prompt (a task's G first turns) are prefilled once: the cache holds
            # every prompt but its last token, and generate() runs from there.
            shared = shared_prompt_cache(
                self.model, input_ids[owners, :-1], attention[owners, :-1], inverse
            )
            if shared is not None:
                extra["past_key_values"] = shared[0]
        sequences = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
            **extra,
        )
        responses = []
        for row in sequences[:, P:].tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id) + 1]
            responses.append(row)
        return responses
