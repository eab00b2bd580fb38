"""Every failure ttc raises on purpose is a ``TTCError``; its message says what went wrong and what to do.

The tree::

    TTCError
    ├── ConfigError          bad input or settings: empty prompt, budget <= 0, unknown strategy or option,
    │                        no backend configured, unreadable dataset row
    ├── BackendError         a backend refused, failed or timed out (``retryable`` says whether a retry may help)
    │   └── ContextLengthError   the request does not fit the model's context window (also a ConfigError)
    ├── BudgetExhausted      a strategy was asked to spend what its budget no longer holds
    ├── OutputError          the model's output cannot serve, and more budget would not change it (empty notes)
    ├── VerifierError        a verifier could not score (bad preset, missing judgement tokens)
    └── StorageError         the trace store cannot be opened, is locked, or is not writable
        ├── NotFound         a run or trace id (or id prefix) that names no record, or several
        └── RejectedData     the store refused one write (a value it cannot keep, a finished trace)

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class TTCError(Exception):
    """Base of every error ttc raises deliberately."""


class ConfigError(TTCError, ValueError):
    """Input or configuration is invalid; the message names the field and a valid alternative."""


class BackendError(TTCError):
    """A backend call failed. ``retryable`` is true for transient faults (connection, 429, 500, 502-504)."""

    def __init__(self, message: str, *, url: str | None = None, kind: str | None = None,
                 retryable: bool = False) -> None:
        where = " ".join(part for part in (kind, url) if part)
        super().__init__(f"{message} [{where}]" if where else message)
        self.url = url
        self.kind = kind
        self.retryable = retryable


class ContextLengthError(BackendError, ConfigError):
    """The request does not fit the model's context window, on a server or in the local engine alike, so one
    ``except`` serves both backends. Also a ConfigError: the fix is a shorter input, not a retry."""


class BudgetExhausted(TTCError):
    """Raised when a spend is requested that the remaining budget cannot cover."""


class OutputError(TTCError):
    """What the model wrote cannot serve the strategy (notes with no line), and a larger budget would buy the same:
    the model or its prompt template is what to change."""


class VerifierError(TTCError):
    """A verifier could not produce a score."""


class StorageError(TTCError):
    """The trace store failed: unreachable, locked, unwritable, or a trace id that does not exist."""


class NotFound(StorageError):
    """A run or trace id, or an id prefix, names no record in the store (or, for a prefix, several)."""


class RejectedData(StorageError):
    """The store refused one write for what it held (a value it cannot keep, a trace already finished): that
    write's failure, not the store's, so an evaluation fails that question and goes on with the others."""


__all__ = ["BackendError", "BudgetExhausted", "ConfigError", "ContextLengthError", "NotFound", "OutputError",
           "RejectedData", "StorageError", "TTCError", "VerifierError"]
