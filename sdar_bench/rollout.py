"""Multi-turn rollout: G copies of each task played in lock-step, one ``generate`` per turn.

Every turn is a training sample (SPEC §1): its prompt is rebuilt from the task, the last
``history_length`` (observation, action) pairs and the current observation, so samples are
independent of each other and of how many episodes were batched together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sdar_bench.envs.base import Env, Game, Observation, Task
from sdar_bench.envs.parsing import INVALID_ACTION_TEXT
from sdar_bench.policy import Policy
from sdar_bench.policy.backend import RolloutBackend, stream_seed
from sdar_bench.skills import SkillRetriever


@dataclass
class Turn:
    index: int  # turn number within the episode, from 0
    prompt: str  # the env prompt, without any skill block
    prompt_ids: list[int]  # what the policy saw (with the skill block if the student sees skills)
    response_ids: list[int]
    response_text: str
    action: str | None  # the parsed action; None for an invalid turn
    expert_action: str | None  # the expert's action in that state, where the engine knows it
    anchor: str = ""  # the state the turn was taken in: observation text + admissible actions


def anchor_text(observation: Observation) -> str:
    """A turn's state as text, GiGPO's anchor key: the env's current observation and, where the
    env has them, the admissible actions (they carry state the text may not, e.g. what the
    agent holds). The task's goal is the same within a task group; history and turn number are
    left out, so one state reached along two paths is one anchor."""
    if observation.admissible is None:
        return observation.text
    return observation.text + "\n[admissible] " + " | ".join(observation.admissible)


@dataclass
class Episode:
    task: Task
    group: int  # index of the task in the step's (or panel's) task list: the GRPO group
    copy: int = 0  # which of the group's G copies, from 0
    turns: list[Turn] = field(default_factory=list)
    score: float = 0.0  # the env's own score in [0, 1]
    reward: float = 0.0  # the episode reward R given to every turn (SPEC §1)

    @property
    def won(self) -> bool:
        return self.score >= 1.0


@dataclass
class _Live:
    episode: Episode
    env: Env  # the env that plays the task (a mix's member)
    game: Game
    observation: Observation
    history: list[tuple[str, str]] = field(default_factory=list)
    skill_text: str | None = None


def collect(
    policy: Policy,
    backend: RolloutBackend,
    env: Env,
    tasks: Sequence[Task],
    group_size: int,
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    skills: SkillRetriever | None = None,
    on_turn: Callable[[int, int], None] | None = None,
    groups: Sequence[int] | None = None,
) -> list[Episode]:
    """Play ``group_size`` copies of every task; the student prompt carries skills iff ``skills``.

    ``on_turn(turn, live_episodes)`` is called once per turn (progress display). ``groups``:
    each task's index in the whole step or panel when ``tasks`` is one rank's share of it
    (default: its position here); it is the episodes' ``group`` and, with ``sampling:
    per_sample``, names their random streams, so a rank samples what one process would.
    """
    groups = list(range(len(tasks))) if groups is None else list(groups)
    per_sample = policy.options.sampling == "per_sample"
    states: list[_Live] = []
    for group, task in zip(groups, tasks, strict=True):
        skill_text = skills.retrieve(task) if skills is not None else None
        for copy in range(group_size):
            game = env.new_game(task)
            states.append(
                _Live(
                    Episode(task, group, copy),
                    env.for_task(task),
                    game,
                    game.reset(),
                    skill_text=skill_text,
                )
            )

    for turn in range(env.params.max_turns):  # a mix: the longest limit; each game ends at its own
        live = [s for s in states if not s.observation.done and turn < s.env.params.max_turns]
        if not live:
            break
        if on_turn is not None:
            on_turn(turn, len(live))
        prompts = [
            s.env.render_prompt(
                s.episode.task,
                s.history[len(s.history) - s.env.params.history_length :],
                s.observation,
                turn,
            )
            for s in live
        ]
        prompt_ids = [
            policy.encoder.encode(p, s.skill_text) for p, s in zip(prompts, live, strict=True)
        ]
        if per_sample:  # one stream per (task, copy, turn): the batch around a row is irrelevant
            row_seeds = [stream_seed(seed, s.episode.group, s.episode.copy, turn) for s in live]
            responses = backend.generate(
                prompt_ids, max_new_tokens, temperature, seed * 100_003 + turn, row_seeds=row_seeds
            )
        else:
            responses = backend.generate(
                prompt_ids, max_new_tokens, temperature, seed * 100_003 + turn
            )
        for s, prompt, ids, response in zip(live, prompts, prompt_ids, responses, strict=True):
            text = policy.tokenizer.decode(response, skip_special_tokens=True)
            parsed = s.env.parse(text, s.observation.admissible)
            expert = s.game.expert_action()
            s.episode.turns.append(
                Turn(
                    turn,
                    prompt,
                    ids,
                    response,
                    text,
                    parsed.action,
                    expert,
                    anchor_text(s.observation),
                )  # fmt: skip
            )
            s.history.append((s.observation.text, parsed.action or INVALID_ACTION_TEXT))
            s.observation = s.game.step(parsed.action)

    for s in states:
        s.episode.score = s.game.score()
        s.episode.reward = s.env.episode_reward(s.game)
    return [s.episode for s in states]
