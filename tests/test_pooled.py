"""A batch under one shared budget (budget_scope="batch"), end to end through solve_batch with real SQLite.

The scripted backend stands in for the model so the controller's decisions can be asserted exactly; the test on the
bundled mini models is tests/test_pooled_mini.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio
import pytest
from pooled_doubles import answer, events

from ttc import Budget, solve, solve_batch
from ttc.errors import BackendError, BudgetExhausted, ConfigError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend
from ttc.types import Completion, Sampling

EASY = [f"easy {i}" for i in range(6)]
HARD = [f"hard {i}" for i in range(2)]
SAMPLE = len("The answer is 4.")


responder = answer

def test_what_easy_questions_leave_goes_to_the_split_ones(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    questions = EASY + HARD
    budget = len(questions) * 16 * SAMPLE  # an equal share would be 16 samples each
    results = solve_batch(questions, budget, backend=ScriptedBackend(responder), store=store, seed=3,
                          budget_scope="batch", max_tokens=SAMPLE, round_size=4, stop_share=0.9)
    drawn = [len(r.candidates) for r in results]
    assert drawn[:6] == [4] * 6  # unanimous after the first round
    # The split votes drew everything the easy ones left, far beyond an equal share of 16 each.
    assert drawn[6:] == [52, 52]
    assert sum(r.usage.generated_tokens for r in results) == budget
    assert [r.answer for r in results[:6]] == ["4"] * 6
    for r in results[:6]:
        assert events(store, r.trace_id, "stop") == [{"reason": "decided", "samples": 4, "share": 1.0}]
    hard = results[6]
    grants = events(store, hard.trace_id, "grant")
    assert [g["samples"] for g in grants] == [4] * 13
    [plan] = events(store, hard.trace_id, "plan")
    assert plan["budget_scope"] == "batch" and plan["batch_size"] == 8
    assert plan["batch_budget"] == {"tokens": budget, "wall_s": None, "calls": None}
    assert all(t.status == "done" for t in store.list_traces())
    store.close()


@pytest.mark.parametrize("samples_affordable", [8, 20, 37])
def test_the_batch_never_spends_more_than_its_budget(samples_affordable: int) -> None:
    budget = samples_affordable * SAMPLE
    results = solve_batch(EASY[:2] + HARD, budget, backend=ScriptedBackend(responder), store=False, seed=1,
                          budget_scope="batch", max_tokens=SAMPLE, round_size=4, stop_share=0.9)
    assert sum(r.usage.generated_tokens for r in results) <= budget
    assert all(r.answer is not None for r in results)
    # Every sample the pool could afford was drawn: the split questions could use more than is left.
    assert budget - sum(r.usage.generated_tokens for r in results) < SAMPLE


def test_the_same_seed_spends_the_same_way_at_any_concurrency(tmp_path: Path) -> None:
    def run(concurrency: int) -> list[tuple[str | None, int]]:
        results = solve_batch(EASY[:3] + HARD, 30 * SAMPLE, backend=ScriptedBackend(responder, delay_s=0.001),
                              store=False, seed=9, budget_scope="batch", max_tokens=SAMPLE, concurrency=concurrency)
        return [(r.answer, len(r.candidates)) for r in results]

    assert run(1) == run(8)


def test_a_batch_budget_near_the_largest_limit_runs() -> None:
    """Each question's cap (max_samples x max_tokens) passed 2**63 - 1 for a large max_tokens: refused as too large."""
    results = solve_batch(EASY[:2], 2**62, backend=ScriptedBackend(responder), store=False, seed=0,
                          budget_scope="batch", max_tokens=2**60)
    assert [r.answer for r in results] == ["4", "4"]


