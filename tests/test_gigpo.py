"""GiGPO (methods/gigpo.py): advantages on a hand-built batch against a hand computation, the
batch bookkeeping it reads (per-turn rewards, episodes, anchors), and a short run."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from methods.gigpo import GiGPO
from sdar_bench.envs import make_env
from sdar_bench.objectives import discounted_returns, group_advantages
from sdar_bench.registry import SampleInfo, get_method, method_names, register_method
from sdar_bench.rollout import Episode, Turn, anchor_text
from sdar_bench.token_view import TokenView
from sdar_bench.trainer import build_batch

# Until the package is reinstalled with the new entry point (pyproject.toml), register by hand.
if "gigpo" not in method_names():
    register_method("gigpo")(GiGPO)

# The hand-built batch: task group 0 has three episodes, task group 1 two. R = 10 for a win.
# (group, episode, turn, anchor, episode reward R, invalid?)
ROWS = [
    (0, 0, 0, "A", 10.0, False),  # episode 0: A → B → C, wins on turn 2
    (0, 0, 1, "B", 10.0, False),
    (0, 0, 2, "C", 10.0, False),
    (0, 1, 0, "A", 0.0, False),  # episode 1: A → B (invalid), runs out of turns
    (0, 1, 1, "B", 0.0, True),
    (0, 2, 0, "A", 10.0, False),  # episode 2: A → D → B, wins on turn 2
    (0, 2, 1, "D", 10.0, False),
    (0, 2, 2, "B", 10.0, False),
    (1, 3, 0, "A", 0.0, False),  # episode 3 (another task): A, ends unsolved
    (1, 4, 0, "A", 10.0, False),  # episode 4: A → E, wins on turn 1
    (1, 4, 1, "E", 10.0, False),
]
C_INV = 0.1


def hand_batch() -> tuple[torch.Tensor, SampleInfo]:
    rewards = torch.tensor([r - (C_INV if bad else 0.0) for _, _, _, _, r, bad in ROWS])
    last = {e: max(t for _, e2, t, *_ in ROWS if e2 == e) for _, e, *_ in ROWS}
    turn_rewards = torch.tensor(
        [(r if t == last[e] else 0.0) - (C_INV if bad else 0.0) for _, e, t, _, r, bad in ROWS]
    )
    info = SampleInfo(
        group_ids=torch.tensor([g for g, *_ in ROWS]),
        episode_ids=torch.tensor([e for _, e, *_ in ROWS]),
        turn_index=torch.tensor([t for _, _, t, *_ in ROWS]),
        turn_rewards=turn_rewards,
        anchors=tuple(a for _, _, _, a, *_ in ROWS),
    )
    return rewards, info


# G_t = Σ γ^(k−t) r_k with γ = 0.95, written out per row of ROWS:
#   episode 0: r = (0, 0, 10)      → G = (0.95²·10, 0.95·10, 10) = (9.025, 9.5, 10)
#   episode 1: r = (0, −0.1)       → G = (0.95·(−0.1), −0.1) = (−0.095, −0.1)
#   episode 2: r = (0, 0, 10)      → G = (9.025, 9.5, 10)
#   episode 3: r = (0,)            → G = (0,)
#   episode 4: r = (0, 10)         → G = (9.5, 10)
RETURNS = [9.025, 9.5, 10.0, -0.095, -0.1, 9.025, 9.5, 10.0, 0.0, 9.5, 10.0]
# Anchor groups (task group, anchor): (0,A) rows 0,3,5; (0,B) rows 1,4,7; (0,C) row 2;
# (0,D) row 6; (1,A) rows 8,9 (same text as (0,A), another task: not merged); (1,E) row 10.
ANCHOR_ROWS = [[0, 3, 5], [1, 4, 7], [2], [6], [8, 9], [10]]


def normalised(values: list[float], scale: bool) -> list[float]:
    """(v − mean) / (unbiased std + 1e-6), or v − mean; a single value gives 0."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return [0.0]
    std = statistics.stdev(values) if scale else None
    return [(v - mean) / (std + 1e-6) if scale else v - mean for v in values]


def hand_advantages(scale: bool, omega: float) -> list[float]:
    rewards = [r - (C_INV if bad else 0.0) for _, _, _, _, r, bad in ROWS]
    out = [0.0] * len(ROWS)
    for group in (0, 1):  # episode level: all turn samples of the task group
        rows = [i for i, row in enumerate(ROWS) if row[0] == group]
        for i, a in zip(rows, normalised([rewards[i] for i in rows], scale), strict=True):
            out[i] += a
    for rows in ANCHOR_ROWS:  # step level: the discounted returns within each anchor group
        for i, a in zip(rows, normalised([RETURNS[i] for i in rows], scale), strict=True):
            out[i] += omega * a
    return out


def view_for(n: int, tokens: int = 3) -> TokenView:
    mask = torch.ones(n, tokens)
    mask[0, 2] = 0.0  # one padded token: its advantage must be 0
    return TokenView(mask=mask)


def test_discounted_returns_by_hand_in_any_order() -> None:
    _, info = hand_batch()
    got = discounted_returns(info.turn_rewards, info.episode_ids, info.turn_index, 0.95)
    assert got.tolist() == pytest.approx(RETURNS, abs=1e-6)
    order = torch.tensor([10, 3, 0, 7, 1, 9, 5, 2, 8, 4, 6])  # shuffled rows: same returns
    shuffled = discounted_returns(
        info.turn_rewards[order], info.episode_ids[order], info.turn_index[order], 0.95
    )
    assert shuffled.tolist() == pytest.approx([RETURNS[i] for i in order.tolist()], abs=1e-6)


