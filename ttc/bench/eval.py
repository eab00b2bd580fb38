"""Batch evaluation: run a strategy over a dataset, grade every answer, write every trace, resume after a crash.

A run is a row in the store; each problem is a trace carrying a ``grade`` event. Resuming a run marks traces a
dead process left ``running`` as failed and solves exactly the problems that have no ``done`` trace yet, so an
interrupted evaluation ends with one done trace per problem: none missing, none twice. A run that a live process
on this machine still evaluates is not resumed (``TraceStore.claim_run``), nor one started with other settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from functools import partial

from ttc.api import BudgetScope, Session, bounded_gather, check_budget_scope, check_concurrency, solve_problem
from ttc.backends.base import Backend
from ttc.errors import ConfigError, TTCError
from ttc.pooled import check_pooled, solve_pooled
from ttc.storage import TraceStore, TraceSummary
from ttc.types import Budget, Problem, Result, TraceEvent
from ttc.verifiers.answer import agrade

Progress = Callable[[Problem, Result | None], None]


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    total: int
    done: int
    failed: int
    correct: int
    mean_tokens: float
    wall_s: float
    trace_ids: tuple[str, ...] = field(default_factory=tuple)
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def accuracy(self) -> float:
        return self.correct / self.done if self.done else 0.0


async def evaluate(problems: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                   options: Mapping[str, object], seed: int, concurrency: int = 8,
                   config: Mapping[str, object] | None = None, resume: str | None = None,
                   progress: Progress | None = None, budget_scope: BudgetScope = "question") -> EvalReport:
    """Solve and grade ``problems``; with ``resume`` set, continue that run instead of starting a new one.

    ``budget`` is each problem's. With ``budget_scope="batch"`` the problems still to solve share ``budget`` times
    their number (``ttc.pooled``), so a run spends the same on average and the controller decides where; a resumed
    run shares what its remaining problems would have had. A wall-time limit then applies to the batch as a whole.
    """
    store = session.store
    if store is None:
        raise ConfigError("evaluation writes every trace: it needs a trace store (do not pass store=False)")
    if any(p.gold is None for p in problems):
        raise ConfigError("every problem of an evaluation needs a gold answer")
    indices = [p.index for p in problems]
    if None in indices or len(set(indices)) != len(indices):
        # A problem's index is how a run knows it is done, and seeds it: two alike would count as one.
        raise ConfigError("every problem of an evaluation needs its own index (its position in the dataset): "
                          "load them with ttc.bench.datasets.load_dataset, or set Problem(index=i) for each")
    check_concurrency(concurrency)
    if check_budget_scope(budget_scope) == "batch":
        check_pooled(budget, 1, strategy=strategy, options=options)
    run_id = _open_run(store, resume, config or {})
    done_before = store.done_problem_indices(run_id)
    todo = [p for p in problems if p.index not in done_before]
    session.run_id = run_id
    session.extra_events = _grade_event
    started = time.monotonic()
    errors: list[str] = []

    async def one(problem: Problem) -> None:
        problem_seed = seed + (problem.index or 0)
        try:
            result = await solve_problem(problem, budget, session, strategy=strategy, seed=problem_seed,
                                         options=options)
        except TTCError as exc:
            errors.append(f"problem {problem.index}: {exc}")
            result = None
        if progress is not None:
            progress(problem, result)

    async def pooled() -> None:
        shared = Budget(tokens=None if budget.tokens is None else budget.tokens * len(todo), wall_s=budget.wall_s,
                        calls=None if budget.calls is None else budget.calls * len(todo))
        try:
            results: Sequence[Result | None] = await solve_pooled(
                todo, shared, session, strategy=strategy, options=options, concurrency=concurrency,
                seeds=[seed + (p.index or 0) for p in todo])
        except TTCError as exc:
            errors.append(f"the batch of {len(todo)} problems sharing one budget: {exc}")
            results = [None] * len(todo)
        for problem, result in zip(todo, results, strict=True):
            if progress is not None:
                progress(problem, result)

    before = await cache_snapshot(session.setup.backend)
    if budget_scope == "batch" and todo:
        await pooled()
    else:
        await bounded_gather([partial(one, p) for p in todo], concurrency)
    hit_rate = await cache_hit_rate(session.setup.backend, before)
    report = summarize(store, run_id, total=len(problems), wall_s=time.monotonic() - started, errors=errors,
                       indices={p.index for p in problems})
    store.finish_run(run_id, status="done" if not errors else "failed",
                     summary={"accuracy": report.accuracy, "done": report.done, "failed": report.failed,
                              "correct": report.correct, "mean_tokens": report.mean_tokens,
                              "prefix_cache_hit_rate": hit_rate})
    return report


async def cache_snapshot(backend: Backend) -> object | None:
    """The server's prefix-cache counters, for backends that publish them (vLLM); None otherwise."""
    from ttc.backends.vllm import VLLMBackend

    if not isinstance(backend, VLLMBackend):
        return None
    try:
        return await backend.prefix_cache_snapshot()
    except TTCError:
        return None


