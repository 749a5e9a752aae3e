"""Fast paths of scoring and generation give the numbers of the plain paths.

The teacher's shared-prefix scoring must give the log-probs and top-k of one plain forward pass
per row (within 1e-5 in fp32); the static-cache generation must sample the same tokens as the
default dynamic cache for the same seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdar_bench.envs import make_env
from sdar_bench.policy import last_layer, scoring
from sdar_bench.policy.backend import TransformersBackend
from sdar_bench.policy.prefixes import like_widths, plan_prefixes, prefix_order
from sdar_bench.policy.scoring import score_responses, score_topk_in_chunks
from sdar_bench.rollout import collect
from sdar_bench.skills import SkillRetriever
from sdar_bench.trainer import build_batch


@pytest.fixture(scope="module")
def teacher_batch(tiny_policy):
    """A real teacher batch: 2 tasks × 3 copies × 3 turns of ALFWorld with the skill block."""
    env = make_env("alfworld", max_turns=3, history_length=2)
    backend = TransformersBackend(tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id)
    episodes = collect(
        tiny_policy, backend, env, env.panel(2), 3, temperature=1.0, max_new_tokens=8, seed=3
    )
    skills = SkillRetriever("alfworld", "keyword", 0)
    return build_batch(episodes, env, tiny_policy, skills)


def _one_row_at_a_time(model, prompts, responses, pad, temperature=1.0, topk=None):
    """The reference: each (prompt, response) alone, no padding, no cache."""
    R = max(len(r) for r in responses)
    logp, top = [], []
    for p, r in zip(prompts, responses, strict=True):
        s = score_responses(model, [p], [r], pad, topk=topk, temperature=temperature)
        logp.append(F.pad(s.logp[0], (0, R - s.logp.shape[1])))  # [R]
        if topk is not None:
            top.append(F.pad(s.topk_logp[0], (0, 0, 0, R - s.logp.shape[1])))  # [R, K]
    return torch.stack(logp), (torch.stack(top) if top else None)


def test_plan_shares_the_longest_prefix_per_run_and_keeps_a_token_to_score() -> None:
    skill = list(range(100, 140))  # 40 tokens every row of a task starts with
    first = list(range(1, 41))  # the first turn's observation: its copies share 79 tokens
    prompts = [
        skill + first,  # the G copies of the first turn
        skill + first,
        skill + first,
        skill + [47, 48, 49],  # later turns of the task: share only the skill block
        skill + [47, 45],
        skill + [46],
    ]
    plan = plan_prefixes(prompts)
    assert plan is not None
    for i, prompt in enumerate(prompts):
        u = int(plan.inverse[i])
        length = plan.shared[u]
        assert prompt[:length] == prompts[plan.owners[u]][:length]
        assert 1 <= length < len(prompt)  # the last prompt token is left to predict response 0
    # the copies share all but their last token; the other turns the 40-token skill block
    # Sharing 79 tokens among the copies saves more than 40 among all six rows: two runs.
    assert sorted(plan.shared) == [40, 79]
    assert plan.saved_tokens() == 2 * 79 + 2 * 40
    assert sorted(prefix_order(prompts, plan)) == list(range(6))
    assert plan_prefixes([[5], [5, 6]]) is None  # a one-token prompt has nothing to share


def test_chunks_of_like_widths_close_before_padding_a_quarter() -> None:
    widths = [1, 1, 2, 2, 10, 10, 10, 11, 40]
    order = list(range(len(widths)))  # already sorted by width
    # [1, 1, 2] would pad 2 of 6 positions (over a quarter): closes at [1, 1]; [10, 10, 10, 11]
    # pads 3 of 44 (kept); adding 40 would pad 119 of 200
    assert like_widths(order, widths, chunk=8) == [[0, 1], [2, 3], [4, 5, 6, 7], [8]]
    assert like_widths(order, widths, chunk=3) == [[0, 1], [2, 3], [4, 5, 6], [7], [8]]
    assert like_widths([], [], chunk=4) == []


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_scoring_equals_one_pass_per_row(
    tiny_policy, teacher_batch, temperature: float
) -> None:
    model, pad = tiny_policy.model, tiny_policy.pad_id
    prompts, responses = teacher_batch.teacher_ids, teacher_batch.response_ids
    plan = plan_prefixes(prompts)
    assert plan is not None and 10 * plan.saved_tokens() >= sum(len(p) for p in prompts)
    with torch.no_grad():
        fast = score_responses(
            model, prompts, responses, pad, topk=5, temperature=temperature, share_prefix=True
        )
        logp, top = _one_row_at_a_time(model, prompts, responses, pad, temperature, topk=5)
    assert (fast.logp - logp).abs().max().item() <= 1e-5
    assert (fast.topk_logp - top).abs().max().item() <= 1e-5
    assert fast.mask.sum().item() == sum(len(r) for r in responses)


def test_chunked_teacher_scoring_with_shared_prefixes_equals_the_plain_chunks(
    tiny_policy, teacher_batch
) -> None:
    model, pad = tiny_policy.model, tiny_policy.pad_id
    prompts, responses = teacher_batch.teacher_ids, teacher_batch.response_ids
    plain = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=5)
    fast = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=5, share_prefix=True)
    assert (fast[0] - plain[0]).abs().max().item() <= 1e-5  # logp [N, R]
    assert (fast[2] - plain[2]).abs().max().item() <= 1e-5  # top-k logp [N, R, K]
    # ids may only differ where two log-probs tie within rounding
    differ = fast[1] != plain[1]
    assert differ.sum().item() <= 2


def test_static_cache_generation_samples_the_same_tokens(tiny_policy, teacher_batch) -> None:
    model, pad, eos = tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id
    default = TransformersBackend(model, pad, eos)
    static = TransformersBackend(model, pad, eos, generation="static")
    # 8 rows, a batch bucket: no filler rows, so the same random draws for the same seed
    prompts = teacher_batch.prompt_ids[:8]  # includes copies of one prompt (first turns)
    for seed in (0, 1):
        assert static.generate(prompts, 12, 1.0, seed) == default.generate(prompts, 12, 1.0, seed)
    # 7 rows get a filler row: torch.multinomial then draws for 8 rows at once, which changes
    # the real rows' draws (not their distribution); greedy decoding is the same token for token
    prompts = teacher_batch.prompt_ids[:7]
    assert static.generate(prompts, 12, 0.0, 0) == default.generate(prompts, 12, 0.0, 0)


def test_last_layer_on_keeps_the_scored_positions_and_restores_the_model(tiny_policy) -> None:
    """Skipping the last layer's attention and MLP on unscored positions changes no kept logit,
    and only there; the model is back on "sdpa" with its own MLP afterwards."""
    model = tiny_policy.model
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 7, 8, 9, 10, 11, 13]])  # [2, 8]
    attention = torch.tensor([[1] * 8, [0, 0] + [1] * 6])  # the second row left-padded
    mlp = model.get_decoder().layers[-1].mlp
    assert model.config._attn_implementation == "sdpa"
    for mask in (None, attention):  # plain causal (is_causal) and a padding mask
        rows = slice(0, 1) if mask is None else slice(0, 2)
        with torch.no_grad():
            plain = model(input_ids=ids[rows], attention_mask=mask).logits  # [b, 8, V]
            with scoring.last_layer_on(model, 3):
                assert "forward" in mlp.__dict__  # the MLP skip is in place for the pass
                assert model.config._attn_implementation == last_layer.SCORING_ATTENTION
                skipped = model(input_ids=ids[rows], attention_mask=mask).logits
        assert "forward" not in mlp.__dict__  # and gone after it
        assert model.config._attn_implementation == "sdpa"
        assert (skipped[:, -3:] - plain[:, -3:]).abs().max().item() <= 1e-6
        # the earlier positions did skip the last layer: their hidden states, hence logits, differ
        assert (skipped[:, :5] - plain[:, :5]).abs().max().item() > 1e-3
    # the attention alone: with the MLP skip undone, unscored positions still differ
    with torch.no_grad(), scoring.last_layer_on(model, 3):
        del mlp.forward
        attention_only = model(input_ids=ids[:1]).logits
        mlp.forward = mlp.__class__.forward.__get__(mlp)  # something for the exit to remove
    assert (attention_only[:, -3:] - plain[:1, -3:]).abs().max().item() <= 1e-6
    assert (attention_only[:, :5] - plain[:1, :5]).abs().max().item() > 1e-3
    with scoring.last_layer_on(model, 3):  # with gradients on, nothing is skipped
        assert "forward" not in mlp.__dict__
        assert model.config._attn_implementation == "sdpa"


def test_scoring_attention_copies_kv_per_head_like_enable_gqa(
    tiny_policy, teacher_batch, monkeypatch
) -> None:
    """Off the CPU the scoring attention copies keys and values per query head instead of
    passing enable_gqa; forced here on the CPU, the two give the same teacher scores."""
    model, pad = tiny_policy.model, tiny_policy.pad_id
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # GQA model
    prompts, responses = teacher_batch.teacher_ids, teacher_batch.response_ids
    gqa = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=5, share_prefix=True)
    monkeypatch.setattr(last_layer, "_copies_kv", lambda device: True)
    copied = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=5, share_prefix=True)
    assert (gqa[0] - copied[0]).abs().max().item() <= 1e-6  # logp [N, R]
    assert (gqa[2] - copied[2]).abs().max().item() <= 1e-6  # top-k logp [N, R, K]


def test_stored_prefixes_and_per_chunk_prefixes_give_the_same_scores(
    tiny_policy, teacher_batch, monkeypatch
) -> None:
    """Both ways of sharing prefixes in chunked scoring: every prefix run once for the batch
    (few prefixes), or each chunk running its own (when storing them all would take more
    memory than two chunks)."""
    model, pad = tiny_policy.model, tiny_policy.pad_id
    prompts, responses = teacher_batch.teacher_ids, teacher_batch.response_ids
    calls: list[int] = []
    inner = scoring.run_prefixes

    def counting(model, prompts, plan, pad_id, chunk):  # noqa: ANN001, ANN202
        calls.append(len(plan.owners))
        return inner(model, prompts, plan, pad_id, chunk)

    monkeypatch.setattr(scoring, "run_prefixes", counting)
    plain = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=4)
    stored = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=4, share_prefix=True)
    plan = plan_prefixes(prompts)
    assert calls == [len(plan.owners)]  # one call for the whole batch: each prefix runs once
    calls.clear()
    monkeypatch.setattr(scoring, "STORED_PREFIX_CHUNKS", 0)  # nothing may be stored
    per_chunk = score_topk_in_chunks(model, prompts, responses, pad, 4, chunk=4, share_prefix=True)
    assert len(calls) >= 2 and all(n <= 4 for n in calls)  # each chunk ran its own prefixes
    for fast in (stored, per_chunk):
        assert (fast[0] - plain[0]).abs().max().item() <= 1e-5  # logp [N, R]
        assert (fast[2] - plain[2]).abs().max().item() <= 1e-5  # top-k logp [N, R, K]
