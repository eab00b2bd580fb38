"""One budget for a whole batch: which questions get the next round of samples.

A pooled batch spends its budget in waves. The first wave gives every question the same first round. After
it, a question whose vote is decided, or that has reached its own cap of samples, gets nothing more, and what it
did not spend stays in the pool for the questions still undecided. Each later wave grants one round to every
undecided question the pool can still afford, the least settled first (the smallest margin between leader and
runner-up), so that when the pool runs short its last samples go where they are most likely to change an answer;
a question whose first round the pool cut short is brought up to a full round before that.

A grant is a worst case (samples x ``max_tokens``), so the pool is never overdrawn; what a round did not use is
back in the pool for the next wave. Waves are barriers and a grant depends only on the samples drawn so far, so a
seeded batch spends its budget the same way every time, however its requests interleave.

A batch of tree searches (``ttc.pooled_search``) is granted whole searches instead (``search_wave``): a grant is
the tokens one search may spend at most, which its meter enforces, and the questions whose solutions disagree get
the next searches, least settled first, while the pool affords their grants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ttc.controller.per_question import AUTO_MAX_SAMPLES, limit_text
from ttc.errors import BudgetExhausted, ConfigError
from ttc.types import Budget, Usage, is_int

POOLED_STRATEGIES = ("auto", "self_consistency")
WEIGHTED_MIN_SAMPLES = 8


@dataclass(frozen=True)
class Standing:
    """Where one question of the batch stands between waves."""

    index: int  # position in the batch
    drawn: int  # samples drawn so far
    cap: int  # samples it may draw at most
    open: bool  # neither decided nor out of samples: it could use another round
    margin: float  # leader's lead over the runner-up, as a share of the vote (ttc.strategies.vote_rounds)


@dataclass
class Pool:
    """The batch's budget and what the whole batch has spent from it (every question's tokens and calls)."""

    budget: Budget
    clock: Callable[[], float] = time.monotonic
    tokens_spent: int = 0
    calls_spent: int = 0
    _start: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    @property
    def started(self) -> float:
        """When the batch began, on its clock: each question's meter counts the wall limit from here."""
        return self._start

    def tokens_left(self) -> int | None:
        return None if self.budget.tokens is None else max(0, self.budget.tokens - self.tokens_spent)

    def calls_left(self) -> int | None:
        return None if self.budget.calls is None else max(0, self.budget.calls - self.calls_spent)

    def settle(self, usages: Iterable[Usage]) -> None:
        """What the whole batch has spent, from every question's usage after a wave."""
        spent = list(usages)
        self.tokens_spent = sum(u.generated_tokens for u in spent)
        self.calls_spent = sum(u.backend_calls for u in spent)

    def out_of_time(self) -> bool:
        """Whether the wall limit has passed: it is checked before each wave, never in the middle of one."""
        return self.budget.wall_s is not None and self.clock() - self._start >= self.budget.wall_s


def check_bought(pool: Pool, usages: Iterable[Usage]) -> None:
    """Refuse (BudgetExhausted) a batch whose wall time ran out before any of its questions made a backend call, as
    ``solve`` refuses one question's: otherwise every trace read 'done' with no answer, and the caller had no error
    to say the budget bought nothing.

    A batch that answered some of its questions keeps those answers: the questions the pool could no longer serve
    say so in their ``stop`` events, as when its tokens run out.
    """
    calls = [u.backend_calls for u in usages]
    if pool.out_of_time() and not any(calls):
        raise BudgetExhausted(f"the batch budget's {limit_text(pool.budget, 'wall_s')} ran out before any of its "
                              f"{len(calls)} questions made a backend call (it counts from the batch's start, and "
                              "every question's trace opens first), so it bought no answer: raise Budget.wall_s")


