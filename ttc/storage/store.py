"""TraceStore: the one place that owns connections to the trace database.

Writes go through a single writer thread (ttc.storage.writer), so a sync call blocks until its transaction has
committed and an async call awaits the same without blocking the event loop. Reads run on the calling thread
in short sessions of their own; with SQLite in WAL mode they never wait for the writer and see only committed
traces. Several processes may open the same file: SQLite's lock orders their writers, waiting up to
``busy_timeout_s`` before reporting the database as locked.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Row, delete, func, insert, inspect, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session

from ttc.envvars import env_seconds
from ttc.errors import ConfigError, NotFound, RejectedData, StorageError, TTCError
from ttc.storage import checks, convert, process
from ttc.storage.database import (
    DEFAULT_BUSY_TIMEOUT_S,
    ENV_VAR,
    MAX_BUSY_TIMEOUT_S,
    Location,
    check_layout,
    lock_for_creation,
    make_engine,
    reads_snapshot,
    refuse_foreign_file,
    resolve_location,
    storage_error,
    ttc_tables,
)
from ttc.storage.models import (
    RUN_KINDS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    TRACE_STATUSES,
    Base,
    EventRow,
    NodeRow,
    ProblemRow,
    RunLeaseRow,
    RunRow,
    TraceOwnerRow,
    TraceRow,
)
from ttc.storage.records import RunSummary, TraceRecord, TraceSummary
from ttc.storage.writer import Writer
from ttc.types import Budget, Node, Problem, Result, TraceEvent, Usage, is_number

T = TypeVar("T")
RowT = TypeVar("RowT", RunRow, TraceRow)

MIN_PREFIX = 6
STALE_ERROR = "interrupted"
_UNSAVED = "nothing of this write was saved"
_STILL_RUNNING = f"{_UNSAVED} and the trace is still 'running'; record the failure with fail_trace"


def refused_finish_to_fail(error: RejectedData) -> RejectedData:
    """A finish the store refused, as told by a caller that fails the trace with it next (a session does): the
    advice to call fail_trace is that caller's own next step, and the error becomes the failed trace's, where
    "still 'running'" would be false. Any other error is returned as it is; the caller raises the new one from the
    refused finish's cause."""
    text = str(error)
    if not text.endswith(_STILL_RUNNING):
        return error
    return RejectedData(text.removesuffix(_STILL_RUNNING) + _UNSAVED)


def _reads_as_damaged(exc: SQLAlchemyError) -> bool:
    """SQLite's word for a file that does not read as a database (SQLITE_CORRUPT, SQLITE_NOTADB)."""
    text = str(getattr(exc, "orig", exc)).lower()
    return "malformed" in text or "not a database" in text


def _now() -> datetime:
    return datetime.now(UTC)


async def _wait(future: Future[T]) -> T:
    """Await a queued write. Cancelling the caller does not withdraw it: a trace handed over is kept."""
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(wrapped)


def _env_busy_timeout() -> float:
    """``TTC_DB_BUSY_TIMEOUT_S``: how long a locked database is waited for before StorageError (default 10 s)."""
    return env_seconds("TTC_DB_BUSY_TIMEOUT_S", default=DEFAULT_BUSY_TIMEOUT_S, most=MAX_BUSY_TIMEOUT_S)


