"""Batch evaluation through its API: what a run needs of its problems."""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ttc.api import open_session, solve_problem
from ttc.bench.eval import EvaluationStopped, evaluate, summarize
from ttc.errors import BackendError, ConfigError, ContextLengthError, StorageError, VerifierError
from ttc.storage import TraceStore
from ttc.storage import process as process_module
from ttc.storage.process import Holder
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


async def test_a_batch_budget_too_small_is_refused_in_terms_of_the_budget_a_question(tmp_path: Path) -> None:
    """evaluate's budget is each question's: the refusal spoke of "a batch budget of 10 tokens" and "each of 1
    questions" for a batch of five."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i) for i in range(5)]
    try:
        with pytest.raises(ConfigError) as refused:
            await evaluate(problems, Budget(tokens=10), session, strategy="auto", options={"max_tokens": 40}, seed=0,
                           budget_scope="batch")
        assert str(refused.value) == ("the budget 10 tokens a question cannot give each question one sample of up "
                                      "to max_tokens=40: raise the budget to at least 40 or lower max_tokens")
        assert session.store is not None and not session.store.list_runs()
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


async def test_a_failure_a_resume_would_meet_again_is_counted_apart_from_one_of_the_moment(tmp_path: Path) -> None:
    """Both said "rerun with --resume"; a question longer than the model's context fails the same way again."""
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i) for i in range(4)]

    def respond(prompt: str, index: int, seed: int | None) -> str:
        if "0 + 1" in prompt:
            raise ContextLengthError("prompt of 900 tokens leaves no room in the model's 512-position context")
        if "1 + 1" in prompt:
            raise BackendError("the server went away")
        if "2 + 1" in prompt:
            raise VerifierError("cannot score this solution") from ContextLengthError("no room in its context")
        return guessing_responder(prompt, index, seed)

    session = open_session(backend=ScriptedBackend(respond), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        report = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options={"n": 1},
                                seed=0, concurrency=1)
    finally:
        await session.aclose()
    assert (report.done, report.failed, report.lasting) == (1, 3, 2) and len(report.errors) == 3


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


def plus_one(n: int) -> list[Problem]:
    return [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i, dataset="d") for i in range(n)]


async def test_a_resume_with_other_problems_or_settings_is_refused(tmp_path: Path) -> None:
    """Done traces are matched to problems by index: a resume reading other rows there, or run otherwise, would
    count one run's answers for another's questions."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        first = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 2},
                               seed=0)
        times_nine = [Problem(f"What is {i} * 9?", gold=str(i * 9), index=i, dataset="d") for i in range(4)]
        with pytest.raises(ConfigError, match="another problem at index 0 than this d's"):
            await evaluate(times_nine, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2}, seed=0,
                           resume=first.run_id)
        for changed in ({"strategy": "self_consistency", "options": {}}, {"seed": 9}, {"budget": Budget(tokens=50)}):
            kwargs: dict[str, Any] = {"budget": Budget(tokens=200), "strategy": "best_of_n", "options": {"n": 2},
                                      "seed": 0, **changed}
            budget = kwargs.pop("budget")
            with pytest.raises(ConfigError, match=r"started with other settings \(.*evaluate\."):
                await evaluate(plus_one(4), budget, session, resume=first.run_id, **kwargs)
        # The same problems the same way: the run goes on.
        again = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 2},
                               seed=0, resume=first.run_id)
        assert (again.done, again.total) == (2, 2)
    finally:
        await session.aclose()


def failing_at(question: str) -> ScriptedBackend:
    """The dry-run model, whose every answer to ``question`` fails: a run left with that problem to do."""

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        if question in prompt_text:
            raise BackendError("the server went away")
        return guessing_responder(prompt_text, index, seed)

    return ScriptedBackend(respond)


async def test_a_resume_lacking_problems_the_run_has_done_is_refused(tmp_path: Path) -> None:
    """Rows removed from a finished run's file dropped its done problems from its figures, and the resume
    rewrote its summary with what was left."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        first = await evaluate(plus_one(3), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                               seed=0)
        store = session.store
        assert store is not None
        summary = store.get_run(first.run_id).summary
        with pytest.raises(ConfigError, match="has done the problems at index 2, which the problems given lack"):
            await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0,
                           resume=first.run_id)
        without_first = plus_one(3)[1:]
        with pytest.raises(ConfigError, match="at index 0, which"):
            await evaluate(without_first, Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                           seed=0, resume=first.run_id)
        run = store.get_run(first.run_id)
        assert (run.status, run.summary) == ("done", summary)
    finally:
        await session.aclose()