def pooled_options(strategy: str, options: Mapping[str, object], *, has_verifier: bool) -> dict[str, object]:
    """The self-consistency options every question of a pooled batch runs with.

    A pooled batch grows self-consistency votes a round at a time, so only ``auto`` and ``self_consistency`` can
    share a batch's budget. Under ``auto`` a question may draw up to ``AUTO_MAX_SAMPLES``: its cap is what the
    pool could lend it, not an equal share. Where ``auto`` votes weighted by a verifier, a question stops only when
    ``WEIGHTED_MIN_SAMPLES`` samples all agree: a weighted lead misleads early (with the bundled mini models,
    stopping at a 0.75 share after 4 samples left the batch 6.7 points below an even split of the same tokens;
    benchmarks/batch_budget.py).
    """
    if strategy not in POOLED_STRATEGIES:
        raise ConfigError(f"budget_scope='batch' shares the budget by growing self-consistency votes round by round "
                          f"or by granting tree searches one at a time: use strategy='auto', 'self_consistency' or a "
                          f"tree search (beam, dvts, rebase, ets) with it, not {strategy!r} (or keep "
                          "budget_scope='question')")
    opts = dict(options)
    if strategy == "auto":
        opts.setdefault("max_samples", AUTO_MAX_SAMPLES)
        if opts.get("select", "auto") in ("weighted_vote", "score") or (opts.get("select", "auto") == "auto"
                                                                      and has_verifier):
            opts.setdefault("stop_share", 1.0)
            cap = opts["max_samples"]
            opts.setdefault("min_samples", min(WEIGHTED_MIN_SAMPLES, cap) if is_int(cap) else WEIGHTED_MIN_SAMPLES)
    return opts


class UnaffordableBatch(ConfigError):
    """A batch budget whose tokens cannot give each question its start (one sample, or one step of its search):
    some questions would get no answer.

    It keeps its figures, so that a caller whose budget is set a question (``ttc eval --budget-scope batch`` pools
    ``--budget`` times the number of questions, and checks it as a batch of one) can refuse it in the terms it was
    set in (``per_question``), not as "each of 1 questions".
    """

    def __init__(self, tokens: int, questions: int, *, option: str, each: int, search: bool) -> None:
        self.tokens, self.questions, self.option, self.each, self.search = tokens, questions, option, each, search
        whom = f"each of {questions} questions' searches" if search else f"each of {questions} questions"
        super().__init__(f"a batch budget of {tokens} tokens cannot give {whom} {self._start} ({questions * each} "
                         f"tokens): raise the budget or lower {option}")

    @property
    def _start(self) -> str:
        return f"{'one step' if self.search else 'one sample'} of up to {self.option}={self.each}"

    def per_question(self, name: str, option_flag: str | None = None) -> str:
        """The refusal worded for a budget set a question (the batch's is that times the number of questions),
        named as its user set it (``--budget``), with how its user sets an option (``-o``) where that is a flag."""
        whom = "each question's search" if self.search else "each question"
        lower = self.option if option_flag is None else f"{self.option} ({option_flag} {self.option}=N)"
        return (f"{name} {self.tokens // self.questions} tokens a question cannot give {whom} {self._start}: raise "
                f"{name} to at least {self.each} or lower {lower}")


def check_affordable(budget: Budget, questions: int, max_tokens: int) -> None:
    """Refuse a batch budget that cannot give every question one sample: some questions would get no answer."""
    if budget.tokens is not None and budget.tokens < questions * max_tokens:
        raise UnaffordableBatch(budget.tokens, questions, option="max_tokens", each=max_tokens, search=False)
    _check_calls(budget, questions)


def check_affordable_search(budget: Budget, questions: int, step_tokens: int) -> None:
    """Refuse a batch budget that cannot give every question's search one step: some would get no answer."""
    if budget.tokens is not None and budget.tokens < questions * step_tokens:
        raise UnaffordableBatch(budget.tokens, questions, option="max_step_tokens", each=step_tokens, search=True)
    _check_calls(budget, questions)


def _check_calls(budget: Budget, questions: int) -> None:
    if budget.calls is not None and budget.calls < questions:
        raise ConfigError(f"a batch budget of {budget.calls} calls cannot give each of {questions} questions one "
                          "backend call: raise budget.calls to at least the number of questions")


