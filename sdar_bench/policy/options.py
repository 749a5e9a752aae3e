"""How a policy is loaded: precision, device and the memory features that let a 7B model train
on one 80 GB GPU (gradient checkpointing, LoRA), and which engine samples its rollouts.

The defaults keep every CPU result bit-for-bit what it was: float32 on the CPU, full fine-tuning,
no checkpointing.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

# The projection layers of Llama/Qwen2/Qwen3 blocks (attention and MLP): LoRA's usual targets.
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Strict(BaseModel):
    # Frozen and closed like the run specs (config.py): a typo is an error, and an options
    # object can be part of a hashed run spec.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoraOptions(_Strict):
    """Low-rank adapters (peft ``LoraConfig``); only the adapters train, the base stays frozen."""

    r: int = Field(16, ge=1)
    """Adapter rank."""
    alpha: int = Field(32, ge=1)
    """Scale numerator: the adapter's output is multiplied by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input. 0 by default: with dropout the update's forward pass
    would not reproduce the rollout's log-probs, and the trainer's one-epoch path takes
    ``old = sg(logp)`` from that pass."""
    target_modules: tuple[str, ...] | Literal["all-linear"] = LLAMA_LINEAR_LAYERS
    """Module names that get adapters, or peft's ``all-linear`` (every linear layer but the
    output head)."""


class VLLMOptions(_Strict):
    """The vLLM rollout engine (``rollout: vllm``). It runs in the trainer's process, on the
    trainer's GPU, and gets the trainer's weights after every training step."""

    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """Share of the GPU's total memory the engine may take for its copy of the weights and its
    KV cache. Low by default because the trainer (weights, optimiser moments, activations)
    needs the rest; vLLM refuses to start when this share is more than is free at that time."""
    sleep: bool = True
    """Release the engine's memory while the trainer scores and updates (vLLM sleep mode,
    level 2: weights and KV cache both dropped). The weights come back with the sync after the
    update, the KV cache at the next rollout. Off: the engine keeps its share all the time
    (faster switches, less memory for training)."""
    enforce_eager: bool = False
    """Run the engine without CUDA graphs: slower decoding, but a faster start and no graph
    memory (worth it for short runs and tiny models)."""


class PolicyOptions(_Strict):
    """Precision, device and memory features of a loaded policy."""

    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight precision. ``auto``: float32 on the CPU; on a GPU bfloat16 when LoRA is on (the
    frozen base in bf16, the adapters in float32) and float32 for full fine-tuning, because
    AdamW on bf16 weights rounds updates of lr 1e-6 away entirely (bf16 keeps ~3 significant
    digits). Name ``bfloat16`` to force it anyway (inference, or with your own master weights)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: the first CUDA device when there is one, else the CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: ~30% more compute, activation memory from
    O(layers × tokens) to about one layer's worth."""
    lora: LoraOptions | None = None
    """Train low-rank adapters instead of every weight (the memory option for 7B models)."""
    system_prompt: str | None = None
    """The system turn of chat-template models; None keeps the template's own default."""
    rollout: Literal["transformers", "vllm"] = "transformers"
    """Which engine samples rollouts. ``transformers``: ``model.generate`` on the trainer's own
    model (the default, and the CPU path). ``vllm``: a vLLM engine on a CUDA GPU, needs
    ``pip install sdar-bench[vllm]`` (policy/vllm_backend.py; not yet run on a GPU by the
    project)."""
    vllm: VLLMOptions = VLLMOptions()
    """Settings of the vLLM engine; read only when ``rollout`` is ``vllm``."""
    generation: Literal["dynamic", "static"] = Field(
        "dynamic", exclude_if=lambda value: value == "dynamic"
    )
    """KV cache of the transformers rollout backend. ``dynamic``: transformers' growing cache,
    copies of one prompt prefilled once (the default, and the CPU path). ``static``: a
    preallocated cache of fixed batch and length buckets; on a CUDA device ``generate`` then
    compiles the decoding step with ``torch.compile`` (mode ``reduce-overhead``: CUDA graphs),
    which removes the per-token launch overhead that bounds tiny models on a GPU. Same sampled
    tokens as ``dynamic`` for a seed when the batch is a bucket size (tested on the CPU, where
    nothing is compiled; filler rows change the random draws, not the distribution). Left out
    of the run id at its default, so existing runs keep their ids."""

    sampling: Literal["batch", "per_sample"] = Field(
        "batch", exclude_if=lambda value: value == "batch"
    )
    """Where a rollout's random draws come from. ``batch``: one stream per ``generate`` call,
    seeded from (run seed, step, turn), so a row's tokens depend on the whole batch it was
    sampled in (the default; every result before the option existed). ``per_sample``: each
    (task, copy, turn) draws from its own stream, seeded from (run seed, step, task index,
    copy, turn), by Gumbel-max sampling (exactly softmax(logits / T), tested); a row's tokens
    then do not depend on which other rows share its batch or its process, which is what
    ``--nproc N > 1`` needs to sample what one process samples. Left out of the run id at its
    default, so existing runs keep their ids."""
    fsdp: bool = Field(False, exclude_if=lambda value: value is False)
    """With ``--nproc N > 1``: shard the optimiser state and the gradients over the ranks with
    FSDP2 (``torch.distributed.fsdp.fully_shard`` on every decoder layer and the root) instead
    of keeping a full copy on every rank (data parallel, the default). Parameters are gathered
    whole for the step's rollout, scoring and update (README, "Scale"). Ignored by one
    process. Left out of the run id when off."""

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "float32":
            return torch.float32
        if self.dtype == "bfloat16":
            return torch.bfloat16
        on_gpu = self.resolved_device().type == "cuda"
        return torch.bfloat16 if on_gpu and self.lora is not None else torch.float32