async def test_a_resume_with_another_number_of_problems_is_refused(tmp_path: Path) -> None:
    """Rows added to a run's file made a finished run grow; rows removed that it had not done vanished from it."""
    db = str(tmp_path / "t.db")
    failing = open_session(backend=failing_at("What is 1 + 1?"), store=db, verifier=None, prompt_template=None)
    try:
        first = await evaluate(plus_one(2), Budget(tokens=200), failing, strategy="best_of_n", options={"n": 1},
                               seed=0)
        assert (first.done, first.failed) == (1, 1)
    finally:
        await failing.aclose()
    session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                           prompt_template=None)
    try:
        for problems in (plus_one(1), plus_one(3)):
            with pytest.raises(ConfigError, match=f"started with 2 problems, and {len(problems)} are given"):
                await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                               seed=0, resume=first.run_id)
        again = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                               seed=0, resume=first.run_id)
        assert (again.run_id, again.done, again.total) == (first.run_id, 2, 2)
    finally:
        await session.aclose()


async def test_a_run_recorded_without_its_number_of_problems_still_resumes(tmp_path: Path) -> None:
    """Runs begun before the number was recorded: theirs is not known, so a resume is not refused for it."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        first = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                               seed=0)
        store = session.store
        assert store is not None
        recorded = dict(store.get_run(first.run_id).config)
        settings = dict(recorded["evaluate"])  # type: ignore[call-overload]
        assert settings.pop("problems") == 2
        old = store.create_run(kind="eval", config={**recorded, "evaluate": settings})
        resumed = await evaluate(plus_one(3), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                 seed=0, resume=old)
        assert (resumed.run_id, resumed.done, resumed.total) == (old, 3, 3)
    finally:
        await session.aclose()


async def test_a_resume_on_another_model_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    scripted = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                            prompt_template=None)
    try:
        first = await evaluate(plus_one(2), Budget(tokens=200), scripted, strategy="best_of_n", options={"n": 1},
                               seed=0)
    finally:
        await scripted.aclose()
    local = open_session(backend=None, store=db, verifier=None, prompt_template=None)
    try:
        with pytest.raises(ConfigError, match=r"evaluate\.model 'scripted' -> 'local:"):
            await evaluate(plus_one(2), Budget(tokens=200), local, strategy="best_of_n", options={"n": 1}, seed=0,
                           resume=first.run_id)
    finally:
        await local.aclose()


async def test_an_evaluation_leaves_its_session_as_it_found_it(tmp_path: Path) -> None:
    """A later solve on the same session belongs to no run: it was written into the run, graded, and counted."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        report = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                seed=0)
        assert (session.run_id, session.extra_events) == (None, None)
        later = await solve_problem(Problem("What is 7 + 1?", gold="8", index=0), Budget(tokens=200), session,
                                    strategy="best_of_n", seed=0, options={"n": 1})
        store = session.store
        assert store is not None and later.trace_id is not None
        assert store.get_trace(later.trace_id).run_id is None
        assert summarize(store, report.run_id, total=2, wall_s=0.0).trace_ids == report.trace_ids
    finally:
        await session.aclose()


