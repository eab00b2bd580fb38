"""Verifier protocols. A verifier turns a (question, solution) into a number that ranks solutions.

Both are async because both real kinds run a model on a backend.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar, runtime_checkable

from ttc.errors import ConfigError, ContextLengthError, VerifierError

T = TypeVar("T")

Aggregation = Literal["min", "last", "prod", "mean"]
AGGREGATIONS: tuple[Aggregation, ...] = ("min", "last", "prod", "mean")


@runtime_checkable
class OutcomeVerifier(Protocol):
    """Scores a whole solution (an ORM, a judge, a PRM aggregated over its steps)."""

    async def score(self, question: str, solution: str) -> float: ...


@runtime_checkable
class ProcessVerifier(Protocol):
    """Scores each step of a solution: element i is the probability that steps 0..i are correct."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]: ...


def aggregate(step_scores: Sequence[float], how: Aggregation = "min") -> float:
    """Collapse per-step scores into one: ``min`` (the weakest step), ``last``, ``prod``, ``mean``."""
    if not step_scores:
        raise ConfigError("cannot aggregate an empty list of step scores: the solution has no steps")
    if how == "min":
        return float(min(step_scores))
    if how == "last":
        return float(step_scores[-1])
    if how == "prod":
        if any(score < 0 for score in step_scores):  # two negatives make a positive: the worse path would rank first
            raise VerifierError(f"the product of step scores needs scores >= 0 (probabilities), got {min(step_scores)}"
                                ": aggregate a verifier that scores below 0 (logits) by min, last or mean")
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    raise ConfigError(f"unknown aggregation {how!r}: use one of min, last, prod, mean")


class UnreadableSolution(VerifierError):
    """A solution this verifier cannot read, whatever its length: a character its vocabulary has no token for, text
    that is not valid Unicode, or its own step marker written inside a step. The policy wrote it, so the other
    solutions of the question can still be judged, as those a context too short refuses are (``unscorable``)."""


@dataclass(frozen=True)
class StepScores:
    """Scores of every step, and what computing them cost: tokens not scored before, steps found cached."""

    scores: tuple[float, ...]
    scored_tokens: int = 0
    cached_steps: int = 0
    requests: int | None = None
    """Backend calls the scoring made, where the verifier counts them (one per new step for a judge that asks
    about each step); None: one call, unless every step came from the cache."""

    @property
    def calls(self) -> int:
        """Verifier calls this scoring made: none where every step came from the cache."""
        if self.requests is not None:
            return self.requests
        return int(self.cached_steps < len(self.scores))


@runtime_checkable
class CostedProcessVerifier(Protocol):
    """A process verifier that also reports what each scoring cost (the PRM adapters do)."""

    async def score_steps_detailed(self, question: str, steps: Sequence[str]) -> StepScores: ...


async def score_steps_costed(prm: ProcessVerifier, question: str, steps: Sequence[str]) -> StepScores:
    """Step scores with their cost; a verifier that cannot report cost is charged nothing. A caller's verifier
    returns anything: scores that are not one per step would be aggregated over the wrong steps (a dict's keys,
    a single score for a whole path), so they are refused here, as a tree search refuses them."""
    if isinstance(prm, CostedProcessVerifier):
        method = "score_steps_detailed"
        scored = await _awaited(prm, method, prm.score_steps_detailed(question, steps))
        if not isinstance(scored, StepScores):
            raise VerifierError(f"{type(prm).__name__}.{method} returned {type(scored).__name__} {scored!r:.60}: it "
                                "must return a ttc.verifiers.base.StepScores (or define score_steps alone, returning "
                                "one score per step)")
        values: object = scored.scores
    else:
        method = "score_steps"
        values = await _awaited(prm, method, prm.score_steps(question, steps))
        scored = StepScores(())
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise VerifierError(f"{type(prm).__name__}.{method} returned {values!r:.60}: it must return one score per "
                            "step, in step order (a list of floats)")
    scores = tuple(values)
    if len(scores) != len(steps):
        raise VerifierError(f"the process verifier {type(prm).__name__} returned {len(scores)} scores for "
                            f"{len(steps)} steps: {method} must return one score per step")
    return replace(scored, scores=tuple(_check_score(prm, value) for value in scores))


