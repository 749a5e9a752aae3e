"""The columns and rows of the paper's Table 1: which metrics each env shows, in which order,
and the order of method rows. Shared by the tables, the plots and ``compare``."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROW_ORDER = [
    "Vanilla", "Skill-Prompt*", "OPSD", "GRPO", "GiGPO", "Skill-GRPO", "Skill-GRPO*",
    "GRPO+OPSD", "Skill-SD", "RLSD", "SDAR",
]  # fmt: skip
MULTITASK = " (multitask)"  # a multitask run's rows: right after the single-env row of the label


# ---- the Table-1 columns ---------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One Table-1 column: where its value lives in a result row and in the paper's CSV."""

    metric: str  # key of the eval row, e.g. "success/pick"
    title: str  # header text, e.g. "Pick"
    paper: str  # column of paper_table1.csv, e.g. "alfworld_pick"


# The paper's Table 1, group by group; each group's last column is its headline metric. These
# are the envs' ``table_columns()`` except WebShop, whose per-category success the paper omits.
TABLE1: dict[str, list[Column]] = {
    "alfworld": [
        Column("success/pick", "Pick", "alfworld_pick"),
        Column("success/look", "Look", "alfworld_look"),
        Column("success/clean", "Clean", "alfworld_clean"),
        Column("success/heat", "Heat", "alfworld_heat"),
        Column("success/cool", "Cool", "alfworld_cool"),
        Column("success/pick2", "Pick2", "alfworld_pick2"),
        Column("success/all", "All", "alfworld_all"),
    ],
    "searchqa": [
        Column("em/nq", "NQ", "searchqa_nq"),
        Column("em/triviaqa", "TriviaQA", "searchqa_triviaqa"),
        Column("em/popqa", "PopQA", "searchqa_popqa"),
        Column("em/hotpotqa", "HotpotQA", "searchqa_hotpotqa"),
        Column("em/2wiki", "2Wiki", "searchqa_2wiki"),
        Column("em/musique", "MuSiQue", "searchqa_musique"),
        Column("em/bamboogle", "Bamboogle", "searchqa_bamboogle"),
        Column("em/avg", "Avg", "searchqa_avg"),
    ],
    "webshop": [
        Column("score", "Score", "webshop_score"),
        Column("accuracy", "Acc", "webshop_acc"),
    ],
}
ENV_TITLES = {"alfworld": "ALFWorld", "searchqa": "Search-QA", "webshop": "WebShop"}


def env_columns(env: str) -> list[Column]:
    """The Table-1 columns of ``env``; an env the paper lacks shows its ``table_columns()``."""
    if env in TABLE1:
        return TABLE1[env]
    from sdar_bench.envs import ENVS

    metrics = ENVS[env].table_columns() if env in ENVS else []
    return [Column(m, m.split("/", 1)[-1], "") for m in metrics]


def headline_metric(env: str) -> str:
    """The metric Δ vs GRPO and the validation plot use: the env's last table column."""
    return env_columns(env)[-1].metric


def env_order(env: str) -> tuple[int, str]:
    """Sort key: the paper's env order first, then any other env by name."""
    known = list(TABLE1)
    return (known.index(env) if env in known else len(known), env)


def _natural_key(text: str) -> list[object]:
    """Sort "beta=5.0" before "beta=10.0": numbers compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return [(0, float(p)) if re.fullmatch(r"\d+(?:\.\d+)?", p) else (1, p) for p in parts]


def row_order_key(label: str) -> tuple[int, bool, list[object]]:
    """Paper row order, a base label before its variants, variants in natural order; a
    multitask row ("SDAR (multitask)") right after the single-env rows of its label."""
    base = label.split(" [")[0]
    multitask = base.endswith(MULTITASK)
    base = base.removesuffix(MULTITASK)
    order = ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER)
    return (order, multitask, _natural_key(label))
