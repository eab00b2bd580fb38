"""Final answers: pull one out of a solution, give it a canonical key, and decide whether two answers agree.

Equality has two levels. ``normalize_answer`` is a conservative string key (voting groups by it, and equal keys
are equal answers without further work). Anything subtler (``14/3`` against ``\\frac{14}{3}``, ``0.15`` against
``\\frac{3}{20}``, an unordered solution set) goes to math-verify, which runs in worker processes
(:mod:`ttc.verifiers.grading_workers`) under a hard deadline per check, so grading can neither hang nor crash the
caller, whatever the model wrote.

Extraction lives in :mod:`ttc.verifiers.answer_extraction` and keys in :mod:`ttc.verifiers.answer_keys`; this
module grades, and is where callers import all three from.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import anyio.lowlevel
import anyio.to_thread

from ttc.errors import ConfigError
from ttc.verifiers.answer_extraction import (
    SCALES,
    check_text,
    extract_answer,
    extract_cut_answer,
    extract_stated_answer,
    scale_after,
    stopped_answer,
)
from ttc.verifiers.answer_keys import answer_key, canonical_number, normalize_answer, scaled_readings
from ttc.verifiers.grading_workers import POOL_SIZE, run_in_worker, shutdown_grader

if TYPE_CHECKING:  # the grading workers import this module and nothing they do not need
    from ttc.types import Result


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



def _scale_words_agree(gold_key: str, predicted_key: str) -> bool:
    """Whether keys agree by what a number with scale words may answer (:func:`scaled_readings`): ``7 dozen``
    answers both 7 and 84, and a gold answer ``7 dozen`` accepts both; ``5 million`` answers 5000000 alone. Two of
    them agree by their scaled values (``5000 thousand`` is ``5 million``), never by their numbers alone
    (``5 thousand`` is not ``5 million``)."""
    gold, predicted = scaled_readings(gold_key), scaled_readings(predicted_key)
    if gold is not None and predicted is not None:
        return gold[1] == predicted[1]
    if gold is not None:
        return predicted_key in gold
    return predicted is not None and gold_key in predicted


def _compared_key(key: str) -> str:
    """The form of a key that the rules after :func:`_scale_words_agree` and math-verify compare: a number with scale
    words as its scaled value (math-verify would read ``million`` as a product of seven symbols), else the key."""
    readings = scaled_readings(key)
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
    if number == predicted_key.removesuffix("%") and canonical_number(number) is not None:
        # 12.5% answers "what percent" as 12.5 does; math-verify agrees for some numbers (25%) and not others.
        return _Verdict(True, "equivalent")
    gold_number, predicted_number = canonical_number(gold_key), canonical_number(predicted_key)
    if gold_number is not None and predicted_number is not None:
        # Two plain numbers agree exactly where their values do, which their canonical forms say: math-verify rounds
        # decimals to 6 places, so it equates 0.0000001 with 0.0000004 and .0000672 with .0000673 (not .0000675).
        equal = gold_number == predicted_number
        return _Verdict(equal, "equivalent" if equal else "not equivalent")
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
    key = answer_key(check_text(gold, "gold"))
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
    predicted_key = answer_key(predicted)
    if predicted_key is None:  # hundreds of nested \sqrt{: no reference answer is like it
        return GradeResult(False, predicted, "too deeply nested to compare")
    quick = _quick_verdict(key, predicted_key)
    if quick is not None:
        return GradeResult(quick.equal, predicted, quick.reason)
    return _NeedsWorker(predicted, key, predicted_key)


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