async def test_an_error_that_is_no_questions_own_fails_the_run_and_the_grade_is_stamped_when_made(
        tmp_path: Path) -> None:
    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        if "3 + 1" in prompt_text:
            raise RuntimeError("a bug in the responder")
        return guessing_responder(prompt_text, index, seed)

    session = open_session(backend=ScriptedBackend(respond), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        with pytest.raises(RuntimeError, match="a bug in the responder"):
            await evaluate(plus_one(4), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0,
                           concurrency=1)
        store = session.store
        assert store is not None
        [run] = store.list_runs()
        assert run.status == "failed" and "a bug in the responder" in str(run.summary)
        done = store.list_traces(run_id=run.id, status="done", limit=None)
        assert done
        for trace in done:
            events = store.get_trace(trace.id).events
            assert events[-1].kind == "grade" and events[-1].t >= max(e.t for e in events[:-1]) > 0
    finally:
        await session.aclose()


async def test_golds_and_seeds_a_run_cannot_use_are_refused_before_it_opens(tmp_path: Path) -> None:
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        with pytest.raises(ConfigError, match="a non-empty one"):
            await evaluate([Problem("q", gold=" ", index=0)], Budget(tokens=200), session, strategy="best_of_n",
                           options={}, seed=0)
        # Grading refused these only after the model had answered, and again on every resume.
        with pytest.raises(ConfigError, match=r"problem 1: the gold answer '\\\\boxed\{\}' is empty"):
            await evaluate([*plus_one(1), Problem("q", gold="\\boxed{}", index=1)], Budget(tokens=200), session,
                           strategy="best_of_n", options={}, seed=0)
        with pytest.raises(ConfigError, match=r"seed 9223372036854775807 reaches 2\*\*63 at index 3 \(the last\)"):
            await evaluate(plus_one(4), Budget(tokens=200), session, strategy="best_of_n", options={},
                           seed=(1 << 63) - 1)
        assert session.store is not None and session.store.list_runs() == []
    finally:
        await session.aclose()


async def test_a_run_begun_before_evaluate_kept_its_own_settings_still_resumes(tmp_path: Path) -> None:
    """Its stored config has no evaluate settings, so every comparison with them read as a changed setting."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        assert session.store is not None
        config = {"dataset": "d", "strategy": "best_of_n"}
        run_id = session.store.create_run(kind="eval", config=config)
        report = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                seed=0, config=config, resume=run_id)
        assert (report.run_id, report.done) == (run_id, 2)
    finally:
        await session.aclose()


class NamedScripted(ScriptedBackend):
    """A scripted model with a name of its own, as two model folders or served models have."""

    def __init__(self, name: str, responses: list[str]) -> None:
        super().__init__(responses)
        self._name = name

    @property
    def name(self) -> str:
        return self._name


async def test_a_resume_with_another_synthesizer_is_refused(tmp_path: Path) -> None:
    """The run's settings named the target only: a resume with another synthesizer mixed two setups in one run."""
    db = str(tmp_path / "t.db")

    async def run(problems: list[Problem], synthesizer: str, resume: str | None = None) -> str:
        session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                               prompt_template=None,
                               synthesizer=NamedScripted(synthesizer, [f"The answer is {len(synthesizer)}."]))
        try:
            report = await evaluate(problems, Budget(tokens=3000), session, strategy="parallel_thinking",
                                    options={"paths": 2}, seed=0, config={"dataset": "d"}, resume=resume)
            return report.run_id
        finally:
            await session.aclose()

    run_id = await run(plus_one(2), "synth-a")
    with pytest.raises(ConfigError, match=r"other settings \(evaluate.synthesizer 'synth-a' -> 'synth-bb'\)"):
        await run(plus_one(2), "synth-bb", run_id)
    assert await run(plus_one(2), "synth-a", run_id) == run_id



