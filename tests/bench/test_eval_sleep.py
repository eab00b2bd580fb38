"""Evaluation of questions about shared contexts: each asked with its context, and with a sleep budget each context
thought about once, its notes given to all of its questions, a resumed run reusing them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ttc.api import open_session
from ttc.bench.datasets import load_dataset
from ttc.bench.eval import SLEEP_SEED_OFFSET, evaluate
from ttc.bench.synthetic import EVAL_SEEDS, generate_stateful
from ttc.contexts import DEFAULT_CONTEXT_TEMPLATE, DEFAULT_SLEEP_TEMPLATE
from ttc.errors import BackendError, ConfigError
from ttc.session import Session
from ttc.sleeptime import SLEEP
from ttc.storage import TraceStore
from ttc.storage.convert import problem_id
from ttc.testing import ScriptedBackend, guessing_responder
from ttc.types import CONTEXT_ROW, Budget, Notes, Problem, Usage

pytestmark = pytest.mark.anyio

NOTE_LINE = "Everyone's count is worked out."


def note_taker(prompt: str, index: int, seed: int | None) -> str:
    """Writes one line of notes when asked to think about a context, else guesses like the dry-run model."""
    if prompt.endswith(DEFAULT_SLEEP_TEMPLATE.split("{context}")[1]):
        return NOTE_LINE
    return guessing_responder(prompt, index, seed)


def scripted(tmp_path: Path, responder: object = note_taker) -> Session:
    return open_session(backend=ScriptedBackend(responder), store=str(tmp_path / "t.db"),  # type: ignore[arg-type]
                        verifier=None, prompt_template=None, contextual=True)


def stateful(limit: int) -> list[Problem]:
    return load_dataset("synthetic-stateful", limit=limit, seed=0)


GREEDY = {"n": 1, "temperature": 0.0, "max_tokens": 60}


def test_stateful_rows_are_questions_about_their_context() -> None:
    rows = stateful(6)
    contexts = generate_stateful(EVAL_SEEDS.start, 2, 3)
    assert [p.context for p in rows] == [c.context for c in contexts for _ in range(3)]
    assert [p.question for p in rows] == [q for c in contexts for q in c.queries]
    # Context and question together are the self-contained problem the generator writes.
    assert [f"{p.context} {p.question}" for p in rows] == [p.question for c in contexts for p in c.problems]
    assert [p.gold for p in rows] == [p.answer for c in contexts for p in c.problems]
    assert [p.index for p in load_dataset("synthetic-stateful", limit=2, offset=4, seed=0)] == [4, 5]


def test_jsonl_rows_may_name_their_context(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "How many?", "answer": "3", "context": "Ann has 3 pens."}) + "\n"
                    + json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    assert [p.context for p in load_dataset(str(path))] == ["Ann has 3 pens.", None]
    path.write_text(json.dumps({"question": "How many?", "answer": "3", "context": ""}) + "\n")
    with pytest.raises(ConfigError, match="'context' must be"):
        load_dataset(str(path))


def test_a_question_knows_its_contexts_first_row_in_the_whole_dataset(tmp_path: Path) -> None:
    """A slice that starts after a context's first question still names that row (it seeds the sleep run)."""
    assert [p.meta[CONTEXT_ROW] for p in load_dataset("synthetic-stateful", limit=4, offset=1, seed=0)] == [0, 0, 3, 3]
    path = tmp_path / "q.jsonl"
    rows = [{"question": "How many?", "answer": "3", "context": "Ann has 3 pens."},
            {"question": "What is 1 + 1?", "answer": "2"},
            {"question": "And twice that?", "answer": "6", "context": "Ann has 3 pens."}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert [p.meta.get(CONTEXT_ROW) for p in load_dataset(str(path), offset=1)] == [None, 0]
    assert [p.meta.get(CONTEXT_ROW) for p in load_dataset(str(path))] == [0, None, 0]
    # Derived from the dataset, not content: a run started before datasets set it resumes with the same ids.
    first = load_dataset(str(path))[0]
    assert problem_id(first) == problem_id(replace(first, meta={}))


async def test_a_slice_thinks_about_a_context_with_the_seed_of_the_whole_run(tmp_path: Path) -> None:
    """Rows 1-2 of a run from row 1 got other notes (and answers) than in a run from row 0: the sleep run was seeded
    by the context's first question in the slice."""
    session = scripted(tmp_path)
    try:
        report = await evaluate(load_dataset("synthetic-stateful", limit=4, offset=1, seed=0), Budget(tokens=60),
                                session, strategy="best_of_n", options=GREEDY, seed=3, sleep=Budget(tokens=40),
                                sleep_opts={"max_tokens": 40})
        store = session.store
        assert store is not None
        seeds = sorted(t.seed for t in store.list_traces(run_id=report.run_id, limit=None) if t.strategy == SLEEP)
        assert seeds == [3 + SLEEP_SEED_OFFSET + 0, 3 + SLEEP_SEED_OFFSET + 3]
    finally:
        await session.aclose()


async def test_each_context_is_thought_about_once_and_its_notes_reach_its_questions(tmp_path: Path) -> None:
    session = scripted(tmp_path)
    problems = stateful(6)
    try:
        report = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY,
                                seed=3, sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40})
        store = session.store
        assert store is not None
        traces = store.list_traces(run_id=report.run_id, limit=None)
        sleeps = {t.question: store.get_trace(t.id) for t in traces if t.strategy == SLEEP}
        assert set(sleeps) == {p.context for p in problems} and len(sleeps) == 2
        for record in sleeps.values():
            assert record.status == "done" and record.text == NOTE_LINE and record.problem.index is None
            assert not [e for e in record.events if e.kind == "grade"]  # notes have no answer to grade
        first = {problems[0].context: 0, problems[3].context: 3}
        assert {q: r.seed for q, r in sleeps.items()} == {c: 3 + SLEEP_SEED_OFFSET + i for c, i in first.items()}

        assert (report.done, report.contexts) == (6, 2)
        assert report.sleep_tokens == sum(r.usage.generated_tokens for r in sleeps.values()) == 2 * len(NOTE_LINE)
        assert report.mean_total_tokens == pytest.approx(report.mean_tokens + report.sleep_tokens / 6)
        for problem, trace_id in zip(problems, sorted(report.trace_ids, key=lambda i: store.get_trace(i)
                                                      .problem.index or 0), strict=True):
            record = store.get_trace(trace_id)
            assert record.problem == problem  # the context is stored with the problem, and read back
            notes = sleeps[problem.context or ""]
            plan = record.events[0].payload["context"]
            assert (plan["notes_trace"], plan["notes"], plan["sleep_tokens"]) == \
                (notes.id, NOTE_LINE, len(NOTE_LINE))
            assert record.nodes[0].text == DEFAULT_CONTEXT_TEMPLATE.format(
                context=problem.context, notes=NOTE_LINE + "\n", question=problem.question)
            assert [e.payload["gold"] for e in record.events if e.kind == "grade"] == [problem.gold]
        summary = store.get_run(report.run_id).summary
        assert (summary["contexts"], summary["sleep_tokens"]) == (2, report.sleep_tokens)
    finally:
        await session.aclose()