class TraceStore:
    """The trace store; see the module docstring for its threading and process model."""

    def __init__(self, url: str | os.PathLike[str] | None = None, *, busy_timeout_s: float | None = None,
                 read_only: bool = False) -> None:
        """``read_only`` (the CLI's readers and the viewer) opens an existing store without a writer: it writes no
        data, creates no store, and refuses a path where there is no store. SQLite's WAL mode still keeps its
        ``-wal`` and ``-shm`` files beside the database, which needs the folder writable; in a folder that is not,
        the file is read as a snapshot (``snapshot``)."""
        if url is not None and not isinstance(url, str | os.PathLike):
            raise ConfigError(f"the trace store must be named by a path or a database URL, got {url!r}")
        if busy_timeout_s is None:
            busy_timeout_s = _env_busy_timeout()
        if not is_number(busy_timeout_s) or not 0 <= busy_timeout_s <= MAX_BUSY_TIMEOUT_S:
            raise ConfigError(
                f"busy_timeout_s must be a finite number of seconds >= 0 and at most {MAX_BUSY_TIMEOUT_S:.0f} "
                f"(about 24 days, the longest wait SQLite can hold), got {busy_timeout_s!r}"
            )
        self._location: Location = resolve_location(url, create=not read_only)
        self._busy_timeout_s = busy_timeout_s
        self._snapshot = read_only and reads_snapshot(self._location)
        self._read_engine = make_engine(self._location, busy_timeout_s=busy_timeout_s, writer=False,
                                        read_only=read_only, snapshot=self._snapshot)
        self._write_engine: Engine | None = None
        self._writer: Writer | None = None
        self._pid = os.getpid()
        self._restamped = False
        try:
            if read_only:
                self._read(self._check_schema, "opening it")
            else:
                self._open_writer()
                if self._restamped:
                    # The file was taken for another program's when the writer connected (no stamp), so it was not
                    # switched to WAL; stamped now, a new connection switches it.
                    self._close_writer()
                    self._open_writer()
        except BaseException:
            if self._write_engine is not None:
                self._write_engine.dispose()
            self._read_engine.dispose()
            raise
        self._closed = False
        atexit.register(self.close)

    def _open_writer(self) -> None:
        self._write_engine = make_engine(self._location, busy_timeout_s=self._busy_timeout_s, writer=True,
                                         own_tables=tuple(Base.metadata.tables))
        self._writer = Writer(
            self._write_engine,
            open_work=self._open_schema,
            explain_open=self._explainer("opening it"),
            name="ttc-trace-writer",
            patience_s=self._busy_timeout_s,
        )

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._write_engine is not None:
            self._write_engine.dispose()

    @property
    def url(self) -> str:
        return self._location.url.render_as_string(hide_password=True)

    @property
    def snapshot(self) -> bool:
        """True where a read-only store reads its file as it was when opened (its folder is not writable: see
        ``ttc.storage.database.reads_snapshot``), so traces written since then do not show; reopen it to see them."""
        return self._snapshot

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Drain queued writes, stop the writer thread, release every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._forked():
            # A forked child's copies of the parent's connections are the parent's to close (closing a WAL
            # connection may checkpoint the file), and its copy of the writer has no thread to stop.
            for engine in (self._write_engine, self._read_engine):
                if engine is not None:
                    engine.dispose(close=False)
            return
        self._close_writer()
        self._read_engine.dispose()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open_schema(self, connection: Connection) -> None:
        """Create missing tables and prove the database is writable now, not at the first trace.

        One rule on every database: all tables are created in a fresh one, and in a store only the
        ``LATER_TABLES`` may be added; any other missing table is refused, since create_all would refill a
        dropped table, empty, and its done traces would read as complete.
        """
        lock_for_creation(connection)
        if not self._is_fresh(connection):
            check_layout(connection, self._location)
            self._restamped = self._location.is_sqlite and self._schema_version(connection) == 0
        Base.metadata.create_all(connection)
        if self._location.is_sqlite:
            connection.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        _fail_orphans(connection)

    def _is_fresh(self, connection: Connection) -> bool:
        """Whether ttc has not created its store in this database yet. SQLite stamps ``user_version`` in the
        transaction that creates the tables, so a file still at 0 is fresh, provided it holds no tables: with any
        (ttc's names among them or not) it is another program's, unless they are exactly ttc's tables as ttc
        writes them (``_lost_its_stamp``). A server database is fresh while it holds none of ttc's tables."""
        if not self._location.is_sqlite:
            return not ttc_tables(connection)
        refuse_foreign_file(connection, self._location)  # before its user_version, which is not only ttc's
        if self._schema_version(connection) != 0 or self._lost_its_stamp(connection):
            return False
        clashing = sorted(ttc_tables(connection))
        if clashing:
            raise StorageError(
                f"{self._location.describe()} is an SQLite database but not a ttc trace store: it already "
                f"has tables ttc did not create ({', '.join(clashing)}); set {ENV_VAR} to another file"
            )
        return True

    def _check_schema(self, session: Session) -> None:
        """A reader's check of what the writer would create: the store must be ttc's, whole, and not newer."""
        connection = session.connection()
        refuse_foreign_file(connection, self._location)
        if self._location.is_sqlite and self._schema_version(connection) == 0 and \
                not self._lost_its_stamp(connection):
            raise StorageError(f"{self._location.describe()} holds no ttc traces (it is an SQLite database ttc never "
                               "wrote to): check the path, or TTC_DB")
        if not self._location.is_sqlite and not ttc_tables(connection):
            raise StorageError(f"there is no trace store in the database {self._location.describe()} yet: a first "
                               f"solve or eval creates it; check the URL (or {ENV_VAR})")
        check_layout(connection, self._location)

    def _lost_its_stamp(self, connection: Connection) -> bool:
        """Whether an SQLite file at ``user_version`` 0 is a ttc store all the same: it holds ttc's tables, as ttc
        writes them, and nothing else. A store copied as SQL text (``sqlite3 traces.db .dump``, restored into a new
        file) keeps every table and row and loses the stamp, which is no part of the text; a writer stamps it
        again."""
        if not ttc_tables(connection):
            return False
        inspector = inspect(connection)
        if not set(inspector.get_table_names()) | set(inspector.get_view_names()) <= set(Base.metadata.tables):
            return False
        try:
            check_layout(connection, self._location)
        except StorageError:  # tables named like ttc's, laid out otherwise: another program's
            return False
        return True

    def _schema_version(self, connection: Connection) -> int:
        version = int(connection.exec_driver_sql("PRAGMA user_version").scalar_one())
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"the trace database {self._location.describe()} has schema version {version}, newer "
                f"than this ttc understands ({SCHEMA_VERSION}); upgrade ttc or set TTC_DB to another file"
            )
        return version

    # -- plumbing --------------------------------------------------------------------------------------------

    def _explainer(self, doing: str, hint: str | None = None) -> Callable[[BaseException], BaseException]:
        def explain(exc: BaseException) -> BaseException:
            # A ttc error the work raised itself (a run another process holds) already says what to do; it is a
            # ValueError too, and was reported as data the store rejected.
            if isinstance(exc, SQLAlchemyError | TypeError | ValueError | OverflowError) and \
                    not isinstance(exc, TTCError):
                error = storage_error(
                    exc, self._location, doing, busy_timeout_s=self._busy_timeout_s, hint=hint
                )
                error.__cause__ = exc
                return error
            return exc

        return explain

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def _refuse_forked(self, doing: str) -> None:
        """A forked child has a copy of the store without its writer thread (writes would wait on it for ever) and
        with the parent's SQLite connections, which must not be used from two processes."""
        if self._forked():
            raise StorageError(f"the trace store {self._location.describe()} was opened in process {self._pid}, and "
                               f"{doing} was asked of it in process {os.getpid()}, forked from it: a TraceStore "
                               "cannot be used across fork(); open one in each process (pass the database path)")

    def _submit(self, work: Callable[[Connection], T], doing: str, hint: str | None = None) -> Future[T]:
        self._refuse_forked(doing)
        if self._writer is None:
            raise StorageError(f"the trace database {self._location.describe()} was opened read-only, so "
                               f"{doing} is not possible: open it with TraceStore(path) to write")
        return self._writer.submit(work, self._explainer(doing, hint))

    def _read(self, work: Callable[[Session], T], doing: str) -> T:
        self._refuse_forked(doing)
        try:
            with Session(self._read_engine) as session, session.begin():
                return work(session)
        except SQLAlchemyError as exc:
            if self._snapshot and _reads_as_damaged(exc):
                raise self._snapshot_error(exc, doing) from exc
            raise storage_error(exc, self._location, doing, busy_timeout_s=self._busy_timeout_s) from exc
        except TTCError:  # the work's own refusal (an id that is not text, no such trace) says what to do
            raise
        except (ValueError, TypeError) as exc:  # a stored value that does not read back (JSON, a timestamp)
            raise StorageError(f"the trace database {self._location.describe()} holds a value that cannot be read "
                               f"back while {doing} ({type(exc).__name__}: {exc}); it was changed outside ttc: "
                               "restore it from a copy, or set TTC_DB to another file") from exc
        except RecursionError:  # not from exc: its traceback is a thousand frames of the same line
            raise StorageError(f"the trace database {self._location.describe()} holds a value nested too deeply to "
                               f"read back while {doing} (stored by a ttc that did not refuse values nested more "
                               f"than {checks.MAX_NESTING} levels); read other traces, or set TTC_DB to another file"
                               ) from None

    def _snapshot_error(self, exc: SQLAlchemyError, doing: str) -> StorageError:
        """A snapshot read fails when someone who may write the folder changes the file under it (SQLite promises
        nothing of an immutable read then: it reads as damaged): the file is likely whole, so the advice to
        restore it from a copy would be wrong."""
        return StorageError(f"the trace database {self._location.describe()} failed while {doing} "
                            f"({str(getattr(exc, 'orig', exc)).splitlines()[0]}); it is read as a snapshot, as its "
                            "folder is not writable here, and another process may have written it since: open it "
                            "again (restart `ttc view`) to read it as it is now; if it fails again then, the file is "
                            "damaged: restore it from a copy")

    # -- runs ------------------------------------------------------------------------------------------------

    def create_run(self, *, kind: str, config: Mapping[str, object], name: str | None = None,
                   claim: bool = False) -> str:
        """Open a run (status 'running') that traces can join; returns its id.

        ``claim`` also records this process as the one working on it (as ``claim_run`` does), in the same
        transaction: a run committed without its lease (the claim locked out, or the process killed in between)
        is one that no later open can tell is orphaned, so it would read 'running' for good.
        """
        checks.check_choice("run kind", kind, RUN_KINDS)
        checks.check_nesting(config, "the run config")
        run_id = str(uuid.uuid4())
        values = {"id": run_id, "kind": kind, "name": name, "config": dict(config), "status": "running",
                  "started_at": _now()}

        def work(connection: Connection) -> None:
            connection.execute(insert(RunRow).values(**values))
            if claim:
                _insert_lease(connection, run_id)

        self._submit(work, "creating a run", "the run config must be JSON-serialisable").result()
        return run_id

    def claim_run(self, run_id: str) -> None:
        """Record this process as the one working on ``run_id``; refuse while another live process on this machine
        holds it. A holder on another machine (another host, or another PID namespace on this one: another
        container) cannot be checked from here, so it is taken over: resume a run on the machine that started it.
        """
        pid = os.getpid()

        def work(connection: Connection) -> None:
            # No second claimant may read the lease in between: SQLite's BEGIN IMMEDIATE already excludes it, and on
            # a server the run's row lock makes it wait until this claim commits, then read this lease.
            connection.execute(select(RunRow.id).where(RunRow.id == run_id).with_for_update())
            held = connection.execute(select(RunLeaseRow).where(RunLeaseRow.run_id == run_id)).first()
            if held is not None and held.pid != pid and \
                    process.holder_state(held.host, held.pid) is process.Holder.ALIVE:
                raise ConfigError(
                    f"run {run_id} is being evaluated by process {held.pid} on this machine (since "
                    f"{held.claimed_at:%Y-%m-%d %H:%M:%S} UTC): wait for it to finish or stop it, then resume"
                )
            connection.execute(delete(RunLeaseRow).where(RunLeaseRow.run_id == run_id))
            _insert_lease(connection, run_id)
            # A resumed run is in progress again until it finishes, whatever ended its last attempt.
            connection.execute(update(RunRow).where(RunRow.id == run_id)
                               .values(status="running", summary=None, finished_at=None))

        self._submit(work, f"claiming run {run_id}").result()

    def finish_run(self, run_id: str, *, status: str, summary: Mapping[str, object]) -> None:
        checks.check_choice("run status", status, RUN_STATUSES[1:])
        checks.check_nesting(summary, "the run summary")
        values = {"status": status, "summary": dict(summary), "finished_at": _now()}

        def work(connection: Connection) -> None:
            updated = connection.execute(update(RunRow).where(RunRow.id == run_id).values(**values))
            if updated.rowcount != 1:
                raise NotFound(
                    f"no run {run_id!r} in {self._location.describe()}; use the id create_run returned"
                )
            connection.execute(delete(RunLeaseRow).where(RunLeaseRow.run_id == run_id))

        self._submit(work, f"finishing run {run_id}", "the summary must be JSON-serialisable").result()

    # -- trace writes ----------------------------------------------------------------------------------------

    def queue_start_trace(self, *, problem: Problem, strategy: str, budget: Budget, backend: str,
                          seed: int | None, run_id: str | None = None) -> tuple[str, Future[None]]:
        """``start_trace`` handed to the writer without waiting: the trace's id at once, and the write's future.
        A caller cancelled while the row is written still knows which trace to fail (the writer runs writes in
        the order they were queued, so a failure queued next lands after the start)."""
        trace_id = str(uuid.uuid4())
        problem_values = convert.problem_row(problem)
        checks.check_nesting(problem_values["meta"], "the problem's meta")
        trace_values = {
            "id": trace_id, "run_id": run_id, "problem_id": problem_values["id"], "strategy": strategy,
            "backend": backend, "budget": convert.budget_json(budget), "seed": seed, "status": "running",
            "started_at": _now(),
        }

        def work(connection: Connection) -> None:
            if run_id is not None and not _exists(connection, RunRow.id, run_id):
                raise NotFound(f"no run {run_id!r} in {self._location.describe()}; "
                                   "start traces with the id create_run returned")
            _ensure_problem(connection, problem_values)
            connection.execute(insert(TraceRow).values(**trace_values))
            connection.execute(insert(TraceOwnerRow).values(trace_id=trace_id, host=process.holder_text(),
                                                            pid=os.getpid()))

        hint = "the problem's meta must be JSON-serialisable and the seed fit in 64 bits"
        return trace_id, self._submit(work, "starting a trace", hint)

    def start_trace(self, *, problem: Problem, strategy: str, budget: Budget, backend: str, seed: int | None,
                    run_id: str | None = None) -> str:
        """Record that a strategy starts on a problem; the trace reads 'running' until finished or failed."""
        trace_id, future = self.queue_start_trace(problem=problem, strategy=strategy, budget=budget,
                                                  backend=backend, seed=seed, run_id=run_id)
        future.result()
        return trace_id

    async def astart_trace(self, *, problem: Problem, strategy: str, budget: Budget, backend: str,
                           seed: int | None, run_id: str | None = None) -> str:
        trace_id, future = self.queue_start_trace(problem=problem, strategy=strategy, budget=budget,
                                                  backend=backend, seed=seed, run_id=run_id)
        await _wait(future)
        return trace_id

    def _finish_work(self, trace_id: str, result: Result, nodes: Sequence[Node],
                     events: Sequence[TraceEvent]) -> Future[None]:
        if result.trace_id is not None and result.trace_id != trace_id:
            raise ConfigError(
                f"result.trace_id is {result.trace_id!r} but it is being saved as trace {trace_id!r}"
            )
        checks.check_result_score(result)
        checks.check_readable(nodes, events)
        checks.check_no_nan(result, nodes)
        values = {
            "status": "done", "answer": result.answer, "text": result.text, "score": result.score,
            "strategy": result.strategy, "usage": convert.usage_json(result.usage),
            "candidates": convert.candidates_json(result.candidates), "finished_at": _now(),
        }
        node_values = convert.node_rows(trace_id, nodes)
        event_values = convert.event_rows(trace_id, events)

        def work(connection: Connection) -> None:
            closed_as = _close_trace(connection, trace_id, values, self._location)
            if closed_as is not None:
                raise RejectedData(f"trace {trace_id} is already '{closed_as}'; a trace is finished only once")
            _insert_tree(connection, node_values, event_values)

        return self._submit(work, f"finishing trace {trace_id}", _STILL_RUNNING)

    def finish_trace(self, trace_id: str, *, result: Result, nodes: Sequence[Node],
                     events: Sequence[TraceEvent]) -> None:
        """Save the tree, the events and the result, and mark the trace 'done', in one transaction.

        On any failure none of it is visible and the trace stays 'running', so the caller can fail_trace it.
        The trace's strategy becomes ``result.strategy``: the one that actually ran.
        """
        self._finish_work(trace_id, result, nodes, events).result()

    async def afinish_trace(self, trace_id: str, *, result: Result, nodes: Sequence[Node],
                            events: Sequence[TraceEvent]) -> None:
        await _wait(self._finish_work(trace_id, result, nodes, events))

    def _fail_work(self, trace_id: str, error: str, nodes: Sequence[Node],
                   events: Sequence[TraceEvent], usage: Usage | None) -> Future[None]:
        values: dict[str, Any] = {"status": "failed", "error": error, "finished_at": _now()}
        if usage is not None:
            if not isinstance(usage, Usage):
                raise ConfigError(f"usage must be the ttc.Usage the run spent (its Meter's usage()) or None, got "
                                  f"{type(usage).__name__}")
            values["usage"] = convert.usage_json(usage)
        try:  # the failure itself must be recorded even when the partial tree cannot be
            checks.check_readable(nodes, events)
        except ConfigError as refused:
            return self._submit(_fail_without_tree(trace_id, values, error, len(nodes), len(events), refused,
                                                   self._location), f"failing trace {trace_id}")
        node_values = convert.node_rows(trace_id, nodes)
        event_values = convert.event_rows(trace_id, events)

        def work(connection: Connection) -> None:
            closed_as = _close_trace(connection, trace_id, values, self._location)
            if closed_as is not None or (not node_values and not event_values):
                return
            try:
                with connection.begin_nested():
                    _insert_tree(connection, node_values, event_values)
            except (SQLAlchemyError, TypeError, ValueError, OverflowError) as exc:
                note = _unsaved_note(error, len(node_values), len(event_values), exc)
                connection.execute(update(TraceRow).where(TraceRow.id == trace_id).values(error=note))

        return self._submit(work, f"failing trace {trace_id}")

    def fail_trace(self, trace_id: str, *, error: str, nodes: Sequence[Node] = (),
                   events: Sequence[TraceEvent] = (), usage: Usage | None = None) -> None:
        """Mark a running trace 'failed' with ``error``, keeping whatever partial tree it grew; a tree the store
        could not give back (a payload nested too deeply, a step score that is no number) is left out, and
        ``error`` notes why. ``usage`` is what the run spent before it failed (its meter's count): the tokens of
        calls whose nodes were never recorded were spent all the same.

        A trace that is already done or failed keeps its status and data: failing is the cleanup path after an
        error (or a cancellation that raced a finished write) and must not raise over the original error.
        An unknown id still raises StorageError.
        """
        self._fail_work(trace_id, error, nodes, events, usage).result()

    async def afail_trace(self, trace_id: str, *, error: str, nodes: Sequence[Node] = (),
                          events: Sequence[TraceEvent] = (), usage: Usage | None = None) -> None:
        await _wait(self.queue_fail_trace(trace_id, error=error, nodes=nodes, events=events, usage=usage))

    def queue_fail_trace(self, trace_id: str, *, error: str, nodes: Sequence[Node] = (),
                         events: Sequence[TraceEvent] = (), usage: Usage | None = None) -> Future[None]:
        """``fail_trace`` handed to the writer without waiting: once this returns, the write happens whatever
        becomes of the caller (a batch queues every trace's failure before it waits on any of them)."""
        return self._fail_work(trace_id, error, nodes, events, usage)

    def mark_stale_running(self, run_id: str) -> int:
        """Fail the traces of ``run_id`` left 'running' by a process that died; returns how many.

        Call it only when no live process still works on this run: its running traces would be failed too.
        """
        def work(connection: Connection) -> int:
            updated = connection.execute(
                update(TraceRow)
                .where(TraceRow.run_id == run_id, TraceRow.status == "running")
                .values(status="failed", error=STALE_ERROR, finished_at=_now())
            )
            connection.execute(delete(TraceOwnerRow).where(
                TraceOwnerRow.trace_id.in_(select(TraceRow.id).where(TraceRow.run_id == run_id))))
            return int(updated.rowcount)

        return self._submit(work, f"marking stale traces of run {run_id}").result()

    # -- reads -----------------------------------------------------------------------------------------------

    def list_runs(self, limit: int = 50) -> list[RunSummary]:
        """The newest runs first, with their trace counts."""
        checks.check_limit(limit)

        def work(session: Session) -> list[RunSummary]:
            query = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id).limit(limit)
            runs = session.scalars(query).all()
            counts = _trace_counts(session, [run.id for run in runs])
            return [_run_summary(run, counts.get(run.id, {})) for run in runs]

        return self._read(work, "listing runs")

    def get_run(self, run_id: str) -> RunSummary:
        """The run with this id, or with this unique prefix of at least ``MIN_PREFIX`` characters (as tables show)."""

        def work(session: Session) -> RunSummary:
            run = self._find_run(session, run_id)
            return _run_summary(run, _trace_counts(session, [run.id]).get(run.id, {}))

        return self._read(work, f"reading run {run_id}")

    def list_traces(self, *, run_id: str | None = None, status: str | None = None,
                    limit: int | None = 50) -> list[TraceSummary]:
        """The newest traces first, optionally of one run (which must exist; an id or a unique prefix of it, as
        tables show ids) and/or one status.

        ``limit=None`` lists every matching trace (all of a run's, say), with no cut-off.
        """
        checks.check_limit(limit, unlimited=True)
        if status is not None:
            checks.check_choice("trace status", status, TRACE_STATUSES)

        def work(session: Session) -> list[TraceSummary]:
            query = select(TraceRow, ProblemRow).join(ProblemRow, TraceRow.problem_id == ProblemRow.id)
            if run_id is not None:
                query = query.where(TraceRow.run_id == self._find_run(session, run_id).id)
            if status is not None:
                query = query.where(TraceRow.status == status)
            query = query.order_by(TraceRow.started_at.desc(), TraceRow.id)
            if limit is not None:
                query = query.limit(limit)
            return [_trace_summary(trace, problem) for trace, problem in session.execute(query)]

        return self._read(work, "listing traces")

    def get_trace(self, trace_id: str) -> TraceRecord:
        """One whole trace by id, or by a unique prefix of at least 6 characters."""
        def work(session: Session) -> TraceRecord:
            trace = self._find_trace(session, trace_id)
            problem = session.get_one(ProblemRow, trace.problem_id)
            nodes = session.scalars(
                select(NodeRow).where(NodeRow.trace_id == trace.id).order_by(NodeRow.id)
            ).all()
            events = session.scalars(
                select(EventRow).where(EventRow.trace_id == trace.id).order_by(EventRow.seq)
            ).all()
            return _trace_record(trace, problem, nodes, events)

        return self._read(work, f"reading trace {trace_id}")

    def export_trace(self, trace_id: str) -> dict[str, object]:
        """A JSON-ready dict of the whole trace, for ``ttc traces export``."""
        return self.get_trace(trace_id).to_json()

    def done_problem_indices(self, run_id: str) -> set[int]:
        """Indices of the problems a run has finished, so a resumed eval skips them."""
        return set(self.done_problem_ids(run_id))

    def done_problem_ids(self, run_id: str) -> dict[int, str]:
        """Each finished problem's index and problem id (its content hash), so a resume can tell that the problem
        at an index is the one the run solved there."""
        query = (
            select(ProblemRow.index, ProblemRow.id)
            .join(TraceRow, TraceRow.problem_id == ProblemRow.id)
            .where(TraceRow.run_id == run_id, TraceRow.status == "done", ProblemRow.index.is_not(None))
            .distinct()
        )

        def work(session: Session) -> dict[int, str]:
            return {index: pid for index, pid in session.execute(query) if index is not None}

        return self._read(work, f"reading finished problems of run {run_id}")

    def _find_run(self, session: Session, run_id: str) -> RunRow:
        return self._find(session, RunRow, run_id, "run", "`ttc traces runs` (TraceStore.list_runs) shows the runs")

    def _find_trace(self, session: Session, trace_id: str) -> TraceRow:
        return self._find(session, TraceRow, trace_id, "trace", "run `ttc traces list` to see the trace ids")

    def _find(self, session: Session, row: type[RowT], given: str, what: str, listing: str) -> RowT:
        """The row with id ``given``, or the one whose id starts with it (at least ``MIN_PREFIX`` characters, as
        tables show ids); NotFound says whether none or several matched. Ids are lowercase hex (UUIDs), so case is
        ignored: SQLite's LIKE ignores it and PostgreSQL's does not, and an id typed in capitals names the same."""
        checks.check_id(given, what)
        wanted = given.lower()
        found = session.get(row, wanted)
        if found is not None:
            return found
        where = self._location.describe()
        if len(wanted) >= MIN_PREFIX:
            key = row.id
            matches = session.scalars(select(row).where(key.startswith(wanted, autoescape=True)).limit(2)).all()
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise NotFound(f"{what} id prefix {given!r} matches several {what}s in {where}; give more characters "
                               "of the id")
        raise NotFound(f"no {what} {given!r} in {where} (ids or unique prefixes of at least {MIN_PREFIX} "
                       f"characters); {listing}")