async def test_a_parallel_thinking_run_recorded_without_its_synthesizer_still_resumes(tmp_path: Path) -> None:
    """Runs begun before the synthesizer was part of the settings were refused as 'evaluate.synthesizer None ->'."""
    first = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "a.db"), verifier=None,
                         prompt_template=None, synthesizer=NamedScripted("synth", ["The answer is 5."]))
    try:
        report = await evaluate(plus_one(1), Budget(tokens=3000), first, strategy="parallel_thinking",
                                options={"paths": 2}, seed=0, config={"dataset": "d"})
        assert first.store is not None
        recorded = dict(first.store.get_run(report.run_id).config)
    finally:
        await first.aclose()
    assert recorded["evaluate"].pop("synthesizer") == "synth"  # as a run of the earlier settings stored them
    assert recorded["evaluate"].pop("problems") == 1
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "b.db"), verifier=None,
                           prompt_template=None, synthesizer=NamedScripted("synth", ["The answer is 5."]))
    try:
        assert session.store is not None
        old = session.store.create_run(kind="eval", config=recorded)
        resumed = await evaluate(plus_one(2), Budget(tokens=3000), session, strategy="parallel_thinking",
                                 options={"paths": 2}, seed=0, config={"dataset": "d"}, resume=old)
        assert (resumed.run_id, resumed.done) == (old, 2)
    finally:
        await session.aclose()


class _Killed(BaseException):
    """The process ending outright (kill -9) at the point where it is raised: nothing after it runs."""


async def test_a_new_run_is_leased_as_it_is_created_so_a_killed_eval_leaves_it_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run and its lease were two transactions: a process killed (or locked out) between them left a run
    with no lease, which no later open could tell was orphaned, so it read 'running' for good."""
    db = str(tmp_path / "t.db")

    def killed(*args: object, **kwargs: object) -> None:
        raise _Killed

    # Whichever write or read comes first after the run's row is committed is where the process dies.
    monkeypatch.setattr(TraceStore, "claim_run", killed)
    monkeypatch.setattr(TraceStore, "done_problem_indices", killed)
    session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                           prompt_template=None)
    try:
        with pytest.raises(_Killed):
            await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0)
    finally:
        await session.aclose()
    monkeypatch.setattr(process_module, "holder_state", lambda host, pid: Holder.DEAD)  # as the next process sees it
    with TraceStore(db) as store:
        [run] = store.list_runs()
        assert run.status == "interrupted"


async def test_a_write_refused_for_one_questions_data_fails_that_question_and_the_run_goes_on(
        tmp_path: Path) -> None:
    """The store refusing what one trace holds (here a lone surrogate in a sample) is that question's failure: a
    resume meets it again, so stopping the run there left every later problem unsolved for good."""

    def surrogate_for_problem_1(prompt: str, index: int, seed: int) -> str:
        out = guessing_responder(prompt, index, seed)
        return "\ud800 " + out if "What is 2 + 1" in prompt else out

    session = open_session(backend=ScriptedBackend(surrogate_for_problem_1), store=str(tmp_path / "t.db"),
                           verifier=None, prompt_template=None)
    try:
        report = await evaluate(plus_one(4), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                seed=0, concurrency=1)
        assert (report.done, report.failed) == (3, 1)
        store = session.store
        assert store is not None and store.get_run(report.run_id).status == "failed"
        [refused] = [t for t in store.list_traces(run_id=report.run_id, limit=None) if t.status == "failed"]
        assert "rejected the data" in (refused.error or "")
    finally:
        await session.aclose()


def test_an_evaluation_stopped_crosses_a_process_boundary() -> None:
    stopped = EvaluationStopped(StorageError("the trace database is locked"), "run-1", None)
    stopped.add_note("the evaluation stopped there")
    again = pickle.loads(pickle.dumps(stopped))
    assert (str(again), again.run_id, again.report, again.__notes__) == (
        "the trace database is locked", "run-1", None, ["the evaluation stopped there"])


async def test_a_store_that_fails_mid_run_stops_it_as_an_interruption_does_and_reports_what_was_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing store was taken for one question's failure after another: every later question was solved only
    for its trace to be lost, and a failing finish_run at the end threw the report away."""
    db = str(tmp_path / "t.db")
    finish = TraceStore.afinish_trace

    async def failing_at_problem_2(store: TraceStore, trace_id: str, **kwargs: Any) -> None:
        [gold] = [e.payload["gold"] for e in kwargs["events"] if e.kind == "grade"]
        if gold == "3":
            raise StorageError("the trace database is on a full disk")
        if gold == "4":  # problem 3 is still in progress when problem 2's write fails
            await asyncio.sleep(30)
        await finish(store, trace_id, **kwargs)

    monkeypatch.setattr(TraceStore, "afinish_trace", failing_at_problem_2)
    session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                           prompt_template=None)
    try:
        with pytest.raises(EvaluationStopped, match="on a full disk") as caught:
            await evaluate(plus_one(8), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0,
                           concurrency=2)
        stopped = caught.value
        assert isinstance(stopped, StorageError) and stopped.report is not None
        assert (stopped.report.total, stopped.report.done, stopped.report.run_id) == (8, 2, stopped.run_id)
        assert any(f"--resume {stopped.run_id}" in note for note in stopped.__notes__)
        store = session.store
        assert store is not None
        assert store.get_run(stopped.run_id).status == "interrupted"
        traces = store.list_traces(run_id=stopped.run_id, limit=None)
        assert len(traces) == 4  # the two done, and the two in flight when the store failed: no more were started
        assert sorted((t.status, t.error) for t in traces) == [
            ("done", None), ("done", None), ("failed", "StorageError: the trace database is on a full disk"),
            ("failed", "cancelled")]  # the question in flight, as Ctrl-C leaves it
    finally:
        await session.aclose()
    monkeypatch.undo()
    session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None, prompt_template=None)
    try:
        resumed = await evaluate(plus_one(8), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                 seed=0, resume=stopped.run_id)
        assert (resumed.done, resumed.failed) == (8, 0)
    finally:
        await session.aclose()


