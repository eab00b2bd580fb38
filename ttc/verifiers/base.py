"""Verifier protocols. A verifier turns a (question, solution) into a number that ranks solutions.

Both are async because both real kinds run a model on a backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from ttc.errors import ConfigError

Aggregation = Literal["min", "last", "prod", "mean"]


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
        return float(math.prod(step_scores))
    if how == "mean":
        return float(sum(step_scores) / len(step_scores))
    raise ConfigError(f"unknown aggregation {how!r}: use one of min, last, prod, mean")


def split_steps(solution: str, delimiter: str = "\n") -> list[str]:
    """Steps of a solution: pieces between delimiters, stripped of surrounding whitespace, empty ones dropped."""
    return [piece.strip() for piece in solution.split(delimiter) if piece.strip()]


class StepwiseOutcome:
    """Uses a process verifier as an outcome verifier: the solution's steps scored, then aggregated."""

    def __init__(self, prm: ProcessVerifier, *, how: Aggregation = "min", delimiter: str = "\n") -> None:
        self.prm = prm
        self.how: Aggregation = how
        self.delimiter = delimiter

    async def score(self, question: str, solution: str) -> float:
        steps = split_steps(solution, self.delimiter)
        if not steps:
            return 0.0
        return aggregate(await self.prm.score_steps(question, steps), self.how)


__all__ = ["Aggregation", "OutcomeVerifier", "ProcessVerifier", "StepwiseOutcome", "aggregate", "split_steps"]
