"""A policy: a causal LM, its tokenizer and prompt encoder, loaded by name or path.

Names: the tiny family (``tiny-qwen-*``, built per env), packaged GGUF models
(``smollm2-135m``), a local checkpoint directory, or a Hugging Face id already in the local
cache. Nothing is ever downloaded: a missing model is a ``ModelNotFound`` whose one-line
message says how to get it.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from sdar_bench.policy.errors import ModelNotFound
from sdar_bench.policy.options import LoraOptions, PolicyOptions, VLLMOptions
from sdar_bench.policy.packaged import PACKAGED_MODELS, packaged_model_dir
from sdar_bench.policy.prompts import PromptEncoder
from sdar_bench.policy.tiny import TINY_MODELS, tiny_model_dir

__all__ = [
    "AdapterFreeView",
    "LoraOptions",
    "ModelNotFound",
    "Policy",
    "PolicyOptions",
    "VLLMOptions",
    "load_policy",
    "load_tokenizer",
    "prepare_model",
    "resolve_model_path",
]


class AdapterFreeView(torch.nn.Module):
    """The base model under a LoRA policy, adapters switched off: the initial policy.

    LoRA starts with B = 0 and the base weights never train, so the base *is* the initial
    policy — a reference model (or frozen teacher) for free instead of a second copy of 7B
    weights. The policy is held outside ``_modules`` on purpose: its parameters belong to
    the policy, and a state dict or ``parameters()`` of this view must not list them again.
    """

    def __init__(self, peft_model: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_peft", peft_model)

    @property
    def device(self) -> torch.device:
        return self._peft.device

    @property
    def config(self) -> Any:
        return self._peft.config

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self._peft, "is_gradient_checkpointing", False))

    def get_decoder(self) -> Any:
        """The decoder (its layers), for scoring passes that skip the last layer's work."""
        return self._peft.get_decoder()

    def set_attn_implementation(self, name: str) -> None:
        self._peft.set_attn_implementation(name)

    def forward(self, **kwargs: Any) -> Any:
        with self._peft.disable_adapter():
            return self._peft(**kwargs)


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    encoder: PromptEncoder
    options: PolicyOptions = field(default_factory=PolicyOptions)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def uses_lora(self) -> bool:
        return self.options.lora is not None

    def frozen_copy(self) -> PreTrainedModel:
        """A no-grad copy of the current weights (reference policy, frozen or EMA teacher).

        Works for a LoRA policy too (a deep copy of base and adapters); ``reference_model``
        avoids the copy where the initial weights are all that is needed.
        """
        ref = copy.deepcopy(self.model)
        ref.requires_grad_(False)
        ref.eval()
        return ref

    def reference_model(self) -> torch.nn.Module:
        """The initial policy for the KL term: the adapter-free base under LoRA (no extra
        memory), a frozen copy otherwise. Call it before the first update."""
        if self.uses_lora:
            return AdapterFreeView(self.model)
        return self.frozen_copy()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser should own: the adapters under LoRA, every weight otherwise."""
        return [p for p in self.model.parameters() if p.requires_grad]


def resolve_model_path(name: str, env: str | None = None) -> Path | str:
    """A tiny-family name (built for ``env``), a packaged model (converted once), a local
    directory, or a Hugging Face id (looked up in the local cache only)."""
    if name in TINY_MODELS:
        if env is None:
            raise ValueError(f"tiny model {name!r} has a per-env vocabulary: name the env")
        return tiny_model_dir(name, env)
    if name in PACKAGED_MODELS:
        return packaged_model_dir(name)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    return name


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model.

    A tokenizer saved as a plain `tokenizers` object (the tiny family's word-level one) must be
    loaded as such: ``AutoTokenizer`` would rebuild the model family's own BPE tokenizer from
    the config's ``model_type`` and silently map every word to the wrong id.
    """
    config_file = Path(path) / "tokenizer_config.json"
    if config_file.is_file():
        saved_class = json.loads(config_file.read_text()).get("tokenizer_class")
        if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_policy(
    name: str,
    max_prompt_tokens: int = 2048,
    dtype: torch.dtype | None = None,
    env: str | None = None,
    options: PolicyOptions | None = None,
) -> Policy:
    """Load ``name`` with ``options`` (default: float32 on the CPU, full fine-tuning).

    ``dtype``, when given, overrides ``options.dtype``.
    """
    options = options or PolicyOptions()
    device = options.resolved_device()
    dtype = dtype or options.resolved_dtype()
    path = resolve_model_path(name, env)
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as exc:
        raise ModelNotFound(
            f"model {name!r} is not on this machine: download it once with "
            f"`hf download {name}` or give a local path ({type(exc).__name__})"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if options.lora is None and dtype != torch.float32:
        warnings.warn(
            f"{name}: full fine-tuning with {dtype} weights; AdamW updates smaller than "
            "~1e-3 of a weight round away (use lora, or float32 weights)",
            stacklevel=2,
        )
    model = prepare_model(model, options, device)
    encoder = PromptEncoder(tokenizer, max_prompt_tokens, system=options.system_prompt)
    return Policy(model, tokenizer, encoder, options)


def prepare_model(
    model: PreTrainedModel, options: PolicyOptions, device: torch.device | None = None
) -> PreTrainedModel:
    """Move ``model`` to its device and apply gradient checkpointing and LoRA (the dtype is
    chosen at load time). Separate from ``load_policy`` so a model built from a config alone
    (a memory check of a 7B shape, say) gets exactly the same treatment."""
    model.to(device or options.resolved_device())
    if options.gradient_checkpointing:
        # Non-reentrant checkpointing: gradients reach LoRA adapters without forcing the
        # embedding output to require grad, and it composes with no_grad scoring passes.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if options.lora is not None:
        model = _with_lora(model, options.lora)
    return model


def _with_lora(model: PreTrainedModel, lora: LoraOptions) -> PreTrainedModel:
    """Wrap ``model`` in peft LoRA adapters: base weights frozen, adapters trainable (float32)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=(
            lora.target_modules
            if isinstance(lora.target_modules, str)
            else list(lora.target_modules)
        ),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype keeps the adapters in float32 over a bf16 base, so small
    # updates are not rounded away.
    return get_peft_model(model, config, autocast_adapter_dtype=True)  # type: ignore[return-value]