async def test_a_store_locked_for_good_mid_run_says_what_it_left_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where even the cleanup writes wait out the lock in vain, the error says what still reads 'running' (and the
    next open on this machine, once this process is gone, interrupts it)."""
    db = tmp_path / "t.db"
    monkeypatch.setenv("TTC_DB_BUSY_TIMEOUT_S", "0.2")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        if "What is 2 + 1?" in prompt_text and not holder.in_transaction:
            holder.execute("BEGIN IMMEDIATE")  # another program takes the store, and keeps it
        return guessing_responder(prompt_text, index, seed)

    session = open_session(backend=ScriptedBackend(respond), store=str(db), verifier=None, prompt_template=None)
    try:
        with pytest.raises(EvaluationStopped, match="is locked") as caught:
            await evaluate(plus_one(6), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0,
                           concurrency=1)
    finally:
        await session.aclose()
        holder.execute("ROLLBACK")
        holder.close()
    stopped = caught.value
    assert stopped.report is not None and stopped.report.done == 2
    notes = "\n".join(stopped.__notes__)
    assert "could not be marked failed either, so it still reads 'running'" in notes
    assert f"run {stopped.run_id} could not be marked interrupted either" in notes
    monkeypatch.setattr(process_module, "holder_state", lambda host, pid: Holder.DEAD)  # as the next process sees it
    with TraceStore(str(db)) as store:
        assert store.get_run(stopped.run_id).status == "interrupted"
        assert [t.status for t in store.list_traces(run_id=stopped.run_id, limit=None)].count("running") == 0


async def test_a_run_whose_own_last_write_fails_still_gives_its_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every problem was done, and then the run's own status could not be written: the error replaced the report."""
    finish_run = TraceStore.finish_run

    def failing_when_done(store: TraceStore, run_id: str, *, status: str, summary: Any) -> None:
        if status == "done":
            raise StorageError("the trace database is locked")
        finish_run(store, run_id, status=status, summary=summary)

    monkeypatch.setattr(TraceStore, "finish_run", failing_when_done)
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    try:
        with pytest.raises(EvaluationStopped, match="is locked") as caught:
            await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0)
    finally:
        await session.aclose()
    stopped = caught.value
    assert stopped.report is not None and (stopped.report.done, stopped.report.total) == (2, 2)
    assert any(f"run {stopped.run_id} could not be marked finished" in note for note in stopped.__notes__)


