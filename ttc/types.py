"""Value types shared by every part of ttc: budgets, usage, sampling settings, completions, nodes, results.

They are frozen so that a value handed to a strategy, a backend or the trace store cannot change under it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal, TypeGuard

from ttc.errors import ConfigError

FinishReason = Literal["stop", "length", "abort"]
NodeStatus = Literal["active", "pruned", "finished", "selected"]


BUDGET_LIMIT = 2**63 - 1
"""The largest limit a budget takes; None is no limit."""


def _positive(name: str, value: float | None, *, whole: bool = False) -> None:
    if value is None:
        return
    kind = "a positive int" if whole else "a positive number"
    if not (is_int(value) if whole else is_number(value)) or not value > 0 or value == math.inf:  # NaN fails > 0
        raise ConfigError(f"Budget.{name} must be {kind} or None (unlimited), got {value!r}")
    # Before isfinite, which overflows on an int past float range; every limit is also read as a float.
    if value > BUDGET_LIMIT or not math.isfinite(value):
        raise ConfigError(f"Budget.{name} must be at most 2**63 - 1, got a {len(str(int(value)))}-digit number: "
                          "use None for no limit on it")


@dataclass(frozen=True)
class Budget:
    """How much a question may spend. ``None`` means unlimited along that axis.

    ``tokens`` counts generated tokens (the unit every strategy is compared in), ``wall_s`` seconds of wall
    time, ``calls`` backend calls. At least one limit must be set, or a search could run forever.
    """

    tokens: int | None = None
    wall_s: float | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and not is_int(self.tokens):
            raise ConfigError(f"Budget.tokens must be an int, got {type(self.tokens).__name__}")
        _positive("tokens", self.tokens)
        _positive("wall_s", self.wall_s)
        _positive("calls", self.calls, whole=True)
        if self.tokens is None and self.wall_s is None and self.calls is None:
            raise ConfigError("Budget needs at least one limit: tokens, wall_s or calls")

    @classmethod
    def of(cls, budget: int | Budget) -> Budget:
        """Accept the API's ``int | Budget``: an int is a number of generated tokens."""
        if isinstance(budget, Budget):
            return budget
        if not is_int(budget):
            raise ConfigError(f"budget must be an int (generated tokens) or a Budget, got {budget!r}")
        return cls(tokens=budget)

    def scaled(self, share: float) -> Budget:
        """A sub-budget holding ``share`` of each limit (at least one unit of each finite limit)."""
        if not 0 < share <= 1:
            raise ConfigError(f"budget share must be in (0, 1], got {share}")
        return Budget(
            tokens=None if self.tokens is None else max(1, int(self.tokens * share)),
            wall_s=None if self.wall_s is None else self.wall_s * share,
            calls=None if self.calls is None else max(1, int(self.calls * share)),
        )


@dataclass(frozen=True)
class Usage:
    """What a run spent. ``peak_kv_tokens`` is the largest number of KV-cache tokens live at once: on the local
    engine, the engine's own count at the run's calls, which includes every other question in flight on the same
    engine (alone, it is the run's; in a concurrent batch, the engine's peak while the run was in it); elsewhere,
    the run's own estimate (its prompt and the sequences it holds)."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    verifier_tokens: int = 0
    backend_calls: int = 0
    verifier_calls: int = 0
    peak_kv_tokens: int = 0
    wall_s: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        """Sum two usages; the peak of a sum is the larger peak (runs are assumed not to overlap)."""
        values = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        values["peak_kv_tokens"] = max(self.peak_kv_tokens, other.peak_kv_tokens)
        return Usage(**values)

    def with_(self, **changes: int | float) -> Usage:
        return replace(self, **changes)  # type: ignore[arg-type]


MIN_TEMPERATURE = 1e-4
"""The smallest temperature above 0: logits divided by much less overflow a float32 softmax (NaN), and at this
one a logit gap of 0.01 already weighs e^100 to 1, so nothing below it differs from greedy decoding."""


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings, in the shape both vLLM and the local engine accept."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    distinct: bool = False
    """Draw the ``n`` continuations without replacement: ``n`` different token sequences, fewer only when the
    (temperature-scaled, top-p-truncated) distribution has fewer. The local engine draws them by stochastic beam
    search; a backend that cannot refuses the call."""

    def __post_init__(self) -> None:
        # Checked here, in the caller's thread: a wrong type would otherwise fail inside an engine thread or a
        # server as an error that names neither the field nor the fix.
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ConfigError(f"Sampling.max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not is_finite_number(self.temperature) or self.temperature < 0:
            raise ConfigError(f"Sampling.temperature must be a finite number >= 0, got {self.temperature!r}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ConfigError(f"Sampling.temperature {self.temperature!r} is too small to scale logits by (below "
                              f"{MIN_TEMPERATURE:g} they overflow to infinity): use 0 for greedy decoding")
        if not is_finite_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"Sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.stop, str) or not isinstance(self.stop, tuple | list) or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise ConfigError(f"Sampling.stop must be a tuple of non-empty strings (stop=('\\n\\n',) for one), "
                              f"got {self.stop!r}")
        # A list is taken as the tuple it stands for: a Sampling is hashed as a cache key, and compared.
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.seed is not None and not is_int(self.seed):
            raise ConfigError(f"Sampling.seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.distinct, bool):
            raise ConfigError(f"Sampling.distinct must be a bool, got {self.distinct!r}")
        if self.distinct and self.temperature == 0:
            raise ConfigError("Sampling.distinct draws from a distribution and greedy decoding has one sequence: "
                              "set a temperature > 0, or distinct=False")


def check_unicode(text: str, name: str) -> None:
    """Refuse a lone surrogate (text decoded from bytes with ``surrogateescape``): no store or tokenizer can
    encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{name} is not valid Unicode text (a lone surrogate at position {exc.start}): decode "
                          "the bytes it came from with their real encoding") from None