def first_wave(pool: Pool, questions: int, *, round_size: int, cap: int, max_tokens: int) -> int:
    """How many samples every question draws first: a full round when the pool affords one for all."""
    samples = min(round_size, cap)
    left = pool.tokens_left()
    if left is not None:
        samples = min(samples, left // (questions * max_tokens))
    return max(1, samples)


def next_wave(standings: Sequence[Standing], pool: Pool, *, round_size: int, max_tokens: int) -> dict[int, int]:
    """The samples each question draws in the next wave, by batch index; empty when the batch is done.

    Questions whose first round a short pool cut down are brought up to a full round before any other gets more:
    a vote of one or two samples says too little to rank, and an even first round is what an equal split would
    have given them.
    """
    if pool.out_of_time():
        return {}
    tokens, calls = pool.tokens_left(), pool.calls_left()
    grants: dict[int, int] = {}
    wanting = (s for s in standings if s.open and s.drawn < s.cap)
    for s in sorted(wanting, key=lambda s: (s.drawn >= round_size, s.margin, s.drawn, s.index)):
        if calls is not None and calls < 1:
            break
        samples = min(round_size - s.drawn if s.drawn < round_size else round_size, s.cap - s.drawn)
        if tokens is not None:
            samples = min(samples, tokens // max_tokens)
            if samples < 1:
                break
            tokens -= samples * max_tokens
        if calls is not None:
            calls -= 1
        grants[s.index] = samples
    return grants


@dataclass(frozen=True)
class SearchStanding:
    """Where one question of a pooled batch of tree searches stands between waves."""

    index: int  # position in the batch
    searches: int  # searches run so far
    cap: int  # searches it may run at most
    open: bool  # neither decided nor out of searches
    margin: float  # its weighted vote's leader's lead over the runner-up, as a share of the vote (0.0 before any)
    next_tokens: int | None  # the grant its next search would need (None: the batch has no token limit)
    least_tokens: int | None = None  # the least grant its next search may take instead (None: next_tokens or none)


@dataclass(frozen=True)
class Grant:
    """What one search of a pooled batch may spend at most (``None``: no limit on that axis)."""

    tokens: int | None
    calls: int | None


def search_wave(standings: Sequence[SearchStanding], pool: Pool) -> dict[int, Grant]:
    """The searches of the next wave of a pooled batch of tree searches, by batch index; empty when it is done.

    Every question still open and under its cap gets one more search, the least settled first (the smallest
    margin of its weighted vote), while the pool affords it: its whole grant, or what the pool has left where that
    is at least its ``least_tokens`` (the search's own meter stops it there, so the pool is never overdrawn; a
    question whose grant no longer fits waits, and a smaller one behind it may go). Without the smaller grant a
    batch of few questions never searched twice: its second grants, twice the first, overdrew what even an untouched
    pool holds. A batch budget of calls is shared out evenly over the wave's searches, at least one each.
    """
    if pool.out_of_time():
        return {}
    tokens, calls = pool.tokens_left(), pool.calls_left()
    chosen: dict[int, int | None] = {}  # batch index -> its grant of tokens
    for s in sorted(standings, key=lambda s: (s.margin, s.searches, s.index)):
        if not s.open or s.searches >= s.cap or (calls is not None and len(chosen) >= calls):
            continue
        grant = s.next_tokens
        if tokens is not None and s.next_tokens is not None:
            least = s.next_tokens if s.least_tokens is None else min(s.least_tokens, s.next_tokens)
            grant = min(s.next_tokens, tokens)
            if grant < least:
                continue
            tokens -= grant
        chosen[s.index] = grant
    each_calls = None if calls is None or not chosen else calls // len(chosen)
    return {index: Grant(tokens=grant, calls=each_calls) for index, grant in chosen.items()}


__all__ = ["POOLED_STRATEGIES", "Grant", "Pool", "SearchStanding", "Standing", "UnaffordableBatch",
           "check_affordable", "check_affordable_search", "check_bought", "first_wave", "next_wave", "pooled_options",
           "search_wave"]
