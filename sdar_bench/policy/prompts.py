"""Prompt token ids for the student and the skill-conditioned teacher.

The two sequences must differ *only* by the skill block (SPEC §3): same chat template, same
prompt, same response tokens. So the prompt is encoded in pieces — template prefix, optional
skill block, env prompt, template suffix — and the teacher's ids are the student's with the
skill block's ids inserted after the prefix. Tokenising the pieces separately is what makes that
an identity rather than a hope.

Chat models render through their own template (system turn, user turn, generation prompt;
Qwen3 with ``enable_thinking=False`` as in the paper): the template is rendered once around a
sentinel user message and split there, which gives the prefix (everything up to the user's
text) and the suffix (end of the user turn and the assistant header). The skill block then sits
at the start of the user message, exactly SPEC §3's ``skill block + prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from sdar_bench.skills import skill_block

_SENTINEL = "\u2063SDAR_PROMPT\u2063"
_PROBE = "Task"  # a word that stands for the start of any env prompt (see _block_ids)


class PromptTooLong(ValueError):
    pass


@dataclass
class PromptEncoder:
    tokenizer: PreTrainedTokenizerBase
    max_prompt_tokens: int = 2048
    system: str | None = None
    """The system turn; None keeps the template's own default (SmolLM2 and Qwen2.5 add one)."""

    def __post_init__(self) -> None:
        self.prefix, self.suffix = self._template_pieces()
        self._skill_cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _template_pieces(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the user message in the model's chat template."""
        before, after = self.template_text()
        return self._ids(before), self._ids(after)

    def template_text(self) -> tuple[str, str]:
        """The chat template's text before and after the user message ("" without a template)."""
        if not getattr(self.tokenizer, "chat_template", None):
            if self.system is not None:
                raise ValueError("a system prompt needs a tokenizer with a chat template")
            return "", ""
        messages = [{"role": "user", "content": _SENTINEL}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        rendered = self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,  # Qwen3 runs with thinking off, as in the paper
        )
        pieces = rendered.split(_SENTINEL)
        if len(pieces) != 2:
            # A template that drops, repeats or rewrites the user text cannot be split into
            # prefix + message + suffix, so the teacher's prompt could not be the student's
            # plus the skill block alone.
            raise ValueError(
                f"chat template shows the user message {len(pieces) - 1} times (need exactly once)"
            )
        return pieces[0], pieces[1]

    def skill_ids(self, skill_text: str) -> list[int]:
        if skill_text not in self._skill_cache:
            self._skill_cache[skill_text] = self._block_ids(skill_block(skill_text))
        return self._skill_cache[skill_text]

    def _block_ids(self, block: str) -> list[int]:
        """The skill block's ids as they come out when a prompt word follows it.

        Byte-level BPE splits trailing whitespace by what comes next: GPT-2-style
        pre-tokenisers (SmolLM2) give "\\n\\n" alone one token but "\\n\\nWord" two. Tokenising
        the block with a probe word after it and dropping the probe's ids makes the teacher's
        prompt the tokenisation of its own text (every env prompt starts with a word), not a
        seam the model never saw. Where the probe does not come off cleanly (tokenisers that
        merge across whitespace), the block is tokenised alone.
        """
        probe = self._ids(_PROBE)
        with_probe = self._ids(block + _PROBE)
        if probe and with_probe[len(with_probe) - len(probe) :] == probe:
            return with_probe[: len(with_probe) - len(probe)]
        return self._ids(block)

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