async def score_outcome_costed(verifier: OutcomeVerifier, question: str,
                               solution: str) -> tuple[float, int, int]:
    """An outcome score, the verifier tokens it cost and the verifier calls it made (both known for PRMs used
    through StepwiseOutcome; any other verifier counts as one call of unknown tokens)."""
    if isinstance(verifier, StepwiseOutcome):
        value, tokens, calls = await verifier.score_detailed(question, solution)
    else:
        value, tokens, calls = await _awaited(verifier, "score", verifier.score(question, solution)), 0, 1
    return _check_score(verifier, value), tokens, calls


def unscorable(exc: BaseException) -> str | None:
    """Why a verifier failed on this one solution alone, or None where it failed otherwise: ``verifier_context``
    where the solution does not fit its context (the error itself, or what it was raised from, is a
    ContextLengthError), ``verifier_unreadable`` where it holds text the verifier cannot read (an
    ``UnreadableSolution``). The others of its question can still be judged, so a strategy leaves it unscored
    rather than failing the question that paid for every sample."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ContextLengthError):
            return "verifier_context"
        if isinstance(seen, UnreadableSolution):
            return "verifier_unreadable"
        seen = seen.__cause__
    return None


async def _awaited(verifier: object, method: str, result: Awaitable[T]) -> T:
    """The result of a verifier's async method; a plain ``def`` passes the protocol's attribute check and then
    failed at the ``await`` with a raw TypeError."""
    if not inspect.isawaitable(result):  # typed as awaitable; a caller's plain def returns anything
        raise VerifierError(f"{type(verifier).__name__}.{method} must be a coroutine function (async def), as the "
                            "verifier protocols declare it")
    return await result


def _check_score(verifier: object, value: object) -> float:
    """The score as a float; scores are compared, summed, apportioned and stored, so a NaN or a string would fail
    far from its cause. Any real number is one (a numpy ``float32`` too), and is written to traces as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise VerifierError(f"{type(verifier).__name__} returned the score {value!r}: a verifier's scores must be "
                            "finite numbers")
    return float(value)


def split_steps(solution: str, delimiter: str = "\n") -> list[str]:
    """Steps of a solution: pieces between delimiters, stripped of surrounding whitespace, empty ones dropped."""
    return [piece.strip() for piece in solution.split(delimiter) if piece.strip()]


class StepwiseOutcome:
    """Uses a process verifier as an outcome verifier: the solution's steps scored, then aggregated."""

    def __init__(self, prm: ProcessVerifier, *, how: Aggregation = "min", delimiter: str = "\n") -> None:
        if how not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {how!r}: use one of {', '.join(AGGREGATIONS)}")
        if not isinstance(delimiter, str) or not delimiter:
            raise ConfigError(f"the step delimiter must be a non-empty string, got {delimiter!r}")
        self.prm = prm
        self.how: Aggregation = how
        self.delimiter = delimiter

    async def score(self, question: str, solution: str) -> float:
        return (await self.score_detailed(question, solution))[0]

    async def score_detailed(self, question: str, solution: str) -> tuple[float, int, int]:
        """The score, the tokens scored anew and the calls made (none where every step was cached)."""
        steps = split_steps(solution, self.delimiter)
        if not steps:
            return 0.0, 0, 0
        result = await score_steps_costed(self.prm, question, steps)
        return aggregate(result.scores, self.how), result.scored_tokens, result.calls


__all__ = [
    "Aggregation",
    "CostedProcessVerifier",
    "OutcomeVerifier",
    "ProcessVerifier",
    "StepScores",
    "StepwiseOutcome",
    "UnreadableSolution",
    "aggregate",
    "score_outcome_costed",
    "score_steps_costed",
    "split_steps",
    "unscorable",
]
