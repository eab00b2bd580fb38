"""The provenance check: an operand must be given by the question or by the solution before it is used."""

from __future__ import annotations

import pytest

from ttc.bench.synthetic import EVAL_SEEDS, generate
from ttc.bench.totals import generate_totals
from ttc.verifiers.operands import operands_sourced, unsourced_operands

QUESTION = "Tom has 3 bags of 4 cups. Tom wins 4 more. Tom keeps 1 of 2 equal parts. How many cups now?"


@pytest.mark.parametrize(("solution", "missing"), [
    ("3 * 4 = 12\n12 + 4 = 16\n16 / 2 = 8\nThe answer is 8.", []),
    ("3 + 4 = 7\n6 + 4 = 10\n10 / 2 = 5\nThe answer is 5.", ["6"]),  # no 6 given anywhere before
    ("3 * 4 = 12\n12 + 4 = 16\n16 / 8 = 2", ["8"]),
    ("3 * 4 = 12\n12 + 4 = 61\n61 / 2 = 30.5", []),  # a slip is the calculator's business, not this check's
    ("12 + 4 = 16\n3 * 4 = 12", ["12"]),  # used before the line that makes it
    ("3 * 5 = 15\n15 + 7 = 22", ["5", "7"]),
])
def test_operands_nothing_gave_are_found(solution: str, missing: list[str]) -> None:
    assert unsourced_operands(QUESTION, solution) == missing
    assert operands_sourced(QUESTION, solution) is (not missing)


@pytest.mark.parametrize(("question", "solution"), [
    ("She works 3 hours. How many minutes?", "An hour has 60 minutes, so 3 * 60 = 180.\nThe answer is 180."),
    ("He buys twice as many as 7 pens.", "7 * 2 = 14"),
    ("Half of the 30 birds fly off.", "30 / 2 = 15"),
    ("Half of the 30 birds fly off.", "30 * 0.5 = 15"),
    ("A third of the 30 birds fly off.", "30 / 3 = 10"),
    ("She saves 20 percent of 50 dollars.", "50 * 0.01 = 0.5\n0.5 * 20 = 10"),
    ("A dozen eggs cost 3 dollars each.", "12 * 3 = 36"),
    ("Three friends share 1,200 dollars.", "1200 / 3 = 400"),
    ("The 80 dollar coat is 25% off.", "80 * 25 = 2000\n2000 / 100 = 20"),
    ("A ticket costs 2.50 dollars; she buys 4.", "2.5 * 4 = 10"),
    ("Tom has fifteen apples and buys thirty more.", "15 + 30 = 45"),
    ("Tom has twenty-five apples and buys 5 more.", "25 + 5 = 30"),
    ("Tom has Forty Two apples and eats 2.", "42 - 2 = 40"),
    ("A shirt costs $20 and is 25% off.", "20 * 0.25 = 5\n20 - 5 = 15"),
    ("A shirt costs $20 and is 25 percent off.", "20 * 0.25 = 5\n20 - 5 = 15"),
    ("The tank is two thirds full of 24 liters.", "24 / 3 = 8\n8 * 2 = 16"),
    ("Three quarters of the 40 pens are red.", "40 / 4 = 10\n10 * 3 = 30"),
    ("A fifth of the 40 pens are red.", "40 / 5 = 8"),
    ("Each apple costs $.75. He buys 4.", "0.75 * 4 = 3"),
    ("He pays $1,200, and then $300 more.", "1,200 + 300 = 1,500"),
    # A link of a chain rewrites the expression before it: 7 is 3 + 4.
    ("Ann buys 2 bags with 3 red and 4 blue marbles each.", "She has 2 * (3 + 4) = 2 * 7 = 14 marbles."),
])
def test_numbers_given_in_words_or_stated_before_use_count(question: str, solution: str) -> None:
    assert unsourced_operands(question, solution) == []


def test_a_label_before_an_equation_is_not_a_chain() -> None:
    """Only a link that follows an expression's ``=`` rewrites it; ``Total = 6 + 4`` still names its operands."""
    assert unsourced_operands("Tom has 3 apples and 4 pears.", "Total = 6 + 4 = 10") == ["6"]


def test_an_unstated_constant_fails() -> None:
    # The documented limit: switch the check on only where solutions state what they compute with.
    assert unsourced_operands("She works 3 hours. How many minutes?", "3 * 60 = 180") == ["60"]


def test_every_reference_solution_of_the_benchmarks_passes() -> None:
    problems = [*generate(EVAL_SEEDS.start, 400), *generate_totals(EVAL_SEEDS.start, 400)]
    for problem in problems:
        assert operands_sourced(problem.question, problem.solution), (problem.question, problem.solution)


def test_a_compound_or_a_percent_gives_only_its_own_numbers() -> None:
    assert unsourced_operands("Tom has twenty-five apples.", "26 + 3 = 29") == ["26", "3"]
    assert unsourced_operands("A shirt costs $20 and is 25% off.", "20 * 0.26 = 5.2") == ["0.26"]


@pytest.mark.parametrize(("question", "solution"), [
    ("A country has 5 million cars and 2 million trucks.", "5000000 + 2000000 = 7000000"),
    ("She buys 3 thousand eggs and 2 more.", "3000 + 2 = 3002"),
    ("She buys 3 thousand eggs and 2 more.", "3 + 2 = 5"),  # the number alone is still given
    ("A city has a million people and doubles.", "1000000 * 2 = 2000000"),
    ("A city has 1.5 billion people and doubles.", "1500000000 * 2 = 3000000000"),
])
def test_a_number_with_scale_words_gives_its_scaled_value(question: str, solution: str) -> None:
    """'5 million cars' gave only 5: the solution's 5000000 was found unsourced."""
    assert unsourced_operands(question, solution) == []


def test_a_compound_with_a_scale_word_gives_no_scaled_value() -> None:
    assert unsourced_operands("She has 5 hundred-dollar bills and 2 coins.", "500 * 2 = 1000") == ["500"]