def is_int(value: object) -> TypeGuard[int]:
    """An int and not a bool: ``True`` would otherwise pass every count check as 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float and not a bool (a string such as ``"5"`` is not one either)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def real_float(value: object) -> float | None:
    """``value`` as a float if it is a real number (any ``numbers.Real``, numpy's included) that converts to one;
    None for a bool (a flag, not a number), a non-number, or an int past float range, whose ``float()`` overflows
    wherever it is first read as one."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """A number that reads as a finite float: an int past float range is not one, since the engine samples with
    (and httpx times out after) the float it stands for, and converting it there would fail far from the caller."""
    return is_number(value) and (number := real_float(value)) is not None and math.isfinite(number)


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. ``text`` is derived from ``token_ids``; a stop string is kept in both."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    logprobs: tuple[float, ...] | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0

    @property
    def cumulative_logprob(self) -> float | None:
        return None if self.logprobs is None else float(sum(self.logprobs))


@dataclass(frozen=True)
class PromptLogprobs:
    """Log-probabilities of a prompt's own tokens, for scoring (token-level PRMs, perplexity).

    ``top[i]`` maps token id -> logprob for the distribution at position ``i`` (predicting ``token_ids[i]``
    from ``token_ids[:i]``); it always contains ``token_ids[i]`` itself and the requested top-k. ``top[0]``
    is ``None``: nothing predicts the first token.
    """

    token_ids: tuple[int, ...]
    top: tuple[Mapping[int, float] | None, ...]

    def token_logprob(self, position: int) -> float | None:
        dist = self.top[position]
        return None if dist is None else dist.get(self.token_ids[position])


@dataclass(frozen=True)
class Node:
    """One node of a strategy's tree as the trace store records it. Ids are local to a trace."""

    id: int
    parent: int | None
    depth: int
    text: str
    token_count: int
    status: NodeStatus = "active"
    logprob: float | None = None
    step_scores: tuple[float, ...] = ()
    score: float | None = None
    answer: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class TraceEvent:
    """A decision worth replaying: a round's selection, a controller allocation, an early stop.

    ``payload`` must be JSON-serialisable; ``t`` is seconds since the trace started.
    """

    kind: str
    payload: Mapping[str, object]
    t: float = 0.0
    node_id: int | None = None


CONTEXT_ROW = "context_row"
"""``Problem.meta`` key a dataset sets on a question about a context: the row of the first question about that
context in the whole dataset, whatever slice was loaded. An evaluation seeds the context's sleep run from it, so a
row's result depends on its seed and row alone. It is derived from the dataset, not part of the problem's content
(the store's problem id leaves it out)."""


@dataclass(frozen=True)
class Problem:
    """A question as strategies see it. ``gold`` is known only in evaluation and never shown to a strategy.

    ``context`` is text that this question shares with others (a document, the state of a word problem): the
    question is asked through the setup's context template, with the notes a sleep run wrote about that context
    where the session has them, so several questions can share one sleep run (``ttc eval --sleep-budget``).
    """

    question: str
    gold: str | None = None
    dataset: str | None = None
    index: int | None = None
    meta: Mapping[str, object] = field(default_factory=dict)
    context: str | None = None

    def __post_init__(self) -> None:
        # The store keys a problem by its JSON (sort_keys): an int key beside a str one fails there, after the
        # question has been solved, and a lone int key would come back as a str.
        if not isinstance(self.meta, Mapping) or not all(isinstance(key, str) for key in self.meta):
            raise ConfigError(f"Problem.meta must be a mapping with str keys, got {self.meta!r}")


@dataclass(frozen=True)
class Candidate:
    """A complete solution a strategy considered for the final answer."""

    text: str
    answer: str | None
    score: float | None
    token_count: int
    node_id: int | None = None
    votes: float | None = None


@dataclass(frozen=True)
class Result:
    """What ``solve`` returns: the chosen answer, the text it came from, and what it cost."""

    answer: str | None
    text: str
    score: float | None
    strategy: str
    usage: Usage
    trace_id: str | None
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Notes:
    """What sleep-time compute wrote about a context before its questions came (``ttc.sleep``).

    Pass them to ``solve(..., notes=notes)``: each question is then asked with the context and these notes, and
    its trace names the sleep trace and what the notes cost, so the cost can be shared out over the questions.
    """

    context: str
    text: str
    usage: Usage
    trace_id: str | None
    model: str
    """The backend that wrote them (``Backend.name``)."""


__all__ = [
    "CONTEXT_ROW",
    "MIN_TEMPERATURE",
    "Budget",
    "Candidate",
    "Completion",
    "FinishReason",
    "Node",
    "NodeStatus",
    "Notes",
    "Problem",
    "PromptLogprobs",
    "Result",
    "Sampling",
    "TraceEvent",
    "Usage",
    "check_unicode",
    "is_int",
    "is_number",
]
