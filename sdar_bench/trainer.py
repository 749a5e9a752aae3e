"""The one training loop every method runs through (DESIGN.md, "The data, as it flows").

    per step:  episodes ← rollout.collect(policy, env, tasks, G)
               batch    ← one sample per turn (prompt, response, reward, turn index, group)
               old, ref ← score(policy), score(reference)             no grad
               teach    ← score(teacher, prompt with skill block)      only if method.needs_teacher
                          (+ the teacher's top-k tokens per position  only if method.teacher_topk())
               adv      ← method.advantages(view, rewards, groups, step)
               loss, m  ← method.loss(view)   per mini-batch, accumulated over micro-batches
               every eval.every steps: evaluate the fixed panel

A method decides nothing else: rollout, scoring, optimiser and logging live here, so a
comparison between methods is a comparison between their losses.

With several ranks (``--nproc N``, README "Scale") every rank runs this loop on its share of
the step: whole task groups (``distributed.share``), so group advantages need no other rank.
What crosses ranks: the update's token count and gradients (the summed gradient is that of
the whole batch), and the episodes, rewards and diagnostics behind the step's metrics and the
evaluations, gathered in task order so that they are computed as one process computes them.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from sdar_bench import distributed
from sdar_bench.config import RunSpec
from sdar_bench.envs import make_env
from sdar_bench.envs.base import Env, Task
from sdar_bench.envs.mix import is_mix
from sdar_bench.objectives import term_grad_norms
from sdar_bench.policy import Policy
from sdar_bench.policy.backend import RolloutBackend, make_backend
from sdar_bench.policy.scoring import (
    by_prompt,
    score_in_chunks,
    score_responses,
    score_topk_in_chunks,
)
from sdar_bench.registry import Method, SampleInfo, get_method, get_method_class
from sdar_bench.rollout import Episode, Turn, collect
from sdar_bench.skills import MixRetriever, SkillRetriever, make_retriever
from sdar_bench.token_view import TokenView, total

Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class Batch:
    """One sample per turn of every episode of a step."""

    prompt_ids: list[list[int]]  # what the student saw
    teacher_ids: list[list[int]] | None  # the same prompts with the skill block
    response_ids: list[list[int]]
    rewards: torch.Tensor  # [N] R, minus c_inv on invalid turns
    group_ids: torch.Tensor  # [N] GRPO group = task index within the step
    turn_index: torch.Tensor  # [N]
    expert_agree: torch.Tensor  # [N] 1 sampled == expert, 0 differs, -1 unknown
    episode_ids: torch.Tensor | None = None  # [N] the episode's index within the step
    turn_rewards: torch.Tensor | None = None  # [N] r_t: R on the last turn, − c_inv if invalid
    anchors: tuple[str, ...] = ()  # [N] the state of each turn (rollout.Turn.anchor)

    def sample_info(self) -> SampleInfo:
        """What ``Method.advantages`` gets as ``samples`` when the method asks for it."""
        assert self.episode_ids is not None and self.turn_rewards is not None
        return SampleInfo(
            group_ids=self.group_ids,
            episode_ids=self.episode_ids,
            turn_index=self.turn_index,
            turn_rewards=self.turn_rewards,
            anchors=self.anchors,
        )

    def __len__(self) -> int:
        return len(self.response_ids)


def build_batch(
    episodes: Sequence[Episode],
    env: Env,
    policy: Policy,
    teacher_skills: SkillRetriever | MixRetriever | None,
) -> Batch:
    prompts, teacher, responses, rewards, groups, turns, agree = [], [], [], [], [], [], []
    episode_ids: list[int] = []
    turn_rewards: list[float] = []
    anchors: list[str] = []
    for e, episode in enumerate(episodes):
        skill_text = teacher_skills.retrieve(episode.task) if teacher_skills else None
        penalty = env.for_task(episode.task).invalid_penalty  # a mix: the task's own env's c_inv
        last = max((turn.index for turn in episode.turns), default=-1)
        for turn in episode.turns:
            prompts.append(turn.prompt_ids)
            if skill_text is not None:
                teacher.append(policy.encoder.add_skill(turn.prompt_ids, skill_text))
            responses.append(turn.response_ids)
            charge = penalty if turn.action is None else 0.0
            rewards.append(episode.reward - charge)
            turn_rewards.append((episode.reward if turn.index == last else 0.0) - charge)
            groups.append(episode.group)
            turns.append(turn.index)
            episode_ids.append(e)
            anchors.append(turn.anchor)
            agree.append(
                -1 if turn.expert_action is None else int(turn.action == turn.expert_action)
            )
    return Batch(
        prompts,
        teacher if teacher_skills else None,
        responses,
        torch.tensor(rewards, dtype=torch.float32),
        torch.tensor(groups),
        torch.tensor(turns),
        torch.tensor(agree),
        torch.tensor(episode_ids),
        torch.tensor(turn_rewards, dtype=torch.float32),
        tuple(anchors),
    )


@dataclass
class RunState:
    """Everything a run carries from step to step."""

    spec: RunSpec
    env: Env
    method: Method
    policy: Policy
    backend: RolloutBackend
    reference: torch.nn.Module | None
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer | None
    panels: dict[
        str, list[Task]
    ]  # "test" (reported) and "valid" (selection), see evaluation_panels
    train_skills: SkillRetriever | MixRetriever | None  # skills in the student prompt (Skill-GRPO)
    teacher_skills: SkillRetriever | MixRetriever | None  # skills in the teacher prompt
    eval_skills: SkillRetriever | MixRetriever
    nonfinite_steps: int = 0  # steps whose every update was skipped for a non-finite value
    nonfinite_in_a_row: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def setup(spec: RunSpec, policy: Policy) -> RunState:
    env = make_env(spec.env, **spec.env_params)
    params: dict[str, Any] = dict(spec.method_params)
    if "c_kl" in get_method_class(spec.method).Params.model_fields:
        # The KL weight is per env in the paper (0.001 on Search-QA): the env's default applies
        # unless the suite sets it.
        params.setdefault("c_kl", env.default_c_kl)
    method = get_method(spec.method, **params)
    retrieval = getattr(method.params, "retrieval", "keyword")
    skills = make_retriever(env.name, retrieval, spec.seed)

    reference = teacher = optimizer = None
    if method.trains:
        if method.params.c_kl > 0:
            reference = policy.reference_model()
        if method.needs_teacher:
            mode = getattr(method.params, "teacher", "live")
            if mode == "live":
                teacher = policy.model
            else:  # frozen keeps the initial weights; ema starts there and follows the policy
                teacher = (
                    reference
                    if (mode == "frozen" and reference is not None)
                    else policy.frozen_copy()
                )
        if policy.options.fsdp and distributed.active():
            # after the reference and teacher copies (whole, no-grad) and before the optimiser,
            # which must own the sharded parameters
            distributed.shard_model(policy.model)
        optimizer = torch.optim.AdamW(
            policy.trainable_parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay
        )
    return RunState(
        spec=spec,
        env=env,
        method=method,
        policy=policy,
        backend=make_backend(policy),
        reference=reference,
        teacher=teacher,
        optimizer=optimizer,
        panels=evaluation_panels(env, spec),
        train_skills=skills if method.student_sees_skills else None,
        teacher_skills=skills if method.needs_teacher else None,
        eval_skills=make_retriever(env.name, retrieval, spec.seed),
    )


VALID_SPLIT = "valid"  # the validation panel's split: task addresses disjoint from the test panel


def evaluation_panels(env: Env, spec: RunSpec) -> dict[str, list[Task]]:
    """The fixed panels a run evaluates: ``test`` (reported) and, unless its size is 0,
    ``valid`` (where the best step is chosen: selecting on the reported panel biases it up)."""
    panels = {"test": env.panel(spec.eval.panel)}
    size = spec.eval.valid_size
    if size:
        panels["valid"] = env.panel(size, split=VALID_SPLIT)
        shared = {env.task_identity(t) for t in panels["test"]} & {
            env.task_identity(t) for t in panels["valid"]
        }
        if shared:
            raise ValueError(
                f"eval.valid_panel: {len(shared)} of its tasks are also on the test panel (the "
                "env has too few evaluation tasks); lower eval.panel + eval.valid_panel"
            )
    return panels


def episode_record(
    step: int, label: str, panel: str, with_skills: bool, episodes: Sequence[Episode]
) -> dict[str, Any]:
    """One evaluation's episodes as columns (one line of ``episodes.jsonl``): the per-task
    outcomes that paired comparisons resample. ``source`` is the task's data source where the
    env has one (Search-QA), else its type."""
    return {
        "step": step,
        "label": label,
        "panel": panel,
        "with_skills": with_skills,
        "task": [e.task.id for e in episodes],
        "type": [e.task.task_type for e in episodes],
        "source": [str(e.task.extra.get("data_source", e.task.task_type)) for e in episodes],
        "success": [int(e.won) for e in episodes],
        "score": [round(e.score, 6) for e in episodes],
        "turns": [len(e.turns) for e in episodes],
        "invalid": [sum(t.action is None for t in e.turns) for e in episodes],
    }


MULTITASK = " (multitask)"
"""Appended to a multitask run's row labels ("SDAR (multitask)"), so its per-env numbers sit
beside the single-env runs of the same method in one table without being taken for them."""


def row_label(state: RunState, with_skills: bool) -> str:
    """The eval label of the run's policy: the method's, marked when it trained on a mix."""
    label = state.method.row_label(with_skills)
    return label + MULTITASK if is_mix(state.env.name) else label


def evaluate(state: RunState, step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Play each fixed panel once per skill mode of the method.

    Returns one summary row per (panel, mode, env) for ``eval.jsonl`` and the matching
    per-episode records for ``episodes.jsonl``; every row names its ``env``. A multitask mix
    evaluates each member on its own panel with that member's protocol (its temperature), one
    row per member, so each env's numbers are those of a single-env run of it.
    """
    rows, records = [], []
    # FSDP: the weights whole for the panels' rollouts (one gather, whatever the episodes' length)
    distributed.unshard(state.policy.model)
    for panel, tasks in state.panels.items():
        by_env: dict[str, list[Task]] = {}
        for task in tasks:
            by_env.setdefault(task.env, []).append(task)
        for with_skills in state.method.eval_skill_modes:
            for env_tasks in by_env.values():
                env = state.env.for_task(env_tasks[0])
                row, record = _evaluate_panel(state, env, env_tasks, with_skills, step)
                row["panel"] = record["panel"] = panel
                rows.append(row)
                records.append(record)
    distributed.reshard(state.policy.model)
    return rows, records


