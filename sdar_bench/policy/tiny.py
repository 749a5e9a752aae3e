"""The built-in tiny model family: Qwen2 configs small enough to train on two CPU cores.

A tiny model is built from its config with a fixed seed, so the same name gives the same initial
weights on every machine; its word-level tokenizer covers every word the offline engines and
skill banks can emit. Both are saved under the cache and re-loaded with ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from sdar_bench.paths import cache_dir

# name → (hidden, layers, heads, kv heads, MLP width). Parameter counts include the tied embedding.
TINY_MODELS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny-qwen-1m": (128, 4, 4, 2, 384),
    "tiny-qwen-5m": (256, 6, 4, 2, 768),
    "tiny-qwen-20m": (512, 6, 8, 4, 1536),
}


def tiny_corpus(env: str) -> list[str]:
    """Every text the tiny tokenizer for ``env`` must cover: the engine's words and skill bank
    (for a multitask mix ``a+b``, every member's: one vocabulary for the one policy)."""
    from sdar_bench.envs import ENVS
    from sdar_bench.envs.parsing import INVALID_ACTION_TEXT
    from sdar_bench.skills import SKILL_HEADER, skill_bank

    if "+" in env:  # a multitask mix: the union of its members' corpora, in member order
        out: list[str] = []
        for member in env.split("+"):
            out += [text for text in tiny_corpus(member) if text not in out]
        return out
    words = " ".join(ENVS[env]().vocabulary())
    return [words, *skill_bank(env).values(), SKILL_HEADER, INVALID_ACTION_TEXT]


def tiny_model_dirname(name: str, env: str, corpus: list[str] | None = None) -> str:
    """The folder name of a tiny model: its content hash, known without building it."""
    corpus = tiny_corpus(env) if corpus is None else corpus
    key = hashlib.sha256(json.dumps([name, TINY_MODELS[name], corpus]).encode()).hexdigest()[:12]
    return f"{name}-{env}-{key}"


def tiny_model_dir(name: str, env: str) -> Path:
    """Build (once) and return the directory holding the tiny model ``name`` for ``env``.

    Each env gets its own word-level vocabulary, so adding or editing one engine never changes
    another env's tiny models (or invalidates their warm-start checkpoints).
    """
    hidden, layers, heads, kv_heads, mlp = TINY_MODELS[name]
    corpus = tiny_corpus(env)
    path = cache_dir() / "models" / tiny_model_dirname(name, env, corpus)
    if (path / "config.json").exists():
        return path

    # transformers only here: naming a tiny model (plan, the warm start's key) builds nothing
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sdar_bench.policy.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(corpus)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=mlp,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,  # the word-level tokenizer has no BOS; prompts start with their first word
    )
    # The initial weights are a function of the name alone: seed the generator, not the process.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(path)  # atomic: a concurrent builder never sees a half-written model
    except OSError:  # another process built the same model first; it is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return path
