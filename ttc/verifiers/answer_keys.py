"""Canonical keys of final answers: two answers with the same key are the same answer.

A key is what a vote groups by and what grading compares first, so only rewrites that cannot merge different
answers are applied (:func:`normalize_answer`); anything subtler is math-verify's job (:mod:`ttc.verifiers.answer`).
"""

from __future__ import annotations

import re
from fractions import Fraction

from ttc.verifiers.answer_extraction import MAX_SCALE_WORDS, SCALE_WORDS, SCALES, check_text, closing_braces

_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|boxed|fbox)\s*(?=\{)")
_SIZED_DELIMITERS = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![A-Za-z])\.?")
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]|~|\\displaystyle(?![A-Za-z])|\\quad(?![A-Za-z])|\\qquad(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
# Two letters at least: ``3+4\\mathrm{i}`` is a complex number, not 3+4 with a unit.
_TRAILING_UNIT = re.compile(
    r"\\(?:text|mbox|mathrm|textrm)\{\s*(?P<words>[A-Za-z][A-Za-z ]*[A-Za-z])\s*\}(?P<power>\^\{?[23]\}?)?$"
)
# A number and its scale words, once spacing commands are spaces: ``5 million``, ``1.5 thousand``, ``2 1/2 dozen``,
# ``\frac{1}{2} million``; ``MAX_SCALE_WORDS`` words at most.
_SCALED_NUMBER = re.compile(
    r"(?P<number>[-+]?(?:\\frac(?:\{[-+]?\d+\}|\d)(?:\{[-+]?\d+\}|\d)|[\d,.]+(?:[ \t]+\d+/\d+|/\d+)?))[ \t]*"
    rf"(?P<words>{SCALE_WORDS}(?:[ \t]+{SCALE_WORDS}){{0,{MAX_SCALE_WORDS - 1}}})"
)
# A key of a number with scale words, as ``normalize_answer`` writes one: a rational's key, a space, the words.
_SCALED_KEY = re.compile(
    rf"(?P<number>\S+) (?P<words>(?:{'|'.join(SCALES)})(?: (?:{'|'.join(SCALES)})){{0,{MAX_SCALE_WORDS - 1}}})"
)
_SCALE_WORD = re.compile(r"\b" + SCALE_WORDS)
_PLAIN_NUMBER = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+|\d*)(?:\.(\d*))?")
_MIXED_NUMBER = re.compile(r"([-+]?)(\d+)\s+(\d+)/(\d+)")
# A fraction of two integers, once its arguments are braced: ``\frac{1}{2}``, ``-\frac{1}{2}``, ``\frac{-1}{2}``,
# ``\frac{1}{-2}``, ``+1/2``, ``1/2``. Digits are bounded: a key is exact arithmetic on them, and ``int`` refuses a
# string of thousands.
_FRACTION = re.compile(
    r"([-+]?)(?:\\frac\{([-+]?\d{1,100})\}\{([-+]?\d{1,100})\}|(\d{1,100})/(\d{1,100}))"
)
_MAX_DIGITS = 100
# ``12, 345`` is a list of two numbers; squeezed to ``12,345`` it would read as twelve thousand.
_LIST_COMMA = re.compile(r"(?<=\d),\s+(?=\d)")
_LIST_MARK = ",\x00"  # a list's comma, marked before spacing commands (``10,\!080``) become spaces
_WHITESPACE = re.compile(r"(\\[A-Za-z]+)?\s+(?=([A-Za-z])?)")
_FRAC_OR_SQRT = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")
_CONTROL_SEQUENCE = re.compile(r"\\(?:[A-Za-z]+|.)", re.DOTALL)
_MAX_NESTING = 100
"""Deeper than any answer a person writes: a text nested past it (a sample looping on ``\\sqrt{``) is not read, as
no reference answer is like it, and math-verify would only exhaust its recursion on it."""


def _nesting_depth(closes: dict[int, int]) -> int:
    """How many closed groups the deepest point of a text lies in, from its :func:`closing_braces` map."""
    depth = 0
    enclosing: list[int] = []  # where the groups around the current one close, innermost last
    for start in sorted(closes):
        while enclosing and enclosing[-1] < start:
            enclosing.pop()
        enclosing.append(closes[start])
        depth = max(depth, len(enclosing))
    return depth


