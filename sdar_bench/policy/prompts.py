"""Prompt token ids for the student and the skill-conditioned teacher.

The two sequences must differ *only* by the skill block (SPEC §3): same chat template, same
prompt, same response tokens. So the prompt is encoded in pieces — template prefix, optional
skill block, env prompt, template suffix — and the teacher's ids are the student's with the
skill block's ids inserted after the prefix. Tokenising the pieces separately is what makes that
an identity rather than a hope.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from sdar_bench.skills import skill_block

_SENTINEL = "\u2063SDAR_PROMPT\u2063"


class PromptTooLong(ValueError):
    pass


@dataclass
class PromptEncoder:
    tokenizer: PreTrainedTokenizerBase
    max_prompt_tokens: int = 2048

    def __post_init__(self) -> None:
        self.prefix, self.suffix = self._template_pieces()
        self._skill_cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _template_pieces(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the user message in the model's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            return [], []
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,  # Qwen3 runs with thinking off, as in the paper
        )
        before, after = rendered.split(_SENTINEL)
        return self._ids(before), self._ids(after)

    def skill_ids(self, skill_text: str) -> list[int]:
        if skill_text not in self._skill_cache:
            self._skill_cache[skill_text] = self._ids(skill_block(skill_text))
        return self._skill_cache[skill_text]

    def add_skill(self, student_ids: list[int], skill_text: str) -> list[int]:
        """The teacher's ids from the student's (no re-tokenisation): the skill block goes in
        right after the template prefix. Equal to ``encode(prompt, skill_text)``."""
        n = len(self.prefix)
        return [*student_ids[:n], *self.skill_ids(skill_text), *student_ids[n:]]

    def encode(self, prompt: str, skill_text: str | None = None) -> list[int]:
        """Prompt ids, with the skill block when ``skill_text`` is given.

        ``max_prompt_tokens`` bounds the prompt *without* the skill block, so truncation is the
        same for student and teacher and can never cut the skill block: the oldest part of the
        env prompt is dropped (left truncation) when it is too long.
        """
        body = self._ids(prompt)
        room = self.max_prompt_tokens - len(self.prefix) - len(self.suffix)
        if room <= 0:
            raise PromptTooLong(f"max_prompt_tokens={self.max_prompt_tokens} leaves no room")
        body = body[-room:]
        skill = self.skill_ids(skill_text) if skill_text is not None else []
        return [*self.prefix, *skill, *body, *self.suffix]
