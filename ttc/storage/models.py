"""The trace store's tables, as SQLAlchemy 2.0 typed declarative models.

The schema is append-only in spirit: a trace row is created ``running`` and updated exactly once, to
``done`` or ``failed``, in the same transaction that writes its nodes and events. Allowed values of every
status and kind column are enforced by CHECK constraints, so a bad value fails inside the transaction that
carries it (and takes the whole write with it) instead of leaving a row no reader understands.

Every column holds the same values on every database. SQLite keeps anything Python hands it, so its columns are
plain; a server database (PostgreSQL) is stricter, and three column types bridge the difference there:
``BigInt`` (64-bit integers where PostgreSQL's INTEGER has 32 bits), ``SafeText``/``SafeString`` (text with NUL
characters, which PostgreSQL's text refuses) and ``PortableJSON`` (NaN and infinities, which JSON itself has no
tokens for). On SQLite they change nothing: the schema and the stored values are SQLite's own.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
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


BigInt: Final = BigInteger().with_variant(Integer(), "sqlite")
"""A signed 64-bit integer (seeds reach 2**63 - 1). SQLite's INTEGER is already 64-bit, and keeping that name
keeps the schema of existing SQLite stores as it was."""

NUL_MARK: Final = "\u2400"
"""The escape character of text on a server database: ``\u2400`` + ``0`` stands for a NUL character and
``\u2400\u2400`` for the mark itself, so a stored string reads back exactly as it was written."""
_NUL_ESCAPES: Final = {"\x00": NUL_MARK + "0", NUL_MARK: NUL_MARK + NUL_MARK}
_NUL_UNESCAPES: Final = {"0": "\x00", NUL_MARK: NUL_MARK}
_TO_ESCAPE: Final = re.compile(f"[\x00{NUL_MARK}]")
_ESCAPED: Final = re.compile(f"{NUL_MARK}([0{NUL_MARK}])")

JSON_TAG: Final = "$ttc"
"""The key of the objects that stand for what JSON cannot hold, on a server database (see ``encode_json``)."""
_NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ESCAPED_OBJECT: Final = "object"


def _keeps_everything(dialect: Dialect) -> bool:
    """SQLite stores NUL characters and NaN as they are; every other database gets the escaped forms."""
    return dialect.name == "sqlite"


def escape_nul(text: str) -> str:
    """``text`` without NUL characters, which PostgreSQL's text types refuse; ``unescape_nul`` undoes it."""
    return _TO_ESCAPE.sub(lambda match: _NUL_ESCAPES[match.group()], text)


def unescape_nul(text: str) -> str:
    """What ``escape_nul`` was given."""
    return _ESCAPED.sub(lambda match: _NUL_UNESCAPES[match.group(1)], text)


def _non_finite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def encode_json(value: Any) -> Any:
    """``value`` with each NaN or infinity as ``{"$ttc": "NaN"}`` (or "Infinity", "-Infinity"): JSON has no token
    for them, and PostgreSQL refuses the ones Python writes. An object of the caller's that has a ``"$ttc"`` key is
    itself wrapped (``{"$ttc": "object", "items": [[key, value], ...]}``), so that ``decode_json`` gives back
    exactly what was written whatever the data holds."""
    if isinstance(value, float) and not math.isfinite(value):
        return {JSON_TAG: _non_finite_name(value)}
    if isinstance(value, dict):
        if JSON_TAG in value:
            return {JSON_TAG: _ESCAPED_OBJECT, "items": [[key, encode_json(item)] for key, item in value.items()]}
        return {key: encode_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_json(item) for item in value]
    return value


