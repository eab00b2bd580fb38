"""A calculator's check of a solution: every ``a op b = c`` it writes must state the right ``c``.

A small model slips in arithmetic (``17 + 8 = 24``), and more often at a useful sampling temperature than greedily;
a vote then counts those slips as if they were other readings of the question. Recomputing each written
equation needs no model and no reference answer, so a vote can leave such samples out (``check_arithmetic`` of
the sampling strategies).

Only a lone binary equation is checked: two plain numbers, one operator, ``=``, one number. An equation inside a
longer expression (``3 + 4 * 2 = 11``), one with units or a percent sign, or one whose result the text goes on to
compute with is skipped rather than guessed at, so the check never calls right arithmetic wrong. A result written
with decimals may be rounded to them (``10 / 3 = 3.33``); an integer result must be exact (``7 / 2 = 3`` is a slip).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from ttc.verifiers.answer import scale_after

# Thousands groups only where they are complete; a comma then prose ends the number (``1,000, which``).
_NUMBER = r"\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+(?:\.\d+)?"
NUMBER = re.compile(_NUMBER)
# Looked for at every position (a lookahead), so that the links of a chain (``17 + 8 = 25 - 3 = 21``) are each
# found, not only the first, which consumes the number the next one starts with.
_EQUATION = re.compile(
    rf"(?=(?P<text>(?P<a>{_NUMBER})[ \t]*(?P<op>[-+*/×÷])[ \t]*(?P<b>{_NUMBER})[ \t]*=[ \t]*"
    rf"(?P<c>-?(?:{_NUMBER}))))"
)
_OPERATORS = "+-*/×÷^"
# Before the first operand, spaces between or not: anything that would make it part of a longer expression.
_BAD_BEFORE = set(_OPERATORS) | set(")·⋅−–")  # other times and minus signs
# The same as words or TeX, a share of (``20% of 50 + 10``, ``half of``), or a number (``2 1/2``, a mixed number;
# ``2 x 3 + 4``, read as ``2`` then ``x``). ``a total of 9 + 6 = 15`` is prose: only a share's ``of`` multiplies.
_BAD_BEFORE_WORD = re.compile(
    r"(?:\b[xX]|\\times|\\cdot|\btimes|(?:%|\d/\d+|\bhalf|\bthirds?|\bquarters?|\bfourths?|\bfifths?|"
    r"\bpercent)\s+of|\d)\Z"  # \Z: a line break ends it
)
# Right before the first operand: what would make it part of a longer number (``1,12 + 4``, ``.5 + 1``); with a
# space between, a comma or full stop is prose (``So, 12 + 4 = 15``, ``She buys 4 more. 12 + 4 = 15``).
_BAD_TOUCHING = set(".,:")  # and a time of day (``3:00 + 2``); ``Step 1: 12 + 4`` has a space after its colon
# After the result: anything that would make it an operand of more arithmetic, a longer number, or a percent.
_BAD_AFTER = set(_OPERATORS) | set("%(")
# ``2 + 3 = 5 x 2``: the result is an operand of a product written as a word, a letter or TeX (a number must
# follow: ``it rang 3 * 4 = 12 times`` and ``= 16 – so she`` are prose).
_BAD_AFTER_WORD = re.compile(r"(?:[xX·⋅−–]|\\times|\\cdot|times\b)[ \t]*\d")
# ``7 / 2 = 3 remainder 1``: the result goes on past c, so the equation is not ``a / b = c`` alone.
_REMAINDER = re.compile(r"(?:remainder|rem\b|r\s*\d|with\s+\d+\s+left)", re.IGNORECASE)


@dataclass(frozen=True)
class Equation:
    """One lone ``a op b = c`` as written, with where it starts in the text."""

    a: str
    op: str
    b: str
    c: str
    start: int
    text: str


def value(number: str) -> Fraction:
    """The exact value of a number as the solutions write it (``1,200``, ``2.5``)."""
    return Fraction(number.replace(",", ""))


def _exact(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*×":
        return a * b
    return a / b if b != 0 else None


def _decimals(number: str) -> int:
    return len(number.split(".")[1]) if "." in number else 0


def _stands_alone(text: str, start: int, end: int) -> bool:
    if start and (text[start - 1].isalnum() or text[start - 1] in _BAD_TOUCHING):  # glued: ``a3 + 4 = 7``
        return False
    before = text[:start].rstrip(" \t")
    if before and (before[-1] in _BAD_BEFORE or _BAD_BEFORE_WORD.search(before)):
        return False
    after = text[end:].lstrip(" \t")
    if not after:
        return True
    if after[0] in _BAD_AFTER or after[0].isdigit() or _REMAINDER.match(after) or _BAD_AFTER_WORD.match(after):
        return False
    return not (after[0] == "." and after[1:2].isdigit())


def lone_equations(text: str) -> Iterator[Equation]:
    """The lone binary equations of ``text`` in order; those inside longer expressions are not yielded."""
    for match in _EQUATION.finditer(text):
        start, end = match.span("text")
        if _stands_alone(text, start, end):
            yield Equation(match["a"], match["op"], match["b"], match["c"], start, match["text"])


def arithmetic_slips(text: str) -> list[str]:
    """The lone binary equations of ``text`` whose stated result is wrong, as written, in order.

    A result with scale words (``2,500,000 * 2 = 5 million``) may mean its scaled value or, like ``7 dozen`` for
    "how many dozens", its number alone; which one the text cannot say, so it is a slip only where it is neither.
    """
    slips = []
    for eq in lone_equations(text):
        exact = _exact(value(eq.a), eq.op, value(eq.b))
        tolerance = Fraction(1, 2 * 10 ** _decimals(eq.c)) if _decimals(eq.c) else Fraction(0)
        factor = scale_after(text, eq.start + len(eq.text))
        factors = (1,) if factor is None else (1, factor)
        if exact is None or all(abs(exact - value(eq.c) * f) > tolerance * f for f in factors):
            slips.append(eq.text)
    return slips


def computes_right(text: str) -> bool:
    """Whether every lone binary equation of ``text`` states its exact (or correctly rounded) result."""
    return not arithmetic_slips(text)


__all__ = ["NUMBER", "Equation", "arithmetic_slips", "computes_right", "lone_equations", "value"]