# -- transaction helpers (run on the writer thread) ----------------------------------------------------------


def _exists(connection: Connection, key: InstrumentedAttribute[str], value: str) -> bool:
    return connection.execute(select(key).where(key == value)).first() is not None


def _ensure_problem(connection: Connection, values: dict[str, Any]) -> None:
    if _exists(connection, ProblemRow.id, values["id"]):
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(ProblemRow).values(**values))
    except IntegrityError:  # another process stored the same problem first: it is the same content
        if not _exists(connection, ProblemRow.id, values["id"]):
            raise


def _insert_lease(connection: Connection, run_id: str) -> None:
    """Record this process on this machine as the one working on ``run_id`` (see RunLeaseRow)."""
    connection.execute(insert(RunLeaseRow).values(run_id=run_id, host=process.holder_text(), pid=os.getpid(),
                                                  claimed_at=_now()))


def _fail_orphans(connection: Connection) -> None:
    """Fail the running traces, and interrupt the running runs, whose process on this machine is gone (see
    TraceOwnerRow and RunLeaseRow, and ``ttc.storage.process`` for how that is told); a process on another machine
    (another host, or another PID namespace on this one) cannot be checked from here, so its traces and runs are
    left as they are."""
    leases = connection.execute(select(RunLeaseRow.run_id, RunLeaseRow.host, RunLeaseRow.pid)
                                .where(_of_this_host(RunLeaseRow.host)))
    for run_id, _pid in _dead(leases):
        connection.execute(  # as a Ctrl-C leaves it: --resume finishes it
            update(RunRow).where(RunRow.id == run_id, RunRow.status == "running")
            .values(status="interrupted", summary={}, finished_at=_now())
        )
        connection.execute(delete(RunLeaseRow).where(RunLeaseRow.run_id == run_id))
    owners = connection.execute(select(TraceOwnerRow.trace_id, TraceOwnerRow.host, TraceOwnerRow.pid)
                                .where(_of_this_host(TraceOwnerRow.host)))
    for trace_id, pid in _dead(owners):
        connection.execute(
            update(TraceRow).where(TraceRow.id == trace_id, TraceRow.status == "running")
            .values(status="failed", error=f"{STALE_ERROR}: process {pid} ended without finishing it",
                    finished_at=_now())
        )
        connection.execute(delete(TraceOwnerRow).where(TraceOwnerRow.trace_id == trace_id))