@pytest.mark.parametrize(("mode", "omega"), [("mean_std_norm", 1.0), ("mean_norm", 0.5)])
def test_gigpo_advantages_equal_the_hand_computation(mode: str, omega: float) -> None:
    rewards, info = hand_batch()
    method = get_method("gigpo", mode=mode, omega=omega)
    view = view_for(len(ROWS))
    adv = method.advantages(view, rewards, info.group_ids, 0, samples=info)  # [N, T]
    expected = hand_advantages(scale=mode == "mean_std_norm", omega=omega)
    assert adv[:, 0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert adv[:, 1].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert adv[0, 2].item() == 0.0  # padding
    # spot checks written out: row 4 (episode 1's invalid turn in state B), mean/std mode
    if mode == "mean_std_norm":
        g0 = [10, 10, 10, 0, -0.1, 10, 10, 10]
        a_episode = (-0.1 - statistics.fmean(g0)) / (statistics.stdev(g0) + 1e-6)
        b = [9.5, -0.1, 10.0]
        a_step = (-0.1 - statistics.fmean(b)) / (statistics.stdev(b) + 1e-6)
        assert adv[4, 0].item() == pytest.approx(a_episode + a_step, rel=1e-5)
        # the one-member anchor groups (rows 2, 6, 10) get the episode advantage only
        for row in (2, 6, 10):
            assert adv[row, 0].item() == pytest.approx(
                group_advantages(rewards, info.group_ids)[row].item(), rel=1e-6
            )
    # the diagnostics of this batch, logged by loss()
    assert method._metrics["gigpo/singleton_share"] == pytest.approx(3 / 11)
    # anchor group sizes: (0,A) 3, (0,B) 3, (0,C) 1, (0,D) 1, (1,A) 2, (1,E) 1
    assert method._metrics["gigpo/anchor_group_size"] == pytest.approx(
        (3 * 3 + 3 * 3 + 1 + 1 + 2 * 2 + 1) / 11
    )


def test_omega_zero_is_grpo_and_sdar_takes_gigpo_advantages() -> None:
    rewards, info = hand_batch()
    view = view_for(len(ROWS))
    grpo = get_method("grpo").advantages(view, rewards, info.group_ids, 0)
    gigpo0 = get_method("gigpo", omega=0.0).advantages(view, rewards, info.group_ids, 0, info)
    assert torch.allclose(gigpo0, grpo, atol=1e-6)
    gigpo = get_method("gigpo").advantages(view, rewards, info.group_ids, 0, samples=info)
    sdar = get_method("sdar", advantage="gigpo")
    assert torch.allclose(sdar.advantages(view, rewards, info.group_ids, 0, samples=info), gigpo)
    plain = get_method("sdar").advantages(view, rewards, info.group_ids, 0, samples=info)
    assert torch.allclose(plain, grpo)
    assert not torch.allclose(gigpo, grpo, atol=1e-3)  # the step term does change something


def _played(env, task, group: int, invalid_at: set[int]) -> Episode:
    game = env.new_game(task)
    obs = game.reset()
    episode = Episode(task, group)
    turn = 0
    while not obs.done:
        expert = game.expert_action()
        action = None if turn in invalid_at else expert
        episode.turns.append(Turn(turn, "p", [5], [7], "x", action, expert, anchor_text(obs)))
        obs = game.step(action)
        turn += 1
    episode.score, episode.reward = game.score(), env.episode_reward(game)
    return episode


def test_batch_carries_turn_rewards_episodes_and_anchors(tiny_policy) -> None:
    env = make_env("alfworld", max_turns=30)
    task = env.task("eval", 0)
    won = _played(env, task, 0, invalid_at={1})
    lost = _played(make_env("alfworld", max_turns=2), task, 0, invalid_at={0, 1})
    batch = build_batch([won, lost], env, tiny_policy, None)
    n = len(won.turns)
    # r_t: R only on the last turn, −0.1 on each invalid turn
    assert batch.turn_rewards.tolist() == pytest.approx(
        [0.0, -0.1] + [0.0] * (n - 3) + [10.0, -0.1, -0.1]
    )
    assert batch.episode_ids.tolist() == [0] * n + [1, 1]
    # both episodes start in the same state (same task, same reset): one anchor
    assert batch.anchors[0] == batch.anchors[n]
    assert "[admissible]" in batch.anchors[0] and batch.anchors[0].startswith(
        won.turns[0].anchor[:20]
    )
    # after an invalid turn (a no-op) the world is unchanged but the text is "Nothing happens.":
    # the key is the text (as verl-agent's), so turn 2 is another anchor than turn 1
    assert batch.anchors[2].startswith("Nothing happens.")
    assert batch.anchors[1] != batch.anchors[2]
    assert batch.anchors[1].split("[admissible]")[1] == batch.anchors[2].split("[admissible]")[1]


def test_two_step_gigpo_run_logs_its_diagnostics(tmp_path) -> None:
    from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
    from sdar_bench.run import execute_run

    spec = RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 3},
        method="gigpo",
        train=TrainSpec(
            steps=2,
            tasks_per_step=2,
            group_size=3,
            lr=1e-3,
            max_new_tokens=8,
            max_prompt_tokens=256,
        ),  # fmt: skip
        eval=EvalSpec(every=2, panel=2, valid_panel=0),
        warmstart=WarmStartSpec(enabled=False),
    )
    result = execute_run(spec, tmp_path / "run")
    assert result["status"] == "finished" and "GiGPO" in result["final"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["loss/pg"]) and row["nonfinite/skipped"] == 0
        # random weights repeat the reset state: every episode's turn 0 is one anchor of size 3
        assert row["gigpo/anchor_group_size"] >= 1.0
        assert 0.0 <= row["gigpo/singleton_share"] < 1.0
