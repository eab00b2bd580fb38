"""A process verifier's ``preferred_aggregate`` ranks whole solutions in every strategy, and is checked up front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import ttc
from ttc import ConfigError
from ttc.testing import ScriptedBackend

QUESTION = "Ann has 12 pens. She buys 7 more. How many pens does she have?"
RIGHT, WRONG = "12 + 7 = 19\nThe answer is 19.", "12 + 7 = 20\nThe answer is 20."
# The right path's first step scores low and its last high; the wrong path's scores are middling throughout, so
# its weakest step beats the right path's while its last step loses to it.
TABLE = {"12 + 7 = 19": 0.2, "The answer is 19.": 0.9, "12 + 7 = 20": 0.3, "The answer is 20.": 0.35}


class TablePRM:
    """Scores each step from a fixed table; declares no aggregation of its own."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [TABLE[step] for step in steps]


class LastPRM(TablePRM):
    preferred_aggregate = "last"  # judges the whole prefix: the last step's score is the path's


def test_best_of_n_by_score_ranks_by_the_verifiers_preferred_aggregate() -> None:
    result = ttc.solve(QUESTION, 4000, strategy="best_of_n", n=2, select="score",
                       backend=ScriptedBackend([RIGHT, WRONG]), verifier=LastPRM(), store=False, seed=0)
    assert (result.answer, result.score) == ("19", 0.9)


def test_self_consistency_weighs_votes_by_the_verifiers_preferred_aggregate() -> None:
    # By min, 20 weighs 0.3 + 0.3 against 19's 0.2; by last, 19 weighs 0.9 against 20's 0.35 + 0.35.
    result = ttc.solve(QUESTION, 4000, strategy="self_consistency", min_samples=3, max_samples=3,
                       backend=ScriptedBackend([RIGHT, WRONG, WRONG]), verifier=LastPRM(), store=False, seed=0)
    assert result.answer == "19"


def test_a_verifier_that_states_no_preference_still_ranks_whole_solutions_by_min() -> None:
    result = ttc.solve(QUESTION, 4000, strategy="best_of_n", n=2, select="score",
                       backend=ScriptedBackend([RIGHT, WRONG]), verifier=TablePRM(), store=False, seed=0)
    assert (result.answer, result.score) == ("20", 0.3)


@pytest.mark.parametrize("value", [None, "max", 3])
@pytest.mark.parametrize("strategy", ["beam", "best_of_n"])
def test_an_unknown_preferred_aggregate_is_refused_before_anything_is_spent(tmp_path: Path, value: object,
                                                                            strategy: str) -> None:
    class Odd(TablePRM):
        preferred_aggregate = value

    backend = ScriptedBackend([RIGHT])
    db = tmp_path / "traces.db"
    with pytest.raises(ConfigError, match=r"Odd\.preferred_aggregate is .*one of min, last, prod, mean"):
        ttc.solve(QUESTION, 4000, strategy=strategy, backend=backend, verifier=Odd(), store=str(db), seed=0)
    assert backend.calls == []
    assert not db.exists()  # no trace was opened for a run that could never score
