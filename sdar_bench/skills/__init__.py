"""Skill banks and retrievers: the privileged information the teacher sees (SPEC §3).

A bank is a folder of markdown files per env: ``general.md`` plus one file per task type.
The teacher's prompt is the student's with ``SKILL_HEADER + skill_text + "\\n\\n"`` in front.
"""

from __future__ import annotations

import hashlib
import random
from functools import cache
from importlib import resources

from sdar_bench.envs.base import Task, task_seed

SKILL_HEADER = "[Privileged Skill Information]\n"
RETRIEVERS = ("keyword", "full", "random")


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
    """Content hashes of a bank's files, for run manifests."""
    return {k: hashlib.sha256(v.encode()).hexdigest()[:12] for k, v in skill_bank(env).items()}


def skill_block(skill_text: str) -> str:
    return f"{SKILL_HEADER}{skill_text}\n\n"


class SkillRetriever:
    """Chooses the skill text for a task.

    ``keyword``: general skills + the task type's skill (the default and the paper's setting);
    ``full``: every skill of the bank; ``random``: general + a task skill drawn at random per task
    (seeded by the task, so a rerun retrieves the same text).
    """

    def __init__(self, env: str, mode: str = "keyword", seed: int = 0) -> None:
        if mode not in RETRIEVERS:
            raise ValueError(f"retrieval {mode!r} unknown; choose one of {', '.join(RETRIEVERS)}")
        self.env, self.mode, self.seed = env, mode, seed
        self.bank = skill_bank(env)
        self.task_skills = sorted(k for k in self.bank if k != "general")

    def retrieve(self, task: Task) -> str:
        general = self.bank.get("general", "")
        if self.mode == "full":
            chosen = self.task_skills
        elif self.mode == "random":
            rng = random.Random(task_seed(self.seed, task.id, "skill"))
            chosen = [rng.choice(self.task_skills)]
        else:
            chosen = [task.task_type] if task.task_type in self.bank else []
        return "\n".join([general, *(self.bank[k] for k in chosen)]).strip()
