"""What the harness knows about a model before loading it: where its weights are, its size.

``sdar-bench plan`` and the pre-flight check use this to say which weights are missing without
touching the network or loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdar_bench.policy.packaged import PACKAGED_MODELS, converted_dir, gguf_path
from sdar_bench.policy.tiny import TINY_MODELS

# Parameter counts of the paper's models (SPEC §7), for cost estimates before a download.
KNOWN_PARAMS: dict[str, float] = {
    "Qwen/Qwen2.5-3B-Instruct": 3.09e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.62e9,
    "Qwen/Qwen3-1.7B": 1.72e9,
}
GPU_PARAMS = 5e8
"""Above this many parameters a run is planned for a GPU: a CPU step would take hours."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    present: bool
    where: str  # a path, "built on first use", or what is missing
    params: float | None  # parameter count when known without loading
    how_to_get: str = ""

    @property
    def needs_gpu(self) -> bool:
        return self.params is not None and self.params > GPU_PARAMS


def tiny_params(name: str, vocab: int = 600) -> float:
    """Parameters of a tiny-family model (embedding tied; ``vocab`` ≈ the env word list)."""
    hidden, layers, heads, kv_heads, mlp = TINY_MODELS[name]
    head_dim = hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    return float(vocab * hidden + layers * (attention + 3 * hidden * mlp + 2 * hidden))


def model_info(name: str) -> ModelInfo:
    """Locate ``name``'s weights: tiny family, packaged GGUF model, a local directory or the
    Hugging Face cache."""
    if name in TINY_MODELS:
        return ModelInfo(name, True, "built locally on first use (seconds)", tiny_params(name))
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        source, converted = gguf_path(name), converted_dir(name)
        if source is None or converted is None:
            where = f"the {packaged.distribution} package is not installed"
            return ModelInfo(name, False, where, packaged.params, packaged.install)
        if (converted / "config.json").exists():
            return ModelInfo(name, True, str(converted), packaged.params)
        where = f"converted on first use from {source} (about a minute)"
        return ModelInfo(name, True, where, packaged.params)
    local = Path(name).expanduser()
    if local.is_dir():
        return ModelInfo(name, (local / "config.json").exists(), str(local), _count(local))
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:  # not a repo id either (e.g. a path that does not exist)
        return ModelInfo(
            name,
            False,
            "no such directory, and not a Hugging Face id",
            None,
            "give an existing local path or a Hugging Face id",
        )
    if isinstance(cached, str):
        folder = Path(cached).parent
        return ModelInfo(name, True, str(folder), _count(folder) or KNOWN_PARAMS.get(name))
    return ModelInfo(
        name,
        False,
        "not in the Hugging Face cache",
        KNOWN_PARAMS.get(name),
        f"hf download {name}",
    )


def _count(folder: Path) -> float | None:
    """Parameters from a config.json, the transformer formula (no weights loaded)."""
    config_file = folder / "config.json"
    if not config_file.exists():
        return None
    config = json.loads(config_file.read_text())
    try:
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        vocab, mlp = config["vocab_size"], config["intermediate_size"]
    except KeyError:
        return None
    heads = config.get("num_attention_heads", 1)
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    tied = config.get("tie_word_embeddings", False)
    embeddings = vocab * hidden * (1 if tied else 2)
    return float(embeddings + layers * (attention + 3 * hidden * mlp))
