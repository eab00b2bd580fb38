"""The trace store's tables, as SQLAlchemy 2.0 typed declarative models.

The schema is append-only in spirit: a trace row is created ``running`` and updated exactly once, to
``done`` or ``failed``, in the same transaction that writes its nodes and events. Allowed values of every
status and kind column are enforced by CHECK constraints, so a bad value fails inside the transaction that
carries it (and takes the whole write with it) instead of leaving a row no reader understands.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SCHEMA_VERSION: Final = 1
"""Stored in SQLite's ``user_version``; a file written by a newer schema is refused rather than misread."""

LATER_TABLES: Final = ("trace_owners", "run_leases")
"""Tables added after schema 1 that older ttc ignores: a store without them is whole, and the next store opened
for writing creates them."""

RUN_KINDS: Final = ("solve", "eval")
RUN_STATUSES: Final = ("running", "done", "failed", "interrupted")
TRACE_STATUSES: Final = ("running", "done", "failed")
NODE_STATUSES: Final = ("active", "pruned", "finished", "selected")


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({allowed})")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and hands back naive values; storing UTC and re-attaching it on read keeps
    durations and ordering right whatever the local zone of the machine that wrote the row.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"trace store timestamps must be timezone-aware, got naive {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the trace store; its metadata is the whole schema."""


class RunRow(Base):
    """One ``solve`` session or one evaluation: a named group of traces with the config that produced them."""

    __tablename__ = "runs"
    __table_args__ = (
        _one_of("kind", RUN_KINDS),
        _one_of("status", RUN_STATUSES),
        Index("ix_runs_started_at", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


class RunLeaseRow(Base):
    """Which process works on a run now: resuming a run a live process still evaluates would fail its traces."""

    __tablename__ = "run_leases"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TraceOwnerRow(Base):
    """Which process writes a trace that still reads 'running'. A process killed outright (SIGKILL, a crash, the
    machine going down) cannot fail its own traces; the next store opened for writing on its host sees that the
    process is gone and fails them as interrupted. The row goes when the trace is finished or failed."""

    __tablename__ = "trace_owners"

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)


class ProblemRow(Base):
    """A question, stored once however many traces answer it (the id is a hash of its content)."""

    __tablename__ = "problems"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str | None] = mapped_column(Text)
    index: Mapped[int | None] = mapped_column("index", Integer)
    question: Mapped[str] = mapped_column(Text)
    gold: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)


class TraceRow(Base):
    """One strategy run on one problem: what was asked, what it spent, what it answered."""

    __tablename__ = "traces"
    __table_args__ = (
        _one_of("status", TRACE_STATUSES),
        Index("ix_traces_run_id", "run_id"),
        Index("ix_traces_status", "status"),
        Index("ix_traces_started_at", "started_at"),
        Index("ix_traces_problem_id", "problem_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"))
    strategy: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(Text)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    candidates: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class NodeRow(Base):
    """One node of a trace's tree; ``id`` is local to the trace, so the key is (trace_id, id)."""

    __tablename__ = "nodes"
    __table_args__ = (_one_of("status", NODE_STATUSES),)

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent: Mapped[int | None] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    logprob: Mapped[float | None] = mapped_column(Float)
    step_scores: Mapped[list[float]] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    answer: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class EventRow(Base):
    """One decision of a trace, in the order it was made (``seq``)."""

    __tablename__ = "events"

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    t: Mapped[float] = mapped_column(Float)
    node_id: Mapped[int | None] = mapped_column(Integer)


__all__ = [
    "LATER_TABLES",
    "NODE_STATUSES",
    "RUN_KINDS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TRACE_STATUSES",
    "Base",
    "EventRow",
    "NodeRow",
    "ProblemRow",
    "RunLeaseRow",
    "RunRow",
    "TraceOwnerRow",
    "TraceRow",
    "UTCDateTime",
]
