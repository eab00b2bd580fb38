"""A KeyboardInterrupt raised in a question's own work (where a second Ctrl-C lands in a running batch) fails every
open trace as 'cancelled' and still reaches the caller, in every way a question can be run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pooled_doubles import answer

from ttc import solve, solve_batch
from ttc.session import _failure_text
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend
from ttc.types import Completion, Sampling

STEP = "Add them up.\n"
QUESTIONS = ["easy 1", "hard 1", "hard 2"]


class InterruptingBackend(ScriptedBackend):
    """The scripted backend, where the ``at``-th call raises KeyboardInterrupt as a signal handler would."""

    def __init__(self, responder: Callable[[str, int, int | None], str], *, at: int) -> None:
        super().__init__(responder, delay_s=0.01)
        self.at = at
        self.count = 0

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        self.count += 1
        if self.count == self.at:
            raise KeyboardInterrupt
        return await super().complete(prompt, n, sampling)


class StepPRM:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.8] * len(steps)


def stepwise(prompt_text: str, index: int, seed: int | None) -> str:
    return answer(prompt_text, index, seed) + "\n" if prompt_text.endswith(STEP) else STEP


SEARCH = {"strategy": "rebase", "verifier": StepPRM(), "width": 3, "max_step_tokens": 20, "max_depth": 4}
SAMPLES = {"strategy": "self_consistency", "max_tokens": 32}

CASES: dict[str, tuple[Callable[..., Any], Callable[[str, int, int | None], str], dict[str, Any]]] = {
    "single solve, a tree search": (lambda store, backend, **kw: solve(QUESTIONS[1], 1500, store=store,
                                                                       backend=backend, seed=0, **kw),
                                    stepwise, SEARCH),
    "single solve, samples": (lambda store, backend, **kw: solve(QUESTIONS[1], 1500, store=store, backend=backend,
                                                                 seed=0, **kw), answer, SAMPLES),
    "per question batch, tree searches": (lambda store, backend, **kw: solve_batch(
        QUESTIONS, 1500, store=store, backend=backend, seed=0, **kw), stepwise, SEARCH),
    "per question batch, samples": (lambda store, backend, **kw: solve_batch(
        QUESTIONS, 1500, store=store, backend=backend, seed=0, **kw), answer, SAMPLES),
    "pooled samples": (lambda store, backend, **kw: solve_batch(
        QUESTIONS, 1500, store=store, backend=backend, seed=0, budget_scope="batch", **kw), answer, SAMPLES),
    "pooled searches": (lambda store, backend, **kw: solve_batch(
        QUESTIONS, 1500, store=store, backend=backend, seed=0, budget_scope="batch", **kw), stepwise, SEARCH),
}


@pytest.mark.parametrize("at", [1, 2, 4])
@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupt_in_task_code_fails_every_trace_as_cancelled(tmp_path: Path, case: str, at: int,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """An interrupt ending any task inside the event loop was re-raised out of the loop itself, so the batch's
    failure handling never ran (pooled searches left every trace 'running'), or the task group's wrapper reached
    the trace as its error."""
    run, responder, options = CASES[case]
    store = TraceStore(tmp_path / "t.db")
    backend = InterruptingBackend(responder, at=at)
    with pytest.raises(KeyboardInterrupt):
        run(store, backend, **options)
    assert backend.count >= at  # the questions already in flight make their calls before they are cancelled
    ended = {(t.status, store.get_trace(t.id).error) for t in store.list_traces()}
    assert ("failed", "cancelled") in ended
    assert ended <= {("failed", "cancelled"), ("done", None)}  # a question may have finished before the interrupt
    # no task was left to end in the interrupt while the event loop shut down
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []
    store.close()


def test_a_task_group_of_interrupts_reads_cancelled() -> None:
    """A task group's wrapper round a Ctrl-C was stored as 'BaseExceptionGroup: unhandled errors in a TaskGroup'."""
    group = BaseExceptionGroup("unhandled errors in a TaskGroup", [KeyboardInterrupt(), asyncio.CancelledError()])
    assert _failure_text(group) == "cancelled"
    assert _failure_text(BaseExceptionGroup("nested", [group])) == "cancelled"
    assert _failure_text(ExceptionGroup("one failed", [ValueError("x")])).startswith("ExceptionGroup: one failed")


def test_a_trace_whose_start_is_cancelled_with_every_task_is_failed_not_left_running(tmp_path: Path) -> None:
    """What an event loop torn down by an interrupt does: every task is cancelled at once, the start of a trace
    whose row is being written among them. The start ran in a task of its own, cancelled with the rest, so its id
    was lost and the row it wrote read 'running' for good."""
    from ttc.session import _start_trace
    from ttc.trace import TraceRecorder
    from ttc.types import Budget, Problem

    db = tmp_path / "torn-down.db"

    async def main() -> BaseException | str:
        store = TraceStore(str(db))
        try:
            question = asyncio.ensure_future(_start_trace(store, TraceRecorder(), problem=Problem("What is 2+2?"),
                                                          strategy="best_of_n", budget=Budget.of(10),
                                                          backend="scripted", seed=1, run_id=None))
            for _ in range(2):  # the question starts its trace and waits on the row being written
                await asyncio.sleep(0)
            me = asyncio.current_task()
            for task in asyncio.all_tasks():  # as asyncio's runner does after a KeyboardInterrupt
                if task is not me:
                    task.cancel()
            [outcome] = await asyncio.gather(question, return_exceptions=True)
            return outcome
        finally:
            store.close()

    outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.CancelledError)
    with TraceStore(str(db), read_only=True) as store:
        [trace] = store.list_traces(limit=None)
        assert (trace.status, trace.error) == ("failed", "cancelled")
