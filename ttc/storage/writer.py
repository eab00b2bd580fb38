"""The single writer: one thread, one connection at a time, one transaction at a time.

Every write of a TraceStore is a job queued here. Serialising writes in one place means SQLite never sees two
writers from the same process fighting over its lock (which would turn concurrency into "database is locked"
errors), each job is exactly one transaction (all of it commits or none of it does), and callers on any thread
or event loop only wait on a future.

Each job checks its connection out of the engine's pool and gives it back: a server may close a connection that
sat idle (``idle_session_timeout``) or restart between two writes, and the pool's pre-ping (set on a server's
engine) finds that out and reconnects before the job begins, as it does for reads. A connection that drops while
a job runs fails that job, which is never run again: its transaction may have reached the server.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from ttc.errors import StorageError

T = TypeVar("T")

Work = Callable[[Connection], T]
Explain = Callable[[BaseException], BaseException]


@dataclass(frozen=True)
class _Job(Generic[T]):
    work: Work[T]
    explain: Explain
    future: Future[T]
    queued_at: float = 0.0
    """``time.monotonic()`` when it was queued."""


INTERRUPTED_JOIN_S = 1.0
"""How long an interrupted open waits for the writer thread before raising: enough for an open that was about to
finish, not a server's connect timeout."""

MIN_PATIENCE_S = 5.0
"""The least time a write is given before ``overdue`` names it: a responsive store on a slow link takes seconds to
fail each of many open traces in turn, and a busy timeout of 0 (no waiting for a lock) says nothing of that."""

_writers: weakref.WeakSet[Writer] = weakref.WeakSet()
_writers_lock = threading.Lock()


def overdue(since: float) -> float | None:
    """The patience of a writer in this process whose running write has waited longer than that, counted from
    ``since`` (a ``time.monotonic()`` reading: when the process was interrupted) or from when the write was queued,
    whichever is later; None where no write has. A server that stops answering holds a write for good (the driver
    waits without end), and an interrupted process that waits for its cleanup writes would never end."""
    now = time.monotonic()
    with _writers_lock:
        writers = list(_writers)
    for writer in writers:
        job = writer._running
        if job is not None and not job.future.done() and now - max(job.queued_at, since) > writer.patience_s:
            return writer.patience_s
    return None


