"""The calculator check: wrong results of written equations are found, and nothing else is."""

from __future__ import annotations

import pytest

from ttc.verifiers.arithmetic import arithmetic_slips, computes_right


@pytest.mark.parametrize(("text", "slips"), [
    ("17 + 8 = 25\n25 - 3 = 22\nThe answer is 22.", []),
    ("17 + 8 = 24\n24 - 3 = 21\nThe answer is 21.", ["17 + 8 = 24"]),
    ("4 * 6 = 24\n24 / 3 = 9\n9 - 2 = 6", ["24 / 3 = 9", "9 - 2 = 6"]),
    ("5 - 8 = -3", []),
    ("7 / 2 = 3", ["7 / 2 = 3"]),  # an integer result must be exact
    ("10 / 3 = 3", ["10 / 3 = 3"]),
    ("10 / 3 = 3.33", []),  # a result with decimals may be rounded to them
    ("10 / 3 = 3.4", ["10 / 3 = 3.4"]),
    ("3 + 4 = 7.5", ["3 + 4 = 7.5"]),
    ("2.5 * 1.5 = 3.75", []),
    ("12 / 0 = 0", ["12 / 0 = 0"]),
    ("1,000 + 250 = 1,250 pens", []),
    ("1,000 + 250 = 1,205 pens", ["1,000 + 250 = 1,205"]),
    ("She earns <<48/2=25>>25 dollars.", ["48/2=25"]),
    ("3 × 4 = 12 and 12 ÷ 4 = 2", ["12 ÷ 4 = 2"]),
    ("so 48/2 = 25 clips", ["48/2 = 25"]),
    ("x = 3 + 4 = 8.", ["3 + 4 = 8"]),
    ("So, 12 + 4 = 15", ["12 + 4 = 15"]),  # a comma or full stop with a space after it is prose
    ("She buys 4 more. 12 + 4 = 15.", ["12 + 4 = 15"]),
    ("8 + 4 = 12, 12 + 4 = 15", ["12 + 4 = 15"]),
    # Each link of a chain is read (the first consumed the number the next starts with, and none was checked).
    ("17 + 8 = 25 - 3 = 21", ["25 - 3 = 21"]),
    ("3 * 2 + 4 * 2 = 6 + 8 = 15", ["6 + 8 = 15"]),
    # A thousands-grouped result then a comma and prose is the whole number (it was read as its first group).
    ("So she has 600 + 400 = 1,000, which she saves.", []),
    ("So she has 600 + 400 = 1,100, which she saves.", ["600 + 400 = 1,100"]),
    # Prose before or after is still prose: a label's colon, "a total of", a count of "times".
    ("Step 1: 12 + 4 = 15", ["12 + 4 = 15"]),
    ("She has a total of 12 + 4 = 15 apples.", ["12 + 4 = 15"]),
    ("He jumps 3 * 4 = 13 times.", ["3 * 4 = 13"]),
])
def test_wrong_results_are_found_as_written(text: str, slips: list[str]) -> None:
    assert arithmetic_slips(text) == slips
    assert computes_right(text) is (not slips)


@pytest.mark.parametrize("text", [
    "3 + 4 * 2 = 11",  # part of a longer expression: not a lone equation
    "4 * 2 = 11 + 3",  # the result is computed with further
    "-3 + 5 = 2",
    "5 * 3 = 15%",
    "a3 + 4 = 9",
    "He pays 5 * 3 dollars = 15",  # units between the operands and the result
    "1.5.2 + 3 = 7",
    ".5 + 1 = 3",  # touching the operand, a full stop or comma makes it part of a longer number
    "2,12 + 4 = 9",
    "7 / 2 = 3 remainder 1",  # a quotient with its remainder: the result goes on past 3
    "7 / 2 = 3 R 1",
    "22 / 5 = 4 with 2 left over",
    # Part of a longer product or difference written with a sign, a word or TeX the equation does not take, a
    # time of day, a mixed number: only the tail would be read (all of these are right as written).
    "He has 2 x 3 + 4 = 10 apples.",
    "There are 20 x 20/100 = 4 students",
    "2 · 3 + 4 = 10",
    "5 \\times 3 + 1 = 16",
    "5 \\cdot 3 + 1 = 16",
    "2 times 3 + 4 = 10",
    "20% of 50 + 10 = 20",
    "\u22125 + 10 = 5",
    "3:00 + 2 = 5:00",
    "2 1/2 = 2.5",
    "2 + 3 = 5 x 2 = 10",
])
def test_equations_it_cannot_read_alone_are_skipped(text: str) -> None:
    assert arithmetic_slips(text) == []


@pytest.mark.parametrize("text", [
    "2,500,000 * 2 = 5 million",
    "5 * 1000 = 5 thousand",
    "4000 + 1000 = 5 thousand dollars",
    "12 * 7 = 7 dozen",  # 84 is 7 dozen
    "84 / 12 = 7 dozen",  # 7, counted in dozens
    "3 + 4 = 7 dozen",  # 7 as written: which reading the text means it cannot say
])
def test_a_result_with_scale_words_is_right_by_its_number_or_its_scaled_value(text: str) -> None:
    """'2,500,000 * 2 = 5 million' was a slip: the result was read as 5, without its scale word."""
    assert arithmetic_slips(text) == []


def test_a_result_with_scale_words_that_is_neither_is_a_slip() -> None:
    assert arithmetic_slips("2 * 2 = 5 million") == ["2 * 2 = 5"]
    assert arithmetic_slips("2 * 2 = 5 hundred-dollar bills") == ["2 * 2 = 5"]  # a compound, no scale word
