"""Parsers from a model's response text to an env action.

They never raise: anything that is not exactly one well-formed answer block yields
``ParsedTurn(action=None, reason=...)``, the invalid turn of SPEC §1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_TAG = re.compile(r"</?(think|action|search|answer)>")

INVALID_ACTION_TEXT = "invalid"
"""What a history shows for a turn whose output did not parse (the tiny tokenizers' corpus
holds it, so it lives below both the rollout and the policies)."""


@dataclass(frozen=True)
class ParsedTurn:
    action: str | None  # canonical action text; None for an invalid turn
    reason: str = ""  # why the turn is invalid ("" when valid)
    kind: str = "action"  # which block carried it: action / search / answer

    @property
    def valid(self) -> bool:
        return self.action is not None


def normalize_command(text: str) -> str:
    """Lower-case, single-spaced: model output detokenised with extra spaces still matches."""
    return " ".join(text.lower().split())


def _blocks(text: str) -> list[tuple[str, str]] | str:
    """Split ``text`` into (tag, content) blocks; a string is the reason it is malformed."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    open_tag: str | None = None
    start = 0
    for match in _TAG.finditer(text):
        tag = match.group(1)
        closing = match.group(0).startswith("</")
        if open_tag is None:
            if closing:
                return f"stray </{tag}>"
            if text[pos : match.start()].strip():
                return "text outside the tags"
            open_tag, start = tag, match.end()
        else:
            if not closing or tag != open_tag:
                return f"<{tag}> inside <{open_tag}>" if not closing else f"unclosed <{open_tag}>"
            blocks.append((tag, text[start : match.start()]))
            open_tag = None
            pos = match.end()
    if open_tag is not None:
        return f"unclosed <{open_tag}>"
    if text[pos:].strip():
        return "text after the last tag"
    return blocks


def parse_tagged(text: str, answer_tags: Sequence[str]) -> ParsedTurn:
    """Exactly ``<think>…</think>`` then one block whose tag is in ``answer_tags``."""
    blocks = _blocks(text)
    if isinstance(blocks, str):
        return ParsedTurn(None, blocks)
    tags = [tag for tag, _ in blocks]
    if tags.count("think") != 1 or tags[0] != "think":
        return ParsedTurn(None, "needs exactly one leading <think> block")
    answers = [(tag, body) for tag, body in blocks[1:]]
    if len(answers) != 1:
        return ParsedTurn(None, f"needs exactly one answer block, got {len(answers)}")
    tag, body = answers[0]
    if tag not in answer_tags:
        return ParsedTurn(None, f"<{tag}> is not an answer tag here")
    action = normalize_command(body)
    if not action:
        return ParsedTurn(None, f"empty <{tag}>")
    return ParsedTurn(action, "", tag)


def parse_action_response(text: str, admissible: Sequence[str] | None) -> ParsedTurn:
    """``<think>…</think><action>…</action>``; the action must be admissible when a list exists."""
    parsed = parse_tagged(text, ("action",))
    if not parsed.valid or admissible is None:
        return parsed
    allowed = {normalize_command(a): a for a in admissible}
    if parsed.action not in allowed:
        return ParsedTurn(None, "action not admissible")
    return ParsedTurn(allowed[parsed.action], "", "action")
