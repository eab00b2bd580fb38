"""What the trace store's reads return: frozen records, detached from any database session.

Readers (the CLI, the viewer, the eval runner) get plain values they may keep after the store is closed, never
ORM rows whose attributes could trigger a query on a session that is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ttc.types import Budget, Candidate, Node, Problem, Result, TraceEvent, Usage

EXPORT_FORMAT = "ttc.trace/1"


def _seconds(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else (end - start).total_seconds()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _problem_json(problem: Problem) -> dict[str, Any]:
    """The problem field by field, not ``asdict``: that deep-copies ``meta`` recursively, two stack frames per
    level, so a meta nested a few hundred levels deep (read from a dataset row) made the export fail."""
    return {
        "question": problem.question,
        "gold": problem.gold,
        "dataset": problem.dataset,
        "index": problem.index,
        "meta": dict(problem.meta),
        "context": problem.context,
    }


@dataclass(frozen=True)
class RunSummary:
    """A run and how many of its traces are done or failed so far."""

    id: str
    kind: str
    name: str | None
    status: str
    config: Mapping[str, Any]
    summary: Mapping[str, Any] | None
    started_at: datetime
    finished_at: datetime | None
    traces: int
    done: int
    failed: int

    @property
    def duration_s(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)


@dataclass(frozen=True)
class TraceSummary:
    """One line of ``ttc traces list``: enough to pick a trace without loading its tree."""

    id: str
    run_id: str | None
    status: str
    strategy: str
    backend: str
    seed: int | None
    dataset: str | None
    problem_index: int | None
    question: str
    answer: str | None
    score: float | None
    generated_tokens: int | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)


@dataclass(frozen=True)
class TraceRecord:
    """A whole trace: summary fields, problem, tree (nodes by id) and decisions (events by seq)."""

    id: str
    run_id: str | None
    status: str
    strategy: str
    backend: str
    seed: int | None
    budget: Budget
    problem: Problem
    answer: str | None
    text: str | None
    score: float | None
    error: str | None
    usage: Usage | None
    """What the run spent; a failed trace's is what it had spent when it failed. None where nothing counted it: a
    trace still running, one failed while it was opening, or one failed for a process that died."""
    candidates: tuple[Candidate, ...]
    nodes: list[Node]
    events: list[TraceEvent]
    started_at: datetime
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)

    @property
    def result(self) -> Result | None:
        """The Result that finished this trace, rebuilt; None unless the trace is done."""
        if self.status != "done":
            return None
        return Result(
            answer=self.answer,
            text=self.text or "",
            score=self.score,
            strategy=self.strategy,
            usage=self.usage or Usage(),
            trace_id=self.id,
            candidates=self.candidates,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` takes it as is): the format of ``ttc traces export``."""
        return {
            "format": EXPORT_FORMAT,
            "id": self.id,
            "run_id": self.run_id,
            "status": self.status,
            "strategy": self.strategy,
            "backend": self.backend,
            "seed": self.seed,
            "budget": asdict(self.budget),
            "problem": _problem_json(self.problem),
            "answer": self.answer,
            "text": self.text,
            "score": self.score,
            "error": self.error,
            "usage": None if self.usage is None else asdict(self.usage),
            "candidates": [asdict(candidate) for candidate in self.candidates],
            "nodes": [{**asdict(node), "step_scores": list(node.step_scores)} for node in self.nodes],
            # Not asdict: it deep-copies each payload recursively, which a deeply nested one cannot survive.
            "events": [{"kind": event.kind, "payload": dict(event.payload), "t": event.t, "node_id": event.node_id}
                       for event in self.events],
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_s": self.duration_s,
        }


__all__ = ["EXPORT_FORMAT", "RunSummary", "TraceRecord", "TraceSummary"]