def _unwrap_whole(text: str, closes: dict[int, int]) -> str:
    """``\\text{(C)}`` -> ``(C)``: a wrapper around the entire answer carries no meaning of its own. It narrows a
    span of ``text`` rather than cutting copies, so that one brace map serves every level of ``\\text{\\text{..}}``."""
    start, end = 0, len(text)
    while (match := _WRAPPER.match(text, start, end)) and closes.get(match.end()) == end - 1:
        start, end = match.end() + 1, end - 1
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
    return text[start:end]


def _brace_arguments(text: str) -> str:
    """Brace the arguments of ``\\frac`` and ``\\sqrt``: ``\\frac43`` and ``\\frac 4{3}`` become ``\\frac{4}{3}``.

    A loop over one brace map, not a recursion per nested argument: an answer nested a thousand deep would exhaust
    the recursion limit, and matching each group afresh is quadratic in the length of a text of unclosed ones.
    """
    closes = closing_braces(text)
    out: list[str] = []
    # The braced arguments being rewritten around ``i``, innermost last: where the enclosing region ends and how
    # many arguments its macro has still to read after this one (a \frac's denominator after its numerator).
    outer: list[tuple[int, int]] = []
    end, wanted, i = len(text), 0, 0
    while i < end or outer:
        if i >= end:  # a braced argument ends
            out.append("}")
            end, wanted = outer.pop()
            i += 1
        elif wanted:
            while i < end and text[i] == " ":
                i += 1
            close = closes.get(i) if i < end and text[i] == "{" else None
            if close is not None:
                out.append("{")
                outer.append((end, wanted - 1))
                end, wanted, i = close, 0, i + 1
            elif i < end and text[i] != "{":
                argument = _unbraced_argument(text, i, end)
                out.append("{" + argument + "}")
                wanted, i = wanted - 1, i + len(argument)
            else:  # nothing left, or an unclosed group: the macro goes without
                wanted = 0
        else:
            i, wanted = _copy_up_to_argument(text, i, end, out)
    return "".join(out)


def _copy_up_to_argument(text: str, i: int, end: int, out: list[str]) -> tuple[int, int]:
    """Copy ``text[i]`` to ``out``, or a ``\\frac`` or ``\\sqrt`` (with its ``[n]``) there: where to go on, and how
    many arguments it reads."""
    match = _FRAC_OR_SQRT.match(text, i, end)
    if not match:
        out.append(text[i])
        return i + 1, 0
    out.append(match.group(0))
    i = match.end()
    if match.group(1) == "frac":
        return i, 2
    if i < end and text[i] == "[":
        close = text.find("]", i, end)
        if close < 0:  # an unclosed index: the rest is copied as it stands
            out.append(text[i:end])
            return end, 0
        out.append(text[i : close + 1])
        i = close + 1
    return i, 1


def _unbraced_argument(text: str, i: int, end: int) -> str:
    """A macro argument without braces at ``i`` (before ``end``): a control word, or a single character."""
    word = _CONTROL_SEQUENCE.match(text, i, end) if text[i] == "\\" else None
    return word.group(0) if word else text[i]


def canonical_number(text: str) -> str | None:
    """``"1,234.50"`` -> ``"1234.5"``, ``"3.0"`` -> ``"3"``, ``".5"`` -> ``"0.5"``; None unless a plain number."""
    match = _PLAIN_NUMBER.fullmatch(text)
    if not match or not (match.group(2) or match.group(3)):
        return None
    sign, integer, fraction = match.group(1), match.group(2).replace(",", ""), match.group(3) or ""
    integer = integer.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    number = integer + ("." + fraction if fraction else "")
    return number if sign != "-" or number == "0" else "-" + number