async def test_without_a_sleep_budget_each_question_is_asked_with_its_context_alone(tmp_path: Path) -> None:
    session = scripted(tmp_path)
    problems = stateful(3)
    try:
        report = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0)
        store = session.store
        assert store is not None
        assert {t.strategy for t in store.list_traces(run_id=report.run_id, limit=None)} == {"best_of_n"}
        assert (report.done, report.contexts, report.sleep_tokens) == (3, 0, 0)
        record = store.get_trace(report.trace_ids[0])
        assert record.events[0].payload["context"]["notes"] is None
        assert record.nodes[0].text == DEFAULT_CONTEXT_TEMPLATE.format(
            context=record.problem.context, notes="", question=record.problem.question)
    finally:
        await session.aclose()


async def test_a_resumed_run_reuses_its_notes(tmp_path: Path) -> None:
    problems = stateful(6)
    unlucky = [(p.context or "", p.question) for p in problems[4:]]

    def failing(prompt: str, index: int, seed: int | None) -> str:
        if any(context in prompt and question in prompt for context, question in unlucky):
            raise BackendError("the server went away")
        return note_taker(prompt, index, seed)

    config = {"dataset": "synthetic-stateful", "sleep_budget": 40}
    first_session = scripted(tmp_path, failing)
    try:
        first = await evaluate(problems, Budget(tokens=60), first_session, strategy="best_of_n", options=GREEDY,
                               seed=0, config=config, sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40})
    finally:
        await first_session.aclose()
    session = scripted(tmp_path)
    try:
        again = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                               config=config, resume=first.run_id, sleep=Budget(tokens=40),
                               sleep_opts={"max_tokens": 40})
        store = session.store
        assert store is not None
        traces = store.list_traces(run_id=first.run_id, limit=None)
        sleeps = [t for t in traces if t.strategy == SLEEP]
        # Both contexts were thought about for the first run; the resume wrote no sleep trace of its own.
        assert len(sleeps) == 2 and (first.done, again.done, again.contexts) == (4, 6, 2)
        assert len([t for t in traces if t.strategy != SLEEP and t.status == "done"]) == 6
        assert again.sleep_tokens == first.sleep_tokens
    finally:
        await session.aclose()


