"""Running coroutines together: many questions with a bound on how many are in flight, or a few jobs at once,
with the first failure raised as itself."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio

from ttc.errors import BackendError, ConfigError
from ttc.types import is_int

T = TypeVar("T")


async def bounded_gather(jobs: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Run coroutine factories with at most ``concurrency`` in flight; results in input order.

    Only ``concurrency`` tasks exist at once (a fixed pool of workers pulls from the list), so a batch of ten
    thousand questions does not create ten thousand tasks. The first failure cancels the rest and is raised as
    itself (a ``TTCError`` stays one), not wrapped in the task group's ``ExceptionGroup``.

    A KeyboardInterrupt or SystemExit a job raises (a second Ctrl-C lands in whatever code runs) is caught in its
    worker too and raised here, once the others have stopped: asyncio re-raises a task's interrupt out of the event
    loop itself, which skipped every caller's cleanup (their traces stayed 'running'). It wins over any other
    failure, and over a cancellation of this call, so the interrupt still reaches the caller.

    A job that raises ``CancelledError`` while nothing cancelled this call (a future it awaited was cancelled: an
    executor shut down, a client closed mid-call) has failed: the task group would end the other workers and
    return, leaving ``None`` where that job's and every unstarted job's result belongs.
    """
    check_concurrency(concurrency)
    results: list[object] = [_NO_RESULT] * len(jobs)
    next_index = 0
    failures: list[BaseException] = []

    async def worker(scope: anyio.CancelScope) -> None:
        nonlocal next_index
        while next_index < len(jobs):
            i = next_index
            next_index += 1
            try:
                results[i] = await jobs[i]()
            except anyio.get_cancelled_exc_class() as exc:
                if _cancelled_from_outside():
                    raise
                failures.append(_stray_cancellation(exc))
                scope.cancel()
                return
            except BaseException as exc:
                failures.append(exc)
                scope.cancel()
                return

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, len(jobs))):
                tg.start_soon(worker, tg.cancel_scope)
    finally:
        interrupt = next((exc for exc in failures if not isinstance(exc, Exception)), None)
        if interrupt is not None:
            raise interrupt
    if failures:
        raise failures[0]
    if any(r is _NO_RESULT for r in results):  # a worker's own task cancelled by another: the group ended it
        raise _stray_cancellation(None)
    return results  # type: ignore[return-value]


_NO_RESULT = object()


def _cancelled_from_outside() -> bool:
    """Whether the running task was asked to stop (by its caller, the task group, or the loop shutting down)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _stray_cancellation(exc: BaseException | None) -> BackendError:
    error = BackendError("a call stopped with CancelledError though nothing cancelled it (a future it awaited "
                         "was cancelled, e.g. by a backend closed while in use): close a backend only after its "
                         "calls have ended")
    error.__cause__ = exc
    return error


def check_concurrency(concurrency: object) -> None:
    if not is_int(concurrency) or concurrency < 1:
        raise ConfigError(f"concurrency must be an int >= 1 (questions in flight at once), got {concurrency!r}")


async def run_concurrently(jobs: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run jobs concurrently; the first failure cancels the rest and is raised as itself, not as a group, so
    callers see the typed error (BackendError, VerifierError) they would see from one call. An interrupt is
    raised here once every job has stopped, as in :func:`bounded_gather`."""
    if jobs:
        await bounded_gather(jobs, len(jobs))


def start_in_thread(work: Callable[[], T]) -> concurrent.futures.Future[T]:
    """``work()`` started on a thread of its own, its outcome in the returned future. Unlike anyio's worker
    threads, nothing here is tied to a task: however its awaiter goes away (a timeout, Ctrl-C, the event loop
    shutting down), the future still gets the outcome, for whoever must close what ``work`` opened."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # running: an awaiter's cancellation cannot cancel it, only stop waiting

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiter, as anyio.to_thread would
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name="ttc-open", daemon=True).start()
    return future


async def in_thread(work: Callable[[], T], undo: Callable[[T], object]) -> T:
    """``work()`` run off the event loop (:func:`start_in_thread`). A caller cancelled meanwhile is cancelled at
    once, as the thread cannot be stopped; ``undo`` then gets the result on a thread of its own when it comes, so
    what ``work`` opened is closed however the caller went away."""
    future = start_in_thread(work)
    try:
        return await asyncio.shield(asyncio.wrap_future(future))
    except BaseException:
        future.add_done_callback(lambda done: _undo_in_thread(done, undo))
        raise


def _undo_in_thread(done: concurrent.futures.Future[T], undo: Callable[[T], object]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    # Called on the worker thread, or on the event loop's where the work had ended: never block the loop.
    threading.Thread(target=undo, args=(done.result(),), name="ttc-undo", daemon=True).start()


async def outlast_cancellation(future: asyncio.Future[T]) -> T:
    """``future``'s result, waited for through any number of cancellations of the caller (the caller re-raises
    the first one afterwards). The store's writes take milliseconds; giving up on one leaves a trace 'running'."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    with anyio.CancelScope(shield=True):  # anyio's own cancellations; asyncio's task.cancel() is caught below
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
    return future.result()


async def run_to_end(work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, with ``work`` run to its end as a task of its own even where the caller is cancelled
    meanwhile (any number of times): the first cancellation is raised once it has ended, and an error of ``work``
    then gives way to it. For work that must not stop halfway, such as releasing a batch of sequences: one
    cancellation between two releases left the rest held in a caller's backend for good."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await outlast_cancellation(task)
        raise


async def clean_up(work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` to its end through any number of cancellations, its errors suppressed: the cleanup of an
    ``except`` block that re-raises what it caught. An anyio shield does not stop asyncio's own ``task.cancel()``,
    so a second cancellation cut such a cleanup off after its first await."""
    with contextlib.suppress(Exception):
        await outlast_cancellation(asyncio.ensure_future(work))


__all__ = ["bounded_gather", "check_concurrency", "clean_up", "in_thread", "outlast_cancellation", "run_concurrently",
           "run_to_end", "start_in_thread"]
