"""Majority and weighted voting over final answers (self-consistency and its verifier-weighted variants).

Answers are grouped by ``normalize_answer`` key, not by pairwise math-verify checks: those would cost O(n^2)
worker round trips per vote, and a vote runs after every sampling round. The key unifies the spellings of an exact
number (``0.5``, ``1/2`` and ``\\frac{1}{2}`` vote together), but two spellings of one answer that it does not
(``\\sqrt{8}`` and ``2\\sqrt{2}``) split their votes; that is the price of speed. A number with scale words
(``5 million``) votes apart from both its bare number and its scaled value, as it may mean either.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ttc.errors import ConfigError
from ttc.types import real_float
from ttc.verifiers.answer import check_text, normalize_answer


@dataclass(frozen=True)
class VoteResult:
    """The winning answer class: ``answer`` is its first-seen original spelling, ``key`` its normalized key."""

    answer: str | None
    key: str | None
    share: float
    tally: Mapping[str, float]

    @property
    def margin(self) -> float:
        """The leader's lead over the runner-up, as a share of the whole vote (1.0 unopposed, 0.0 with no votes):
        the batch controller grants its next rounds or searches to the questions where it is smallest."""
        ranked = sorted(self.tally.values(), reverse=True)
        total = sum(ranked)
        if not ranked or total <= 0:
            return 0.0
        return (ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)) / total


def _checked_weights(answers: Sequence[str | None], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(answers)
    if len(weights) != len(answers):
        raise ConfigError(
            f"majority_vote got {len(answers)} answers but {len(weights)} weights; pass one weight per answer"
        )
    checked: list[float] = []
    for index, weight in enumerate(weights):
        value = real_float(weight)
        if value is None or not math.isfinite(value) or value < 0:
            raise ConfigError(f"vote weight #{index} is {weight!r}; weights must be finite numbers >= 0")
        checked.append(value)
    return checked


def _check_vote(answers: Sequence[str | None], rng: random.Random | None) -> None:
    """Refuse, as a ConfigError, what would fail later as an AttributeError far from its cause (an int answer
    when it is normalized, an rng only at the first tie) or vote on each letter of one string."""
    if isinstance(answers, str):
        raise ConfigError("majority_vote takes a list of answers, got one string; pass [answer]")
    for index, answer in enumerate(answers):
        if answer is not None:
            check_text(answer, f"vote answer #{index}")
    if rng is not None and not isinstance(rng, random.Random):
        raise ConfigError(f"rng must be a random.Random (e.g. random.Random(seed)) or None, got {type(rng).__name__}")


def vote_weights(scores: Sequence[float | None], answers: Sequence[str | None] | None = None) -> list[float]:
    """Verifier scores (any real numbers: a numpy ``float32`` too) as the weights of a weighted vote.

    A weight is a share of belief: a negative score (a reward model's logit) weighs nothing, as 0 does, and an
    unscored candidate weighs 1. Where every weight is 0 the verifier prefers nothing, and the vote is a plain
    count: all-zero weights would tie every answer and leave the winner to the tie-break, whatever the counts.
    Given ``answers`` (one per score), a candidate whose answer casts no vote weighs 0, so that only the votes
    cast decide whether the verifier prefers any: a positive score on a sample that states no answer would
    otherwise keep the count from applying and leave the winner to the tie-break all the same.
    Rank by ``select="score"`` to use such scores' order rather than their size.
    """
    if answers is not None and len(answers) != len(scores):
        raise ConfigError(f"vote_weights got {len(scores)} scores but {len(answers)} answers; pass one answer per "
                          "score")
    weights: list[float] = []
    for index, score in enumerate(scores):
        value = 1.0 if score is None else real_float(score)
        if value is None:
            raise ConfigError(f"score #{index} is {score!r}; pass each verifier score as a number within float range, "
                              "or None for an unscored candidate")
        weights.append(max(value, 0.0) if answers is None or _votes(answers[index], index) else 0.0)
    return weights if any(weights) else [1.0] * len(weights)


def _votes(answer: str | None, index: int) -> bool:
    """Whether ``majority_vote`` counts this answer (None, and one that normalizes to nothing, do not vote)."""
    return answer is not None and bool(normalize_answer(check_text(answer, f"vote answer #{index}")))


def majority_vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    rng: random.Random | None = None,
) -> VoteResult:
    """The answer class with the largest total weight.

    None answers (and answers that normalize to nothing, as one nested too deeply to read does) do not vote. Ties
    go to ``rng.choice`` over the tied keys in sorted order, so a seeded rng gives the same winner every time;
    without an rng, to the key seen first. Sums use ``math.fsum`` so that the order of the answers cannot change
    the winner.
    """
    _check_vote(answers, rng)
    checked = _checked_weights(answers, weights)
    members: dict[str, list[float]] = {}
    first_spelling: dict[str, str] = {}
    for answer, weight in zip(answers, checked, strict=True):
        if answer is None:
            continue
        key = normalize_answer(answer)
        if not key:
            continue
        members.setdefault(key, []).append(weight)
        first_spelling.setdefault(key, answer)
    if not members:
        return VoteResult(answer=None, key=None, share=0.0, tally=MappingProxyType({}))
    tally, total = _tally(members)
    best = max(tally.values())
    tied = [key for key, total in tally.items() if total == best]
    if len(tied) == 1:
        winner = tied[0]
    elif rng is not None:
        winner = rng.choice(sorted(tied))
    else:
        winner = tied[0]  # dicts keep insertion order, so this is the first-seen key
    share = tally[winner] / total if total > 0 else 0.0
    return VoteResult(answer=first_spelling[winner], key=winner, share=share, tally=MappingProxyType(tally))


def _tally(members: dict[str, list[float]]) -> tuple[dict[str, float], float]:
    """Each class's total weight and the sum of all. Weights near the float limit (a verifier's 1e308) overflow
    the sums: they are then summed in units of the largest weight, which keeps the winner and its share (the
    tally, recorded in traces, is then in those units)."""
    try:
        tally = {key: math.fsum(values) for key, values in members.items()}
        return tally, math.fsum(tally.values())
    except OverflowError:
        unit = max(max(values) for values in members.values())
        tally = {key: math.fsum(value / unit for value in values) for key, values in members.items()}
        return tally, math.fsum(tally.values())


__all__ = ["VoteResult", "majority_vote", "vote_weights"]
