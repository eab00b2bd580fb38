"""ttc: spend inference compute wisely on hard questions.

``solve(prompt, budget)`` answers one question within a budget of generated tokens; ``solve_batch`` answers many
concurrently; every run is recorded as a trace (``ttc traces``).
"""

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