async def test_a_failed_sleep_run_leaves_its_questions_undone_not_asked_without_notes(tmp_path: Path) -> None:
    problems = stateful(6)
    unlucky = problems[3].context or ""

    def failing(prompt: str, index: int, seed: int | None) -> str:
        if prompt.startswith(f"Context: {unlucky}\nNo question"):
            raise BackendError("the server went away")
        return note_taker(prompt, index, seed)

    session = scripted(tmp_path, failing)
    try:
        report = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                                sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40})
        store = session.store
        assert store is not None
        assert (report.total, report.done, report.contexts) == (6, 3, 1)
        assert report.errors and "sleep run on the context of problem 3" in report.errors[0]
        asked = [store.get_trace(t.id).problem for t in store.list_traces(run_id=report.run_id, limit=None)
                 if t.strategy != SLEEP]
        assert sorted(p.index or 0 for p in asked) == [0, 1, 2]
        assert store.get_run(report.run_id).status == "failed"
        failed = [t for t in store.list_traces(run_id=report.run_id, status="failed", limit=None)]
        assert [t.strategy for t in failed] == [SLEEP]
    finally:
        await session.aclose()


async def test_what_a_sleep_evaluation_refuses(tmp_path: Path) -> None:
    session = scripted(tmp_path)
    plain = [Problem("What is 1 + 1?", gold="2", index=0)]
    try:
        with pytest.raises(ConfigError, match="these problems have none"):
            await evaluate(plain, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                           sleep=Budget(tokens=40))
        with pytest.raises(ConfigError, match="need a sleep budget"):
            await evaluate(plain, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                           sleep_opts={"n": 2})
        with pytest.raises(ConfigError, match="sleep options"):
            await evaluate(stateful(3), Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                           sleep=Budget(tokens=40), sleep_opts={"drafts": 2})
        with pytest.raises(ConfigError, match="may not hold 'context'"):
            await evaluate([Problem("How many?", gold="2", index=0, meta={"context": "Ann has 2."})],
                           Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0)
        assert session.store is not None
        assert all(not session.store.list_traces(run_id=r.id, limit=None) for r in session.store.list_runs())
    finally:
        await session.aclose()


async def test_a_session_about_one_context_takes_no_problem_about_another(tmp_path: Path) -> None:
    session = open_session(backend=ScriptedBackend(note_taker), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None, context="Ann has 3 pens.")
    try:
        with pytest.raises(ConfigError, match="about the context it was opened with"):
            await evaluate(stateful(1), Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0)
    finally:
        await session.aclose()


def test_a_problems_context_is_part_of_what_the_store_keeps(tmp_path: Path) -> None:
    from ttc.storage.convert import problem_id

    a = Problem("How many pens?", gold="3", index=0, context="Ann has 3 pens.")
    b = Problem("How many pens?", gold="3", index=0, context="Ann has 4 pens.")
    assert problem_id(a) != problem_id(b) != problem_id(Problem("How many pens?", gold="3", index=0))
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        trace_id = store.start_trace(problem=a, strategy="best_of_n", budget=Budget(tokens=1), backend="x", seed=0)
        assert store.get_trace(trace_id).problem == a
    finally:
        store.close()


async def test_a_runs_notes_stay_with_the_run_not_the_session(tmp_path: Path) -> None:
    """A later run on the same session without a sleep budget asks with the context alone, as its report says."""
    session = scripted(tmp_path)
    problems = stateful(3)
    seen: list[tuple[int | None, bool]] = []
    try:
        await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                       sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40},
                       progress=lambda p, r: seen.append((p.index, r is not None)))
        assert session.notes == {} and seen and all(done for _, done in seen)
        later = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0)
        assert session.store is not None
        record = session.store.get_trace(later.trace_ids[0])
        assert record.events[0].payload["context"]["notes"] is None and later.sleep_tokens == 0
    finally:
        await session.aclose()


