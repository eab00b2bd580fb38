"""Conversions between ttc's value types (ttc.types) and the trace store's rows.

Rows are built as plain dicts so a whole tree goes to the database in one executemany, and read back into the
same frozen values, so that what a strategy recorded and what a reader gets compare equal. JSON columns hold
sequences as lists; they come back as the tuples the value types use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, cast

from ttc.errors import ConfigError
from ttc.storage.models import EventRow, NodeRow, ProblemRow
from ttc.types import CONTEXT_ROW, Budget, Candidate, Node, NodeStatus, Problem, TraceEvent, Usage, check_unicode

CONTEXT_KEY = "context"
"""Where a problem's shared context is kept in its stored ``meta`` (the problems table has no column for it)."""


def stored_meta(problem: Problem) -> dict[str, object]:
    """The meta as stored: the problem's own, plus its context under ``CONTEXT_KEY`` when it has one."""
    if CONTEXT_KEY in problem.meta:
        raise ConfigError(f"a problem's meta may not hold {CONTEXT_KEY!r}: pass the text it is about as "
                          "Problem(context=...)")
    meta = dict(problem.meta)
    if problem.context is not None:
        meta[CONTEXT_KEY] = problem.context
    return meta


def problem_id(problem: Problem) -> str:
    """A content hash, so the same question asked by many traces (an eval, a resume) is stored once; a context
    is part of the content, so one question about two contexts is two problems. ``CONTEXT_ROW`` is not content
    (it follows from the dataset), and a run started before datasets set it resumes with the same ids."""
    content = {key: value for key, value in stored_meta(problem).items() if key != CONTEXT_ROW}
    canonical = json.dumps(
        [problem.dataset, problem.index, problem.question, problem.gold, content],
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    # The question is checked where it is asked; a dataset row's other fields come straight from its file.
    check_unicode(canonical, "the problem's dataset name, gold answer or meta")
    return hashlib.sha256(canonical.encode()).hexdigest()


def problem_row(problem: Problem) -> dict[str, Any]:
    return {
        "id": problem_id(problem),
        "dataset": problem.dataset,
        "index": problem.index,
        "question": problem.question,
        "gold": problem.gold,
        "meta": stored_meta(problem),
    }


def problem_from(row: ProblemRow) -> Problem:
    meta = dict(row.meta or {})
    context = meta.pop(CONTEXT_KEY, None)
    return Problem(question=row.question, gold=row.gold, dataset=row.dataset, index=row.index, meta=meta,
                   context=context if isinstance(context, str) else None)


def node_rows(trace_id: str, nodes: Sequence[Node]) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": trace_id,
            "id": node.id,
            "parent": node.parent,
            "depth": node.depth,
            "text": node.text,
            "token_count": node.token_count,
            "logprob": node.logprob,
            "step_scores": list(node.step_scores),
            "score": node.score,
            "answer": node.answer,
            "status": node.status,
            "reason": node.reason,
        }
        for node in nodes
    ]


def node_from(row: NodeRow) -> Node:
    return Node(
        id=row.id,
        parent=row.parent,
        depth=row.depth,
        text=row.text,
        token_count=row.token_count,
        status=cast(NodeStatus, row.status),
        logprob=row.logprob,
        step_scores=tuple(float(s) for s in row.step_scores or ()),
        score=row.score,
        answer=row.answer,
        reason=row.reason,
    )


def event_rows(trace_id: str, events: Sequence[TraceEvent]) -> list[dict[str, Any]]:
    return [
        {
            "trace_id": trace_id,
            "seq": seq,
            "kind": event.kind,
            "payload": dict(event.payload),
            "t": event.t,
            "node_id": event.node_id,
        }
        for seq, event in enumerate(events)
    ]


def event_from(row: EventRow) -> TraceEvent:
    return TraceEvent(kind=row.kind, payload=dict(row.payload or {}), t=row.t, node_id=row.node_id)


def usage_json(usage: Usage) -> dict[str, Any]:
    return asdict(usage)


def usage_from(data: Mapping[str, Any] | None) -> Usage:
    """Unknown keys are dropped and missing ones default, so rows written by other versions still read."""
    known = {f.name for f in fields(Usage)}
    return Usage(**{key: value for key, value in (data or {}).items() if key in known})


def budget_json(budget: Budget) -> dict[str, Any]:
    return asdict(budget)


def budget_from(data: Mapping[str, Any]) -> Budget:
    known = {f.name for f in fields(Budget)}
    return Budget(**{key: value for key, value in data.items() if key in known})


def candidates_json(candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    return [asdict(candidate) for candidate in candidates]


def candidates_from(data: Sequence[Mapping[str, Any]] | None) -> tuple[Candidate, ...]:
    known = {f.name for f in fields(Candidate)}
    return tuple(Candidate(**{k: v for k, v in item.items() if k in known}) for item in data or ())


__all__ = [
    "budget_from",
    "budget_json",
    "candidates_from",
    "candidates_json",
    "event_from",
    "event_rows",
    "node_from",
    "node_rows",
    "problem_from",
    "problem_id",
    "problem_row",
    "usage_from",
    "usage_json",
]