def test_a_failure_marks_every_trace_of_the_batch_failed(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    with pytest.raises(BackendError, match="refused"):
        solve_batch(EASY[:2] + HARD, 100 * SAMPLE, backend=ScriptedBackend(responder, fail_after=6), store=store,
                    seed=0, budget_scope="batch", max_tokens=SAMPLE, concurrency=2, stop_share=0.95)
    traces = store.list_traces()
    assert len(traces) == 4
    assert {t.status for t in traces} == {"failed"}
    for t in traces:
        # each kept its prompt and the rounds it had drawn
        assert store.get_trace(t.id).nodes[0].parent is None
    # the question whose call failed carries the error; the others were stopped because of it
    errors = [str(store.get_trace(t.id).error) for t in traces]
    assert errors.count("cancelled") == 3 and sum(e.startswith("BackendError: ") for e in errors) == 1
    store.close()


def test_the_failed_traces_of_a_batch_record_what_each_spent(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    backend = ScriptedBackend(responder, fail_after=6)
    with pytest.raises(BackendError, match="refused"):
        solve_batch(EASY[:2] + HARD, 100 * SAMPLE, backend=backend, store=store, seed=0, budget_scope="batch",
                    max_tokens=SAMPLE, concurrency=2, stop_share=0.95)
    usages = [store.get_trace(t.id).usage for t in store.list_traces()]
    assert all(u is not None and u.generated_tokens > 0 for u in usages)
    assert sum(u.generated_tokens for u in usages if u is not None) == backend.stats().generated_tokens
    assert sum(u.backend_calls for u in usages if u is not None) == 6
    store.close()


def test_what_cannot_share_a_budget_is_refused_before_anything_runs() -> None:
    backend = ScriptedBackend(responder)
    with pytest.raises(ConfigError, match="use strategy='auto', 'self_consistency' or a tree search"):
        solve_batch(EASY, 10_000, backend=backend, store=False, strategy="best_of_n", budget_scope="batch")
    with pytest.raises(ConfigError, match="cannot give each of 6 questions one sample"):
        solve_batch(EASY, 6 * 512 - 1, backend=backend, store=False, budget_scope="batch")
    with pytest.raises(ConfigError, match="budget_scope must be 'question'"):
        solve_batch(EASY, 10_000, backend=backend, store=False, budget_scope="everything")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown option 'n'"):
        solve_batch(EASY, 10_000, backend=backend, store=False, budget_scope="batch", n=4)
    assert backend.calls == []
    assert solve_batch([], 10, backend=backend, store=False, budget_scope="batch") == []


@pytest.mark.parametrize("scope", ["batch", "question"])
@pytest.mark.parametrize("select", ["weighted_vote", "score"])
def test_a_choice_by_score_without_a_verifier_is_refused_before_any_trace_opens(
        tmp_path: Path, scope: str, select: str) -> None:
    """In a batch the first question's trace opened, then the refusal left it 'running'; per question each
    question's trace opened to fail on it."""
    store = TraceStore(tmp_path / "t.db")
    backend = ScriptedBackend(responder)
    with pytest.raises(ConfigError, match=f"select='{select}' ranks samples by a verifier's score"):
        solve_batch(EASY[:3], 3000, backend=backend, store=store, budget_scope=scope,  # type: ignore[arg-type]
                    strategy="self_consistency", select=select, max_tokens=16)
    assert store.list_traces() == [] and backend.calls == []
    store.close()


def test_a_single_best_of_n_by_score_without_a_verifier_spends_nothing() -> None:
    """Best-of-N chose only after drawing its samples, so the refusal came after the whole budget was spent."""
    backend = ScriptedBackend(responder)
    with pytest.raises(ConfigError, match="select='score' ranks samples by a verifier's score"):
        solve("easy 1", 3000, backend=backend, store=False, strategy="best_of_n", select="score", max_tokens=16)
    assert backend.calls == []


def test_a_cancelled_batch_leaves_no_trace_running(tmp_path: Path) -> None:

    from ttc import asolve_batch

    store = TraceStore(str(tmp_path / "t.db"))

    async def main() -> bool:
        with anyio.move_on_after(0.3) as scope:
            await asolve_batch(EASY[:2] + HARD, 100 * SAMPLE, backend=ScriptedBackend(responder, delay_s=0.05),
                               store=store, seed=0, budget_scope="batch", max_tokens=SAMPLE, stop_share=0.95)
        return scope.cancelled_caught

    assert anyio.run(main), "the batch should still have been drawing when cancelled"
    traces = store.list_traces()
    assert len(traces) == 4 and {t.status for t in traces} == {"failed"}
    assert {store.get_trace(t.id).error for t in traces} == {"cancelled"}
    store.close()


def test_a_batch_out_of_time_stops_drawing_within_a_wave() -> None:
    """The wall limit was checked only between waves, so the first wave always ran whole: 10 calls of 0.1 s
    on a 0.2 s batch."""
    backend = ScriptedBackend(responder, delay_s=0.1)
    questions = [f"Tom has {i} apples and 4 pears. How many?" for i in range(10)]
    solve_batch(questions, Budget(wall_s=0.2), backend=backend, store=False, seed=0, budget_scope="batch",
                concurrency=1)
    assert len(backend.calls) <= 3


class EvenPRM:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.8] * len(steps)


class SlowToOpen(TraceStore):
    """A store whose trace opening takes a while, as a busy SQLite file's does under many questions: its one
    writer is kept busy 0.05 s before each start, so four traces take 0.2 s to open."""

    def queue_start_trace(self, **fields: Any) -> tuple[str, Future[None]]:
        self._submit(lambda _connection: time.sleep(0.05), "a busy moment")
        return super().queue_start_trace(**fields)


@pytest.mark.parametrize("strategy", ["self_consistency", "rebase"])
def test_every_question_counts_the_batch_wall_time_from_the_batch_start(tmp_path: Path, strategy: str) -> None:
    """Each question's clock started when its trace opened, so with four traces taking 0.2 s to open, calls
    started at 0.24 s of a 0.12 s batch. Counted from the batch's start, the time is gone before any call: the
    batch bought nothing, and says so."""
    started: list[float] = []

    class Timed(ScriptedBackend):
        async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
            started.append(time.monotonic() - t0)
            return await super().complete(prompt, n, sampling)

    store = SlowToOpen(tmp_path / "t.db")
    t0 = time.monotonic()
    try:
        options = {"max_step_tokens": 16} if strategy == "rebase" else {"max_tokens": 16}
        with pytest.raises(BudgetExhausted, match=r"wall_s \(0\.12 s\) ran out before any of its 4 questions"):
            solve_batch([f"Tom has {i} apples and 4 pears. How many?" for i in range(4)], Budget(wall_s=0.12),
                        backend=Timed(answer), store=store, seed=0, budget_scope="batch", strategy=strategy,
                        verifier=EvenPRM() if strategy == "rebase" else None, concurrency=4, **options)
        traces = [store.get_trace(t.id) for t in store.list_traces()]
        assert len(traces) == 4 and {t.status for t in traces} == {"failed"}
        assert all("ran out before any of its 4 questions" in (t.error or "") for t in traces)
    finally:
        store.close()
    assert started == []


@pytest.mark.parametrize("scope", ["batch", "question"])
def test_a_seed_whose_last_question_would_pass_2_63_is_refused_before_any_trace_opens(
        tmp_path: Path, scope: str) -> None:
    store = TraceStore(tmp_path / "t.db")
    try:
        with pytest.raises(ConfigError, match=r"seed 9223372036854775806 \+ 2 reaches 2\*\*63"):
            solve_batch(["hard 0", "hard 1", "hard 2"], 3000, backend=ScriptedBackend(answer), store=store,
                        seed=(1 << 63) - 2, budget_scope=scope, strategy="self_consistency", max_tokens=16)
        assert store.list_traces() == []
        assert len(solve_batch(["hard 0", "hard 1"], 3000, backend=ScriptedBackend(answer), store=store,
                               seed=(1 << 63) - 2, budget_scope=scope, strategy="self_consistency",
                               max_tokens=16)) == 2
    finally:
        store.close()
