"""Argument types and the error exit the benchmark scripts share: a bad count is a usage error at once, never a
traceback after the models load, nor a table of nothing."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
    try:
        return main()
    except TTCError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    raise AssertionError("unreachable")  # parser.exit raises SystemExit


__all__ = ["at_least_one", "count_list", "model_folder", "optional_count_list", "probability", "run_or_exit",
           "sampling_temperature"]

if __name__ == "__main__":
    sys.exit("a module of the benchmark scripts, not a script")
