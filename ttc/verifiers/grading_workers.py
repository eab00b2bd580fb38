"""Grading workers: run a function of an importable module in a separate process under a hard deadline.

math-verify's own timeout relies on ``SIGALRM``, which only works in the main thread, and some inputs make sympy
run for minutes, so answer checks (:mod:`ttc.verifiers.answer`) run here. The parent waits at most the deadline
and kills a worker that overruns it, so a check can neither hang nor crash its caller; workers are started on
demand, reused while they behave, and stopped at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from ttc.errors import VerifierError

_WORKER_START_TIMEOUT_S = 120.0
_ERROR_TEXT_LIMIT = 200
POOL_SIZE = max(1, min(2, os.cpu_count() or 1))
Status = Literal["ok", "error", "timeout", "crashed"]

# Workers are fresh interpreters (fork + exec), not multiprocessing children: those re-import the caller's
# ``__main__``, which breaks a script without an ``if __name__ == "__main__"`` guard, and plain fork is unsafe
# in a threaded parent. A worker needs only this module, ttc.errors and the module of the function it runs
# (ttc.verifiers.answer for math-verify's checks), so it registers bare ``ttc`` and ``ttc.verifiers`` packages
# first: the real ``ttc/__init__`` imports the whole service (SQLAlchemy, HTTP clients), which would add about a
# second to every worker start.
_WORKER_BOOT = """
import sys, types
sys.path[:0] = {path!r}
for name, folder in {packages!r}:
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
from ttc.verifiers.grading_workers import _serve
_serve(int(sys.argv[1]), int(sys.argv[2]))
"""
_PACKAGES = [
    ("ttc", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    ("ttc.verifiers", os.path.dirname(os.path.abspath(__file__))),
]


@dataclass(frozen=True)
class Outcome:
    """What one call in a worker came to; ``value`` is set for "ok", ``detail`` explains the others."""

    status: Status
    value: object = None
    detail: str = ""


def _exit_when_orphaned(parent_pid: int) -> None:
    """A worker stuck in sympy never reads its pipe again, so it watches for its parent's death instead."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _limit_cpu(timeout_s: float) -> None:
    """Let the next call use at most about ``timeout_s`` more CPU seconds; past it the kernel ends the worker.

    The parent kills a worker that overruns, and the orphan watch above ends one whose parent died, but that
    watch is a thread: one C call that holds the GIL (a power of a huge integer) keeps it from ever running, and
    an orphan would then compute for good. The kernel's CPU limit needs no GIL.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system: the orphan watch is all there is
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(used.ru_utime + used.ru_stime + timeout_s) + 2
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _serve(read_fd: int, write_fd: int) -> None:
    """Worker main loop: answer pickled ``(function, args)`` requests until the parent sends None or leaves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        import math_verify  # noqa: F401  (paid once here, not inside the first timed check)

        replies.send(("ready", None))
        while (request := requests.recv()) is not None:
            function, args, timeout_s = request
            _limit_cpu(timeout_s)
            try:
                reply: tuple[str, object] = ("ok", function(*args))
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_LIMIT])
            replies.send(reply)
    except (EOFError, OSError):
        return


class _Worker:
    """One worker process and its two pipes; used by one caller at a time."""

    def __init__(self) -> None:
        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        boot = _WORKER_BOOT.format(path=[p for p in sys.path if p], packages=_PACKAGES)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", boot, str(child_read), str(child_write)],
                pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            for fd in (child_read, parent_write, parent_read, child_write):
                os.close(fd)
            raise VerifierError(f"cannot start an answer-grading worker with {sys.executable!r}: {exc}") from exc
        os.close(child_read)
        os.close(child_write)
        self.requests = Connection(parent_write, readable=False)
        self.replies = Connection(parent_read, writable=False)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            if self.replies.poll(timeout_s) and self.replies.recv() == ("ready", None):
                return
        except (EOFError, OSError):
            pass
        self.stop()
        raise VerifierError(
            f"the answer-grading worker failed to start (exit code {self.process.returncode}, see its stderr "
            f"above); check that `{sys.executable} -c 'import ttc.verifiers.grading_workers, math_verify'` works"
        )

    def call(self, function: Callable[..., object], args: tuple[object, ...], timeout_s: float) -> Outcome:
        try:
            self.requests.send((function, args, timeout_s))
            if not self.replies.poll(timeout_s):
                return Outcome("timeout", detail=f"timeout after {timeout_s:g}s")
            status, value = self.replies.recv()
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1.0)
            return Outcome("crashed", detail=f"grading worker died (exit code {self.process.returncode})")
        if status == "ok":
            return Outcome("ok", value=value)
        return Outcome("error", detail=str(value))

    def stop(self) -> None:
        """Kill rather than ask: a worker stuck in sympy would not read a polite request."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.requests.close()
        self.replies.close()

    def retire(self) -> None:
        """Ask an idle worker to leave, then make sure it did."""
        with contextlib.suppress(OSError):
            self.requests.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)
        self.stop()


class _WorkerPool:
    """At most ``size`` workers, started on demand; a worker that overran its deadline is killed, not reused."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False

    def call(self, function: Callable[..., object], args: tuple[object, ...], timeout_s: float) -> Outcome:
        worker = self._acquire()
        reusable = False
        try:
            outcome = worker.call(function, args, timeout_s)
            reusable = outcome.status in ("ok", "error")
            return outcome
        finally:
            self._release(worker, reusable)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.process.poll() is None:
                        return worker
                    # It died while idle (killed, out of memory): a check sent to it would read as a crash.
                    self._live -= 1
                    worker.stop()
                if self._live < self._size:
                    break
                self._cond.wait()
            self._live += 1
        try:
            worker = _Worker()
            worker.wait_ready(_WORKER_START_TIMEOUT_S)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise
        return worker

    def _release(self, worker: _Worker, reusable: bool) -> None:
        with self._cond:
            if reusable and not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        if reusable:
            worker.retire()
        else:
            worker.stop()
        with self._cond:
            self._live -= 1
            self._cond.notify()

    def close(self) -> None:
        """Retire idle workers now; busy ones are retired when their call returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.retire()


_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _forget_parents_pool() -> None:
    """A forked child starts without workers: the parent's pipes, shared with it, would cross their replies."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # a lock another thread held at the fork would stay held here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_pool)


def _get_pool() -> _WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _WorkerPool(size=POOL_SIZE)
        return _pool


def shutdown_grader() -> None:
    """Stop the worker processes; the next check starts fresh ones. Calls already running finish first."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


atexit.register(shutdown_grader)


def run_in_worker(function: Callable[..., object], args: tuple[object, ...], timeout_s: float) -> Outcome:
    """Run ``function(*args)`` in a grading worker under a hard deadline (importable functions only)."""
    return _get_pool().call(function, args, timeout_s)


__all__ = ["POOL_SIZE", "Outcome", "Status", "run_in_worker", "shutdown_grader"]
