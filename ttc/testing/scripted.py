"""A deterministic scripted backend for unit tests of strategy logic and for dry runs of the pipeline.

Tokens are Unicode code points (one token per character), so token counts are exact and easy to reason about in
tests. Each sample's text comes from a *responder*: a function of (prompt text, sample index, seed), or a list of
texts handed out in order. ``max_tokens`` truncation, stop strings and logprobs behave as on a real backend.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import anyio

from ttc.backends.base import BackendStats
from ttc.errors import BackendError, ConfigError
from ttc.types import Completion, PromptLogprobs, Sampling

Responder = Callable[[str, int, int | None], str]


@dataclass(frozen=True)
class Call:
    prompt: tuple[int, ...]
    n: int
    sampling: Sampling


class ScriptedBackend:
    """Answers ``complete`` from a responder; records every call for assertions."""

    draws_distinct: ClassVar[bool] = False
    """A script is replayed, not drawn from: ``Sampling(distinct=True)`` is refused."""

    def __init__(self, responses: Responder | Sequence[str], *, fail_after: int | None = None,
                 delay_s: float = 0.0) -> None:
        if not callable(responses) and not responses:
            raise ConfigError("ScriptedBackend needs a responder function or a non-empty list of texts")
        self._responses = responses
        self._cursor = 0
        self._fail_after = fail_after
        self._delay_s = delay_s
        self.calls: list[Call] = []
        self.released: list[tuple[int, ...]] = []
        self._generated = 0
        self._prompt_tokens = 0
        self._scored = 0

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def eos_token_id(self) -> int | None:
        return None

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) for ch in text]

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if sampling.distinct:
            raise ConfigError("the scripted backend replays its script and cannot draw without replacement: "
                              "use the local engine for Sampling(distinct=True)")
        if self._fail_after is not None and len(self.calls) >= self._fail_after:
            raise BackendError("scripted backend refused the call (fail_after reached)", kind="complete",
                               url="scripted://", retryable=False)
        self.calls.append(Call(tuple(prompt), n, sampling))
        if self._delay_s:
            await anyio.sleep(self._delay_s)
        prompt_text = await self.detokenize(prompt)
        out = [self._complete_one(prompt_text, len(prompt), i, sampling) for i in range(n)]
        self._prompt_tokens += len(prompt)
        self._generated += sum(len(c.token_ids) for c in out)
        return out

    def _complete_one(self, prompt_text: str, prompt_len: int, index: int, sampling: Sampling) -> Completion:
        text = self._next_text(prompt_text, index, sampling.seed)
        finish: str = "stop"
        for stop in sampling.stop:
            at = text.find(stop)
            if at >= 0:
                text = text[: at + len(stop)]
        if len(text) > sampling.max_tokens:
            text, finish = text[: sampling.max_tokens], "length"
        ids = tuple(ord(ch) for ch in text)
        logprobs = tuple(-0.1 for _ in ids) if sampling.logprobs else None
        return Completion(text=text, token_ids=ids, finish_reason=finish,  # type: ignore[arg-type]
                          logprobs=logprobs, prompt_tokens=prompt_len)

    def _next_text(self, prompt_text: str, index: int, seed: int | None) -> str:
        if callable(self._responses):
            return self._responses(prompt_text, index, seed)
        text = self._responses[self._cursor % len(self._responses)]
        self._cursor += 1
        return text

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        ids = tuple(prompt)
        self._scored += len(ids)
        top = (None, *({t: -0.1} for t in ids[1:]))
        return PromptLogprobs(token_ids=ids, top=top)

    async def release(self, prompt: Sequence[int]) -> None:
        self.released.append(tuple(prompt))

    def stats(self) -> BackendStats:
        return BackendStats(calls=len(self.calls), prompt_tokens=self._prompt_tokens,
                            generated_tokens=self._generated, scored_tokens=self._scored)

    async def aclose(self) -> None:
        return None


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def guessing_responder(prompt_text: str, index: int, seed: int | None) -> str:
    """A stand-in "model" for dry runs: it combines numbers from the question, deterministically per seed.

    It knows nothing of the right answer; its guesses repeat often enough that voting has something to do.
    """
    numbers = [float(x) for x in _NUMBER.findall(prompt_text.replace(",", ""))][:6] or [0.0]
    digest = hashlib.sha256(f"{prompt_text}|{index}|{seed}".encode()).digest()
    a, b = numbers[digest[0] % len(numbers)], numbers[digest[1] % len(numbers)]
    op = digest[2] % 3
    value, sign = (a + b, "+") if op == 0 else (a * b, "*") if op == 1 else (a - b, "-")
    shown = f"{value:g}"
    return f"{a:g} {sign} {b:g} = {shown}\nThe answer is {shown}."


__all__ = ["Call", "Responder", "ScriptedBackend", "guessing_responder"]
