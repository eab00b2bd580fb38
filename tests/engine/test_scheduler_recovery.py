"""The engine's worker thread: when it dies, every request it held is answered, and the next one is served."""

from __future__ import annotations

import threading

import pytest
import torch

from ttc.engine.scheduler import Scheduler
from ttc.errors import BackendError


class IdleEngine:
    """No generation or scoring: the worker's plumbing alone is under test."""

    active_branches = 0

    def fail_all(self, error: Exception) -> None:
        pass


def test_a_request_submitted_while_a_dead_worker_answers_its_own_starts_a_new_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It went into an inbox the dying worker had already emptied, with no worker to read it: it waited for good."""
    real = torch.set_num_threads
    starts = {"n": 0}

    def fails_first(threads: int) -> None:
        starts["n"] += 1
        if starts["n"] == 1:
            raise RuntimeError("omp failed")
        real(threads)

    monkeypatch.setattr(torch, "set_num_threads", fails_first)
    scheduler = Scheduler(IdleEngine(), threads=torch.get_num_threads())  # type: ignore[arg-type]
    replies: dict[str, object] = {}
    served = threading.Event()

    def second(result: object) -> None:
        replies["second"] = result
        served.set()

    def first(result: object) -> None:
        replies["first"] = result
        scheduler.call(lambda engine: "second ok", second)  # a caller retrying as soon as it hears back

    try:
        scheduler.call(lambda engine: "first ok", first)
        assert served.wait(30), "the second request was never served"
        assert isinstance(replies["first"], BackendError) and "omp failed" in str(replies["first"])
        assert replies["second"] == "second ok"
    finally:
        scheduler.close()