class Writer:
    """Owns the writes; ``submit`` queues a transaction and returns a future for its result.

    ``open_work`` runs first, in its own transaction (schema creation, a write probe); if it fails the
    constructor raises its explained error and no thread is left behind.
    """

    def __init__(self, engine: Engine, *, open_work: Work[None], explain_open: Explain, name: str,
                 patience_s: float = 0.0) -> None:
        """``patience_s`` is how long a write may wait for the database before ``overdue`` names it (its busy
        timeout, at least ``MIN_PATIENCE_S``)."""
        self._engine = engine
        self.patience_s = max(patience_s, MIN_PATIENCE_S)
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: _Job[Any] | None = None
        """The job the thread is running, so that whatever ends the thread also fails it."""
        self._closed = False
        self._stopped_by: str | None = None
        opened: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(_Job(open_work, explain_open, opened, time.monotonic()),), name=name, daemon=True
        )
        self._thread.start()
        with _writers_lock:
            _writers.add(self)
        try:
            opened.result()
        except BaseException:
            # Interrupted while the open job still runs (Ctrl-C during a long busy wait), the job may yet succeed
            # and the thread go on to wait for jobs: the sentinel ends it there. The open itself may take as long
            # as its connect timeout, which the interrupt need not wait out: the thread is a daemon, and exits once
            # the open returns.
            self._stop()
            self._thread.join(timeout=INTERRUPTED_JOIN_S)
            raise

    def submit(self, work: Work[T], explain: Explain) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._stopped_by is not None:
                raise StorageError(f"the trace store's writer stopped ({self._stopped_by}), so this write was not "
                                   "run; open a new TraceStore to write more traces")
            if self._closed:
                raise StorageError("the trace store is closed; open a new TraceStore to write more traces")
            self._queue.put(_Job(work, explain, future, time.monotonic()))
        return future

    def close(self) -> None:
        """Finish every queued write, then stop the thread and release its connection."""
        if self._stop():
            self._thread.join()

    def _stop(self) -> bool:
        """Refuse further writes and queue the sentinel that ends the thread after the queued ones; False if that
        was done before."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._queue.put(None)
        return True

    def _run(self, open_job: _Job[None]) -> None:
        stopped_by: str | None = None
        try:
            if (failure := self._run_job(open_job)) is not None:  # the constructor raises it from the future
                stopped_by = f"opening the store failed: {_describe(failure)}"
                return
            while (job := self._queue.get()) is not None:
                failure = self._run_job(job)
                if failure is not None and not isinstance(failure, Exception):
                    # KeyboardInterrupt, SystemExit and the like mean stop: the job's caller has it
                    stopped_by = f"a write raised {_describe(failure)}"
                    return
        except BaseException as exc:
            stopped_by = f"it failed: {_describe(exc)}"
            raise
        finally:
            self._abandon_running(stopped_by)
            self._fail_pending(stopped_by)

    def _abandon_running(self, stopped_by: str | None) -> None:
        """A job still unresolved when the thread ends (a failure escaped even its own handling) gets an error, so
        that its caller does not wait forever; what the job's transaction did was rolled back with it."""
        job, self._running = self._running, None
        if job is None or job.future.done():
            return
        why = f" ({stopped_by})" if stopped_by else ""
        _resolve(job.future, StorageError(f"the trace store's writer stopped while running this write{why}, so "
                                          "it was not saved; open a new TraceStore to write more traces"))

    def _fail_pending(self, stopped_by: str | None) -> None:
        """Whatever ends the thread, nobody may wait forever on a write that will not run."""
        with self._lock:
            self._closed = True
            self._stopped_by = stopped_by
        why = f" ({stopped_by})" if stopped_by else ""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                stopped = StorageError(f"the trace store's writer stopped before this write ran{why}; reopen it")
                job.future.set_exception(stopped)

    def _run_job(self, job: _Job[T]) -> BaseException | None:
        """``_execute``, with the job kept as the one running while it does: if a failure escapes even the job's
        own handling, the thread's end still answers it (``_abandon_running``)."""
        self._running = job
        failure = self._execute(self._engine, job)
        self._running = None
        return failure

    @staticmethod
    def _execute(engine: Engine, job: _Job[T]) -> BaseException | None:
        """Run one job in one transaction, on a connection checked out for it (see the module docstring); resolves
        its future whatever is raised, and returns the failure. A failed connect fails only this job: the next one
        connects again, so a server that is back takes writes again."""
        if not job.future.set_running_or_notify_cancel():
            return None
        try:
            with engine.connect() as connection:
                try:
                    with connection.begin():
                        value = job.work(connection)
                except BaseException:
                    _discard_transaction(connection)
                    raise
        except BaseException as exc:
            _fail(job, exc)
            return exc
        job.future.set_result(value)
        return None


def _discard_transaction(connection: Connection) -> None:
    """A failed BEGIN can leave a half-open transaction object; a connection that cannot roll it back is unusable,
    and is dropped from the pool rather than handed to the next job."""
    if not connection.in_transaction():
        return
    try:
        connection.rollback()
    except Exception:
        connection.invalidate()


def _describe(exc: BaseException) -> str:
    """The exception's type and message; never raises, since it is what reports a failure (a message whose
    rendering recurses, as a driver's error quoting a deeply nested parameter does, is left out)."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception as failure:
        return f"{name} (its message could not be rendered: {type(failure).__name__})"
    return f"{name}: {message}" if message else name


def _fail(job: _Job[Any], exc: BaseException) -> None:
    """Set the job's explained error on its future; if explaining fails, a StorageError carrying both. The future
    is resolved whatever happens here: its caller is blocked on it."""
    try:
        error = _explained(job, exc)
    except BaseException:  # KeyboardInterrupt and the like while explaining: the caller gets the original
        _resolve(job.future, exc)
        raise
    _resolve(job.future, error)


def _explained(job: _Job[Any], exc: BaseException) -> BaseException:
    try:
        return job.explain(exc)
    except Exception as failure:
        error = StorageError(f"a write failed with {_describe(exc)}, and explaining it raised {_describe(failure)}; "
                             "this is a bug in ttc, please report it with both messages")
        error.__cause__ = exc
        return error


def _resolve(future: Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless it is already resolved (or was cancelled before it ran)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # resolved in between: its caller has an answer
        future.set_exception(error)


__all__ = ["MIN_PATIENCE_S", "Explain", "Work", "Writer", "overdue"]
