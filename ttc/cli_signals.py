"""Ctrl-C and SIGTERM while a command's event loop runs: each one cancels the command's work; none raises.

Python's own handling raises KeyboardInterrupt wherever the main thread happens to be. Inside the event loop's
machinery it escapes the loop, which then cancels every task at once, and one landing between a lock's acquisition
and its ``with`` block left the trace writer waiting on that lock for good. A cancellation is delivered where the
code awaits, which is where it is ready for one, so a command's work ends as it does on a first Ctrl-C however many
signals come: a second one cancels again, and the failing of the open traces outlasts it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

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
        stop = _Stop(task)
        installed = _install(asyncio.get_running_loop(), stop)
        try:
            return await main()
        except asyncio.CancelledError:
            if stop.signalled:
                return _Interrupted()
            raise
        finally:
            installed()

    result = anyio.run(guarded)
    if isinstance(result, _Interrupted):
        raise KeyboardInterrupt
    return result


class _Stop:
    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.signalled = False

    def __call__(self) -> None:
        self.signalled = True
        self.task.cancel()


def _install(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Callable[[], None]:
    """Route SIGTERM, and SIGINT unless it is ignored, to ``stop``; return what puts the previous handlers back."""
    wanted = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {sig: signal.getsignal(sig) for sig in wanted}
    installed: list[signal.Signals] = []
    for sig in wanted:
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):  # no loop signal handling here
            continue
        installed.append(sig)

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
            handler = previous[sig]
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


__all__ = ["run_interruptible"]
