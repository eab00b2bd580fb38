"""Pulling the final answer out of a solution: a box, GSM8K's ``#### N``, "the answer is X", or the last number.

Also what the other answer modules read numbers by: where braces close (one pass, so a sample looping on
``\\frac{`` costs linear time) and the scale words that belong to a number (``5 million``, ``7 dozen``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from ttc.errors import ConfigError

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"\banswer\b\**[ \t]*(?:is\b[ \t]*:?|[:：])\**[ \t]*", re.IGNORECASE)
# Words that scale the number before them (``5 million``, ``2 dozen``): part of the number, never a unit. A number
# with them has a key of its own (see ``normalize_answer``).
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
SCALE_WORDS = rf"(?i:{'|'.join(_SCALES)})\b"
MAX_SCALE_WORDS = 4
"""More than any number a person writes has (``5 hundred thousand``): a longer run is not read as one, as its value
would be arithmetic on a number of thousands of digits (``int`` refuses to spell one of 4300)."""
# Scale words after a number: on its line (``Total: 12`` then ``Dozen eggs`` is 12), taken whole (possessive: a
# shorter match would leave one to read as prose) and ending where a word or a punctuation mark starts. Not a
# compound's first half (``5 hundred-dollar bills`` are 5 bills), nor a run longer than ``MAX_SCALE_WORDS``: then
# the number is read alone, as it was before scale words were read at all.
_SCALE_RUN = (rf"(?:[ \t]+{SCALE_WORDS}){{1,{MAX_SCALE_WORDS}}}+"
              rf"(?![ \t]+{SCALE_WORDS}|[-'\u2019/]\w)")
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
# Any text at all after a heading; a search for it stops there, where a copy of the rest to strip would cost the
# rest of the text at each of many headings.
_VISIBLE = re.compile(r"\S")
# "The answer is in dollars", "the answer is given below": the phrase goes on about the answer, giving none.
_NOT_AN_ANSWER = frozenset({"in", "on", "at", "as", "below", "above", "following", "given", "not", "to", "from",
                            "of", "that", "this", "which", "what", "how", "where", "when", "why", "expressed",
                            "measured", "written", "rounded", "still", "unknown", "unclear"})
# "Checking the answer: 9 eggs at $2 is $18" reworks an answer rather than stating one.
_CHECKING = re.compile(r"\b(?:check(?:ing)?|verify(?:ing)?|double-check(?:ing)?|confirm(?:ing)?|test(?:ing)?)"
                       r"\s+(?:the|my|our|this|that)?\s*$", re.IGNORECASE)
_CHECK_WINDOW = 200
"""How far before an answer phrase the words that make it a check are looked for: far more than they take."""
_MAX_PHRASE_LINE = 1000
"""How much of what follows "the answer is" is read to judge whether it states an answer (``correct``, ``in
dollars`` do not); the one phrase that does is then read whole."""
_FOLLOWING_WINDOW = 4 * _MAX_PHRASE_LINE
"""How far past an answer phrase with nothing after it on its line the answer (or its display) is looked for,
to judge it."""
# Display math opened alone on a line: ``$$`` or ``\[``, then the answer, then the closing sign on a later line.
_DISPLAY_CLOSE = {"$$": "$$", "\\[": "\\]"}
_DISPLAY_OPENERS = tuple(_DISPLAY_CLOSE)
_MAX_DISPLAY_LINES = 20
"""How many lines of a display after its opening sign are looked through for its close: more than an answer takes."""
# A line with text on it, from its first visible character: one scan skips the blank lines before it.
_LINE_TEXT = re.compile(r"\S[^\n]*")
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
    a run past ``MAX_SCALE_WORDS``). The checks of written arithmetic read a number as answers are read, so that
    ``2,500,000 * 2 = 5 million`` is right and ``5 million`` in a question gives 5000000."""
    run = _SCALE_RUN_AT.match(text, pos)
    return None if run is None else math.prod(_SCALES[word.lower()] for word in run.group(0).split())


SCALES: Mapping[str, int] = MappingProxyType(_SCALES)
"""The scale words and the factor of each, read-only: the words that count as part of a number."""


