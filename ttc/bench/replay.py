"""One pool of samples replayed to every arm of a comparison, so that arms differ only in how they spend samples.

Two ways of spending samples (an even split against a pooled batch, 8 samples against 16), each on draws of its
own, differ by two or three points over a few hundred problems from the sampling alone, which hides what the
comparison is about. :class:`ReplayBackend` hands every arm the same samples (common random numbers): the i-th
sample any arm asks of a prompt, with the same sampling settings, is the i-th the model ever drew for it. Samples
are drawn from the wrapped backend the first time they are asked for and kept; :meth:`ReplayBackend.rewind`
starts the next arm again from each prompt's first sample. :class:`ScoreCache` does the same for a verifier's
scores, which are a pure function of the question and the solution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import anyio

from ttc.backends.base import Backend, BackendStats
from ttc.errors import ConfigError
from ttc.types import Completion, PromptLogprobs, Sampling
from ttc.verifiers.base import OutcomeVerifier, score_outcome_costed

_Key = tuple[tuple[int, ...], Sampling]


class ReplayBackend:
    """A backend that replays each prompt's samples, in the order they were first drawn, to every caller."""

    draws_distinct: ClassVar[bool] = False
    """Replayed samples are the independent draws of one pool: ``Sampling(distinct=True)`` is refused."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._drawn: dict[_Key, list[Completion]] = {}
        self._cursor: dict[_Key, int] = {}
        self._locks: dict[_Key, anyio.Lock] = {}
        self.fresh_samples = 0  # drawn from the wrapped backend, once each

    @property
    def name(self) -> str:
        return f"replay({self.inner.name})"

    @property
    def eos_token_id(self) -> int | None:
        return self.inner.eos_token_id

    def rewind(self) -> None:
        """Start the next arm from every prompt's first sample."""
        self._cursor.clear()

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        """The next ``n`` samples of this prompt and these settings (the seed aside: the pool's first draw set it)."""
        if sampling.distinct:
            raise ConfigError("a replayed pool hands out independent samples in turn and cannot draw without "
                              "replacement: compare Sampling(distinct=True) arms on the local engine directly")
        key = (tuple(prompt), replace(sampling, seed=None))
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            drawn = self._drawn.setdefault(key, [])
            start = self._cursor.get(key, 0)
            missing = start + n - len(drawn)
            if missing > 0:
                fresh = await self.inner.complete(prompt, missing, pool_sampling(sampling, len(drawn)))
                drawn.extend(fresh)
                self.fresh_samples += len(fresh)
            self._cursor[key] = start + n
            return drawn[start:start + n]

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return await self.inner.tokenize(text, add_special_tokens=add_special_tokens)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return await self.inner.detokenize(token_ids)

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        return await self.inner.prompt_logprobs(prompt, top_k)

    async def release(self, prompt: Sequence[int]) -> None:
        await self.inner.release(prompt)

    def stats(self) -> BackendStats:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def pool_sampling(sampling: Sampling, drawn: int) -> Sampling:
    """The settings of a draw that extends a pool of ``drawn`` samples: the pool's first draw keeps its seed, and
    each later one gets a seed of its own, derived from that seed and the pool's size. A seeded backend asked
    again with the first seed would hand back its first samples again, as copies."""
    if drawn == 0 or sampling.seed is None:
        return sampling
    mixed = hashlib.sha256(f"{sampling.seed}:{drawn}".encode()).digest()
    return replace(sampling, seed=int.from_bytes(mixed[:8], "big") >> 1)


class ScoreCache:
    """An outcome verifier that scores each (question, solution) once and answers repeats from memory."""

    def __init__(self, inner: OutcomeVerifier) -> None:
        self.inner = inner
        self._scores: dict[tuple[str, str], float] = {}

    async def score(self, question: str, solution: str) -> float:
        key = (question, solution)
        if key not in self._scores:
            self._scores[key] = (await score_outcome_costed(self.inner, question, solution))[0]
        return self._scores[key]


__all__ = ["ReplayBackend", "ScoreCache", "pool_sampling"]