class FixedScore:
    """A verifier of the caller's own: every solution scores ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    async def score(self, question: str, solution: str) -> float:
        return self.value


class OtherFixedScore(FixedScore):
    """Another verifier class, as a caller's second scorer would be."""


async def test_a_resume_with_another_verifier_is_refused_and_each_trace_names_its_verifier(tmp_path: Path) -> None:
    """The settings named the models but not the verifier: a resume scoring with another one mixed two setups."""
    db = str(tmp_path / "t.db")

    async def run(verifier: FixedScore | None, resume: str | None = None) -> str:
        session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=verifier,
                               prompt_template=None)
        try:
            report = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n",
                                    options={"n": 2}, seed=0, resume=resume)
            assert session.plan == {}  # the verifier went into this run's traces, not into the caller's session
            return report.run_id
        finally:
            await session.aclose()

    run_id = await run(FixedScore(0.5))
    name = f"{__name__}.FixedScore"
    for other, shown in ((OtherFixedScore(0.5), f"'{__name__}.OtherFixedScore'"), (None, "None")):
        with pytest.raises(ConfigError, match=rf"other settings \(evaluate\.verifier '{name}' -> {shown}\)"):
            await run(other, run_id)
    assert await run(FixedScore(0.5), run_id) == run_id
    with TraceStore(db) as store:
        traces = store.list_traces(run_id=run_id, limit=None)
        assert len(traces) == 2
        for trace in traces:
            [plan] = [e.payload for e in store.get_trace(trace.id).events if e.kind == "plan"]
            assert plan["verifier"] == name


async def test_a_beam_run_resumed_with_the_reasoner_as_its_prm_is_refused(tmp_path: Path) -> None:
    """A PRM is named by its preset and the model serving it: the reasoner loaded as the mini PRM is another
    verifier, though of the same class and preset."""
    pytest.importorskip("torch")
    from ttc.backends.local import LocalBackend
    from ttc.bench.datasets import load_dataset
    from ttc.models import mini_model_path, mini_prompt
    from ttc.verifiers.prm import load_prm

    db = str(tmp_path / "t.db")
    problems = load_dataset("synthetic", limit=2, seed=5)
    reasoner = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    prm_model = LocalBackend.from_pretrained(mini_model_path("prm"), threads=1)

    async def run(scorer: LocalBackend, resume: str | None = None) -> str:
        session = open_session(backend=reasoner, store=db, verifier=load_prm(scorer, "mini"),
                               prompt_template=mini_prompt("{question}"))
        try:
            report = await evaluate(problems, Budget(tokens=200), session, strategy="beam",
                                    options={"beam_width": 1, "expand": 2, "max_step_tokens": 24}, seed=5,
                                    concurrency=1, resume=resume)
            return report.run_id
        finally:
            await session.aclose()

    try:
        run_id = await run(prm_model)
        named = f"PRM preset 'mini' on {prm_model.name}"
        with TraceStore(db) as store:
            assert store.get_run(run_id).config["evaluate"]["verifier"] == named  # type: ignore[index]
        with pytest.raises(ConfigError, match=rf"evaluate\.verifier \"{named}\" -> \"PRM preset 'mini' on "
                                              rf"{reasoner.name}\""):
            await run(reasoner, run_id)
        assert await run(prm_model, run_id) == run_id
    finally:
        await reasoner.aclose()
        await prm_model.aclose()


async def test_a_resume_with_another_prompt_template_is_refused(tmp_path: Path) -> None:
    """The questions' prompt decides the answers as the model does, and the settings did not name it."""
    db = str(tmp_path / "t.db")

    async def run(template: str | None, resume: str | None = None) -> str:
        session = open_session(backend=ScriptedBackend(guessing_responder), store=db, verifier=None,
                               prompt_template=template)
        try:
            report = await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n",
                                    options={"n": 1}, seed=0, resume=resume)
            return report.run_id
        finally:
            await session.aclose()

    run_id = await run("{question}\n")
    with pytest.raises(ConfigError, match=r"other settings \(evaluate\.prompt_template '\{question\}\\n' -> "
                                          r"'Q: \{question\}\\nA:'\)"):
        await run("Q: {question}\nA:", run_id)
    assert await run("{question}\n", run_id) == run_id