def closing_braces(text: str) -> dict[int, int]:
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
    closes = closing_braces(text) if boxes else {}
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
        heading = _HEADING.match(raw) is not None and _VISIBLE.search(text, hashes.end()) is not None
        if answer and not answer[0].isalpha() and not heading:
            return answer
    for phrase in reversed(list(_ANSWER_PHRASE.finditer(text))):
        if _checks(text, phrase.start()) and "is" not in phrase.group(0).lower():  # "I can confirm the answer is 18"
            continue
        line = _phrase_line(text, phrase.end())
        if line is None:
            return None  # the last answer stated is a display not closed yet: an earlier one is not the answer
        answer = _clean_phrase_answer(line)
        # "the answer is correct!" restates an earlier one; "the answer is in dollars" gives none
        if answer and not _is_judgement(answer) and not _says_nothing(answer):
            # Judged on a bounded read (phrases passed over cost the same, however long their line); the one
            # taken is read whole, so that a long answer (a list) is not cut to its first characters.
            return _clean_phrase_answer(_phrase_line(text, phrase.end(), whole=True) or "") or answer
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


def _checks(text: str, phrase_start: int) -> bool:
    """Whether the words just before an answer phrase check an answer (``Checking the answer:``). Only the last
    ``_CHECK_WINDOW`` characters of its line are read, so that each phrase of a sample looping on one long line
    costs the same, not the length of the line before it."""
    window_start = max(0, phrase_start - _CHECK_WINDOW)
    line_start = text.rfind("\n", window_start, phrase_start) + 1
    return _CHECKING.search(text, max(line_start, window_start), phrase_start) is not None


def _phrase_line(text: str, start: int, *, whole: bool = False) -> str | None:
    """What follows "the answer is" on its line; where nothing does, the next line if it states the answer by
    itself (math, a box, or a number first: ``The answer is:`` then ``$$\\frac{1}{2}$$``). A display opened there or
    on the next line and closed lines later (``$$``, ``18``, ``$$``) is read whole, as one line; one that no line
closes (cut off) is None.

    At most ``_MAX_PHRASE_LINE`` characters of it, and of the lines after it ``_FOLLOWING_WINDOW``, unless ``whole``:
    a sample looping on "the answer is correct" over one long line would otherwise cost the rest of the line at
    each phrase, time quadratic in it."""
    reach = len(text) if whole else _MAX_PHRASE_LINE
    window_end = min(len(text), start + reach)
    line_end = text.find("\n", start, window_end)
    line = text[start : line_end if line_end >= 0 else window_end]
    stated = line.strip().strip("*:").strip()
    if stated and not stated.startswith(_DISPLAY_OPENERS):
        return line
    following = _lines_after(text, line_end, len(text) if whole else _FOLLOWING_WINDOW) if line_end >= 0 else iter(())
    first = stated or next(following, "")
    display = _display_block(first, following)
    if display is not None:
        return display or None
    if stated or not re.match(r"(?:\$|\\[(\[]|\\boxed|-?\d)", first):
        return line
    return first[:reach]


def _lines_after(text: str, line_end: int, reach: int) -> Iterator[str]:
    """The lines with text on them after the one ending at ``line_end``, stripped, as far as ``reach`` characters;
    read only as far as they are asked for."""
    for line in _LINE_TEXT.finditer(text, line_end + 1, line_end + 1 + reach):
        yield line.group(0).rstrip()


def _display_block(first: str, rest: Iterator[str]) -> str | None:
    """The display math that ``first`` opens (``$$`` or ``\\[``) and a line of ``rest`` closes, joined into one
    line: read line by line, ``\\[`` alone would be taken for the answer. "" where no line closes it within
    ``_MAX_DISPLAY_LINES`` (cut off, it states nothing yet); None where ``first`` opens none, or closes its own."""
    opener = next((sign for sign in _DISPLAY_OPENERS if first.startswith(sign)), None)
    if opener is None or _DISPLAY_CLOSE[opener] in first[len(opener) :]:
        return None
    block = [first]
    for line in itertools.islice(rest, _MAX_DISPLAY_LINES):
        block.append(line)
        if _DISPLAY_CLOSE[opener] in line:
            return " ".join(block)
    return ""



def check_text(value: object, name: str) -> str:
    """``value`` if it is a string, else a ConfigError naming it as ``name``: an int or None reached as an answer
    would fail as an AttributeError deep in extraction or normalization, far from the caller that passed it."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value