def _evaluate_panel(
    state: RunState, env: Env, tasks: list[Task], with_skills: bool, step: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = state.spec
    temperature = env.eval_temperature if spec.eval.temperature is None else spec.eval.temperature
    start = time.perf_counter()
    mine = distributed.share(len(tasks))  # this rank's share of the panel, by panel index
    episodes = collect(
        state.policy,
        state.backend,
        env,
        [tasks[i] for i in mine],
        1,
        temperature=temperature,
        max_new_tokens=spec.train.max_new_tokens,
        # The same sampling noise at every evaluation: differences come from the weights.
        seed=spec.seed + 7_919,
        skills=state.eval_skills if with_skills else None,
        groups=mine,
    )
    episodes = all_episodes(episodes)  # the whole panel, in panel order, on every rank
    label = row_label(state, with_skills)
    row: dict[str, Any] = {
        "step": step,
        "panel": "",
        "with_skills": with_skills,
        "label": label,
        "env": env.name,
        "panel_hash": env.panel_hash(tasks),
        "panel_size": len(tasks),
        "temperature": temperature,
    }
    row.update(env.metrics([(e.task, e.score) for e in episodes]))
    row["score/mean"] = 100.0 * sum(e.score for e in episodes) / len(episodes)
    turns = [t for e in episodes for t in e.turns]
    row["turns/mean"] = len(turns) / len(episodes)
    row["invalid/ratio"] = sum(t.action is None for t in turns) / max(len(turns), 1)
    row["time/eval"] = time.perf_counter() - start
    record = episode_record(step, label, "", with_skills, episodes)
    record["env"] = env.name
    return row, record


def light_episode(episode: Episode) -> Episode:
    """``episode`` without its prompts, token ids and texts: what another rank needs of it for
    metrics and evaluation records (outcome, turns, actions), a small fraction of its size."""
    turns = [Turn(t.index, "", [], [], "", t.action, t.expert_action) for t in episode.turns]
    return Episode(episode.task, episode.group, episode.copy, turns, episode.score, episode.reward)


def all_episodes(episodes: list[Episode]) -> list[Episode]:
    """Every rank's ``episodes`` (light, see ``light_episode``) in task order, then copy order:
    the order one process plays them in. ``episodes`` themselves in one process."""
    if not distributed.active():
        return episodes
    shares = distributed.gather_objects([light_episode(e) for e in episodes])
    return sorted((e for share in shares for e in share), key=lambda e: (e.group, e.copy))


def global_samples(groups: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample tensors (first dim N, samples in episode order) of every rank, concatenated
    in the order one process holds them: by task group, keeping each rank's order within a
    group (copy, then turn). Columns (dim 1) are zero-padded to the widest rank's. The tensors
    themselves in one process."""
    if not distributed.active():
        return rows
    shares = distributed.gather_objects([groups.cpu(), *(r.detach().cpu() for r in rows)])
    all_groups = torch.cat([share[0] for share in shares])  # [N_total]
    order = torch.sort(all_groups, stable=True).indices
    out = []
    for k in range(len(rows)):
        parts = [share[k + 1] for share in shares]
        if parts[0].dim() > 1:
            width = max(part.shape[1] for part in parts)
            parts = [F.pad(part, (0, width - part.shape[1])) for part in parts]
        out.append(torch.cat(parts)[order])
    return tuple(out)


def _group_std(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    stds = [rewards[groups == g].std(unbiased=False).item() for g in groups.unique()]
    return sum(stds) / len(stds)


def _gap_diagnostics(
    batch: Batch, teach: torch.Tensor, old: torch.Tensor, mask: torch.Tensor
) -> dict[str, Any]:
    """Teacher–student gap by turn index and by agreement with the expert (SPEC §4), over
    every rank's samples."""
    delta = (teach - old) * mask  # [N, R]
    turn_index, expert_agree, delta, mask = global_samples(
        batch.group_ids, batch.turn_index, batch.expert_agree, delta, mask
    )
    per_sample = delta.sum(1) / mask.sum(1).clamp(min=1)  # [N] mean gap of each turn sample
    out: dict[str, Any] = {
        "gap/by_turn": {
            int(t): per_sample[turn_index == t].mean().item() for t in turn_index.unique()
        }
    }
    for name, flag in (("gap/expert_agree", 1), ("gap/expert_disagree", 0)):
        rows = expert_agree == flag
        if rows.any():
            out[name] = ((delta[rows]).sum() / mask[rows].sum().clamp(min=1)).item()
    return out


def train_step(state: RunState, step: int) -> dict[str, Any]:
    spec, env, policy, method = state.spec, state.env, state.policy, state.method
    t0 = time.perf_counter()
    tasks = env.train_tasks(spec.seed, step, spec.train.tasks_per_step)
    mine = distributed.share(len(tasks))  # whole task groups: a group's G copies on one rank
    # FSDP: the weights whole for rollout and scoring, where ranks run different numbers of
    # passes (resharded before the update)
    distributed.unshard(policy.model)
    episodes = collect(
        policy,
        state.backend,
        env,
        [tasks[i] for i in mine],
        spec.train.group_size,
        temperature=spec.train.temperature,
        max_new_tokens=spec.train.max_new_tokens,
        seed=spec.seed * 1_000_003 + step,
        skills=state.train_skills,
        groups=mine,
    )
    state.backend.sleep()  # a GPU rollout engine frees its memory for scoring and the update
    batch = build_batch(episodes, env, policy, state.teacher_skills)
    everyone = all_episodes(episodes)  # every rank's episodes, in task order
    _skill_feedback(state, tasks, everyone)
    t1 = time.perf_counter()

    pad, chunk = policy.pad_id, spec.train.micro_batch_size
    # Every log-prob is of the distribution the rollout sampled from (softmax(logits / T)).
    temperature = spec.train.temperature
    # With one epoch and one mini-batch the update's own forward pass sees the rollout weights,
    # so old = sg(logp) exactly and a separate scoring pass would be wasted work. Methods that
    # reshape advantages from log-probs (RLSD) need old before the update and always get it.
    single_pass = (
        spec.train.ppo_epochs == 1
        and spec.train.mini_batches == 1
        and not method.advantages_read_old_logp()
    )
    old = None
    if not single_pass:
        old = score_in_chunks(
            policy.model, batch.prompt_ids, batch.response_ids, pad, chunk, temperature
        )
    _, _, mask = _layout(batch)
    ref = (
        score_in_chunks(
            state.reference, batch.prompt_ids, batch.response_ids, pad, chunk, temperature
        )
        if state.reference is not None
        else None
    )
    teach = topk_ids = topk_logp = None
    topk = method.teacher_topk()
    if batch.teacher_ids is not None and state.teacher is not None:
        # [N, R], and [N, R, K] twice when the method asks for the teacher's top-k tokens.
        # Every teacher prompt of a task starts with the same skill block: it runs once for the
        # batch (about half the teacher's prompt tokens on the quickstart).
        teach, topk_ids, topk_logp = score_topk_in_chunks(
            state.teacher,
            batch.teacher_ids,
            batch.response_ids,
            pad,
            topk,
            chunk,
            temperature,
            share_prefix=True,
        )
    elif topk is not None:
        raise ValueError(f"method {method.name!r} asks for the teacher's top-k but has no teacher")
    distributed.reshard(policy.model)
    t2 = time.perf_counter()

    view = TokenView(
        mask=mask,
        old_logp=old,
        ref_logp=ref,
        teacher_logp=teach,
        teacher_topk_ids=topk_ids,
        teacher_topk_logp=topk_logp,
        vocab_size=policy.model.config.vocab_size,
    )
    extra = {"samples": batch.sample_info()} if method.needs_samples else {}
    advantages = method.advantages(view, batch.rewards, batch.group_ids, step, **extra)  # [N, R]
    view = view.with_(advantages=advantages)
    update_metrics, first_logp = _update(state, batch, view, step)
    # Once per step, after all its updates: the rollout engine is next used by the next rollout.
    state.backend.sync_weights()
    t3 = time.perf_counter()
    updates = spec.train.ppo_epochs * spec.train.mini_batches
    if update_metrics["nonfinite/skipped"] == updates:
        state.nonfinite_steps += 1
        state.nonfinite_in_a_row += 1
    else:
        state.nonfinite_in_a_row = 0

    tokens = int(mask.sum().item()) + sum(len(p) for p in batch.prompt_ids)
    # Over every rank: counts summed, a step as long as its slowest rank, samples in task order.
    tokens = int(distributed.all_sum(torch.tensor([tokens], dtype=torch.float64)).item())
    spans = distributed.all_max(torch.tensor([t1 - t0, t2 - t0, t3 - t0], dtype=torch.float64))
    t1, t2, t3 = (t0 + span for span in spans.tolist())
    (rewards,) = global_samples(batch.group_ids, batch.rewards)  # [N_total]
    metrics: dict[str, Any] = {
        "reward/mean": rewards.mean().item(),
        "reward/std_in_group": _group_std(
            torch.tensor([e.reward for e in everyone]), torch.tensor([e.group for e in everyone])
        ),
        "success/train": sum(e.won for e in everyone) / len(everyone),
        "turns/mean": sum(len(e.turns) for e in everyone) / len(everyone),
        "invalid/ratio": sum(t.action is None for e in everyone for t in e.turns) / len(rewards),
        "samples": len(rewards),
        **update_metrics,
        "time/rollout": t1 - t0,
        "time/teacher": t2 - t1,
        "time/update": t3 - t2,
        "tokens/per_s": tokens / max(t3 - t0, 1e-9),
    }
    if teach is not None:
        metrics.update(_gap_diagnostics(batch, teach, first_logp if old is None else old, mask))
    if is_mix(env.name):
        metrics.update(per_env_metrics(everyone))
    return metrics


def _skill_feedback(state: RunState, tasks: Sequence[Task], episodes: Sequence[Episode]) -> None:
    """The ucb retriever learns which skill goes with success, from every rank's episodes in
    task order: its statistics are the same on every rank, and as in one process."""
    for retriever in {id(r): r for r in (state.train_skills, state.teacher_skills) if r}.values():
        if distributed.active():
            # feedback credits the skills shown for a task; this rank retrieved only its own
            # share's, and retrieval is a function of the statistics every rank shares
            for task in tasks:
                retriever.retrieve(task)
        for episode in episodes:
            retriever.feedback(episode.task, float(episode.won))


def per_env_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """A multitask step's numbers per env: ``<env>/tasks`` (distinct tasks drawn),
    ``<env>/success/train``, ``<env>/reward/mean`` (episode reward) and ``<env>/turns/mean``."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(e.task.env for e in episodes):
        mine = [e for e in episodes if e.task.env == name]
        out[f"{name}/tasks"] = len({e.task.id for e in mine})
        out[f"{name}/success/train"] = sum(e.won for e in mine) / len(mine)
        out[f"{name}/reward/mean"] = sum(e.reward for e in mine) / len(mine)
        out[f"{name}/turns/mean"] = sum(len(e.turns) for e in mine) / len(mine)
    return out


def _layout(batch: Batch) -> tuple[int, int, torch.Tensor]:
    R = max(max(len(r) for r in batch.response_ids), 1)
    mask = torch.zeros(len(batch), R)
    for i, r in enumerate(batch.response_ids):
        mask[i, : len(r)] = 1.0
    return len(batch), R, mask  # mask: [N, R]


def _update(
    state: RunState, batch: Batch, view: TokenView, step: int
) -> tuple[dict[str, Any], torch.Tensor]:
    """PPO epochs × mini-batches; micro-batches accumulate gradients with token-share weights so
    every ``Agg`` is exactly the token-mean over the whole mini-batch.

    With several ranks, a mini-batch is the union of every rank's: the shares are of its global
    token count, the gradients are summed over ranks before clipping, and a step is skipped on
    every rank when any rank saw a non-finite loss.

    Returns the metrics and the detached ``logp`` [N, R] of each sample's first forward pass.
    """
    spec, policy, method = state.spec, state.policy, state.method
    assert state.optimizer is not None
    model = policy.model
    model.train()
    R = view.mask.shape[1]
    sums: dict[str, float] = defaultdict(float)
    grad_norms: list[float] = []
    skipped = 0
    first_logp = torch.zeros_like(view.mask)  # [N, R]
    seen = torch.zeros(len(batch), dtype=torch.bool)
    gen = torch.Generator().manual_seed(spec.seed * 7_777 + step)
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    every = spec.train.term_norms_every
    diagnose = every > 0 and step % every == 0 and not spec.policy.fsdp
    term_norms: dict[str, float] = {}
    for _ in range(spec.train.ppo_epochs):
        order = torch.randperm(len(batch), generator=gen)
        mini = list(order.chunk(spec.train.mini_batches))
        if distributed.active():  # chunk gives fewer when rows are few; ranks must step alike
            mini += [order[:0]] * (spec.train.mini_batches - len(mini))
        for mb_rows in mini:
            state.optimizer.zero_grad(set_to_none=True)
            # the global mini-batch's tokens: each rank's gradient is its share of that mean
            mb_tokens = distributed.all_sum(view.mask[mb_rows].sum()).clamp(min=1)
            finite = True
            # Micro-batches only split the mini-batch's gradient sum: ordering its rows by
            # prompt cuts padding and lets copies of a prompt share one forward pass.
            sorted_rows = torch.tensor(
                by_prompt(batch.prompt_ids, mb_rows.tolist()), dtype=torch.long
            )
            # FSDP: whole weights, gradients kept on this rank until summed below
            distributed.unshard(model)
            distributed.local_accumulation(model, True)
            for rows in sorted_rows.split(spec.train.micro_batch_size) if len(mb_rows) else ():
                idx = rows.tolist()
                micro = view.select(rows)
                scores = score_responses(
                    model,
                    [batch.prompt_ids[i] for i in idx],
                    [batch.response_ids[i] for i in idx],
                    policy.pad_id,
                    with_entropy=True,
                    at_ids=micro.teacher_topk_ids,  # [b, R, K] or None
                    temperature=spec.train.temperature,
                )
                assert scores.entropy is not None
                pad_to = R - scores.logp.shape[1]
                logp = F.pad(scores.logp, (0, pad_to))  # [b, R]
                micro = micro.with_(logp=logp, entropy=F.pad(scores.entropy, (0, pad_to)))
                if scores.logp_at is not None:  # [b, R, K] student at the teacher's top-k
                    micro = micro.with_(student_topk_logp=F.pad(scores.logp_at, (0, 0, 0, pad_to)))
                if micro.old_logp is None:  # single pass: the rollout weights are these weights
                    micro = micro.with_(old_logp=logp.detach())
                fresh = ~seen[rows]
                first_logp[rows[fresh]] = logp.detach()[fresh]
                seen[rows] = True
                terms, metrics = method.loss_terms(micro)
                loss = total(terms)
                if diagnose:  # once, on the step's first micro-batch: every term on one batch
                    term_norms = term_grad_norms(terms, params)
                    diagnose = False
                share = (micro.mask.sum() / mb_tokens).item()
                if not torch.isfinite(loss):
                    finite = False
                    break
                (loss * share).backward()
                for key, value in metrics.items():
                    sums[key] += value * share
            # the gradient of the whole (global) mini-batch on every rank; FSDP: in its shards
            distributed.sum_gradients(model, params, policy.pad_id)
            finite = not distributed.all_max(torch.tensor([float(not finite)])).item()
            if not finite:
                skipped += 1
                state.optimizer.zero_grad(set_to_none=True)
                continue
            norm = distributed.clip_grad_norm(list(model.parameters()), spec.train.grad_clip)
            if not torch.isfinite(norm):
                skipped += 1
                state.optimizer.zero_grad(set_to_none=True)
                continue
            grad_norms.append(norm.item())
            state.optimizer.step()
            _ema_update(state)
    n_updates = max(len(grad_norms), 1)
    if distributed.active():  # each rank's shares are of the global token counts: sum them
        shares = distributed.gather_objects(dict(sums))
        sums = defaultdict(float)
        for share in shares:
            for key, value in share.items():
                sums[key] += value
    out = {
        key: value / (spec.train.ppo_epochs * spec.train.mini_batches)
        for key, value in sums.items()
    }
    out["grad/norm"] = sum(grad_norms) / n_updates if grad_norms else math.nan
    out |= term_norms  # this rank's first micro-batch (rank 0's is the one logged)
    out["nonfinite/skipped"] = skipped
    return out, first_logp


@torch.no_grad()
def _ema_update(state: RunState) -> None:
    if getattr(state.method.params, "teacher", "live") != "ema" or state.teacher is None:
        return
    decay = state.method.params.ema_decay  # type: ignore[attr-defined]
    with distributed.gathered(state.policy.model):  # FSDP: the teacher is a whole copy
        for t, p in zip(state.teacher.parameters(), state.policy.model.parameters(), strict=True):
            t.mul_(decay).add_(p.detach(), alpha=1 - decay)
