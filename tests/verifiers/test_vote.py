"""Majority and weighted voting over extracted answers."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ttc.errors import ConfigError
from ttc.verifiers.vote import VoteResult, majority_vote, vote_weights

# Pure functions: a slow moment on a shared machine must not fail them.
NO_DEADLINE = settings(deadline=None)


def test_plain_majority_groups_by_normalized_key() -> None:
    result = majority_vote([r"\frac{1}{3}", "3", r"\dfrac{1}{3}", "3", r"\frac13", None])
    assert result.key == r"\frac{1}{3}"
    assert result.answer == r"\frac{1}{3}"  # the first spelling seen in the winning class
    assert result.share == pytest.approx(3 / 5)
    assert dict(result.tally) == {r"\frac{1}{3}": 3.0, "3": 2.0}


def test_spellings_of_one_rational_number_vote_together() -> None:
    """0.5, \\frac{1}{2} and 1/2 split three votes, and 0.3 won with two."""
    result = majority_vote([r"\boxed{0.5}", r"\boxed{\frac{1}{2}}", r"\boxed{1/2}", r"\boxed{0.3}", r"\boxed{0.3}"])
    assert (result.key, result.answer) == ("0.5", r"\boxed{0.5}")
    assert dict(result.tally) == {"0.5": 3.0, "0.3": 2.0}


def test_a_number_with_scale_words_votes_apart_from_its_number_and_its_value() -> None:
    """'5 million' voted with 5, its scale word dropped as a unit; then with 5000000. It may mean either ('7 dozen'
    answers "how many dozens?" as 7), so merging it with one would merge different answers."""
    result = majority_vote([r"5\text{ million}"] * 2 + ["5"] + ["5000000"] * 3)
    assert dict(result.tally) == {"5 million": 2.0, "5": 1.0, "5000000": 3.0}
    assert dict(majority_vote(["7 dozen", r"\boxed{7 \text{ dozen}}", "84", "7"]).tally) == {
        "7 dozen": 2.0, "84": 1.0, "7": 1.0}


def test_an_answer_too_deep_to_read_does_not_vote() -> None:
    """It raised a raw RecursionError, which crashed solve()."""
    nested = "\\sqrt{" * 1200 + "2" + "}" * 1200
    result = majority_vote([f"\\boxed{{{nested}}}", r"\boxed{3}"])
    assert (result.key, dict(result.tally)) == ("3", {"3": 1.0})


def test_best_of_n_passes_over_an_answer_too_deep_to_read() -> None:
    import ttc
    from ttc.testing import ScriptedBackend

    nested = "\\sqrt{" * 1200 + "2" + "}" * 1200
    backend = ScriptedBackend([f"\\boxed{{{nested}}}", r"\boxed{3}"])
    result = ttc.solve("q?", budget=100_000, strategy="best_of_n", n=2, store=False, seed=0,
                       max_tokens=len(nested) + 50, backend=backend)
    assert result.answer == "3"


def test_gsm8k_style_numbers_group_across_spellings() -> None:
    result = majority_vote(["1,000", "1000", "$1000$", "999", "1000.0"])
    assert result.key == "1000"
    assert result.answer == "1,000"
    assert result.share == pytest.approx(4 / 5)


def test_no_votes() -> None:
    assert majority_vote([]) == VoteResult(answer=None, key=None, share=0.0, tally={})
    empty = majority_vote([None, None, "  ", "$$"])
    assert (empty.answer, empty.key, empty.share, dict(empty.tally)) == (None, None, 0.0, {})


def test_weights_can_outvote_a_count_majority() -> None:
    result = majority_vote(["7", "7", "7", "9"], weights=[0.1, 0.1, 0.1, 0.9])
    assert result.key == "9"
    assert result.share == pytest.approx(0.9 / 1.2)
    assert dict(result.tally) == pytest.approx({"7": 0.3, "9": 0.9})


def test_weights_near_the_float_limit_still_vote() -> None:
    """A verifier's scores of 1e308 are finite, but their sum raised a raw OverflowError."""
    result = majority_vote(["7", "7", "9"], weights=[1e308, 1e308, 1.5e308])
    assert result.key == "7"
    assert result.share == pytest.approx(2 / 3.5)