def _rational_key(value: Fraction) -> str:
    """The key of an exact rational: as a plain number is keyed where a decimal writes it exactly (``0.5``, ``2``,
    so that ``1/2``, ``\\frac{2}{4}`` and ``0.5`` vote together), else its reduced ``\\frac{1}{3}``."""
    sign = "-" if value < 0 else ""
    numerator, denominator = abs(value.numerator), value.denominator
    rest, twos, fives = denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{sign}\\frac{{{numerator}}}{{{denominator}}}"
    places = max(twos, fives)
    whole, part = divmod(numerator * 10**places // denominator, 10**places)
    decimals = str(part).rjust(places, "0").rstrip("0")
    return sign + str(whole) + ("." + decimals if decimals else "")


def _fraction_value(text: str) -> Fraction | None:
    """The value of ``text`` if it is exactly a fraction of integers (see ``_FRACTION``) with a nonzero
    denominator; ``1/0`` is no number."""
    match = _FRACTION.fullmatch(text)
    if match is None:
        return None
    sign, numerator, denominator = match.group(1), match.group(2) or match.group(4), match.group(3) or match.group(5)
    if int(denominator) == 0:
        return None
    value = Fraction(int(numerator), int(denominator))
    return -value if sign == "-" else value


def _fraction_key(text: str) -> str | None:
    """The key of ``text`` if it is exactly a fraction of integers, else None: the text stays as written."""
    value = _fraction_value(text)
    return None if value is None else _rational_key(value)


def _mixed_value(text: str) -> Fraction | None:
    """The value of a mixed number (``2 3/4`` is 2+3/4, ``-2 3/4`` is -(2+3/4)) within exact arithmetic's reach."""
    mixed = _MIXED_NUMBER.fullmatch(text)
    if mixed is None or len(text) > _MAX_DIGITS or int(mixed.group(4)) == 0:
        return None
    sign, whole, numerator, denominator = mixed.groups()
    value = int(whole) + Fraction(int(numerator), int(denominator))
    return -value if sign == "-" else value


def _number_value(text: str) -> Fraction | None:
    """The exact value of a number written plainly, as a mixed number or as a fraction of integers (a key's
    ``\\frac{1}{3}`` too), with few enough digits for exact arithmetic; None for any other text."""
    canonical = canonical_number(text)
    if canonical is not None:
        return Fraction(canonical) if len(canonical) <= _MAX_DIGITS else None
    mixed = _mixed_value(text)  # not ``or``: a value of 0 is falsy
    return mixed if mixed is not None else _fraction_value(_brace_arguments(text))


def _scaled_number(text: str) -> str | None:
    """The key of a number with scale words: its number's key, a space, the words in lower case (``5 Million`` is
    ``5 million``, ``2 1/2 dozen`` is ``2.5 dozen``); None for other text."""
    scaled = _SCALED_NUMBER.fullmatch(text)
    if scaled is None:
        return None
    value = _number_value(scaled.group("number"))
    if value is None:
        return None
    return _rational_key(value) + " " + " ".join(scaled.group("words").lower().split())


def scaled_readings(key: str) -> tuple[str | None, str] | None:
    """What a key with scale words may answer, as keys: its number's and its scaled value's. ``7 dozen`` answers
    "how many dozens" as 7 and "how many eggs" as 84, and which one the question asks the key cannot know. Only
    dozens are counted so (word problems ask how many dozens; a bare 5 taken for ``5 million`` would pass an answer
    a million times off): for other scale words the number's reading is None. None for any other key. The
    arithmetic is bounded: the key has ``MAX_SCALE_WORDS`` words at most, and its number ``_MAX_DIGITS`` digits."""
    scaled = _SCALED_KEY.fullmatch(key)
    value = None if scaled is None else _number_value(scaled.group("number"))
    if scaled is None or value is None:
        return None
    number = value
    for word in scaled.group("words").split():
        value *= SCALES[word]
    counted = _rational_key(number) if scaled.group("words") == "dozen" else None
    return counted, _rational_key(value)


def _without_unit(text: str) -> str:
    """Drop a trailing ``\\text{ cm}^2``-style unit, but only after a pure number (no letters of its own).

    A scale word is no unit: ``5\\text{ million}`` is ``5 million`` (``\\text{ million dollars}`` drops only the
    dollars). Where the number cannot take it (``x\\text{ million}``, a scale word after the unit), the text stays
    whole: dropping the unit would change the number.
    """
    unit = _TRAILING_UNIT.search(text)
    if unit is None:
        return text
    head, words = text[: unit.start()].strip(), unit.group("words")
    if not _SCALE_WORD.search(words):
        return head if head and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", head)) else text
    scale = re.match(rf"{SCALE_WORDS}(?:[ \t]+{SCALE_WORDS})*+", words)
    if scale is None or unit.group("power") or _SCALE_WORD.search(words, scale.end()):
        return text
    scaled = f"{head} {scale.group(0)}"
    return scaled if _scaled_number(scaled) is not None else text


def _mixed_number(text: str) -> str | None:
    """The key of a mixed number: ``2 3/4`` is 2+3/4 (2.75), not the 23/4 that dropping its space would make;
    ``-2 3/4`` is -(2+3/4). Past exact arithmetic's reach, the sum is written out for math-verify. None for other
    text."""
    mixed = _MIXED_NUMBER.fullmatch(text)
    if mixed is None:
        return None
    value = _mixed_value(text)
    if value is not None:
        return _rational_key(value)
    sign, whole, numerator, denominator = mixed.groups()
    return f"-({whole}+{numerator}/{denominator})" if sign == "-" else f"{whole}+{numerator}/{denominator}"


def _squeeze_spaces(text: str) -> str:
    """Remove whitespace, except where it ends a control word before a letter (``\\pi r`` is not ``\\pir``)."""
    return _WHITESPACE.sub(lambda m: (m.group(1) or "") + (" " if m.group(1) and m.group(2) else ""), text)


def normalize_answer(answer: str) -> str:
    """A canonical key: two answers with the same key are the same answer; the converse is math-verify's job.

    Only rewrites that cannot merge different answers are applied: delimiters, spacing, ``\\left``/``\\right``,
    wrappers such as ``\\text{}``, ``\\dfrac`` -> ``\\frac``, degree signs, a currency sign, a unit after a plain
    number, thousands separators and trailing zeros of plain numbers, and ``(C)`` -> ``C`` for a choice letter. An
    exact number has one key however it is written: ``0.5``, ``+1/2`` and ``\\frac{2}{4}`` are ``0.5``, ``4/2`` is
    ``2``.

    A number with scale words keeps them, in one spelling: ``5\\text{ Million}`` and ``5 million`` are
    ``5 million``, and ``2 1/2 dozen`` is ``2.5 dozen``. That key is neither the bare number's nor the scaled
    value's: ``7 dozen`` answers "how many dozens?" as 7 and "how many eggs?" as 84, so it may equal either, and a
    key that merged it with one would merge different answers. Grading accepts it for both
    (:func:`ttc.verifiers.answer.grade`); a vote counts it apart from both. A run of more than ``MAX_SCALE_WORDS``
    scale words is no number a person writes and stays text.

    An answer nested too deeply to read has the empty key, like an answer of only spacing: it matches nothing and
    does not vote.
    """
    key = answer_key(check_text(answer, "answer"))
    return "" if key is None else key


def answer_key(answer: str) -> str | None:
    """``normalize_answer``'s key, or None for an answer nested past ``_MAX_NESTING``: grading says why."""
    text = _LIST_COMMA.sub(_LIST_MARK, answer.strip())
    text = text.replace("\\$", "").replace("$", "")
    if (text.startswith("\\(") and text.endswith("\\)")) or (text.startswith("\\[") and text.endswith("\\]")):
        text = text[2:-2]
    text = _SPACING.sub(" ", text).replace("{,}", ",").replace("\\%", "%")
    text = _SIZED_DELIMITERS.sub("", text)
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    text = _DEGREES.sub("", text).strip().rstrip(".").strip()
    closes = closing_braces(text)
    if _nesting_depth(closes) > _MAX_NESTING:
        return None
    text = _without_unit(_unwrap_whole(text, closes))
    exact = _scaled_number(text) or _mixed_number(text)
    if exact is not None:
        return exact
    text = ", ".join(_brace_arguments(_squeeze_spaces(piece)) for piece in text.split(_LIST_MARK)).rstrip(".")
    choice = re.fullmatch(r"\(([A-Z])\)", text)
    if choice:
        return choice.group(1)
    number = canonical_number(text)
    if number is not None:
        return number
    fraction = _fraction_key(text)
    return fraction if fraction is not None else text
