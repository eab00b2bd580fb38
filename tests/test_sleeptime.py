"""Sleep-time compute on the scripted backend and a real SQLite store: drafts, the consensus, the trace, the notes
read back, and questions asked with them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

import ttc
from ttc import Budget, ConfigError, Notes, NotFound, Problem, Usage, load_notes, sleep, solve, solve_batch
from ttc.bench.eval import evaluate
from ttc.cli import app
from ttc.errors import BackendError, BudgetExhausted, OutputError
from ttc.session import open_session
from ttc.sleeptime import SLEEP, agreement, note_lines
from ttc.storage import TraceStore
from ttc.strategies.base import DEFAULT_PROMPT_TEMPLATE
from ttc.testing import ScriptedBackend
from ttc.types import Completion, Sampling

CONTEXT = "Meg has 13 cups. Ted has 9 more cups than Meg. Sam has 5 more cups than Ted."
RIGHT = "13 + 9 = 22\nTed has 22 cups.\n22 + 5 = 27\nSam has 27 cups.\n"
SLIP = "13 + 9 = 23\nTed has 23 cups.\n23 + 5 = 28\nSam has 28 cups.\n"  # miscomputes, then agrees with itself
STRAY = "13 + 9 = 22\nTed has 22 cups.\n22 - 5 = 17\nSam has 17 cups.\n"  # right, then a wrong reading
TEMPLATE = "C: {context}\n{notes}Q: {question}\n"


def store_at(tmp_path: Path) -> TraceStore:
    return TraceStore(str(tmp_path / "t.db"))


class WindowedBackend(ScriptedBackend):
    """A scripted model with a context window: a completion ends, 'length', where prompt and text fill it, as the
    local engine's and a vLLM server's do."""

    def __init__(self, responses: Sequence[str], window: int) -> None:
        super().__init__(responses)
        self.window = window

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        room = self.window - len(prompt)
        return await super().complete(prompt, n, replace(sampling, max_tokens=min(sampling.max_tokens, room)))


def test_consensus_keeps_the_draft_sharing_most_lines(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    backend = ScriptedBackend([STRAY, RIGHT, SLIP, RIGHT, STRAY + "22 + 1 = 23\n"])
    notes = sleep(CONTEXT, 2000, backend=backend, store=store, seed=4, n=5, max_tokens=200)
    assert notes.text == RIGHT.strip()
    assert notes.context == CONTEXT and notes.model == "scripted"
    assert notes.usage.generated_tokens == sum(len(t) for t in (STRAY, RIGHT, SLIP, RIGHT)) + len(STRAY) + 12
    record = store.get_trace(notes.trace_id or "")
    assert record.status == "done" and record.strategy == "sleep"
    assert record.problem.question == CONTEXT and record.text == RIGHT.strip() and record.answer is None
    assert len(record.nodes) == 6  # the prompt and five drafts
    selected = [n for n in record.nodes if n.status == "selected"]
    assert [n.text for n in selected] == [RIGHT]
    select = next(e for e in record.events if e.kind == "select")
    assert select.payload["how"] == "consensus"
    assert select.payload["left_out"] == {"cut_off": 0, "empty": 0, "arithmetic": 1}
    plan = record.events[0].payload
    assert plan["strategy"] == "sleep" and plan["options"]["n"] == 5 and plan["options"]["temperature"] == 0.8
    store.close()


def test_agreement_is_summed_jaccard_overlap() -> None:
    lines = [note_lines("a\nb\n"), note_lines("a\nb"), note_lines("a\nc"), frozenset()]
    assert agreement(lines) == pytest.approx([1 + 1 / 3, 1 + 1 / 3, 2 / 3, 0.0])


def test_a_filter_that_would_leave_nothing_is_not_applied(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notes = sleep(CONTEXT, 2000, backend=ScriptedBackend([SLIP]), store=store, seed=1, n=3, max_tokens=200)
    assert notes.text == SLIP.strip()  # every draft slips: one is still kept, and the trace says none passed
    select = next(e for e in store.get_trace(notes.trace_id or "").events if e.kind == "select")
    assert select.payload["left_out"] == {"cut_off": 0, "empty": 0, "arithmetic": 0}
    assert select.payload["failed_all"] == select.payload["not_applied"] == ["arithmetic"]
    store.close()


def test_drafts_cut_off_by_the_token_limit_are_not_kept(tmp_path: Path) -> None:
    backend = ScriptedBackend([RIGHT + "x" * 100, RIGHT + "x" * 100, STRAY])
    notes = sleep(CONTEXT, 2000, backend=backend, store=False, seed=1, n=3, max_tokens=80)
    assert notes.text == STRAY.strip()


def test_one_draft_is_greedy_and_the_budget_sets_the_number_of_drafts(tmp_path: Path) -> None:
    backend = ScriptedBackend([RIGHT])
    sleep(CONTEXT, 100, backend=backend, store=False, max_tokens=100)
    sleep(CONTEXT, 450, backend=backend, store=False, max_tokens=100)
    sleep(CONTEXT, 10**6, backend=backend, store=False, max_tokens=100)
    assert [(c.n, c.sampling.temperature) for c in backend.calls] == [(1, 0.0), (4, 0.8), (8, 0.8)]


@pytest.mark.parametrize("budget", [120, 999])
def test_sleep_never_generates_more_than_its_budget(budget: int) -> None:
    notes = sleep(CONTEXT, budget, backend=ScriptedBackend([RIGHT * 3]), store=False, n=6, max_tokens=300)
    assert 0 < notes.usage.generated_tokens <= budget


@pytest.mark.parametrize("budget", [1, 50])
def test_a_sleep_budget_that_finishes_no_line_of_notes_is_an_error(budget: int, tmp_path: Path) -> None:
    """It returned the cut-off text ('Ted: 2' of 'Ted: 22'), or none, as notes; questions then read it."""
    store = store_at(tmp_path)
    with pytest.raises(BudgetExhausted, match="no draft of the notes finished a line"):
        sleep(CONTEXT, budget, backend=ScriptedBackend([RIGHT * 3]), store=store, n=6, max_tokens=300)
    [trace] = store.list_traces()
    assert trace.status == "failed" and "BudgetExhausted" in str(trace.error)


def test_a_cut_off_draft_keeps_only_its_finished_lines(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    lines = RIGHT.splitlines(keepends=True)
    budget = len(lines[0]) + len(lines[1]) // 2  # the second line cut in the middle
    notes = sleep(CONTEXT, budget, backend=ScriptedBackend([RIGHT]), store=store, n=1, max_tokens=budget)
    assert notes.text == lines[0].strip()
    [select] = [e.payload for e in store.get_trace(notes.trace_id or "").events if e.kind == "select"]
    assert select["unfinished_line_dropped"] is True and select["failed_all"] == ["cut_off"]


def test_a_draft_cut_off_at_a_line_end_drops_no_line(tmp_path: Path) -> None:
    """The select event said unfinished_line_dropped for any cut-off draft, though this one lost nothing."""
    store = store_at(tmp_path)
    first = RIGHT.splitlines(keepends=True)[0]
    notes = sleep(CONTEXT, len(first), backend=ScriptedBackend([RIGHT]), store=store, n=1, max_tokens=len(first))
    assert notes.text == first.strip()
    [select] = [e.payload for e in store.get_trace(notes.trace_id or "").events if e.kind == "select"]
    assert select["unfinished_line_dropped"] is False and select["failed_all"] == ["cut_off"]
    store.close()


def test_a_draft_that_computes_right_is_kept_over_one_that_ended_but_miscomputes(tmp_path: Path) -> None:
    """The checks ran in turn: the cut-off check left only the wrong draft, which then 'failed all' arithmetic
    and was kept, though the cut-off draft's finished lines compute right."""
    store = store_at(tmp_path)
    wrong = "Meg: 13\n13 + 9 = 23\nTed: 23\n"
    right = "Meg: 13\n13 + 9 = 22\nTed: 22\nEli: 5 cups, and the rest"
    notes = sleep(CONTEXT, 4000, backend=ScriptedBackend([wrong, right]), store=store, n=2, max_tokens=30, seed=0)
    assert notes.text == "Meg: 13\n13 + 9 = 22\nTed: 22"
    [select] = [e.payload for e in store.get_trace(notes.trace_id or "").events if e.kind == "select"]
    assert select["kept"] == 1 and select["agreement"][0] is None
    assert select["left_out"] == {"empty": 0, "arithmetic": 1, "cut_off": 0}
    assert select["failed_all"] == [] and select["not_applied"] == ["cut_off"]
    assert select["unfinished_line_dropped"] is True
    store.close()


