"""A provenance check of a solution: every number it computes with must have been given before it is used.

One of a small model's confident mistakes in a word problem is a misread operand: a number that is in neither the
question nor anything the solution has written so far (``6 + 4 = 10`` where the question has a 3 and a 4, and no
line made a 6). The wrong chain that follows can still land on the right number, and wrong chains that share a
misreading share a wrong answer, which is how such samples mislead a vote. Like the calculator's check
(``ttc.verifiers.arithmetic``) this needs no model and no reference answer, so a vote can leave such samples out
(``check_operands`` of the sampling strategies).

A number counts as given when the question states it (in digits, or as a common number word: ``three``,
``twenty-five``, ``twice``, ``dozen``, ``million``; ``half`` gives 2 and 0.5, a percent 100 and 0.01, ``25%`` also
0.25, ``5 million`` also 5000000) or the solution writes it anywhere before the equation that uses it (``An hour
has 60 minutes, so 3 * 60 = 180``). Only the operands of lone ``a op b = c`` equations are checked, read as the
calculator's check reads them, and not those of a link of a chain (``= 2 * 7 = 14``), which rewrites the expression
before it. A solution that computes with a constant it never states (``3 * 60 = 180`` with no 60 before it) fails,
so switch the check on only where problems state all their data or solutions state their constants, as the
synthetic benchmark's do.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ttc.verifiers.answer import SCALES, scale_after
from ttc.verifiers.arithmetic import NUMBER, lone_equations, value

_SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORDS: dict[str, tuple[Fraction, ...]] = {
    **{word: (Fraction(n),) for n, word in enumerate(_SMALL)},
    **{word: (Fraction(20 + 10 * n),) for n, word in enumerate(_TENS)},
    **{word: (Fraction(factor),) for word, factor in SCALES.items()},  # hundred, ..., trillion, dozen
    "twice": (Fraction(2),), "double": (Fraction(2),), "doubles": (Fraction(2),),
    "triple": (Fraction(3),), "triples": (Fraction(3),), "thrice": (Fraction(3),),
    "half": (Fraction(2), Fraction(1, 2)), "halves": (Fraction(2), Fraction(1, 2)),
    "third": (Fraction(3), Fraction(1, 3)), "thirds": (Fraction(3), Fraction(1, 3)),
    "quarter": (Fraction(4), Fraction(1, 4)), "quarters": (Fraction(4), Fraction(1, 4)),
    "fourth": (Fraction(4), Fraction(1, 4)), "fourths": (Fraction(4), Fraction(1, 4)),
    "fifth": (Fraction(5), Fraction(1, 5)), "fifths": (Fraction(5), Fraction(1, 5)),
    "dozens": (Fraction(12),),
    "percent": (Fraction(100), Fraction(1, 100)), "%": (Fraction(100), Fraction(1, 100)),
}
_WORD = re.compile(r"%|\b(?:" + "|".join(w for w in _WORDS if w != "%") + r")\b", re.IGNORECASE)
# ``twenty-five``, ``thirty two``: a tens word and a unit word name one number.
_COMPOUND = re.compile(rf"\b({'|'.join(_TENS)})[- ]({'|'.join(_SMALL[1:10])})\b", re.IGNORECASE)
# ``25%``, ``25 percent``: the rate is 25 and also 0.25.
_PERCENT = re.compile(rf"({NUMBER.pattern})\s*(?:%|percent\b)", re.IGNORECASE)


# ``$.75``: a number that starts at its decimal point.
_BARE_DECIMAL = re.compile(r"(?<![\d.])\.\d+")


def _given(text: str) -> set[Fraction]:
    """The numbers ``text`` gives; a number with scale words gives its scaled value too (``5 million``: 5 and
    5000000), as a solution computes with either."""
    numbers = list(NUMBER.finditer(text))
    found = {value(m.group(0)) for m in numbers}
    found |= {value(m.group(0)) * factor for m in numbers if (factor := scale_after(text, m.end()))}
    found |= {value(f"0{m.group(0)}") for m in _BARE_DECIMAL.finditer(text)}
    found |= {Fraction(_TENS.index(m.group(1).lower()) * 10 + 20 + _SMALL.index(m.group(2).lower()))
              for m in _COMPOUND.finditer(text)}
    found |= {value(m.group(1)) / 100 for m in _PERCENT.finditer(text)}
    return found.union(*(_WORDS[m.group(0).lower()] for m in _WORD.finditer(text)))


def unsourced_operands(question: str, solution: str) -> list[str]:
    """Operands of ``solution``'s lone equations that neither ``question`` nor the solution before them gives."""
    from_question = _given(question)
    missing = []
    for eq in lone_equations(solution):
        given = from_question | _given(solution[: eq.start])
        # A link of a chain (``2 * (3 + 4) = 2 * 7 = 14``) rewrites what stands before its ``=``: its operands are
        # values of that expression's parts, which this check does not compute, so it is not judged.
        before = solution[: eq.start].rstrip(" \t")
        if before.endswith("=") and before[:-1].rstrip(" \t")[-1:] in tuple("0123456789)"):  # not ``Total = 6 + 4``
            continue
        missing += [operand for operand in (eq.a, eq.b) if value(operand) not in given]
    return missing


def operands_sourced(question: str, solution: str) -> bool:
    """Whether every number ``solution`` computes with was given by ``question`` or written earlier in it."""
    return not unsourced_operands(question, solution)


__all__ = ["operands_sourced", "unsourced_operands"]