def test_weights_of_none_answers_do_not_count() -> None:
    result = majority_vote([None, "2", "3"], weights=[100.0, 1.0, 2.0])
    assert result.key == "3"
    assert result.share == pytest.approx(2 / 3)


def test_all_zero_weights_still_pick_a_class_with_zero_share() -> None:
    result = majority_vote(["4", "5"], weights=[0.0, 0.0])
    assert result.key == "4"
    assert result.share == 0.0


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "2 answers but 1 weights"),
        ([1.0, -0.5], "#1 is -0.5"),
        ([math.nan, 1.0], "#0 is nan"),
        ([1.0, math.inf], "#1 is inf"),
    ],
)
def test_invalid_weights_are_config_errors(weights: list[float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        majority_vote(["1", "2"], weights=weights)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: majority_vote([5]), "vote answer #0 must be a string, got int"),
        (lambda: majority_vote("55"), "got one string"),
        (lambda: majority_vote(["5"], ["1"]), "#0 is '1'"),
        (lambda: majority_vote(["5"], [None]), "#0 is None"),
        (lambda: majority_vote(["5"], [True]), "#0 is True"),
        (lambda: majority_vote(["1", "2"], rng=5), "rng must be a random.Random"),
        (lambda: vote_weights(["a"]), "score #0 is 'a'"),
        (lambda: vote_weights([0.5, True]), "score #1 is True"),
    ],
)
def test_wrong_types_are_config_errors(call: Callable[[], object], message: str) -> None:
    """These raised AttributeError, TypeError or ValueError (the rng only at a tie)."""
    with pytest.raises(ConfigError, match=message):
        call()


def test_weights_and_scores_of_any_real_number_type_vote() -> None:
    """numpy scores (a verifier's float32) and other real numbers were refused as ConfigErrors, where verifier score
    checks take them; an int score past float range raised a raw OverflowError."""
    import numpy as np

    weights = list(np.array([0.9, 0.1], dtype=np.float32))
    result = majority_vote(["1", "2"], weights=weights)
    assert (result.key, result.share) == ("1", pytest.approx(0.9))
    assert majority_vote(["1", "2", "2"], weights=[Fraction(3, 4), np.int64(0), Fraction(1, 2)]).key == "1"
    assert vote_weights([np.float32(0.5), np.float64(-1.0), Fraction(1, 4), None]) == [0.5, 0.0, 0.25, 1.0]
    with pytest.raises(ConfigError, match="score #0"):
        vote_weights([10**400])
    with pytest.raises(ConfigError, match="vote weight #0"):
        majority_vote(["1"], weights=[10**400])
    with pytest.raises(ConfigError, match="vote weight #0"):
        majority_vote(["1"], weights=[np.float32("nan")])
    with pytest.raises(ConfigError, match="vote weight #0"):
        majority_vote(["1"], weights=[np.bool_(True)])  # type: ignore[list-item]


def test_voting_uses_only_public_names_of_the_answer_module() -> None:
    """It imported the private _check_text."""
    import ast

    import ttc.verifiers.vote as vote

    tree = ast.parse(Path(vote.__file__).read_text(encoding="utf-8"))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "ttc.verifiers.answer" for alias in node.names]
    assert imported and not [name for name in imported if name.startswith("_")]


def test_tie_without_rng_goes_to_the_first_seen_key() -> None:
    assert majority_vote(["b", "a", "a", "b"]).key == "b"
    assert majority_vote(["a", "b", "b", "a"]).key == "a"


def test_tie_with_rng_chooses_among_sorted_keys() -> None:
    winners = {majority_vote(["b", "a", "c"], rng=random.Random(seed)).key for seed in range(40)}
    assert winners == {"a", "b", "c"}
    for seed in range(10):
        expected = random.Random(seed).choice(["a", "b", "c"])
        assert majority_vote(["c", "b", "a"], rng=random.Random(seed)).key == expected


def test_rng_is_not_consumed_without_a_tie() -> None:
    rng = random.Random(3)
    majority_vote(["1", "1", "2"], rng=rng)
    assert rng.random() == random.Random(3).random()


ANSWERS = st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", r"\frac{1}{2}", "0.5", "x+1"])), max_size=30)


