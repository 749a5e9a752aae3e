"""Word-level tokenizers for the tiny model family, built with `tokenizers`.

Every engine's text is lower-case words from closed vocabularies (numbers included: engines
list the numbers they print in ``Env.vocabulary``), so a word-level vocabulary keeps prompts short: a tiny
model reads a 100-word prompt as ~120 tokens instead of ~400 sub-words. The ids are assigned by
hand (special tokens first, then the sorted words) because the `WordLevelTrainer` leaves gaps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
# Response tags stay single tokens so the parser's structure is one decision for a tiny model.
TAGS = (
    "<think>", "</think>", "<action>", "</action>", "<search>", "</search>",
    "<answer>", "</answer>", "<information>", "</information>",
)  # fmt: skip
_WORD = re.compile(r"\w+|[^\w\s]")


def words_of(text: str) -> list[str]:
    """Split text the way the tokenizer's pre-tokenizer (`Whitespace`) does."""
    return _WORD.findall(text.lower())


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A deterministic word-level tokenizer covering every word of ``texts``."""
    words: set[str] = set()
    for text in texts:
        for tag in TAGS:
            text = text.replace(tag, " ")
        for word in words_of(text):
            words.add(word)
    words.update(str(n) for n in range(100))
    specials = [PAD, EOS, UNK, *TAGS]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in sorted(words - set(specials)):
        vocab[word] = len(vocab)

    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    core.add_special_tokens([AddedToken(t, normalized=False) for t in (PAD, EOS, UNK)])
    core.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=4096,
    )
