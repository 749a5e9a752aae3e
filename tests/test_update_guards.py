"""The numbers a training step computes, guarded against the silent bugs that leave a run
"working": a policy gradient that vanishes, log-probs of the wrong distribution.

Each test names the mutation it catches. They use the real trainer update (``_update``) on a
tiny model and hand-built samples, so the outcome is known in advance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
from sdar_bench.policy import load_policy
from sdar_bench.policy import scoring as scoring_module
from sdar_bench.policy.scoring import score_responses
from sdar_bench.token_view import TokenView
from sdar_bench.trainer import Batch, _layout, _update, setup, train_step


def _spec(method: str = "grpo", **train) -> RunSpec:
    return RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 2},
        method=method,
        # No KL and no entropy bonus: the policy gradient is the only force on the weights.
        method_params={"c_kl": 0.0, "c_ent": 0.0},
        seed=0,
        train=TrainSpec(**{"steps": 1, "tasks_per_step": 1, "group_size": 2, "lr": 1e-2} | train),
        eval=EvalSpec(panel=1, valid_panel=0),
        warmstart=WarmStartSpec(enabled=False),
    )


def _batch(policy, rewards: list[float]) -> Batch:
    """Four turn samples of one group: the same prompt, two responses each given twice."""
    prompt = policy.encoder.encode("Your task is to: put a mug in the fridge.")
    vocab = policy.model.config.vocab_size
    first, second = [7 % vocab, 11 % vocab, 13 % vocab], [17 % vocab, 19 % vocab]
    responses = [first, second, first, second]
    n = len(responses)
    return Batch(
        prompt_ids=[prompt] * n,
        teacher_ids=None,
        response_ids=responses,
        rewards=torch.tensor(rewards),
        group_ids=torch.zeros(n, dtype=torch.long),
        turn_index=torch.zeros(n, dtype=torch.long),
        expert_agree=torch.full((n,), -1),
    )


def _mean_logp(policy, batch: Batch) -> torch.Tensor:
    """Mean log-prob per response token of each sample [N] under the current weights."""
    with torch.no_grad():
        s = score_responses(policy.model, batch.prompt_ids, batch.response_ids, policy.pad_id)
    return (s.logp * s.mask).sum(1) / s.mask.sum(1)


def test_one_default_update_moves_each_sampled_response_in_the_direction_of_its_advantage() -> None:
    """Catches ``old_logp=logp`` without ``.detach()`` in the single-pass path (the default: one
    epoch, one mini-batch): the PPO ratio is then ≡ 1 with zero gradient, GRPO's policy
    gradient vanishes and the run "trains" with unchanged weights."""
    torch.manual_seed(0)
    policy = load_policy("tiny-qwen-1m", env="alfworld")
    state = setup(_spec(), policy)
    batch = _batch(policy, rewards=[10.0, 0.0, 10.0, 0.0])  # response 1 wins, response 2 loses
    before = _mean_logp(policy, batch)
    _, _, mask = _layout(batch)
    view = TokenView(mask=mask, vocab_size=policy.model.config.vocab_size)
    advantages = state.method.advantages(view, batch.rewards, batch.group_ids, 0)
    assert advantages[0, 0] > 0 > advantages[1, 0]
    metrics, _ = _update(state, batch, view.with_(advantages=advantages), 0)
    after = _mean_logp(policy, batch)
    change = after - before  # [N]
    assert metrics["grad/norm"] > 1e-3
    # lr 1e-2 on a 1M model: each response's log-prob moves by far more than rounding
    assert change[0] > 0.05 and change[2] > 0.05  # positive advantage: more likely
    assert change[1] < -0.05 and change[3] < -0.05  # negative advantage: less likely


def test_score_responses_uses_the_sampling_temperature() -> None:
    """Catches scoring with softmax(logits) when the rollout sampled softmax(logits / T)."""
    torch.manual_seed(0)
    policy = load_policy("tiny-qwen-1m", env="alfworld")
    batch = _batch(policy, rewards=[0.0] * 4)
    prompt, response = batch.prompt_ids[0], batch.response_ids[0]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # [R, V]
    for temperature in (1.0, 0.5, 2.0):
        expected = F.log_softmax(logits / temperature, -1).gather(
            -1, torch.tensor(response)[:, None]
        )
        with torch.no_grad():
            got = score_responses(
                policy.model, [prompt], [response], policy.pad_id, temperature=temperature
            ).logp[0]
        assert got.tolist() == pytest.approx(expected[:, 0].tolist(), abs=1e-5)
    # and the values differ by temperature: a scorer that ignored T would fail above
    plain = score_responses(policy.model, [prompt], [response], policy.pad_id).logp[0]
    hot = score_responses(policy.model, [prompt], [response], policy.pad_id, temperature=2.0).logp[
        0
    ]
    assert (plain - hot).abs().max() > 1e-3


def test_every_log_prob_of_a_training_step_is_scored_at_the_rollout_temperature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches a scoring call of the step (old, reference, teacher or the update's own pass)
    that falls back to T = 1 when the suite samples at another temperature."""
    seen: list[float] = []
    real = scoring_module.score_responses

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003
        seen.append(kwargs.get("temperature", 1.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring_module, "score_responses", spy)
    monkeypatch.setattr("sdar_bench.trainer.score_responses", spy)
    torch.manual_seed(0)
    policy = load_policy("tiny-qwen-1m", env="alfworld")
    # SDAR with c_kl > 0 and two mini-batches: old, reference, teacher and update passes all run
    spec = _spec("sdar", temperature=0.7, mini_batches=2, max_new_tokens=4)
    spec = spec.model_copy(update={"method_params": {"c_kl": 0.01}})
    state = setup(spec, policy)
    train_step(state, 0)
    assert len(seen) >= 4
    assert set(seen) == {0.7}