@NO_DEADLINE
@given(ANSWERS, st.randoms(use_true_random=False))
def test_permutation_does_not_change_an_untied_winner(answers: list[str | None], shuffler: random.Random) -> None:
    result = majority_vote(answers)
    values = sorted(result.tally.values(), reverse=True)
    assume(len(values) == 1 or (len(values) > 1 and values[0] > values[1]))
    shuffled = list(answers)
    shuffler.shuffle(shuffled)
    again = majority_vote(shuffled)
    assert again.key == result.key
    assert again.share == result.share
    assert dict(again.tally) == dict(result.tally)


@NO_DEADLINE
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from(["4", "5", "6", "7"])), st.floats(0, 1e6)),
        max_size=30,
    )
)
def test_share_is_a_fraction_and_tally_adds_up(votes: list[tuple[str | None, float]]) -> None:
    answers = [answer for answer, _ in votes]
    weights = [weight for _, weight in votes]
    result = majority_vote(answers, weights)
    assert 0.0 <= result.share <= 1.0
    voted = math.fsum(weight for answer, weight in votes if answer is not None)
    assert math.fsum(result.tally.values()) == pytest.approx(voted)
    if result.key is not None:
        assert result.tally[result.key] == max(result.tally.values())


@NO_DEADLINE
@given(
    st.lists(st.tuples(st.sampled_from(["4", "5", "6"]), st.integers(1, 1000)), min_size=1, max_size=30),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_scaling_weights_keeps_winner_and_share(votes: list[tuple[str, int]], scale: float) -> None:
    answers = [answer for answer, _ in votes]
    weights = [float(weight) for _, weight in votes]
    result = majority_vote(answers, weights)
    values = sorted(result.tally.values(), reverse=True)
    assume(len(values) == 1 or values[0] > values[1])
    scaled = majority_vote(answers, [weight * scale for weight in weights])
    assert scaled.key == result.key
    assert scaled.share == pytest.approx(result.share)


@NO_DEADLINE
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=20), st.integers(0, 2**32))
def test_seeded_tie_breaks_are_reproducible(answers: list[str], seed: int) -> None:
    first = majority_vote(answers, rng=random.Random(seed))
    second = majority_vote(list(reversed(answers)), rng=random.Random(seed))
    assert first.key == second.key  # ties are broken over sorted keys, so input order does not matter
    assert first == majority_vote(answers, rng=random.Random(seed))


def test_vote_weights_count_unscored_candidates_once_and_zero_weights_as_a_plain_vote() -> None:
    assert vote_weights([0.5, None, 0.25]) == [0.5, 1.0, 0.25]
    # A verifier that gives every candidate 0 prefers none: the counts decide, not the tie-break.
    assert vote_weights([0.0, 0.0, 0.0]) == [1.0, 1.0, 1.0]
    assert majority_vote(["5", "5", "6"], vote_weights([0.0, 0.0, 0.0]), rng=random.Random(3)).key == "5"


def test_a_negative_score_weighs_nothing() -> None:
    assert vote_weights([0.2, -0.1]) == [0.2, 0.0]
    assert vote_weights([-0.3, -0.1]) == [1.0, 1.0]


def test_a_score_whose_answer_casts_no_vote_weighs_nothing() -> None:
    """Only the votes cast decide whether the verifier prefers any: the non-answer's 2.0 kept the answers' zero
    weights from becoming a plain count, and the tie-break chose."""
    answers = ["7", "7", "9", None, ""]
    weights = vote_weights([-1.0, -1.0, -1.0, 2.0, 3.0], answers)
    assert weights == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(majority_vote(answers, weights, rng=random.Random(seed)).key == "7" for seed in range(8))
    assert vote_weights([0.5, 2.0], ["7", None]) == [0.5, 0.0]
    assert vote_weights([None, None], [None, "5"]) == [0.0, 1.0]
    with pytest.raises(ConfigError, match="2 scores but 1 answers"):
        vote_weights([0.5, 0.5], ["7"])
    with pytest.raises(ConfigError, match=r"score #1 is '0\.5'"):
        vote_weights([0.5, "0.5"], ["7", None])  # type: ignore[list-item]  # a non-answer's score is still checked
