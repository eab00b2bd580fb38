"""Batch evaluation through its API: what a run needs of its problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.api import open_session
from ttc.bench.eval import evaluate, summarize
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend, guessing_responder
from ttc.types import Budget, Problem

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("indices", [(None, None, None), (0, 1, 1)])
async def test_problems_without_their_own_index_are_refused(tmp_path: Path, indices: tuple[int | None, ...]) -> None:
    """The index marks a problem done and seeds it: problems sharing one would be solved and counted as one."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=index) for i, index in enumerate(indices)]
    try:
        with pytest.raises(ConfigError, match="its own index"):
            await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2}, seed=0)
        assert session.store is not None and session.store.list_runs() == []  # refused before a run is opened
        report = await evaluate([Problem(p.question, gold=p.gold, index=i) for i, p in enumerate(problems)],
                                Budget(tokens=200), session, strategy="best_of_n", options={"n": 2}, seed=0)
        assert report.done == 3
    finally:
        await session.aclose()


async def test_a_runs_summary_reads_every_one_of_its_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summarize listed "all" traces with limit=1_000_000, so a larger run would have been counted short, silently."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i) for i in range(3)]
    try:
        report = await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2},
                                seed=0)
        assert session.store is not None
        limits: list[object] = []
        listed = TraceStore.list_traces

        def list_traces(store: TraceStore, **kwargs: object) -> object:
            limits.append(kwargs.get("limit", 50))
            return listed(store, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(TraceStore, "list_traces", list_traces)
        again = summarize(session.store, report.run_id, total=3, wall_s=0.0)
        assert limits and all(limit is None for limit in limits)
        assert (again.done, again.trace_ids) == (3, report.trace_ids)
    finally:
        await session.aclose()


async def test_a_batch_sharing_one_budget_fails_whole_and_resumes_whole(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i) for i in range(5)]
    options = {"max_tokens": 40, "stop_share": 1.0}
    failing = open_session(backend=ScriptedBackend(guessing_responder, fail_after=7), store=db, verifier=None,
                           prompt_template=None)
    try:
        report = await evaluate(problems, Budget(tokens=160), failing, strategy="auto", options=options, seed=0,
                                budget_scope="batch")
        assert report.done == 0 and report.failed == 5
        assert report.errors and "the batch of 5 problems sharing one budget" in report.errors[0]
    finally:
        await failing.aclose()
    session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None, prompt_template=None)
    try:
        again = await evaluate(problems, Budget(tokens=160), session, strategy="auto", options=options, seed=0,
                               budget_scope="batch", resume=report.run_id)
        assert (again.done, again.failed) == (5, 0)
        assert session.store is not None
        traces = session.store.list_traces(run_id=report.run_id)
        assert sorted(t.status for t in traces) == ["done"] * 5 + ["failed"] * 5  # the failed ones are kept
        done = [t for t in traces if t.status == "done"]
        assert sum(session.store.get_trace(t.id).usage.generated_tokens for t in done) <= 5 * 160
    finally:
        await session.aclose()


async def test_a_question_left_without_an_answer_is_counted_wrong_and_reported(tmp_path: Path) -> None:
    """Samples cut short by their token limit state no answer; their text's last number (here the gold answer)
    is an intermediate value, so the run counts them wrong, and says how many there were."""

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        return "4 + 0 = 4\nThe answer is 4." if "long" in prompt_text else "The answer is 4."

    session = open_session(backend=ScriptedBackend(respond), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is 4 + 0? ({kind})", gold="4", index=i) for i, kind in enumerate(["long", "short"])]
    try:
        report = await evaluate(problems, Budget(tokens=100), session, strategy="best_of_n",
                                options={"n": 1, "max_tokens": 16}, seed=0)
        assert (report.done, report.correct, report.unanswered) == (2, 1, 1)
        store = session.store
        assert store is not None
        assert store.get_run(report.run_id).summary["unanswered"] == 1  # type: ignore[index]
        grades = {}
        for trace_id in report.trace_ids:
            record = store.get_trace(trace_id)
            [grade] = [e.payload for e in record.events if e.kind == "grade"]
            grades[record.answer] = (grade["correct"], grade["reason"])
        assert grades == {None: (False, "no answer"), "4": (True, "exact")}
    finally:
        await session.aclose()