@pytest.mark.parametrize(("budget", "error", "message"), [
    (4000, ConfigError, "the context leaves only 6 tokens of the model's window for notes"),
    (8, BudgetExhausted, "no draft of the notes finished a line within 4 tokens"),
])
def test_drafts_cut_by_the_models_window_are_blamed_on_the_context(budget: int, error: type[Exception],
                                                                   message: str, tmp_path: Path) -> None:
    """Cut at the window's end, the drafts were said to be cut by the budget: 'raise the sleep budget', which
    buys nothing. A budget that allows less than the window leaves is still the budget's fault."""
    store = store_at(tmp_path)
    prompt = len(f"Context: {CONTEXT}\n") + len(ttc.contexts.DEFAULT_SLEEP_TEMPLATE) - len("Context: {context}\n")
    backend = WindowedBackend([RIGHT], window=prompt + 6)
    with pytest.raises(error, match=message):
        sleep(CONTEXT, budget, backend=backend, store=store, n=2, max_tokens=100)
    [trace] = store.list_traces()
    assert trace.status == "failed" and error.__name__ in str(trace.error)
    store.close()


def test_questions_are_asked_with_the_context_and_the_notes(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notes = sleep(CONTEXT, 500, backend=ScriptedBackend([RIGHT]), store=store, seed=2, n=1)
    answerer = ScriptedBackend(["The answer is 27."])
    result = solve("How many cups does Sam have?", 100, backend=answerer, store=store, seed=0, notes=notes,
                   prompt_template=TEMPLATE, strategy="best_of_n", n=1)
    assert result.answer == "27"
    prompt = "".join(chr(t) for t in answerer.calls[0].prompt)
    assert prompt == f"C: {CONTEXT}\n{RIGHT}Q: How many cups does Sam have?\n"
    context = store.get_trace(result.trace_id or "").events[0].payload["context"]
    assert context == {"text": CONTEXT, "notes": RIGHT.strip(), "notes_trace": notes.trace_id,
                       "notes_model": "scripted", "sleep_tokens": len(RIGHT)}
    store.close()


def test_a_context_without_notes_and_the_default_context_template() -> None:
    answerer = ScriptedBackend(["The answer is 5."])
    solve_batch(["Q1?", "Q2?"], 100, backend=answerer, store=False, context="A {braced} context.",
                strategy="best_of_n", n=1)
    prompts = ["".join(chr(t) for t in call.prompt) for call in answerer.calls]
    assert all(p.startswith("Context: A {braced} context.\nQuestion: Q") for p in prompts)
    assert prompts[0] == "Context: A {braced} context.\nQuestion: Q1?\n" + DEFAULT_PROMPT_TEMPLATE.split("\n", 1)[1]


def test_notes_read_back_from_the_store_equal_those_returned(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notes = sleep(CONTEXT, 500, backend=ScriptedBackend([RIGHT]), store=store, seed=2, n=1)
    assert load_notes((notes.trace_id or "")[:10], store=store) == notes
    answer = solve("2+2?", 100, backend=ScriptedBackend(["The answer is 4."]), store=store, seed=1)
    with pytest.raises(NotFound, match="not a sleep run"):
        load_notes(answer.trace_id or "", store=store)
    with pytest.raises(NotFound):
        load_notes("no-such-trace", store=store)
    store.close()


def test_a_sleep_that_fails_leaves_a_failed_trace_and_no_notes(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    with pytest.raises(BackendError):
        sleep(CONTEXT, 500, backend=ScriptedBackend([RIGHT], fail_after=0), store=store, seed=1)
    [summary] = store.list_traces()
    assert summary.status == "failed" and summary.strategy == "sleep"
    with pytest.raises(NotFound, match="'failed'"):
        load_notes(summary.id, store=store)
    store.close()


def test_bad_input_is_refused_before_anything_runs() -> None:
    backend = ScriptedBackend([RIGHT])
    notes = Notes(context=CONTEXT, text=RIGHT, usage=ttc.Usage(), trace_id=None, model="scripted")
    refusals = [
        (lambda: sleep("  ", 100, backend=backend, store=False), "context must be a non-empty string"),
        (lambda: sleep(CONTEXT, 100, backend=backend, store=False, beams=3), "unknown option 'beams'"),
        (lambda: sleep(CONTEXT, 100, backend=backend, store=False, n=0), "greater than or equal to 1"),
        (lambda: sleep(CONTEXT, 100, backend=backend, store=False, sleep_template="think"), r"\{context\}"),
        (lambda: sleep(CONTEXT, 100, backend=backend, store=False, sleep_template="{context} {x}"), r"\{x\}"),
        (lambda: solve("Q?", 100, backend=backend, store=False, notes="notes"), "must be the Notes"),  # type: ignore[arg-type]
        (lambda: solve("Q?", 100, backend=backend, store=False, notes=notes, context="Another context."),
         "another context"),
        (lambda: solve("Q?", 100, backend=backend, store=False, notes=notes, prompt_template="{question}"),
         r"\{context\}, \{notes\}"),
        (lambda: solve("Q?", 100, backend=backend, store=False, notes=notes,
                       prompt_template="{context} {question}"), r"\{notes\}"),
        (lambda: solve("Q?", 100, backend=backend, store=False, context=""), "context must be a non-empty"),
    ]
    for call, message in refusals:
        with pytest.raises(ConfigError, match=message):
            call()
    assert backend.calls == []


def test_cli_sleeps_then_answers_with_the_notes(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    runner = CliRunner()
    slept = runner.invoke(app, ["sleep", CONTEXT, "--backend", "scripted", "--db", db, "--seed", "3", "--json",
                                "-o", "n=2"])
    assert slept.exit_code == 0, slept.output
    made = json.loads(slept.output)
    assert made["context"] == CONTEXT and made["trace_id"]
    asked = runner.invoke(app, ["solve", "How many cups does Sam have?", "--backend", "scripted", "--db", db,
                                "--notes", made["trace_id"][:12], "--json", "--seed", "1"])
    assert asked.exit_code == 0, asked.output
    with TraceStore(db) as store:
        trace = store.get_trace(json.loads(asked.output)["trace_id"])
        assert trace.events[0].payload["context"]["notes_trace"] == made["trace_id"]
        assert trace.nodes[0].text.startswith(f"Context: {CONTEXT}\n{made['notes']}\nQuestion: How many")
        assert trace.problem.context == CONTEXT  # what `ttc traces show` prints as the question's context


@pytest.mark.parametrize(("changes", "message"), [
    ({"context": "C\udcff"}, "notes.context is not valid Unicode text"),
    ({"context": 5}, "notes.context must be the non-empty text"),
    ({"context": ""}, "notes.context must be the non-empty text"),
    ({"text": 7}, "notes.text must be a string"),
    ({"usage": None}, "notes.usage must be a ttc.Usage"),
    ({"trace_id": object()}, "notes.trace_id must be the sleep trace's id"),
    ({"trace_id": "t\udcff"}, "notes.trace_id is not valid Unicode text"),
    ({"model": None}, "notes.model must be the name of the backend"),
    ({"usage": Usage(generated_tokens="lots")}, "notes.usage.generated_tokens must be an int >= 0"),  # type: ignore[arg-type]
    ({"usage": Usage(generated_tokens=float("nan"))}, "notes.usage.generated_tokens must be an int >= 0"),  # type: ignore[arg-type]
    ({"usage": Usage(generated_tokens=-100)}, "notes.usage.generated_tokens must be an int >= 0"),
    ({"usage": Usage(backend_calls=True)}, "notes.usage.backend_calls must be an int >= 0"),
    ({"usage": Usage(wall_s=float("inf"))}, "notes.usage.wall_s must be a finite number"),
])
def test_notes_built_by_hand_are_checked_like_those_sleep_returns(changes: dict[str, object], message: str) -> None:
    """They raised AttributeError or UnicodeEncodeError from deep inside, or (an empty context) were accepted."""
    fields: dict[str, object] = {"context": CONTEXT, "text": RIGHT, "usage": Usage(), "trace_id": None,
                                 "model": "m", **changes}
    backend = ScriptedBackend(["The answer is 1."])
    with pytest.raises(ConfigError, match=message):
        solve("How many cups does Sam have?", 100, backend=backend, store=False, notes=Notes(**fields))  # type: ignore[arg-type]
    assert backend.calls == []


def test_a_cut_off_draft_is_checked_and_compared_by_its_finished_lines() -> None:
    """Cut at '22 + 5 = 2', the right draft failed the arithmetic check and lost to a misreading one."""
    wrong_reading = "13 + 9 = 22\nTed has 23 cups.\nSam has 28 cups.\n"
    notes = sleep(CONTEXT, 78, backend=ScriptedBackend([RIGHT, wrong_reading]), store=False, n=2, max_tokens=39,
                  seed=0)
    assert notes.text == "13 + 9 = 22\nTed has 22 cups."


def test_a_tie_in_agreement_keeps_the_first_draft_whatever_the_rounding() -> None:
    """Drafts 0 and 3 agree 43/30 each; summed in another order, draft 3's float was one bit larger."""
    drafts = ["b\nc\nd\ng\n", "b\ng\n", "c\nd\ne\nf\n", "b\nd\nf\ng\n"]
    notes = sleep("Meg has 13 cups.", 4000, backend=ScriptedBackend(drafts), store=False, n=4, max_tokens=50, seed=0)
    assert notes.text == drafts[0].strip()


def test_notes_the_model_ends_with_no_line_are_its_output_not_the_budgets_fault(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    with pytest.raises(OutputError, match="the model wrote empty notes"):
        sleep("Meg has 13 cups.", 4000, backend=ScriptedBackend(["\n"]), store=store, n=2, max_tokens=100)
    [trace] = store.list_traces()
    assert trace.status == "failed" and "OutputError" in str(trace.error)
    store.close()


def test_the_select_event_gives_each_draft_its_agreement_by_position(tmp_path: Path) -> None:
    """It listed the agreement of the drafts still in the running only, so `kept` indexed another draft's."""
    store = store_at(tmp_path)
    backend = ScriptedBackend([RIGHT + "x" * 100, STRAY, RIGHT, RIGHT, SLIP])
    notes = sleep(CONTEXT, 2000, backend=backend, store=store, seed=1, n=5, max_tokens=80)
    [select] = [e.payload for e in store.get_trace(notes.trace_id or "").events if e.kind == "select"]
    agreement = select["agreement"]
    assert len(agreement) == 5 and agreement[0] is None and agreement[4] is None  # cut off; miscomputed
    assert agreement[select["kept"]] == max(a for a in agreement if a is not None)
    store.close()


def test_an_empty_draft_is_not_kept_while_another_wrote_notes() -> None:
    """It won the tie of no agreement (the first draft), and the notes came back empty, as an error."""
    notes = sleep("Ann has 3 pens. Bob has 4 pens.", 4000, backend=ScriptedBackend(["", "Ann: 3\n", "Bob: 4\n"]),
                  store=False, n=3, max_tokens=50, seed=0)
    assert notes.text == "Ann: 3"


def test_a_cut_off_draft_with_notes_is_kept_over_one_that_ended_empty() -> None:
    notes = sleep("Ann has 3 pens. Bob has 4 pens.", 4000,
                  backend=ScriptedBackend(["", "Ann: 3\nBob: 4 pens and more"]), store=False, n=2, max_tokens=12,
                  seed=0)
    assert notes.text == "Ann: 3"


def test_load_notes_of_a_sleep_still_running_says_so(tmp_path: Path) -> None:
    """It said the trace had no notes to use and to sleep again, while the sleep run was still writing them."""
    store = store_at(tmp_path)
    trace_id = store.start_trace(problem=Problem(question=CONTEXT), strategy=SLEEP, budget=Budget(tokens=100),
                                 backend="scripted", seed=0)
    with pytest.raises(NotFound, match=r"still running.*wait for it to finish.*if its process died, sleep again"):
        load_notes(trace_id, store=store)
    store.close()


OTHER = "Ann has 4 pens. Bob has 2 more pens than Ann."


@pytest.mark.parametrize(("notes", "message"), [
    (Notes(context=OTHER, text="Bob: 6", usage=Usage(generated_tokens=5), trace_id=None, model="m"),
     "these notes were written about another context"),
    (Notes(context=CONTEXT, text="Ted: 22", usage=Usage(generated_tokens=-5), trace_id=None, model="m"),
     "notes.usage.generated_tokens must be an int >= 0"),
    ("Ted: 22", "notes must be the Notes"),
])
def test_an_evaluations_notes_are_checked_and_must_be_about_the_problems_context(notes: object, message: str,
                                                                                 tmp_path: Path) -> None:
    """session.notes were used as they were: notes about another context, or with nonsense usage, reached the
    prompt and the trace's plan event."""
    backend = ScriptedBackend(["The answer is 22."])

    async def run() -> None:
        session = open_session(backend=backend, store=str(tmp_path / "e.db"), verifier=None, prompt_template=None,
                               contextual=True)
        session.notes = {CONTEXT: notes}  # type: ignore[dict-item]
        try:
            await evaluate([Problem(question="How many cups does Ted have?", gold="22", index=0, context=CONTEXT)],
                           Budget(tokens=64), session, strategy="best_of_n", options={}, seed=0)
        finally:
            await session.aclose()

    with pytest.raises(ConfigError, match=message):
        anyio.run(run)
    assert backend.calls == []
