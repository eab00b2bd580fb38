"""Batch evaluation: run a strategy over a dataset, grade every answer, write every trace, resume after a crash.

A run is a row in the store; each problem is a trace carrying a ``grade`` event. Resuming a run marks traces a
dead process left ``running`` as failed and solves exactly the problems that have no ``done`` trace yet, so an
interrupted evaluation ends with one done trace per problem: none missing, none twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from ttc.api import Session, bounded_gather, solve_problem
from ttc.backends.base import Backend
from ttc.errors import ConfigError, TTCError
from ttc.storage import TraceStore
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
                   progress: Progress | None = None) -> EvalReport:
    """Solve and grade ``problems``; with ``resume`` set, continue that run instead of starting a new one."""
    store = session.store
    if store is None:
        raise ConfigError("evaluation writes every trace: it needs a trace store (do not pass store=False)")
    if any(p.gold is None for p in problems):
        raise ConfigError("every problem of an evaluation needs a gold answer")
    run_id = _open_run(store, resume, config or {})
    todo = [p for p in problems if p.index not in store.done_problem_indices(run_id)]
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

    before = await cache_snapshot(session.setup.backend)
    await bounded_gather([partial(one, p) for p in todo], concurrency)
    hit_rate = await cache_hit_rate(session.setup.backend, before)
    report = summarize(store, run_id, total=len(problems), wall_s=time.monotonic() - started, errors=errors)
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
        return store.create_run(kind="eval", config=config)
    store.get_run(resume)
    store.mark_stale_running(resume)
    return resume


async def _grade_event(problem: Problem, result: Result) -> Sequence[TraceEvent]:
    verdict = await agrade(result.text, problem.gold or "")
    return [TraceEvent(kind="grade", payload={"correct": verdict.correct, "predicted": verdict.predicted,
                                              "gold": problem.gold, "reason": verdict.reason})]


def summarize(store: TraceStore, run_id: str, *, total: int, wall_s: float,
              errors: Sequence[str] = ()) -> EvalReport:
    """Accuracy and cost of a run, read back from the store (so resumed runs count their earlier traces)."""
    done = store.list_traces(run_id=run_id, status="done", limit=1_000_000)
    failed_indices = {t.problem_index for t in store.list_traces(run_id=run_id, status="failed", limit=1_000_000)}
    correct = 0
    tokens = 0
    done_indices = set()
    for summary in done:
        record = store.get_trace(summary.id)
        done_indices.add(summary.problem_index)
        tokens += record.usage.generated_tokens
        correct += any(e.kind == "grade" and e.payload.get("correct") is True for e in record.events)
    return EvalReport(run_id=run_id, total=total, done=len(done), failed=len(failed_indices - done_indices),
                      correct=correct, mean_tokens=tokens / len(done) if done else 0.0, wall_s=wall_s,
                      trace_ids=tuple(s.id for s in done), errors=tuple(errors))


__all__ = ["EvalReport", "evaluate", "summarize"]
