"""Incremental detokenization and stop-string detection for one generated sequence.

Decoding the whole continuation after every token costs O(n) per token; decoding only the newest token is wrong
for tokenizers whose pieces depend on their neighbours (leading-space markers, multi-byte characters split
across byte tokens). The middle road: decode a short window of recent tokens twice, with and without the newest
ones, and emit the difference once it no longer ends in an incomplete character (U+FFFD).

A continuation is decoded after the last few tokens of its prompt, as vLLM does: SentencePiece-style decoders
drop the leading space of a text's first token, so decoded alone a continuation would lose the space it starts
with, and a stop string starting with that space would never be found.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

_CONTEXT_TOKENS = 6
_MAX_CONTEXT_TOKENS = 24


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Text of a growing token list, plus the earliest stop string it contains."""

    def __init__(self, tokenizer: Decoder, stops: Sequence[str] = (), prompt: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = _context(tokenizer, prompt)
        self._context = len(self.ids)
        self._context_text = tokenizer.decode(self.ids)
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = self._context

    def copy(self) -> IncrementalDetokenizer:
        """An independent detokenizer in the same state, for a sequence that forks."""
        twin = copy.copy(self)
        twin.ids = list(self.ids)
        return twin

    @property
    def generated(self) -> list[int]:
        """The tokens pushed so far (the prompt's context tokens excluded)."""
        return self.ids[self._context :]

    def full_text(self, stopped: bool = False) -> str:
        """The text of every pushed token, decoded after the prompt's context as the streamed text is.

        Unlike ``text`` it includes a trailing incomplete character (U+FFFD), as decoding the tokens does, except
        after a stop string (``stopped``): the text ends with the earliest stop string, as vLLM's does. The token
        that completed it may hold more text (a stop ending inside a multi-character token, or the first bytes of
        a character): that is no text the model wrote before stopping, though the token stays in the ids.
        """
        whole = self.tokenizer.decode(self.ids)
        if whole.startswith(self._context_text):
            text = whole[len(self._context_text) :]
        else:  # a decoder whose context text changes with what follows
            text = self.tokenizer.decode(self.generated)
        return self._cut_at_stop(text) if stopped else text

    def _cut_at_stop(self, text: str) -> str:
        """``text`` up to the end of the stop string it ends earliest with (without a trailing U+FFFD if none)."""
        ends = [found + len(s) for s in self.stops if (found := text.find(s)) >= 0]
        return text[: min(ends)] if ends else text.rstrip("\ufffd")

    def push(self, token_id: int) -> str | None:
        """Add a token; return the stop string it completed, if any."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        after = self.tokenizer.decode(self.ids[self._prefix_offset :])
        if len(after) <= len(before):
            return None
        if after.endswith("\ufffd"):
            # The token also starts a character its successor completes: the text before that character is final,
            # and a stop string it completes is found now (it was found a token late, or never where the
            # sequence ended there), while the offsets wait for the whole character. A completion that stops there
            # keeps the token, but not the character's first bytes (U+FFFD) in its text (``full_text``); vLLM holds
            # such a token back and finds the stop one token later.
            complete = after.rstrip("\ufffd")
            if len(complete) <= len(before):
                return None
            return self._find_stop(self.text + complete[len(before) :], len(self.text))
        old_length = len(self.text)
        self.text += after[len(before) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        return self._find_stop(self.text, old_length)

    def _find_stop(self, text: str, old_length: int) -> str | None:
        """The stop string ``text`` ends earliest with, among those that end past ``old_length``."""
        if not self.stops:
            return None
        window = text[max(0, old_length - self._longest_stop + 1) :]
        found = [(window.find(s), s) for s in self.stops]
        hits = [(pos + len(s), s) for pos, s in found if pos >= 0]
        return min(hits)[1] if hits else None


def _context(tokenizer: Decoder, prompt: Sequence[int]) -> list[int]:
    """The prompt's last few tokens, as few as give whole characters: the continuation is decoded after them.

    A suffix whose text holds U+FFFD (a character cut at either end) could change its text once the continuation
    follows, so the shortest suffix from ``_CONTEXT_TOKENS`` tokens on without one is taken (where none is, no
    context: the continuation is decoded alone).
    """
    if len(prompt) <= _CONTEXT_TOKENS:
        candidates = [list(prompt)]
    else:
        candidates = [list(prompt[-n:]) for n in range(_CONTEXT_TOKENS, min(len(prompt), _MAX_CONTEXT_TOKENS) + 1)]
    for ids in candidates:
        if "\ufffd" not in tokenizer.decode(ids):
            return ids
    return []


__all__ = ["IncrementalDetokenizer"]
