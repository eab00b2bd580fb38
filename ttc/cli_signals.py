"""Ctrl-C and SIGTERM while a command's event loop runs: each one cancels the command's work; none raises.

Python's own handling raises KeyboardInterrupt wherever the main thread happens to be. Inside the event loop's
machinery it escapes the loop, which then cancels every task at once, and one landing between a lock's acquisition
and its ``with`` block left the trace writer waiting on that lock for good. A cancellation is delivered where the
code awaits, which is where it is ready for one, so a command's work ends as it does on a first Ctrl-C however many
signals come: a second one cancels again, and the failing of the open traces outlasts it.

That cleanup waits for the trace store, and a server that stops answering (frozen, or cut off by the network) holds
a write for good: once signalled, a command whose store leaves a write unanswered past the store's patience (its
busy timeout, ``ttc.storage.writer.overdue``) ends there, with the interrupted status. What it left open is no
worse off than after a kill: its owner rows mark it interrupted when the store is next opened on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ttc.storage.writer import overdue

T = TypeVar("T")


class _Interrupted:
    """What the guarded command returns where a signal cancelled it."""


def run_interruptible(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` on a new event loop where SIGINT and SIGTERM cancel it; raise KeyboardInterrupt where they did.

    SIGINT stays ignored where it was (a background job of a script); SIGTERM ends the command all the same. Where
    the loop cannot take signal handlers (not on the main thread), the handlers in place apply.
    """
    async def guarded() -> T | _Interrupted:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - a coroutine run by anyio always has its task
            return await main()
        stop = _Stop(task, watch)
        installed = _install(asyncio.get_running_loop(), stop)
        try:
            return await main()
        except asyncio.CancelledError:
            if stop.signalled:
                return _Interrupted()
            raise
        finally:
            installed(stop.signalled)

    watch = _StoreWatch()
    outer = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # asyncio's own is inside
    try:
        result = anyio.run(guarded)
    finally:
        watch.stop()
        for sig, handler in outer.items():
            if signal.getsignal(sig) is _another:
                _replaced.setdefault(sig, handler if handler is not None else signal.SIG_DFL)
    if isinstance(result, _Interrupted):
        raise KeyboardInterrupt
    return result


class _Stop:
    def __init__(self, task: asyncio.Task[object], watch: _StoreWatch) -> None:
        self.task = task
        self.watch = watch
        self.signalled = False

    def __call__(self) -> None:
        self.signalled = True
        self.watch.start()
        self.task.cancel()


WATCH_POLL_S = 0.2


class _StoreWatch:
    """From the first signal on, a thread that ends the process where the trace store leaves a write unanswered
    past its patience. A thread, since the event loop itself may be the one waiting (a synchronous write in an
    ``except`` block): its signal handlers would not run again, and the thread cannot be stopped."""

    def __init__(self) -> None:
        self._started = False
        self._ended = threading.Event()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        since = time.monotonic()
        threading.Thread(target=self._watch, args=(since,), name="ttc-store-watch", daemon=True).start()

    def stop(self) -> None:
        self._ended.set()

    def _watch(self, since: float) -> None:
        while not self._ended.wait(WATCH_POLL_S):
            patience = overdue(since)
            if patience is not None:
                _give_up(patience)


def _give_up(patience: float) -> None:
    """End the process at once, with the status an interrupt ends it with: its main thread waits on the store (or
    on a thread that does), and its writer thread is blocked in the driver, so nothing else would end it."""
    message = (f"interrupted: the trace store did not answer for {patience:g}s, so the traces this command left open "
               "read 'running' until a solve or eval on this machine opens the store after this process has ended "
               "(then 'interrupted'; `ttc traces runs` lists an eval's run, and --resume RUN finishes it)")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + message + "\n")
        sys.stderr.flush()
    os._exit(130)


def _install(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Callable[[bool], None]:
    """Route SIGTERM, and SIGINT unless it is ignored, to ``stop``; return what puts the previous handlers back,
    or, once signalled, a handler that lets further signals pass: the command is ending, and a Ctrl-C held down
    raised KeyboardInterrupt in the event loop's teardown (which skipped stopping its worker thread, so the process
    never exited) or in the report of what was left (the ``--resume`` hint went unprinted). The command line puts
    the previous ones back when the command has ended (:func:`restore_signals`)."""
    wanted = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {sig: signal.getsignal(sig) for sig in wanted}
    installed: list[signal.Signals] = []
    for sig in wanted:
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):  # no loop signal handling here
            continue
        installed.append(sig)

    def restore(signalled: bool) -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
            handler = previous[sig] if previous[sig] is not None else signal.SIG_DFL
            signal.signal(sig, _another if signalled else handler)

    return restore


_replaced: dict[signal.Signals, signal._HANDLER] = {}
"""The handlers ``_another`` stands in for since an interrupt, until :func:`restore_signals`."""


def _another(_signum: int, _frame: object) -> None:
    """A signal after the one that stopped the command: its work is already cancelled and being recorded."""


def restore_signals() -> None:
    """Put back the handlers an interrupted command left ``_another`` in place of, for a process that goes on after
    the command (the command line run in-process); the console script exits instead, and keeps them."""
    while _replaced:
        sig, handler = _replaced.popitem()
        signal.signal(sig, handler)


__all__ = ["restore_signals", "run_interruptible"]
