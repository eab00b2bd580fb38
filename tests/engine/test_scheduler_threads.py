"""The engine worker's CPU thread count is its own: the threads the application runs keep the process's count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from ttc.engine.scheduler import Scheduler

T = TypeVar("T")


class IdleEngine:
    """No generation or scoring: the worker's plumbing alone is under test."""

    active_branches = 0

    def fail_all(self, error: Exception) -> None:
        pass


def in_new_thread(run: Callable[[], T]) -> T:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(run()))
    thread.start()
    thread.join()
    return out[0]


def on_worker(scheduler: Scheduler, run: Callable[[], object]) -> object:
    replies: list[object] = []
    answered = threading.Event()

    def reply(result: object) -> None:
        replies.append(result)
        answered.set()

    scheduler.call(lambda engine: run(), reply)
    assert answered.wait(30), "the worker never answered"
    return replies[0]


def test_the_workers_thread_count_leaves_new_threads_the_process_count() -> None:
    """After one solve() on the embedded default (threads=1), every thread started later ran torch on 1 thread."""
    process = in_new_thread(torch.get_num_threads)
    count = 1 if process != 1 else 2
    scheduler = Scheduler(IdleEngine(), threads=count)  # type: ignore[arg-type]
    try:
        assert on_worker(scheduler, torch.get_num_threads) == count
        assert in_new_thread(torch.get_num_threads) == process
        assert on_worker(scheduler, torch.get_num_threads) == count  # restoring the process's left the worker's
    finally:
        scheduler.close()
    assert in_new_thread(torch.get_num_threads) == process
