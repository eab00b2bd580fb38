"""ttc: spend inference compute wisely on hard questions.

``solve(prompt, budget)`` answers one question within a budget of generated tokens; ``solve_batch`` answers many
concurrently; every run is recorded as a trace (``ttc traces``).

The names below load on first use: ``import ttc`` (and so every ``import ttc.something``) would otherwise load
the whole service, about 0.6 s of SQLAlchemy, HTTP clients and torch, before the ``ttc`` command could even catch a
Ctrl-C, and for a caller that only grades answers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ttc.api import asolve, asolve_batch, solve, solve_batch
    from ttc.backends.base import Backend, BackendStats
    from ttc.errors import (
        BackendError,
        BudgetExhausted,
        ConfigError,
        ContextLengthError,
        NotFound,
        OutputError,
        RejectedData,
        StorageError,
        TTCError,
        VerifierError,
    )
    from ttc.sleeptime import asleep, load_notes, sleep
    from ttc.strategies.base import strategy_names
    from ttc.types import Budget, Candidate, Completion, Node, Notes, Problem, Result, Sampling, Usage
    from ttc.verifiers.answer import extract_answer, grade

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    name: module
    for module, names in {
        "ttc.api": ("asolve", "asolve_batch", "solve", "solve_batch"),
        "ttc.backends.base": ("Backend", "BackendStats"),
        "ttc.errors": ("BackendError", "BudgetExhausted", "ConfigError", "ContextLengthError", "NotFound",
                       "OutputError", "RejectedData", "StorageError", "TTCError", "VerifierError"),
        "ttc.sleeptime": ("asleep", "load_notes", "sleep"),
        "ttc.strategies.base": ("strategy_names",),
        "ttc.types": ("Budget", "Candidate", "Completion", "Node", "Notes", "Problem", "Result", "Sampling", "Usage"),
        "ttc.verifiers.answer": ("extract_answer", "grade"),
    }.items()
    for name in names
}


def __getattr__(name: str) -> object:
    """Load an exported name's module the first time the name is asked for, then keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ttc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Backend",
    "BackendError",
    "BackendStats",
    "Budget",
    "BudgetExhausted",
    "Candidate",
    "Completion",
    "ConfigError",
    "ContextLengthError",
    "Node",
    "NotFound",
    "Notes",
    "OutputError",
    "Problem",
    "RejectedData",
    "Result",
    "Sampling",
    "StorageError",
    "TTCError",
    "Usage",
    "VerifierError",
    "__version__",
    "asleep",
    "asolve",
    "asolve_batch",
    "extract_answer",
    "grade",
    "load_notes",
    "sleep",
    "solve",
    "solve_batch",
    "strategy_names",
]