async def cache_hit_rate(backend: Backend, before: object | None) -> float | None:
    """Share of prompt tokens the server's prefix cache served since ``before`` (None when unknown)."""
    from ttc.backends.vllm_metrics import PrefixCacheSnapshot, prefix_cache_hit_rate

    after = await cache_snapshot(backend)
    if not isinstance(before, PrefixCacheSnapshot) or not isinstance(after, PrefixCacheSnapshot):
        return None
    return prefix_cache_hit_rate(before, after)


def _open_run(store: TraceStore, resume: str | None, config: Mapping[str, object]) -> str:
    if resume is None:
        run_id = store.create_run(kind="eval", config=config)
        store.claim_run(run_id)
        return run_id
    _check_same_settings(resume, store.get_run(resume).config, config)
    store.claim_run(resume)  # refused while the process that holds it still runs: its traces are not stale
    store.mark_stale_running(resume)
    return resume


def _check_same_settings(run_id: str, stored: Mapping[str, object], given: Mapping[str, object]) -> None:
    """A resumed run must evaluate the same problems the same way, or its figures would mix two runs.

    Only where the backend lives may change (a restarted server on another port): its name is not compared.
    """
    given = json.loads(json.dumps(dict(given), default=str))  # as the store keeps it: tuples become lists
    differ = sorted(key for key in (stored.keys() | given.keys()) - {"backend"}
                    if stored.get(key) != given.get(key))
    if differ:
        changes = ", ".join(f"{key} {stored.get(key)!r} -> {given.get(key)!r}" for key in differ)
        raise ConfigError(f"run {run_id} was started with other settings ({changes}): resume it with the "
                          f"settings it was started with, or leave out --resume to start a new run")


async def _grade_event(problem: Problem, result: Result) -> Sequence[TraceEvent]:
    verdict = await agrade(result.text, problem.gold or "")
    return [TraceEvent(kind="grade", payload={"correct": verdict.correct, "predicted": verdict.predicted,
                                              "gold": problem.gold, "reason": verdict.reason})]


def summarize(store: TraceStore, run_id: str, *, total: int, wall_s: float,
              errors: Sequence[str] = (), indices: Set[int | None] | None = None) -> EvalReport:
    """Accuracy and cost of a run, read back from the store (so resumed runs count their earlier traces).

    Each problem counts once, by its newest done trace; with ``indices``, only those problems count.
    """
    wanted = (lambda index: True) if indices is None else indices.__contains__
    done: dict[int | None, TraceSummary] = {}
    for trace in store.list_traces(run_id=run_id, status="done", limit=None):  # newest first
        if wanted(trace.problem_index):
            done.setdefault(trace.problem_index, trace)
    failed_indices = {t.problem_index for t in store.list_traces(run_id=run_id, status="failed", limit=None)
                      if wanted(t.problem_index)}
    correct = 0
    tokens = 0
    for summary in done.values():
        record = store.get_trace(summary.id)
        tokens += record.usage.generated_tokens
        correct += any(e.kind == "grade" and e.payload.get("correct") is True for e in record.events)
    return EvalReport(run_id=run_id, total=total, done=len(done), failed=len(failed_indices - done.keys()),
                      correct=correct, mean_tokens=tokens / len(done) if done else 0.0, wall_s=wall_s,
                      trace_ids=tuple(s.id for s in done.values()), errors=tuple(errors))


__all__ = ["EvalReport", "evaluate", "summarize"]