def _of_this_host(host: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """Rows naming this host, in either form of ``ttc.storage.process`` (a bare host name, or the full identity
    that begins with it): rows of other hosts need not be read, as nothing here can check them."""
    hostname = socket.gethostname()
    return or_(host == hostname, host.startswith(f"{hostname}|", autoescape=True))


def _dead(holders: Iterable[Row[str, str, int]]) -> list[tuple[str, int]]:
    """The (id, pid) of the rows whose process has ended."""
    return [(key, pid) for key, host, pid in holders if process.holder_state(host, pid) is process.Holder.DEAD]


def _close_trace(connection: Connection, trace_id: str, values: dict[str, Any], location: Location) -> str | None:
    """Move a running trace to its final status; returns None, or the status of a trace closed before."""
    updated = connection.execute(
        update(TraceRow).where(TraceRow.id == trace_id, TraceRow.status == "running").values(**values)
    )
    if updated.rowcount == 1:
        connection.execute(delete(TraceOwnerRow).where(TraceOwnerRow.trace_id == trace_id))
        return None
    status = connection.execute(select(TraceRow.status).where(TraceRow.id == trace_id)).scalar_one_or_none()
    if status is None:
        raise NotFound(f"no trace {trace_id!r} in {location.describe()}; use the id start_trace returned")
    return str(status)


def _unsaved_note(error: str, nodes: int, events: int, why: BaseException) -> str:
    """``error`` with a note that the partial tree was not saved, and why (its first line: a driver's message
    goes on with the whole statement)."""
    try:
        reason = str(why).splitlines()[0] if str(why) else type(why).__name__
    except Exception:  # a message that cannot be rendered (one that recurses) must not lose the failure
        reason = type(why).__name__
    return f"{error} (its {nodes} nodes and {events} events were not saved: {reason})"


def _fail_without_tree(trace_id: str, values: dict[str, Any], error: str, nodes: int, events: int,
                       refused: ConfigError, location: Location) -> Callable[[Connection], None]:
    """The work of failing a trace whose partial tree the store refused (see ``checks.check_readable``): the trace is
    failed all the same, with the refusal noted in its error."""
    noted = {**values, "error": _unsaved_note(error, nodes, events, refused)}

    def work(connection: Connection) -> None:
        _close_trace(connection, trace_id, noted, location)

    return work


def _insert_tree(connection: Connection, nodes: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    if nodes:
        connection.execute(insert(NodeRow), nodes)
    if events:
        connection.execute(insert(EventRow), events)


# -- row -> record -------------------------------------------------------------------------------------------


def _trace_counts(session: Session, run_ids: list[str]) -> dict[str, dict[str, int]]:
    if not run_ids:
        return {}
    rows = session.execute(
        select(TraceRow.run_id, TraceRow.status, func.count())
        .where(TraceRow.run_id.in_(run_ids))
        .group_by(TraceRow.run_id, TraceRow.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for run_id, status, count in rows:
        if run_id is not None:
            counts.setdefault(run_id, {})[status] = int(count)
    return counts


def _run_summary(run: RunRow, counts: Mapping[str, int]) -> RunSummary:
    return RunSummary(
        id=run.id, kind=run.kind, name=run.name, status=run.status, config=dict(run.config),
        summary=None if run.summary is None else dict(run.summary), started_at=run.started_at,
        finished_at=run.finished_at, traces=sum(counts.values()), done=counts.get("done", 0),
        failed=counts.get("failed", 0),
    )


def _trace_summary(trace: TraceRow, problem: ProblemRow) -> TraceSummary:
    usage = trace.usage or {}
    generated = usage.get("generated_tokens")
    return TraceSummary(
        id=trace.id, run_id=trace.run_id, status=trace.status, strategy=trace.strategy, backend=trace.backend,
        seed=trace.seed, dataset=problem.dataset, problem_index=problem.index, question=problem.question,
        answer=trace.answer, score=trace.score,
        generated_tokens=None if generated is None else int(generated), error=trace.error,
        started_at=trace.started_at, finished_at=trace.finished_at,
    )


def _trace_record(trace: TraceRow, problem: ProblemRow, nodes: Sequence[NodeRow],
                  events: Sequence[EventRow]) -> TraceRecord:
    return TraceRecord(
        id=trace.id, run_id=trace.run_id, status=trace.status, strategy=trace.strategy, backend=trace.backend,
        seed=trace.seed, budget=convert.budget_from(trace.budget), problem=convert.problem_from(problem),
        answer=trace.answer, text=trace.text, score=trace.score, error=trace.error,
        usage=None if trace.usage is None else convert.usage_from(trace.usage),
        candidates=convert.candidates_from(trace.candidates),
        nodes=[convert.node_from(node) for node in nodes],
        events=[convert.event_from(event) for event in events],
        started_at=trace.started_at, finished_at=trace.finished_at,
    )


__all__ = ["MIN_PREFIX", "STALE_ERROR", "TraceStore", "refused_finish_to_fail"]