def test_the_command_line_refuses_a_sleep_budget_without_contexts_before_loading_a_model(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TTC_DB": str(tmp_path / "t.db"), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic", "--limit", "3",
                           "--sleep-budget", "100", "--backend", "local", "--model", str(tmp_path / "absent")],
                          capture_output=True, text=True, env=env, timeout=120)
    # The model folder does not exist: the sleep refusal came first.
    assert proc.returncode == 2 and "these problems have none" in proc.stderr, proc.stderr
    ok = subprocess.run([sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic-stateful", "--limit", "3",
                         "--backend", "scripted", "--strategy", "best_of_n", "-o", "n=1", "--budget", "60",
                         "--sleep-budget", "60", "--sleep-option", "max_tokens=30"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "sleep tokens" in ok.stdout, ok.stdout + ok.stderr
    with TraceStore(str(tmp_path / "t.db")) as store:
        [run] = store.list_runs()
        assert (run.config["sleep_budget"], run.config["sleep_options"], run.config["contexts"]) == \
            (60, {"max_tokens": 30}, True)
        question = next(t for t in store.list_traces(run_id=run.id, limit=None) if t.strategy != SLEEP)
    shown = subprocess.run([sys.executable, "-m", "ttc", "traces", "show", question.id], capture_output=True,
                           text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "context: " in shown.stdout, shown.stdout + shown.stderr


async def test_a_seed_whose_sleep_runs_pass_2_63_is_refused_before_the_run_opens(tmp_path: Path) -> None:
    """A context's sleep run is seeded seed + 2**30 + i: each failed to be stored, and the run ended at 0.0."""
    session = scripted(tmp_path)
    problems = stateful(3)
    try:
        with pytest.raises(ConfigError, match=r"its context at seed \+ 2\*\*30 \+ i.*reaches 2\*\*63"):
            await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY,
                           seed=(1 << 63) - 1 - (1 << 30) - 1, sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40})
        assert session.store is not None and session.store.list_runs() == []
    finally:
        await session.aclose()


def callers_notes(context: str) -> Notes:
    return Notes(context=context, text="The caller's own notes.", usage=Usage(generated_tokens=7), trace_id=None,
                 model="elsewhere")


async def test_a_resume_without_the_callers_notes_is_refused(tmp_path: Path) -> None:
    """Its questions about that context would be asked without them, beside those asked with them in one run."""
    problems = stateful(6)
    unlucky = problems[2].question

    def failing(prompt: str, index: int, seed: int | None) -> str:
        if unlucky in prompt:
            raise BackendError("the server went away")
        return note_taker(prompt, index, seed)

    first_session = scripted(tmp_path, failing)
    first_session.notes = {problems[0].context or "": callers_notes(problems[0].context or "")}
    try:
        first = await evaluate(problems, Budget(tokens=60), first_session, strategy="best_of_n", options=GREEDY,
                               seed=0)
    finally:
        await first_session.aclose()
    assert first.failed == 1
    session = scripted(tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"other settings.*notes"):
            await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                           resume=first.run_id)
        session.notes = {problems[0].context or "": callers_notes(problems[0].context or "")}
        again = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                               resume=first.run_id)
        assert again.done == 6
    finally:
        await session.aclose()


async def test_a_resume_with_another_context_template_is_refused(tmp_path: Path) -> None:
    problems = stateful(3)
    first_session = scripted(tmp_path)
    first_session.setup = replace(first_session.setup, context_template="FACTS: {context}\n{notes}Q: {question}\n")
    try:
        first = await evaluate(problems, Budget(tokens=60), first_session, strategy="best_of_n", options=GREEDY,
                               seed=0)
    finally:
        await first_session.aclose()
    session = scripted(tmp_path)
    try:
        with pytest.raises(ConfigError, match="context_template"):
            await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                           resume=first.run_id)
    finally:
        await session.aclose()


async def test_a_sleep_budget_is_not_spent_on_a_context_the_caller_has_notes_for(tmp_path: Path) -> None:
    problems = stateful(6)
    given = problems[0].context or ""
    others = {p.context for p in problems} - {given}
    session = scripted(tmp_path)
    session.notes = {given: callers_notes(given)}
    try:
        report = await evaluate(problems, Budget(tokens=60), session, strategy="best_of_n", options=GREEDY, seed=0,
                                sleep=Budget(tokens=40), sleep_opts={"max_tokens": 40})
        store = session.store
        assert store is not None
        sleeps = [t for t in store.list_traces(run_id=report.run_id, limit=None) if t.strategy == SLEEP]
        assert {t.question for t in sleeps} == others and report.done == 6
        for trace_id in report.trace_ids:
            plan = store.get_trace(trace_id).events[0].payload["context"]
            assert isinstance(plan, dict)
            if plan["text"] == given:
                assert plan["notes"] == "The caller's own notes."
            else:
                assert plan["notes"] == NOTE_LINE
    finally:
        await session.aclose()