async def test_a_run_recorded_without_its_verifier_and_prompt_template_still_resumes(tmp_path: Path) -> None:
    """Runs begun before these were part of the settings: a resume is not refused for them."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"),
                           verifier=FixedScore(0.5), prompt_template="{question}\n")
    try:
        first = await evaluate(plus_one(1), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                               seed=0)
        assert session.store is not None
        recorded = dict(session.store.get_run(first.run_id).config)
        settings = dict(recorded["evaluate"])  # type: ignore[call-overload]
        assert settings.pop("verifier") == f"{__name__}.FixedScore"
        assert settings.pop("prompt_template") == "{question}\n"
        old = session.store.create_run(kind="eval", config={**recorded, "evaluate": settings})
        resumed = await evaluate(plus_one(1), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1},
                                 seed=0, resume=old)
        assert (resumed.run_id, resumed.done) == (old, 1)
    finally:
        await session.aclose()


class CapitalsUnread(ScriptedBackend):
    """A model whose vocabulary has no capital letters, as the mini models' has few."""

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if capitals := sorted({ch for ch in text if ch.isupper()}):
            raise ConfigError(f"scripted has no token for {', '.join(map(repr, capitals))} in {text!r}")
        return await super().tokenize(text, add_special_tokens=add_special_tokens)


async def test_a_template_the_model_cannot_read_is_refused_before_the_run_opens(tmp_path: Path) -> None:
    """Every question failed alike on the template's own words, each in a trace, and the run said to resume it."""
    backend = CapitalsUnread(guessing_responder)
    session = open_session(backend=backend, store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template="Q: {question}\n")
    try:
        with pytest.raises(ConfigError, match=r"every question would fail on the prompt template's own words, so "
                                              r"the run is not started: scripted has no token for 'Q'"):
            await evaluate(plus_one(2), Budget(tokens=200), session, strategy="best_of_n", options={"n": 1}, seed=0)
        assert session.store is not None
        assert session.store.list_runs() == [] and session.store.list_traces(limit=None) == []
        assert backend.calls == []
    finally:
        await session.aclose()


async def test_a_question_of_unreadable_text_still_fails_alone_and_a_good_run_makes_no_more_calls(
        tmp_path: Path) -> None:
    """Only the template's own words refuse the run: a question the model cannot read is that question's failure
    (here the first), and the others are solved with the calls they always took."""
    backend = CapitalsUnread(guessing_responder)
    session = open_session(backend=backend, store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template="{question}\n")
    problems = [Problem("WHAT is 1 + 1?" if i == 0 else f"what is {i} + 1?", gold=str(i + 1), index=i)
                for i in range(3)]
    try:
        report = await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2},
                                seed=0)
        assert (report.done, report.failed) == (2, 1)
        assert report.errors and "has no token for 'A', 'H', 'T', 'W'" in report.errors[0]
        assert len(backend.calls) == 2  # one call of n=2 for each problem solved, none for the check
    finally:
        await session.aclose()


async def test_a_prm_is_named_by_its_preset_and_model_and_by_how_its_steps_make_a_score(tmp_path: Path) -> None:
    """A PRM passed alone is scored as StepwiseOutcome(prm) scores: the same verifier; another aggregation is not."""
    from ttc.bench.eval import verifier_identity
    from ttc.verifiers.base import StepwiseOutcome
    from ttc.verifiers.prm import load_prm

    prm = load_prm(NamedScripted("prm-a", ["x"]), "mini")
    names = []
    for verifier in (prm, StepwiseOutcome(prm), StepwiseOutcome(prm, how="mean"),
                     load_prm(NamedScripted("prm-b", ["x"]), "mini"), None):
        session = open_session(backend=ScriptedBackend(guessing_responder), store=False, verifier=verifier,
                               prompt_template=None)
        names.append(await verifier_identity(session.setup))
    assert names == ["PRM preset 'mini' on prm-a", "PRM preset 'mini' on prm-a",
                     "PRM preset 'mini' on prm-a, mean over steps split at '\\n'", "PRM preset 'mini' on prm-b", None]


