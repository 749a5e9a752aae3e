"""Policies: a causal LM, its tokenizer and prompt encoder, loaded by name or path."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from sdar_bench.policy.prompts import PromptEncoder
from sdar_bench.policy.tiny import TINY_MODELS, tiny_model_dir


class ModelNotFound(ValueError):
    """Weights that are not on this machine; the message says how to get them."""


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    encoder: PromptEncoder

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def frozen_copy(self) -> PreTrainedModel:
        """A no-grad copy of the current weights (reference policy, frozen or EMA teacher)."""
        ref = copy.deepcopy(self.model)
        ref.requires_grad_(False)
        ref.eval()
        return ref


def resolve_model_path(name: str, env: str | None = None) -> Path | str:
    """A tiny-family name (built for ``env``), a local directory, or a cached Hugging Face id."""
    if name in TINY_MODELS:
        if env is None:
            raise ValueError(f"tiny model {name!r} has a per-env vocabulary: name the env")
        return tiny_model_dir(name, env)
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
    dtype: torch.dtype = torch.float32,
    env: str | None = None,
) -> Policy:
    path = resolve_model_path(name, env)
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as exc:
        raise ModelNotFound(
            f"model {name!r} is not on this machine: download it once with "
            f"`huggingface-cli download {name}` or give a local path ({type(exc).__name__})"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Policy(model, tokenizer, PromptEncoder(tokenizer, max_prompt_tokens))
