"""Argument types and the error exit the benchmark scripts share: a bad count is a usage error at once, never a
traceback after the models load, nor a table of nothing."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from ttc.bench.datasets import MAX_SYNTHETIC_ROWS
from ttc.bench.synthetic import EVAL_SEEDS
from ttc.errors import TTCError

T = TypeVar("T")


def at_least_one(text: str) -> int:
    """A count that must be >= 1 (problems, samples, threads, a budget): zero would print figures of nothing."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def synthetic_problems(text: str) -> int:
    """A count of synthetic problems: >= 1, and no more than one seed of the synthetic dataset holds, which
    ``load_dataset`` would refuse only once the script runs."""
    value = at_least_one(text)
    if value > MAX_SYNTHETIC_ROWS:
        raise argparse.ArgumentTypeError(f"must be an int in [1, {MAX_SYNTHETIC_ROWS}] (the problems one synthetic "
                                         f"seed holds), got {text!r}")
    return value


def sampling_seed(text: str) -> int:
    """A seed >= 0 for sampling: ttc refuses a negative one (``random.Random(-s)`` draws what ``Random(s)`` does),
    but only when the first question is asked, after the models load."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def torch_seed(text: str) -> int:
    """A seed for ``torch.manual_seed``, which refuses one outside [0, 2**63) only once the models have loaded and
    greedy decoding has run."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 2**63), got {text!r}")
    return value


def synthetic_seed(base: int = 0) -> Callable[[str], int]:
    """The type of a seed >= 0 (the scripts sample with it too, and ttc refuses a negative one) with which a script
    draws its synthetic problems as ``base + seed``: the sum must be one of ``load_dataset``'s held-out seeds, and
    the range is stated in the seed the user types, not in the sum."""
    high = len(EVAL_SEEDS) - base

    def seed(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value < high:
            shift = f" (the problems' synthetic seed is {base} + it)" if base else ""
            raise argparse.ArgumentTypeError(f"must be an int in [0, {high}){shift}, got {text!r}")
        return value

    return seed


def count_list(text: str) -> list[int]:
    """A comma-separated list of distinct counts >= 1 (budgets, widths): each is an arm of the table."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"must be distinct ints >= 1 separated by commas, such as 1,2,4; got {text!r}")
    return values


def optional_count_list(text: str) -> list[int]:
    """Like :func:`count_list`, where an empty string leaves that kind of arm out."""
    return count_list(text) if text.strip() else []


def sampling_temperature(text: str) -> float:
    """A sampling temperature > 0: 0 is greedy decoding, which draws the same text every time (and transformers
    refuses it for sampling)."""
    value = _number(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 100], got {text!r}")
    return value


def probability(text: str) -> float:
    """A nucleus (top_p) in (0, 1], as the strategies take it."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def positive_list(text: str) -> list[float]:
    """A comma-separated list of distinct finite numbers > 0 (budget fractions): nan or inf would pass a ``<= 0``
    check and fail only when the arm's budget is computed, and a fraction given twice is one arm counted twice."""
    values = [_number(part) for part in text.split(",")]
    if not all(math.isfinite(v) and v > 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"must be finite numbers > 0, each given once, separated by commas, such "
                                         f"as 0.5,1; got {text!r}")
    return values


def weight_list(text: str) -> list[float]:
    """A comma-separated list of distinct finite numbers >= 0 (cost weights): each is an arm of the table, and the
    strategies refuse a negative weight only when that arm runs."""
    values = [_number(part) for part in text.split(",")]
    # An arm is named by its weight to 6 significant digits: two weights named alike would leave one arm.
    if not all(math.isfinite(v) and v >= 0 for v in values) or len({f"{v:g}" for v in values}) != len(values):
        raise argparse.ArgumentTypeError(f"must be distinct finite numbers >= 0 separated by commas, such as 0,1,2, "
                                         f"that differ in their first 6 significant digits; got {text!r}")
    return values


def finite_positive(text: str) -> float:
    """A finite number > 0 (a size cap, a bandwidth): nan passes a ``<= 0`` check and then compares false with every
    size, and inf removes the cap."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def writable_path(path: Path) -> str | None:
    """Why ``path`` cannot be written once its missing folders are made, or None: checked while parsing, since the
    scripts write their file only after the run."""
    if path.is_dir():
        return f"{str(path)!r} is a folder; name a file"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is not a folder, so {str(path)!r} cannot be made"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"the folder {str(ancestor)!r} is not writable"
    return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # fails every range check


def model_folder(text: str) -> Path:
    """A local model folder (a ``config.json`` in it): a name that is no folder is refused here, rather than read
    as a Hub model id that a library would try to download."""
    path = Path(text)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"must be a model folder holding config.json, got {text!r}")
    return path


def run_or_exit(parser: argparse.ArgumentParser, main: Callable[[], T]) -> T:
    """``main()``, where a ttc error (a setting the models or the library refuse) ends the script as a usage error
    that says what to change, not a traceback."""
    return _usage_errors(main, parser.prog)


def run_script(entry: Callable[[], T]) -> T:
    """``entry()`` for a script's ``__main__``, where the parser may live inside ``entry``: a ttc error ends the
    script as the usage error argparse would print (the script's name, "error:", exit code 2), not a traceback.
    The scripts check what they can while parsing; this covers a setting the library refuses later."""
    return _usage_errors(entry, Path(sys.argv[0]).name)


def _usage_errors(entry: Callable[[], T], prog: str) -> T:
    try:
        return entry()
    except (TTCError, BaseExceptionGroup) as exc:
        error = _ttc_error(exc)
        if error is None:
            raise
        _usage_exit(prog, error)


def _ttc_error(exc: BaseException) -> TTCError | None:
    """``exc`` when it is a ttc error, the first of a task group's errors when they all are, else None: anything
    else is a bug and keeps its traceback."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(TTCError)
        return _ttc_error(matched.exceptions[0]) if matched is not None and rest is None else None
    return exc if isinstance(exc, TTCError) else None


def _usage_exit(prog: str, error: TTCError) -> NoReturn:
    """What ``parser.error`` prints and how it exits, for an error found after parsing."""
    sys.stderr.write(f"{prog}: error: {error}\n")
    sys.exit(2)


__all__ = ["at_least_one", "count_list", "finite_positive", "model_folder", "optional_count_list",
           "positive_list", "probability", "run_or_exit", "run_script", "sampling_seed", "sampling_temperature",
           "synthetic_problems", "synthetic_seed", "torch_seed", "weight_list", "writable_path"]

if __name__ == "__main__":
    sys.exit("a module of the benchmark scripts, not a script")
