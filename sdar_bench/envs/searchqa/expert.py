"""The expert: search each needed entity in turn, then answer with the first gold answer.

It knows the question's plan (``SearchQAGame.hops``: the named entity, then the bridge entity
of a two-hop question or the second entity of a comparison) and re-plans from what the game has
retrieved so far: a hop whose passage the agent already surfaced is skipped, and on the last
turn it answers whatever it has. On real data it searches the question once, then answers.
"""

from __future__ import annotations

from sdar_bench.envs.base import ExpertStep
from sdar_bench.envs.parsing import normalize_command
from sdar_bench.envs.searchqa.engine import ANSWER, SEARCH, SearchQAGame, encode_action

# The expert's reasons; ``vocabulary`` reads their words from here ({t}: a hop's target).
THOUGHT_TEMPLATES: tuple[str, ...] = (
    "search for the {t}",
    "now search the {t}",
    "search for the other {t}",
    "compare the two years",
    "the passage has the answer",
    "work toward the answer",
)
HOP_TARGETS: tuple[str, ...] = ("person", "city", "country", "organisation", "work", "question")
FALLBACK_THOUGHT = "work toward the answer"


def plan(game: SearchQAGame) -> ExpertStep:
    """The expert's next action from the game's state."""
    comparison = game.task.task_type == "comparison"
    turns_left = game.max_turns - game.turns
    for index, hop in enumerate(game.hops):
        found = hop.passage in game.retrieved if hop.passage else index < len(game.searches)
        if found:
            continue
        if turns_left <= 1:
            break  # no turn left for the answer after another search
        if index == 0:
            thought = f"search for the {hop.target}"
        elif comparison:
            thought = f"search for the other {hop.target}"
        else:
            thought = f"now search the {hop.target}"
        return ExpertStep(encode_action(SEARCH, normalize_command(hop.query)), thought)
    thought = "compare the two years" if comparison else "the passage has the answer"
    answer = normalize_command(game.golden_answers[0])
    return ExpertStep(encode_action(ANSWER, answer), thought)
