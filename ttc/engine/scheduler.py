"""The worker thread that drives the engine and batches concurrent requests.

Requests from any number of asyncio tasks (or event loops) land in an inbox. The worker drains it between decode
steps: new generation requests are prefilled (those that extend held sequences in one forward together) and join
the running batch at the next step, so many concurrent ``complete`` calls share one forward per token, which is
what makes best-of-N and tree search fast. Scoring requests run between steps too, those that arrive together
in as few forwards as their lengths allow, and so do releases. Heavy compute thus never blocks an event loop,
and the engine's state is touched by this one thread only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ttc.engine.engine import Engine, GenerationRequest, Reply, ScoreRequest
from ttc.errors import BackendError, TTCError


@dataclass
class _Call:
    """A short job (release, embed) run between steps; its result or exception goes to ``reply``."""

    run: Callable[[Engine], object]
    reply: Reply


class Scheduler:
    """Owns the worker thread; ``max_batch`` caps how many branches decode together.

    ``threads`` sets the worker's CPU intra-op thread count, and the rest of the process keeps its own (see
    :func:`_own_threads`). Small models on a busy machine decode far faster single-threaded, because tiny matmuls
    split across spinning threads mostly wait for cores.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 64, threads: int | None = None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.threads = threads
        self._wake = threading.Condition()
        self._inbox: deque[GenerationRequest | ScoreRequest | _Call] = deque()
        self._waiting: deque[GenerationRequest] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False

    def submit(self, work: GenerationRequest | ScoreRequest | _Call) -> None:
        with self._wake:
            if self._closing:
                raise BackendError("the local engine is closed", kind="local")
            self._inbox.append(work)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="ttc-local-engine", daemon=True)
                self._thread.start()
            self._wake.notify()

    def call(self, run: Callable[[Engine], object], reply: Reply) -> None:
        self.submit(_Call(run, reply))

    def close(self) -> None:
        """Stop the worker (blocking until it exits); pending requests fail with BackendError."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        try:
            if self.threads is not None:
                _own_threads(self.threads)
            while True:
                with self._wake:
                    while not self._inbox and not self._has_work() and not self._closing:
                        self._wake.wait()
                    if self._closing:
                        break
                    work = list(self._inbox)
                    self._inbox.clear()
                self._take(work)
                self._admit()
                self._step()
        except Exception as exc:
            # Whatever stops the worker fails every request it holds, with the reason: their callers would otherwise
            # wait for good. A request submitted from then on starts a new worker.
            self._shutdown(_as_backend_error(exc), stopped=True)
            return
        except BaseException as exc:
            self._shutdown(BackendError(f"the local engine's worker stopped: {type(exc).__name__}", kind="local"),
                           stopped=True)
            raise
        self._shutdown()

    def _has_work(self) -> bool:
        return self.engine.active_branches > 0 or bool(self._waiting)

    def _take(self, work: Sequence[GenerationRequest | ScoreRequest | _Call]) -> None:
        """Queue generation requests; run the rest in arrival order, consecutive scoring requests together."""
        scores: list[ScoreRequest] = []
        for item in work:
            if isinstance(item, GenerationRequest):
                self._waiting.append(item)
            elif isinstance(item, ScoreRequest):
                scores.append(item)
            else:
                self._score(scores)
                scores = []
                try:
                    result = item.run(self.engine)
                except Exception as exc:
                    item.reply(exc)
                else:
                    item.reply(result)
        self._score(scores)

    def _score(self, requests: Sequence[ScoreRequest]) -> None:
        if not requests:
            return
        try:
            self.engine.score_all(requests)
        except Exception as exc:  # past the requests' own failures: the engine's state is in doubt
            error = _as_backend_error(exc)
            for request in requests:
                request.reply(error)
            self.engine.fail_all(error)

    def _admit(self) -> None:
        """Prefill waiting requests, together, while the batch has room (an oversized request runs alone)."""
        admitted: list[GenerationRequest] = []
        active = self.engine.active_branches
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:  # takes no room: it must not hold the requests behind it until the batch drains
                self._waiting.popleft()
                continue
            if active and active + request.n > self.max_batch:
                break
            self._waiting.popleft()
            admitted.append(request)
            active += request.n
        if not admitted:
            return
        try:
            self.engine.start_all(admitted, lambda request, error: request.reply(_as_backend_error(error)))
        except Exception as exc:  # past the requests' own failures: the engine's state is in doubt
            self.engine.fail_all(_as_backend_error(exc))

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as exc:
            self.engine.fail_all(_as_backend_error(exc))

    def _shutdown(self, error: Exception | None = None, *, stopped: bool = False) -> None:
        """Fail every request held. ``stopped``: the worker is ending on an error, not on close; it forgets itself
        in the same lock as it takes the inbox, so a request submitted after this one starts a new worker instead of
        waiting in an inbox no worker reads."""
        error = error or BackendError("the local engine was closed before this request finished", kind="local")
        self.engine.fail_all(error)
        with self._wake:
            if stopped:
                self._thread = None
            leftovers = list(self._inbox) + list(self._waiting)
            self._inbox.clear()
            self._waiting.clear()  # in the lock: once it is released, a new worker may queue requests here
        for item in leftovers:
            item.reply(error)


def _own_threads(count: int) -> None:
    """Give the calling thread ``count`` intra-op threads and leave the process's setting as it was.

    OpenMP's count is per thread, but ``torch.set_num_threads`` also writes the count torch gives every thread that
    first runs an op after it: one engine with ``threads=1`` left each thread the application started afterwards
    on one thread. The process's count is written back from a thread of its own, since writing it here would
    undo this thread's. A thread whose first op falls between the two writes still starts with ``count``.
    """
    process = torch.get_num_threads()  # a new thread's first call: the count the process gives new threads
    torch.set_num_threads(count)
    if process != count:
        restore = threading.Thread(target=torch.set_num_threads, args=(process,), name="ttc-threads-restore")
        restore.start()
        restore.join()


def _as_backend_error(exc: Exception) -> Exception:
    if isinstance(exc, TTCError):
        return exc
    error = BackendError(f"local engine failed: {type(exc).__name__}: {exc}", kind="local")
    error.__cause__ = exc
    return error


__all__ = ["Scheduler"]