async def test_a_verifier_wrapped_by_the_caller_is_named_whatever_its_prm_prefers() -> None:
    """A PRM whose preferred_aggregate is the caller's own word, wrapped by the caller: solve ran it, and
    evaluate() refused it for a preference the wrapper never reads."""
    from ttc.bench.eval import verifier_identity
    from ttc.verifiers.base import StepwiseOutcome

    class OwnWords:
        preferred_aggregate = "weighted"

        async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
            return [0.5] * len(steps)

    session = open_session(backend=ScriptedBackend(guessing_responder), store=False,
                           verifier=StepwiseOutcome(OwnWords(), how="mean"), prompt_template=None)
    name = await verifier_identity(session.setup)
    assert name is not None and name.endswith("OwnWords, mean over steps split at '\\n'")


async def _until_a_trace_runs(store: TraceStore) -> str:
    for _ in range(500):
        running = store.list_traces(status="running")
        if running and running[0].run_id is not None:
            return running[0].run_id
        await asyncio.sleep(0.01)
    raise AssertionError("the first evaluation started no trace within 5 s")


async def test_a_run_this_process_is_evaluating_is_not_resumed_by_it(tmp_path: Path) -> None:
    """The run's lease names this process, which claim_run let take it over: the second evaluate() failed the
    first's running trace as stale, and both solved the rest, each problem done twice."""
    store = TraceStore(str(tmp_path / "t.db"))
    sessions = [open_session(backend=ScriptedBackend(guessing_responder, delay_s=0.2), store=store, verifier=None,
                             prompt_template=None) for _ in range(2)]
    kwargs: dict[str, Any] = {"strategy": "best_of_n", "options": {"n": 1}, "seed": 0, "concurrency": 1}
    try:
        first = asyncio.create_task(evaluate(plus_one(3), Budget(tokens=200), sessions[0], **kwargs))
        run_id = await _until_a_trace_runs(store)
        with pytest.raises(ConfigError, match=f"run {run_id} is being evaluated by this process .*then resume"):
            await evaluate(plus_one(3), Budget(tokens=200), sessions[1], resume=run_id, **kwargs)
        report = await first
        assert (report.done, report.failed, report.errors) == (3, 0, ())
        traces = store.list_traces(run_id=run_id, limit=None)
        assert sorted((t.problem_index, t.status) for t in traces) == [(0, "done"), (1, "done"), (2, "done")]
        again = await evaluate(plus_one(3), Budget(tokens=200), sessions[1], resume=run_id, **kwargs)  # it ended
        assert (again.run_id, again.done) == (run_id, 3)
    finally:
        for session in sessions:
            await session.aclose()
        store.close()


async def test_a_run_whose_evaluation_here_was_cancelled_is_resumed_here(tmp_path: Path) -> None:
    """A run is this process's only while an evaluate() call on it runs: cancelled (or failed), it resumes."""
    store = TraceStore(str(tmp_path / "t.db"))
    session = open_session(backend=ScriptedBackend(guessing_responder, delay_s=0.2), store=store, verifier=None,
                           prompt_template=None)
    kwargs: dict[str, Any] = {"strategy": "best_of_n", "options": {"n": 1}, "seed": 0, "concurrency": 1}
    try:
        first = asyncio.create_task(evaluate(plus_one(3), Budget(tokens=200), session, **kwargs))
        run_id = await _until_a_trace_runs(store)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert store.get_run(run_id).status == "interrupted"
        resumed = await evaluate(plus_one(3), Budget(tokens=200), session, resume=run_id, **kwargs)
        assert (resumed.run_id, resumed.done) == (run_id, 3)
    finally:
        await session.aclose()
        store.close()
