"""Tiny models, tokenizer, prompt encoding and response scoring."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from sdar_bench.envs import make_env
from sdar_bench.policy import load_policy
from sdar_bench.policy.backend import TransformersBackend
from sdar_bench.policy.prompts import PromptEncoder
from sdar_bench.policy.scoring import pack, response_logprobs, score_in_chunks
from sdar_bench.policy.tiny import TINY_MODELS, tiny_corpus
from sdar_bench.policy.tokenizer import build_word_tokenizer, words_of
from sdar_bench.skills import SkillRetriever


def test_tiny_tokenizer_covers_every_engine_word(tiny_policy) -> None:
    tok = tiny_policy.tokenizer
    for word in {w for text in tiny_corpus("alfworld") for w in words_of(text)}:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert ids != [tok.unk_token_id], word
    # tags stay single tokens; decoding gives the words back, space-separated
    ids = tok(
        "<think> find it </think><action> go to cabinet 12 </action>", add_special_tokens=False
    )["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["<think>", "find"]
    assert tok.decode(ids) == "<think> find it </think> <action> go to cabinet 12 </action>"


def test_tiny_models_are_deterministic_and_sized(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SDAR_BENCH_CACHE", str(tmp_path / "a"))
    a = load_policy("tiny-qwen-1m", env="alfworld").model
    monkeypatch.setenv("SDAR_BENCH_CACHE", str(tmp_path / "b"))
    b = load_policy("tiny-qwen-1m", env="alfworld").model
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    n = sum(p.numel() for p in a.parameters())
    assert 0.5e6 < n < 1.5e6
    assert set(TINY_MODELS) >= {"tiny-qwen-1m", "tiny-qwen-5m", "tiny-qwen-20m"}


def test_pack_left_pads_prompts_and_masks_only_responses() -> None:
    ids, attention, mask = pack([[5, 6, 7], [8]], [[1], [2, 3]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 0], [0, 0, 8, 2, 3]]
    assert attention.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_batched_logprobs_equal_unpadded_single_sequences(tiny_policy) -> None:
    model, pad = tiny_policy.model, tiny_policy.pad_id
    prompts = [[10, 11, 12, 13, 14, 15], [20, 21], [30, 31, 32, 33]]
    responses = [[40, 41], [42, 43, 44, 45], [46]]
    with torch.no_grad():
        logp, entropy, mask = response_logprobs(model, prompts, responses, pad, with_entropy=True)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            logits = model(torch.tensor([p + r])).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            for t, token in enumerate(r):
                assert logp[i, t].item() == pytest.approx(
                    lp[len(p) - 1 + t, token].item(), abs=1e-5
                )
                h = -(lp[len(p) - 1 + t].exp() * lp[len(p) - 1 + t]).sum().item()
                assert entropy[i, t].item() == pytest.approx(h, abs=1e-5)
    assert mask.sum(1).tolist() == [2.0, 4.0, 1.0]
    assert logp[2, 1:].abs().sum().item() == 0.0  # padding holds exactly 0
    chunked = score_in_chunks(model, prompts, responses, pad, chunk=2)
    assert torch.allclose(chunked, logp, atol=1e-6)


def test_teacher_ids_differ_from_student_only_by_the_skill_block(tiny_policy) -> None:
    env = make_env("alfworld")
    task = env.task("eval", 0)
    game = env.new_game(task)
    prompt = env.render_prompt(task, [], game.reset(), 0)
    skill = SkillRetriever("alfworld").retrieve(task)
    enc = tiny_policy.encoder
    student, teacher = enc.encode(prompt), enc.encode(prompt, skill)
    block = enc.skill_ids(skill)
    assert teacher == block + student
    assert enc.add_skill(student, skill) == teacher
    assert tiny_policy.tokenizer.decode(block).startswith("[ privileged skill information ] #")


def test_chat_template_prefix_and_suffix_surround_the_skill_block() -> None:
    tok = build_word_tokenizer(
        ["user assistant : go to cabinet 1 skill text privileged information"]
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    enc = PromptEncoder(tok, max_prompt_tokens=64)
    student, teacher = enc.encode("go to cabinet 1"), enc.encode("go to cabinet 1", "skill text")
    prefix, suffix = enc.prefix, enc.suffix
    assert tok.convert_ids_to_tokens(prefix) == ["user", ":"]
    assert tok.convert_ids_to_tokens(suffix) == ["assistant", ":"]
    assert teacher[: len(prefix)] == student[: len(prefix)] == prefix
    skill = enc.skill_ids("skill text")
    assert teacher == prefix + skill + student[len(prefix) :]
    assert enc.add_skill(student, "skill text") == teacher


def test_truncation_cuts_the_oldest_prompt_text_never_the_skill_block(tiny_policy) -> None:
    enc = PromptEncoder(tiny_policy.tokenizer, max_prompt_tokens=4)
    student = enc.encode("go to cabinet 1 and open it")
    teacher = enc.encode("go to cabinet 1 and open it", "open it")
    assert tiny_policy.tokenizer.decode(student) == "1 and open it"
    assert teacher[-4:] == student and teacher[:-4] == enc.skill_ids("open it")


def test_generate_stops_at_eos_and_is_seeded(tiny_policy) -> None:
    backend = TransformersBackend(tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id)
    prompts = [[10, 11, 12], [13, 14]]
    a = backend.generate(prompts, 8, 1.0, generator_seed=3)
    b = backend.generate(prompts, 8, 1.0, generator_seed=3)
    greedy = backend.generate(prompts, 8, 0.0, generator_seed=99)
    assert a == b and greedy == backend.generate(prompts, 8, 0.0, generator_seed=5)
    for response in a + greedy:
        assert 1 <= len(response) <= 8
        assert tiny_policy.eos_id not in response[:-1]


def test_loader_reads_word_level_tokenizer_back(tiny_policy, tmp_path) -> None:
    tiny_policy.model.save_pretrained(tmp_path)
    tiny_policy.tokenizer.save_pretrained(tmp_path)
    again = load_policy(str(tmp_path))
    assert isinstance(again.tokenizer, PreTrainedTokenizerFast)
    text = "go to countertop 1"
    assert again.tokenizer(text)["input_ids"] == tiny_policy.tokenizer(text)["input_ids"]


def test_missing_weights_is_one_line_error() -> None:
    from sdar_bench.policy import ModelNotFound

    with pytest.raises(ModelNotFound, match="not on this machine") as info:
        load_policy("nobody/no-such-model-xyz")
    assert "\n" not in str(info.value)
