"""The ``ttc`` command line through its real entry point, in subprocesses, on a real SQLite store."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wide_trees import selected_past

from ttc.models import mini_model_path
from ttc.storage import TraceStore
from ttc.types import Budget, Node, Problem, Result, TraceEvent, Usage


def run_ttc(*args: str, db: Path, check: bool = True, extra_env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TTC_DB": str(db), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-m", "ttc", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ttc {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_eval_50_gsm8k_rows_then_show_and_export(tmp_path: Path) -> None:
    db = tmp_path / "eval.db"
    proc = run_ttc("eval", "--dataset", "gsm8k", "--limit", "50", "--backend", "scripted", "--strategy",
                   "best_of_n", "-o", "n=4", "--budget", "400", "--seed", "1", db=db)
    assert "accuracy" in proc.stdout
    with TraceStore(str(db)) as store:
        traces = store.list_traces(limit=1000)
        assert len(traces) == 50
        assert {t.status for t in traces} == {"done"}
        assert sorted(t.problem_index for t in traces) == list(range(50))
        first = traces[0].id
        record = store.get_trace(first)
        assert any(e.kind == "grade" for e in record.events)
    shown = run_ttc("traces", "show", first[:8], db=db)
    assert "selected" in shown.stdout and "question" in shown.stdout
    exported = run_ttc("traces", "export", first, "--format", "json", db=db)
    data = json.loads(exported.stdout)
    assert data["id"] == first and len(data["nodes"]) == 5
    listed = run_ttc("traces", "list", db=db)
    assert first[:8] in listed.stdout


@pytest.mark.parametrize("colour", ["", "1"])
def test_solve_prints_answer_and_trace(tmp_path: Path, colour: str) -> None:
    """Under FORCE_COLOR (as CI sets it) the JSON came out styled with terminal escapes."""
    proc = run_ttc("solve", "What is 20 + 22?", "--backend", "scripted", "--seed", "4", "--json",
                   db=tmp_path / "s.db", extra_env={"FORCE_COLOR": colour} if colour else None)
    data = json.loads(proc.stdout)
    assert data["trace_id"] and data["strategy"] == "self_consistency"
    assert data["usage"]["generated_tokens"] > 0
    notes = run_ttc("sleep", "Meg has 13 cups. Ted has 9 more cups than Meg.", "--backend", "scripted", "--seed", "4",
                    "--json", db=tmp_path / "s.db", extra_env={"FORCE_COLOR": colour} if colour else None)
    assert json.loads(notes.stdout)["trace_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("solve", "", "--backend", "scripted"), "prompt is empty"),
        (("solve", "q", "--backend", "scripted", "--budget", "0"), "positive"),
        (("solve", "q", "--backend", "scripted", "--strategy", "magic"), "unknown strategy"),
        (("solve", "q", "--backend", "scripted", "-o", "bogus=1", "--strategy", "best_of_n"), "unknown option"),
        (("solve", "q", "--model", "/nonexistent/model"), "does not exist"),
        (("solve", "q", "--backend", "vllm"), "needs --url"),
        (("traces", "show", "deadbeef"), "no trace"),
        (("eval", "--dataset", "nosuch"), "unknown dataset"),
        (("eval", "--dataset", "synthetic", "--limit", "2", "--backend", "scripted", "--concurrency", "0"),
         "concurrency must be an int >= 1"),
        (("demo", "--samples", "0"), "samples must be >= 1"),
        (("eval", "--dataset", "synthetic", "--limit", "2", "--backend", "scripted", "--budget-scope", "all"),
         "budget_scope must be 'question'"),
        (("eval", "--dataset", "synthetic", "--limit", "2", "--backend", "scripted", "--budget-scope", "batch",
          "--strategy", "best_of_n"), "'self_consistency' or a tree search"),
        (("demo", "--seed", "990000"), "seed must be in [0, 990000)"),
        (("solve", "Q?", "--backend", "scripted", "--notes", "deadbeef"), "no trace"),
        (("sleep", "A context.", "--backend", "scripted", "-o", "n=0"), "invalid sleep options"),
        (("solve", "Q?", "--backend", "scripted", "--context", " "), "context must be a non-empty string"),
        (("eval", "--dataset", "synthetic", "--limit", "1", "--offset", "100000000", "--backend", "scripted"),
         "100000 problems per seed"),
        (("traces", "list", "--db", ""), "the trace database path is empty"),
        (("traces", "list", "--db", "/nonexistent/dir/x.db"), "there is no trace database at /nonexistent"),
        # Each of these was dropped without a word: one of two models, a setting the backend never reads.
        (("solve", "q", "--url", "http://127.0.0.1:9", "--model", "ttc/models/mini/draft"),
         "--url and --model name two models"),
        (("solve", "q", "--backend", "scripted", "--model", "/no/such"), "--backend scripted does not read --model"),
        (("solve", "q", "--backend", "local", "--model", "x", "--url", "http://127.0.0.1:9"), "name two models"),
        (("solve", "q", "--model", ""), "--model is empty"),
        (("solve", "q", "--backend", "scripted", "-o", "n=2", "-o", "n=6"), "option 'n' is given twice"),
        (("solve", "q", "--backend", "scripted", "--prompt-template", "Q: {q}"),
         "prompt_template must contain the placeholder(s) {question}"),
        (("solve", "q", "--backend", "scripted", "--context", "Meg has 3 cups.", "--prompt-template", "{question}"),
         "prompt_template must contain the placeholder(s) {context}"),
        (("eval", "--dataset", "synthetic-stateful", "--limit", "1", "--backend", "scripted", "--prompt-template",
          "mini"), "--prompt-template is how questions without a context are put to the model"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_ttc(*args, db=tmp_path / "e.db", check=False, extra_env={"COLUMNS": "80"})
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one line, not wrapped at the console's width


@pytest.mark.parametrize("command", [("solve", "What is 2 + 3?"), ("sleep", "Ann has 3 cups.")])
def test_a_zero_budget_is_refused_before_the_store_is_made(tmp_path: Path, command: tuple[str, str]) -> None:
    """The budget was read after the session had made the store (and loaded the model)."""
    db = tmp_path / "never.db"
    proc = run_ttc(*command, "--backend", "scripted", "--budget", "0", db=db, check=False)
    assert proc.returncode == 2 and "positive" in proc.stderr
    assert not db.exists()


@pytest.mark.parametrize("delay", ["abc", "-1", "nan"])
def test_a_bad_scripted_delay_is_a_config_error(tmp_path: Path, delay: str) -> None:
    proc = run_ttc("solve", "What is 2 + 3?", "--backend", "scripted", db=tmp_path / "d.db", check=False,
                   extra_env={"TTC_SCRIPTED_DELAY_S": delay})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "TTC_SCRIPTED_DELAY_S must be a number of seconds 0 or more" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("traces", "show"), "Missing argument"),
        (("nosuchcommand",), "No such command"),
        (("eval", "--limit", "many"), "Invalid value for '--limit'"),
    ],
)
def test_usage_errors_print_usage_without_traceback(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_ttc(*args, db=tmp_path / "e.db", check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_need_no_click_where_typer_brings_its_own(tmp_path: Path) -> None:
    """typer 0.2x vendors click and does not install it: where click is absent, a usage error still prints its
    usage, not an ImportError raised while telling it apart."""
    code = ("import sys; sys.modules['click'] = None; sys.argv = ['ttc', 'traces', 'show']; "
            "from ttc.entry import main; main()")
    env = {**os.environ, "TTC_DB": str(tmp_path / "e.db")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Missing argument" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_with_failed_problems_exits_1(tmp_path: Path) -> None:
    """Questions the embedded model cannot read (its vocabulary has no capitals but a few) fail each problem's
    trace; the summary counts them and says how to go on."""
    data = tmp_path / "caps.jsonl"
    data.write_text('{"question": "WHAT IS 2 + 3?", "answer": "5"}\n{"question": "QUICK: 4 + 4?", "answer": "8"}\n',
                    encoding="utf-8")
    proc = run_ttc("eval", "--dataset", str(data), "--strategy", "best_of_n", "-o", "n=1", db=tmp_path / "e.db",
                   check=False)
    assert proc.returncode == 1, proc.stderr
    assert "│        2 │    0 │      2 │" in proc.stdout
    assert "has no token for 'I', 'W'" in proc.stderr
    assert "2 problems not done: rerun with --resume" in proc.stderr
    assert "2 of the failures above are their input's (a ConfigError, or a solution too long for the verifier), " \
        "which a resume with the same settings meets again" in " ".join(proc.stderr.split())


def test_eval_on_a_server_that_is_not_there_stops_before_the_run_opens(tmp_path: Path) -> None:
    proc = run_ttc("eval", "--dataset", "synthetic", "--limit", "2", "--backend", "vllm", "--url",
                   "http://127.0.0.1:9", db=tmp_path / "e.db", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "could not reach the vLLM server" in proc.stderr and "Traceback" not in proc.stderr
    store = TraceStore(tmp_path / "e.db")
    try:
        assert store.list_runs() == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--strategy", "nope"), "unknown strategy 'nope'"),
        (("--strategy", "best_of_n", "-o", "n=0"), "n: Input should be greater than or equal to 1"),
        (("-o", "foo=1"), "unknown option 'foo'"),
        (("--strategy", "best_of_n", "-o", "n=true"), "n: Input should be a valid integer"),
        (("--seed", "-1"), "seed must be an int >= 0"),
    ],
)
def test_eval_refuses_a_bad_strategy_option_or_seed_before_the_run_opens(
        tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """Checked once, up front: a run that fails the same way on every problem would only say 'rerun'."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n{"question": "What is 4 + 4?", "answer": "8"}\n')
    db = tmp_path / "e.db"
    proc = run_ttc("eval", "--dataset", str(rows), "--backend", "scripted", *args, db=db, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    with TraceStore(str(db)) as store:
        assert store.list_runs() == []


def test_eval_of_no_problems_is_an_error(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n')
    for args in (("--dataset", str(tmp_path / "empty.jsonl")), ("--dataset", str(rows), "--offset", "5")):
        (tmp_path / "empty.jsonl").write_text("")
        proc = run_ttc("eval", *args, "--backend", "scripted", db=tmp_path / "e.db", check=False)
        assert proc.returncode == 2, proc.stderr
        assert "no problems to evaluate" in proc.stderr


def test_eval_with_one_budget_for_the_batch(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    proc = run_ttc("eval", "--dataset", "synthetic", "--limit", "12", "--backend", "scripted", "--budget", "200",
                   "--budget-scope", "batch", "-o", "max_tokens=100", "--seed", "2", db=db)
    assert "│       12 │   12 │" in proc.stdout
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
        traces = store.list_traces(run_id=run.id, limit=100)
        assert {t.status for t in traces} == {"done"} and len(traces) == 12
        records = [store.get_trace(t.id) for t in traces]
    plans = [next(e.payload for e in r.events if e.kind == "plan") for r in records]
    assert {p["batch_budget"]["tokens"] for p in plans} == {12 * 200}  # type: ignore[index]
    assert sum(r.usage.generated_tokens for r in records) <= 12 * 200
    assert {len(r.nodes) for r in records} != {len(records[0].nodes)}  # rounds went where votes were split


@pytest.mark.parametrize(("strategy", "budget", "message"), [
    ("self_consistency", "400", "--budget 400 tokens a question cannot give each question one sample of up to "
                                "max_tokens=512: raise --budget to at least 512 or lower max_tokens (-o max_tokens=N)"),
    ("beam", "100", "--budget 100 tokens a question cannot give each question's search one step of up to "
                    "max_step_tokens=256: raise --budget to at least 256 or lower max_step_tokens "
                    "(-o max_step_tokens=N)"),
])
def test_eval_refuses_a_batch_budget_too_small_in_terms_of_its_budget_a_question(tmp_path: Path, strategy: str,
                                                                                  budget: str, message: str) -> None:
    """--budget is each question's share of the pool: the refusal spoke of "a batch budget of 400 tokens" and
    "each of 1 questions" for a batch of 4."""
    proc = run_ttc("eval", "--dataset", "synthetic", "--limit", "4", "--backend", "scripted", "--budget", budget,
                   "--budget-scope", "batch", "--strategy", strategy, db=tmp_path / "b.db", check=False,
                   extra_env={"COLUMNS": "300"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {message}"


def test_eval_says_how_many_questions_the_budget_left_without_an_answer(tmp_path: Path) -> None:
    """The embedded default at 64 tokens a question: a search whose every path is cut short has no answer, which
    counts wrong even where its partial text ends on the gold number, and the summary says how many there were."""
    db = tmp_path / "n.db"
    proc = run_ttc("eval", "--dataset", "synthetic", "--limit", "6", "--seed", "5", "--budget", "64", db=db)
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
        records = [store.get_trace(t.id) for t in store.list_traces(run_id=run.id, limit=None)]
    unanswered = [r for r in records if r.answer is None]
    assert 0 < len(unanswered) < len(records)
    assert f"{len(unanswered)} of 6 questions ended without an answer" in proc.stdout
    assert (run.summary or {})["unanswered"] == len(unanswered)
    for record in unanswered:
        [grade] = [e.payload for e in record.events if e.kind == "grade"]
        assert (grade["correct"], grade["reason"]) == (False, "no answer")


def test_resume_refuses_other_settings_and_counts_each_problem_once(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    args = ("eval", "--dataset", "synthetic", "--limit", "3", "--backend", "scripted", "--budget", "256")
    run_ttc(*args, db=db)
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
    other = run_ttc("eval", "--dataset", "synthetic-totals", "--limit", "3", "--backend", "scripted", "--budget",
                    "256", "--resume", run.id, db=db, check=False)
    assert other.returncode == 2
    assert "other settings (dataset 'synthetic' -> 'synthetic-totals')" in " ".join(other.stderr.split())
    again = run_ttc(*args, "--resume", run.id, db=db)
    assert "│        3 │    3 │" in again.stdout  # three problems, three done: nothing solved twice
    with TraceStore(str(db)) as store:
        assert len(store.list_traces(run_id=run.id, limit=100)) == 3


def test_a_run_on_a_file_resumes_under_another_spelling_of_its_path(tmp_path: Path) -> None:
    """'data.jsonl' started from one folder and './data.jsonl' or its absolute path on resume were refused as
    other settings."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"question": "What is {i} + 1?", "answer": {i + 1}}}\n' for i in range(3)))
    db = tmp_path / "f.db"
    args = ("--backend", "scripted", "--budget", "256")
    proc = subprocess.run([sys.executable, "-m", "ttc", "eval", "--dataset", "data.jsonl", "--limit", "2", *args],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TTC_DB": str(db)},
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
    assert run.config["dataset"] == str(data)
    again = run_ttc("eval", "--dataset", str(data), "--limit", "2", *args, "--resume", run.id, db=db)
    assert "│        2 │    2 │" in again.stdout
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text())
    refused = run_ttc("eval", "--dataset", str(other), "--limit", "2", *args, "--resume", run.id, db=db, check=False)
    assert refused.returncode == 2 and "other settings (dataset" in refused.stderr


def test_a_resume_on_a_file_that_lost_or_gained_rows_is_refused(tmp_path: Path) -> None:
    """Rows removed from a finished run's file dropped its done problems and rewrote its summary; rows added made
    the finished run grow."""
    rows = [f'{{"question": "What is {i} + 1?", "answer": {i + 1}}}\n' for i in range(4)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(rows[:3]))
    db = tmp_path / "f.db"
    args = ("eval", "--dataset", str(data), "--backend", "scripted", "--budget", "100", "--strategy", "best_of_n",
            "-o", "n=1")
    run_ttc(*args, db=db)
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
    for kept, message in ((rows[:2], "has done the problems at index 2"), (rows, "started with 3 problems, and 4")):
        data.write_text("".join(kept))
        refused = run_ttc(*args, "--resume", run.id, db=db, check=False)
        assert refused.returncode == 2 and message in " ".join(refused.stderr.split())
    with TraceStore(str(db)) as store:
        assert store.get_run(run.id).summary == run.summary
    data.write_text("".join(rows[:3]))
    again = run_ttc(*args, "--resume", run.id, db=db)
    assert "│        3 │    3 │" in again.stdout


def test_text_with_markup_characters_is_printed_as_text(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    solved = run_ttc("solve", "Ann has [/] 12 pens and 7 more [b]. How many?", "--backend", "scripted", db=db)
    assert "answer:" in solved.stdout
    listed = run_ttc("traces", "list", db=db)
    assert "[/]" in listed.stdout and "Traceback" not in listed.stderr
    unreachable = run_ttc("solve", "q", "--backend", "vllm", "--url", "http://127.0.0.1:9", db=db, check=False)
    assert unreachable.returncode == 2
    assert "http://127.0.0.1:9/" in " ".join(unreachable.stderr.split())  # the [kind url] tail of BackendError


def test_show_and_list_print_stored_text_verbatim(tmp_path: Path) -> None:
    """Ratios read as emoji codes (a:b:c became a🅱c), a bracketed strategy name as markup ([/] crashed show),
    and a trailing backslash was doubled."""
    db = tmp_path / "v.db"
    question = "The ratio a:b:c is 1:x:2 [/] in C:\\dir\\"
    node = Node(id=0, parent=None, depth=0, text="so a:b:c = 1:x:2", token_count=3, answer="6\\",
                reason="kept :x: [b]")
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem(question=question, gold="a:b:c"), strategy="beam[/]",
                                     budget=Budget.of(10), backend="b:x:", seed=1)
        result = Result(answer="6\\", text=node.text, score=None, strategy="beam[/]", usage=Usage(),
                        trace_id=trace_id)
        store.finish_trace(trace_id, result=result, nodes=[node],
                           events=[TraceEvent(kind="pick:x:", payload={"why": "a:b:c"})])
    wide = {"COLUMNS": "300"}
    shown = run_ttc("traces", "show", trace_id[:8], db=db, extra_env=wide).stdout
    for text in (f"question: {question}\n", "gold: a:b:c\n", "strategy: beam[/] ", "backend: b:x: ",
                 "answer: 6\\ ", "answer=6\\ ", "(kept :x: [b])", "so a:b:c = 1:x:2", "pick:x:", "'a:b:c'"):
        assert text in shown, text
    listed = run_ttc("traces", "list", db=db, extra_env=wide).stdout
    for text in ("The ratio a:b:c is 1:x:2 [/] in C:\\dir\\ ", " beam[/] ", " 6\\ "):
        assert text in listed, text


def test_a_deep_search_is_drawn_whole_on_an_80_column_terminal(tmp_path: Path) -> None:
    """Nodes past the width were not drawn (the selected answer among them) and not counted as left out."""
    db = tmp_path / "deep.db"
    nodes = [Node(id=i, parent=i - 1 if i else None, depth=i, text=f"step {i}", token_count=5,
                  status="selected" if i == 29 else "active", answer="42" if i == 29 else None) for i in range(30)]
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem(question="q"), strategy="beam", budget=Budget.of(10),
                                     backend="b", seed=1)
        result = Result(answer="42", text="t", score=None, strategy="beam", usage=Usage(), trace_id=trace_id)
        store.finish_trace(trace_id, result=result, nodes=nodes,
                           events=[TraceEvent(kind="pick\x1b[31m\u202e", payload={})])
    shown = run_ttc("traces", "show", trace_id[:8], db=db, extra_env={"COLUMNS": "80"}).stdout
    assert all(f"#{i} " in shown for i in range(30)) and "d=29 #29 selected tok=5 answer=42" in shown
    assert "more nodes" not in shown
    # An event's name reached the terminal raw, though every other stored text is escaped.
    assert "\x1b" not in shown and "\u202e" not in shown and "pick\\x1b[31m\\u202e" in shown


def test_show_draws_the_path_to_a_selected_node_past_the_cap(tmp_path: Path) -> None:
    """A best-of-3000 whose last sample won showed no selected node: the tree stopped at MAX_RENDERED_NODES
    before it. Room is now kept for the path, and the line below says how many nodes were left out."""
    from ttc.cli_render import MAX_RENDERED_NODES

    db = tmp_path / "wide.db"
    last = MAX_RENDERED_NODES + 100
    nodes = selected_past(last)
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem(question="q"), strategy="beam", budget=Budget.of(10),
                                     backend="b", seed=1)
        result = Result(answer="42", text="t", score=None, strategy="beam", usage=Usage(), trace_id=trace_id)
        store.finish_trace(trace_id, result=result, nodes=nodes, events=[])
    shown = run_ttc("traces", "show", trace_id[:8], db=db, extra_env={"COLUMNS": "120"}).stdout
    drawn = [int(n) for n in re.findall(r"#(\d+) ", shown)]
    assert drawn == [*range(MAX_RENDERED_NODES - 2), last - 1, last]
    assert f"#{last} selected tok=1 answer=42" in shown
    assert f"… {len(nodes) - MAX_RENDERED_NODES} more nodes" in shown


def test_a_payload_nested_deeper_than_export_can_write_is_a_storage_error() -> None:
    import numpy as np

    from ttc.errors import StorageError
    from ttc.storage.export import strict_json

    nested: list[object] = []
    for _ in range(600):  # asdict and a comprehension per level raised RecursionError from here
        nested = [nested]
    assert strict_json({"p": nested}, "trace") == {"p": nested}
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(StorageError, match="nested too deeply"):
        strict_json({"p": nested}, "trace")
    # numpy's non-finite floats are floats whose repr is not 'nan' (a KeyError)
    assert strict_json([np.float64("nan"), np.float64("-inf")], "x") == ["NaN", "-Infinity"]


def test_unwritable_export_and_busy_timeout_are_config_errors(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    run_ttc("solve", "What is 2 + 2?", "--backend", "scripted", db=db)
    with TraceStore(str(db)) as store:
        [trace] = store.list_traces()
    export = run_ttc("traces", "export", trace.id, "--output", str(tmp_path / "nodir" / "x.json"), db=db,
                     check=False)
    assert export.returncode == 2 and "cannot write" in export.stderr and "Traceback" not in export.stderr
    busy = run_ttc("traces", "list", db=db, check=False, extra_env={"TTC_DB_BUSY_TIMEOUT_S": "inf"})
    assert busy.returncode == 2 and "TTC_DB_BUSY_TIMEOUT_S must be a number of seconds from 0 to" in busy.stderr


def test_unreadable_dataset_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{not json\n', encoding="utf-8")
    proc = run_ttc("eval", "--dataset", str(bad), "--backend", "scripted", db=tmp_path / "e.db", check=False)
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "not valid JSON" in proc.stderr


def test_unwritable_database(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be", encoding="utf-8")
    proc = run_ttc("solve", "q", "--backend", "scripted", db=blocker / "sub" / "t.db", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "not-a-folder" in proc.stderr


def test_locked_database(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    TraceStore(str(db)).close()
    holder = sqlite3.connect(db, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = run_ttc("solve", "q", "--backend", "scripted", db=db, check=False,
                       extra_env={"TTC_DB_BUSY_TIMEOUT_S": "1"})
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 2
    assert "lock" in proc.stderr.lower() and "Traceback" not in proc.stderr


def _done_count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM traces WHERE status = 'done'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_eval_killed_mid_run_resumes_without_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "resume.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.05"}
    args = [sys.executable, "-m", "ttc", "eval", "--dataset", "gsm8k", "--limit", "60", "--backend", "scripted",
            "--strategy", "best_of_n", "-o", "n=2", "--budget", "200", "--concurrency", "4"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _done_count(db) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _done_count(db)
    assert 12 <= partial < 60, f"the run should have been killed mid-way, {partial} done"
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
        assert run.status == "interrupted"  # its process is gone: nothing would ever finish it
    resumed = run_ttc("eval", "--dataset", "gsm8k", "--limit", "60", "--backend", "scripted", "--strategy",
                      "best_of_n", "-o", "n=2", "--budget", "200", "--resume", run.id, db=db)
    assert "accuracy" in resumed.stdout
    with TraceStore(str(db)) as store:
        done = store.list_traces(run_id=run.id, status="done", limit=1000)
        indices = [t.problem_index for t in done]
        assert sorted(indices) == list(range(60)), "every problem done exactly once"
        assert not store.list_traces(run_id=run.id, status="running", limit=1000)
        assert store.get_run(run.id).status == "done"


def test_a_run_still_evaluated_by_a_live_process_is_not_resumed(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.2"}
    args = ["eval", "--dataset", "synthetic", "--limit", "12", "--backend", "scripted", "--concurrency", "1"]
    first = subprocess.Popen([sys.executable, "-m", "ttc", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _done_count(db) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with TraceStore(str(db)) as store:
            [run] = store.list_runs()
        second = run_ttc(*args, "--resume", run.id, db=db, check=False)
        assert second.returncode == 2, second.stderr
        assert f"being evaluated by process {first.pid}" in " ".join(second.stderr.split())
        assert "rejected the data" not in second.stderr  # the refusal is the claim's own, not a storage failure
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    with TraceStore(str(db)) as store:
        traces = store.list_traces(run_id=run.id, limit=100)
        assert len(traces) == 12 and {t.status for t in traces} == {"done"}  # the refused resume failed none
    again = run_ttc(*args, "--resume", run.id, db=db)  # finished and no longer held: resuming is a no-op
    assert "│       12 │   12 │" in again.stdout


def test_export_writes_non_finite_floats_as_strings_in_strict_json(tmp_path: Path) -> None:
    """A node with logprob=-inf was exported as the bare token -Infinity, which strict JSON parsers reject."""
    db = tmp_path / "nf.db"
    nodes = [Node(id=0, parent=None, depth=0, text="a", token_count=1, logprob=-math.inf, score=math.inf,
                  step_scores=(0.5, -math.inf))]
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem(question="q"), strategy="beam", budget=Budget.of(10),
                                     backend="b", seed=1)
        result = Result(answer="1", text="a", score=None, strategy="beam", usage=Usage(), trace_id=trace_id)
        store.finish_trace(trace_id, result=result, nodes=nodes,
                           events=[TraceEvent(kind="pick", payload={"best": math.inf})])

    def reject(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    exported = run_ttc("traces", "export", trace_id, db=db).stdout
    data = json.loads(exported, parse_constant=reject)
    [node] = data["nodes"]
    assert node["logprob"] == "-Infinity" and node["score"] == "Infinity"
    assert node["step_scores"] == [0.5, "-Infinity"]
    assert data["events"][0]["payload"] == {"best": "Infinity"}
    assert data["started_at"].startswith("20")


def test_eval_with_sleep_killed_mid_run_resumes_thinking_once_per_context(tmp_path: Path) -> None:
    """Killed while thinking about its contexts: the resume keeps the notes already written, thinks again only
    about the contexts whose sleep run died, and asks every question once, with its context's done notes."""
    db = tmp_path / "sleep.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.1"}
    args = ["eval", "--dataset", "synthetic-stateful", "--limit", "30", "--backend", "scripted", "--strategy",
            "best_of_n", "-o", "n=1", "--budget", "100", "--sleep-budget", "60", "--concurrency", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "ttc", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _done_count(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
        before = {t.id for t in store.list_traces(run_id=run.id, status="done", limit=None) if t.strategy == "sleep"}
    assert 3 <= len(before) < 10, f"the run should have been killed while thinking, {len(before)} contexts done"
    run_ttc(*args, "--resume", run.id, db=db)
    with TraceStore(str(db)) as store:
        done = store.list_traces(run_id=run.id, status="done", limit=None)
        sleeps = {t.id: t.question for t in done if t.strategy == "sleep"}
        assert before <= sleeps.keys() and len(set(sleeps.values())) == len(sleeps) == 10
        questions = [t for t in done if t.strategy != "sleep"]
        assert sorted(t.problem_index for t in questions) == list(range(30))
        for summary in questions:
            plan = store.get_trace(summary.id).events[0].payload["context"]
            assert sleeps[plan["notes_trace"]] == plan["text"]
        assert not store.list_traces(run_id=run.id, status="running", limit=None)


def test_sigterm_fails_the_open_traces_and_marks_the_run_interrupted(tmp_path: Path) -> None:
    """`kill` or `timeout` used to leave every open trace 'running' for good; now it ends like Ctrl-C."""
    db = tmp_path / "term.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.3"}
    args = [sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic", "--limit", "40", "--backend", "scripted",
            "--concurrency", "2"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _done_count(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    stderr = proc.stderr.read() if proc.stderr is not None else ""
    with TraceStore(str(db), read_only=True) as store:
        [run] = store.list_runs()
        traces = store.list_traces(run_id=run.id, limit=100)
        assert run.status == "interrupted"
        # It said only "interrupted": the id --resume needs was left to be found in the store.
        assert f"run {run.id} interrupted: rerun with --resume {run.id}" in stderr
        assert not [t for t in traces if t.status == "running"]
        assert {store.get_trace(t.id).error for t in traces if t.status == "failed"} == {"cancelled"}
        assert 2 <= len([t for t in traces if t.status == "done"]) < 40


@pytest.mark.parametrize("second", [False, True])
def test_sigterm_to_a_background_job_or_twice_leaves_no_trace_running(tmp_path: Path, second: bool) -> None:
    """A background job of a script ignores SIGINT: SIGTERM then raised KeyboardInterrupt wherever the main thread
    was, the event loop cancelled every task at once, and traces whose start was being written read 'running' for
    good (most runs of 32 questions at once); a second signal did the same with SIGINT at its default."""
    db = tmp_path / "background.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.02"}
    args = [sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic", "--limit", "200", "--backend", "scripted",
            "--concurrency", "32", "--budget", "256"]
    ignore = None if second else (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore)
    deadline = time.monotonic() + 60
    while _done_count(db) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    if second:
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    with TraceStore(str(db), read_only=True) as store:
        [run] = store.list_runs()
        traces = store.list_traces(run_id=run.id, limit=None)
        assert run.status == "interrupted"
        assert not [t for t in traces if t.status == "running"]
        assert {store.get_trace(t.id).error for t in traces if t.status == "failed"} == {"cancelled"}


def test_a_store_locked_mid_eval_stops_it_with_its_report_and_one_error_line_naming_what_is_left(
        tmp_path: Path) -> None:
    """Every question waited out the lock in turn and was failed on its own; at the end the run's own write failed
    too, and the error line (without its notes) replaced the report: 'running' traces and run, and no word of it."""
    db = tmp_path / "locked-mid-run.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.2", "TTC_DB_BUSY_TIMEOUT_S": "0.5"}
    args = ["eval", "--dataset", "synthetic", "--limit", "40", "--backend", "scripted", "--concurrency", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "ttc", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    holder = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while _done_count(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        holder.execute("BEGIN IMMEDIATE")  # another program takes the store until the eval has ended
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 2, stderr
    assert "problems" in stdout and "accuracy" in stdout  # the report of what was done
    [line] = [text for text in stderr.splitlines() if text.startswith("error:")]
    assert "is locked" in line and "Traceback" not in stderr
    assert "could not be marked interrupted either" in line and "--resume" in line
    with TraceStore(str(db)) as store:  # the eval's process is gone: what it left 'running' is interrupted
        [run] = store.list_runs()
        assert run.status == "interrupted"
        assert not store.list_traces(run_id=run.id, status="running", limit=None)
    resumed = run_ttc(*args, "--resume", run.id, db=db)
    assert "│       40 │   40 │" in resumed.stdout


def test_runs_show_whole_ids_on_a_narrow_terminal(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    run_ttc("eval", "--dataset", "synthetic", "--limit", "1", "--backend", "scripted", db=db)
    with TraceStore(str(db), read_only=True) as store:
        [run] = store.list_runs()
    proc = run_ttc("traces", "runs", db=db, extra_env={"COLUMNS": "80"})
    assert run.id in proc.stdout  # it was cut to '4720254a-2c41-4f2…', which `--run` does not take


def test_model_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """Escape sequences in a question or an answer reached the terminal (clear the screen, hide what follows,
    make a link); markup-built lines read ':smile:' as an emoji and doubled a trailing backslash."""
    from ttc import solve
    from ttc.testing import ScriptedBackend

    db = tmp_path / "esc.db"
    question = "Q\x1b[2J\x1b]8;;http://evil/\x1b\\LINK\u202e?"
    trace_id = solve(question, 256, backend=ScriptedBackend(["S\x1b[5mX\nThe answer is 7\x1b[8m."]), store=str(db),
                     strategy="best_of_n", n=2).trace_id
    assert trace_id is not None
    for args in (("traces", "show", trace_id[:8]), ("traces", "list")):
        proc = run_ttc(*args, db=db, extra_env={"COLUMNS": "300"})
        assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout
        assert "\\x1b[2J" in proc.stdout and "\\u202e" in proc.stdout
    missing = run_ttc("traces", "show", ":smile:", db=db, check=False)
    assert "no trace ':smile:'" in missing.stderr


def test_a_run_is_named_by_the_prefix_the_tables_show(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    args = ["eval", "--dataset", "synthetic", "--limit", "2", "--backend", "scripted", "--strategy", "best_of_n"]
    run_ttc(*args, db=db)
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
    listed = run_ttc("traces", "list", "--run", run.id[:8], db=db)
    assert listed.stdout.count("done") == 2
    resumed = run_ttc(*args, "--resume", run.id[:8], db=db)
    assert f"run {run.id}" in resumed.stdout
    missing = run_ttc("traces", "list", "--run", "ffffffff", db=db, check=False)
    assert missing.returncode != 0 and "no run 'ffffffff'" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("traces", "show", "abc\udcffdef"), "the trace id 'abc\\udcffdef' is not valid Unicode text"),
        (("traces", "list", "--run", "abc\udcffdef"), "the run id 'abc\\udcffdef' is not valid Unicode text"),
        (("traces", "list", "--limit", "9223372036854775808"), "limit must be a positive int below 2**63"),
        (("traces", "runs", "--limit", "9223372036854775808"), "limit must be a positive int below 2**63"),
        (("view", "--host", "", "--port", "0"), "--host must name an address, got ''"),
        (("solve", "q", "--backend", "scripted", "--strategy", "best_of_n", "-o", "temperature=1e400"),
         "temperature: Input should be a finite number"),
        (("solve", "q", "--backend", "scripted", "--seed", str(1 << 63)), "reaches 2**63"),
    ],
)
def test_bad_input_on_an_existing_store_is_one_line_naming_the_input(
        tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """A stray byte in an id read as a damaged database, a huge limit as an OverflowError traceback, and an empty
    --host served the trace store on every interface."""
    TraceStore(tmp_path / "e.db").close()
    proc = run_ttc(*args, db=tmp_path / "e.db", check=False, extra_env={"COLUMNS": "80"}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "changed outside ttc" not in proc.stderr
    with TraceStore(tmp_path / "e.db") as store:
        assert store.list_traces() == []  # nothing was started to fail on it


def test_eval_checks_its_sleep_runs_seeds_before_it_makes_a_store(tmp_path: Path) -> None:
    data = tmp_path / "ctx.jsonl"
    data.write_text('{"context": "Meg has 13 cups.", "question": "How many cups does Meg have?", "answer": "13"}\n',
                    encoding="utf-8")
    proc = run_ttc("eval", "--dataset", str(data), "--backend", "scripted", "--seed", str((1 << 63) - 1000),
                   "--sleep-budget", "100", db=tmp_path / "e.db", check=False)
    assert proc.returncode == 2 and "its context at seed + 2**30 + i" in proc.stderr, proc.stderr
    assert not (tmp_path / "e.db").exists()


def test_eval_refuses_a_file_mixing_questions_with_and_without_a_context(tmp_path: Path) -> None:
    """Every question of such a file went to the model for contexts: the plain ones were answered by the mini
    stateful reasoner with no verifier, not by the reasoner and its checker."""
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"context": "Meg has 13 cups.", "question": "How many cups does Meg have?", "answer": "13"}\n'
                    '{"question": "Ann has 3 cups. Ann gets 4 more. How many cups does Ann have?", "answer": "7"}\n',
                    encoding="utf-8")
    proc = run_ttc("eval", "--dataset", str(data), "--backend", "scripted", db=tmp_path / "e.db", check=False)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "with questions without one (line 2)" in message and "evaluate them as two datasets" in message
    assert not (tmp_path / "e.db").exists()  # refused before a store is made


def _one_trace(db: Path, *, answer: str | None = "1", finish: bool = True, question: str = "q") -> str:
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem(question=question), strategy="beam", budget=Budget.of(10),
                                     backend="b", seed=1)
        if finish:
            result = Result(answer=answer, text="t", score=None, strategy="beam", usage=Usage(generated_tokens=7),
                            trace_id=trace_id)
            store.finish_trace(trace_id, result=result, nodes=[Node(id=0, parent=None, depth=0, text="t",
                                                                   token_count=1)],
                               events=[TraceEvent(kind="e", payload={})])
    return trace_id


def test_export_and_show_a_trace_whose_meta_is_nested_500_deep(tmp_path: Path) -> None:
    """An eval of a JSONL row with a 500-deep field stored it, and `ttc traces export` then died in a traceback."""
    db = tmp_path / "meta.db"
    trace_id = _one_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE problems SET meta = ?", ('{"level": ' + "[" * 500 + "]" * 500 + "}",))
    exported = run_ttc("traces", "export", trace_id[:8], db=db)
    assert json.loads(exported.stdout)["problem"]["meta"] == {"level": json.loads("[" * 500 + "]" * 500)}
    assert "question: q" in run_ttc("traces", "show", trace_id[:8], db=db).stdout


def test_a_trace_too_deep_to_read_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "deep.db"
    trace_id = _one_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE events SET payload = ?", ('{"p": ' + "[" * 3000 + "]" * 3000 + "}",))
    for command in ("show", "export"):
        proc = run_ttc("traces", command, trace_id[:8], db=db, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith("error: the trace database") and "nested too deeply" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_missing_answer_or_count_prints_as_a_dash_and_an_answer_none_as_none(tmp_path: Path) -> None:
    """A missing answer and token count printed as the text None: the same as a model that answered "None"."""
    db = tmp_path / "none.db"
    running = _one_trace(db, finish=False, question="still running")
    answered = _one_trace(db, answer="None", question="answered None")
    wide = {"COLUMNS": "200"}
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in run_ttc("traces", "list", db=db, extra_env=wide).stdout.splitlines()
            if line.startswith("│")}
    assert rows[running[:8]][3:5] == ["-", "-"]  # answer, tokens
    assert rows[answered[:8]][3:5] == ["None", "7"]
    shown = run_ttc("traces", "show", running[:8], db=db, extra_env=wide).stdout
    assert "answer: -   score=-" in shown and "None" not in shown
    shown = run_ttc("traces", "show", answered[:8], db=db, extra_env=wide).stdout
    assert "answer: None   score=-" in shown


MINI_REASONER = ("--backend", "local", "--model", str(mini_model_path("reasoner")))


def test_solve_and_eval_take_a_prompt_template_and_a_resume_with_another_is_refused(tmp_path: Path) -> None:
    """The mini reasoner reads none of the generic template's 'Q', 'N' and quote: without --prompt-template the
    command line could not ask it anything, though the Python API could (prompt_template=)."""
    pytest.importorskip("torch")
    db = tmp_path / "t.db"
    question = "Ann has 12 pens. Ann gets 5 more. How many pens does Ann have?"
    solved = run_ttc("solve", question, *MINI_REASONER, "--prompt-template", "mini", "--budget", "256", "--seed", "1",
                     "--json", db=db)
    data = json.loads(solved.stdout)
    evaluated = run_ttc("eval", "--dataset", "synthetic", "--limit", "2", *MINI_REASONER, "--prompt-template",
                        "{question}\n", "--strategy", "best_of_n", "-o", "n=1", "--budget", "200", db=db)
    assert "│        2 │    2 │      0 │" in evaluated.stdout
    with TraceStore(str(db)) as store:
        assert store.get_trace(data["trace_id"]).nodes[0].text == f"{question}\n"
        [run] = store.list_runs()
        assert run.config["evaluate"]["prompt_template"] == "{question}\n"  # type: ignore[index]
        for trace in store.list_traces(run_id=run.id, limit=None):
            record = store.get_trace(trace.id)
            assert record.nodes[0].text == f"{record.problem.question}\n"
    other = run_ttc("eval", "--dataset", "synthetic", "--limit", "2", *MINI_REASONER, "--prompt-template",
                    "{question} =\n", "--strategy", "best_of_n", "-o", "n=1", "--budget", "200", "--resume",
                    run.id, db=db, check=False)
    assert other.returncode == 2, other.stderr
    assert r"(evaluate.prompt_template '{question}\n' -> '{question} =\n')" in " ".join(other.stderr.split())
    again = run_ttc("eval", "--dataset", "synthetic", "--limit", "2", *MINI_REASONER, "--prompt-template", "mini",
                    "--strategy", "best_of_n", "-o", "n=1", "--budget", "200", "--resume", run.id, db=db)
    assert "│        2 │    2 │      0 │" in again.stdout  # 'mini' is that same template


def test_eval_with_a_template_the_model_cannot_read_stops_once_before_the_run_opens(tmp_path: Path) -> None:
    """Every problem failed alike on the template's own words, and the run said to rerun with --resume, which
    failed the same way."""
    pytest.importorskip("torch")
    db = tmp_path / "t.db"
    proc = run_ttc("eval", "--dataset", "synthetic", "--limit", "2", *MINI_REASONER, db=db, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "every question would fail on the prompt template's own words, so the run is not started" in message
    assert "has no token for" in message and "--prompt-template mini" in message
    assert "--resume" not in message and "Traceback" not in message
    with TraceStore(str(db)) as store:
        assert store.list_runs() == [] and store.list_traces(limit=None) == []


SLOW_CLOSE = '''
import asyncio, sys
import ttc.cli, ttc.session
opened = ttc.session.Session.aclose
async def slow(self):
    print("closing", file=sys.stderr, flush=True)
    await asyncio.sleep(3)
    await opened(self)
ttc.session.Session.aclose = slow
sys.argv = ["ttc", *sys.argv[1:]]
ttc.cli.main()
'''


def test_a_signal_while_a_finished_eval_closes_prints_its_report_not_a_resume(tmp_path: Path) -> None:
    """Interrupted once the run had ended (its session closing, which waits for a helper model still loading), it
    said the done run was interrupted and to resume it, and printed no report."""
    script = tmp_path / "slow_close.py"
    script.write_text(SLOW_CLOSE, encoding="utf-8")
    db = tmp_path / "e.db"
    proc = subprocess.Popen([sys.executable, str(script), "eval", "--backend", "scripted", "--dataset", "synthetic",
                             "--limit", "3", "--strategy", "best_of_n", "-o", "n=1", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stderr.readline().strip() == "closing"
    proc.send_signal(signal.SIGTERM)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" not in errors, errors
    with TraceStore(str(db), read_only=True) as store:
        [run] = store.list_runs()
    assert run.status == "done" and f"inspect: ttc traces list --run {run.id}" in " ".join(out.split())


def test_a_listing_cut_at_its_limit_says_that_more_match(tmp_path: Path) -> None:
    """A run's 60 traces were listed as 50 rows with nothing saying more exist, after `ttc eval` pointed there."""
    db = tmp_path / "e.db"
    run_ttc("eval", "--dataset", "synthetic", "--limit", "3", "--backend", "scripted", "--strategy", "best_of_n",
            db=db)
    cut = run_ttc("traces", "list", "--limit", "2", db=db)
    assert cut.stdout.count("done") == 2 and "the newest 2 traces are shown and more match" in cut.stderr
    whole = run_ttc("traces", "list", "--limit", "3", db=db)
    assert whole.stdout.count("done") == 3 and "more match" not in whole.stderr
    run_ttc("eval", "--dataset", "synthetic", "--limit", "1", "--backend", "scripted", db=db)
    assert "the newest 1 runs are shown" in run_ttc("traces", "runs", "--limit", "1", db=db).stderr
    assert "limit must be a positive int" in run_ttc("traces", "list", "--limit", "0", db=db, check=False).stderr


def _ctrl_c_at_its_default() -> None:
    """As a terminal starts a command: a test run as a background job of a script (CI) ignores SIGINT, and every
    process it starts would too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_held_down_still_exits_130(tmp_path: Path, sig: signal.Signals) -> None:
    """Signals landing while the process exited raised KeyboardInterrupt in the interpreter's shutdown: the
    process ended by the signal (status -2) instead of 130."""
    db = tmp_path / "held.db"
    env = {**os.environ, "TTC_DB": str(db), "TTC_SCRIPTED_DELAY_S": "0.1"}
    args = [sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic", "--limit", "400", "--backend",
            "scripted", "--concurrency", "2"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_at_its_default)
    try:
        deadline = time.monotonic() + 120
        while _done_count(db) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(sig)
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # KeyboardInterrupt in the loop's teardown also left a worker thread that kept the process from exiting.
    assert proc.returncode == 130 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "rerun with --resume" in stderr  # the one place the run id is given
    with TraceStore(str(db)) as store:
        [run] = store.list_runs()
        assert run.status == "interrupted" and not store.list_traces(status="running", limit=None)


IN_PROCESS = """
import os, signal, sys, threading
from ttc.cli import app
found = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
code = app(["eval", "--dataset", "synthetic", "--limit", "40", "--concurrency", "1", "--backend", "scripted",
            "--db", sys.argv[1]], standalone_mode=False)
print(code, (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == found)
"""


def test_an_interrupted_command_run_in_process_gives_back_the_signal_handlers_it_found(tmp_path: Path) -> None:
    """Signals after an interrupt are passed over until the command has reported: run in-process, the command
    left Ctrl-C and SIGTERM doing nothing for the rest of the process."""
    env = {**os.environ, "TTC_SCRIPTED_DELAY_S": "0.2"}
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, str(tmp_path / "p.db")], env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=_ctrl_c_at_its_default)
    assert proc.stdout.split() == ["130", "True"], proc.stderr
