"""Incremental detokenization and stop-string detection for one generated sequence.

Decoding the whole continuation after every token costs O(n) per token; decoding only the newest token is wrong
for tokenizers whose pieces depend on their neighbours (leading-space markers, multi-byte characters split
across byte tokens). The middle road: decode a short window of recent tokens twice, with and without the newest
ones, and emit the difference once it no longer ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Text of a growing token list, plus the earliest stop string it contains."""

    def __init__(self, tokenizer: Decoder, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def copy(self) -> IncrementalDetokenizer:
        """An independent detokenizer in the same state, for a sequence that forks."""
        twin = IncrementalDetokenizer(self.tokenizer, self.stops)
        twin.ids = list(self.ids)
        twin.text = self.text
        twin._prefix_offset = self._prefix_offset
        twin._read_offset = self._read_offset
        return twin

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
            # keeps the token, so its decoded text ends in the character's first bytes (U+FFFD); vLLM holds such a
            # token back and finds the stop one token later.
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


__all__ = ["IncrementalDetokenizer"]
