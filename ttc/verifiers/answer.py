"""Final answers: pull one out of a solution, give it a canonical key, and decide whether two answers agree.

Equality has two levels. ``normalize_answer`` is a conservative string key (voting groups by it, and equal keys
are equal answers without further work). Anything subtler (``14/3`` against ``\\frac{14}{3}``, ``0.15`` against
``\\frac{3}{20}``, an unordered solution set) goes to math-verify, which runs in worker processes
(:mod:`ttc.verifiers.grading_workers`) under a hard deadline per check, so grading can neither hang nor crash the
caller, whatever the model wrote.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import anyio.lowlevel
import anyio.to_thread

from ttc.errors import ConfigError
from ttc.verifiers.grading_workers import POOL_SIZE, run_in_worker, shutdown_grader

if TYPE_CHECKING:  # the grading workers import this module and nothing they do not need
    from ttc.types import Result

# --------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"\banswer\b\**[ \t]*(?:is\b[ \t]*:?|[:：])\**[ \t]*", re.IGNORECASE)
# Words that scale the number before them (``5 million``, ``2 dozen``): part of the number, never a unit. A number
# with them has a key of its own (see ``normalize_answer``).
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
_SCALE_WORDS = rf"(?i:{'|'.join(_SCALES)})\b"
_MAX_SCALE_WORDS = 4
"""More than any number a person writes has (``5 hundred thousand``): a longer run is not read as one, as its value
would be arithmetic on a number of thousands of digits (``int`` refuses to spell one of 4300)."""
# Scale words after a number: on its line (``Total: 12`` then ``Dozen eggs`` is 12), taken whole (possessive: a
# shorter match would leave one to read as prose) and ending where a word or a punctuation mark starts. Not a
# compound's first half (``5 hundred-dollar bills`` are 5 bills), nor a run longer than ``_MAX_SCALE_WORDS``: then
# the number is read alone, as it was before scale words were read at all.
_SCALE_RUN = (rf"(?:[ \t]+{_SCALE_WORDS}){{1,{_MAX_SCALE_WORDS}}}+"
              rf"(?![ \t]+{_SCALE_WORDS}|[-'\u2019/]\w)")
_SCALE_RUN_AT = re.compile(_SCALE_RUN)
# A number not glued to a word or another number; thousands groups only when they are complete.
_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+"
# A ``\frac`` of integers as TeX reads it, with the digits it runs into: ``\frac123`` is ``\frac{1}{2}3``, not
# ``\frac12`` then a 3, as ``normalize_answer`` reads it too.
_FRAC_TOKEN = r"\\[dt]?frac(?:\{[-+]?\d+\}|\d)(?:\{[-+]?\d+\}|\d)\d*"
# What the last-number fallback reads: a fraction whole (``1/2``, ``\frac{1}{2}``: its last number is only the
# denominator), and a mixed number whole (``1 1/2``: its fraction alone is a third of it, and its sign is the whole
# number's), but not a date's ``3/4/2024``; else a number; any of them with its scale words.
_LAST_VALUE = re.compile(
    rf"(?<![\w.])-?{_FRAC_TOKEN}(?:{_SCALE_RUN})?"
    rf"|(?<![\w./])-?\d+[ \t]+\d+/\d+(?![\w/]|\.\d)(?:{_SCALE_RUN})?"
    rf"|(?<![\w./])-?\d+/\d+(?![\w/]|\.\d)(?:{_SCALE_RUN})?"
    rf"|(?:{_NUMBER})(?:{_SCALE_RUN})?"
)
# A number, a fraction or a mixed number at the start of an answer.
_LEADING_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s+\d+/\d+|/\d+)?"
# A whole answer that is only a number, a fraction (``\frac`` too) or a mixed number: what scale words can scale.
_PLAIN_VALUE = re.compile(rf"-?{_FRAC_TOKEN}|{_LEADING_NUMBER}")
# A number (or a fraction) and then prose: ``18 pens``, ``3/4 of the cake``, ``18, because ...``, ``5 (five)``.
# A comma before another number is a list (``1, 2, 3``), so only a comma before a word ends the answer.
_LEADING_NUMBER_THEN_WORD = re.compile(rf"({_LEADING_NUMBER})(?:\s+[A-Za-z(]|\s*;|,\s*[A-Za-z])")
# The same number with its scale words, whatever follows them: ``2 dozen eggs``, ``5 million!``.
_LEADING_SCALED_NUMBER = re.compile(_LEADING_NUMBER + _SCALE_RUN)
# A markdown heading after ``####``: ``#### 1. Find the cost``, ``#### (b) Money``, ``#### 2) Total``.
_HEADING = re.compile(r"\s*\(?[A-Za-z0-9]{1,3}[.)]\s+[A-Za-z]")
# "The answer is in dollars", "the answer is given below": the phrase goes on about the answer, giving none.
_NOT_AN_ANSWER = frozenset({"in", "on", "at", "as", "below", "above", "following", "given", "not", "to", "from",
                            "of", "that", "this", "which", "what", "how", "where", "when", "why", "expressed",
                            "measured", "written", "rounded", "still", "unknown", "unclear"})
# "Checking the answer: 9 eggs at $2 is $18" reworks an answer rather than stating one.
_CHECKING = re.compile(r"\b(?:check(?:ing)?|verify(?:ing)?|double-check(?:ing)?|confirm(?:ing)?|test(?:ing)?)"
                       r"\s+(?:the|my|our|this|that)?\s*$", re.IGNORECASE)
# What "the answer is ..." says when it judges an answer rather than giving one: a phrase whose first word is one
# of these (``correct!``, ``plausible: 12 + 8 = 20``) restates an earlier answer.
_JUDGEMENTS = frozenset({"correct", "incorrect", "right", "wrong", "confirmed", "verified", "consistent",
                         "reasonable", "plausible", "valid", "sensible", "accurate"})
_FIRST_WORD = re.compile(r"[A-Za-z]+")
# A word between "the answer is" and the answer itself: ``the answer is therefore 19``.
_FILLER = re.compile(r"(?:therefore|thus|hence|indeed|then|so|clearly|simply|just|actually|finally|exactly)\b,?\s*",
                     re.IGNORECASE)
# ``$5, and he spent $3``: a currency sign before a number that prose follows, not the opening of ``$...$`` math
# (which ``$5$``, ``$2\sqrt{3}$`` and ``$5 + 3 = 8$`` are: their closing sign follows the math directly).
_CURRENCY = re.compile(r"\$\s?(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?=[.,;!?]?(?:\s|$))")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
# ``$...$`` whose content may hold an escaped currency sign: ``$\$32,348$``.
_MATH_SEGMENT = re.compile(r"\$+((?:\\\$|[^$])+)\$+")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def scale_after(text: str, pos: int) -> int | None:
    """The factor by which the scale words at ``pos`` of ``text`` multiply the number that ends there (``5 million``
    is 10**6 times 5, ``7 dozen`` 12 times 7), or None where none follow it as its own (``5 hundred-dollar bills``,
    a run past ``_MAX_SCALE_WORDS``). The checks of written arithmetic read a number as answers are read, so that
    ``2,500,000 * 2 = 5 million`` is right and ``5 million`` in a question gives 5000000."""
    run = _SCALE_RUN_AT.match(text, pos)
    return None if run is None else math.prod(_SCALES[word.lower()] for word in run.group(0).split())


SCALES: Mapping[str, int] = MappingProxyType(_SCALES)
"""The scale words and the factor of each, read-only: the words that count as part of a number."""


def _closing_braces(text: str) -> dict[int, int]:
    """Where each ``{`` of ``text`` closes (unclosed ones are absent), in one pass: matching each group on its own
    costs a scan to the end per unclosed one (a sample looping on ``\\boxed{`` or ``\\frac{``), quadratic in the
    length. Escaped braces (``\\{``) do not count, as in TeX, so ``\\boxed{\\{1,2\\}}`` reads as ``\\{1,2\\}``."""
    closes: dict[int, int] = {}
    opened: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            opened.append(i)
        elif char == "}" and opened:
            closes[opened.pop()] = i
        i += 1
    return closes


def _box_argument(text: str, end: int, closes: dict[int, int]) -> str | None:
    """The argument of a ``\\boxed`` whose name ends at ``end``: a braced group, or ``\\boxed 5`` style token."""
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = closes.get(i)
        return None if close is None else text[i + 1 : close]
    token = re.match(r"[^\s$]+", text[i:])
    return token.group(0).rstrip(".") if token else None


def _last_boxed(text: str) -> str | None:
    """The last complete, non-empty box; a box cut off by the token limit does not count."""
    boxes = list(_BOX.finditer(text))
    closes = _closing_braces(text) if boxes else {}
    for match in reversed(boxes):
        content = _box_argument(text, match.end(), closes)
        if content is not None and content.strip():
            return content.strip()
    return None


def _strip_dollars(text: str) -> str:
    """Drop math delimiters around (or, for a lone currency sign, before) an answer written in prose."""
    text = text.strip().strip("*").strip()
    math_segment = _MATH_SEGMENT.match(text)
    if math_segment:
        return math_segment.group(1).strip()
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(opening) and closing in text:
            return text[len(opening) : text.index(closing)].strip()
    return _UNESCAPED_DOLLAR.sub("", text).strip()


def _currency_amount(text: str) -> str | None:
    """The amount of a ``$5, and ...`` answer: a currency sign, a number, then prose or the end, with no math
    segment closing after it (a later ``$`` opens another amount: it follows a space). Scale words after the
    number are part of it: ``$5 million`` is ``5 million``, and read as ``5`` it would vote with a wrong 5."""
    amount = _CURRENCY.match(text)
    if amount is None:
        return None
    rest = text[amount.end():]
    closing = _UNESCAPED_DOLLAR.search(rest)
    if closing is not None and not rest[closing.start() - 1 : closing.start()].isspace():
        return None
    scale = _SCALE_RUN_AT.match(text, amount.end())
    return amount.group(1) + (scale.group(0) if scale else "")


def _clean_phrase_answer(raw: str) -> str:
    """``42 dollars per day.`` -> ``42``; ``$\\frac{1}{2}$.`` -> ``\\frac{1}{2}``; ``x = 5.`` -> ``x = 5``."""
    raw = raw.strip().strip("*").strip()
    while filler := _FILLER.match(raw):
        raw = raw[filler.end():]
    amount = _currency_amount(raw)
    if amount is not None:
        return amount
    segment = _MATH_SEGMENT.match(raw)
    if segment or raw.startswith(("\\(", "\\[")):
        content = _strip_dollars(raw).rstrip(".").strip()
        # ``$5$ million``: scale words after a number's closing sign are still its own.
        scale = _SCALE_RUN_AT.match(raw, segment.end()) if segment else None
        return content + scale.group(0) if scale and _PLAIN_VALUE.fullmatch(content) else content
    end = _SENTENCE_END.search(raw)
    text = _strip_dollars(raw[: end.start()] if end else raw).rstrip(".").strip()
    number = _LEADING_NUMBER_THEN_WORD.match(text)
    if number is None:
        return text
    # Its scale words belong to it; where they cannot be read (``5 hundred-dollar bills``) the number stands alone.
    scaled = _LEADING_SCALED_NUMBER.match(text)
    return scaled.group(0) if scaled else number.group(1)


def _last_number(text: str) -> str | None:
    values = _LAST_VALUE.findall(text)
    return values[-1].replace(",", "") if values else None


def extract_answer(text: str) -> str | None:
    """The final answer a solution states, or None.

    Priority follows how explicit the statement is: the last ``\\boxed{}``/``\\fbox{}``, then GSM8K's
    ``#### N``, then "The answer is X" / "Answer: X", and only then the last number (or fraction) in the text, a
    guess that is right for most arithmetic word problems and wrong for LaTeX answers (so say them explicitly).
    """
    stated = extract_stated_answer(check_text(text, "text"))
    return stated if stated is not None else _last_number(text)


def extract_stated_answer(text: str) -> str | None:
    """The answer a solution states explicitly (a box, ``#### N``, "the answer is X"), or None.

    For text cut off before its end (a sample that ran out of tokens): its last number is an intermediate
    value, not an answer, so only an explicit statement counts.
    """
    boxed = _last_boxed(check_text(text, "text"))
    if boxed is not None:
        return boxed
    for hashes in reversed(list(_HASHES.finditer(text))):
        raw = hashes.group(1)
        answer = _clean_phrase_answer(raw)
        # "#### Step 2" is a markdown heading, not GSM8K's answer line; so is "#### 1. Find the cost" where the
        # solution goes on below it ("#### 18. That is 9 eggs times 2." on the last line is the answer).
        heading = _HEADING.match(raw) is not None and bool(text[hashes.end():].strip())
        if answer and not answer[0].isalpha() and not heading:
            return answer
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        before = text[text.rfind("\n", 0, phrase.start()) + 1 : phrase.start()]
        if _CHECKING.search(before) and "is" not in phrase.group(0).lower():  # "I can confirm the answer is 18"
            continue
        answer = _clean_phrase_answer(_phrase_line(text, phrase.end()))
        # "the answer is correct!" restates an earlier one; "the answer is in dollars" gives none
        if answer and not _is_judgement(answer) and not _says_nothing(answer):
            return answer
    return None


def extract_cut_answer(text: str) -> str | None:
    """The answer a text cut off by a token limit states, where the cut cannot have shortened it, or None.

    The cut may fall inside the answer: "The answer is 3" of 36, "3." of 3.5. An answer that one more digit after
    the cut would change ran to the cut, so it is not stated yet; "The answer is 36. " or "36 dollars" are. It errs
    on the side of no answer: "The answer is 36 " is refused too (its extraction reads on into the digit).
    """
    answer = extract_stated_answer(text)
    return answer if answer is not None and extract_stated_answer(text + "0") == answer else None


def stopped_answer(text: str, *, cut: bool, ended: bool) -> str | None:
    """The answer of a solution by how it stopped: cut by a token limit, only an answer the cut cannot have
    shortened (:func:`extract_cut_answer`); stopped before it ended (a depth or budget limit between steps), only an
    answer it states, not the intermediate value it stopped on; ended, its final answer (:func:`extract_answer`)."""
    if cut:
        return extract_cut_answer(text)
    return extract_answer(text) if ended else extract_stated_answer(text)


def _says_nothing(answer: str) -> bool:
    first = _FIRST_WORD.match(answer)
    return first is not None and first.group(0).lower() in _NOT_AN_ANSWER


def _is_judgement(answer: str) -> bool:
    """``correct``, ``correct!``, ``plausible: 12 + 8 = 20``, ``right because ...``; not ``right angle``."""
    first = _FIRST_WORD.match(answer)
    if first is None or first.group(0).lower() not in _JUDGEMENTS:
        return False
    rest = answer[first.end():]
    return not rest or not rest[0].isspace() or bool(re.match(r"\s+(?:because|since|as|and|so|given)\b", rest))


def _phrase_line(text: str, start: int) -> str:
    """What follows "the answer is" on its line; where nothing does, the next line if it states the answer by
    itself (math, a box, or a number first: ``The answer is:`` then ``$$\\frac{1}{2}$$``)."""
    line_end = text.find("\n", start)
    line = text[start : line_end if line_end >= 0 else len(text)]
    if line.strip().strip("*:").strip() or line_end < 0:
        return line
    following = next((ln for ln in text[line_end:].splitlines() if ln.strip()), "").strip()
    return following if re.match(r"(?:\$|\\[(\[]|\\boxed|-?\d)", following) else line


# --------------------------------------------------------------------------------------------- normalization

_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|boxed|fbox)\s*(?=\{)")
_SIZED_DELIMITERS = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|bigg|Bigg)(?![A-Za-z])\.?")
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]|~|\\displaystyle(?![A-Za-z])|\\quad(?![A-Za-z])|\\qquad(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
# Two letters at least: ``3+4\\mathrm{i}`` is a complex number, not 3+4 with a unit.
_TRAILING_UNIT = re.compile(
    r"\\(?:text|mbox|mathrm|textrm)\{\s*(?P<words>[A-Za-z][A-Za-z ]*[A-Za-z])\s*\}(?P<power>\^\{?[23]\}?)?$"
)
# A number and its scale words, once spacing commands are spaces: ``5 million``, ``1.5 thousand``, ``2 1/2 dozen``,
# ``\frac{1}{2} million``; ``_MAX_SCALE_WORDS`` words at most.
_SCALED_NUMBER = re.compile(
    r"(?P<number>[-+]?(?:\\frac(?:\{[-+]?\d+\}|\d)(?:\{[-+]?\d+\}|\d)|[\d,.]+(?:[ \t]+\d+/\d+|/\d+)?))[ \t]*"
    rf"(?P<words>{_SCALE_WORDS}(?:[ \t]+{_SCALE_WORDS}){{0,{_MAX_SCALE_WORDS - 1}}})"
)
# A key of a number with scale words, as ``normalize_answer`` writes one: a rational's key, a space, the words.
_SCALED_KEY = re.compile(
    rf"(?P<number>\S+) (?P<words>(?:{'|'.join(_SCALES)})(?: (?:{'|'.join(_SCALES)})){{0,{_MAX_SCALE_WORDS - 1}}})"
)
_SCALE_WORD = re.compile(r"\b" + _SCALE_WORDS)
_PLAIN_NUMBER = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+|\d*)(?:\.(\d*))?")
_INTEGER = re.compile(r"-?\d+")
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
    """How many closed groups the deepest point of a text lies in, from its :func:`_closing_braces` map."""
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
    closes = _closing_braces(text)
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


def _canonical_number(text: str) -> str | None:
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
    canonical = _canonical_number(text)
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


def _scaled_readings(key: str) -> tuple[str | None, str] | None:
    """What a key with scale words may answer, as keys: its number's and its scaled value's. ``7 dozen`` answers
    "how many dozens" as 7 and "how many eggs" as 84, and which one the question asks the key cannot know. Only
    dozens are counted so (word problems ask how many dozens; a bare 5 taken for ``5 million`` would pass an answer
    a million times off): for other scale words the number's reading is None. None for any other key. The
    arithmetic is bounded: the key has ``_MAX_SCALE_WORDS`` words at most, and its number ``_MAX_DIGITS`` digits."""
    scaled = _SCALED_KEY.fullmatch(key)
    value = None if scaled is None else _number_value(scaled.group("number"))
    if scaled is None or value is None:
        return None
    number = value
    for word in scaled.group("words").split():
        value *= _SCALES[word]
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
    scale = re.match(rf"{_SCALE_WORDS}(?:[ \t]+{_SCALE_WORDS})*+", words)
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
    key that merged it with one would merge different answers. Grading accepts it for both (:func:`grade`); a vote
    counts it apart from both. A run of more than ``_MAX_SCALE_WORDS`` scale words is no number a person writes and
    stays text.

    An answer nested too deeply to read has the empty key, like an answer of only spacing: it matches nothing and
    does not vote.
    """
    key = _answer_key(check_text(answer, "answer"))
    return "" if key is None else key


def _answer_key(answer: str) -> str | None:
    """``normalize_answer``'s key, or None for an answer nested past ``_MAX_NESTING``: grading says why."""
    text = _LIST_COMMA.sub(_LIST_MARK, answer.strip())
    text = text.replace("\\$", "").replace("$", "")
    if (text.startswith("\\(") and text.endswith("\\)")) or (text.startswith("\\[") and text.endswith("\\]")):
        text = text[2:-2]
    text = _SPACING.sub(" ", text).replace("{,}", ",").replace("\\%", "%")
    text = _SIZED_DELIMITERS.sub("", text)
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    text = _DEGREES.sub("", text).strip().rstrip(".").strip()
    closes = _closing_braces(text)
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
    number = _canonical_number(text)
    if number is not None:
        return number
    fraction = _fraction_key(text)
    return fraction if fraction is not None else text


# --------------------------------------------------------------------------------------------- equivalence


@dataclass(frozen=True)
class GradeResult:
    """A verdict and why: "exact", "equivalent", "not equivalent", "no answer found", "timeout after 5s", ..."""

    correct: bool
    predicted: str | None
    reason: str


@dataclass(frozen=True)
class _Verdict:
    equal: bool
    reason: str


def _math_verify_keys(gold_key: str, predicted_key: str) -> tuple[bool, str]:
    """Runs inside a worker. Keys are wrapped in ``$...$`` so that bare LaTeX and plain expressions both parse."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    def parsed(key: str) -> list[object]:
        configs = [LatexExtractionConfig(), ExprExtractionConfig()]
        result: list[object] = parse(f"${key}$", extraction_config=configs, parsing_timeout=None)
        return result or parse(key, extraction_config=[ExprExtractionConfig()], parsing_timeout=None)

    gold = parsed(gold_key)
    if not gold:
        return False, f"parse error: math-verify cannot read the gold answer {gold_key[:80]!r}"
    predicted = parsed(predicted_key)
    if not predicted:
        return False, f"parse error: math-verify cannot read the answer {predicted_key[:80]!r}"
    # Errors stay quiet so that one failing reading (sympy, string) does not hide another that matches.
    equal = bool(verify(gold, predicted, timeout_seconds=None, raise_on_error=False))
    return equal, "equivalent" if equal else "not equivalent"


class _VerdictCache:
    """LRU of settled verdicts by (gold key, answer key). Timeouts and crashes are not settled, so not kept."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], _Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> _Verdict | None:
        with self._lock:
            verdict = self._items.get(key)
            if verdict is not None:
                self._items.move_to_end(key)
            return verdict

    def put(self, key: tuple[str, str], verdict: _Verdict) -> None:
        with self._lock:
            self._items[key] = verdict
            self._items.move_to_end(key)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)


_cache = _VerdictCache(maxsize=8192)


MAX_TIMEOUT_S = 3600.0
"""Longer than any comparison takes; a wait far beyond it overflows the worker pipe's poll."""


def _check_timeout(timeout_s: object) -> None:
    # A local check, not ttc.types.is_number: grading workers import this module and should load no more of ttc.
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ConfigError(f"timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}, got "
                          f"{timeout_s!r}")


def check_text(value: object, name: str) -> str:
    """``value`` if it is a string, else a ConfigError naming it as ``name``: an int or None reached as an answer
    would fail as an AttributeError deep in extraction or normalization, far from the caller that passed it."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _scale_words_agree(gold_key: str, predicted_key: str) -> bool:
    """Whether keys agree by what a number with scale words may answer (:func:`_scaled_readings`): ``7 dozen``
    answers both 7 and 84, and a gold answer ``7 dozen`` accepts both; ``5 million`` answers 5000000 alone. Two of
    them agree by their scaled values (``5000 thousand`` is ``5 million``), never by their numbers alone
    (``5 thousand`` is not ``5 million``)."""
    gold, predicted = _scaled_readings(gold_key), _scaled_readings(predicted_key)
    if gold is not None and predicted is not None:
        return gold[1] == predicted[1]
    if gold is not None:
        return predicted_key in gold
    return predicted is not None and gold_key in predicted


def _compared_key(key: str) -> str:
    """The form of a key that the rules after :func:`_scale_words_agree` and math-verify compare: a number with scale
    words as its scaled value (math-verify would read ``million`` as a product of seven symbols), else the key."""
    readings = _scaled_readings(key)
    return key if readings is None else readings[1]


def _quick_verdict(gold_key: str, predicted_key: str) -> _Verdict | None:
    """A verdict without a worker when the keys settle it; None when math-verify has to look."""
    if not predicted_key:
        return _Verdict(False, "no answer found")
    if gold_key == predicted_key:
        return _Verdict(True, "exact")
    if _scale_words_agree(gold_key, predicted_key):
        return _Verdict(True, "equivalent")
    gold_key, predicted_key = _compared_key(gold_key), _compared_key(predicted_key)
    number = gold_key.removesuffix("%")
    if number == predicted_key.removesuffix("%") and _canonical_number(number) is not None:
        # 12.5% answers "what percent" as 12.5 does; math-verify agrees for some numbers (25%) and not others.
        return _Verdict(True, "equivalent")
    if _INTEGER.fullmatch(gold_key) and _INTEGER.fullmatch(predicted_key):
        return _Verdict(False, "not equivalent")  # two distinct canonical integers never agree
    return _cache.get((gold_key, predicted_key))


def _worker_verdict(gold_key: str, predicted_key: str, timeout_s: float) -> _Verdict:
    """math-verify's verdict on two keys, in a worker; kept in the cache where it is settled."""
    gold_key, predicted_key = _compared_key(gold_key), _compared_key(predicted_key)
    outcome = run_in_worker(_math_verify_keys, (gold_key, predicted_key), timeout_s)
    if outcome.status == "ok":
        equal, reason = cast(tuple[bool, str], outcome.value)
        verdict = _Verdict(equal, reason)
    elif outcome.status == "error":
        verdict = _Verdict(False, f"comparison error: {outcome.detail}")
    else:
        return _Verdict(False, outcome.detail)
    _cache.put((gold_key, predicted_key), verdict)
    return verdict


def gold_key(gold: str) -> str:
    """The key a gold answer is graded by; ConfigError where none can be (no final answer in it, or one too deeply
    nested to read). Loaders and evaluations check it before a model runs: grading finds it only after."""
    key = _answer_key(check_text(gold, "gold"))
    if key is None:
        raise ConfigError(f"the gold answer {gold[:40]!r}... is too deeply nested to grade; pass the reference "
                          "final answer in a plain form")
    if not key:
        raise ConfigError(f"the gold answer {gold!r} is empty; pass the reference final answer (e.g. '42')")
    return key


@dataclass(frozen=True)
class _NeedsWorker:
    """A grading the keys could not settle: math-verify has to compare ``gold_key`` with ``answer_key``."""

    predicted: str
    gold_key: str
    answer_key: str


def _grade_quickly(prediction_text: str, gold: str, timeout_s: float) -> GradeResult | _NeedsWorker:
    _check_timeout(timeout_s)
    check_text(prediction_text, "prediction_text")
    key = gold_key(gold)
    predicted = extract_answer(prediction_text)
    if predicted is None:
        return GradeResult(False, None, "no answer found")
    answer_key = _answer_key(predicted)
    if answer_key is None:  # hundreds of nested \sqrt{: no reference answer is like it
        return GradeResult(False, predicted, "too deeply nested to compare")
    quick = _quick_verdict(key, answer_key)
    if quick is not None:
        return GradeResult(quick.equal, predicted, quick.reason)
    return _NeedsWorker(predicted, key, answer_key)


def answers_equivalent(a: str, b: str, *, timeout_s: float = 5.0) -> bool:
    """Whether two final answers agree; ``a`` plays the reference (``x=5`` accepts ``5``). Empty never agrees."""
    _check_timeout(timeout_s)
    key_a, key_b = normalize_answer(check_text(a, "a")), normalize_answer(check_text(b, "b"))
    if not key_a:
        return False
    quick = _quick_verdict(key_a, key_b)
    return (quick if quick is not None else _worker_verdict(key_a, key_b, timeout_s)).equal


def grade_detail(prediction_text: str, gold: str, *, timeout_s: float = 5.0) -> GradeResult:
    """Extract the answer from a solution and compare it with the gold final answer (not a gold solution).

    Blocks for up to ``timeout_s`` seconds per check (plus worker start-up on first use); in async code use
    ``agrade``. An empty gold answer is a ConfigError: it is a dataset bug, not a wrong prediction. A
    VerifierError means no worker process could start at all (a broken installation), never a bad answer.
    """
    step = _grade_quickly(prediction_text, gold, timeout_s)
    if isinstance(step, GradeResult):
        return step
    verdict = _worker_verdict(step.gold_key, step.answer_key, timeout_s)
    return GradeResult(verdict.equal, step.predicted, verdict.reason)


def grade(prediction_text: str, gold: str, *, timeout_s: float = 5.0) -> bool:
    """Whether the solution's final answer equals the gold final answer."""
    return grade_detail(prediction_text, gold, timeout_s=timeout_s).correct


_thread_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("ttc_grader_threads")


def _limiter() -> anyio.CapacityLimiter:
    """One limiter per event loop, as wide as the pool, for both steps of :func:`agrade`: more threads would only
    queue for a worker, and grading on anyio's shared default limiter would hold the slots that other code (trace
    writes) needs, a long answer's quick step as much as a math-verify wait."""
    try:
        return _thread_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(POOL_SIZE)
        _thread_limiter.set(limiter)
        return limiter


async def agrade(prediction_text: str, gold: str, *, timeout_s: float = 5.0) -> GradeResult:
    """``grade_detail`` for async code. Both steps run on threads: extracting and normalizing a long answer is
    work in this process that would stall the event loop, and a math-verify check waits on a worker."""
    quick = functools.partial(_grade_quickly, prediction_text, gold, timeout_s)
    step = await anyio.to_thread.run_sync(quick, abandon_on_cancel=True, limiter=_limiter())
    if isinstance(step, GradeResult):
        return step
    work = functools.partial(_worker_verdict, step.gold_key, step.answer_key, timeout_s)
    verdict = await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=_limiter())
    return GradeResult(verdict.equal, step.predicted, verdict.reason)


NO_ANSWER = "no answer"
"""The reason of a grade for a result that states no answer."""


def grade_result(result: Result, gold: str, *, timeout_s: float = 5.0) -> GradeResult:
    """Grade what a result answers. Without an answer (``result.answer`` None: a search whose every path the budget
    cut short returns a partial solution, a sample that ran out of tokens) it is wrong, whatever numbers its text
    holds: the last of them is an intermediate value, which grading the text alone would credit. With one, its
    text is graded as ``grade_detail`` grades it."""
    return _unanswered(result, gold) or grade_detail(result.text, gold, timeout_s=timeout_s)


async def agrade_result(result: Result, gold: str, *, timeout_s: float = 5.0) -> GradeResult:
    """``grade_result`` for async code."""
    return _unanswered(result, gold) or await agrade(result.text, gold, timeout_s=timeout_s)


def _unanswered(result: Result, gold: str) -> GradeResult | None:
    if result.answer is not None:
        return None
    gold_key(gold)  # an empty gold answer is a dataset bug either way
    return GradeResult(False, None, NO_ANSWER)


__all__ = [
    "NO_ANSWER",
    "SCALES",
    "GradeResult",
    "agrade",
    "agrade_result",
    "answers_equivalent",
    "check_text",
    "extract_answer",
    "extract_cut_answer",
    "extract_stated_answer",
    "gold_key",
    "grade",
    "grade_detail",
    "grade_result",
    "normalize_answer",
    "scale_after",
    "shutdown_grader",
    "stopped_answer",
]
