"""Metering a strategy's spend against its Budget.

Strategies ask the meter how much they may still request *before* each call, so a run never exceeds its budget:
with ``n`` samples of up to ``max_tokens`` each, the worst case is ``n * max_tokens`` generated tokens, and that
worst case is what the meter lets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ttc.types import Budget, Completion, Usage


class Meter:
    """Accumulates Usage and answers "how much is left" along every axis of a Budget."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic, *,
                 started: float | None = None) -> None:
        """``started`` (a reading of ``clock``) is when the wall time began, where it began before this meter:
        the questions of a batch all count the batch's wall limit from the batch's start."""
        self.budget = budget
        self._clock = clock
        self._start = clock() if started is None else started
        self._generated = 0
        self._prompt = 0
        self._cached = 0
        self._verifier_tokens = 0
        self._calls = 0
        self._verifier_calls = 0
        self._peak_kv = 0

    # -- what is left -------------------------------------------------------------------------------------------
    def tokens_left(self) -> int | None:
        return None if self.budget.tokens is None else max(0, self.budget.tokens - self._generated)

    def calls_left(self) -> int | None:
        return None if self.budget.calls is None else max(0, self.budget.calls - self._calls)

    def time_left(self) -> float | None:
        return None if self.budget.wall_s is None else max(0.0, self.budget.wall_s - self.elapsed())

    def elapsed(self) -> float:
        return self._clock() - self._start

    def exhausted(self) -> bool:
        tokens, calls, left_s = self.tokens_left(), self.calls_left(), self.time_left()
        return tokens == 0 or calls == 0 or left_s == 0.0

    def plan(self, n: int, max_tokens: int, *, reserve: int = 0) -> tuple[int, int]:
        """The (samples, max_tokens per sample) to request now: at most (n, max_tokens), within budget.

        The worst case of a call is ``samples * max_tokens`` generated tokens, so that is what must fit. When it
        does not, the number of samples is kept and ``max_tokens`` trimmed to an equal share of what is left (the
        caller asked for that many samples); only when less than one token per sample is left are samples
        dropped. ``reserve`` tokens are kept back for a later call of the caller's (a synthesis after the
        samples). Returns (0, 0) when nothing more may be generated.
        """
        if self.exhausted() or n < 1 or max_tokens < 1:
            return 0, 0
        left = self.tokens_left()
        if left is None:
            return n, max_tokens
        left = max(0, left - reserve)
        if left >= n * max_tokens:
            return n, max_tokens
        share = left // n
        return (n, share) if share >= 1 else (left, 1) if left else (0, 0)

    def allow(self, *, tokens: int | None, calls: int | None) -> None:
        """Let at most ``tokens`` more generated tokens and ``calls`` more backend calls through from now on.

        A pooled batch grants a question its budget one search at a time: the controller reserves a grant from the
        batch's pool, and the question's meter then stops the search at that grant (``None``: no limit on that
        axis), so the pool is never overdrawn whatever the search decides to spend.
        """
        self.budget = replace(self.budget, tokens=None if tokens is None else self._generated + tokens,
                              calls=None if calls is None else self._calls + calls)

    # -- recording ----------------------------------------------------------------------------------------------
    def charge(self, completions: Sequence[Completion], *, calls: int = 1) -> None:
        """Record one backend call's completions (prompt tokens are counted once per call)."""
        self._calls += calls
        self._generated += sum(len(c.token_ids) for c in completions)
        if completions:
            self._prompt += completions[0].prompt_tokens
            self._cached += completions[0].cached_prompt_tokens

    def charge_verifier(self, tokens: int, *, calls: int = 1) -> None:
        self._verifier_tokens += tokens
        self._verifier_calls += calls

    def note_kv(self, live_tokens: int) -> None:
        self._peak_kv = max(self._peak_kv, live_tokens)

    def usage(self) -> Usage:
        return Usage(
            generated_tokens=self._generated,
            prompt_tokens=self._prompt,
            cached_prompt_tokens=self._cached,
            verifier_tokens=self._verifier_tokens,
            backend_calls=self._calls,
            verifier_calls=self._verifier_calls,
            peak_kv_tokens=self._peak_kv,
            wall_s=round(self.elapsed(), 6),
        )


__all__ = ["Meter"]