def decode_json(value: Any) -> Any:
    """What ``encode_json`` was given; a tagged object it did not write is left as it is."""
    if isinstance(value, list):
        return [decode_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(JSON_TAG)
    if len(value) == 1 and isinstance(tag, str) and tag in _NON_FINITE:
        return _NON_FINITE[tag]
    if tag == _ESCAPED_OBJECT and set(value) == {JSON_TAG, "items"} and isinstance(value["items"], list):
        return {key: decode_json(item) for key, item in value["items"]}
    return {key: decode_json(item) for key, item in value.items()}


class PortableJSON(TypeDecorator[Any]):
    """JSON that keeps NaN and infinities on every database: a step score of -inf or a NaN in an event payload
    would otherwise make PostgreSQL refuse the whole trace. SQLite stores them as Python writes them."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return value if _keeps_everything(dialect) else encode_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return value if _keeps_everything(dialect) else decode_json(value)


class _NulSafe(TypeDecorator[str]):
    """Text that may hold NUL characters on every database (a model can emit one; an error message can quote
    one): PostgreSQL refuses them in text, so there they are stored escaped (see ``NUL_MARK``)."""

    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or _keeps_everything(dialect):
            return value
        return escape_nul(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or _keeps_everything(dialect):
            return value
        return unescape_nul(value)


class SafeText(_NulSafe):
    """TEXT that keeps NUL characters on every database."""

    impl = Text
    cache_ok = True


class SafeString(_NulSafe):
    """VARCHAR(n) that keeps NUL characters on every database (ids: a NUL in one given to a query is not found)."""

    impl = String
    cache_ok = True


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

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(SafeText)
    config: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON(none_as_null=True))


class RunLeaseRow(Base):
    """Which process works on a run now: resuming a run a live process still evaluates would fail its traces."""

    __tablename__ = "run_leases"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(SafeText)
    pid: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TraceOwnerRow(Base):
    """Which process writes a trace that still reads 'running'. A process killed outright (SIGKILL, a crash, the
    machine going down) cannot fail its own traces; the next store opened for writing on its host sees that the
    process is gone and fails them as interrupted. The row goes when the trace is finished or failed."""

    __tablename__ = "trace_owners"

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    host: Mapped[str] = mapped_column(SafeText)
    pid: Mapped[int] = mapped_column(Integer)


class ProblemRow(Base):
    """A question, stored once however many traces answer it (the id is a hash of its content)."""

    __tablename__ = "problems"

    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)
    dataset: Mapped[str | None] = mapped_column(SafeText)
    index: Mapped[int | None] = mapped_column("index", BigInt)
    question: Mapped[str] = mapped_column(SafeText)
    gold: Mapped[str | None] = mapped_column(SafeText)
    meta: Mapped[dict[str, Any]] = mapped_column(PortableJSON)


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

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"))
    strategy: Mapped[str] = mapped_column(SafeText)
    backend: Mapped[str] = mapped_column(SafeText)
    budget: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    seed: Mapped[int | None] = mapped_column(BigInt)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(SafeText)
    answer: Mapped[str | None] = mapped_column(SafeText)
    text: Mapped[str | None] = mapped_column(SafeText)
    score: Mapped[float | None] = mapped_column(Float)
    usage: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON(none_as_null=True))
    candidates: Mapped[list[dict[str, Any]] | None] = mapped_column(PortableJSON(none_as_null=True))
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
    text: Mapped[str] = mapped_column(SafeText)
    token_count: Mapped[int] = mapped_column(BigInt)
    logprob: Mapped[float | None] = mapped_column(Float)
    step_scores: Mapped[list[float]] = mapped_column(PortableJSON)
    score: Mapped[float | None] = mapped_column(Float)
    answer: Mapped[str | None] = mapped_column(SafeText)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(SafeText)


class EventRow(Base):
    """One decision of a trace, in the order it was made (``seq``)."""

    __tablename__ = "events"

    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(SafeText)
    payload: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    t: Mapped[float] = mapped_column(Float)
    node_id: Mapped[int | None] = mapped_column(Integer)


__all__ = [
    "JSON_TAG",
    "LATER_TABLES",
    "NODE_STATUSES",
    "NUL_MARK",
    "RUN_KINDS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TRACE_STATUSES",
    "Base",
    "BigInt",
    "EventRow",
    "NodeRow",
    "PortableJSON",
    "ProblemRow",
    "RunLeaseRow",
    "RunRow",
    "SafeString",
    "SafeText",
    "TraceOwnerRow",
    "TraceRow",
    "UTCDateTime",
    "decode_json",
    "encode_json",
    "escape_nul",
    "unescape_nul",
]
