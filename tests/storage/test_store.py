"""TraceStore on a real SQLite file: round trips, reads for the CLI, runs, and how the database is located."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import ConfigError, StorageError
from ttc.storage import TraceStore
from ttc.storage.database import default_path
from ttc.types import Budget, Problem, Result, Usage


def _write_trace(store: TraceStore, index: int, *, run_id: str | None = None, nodes: int = 6,
                 finish: bool = True) -> str:
    tree = make_nodes(nodes, seed=index)
    trace_id = store.start_trace(problem=make_problem(index), strategy="beam", budget=BUDGET,
                                 backend="scripted", seed=index, run_id=run_id)
    if finish:
        store.finish_trace(trace_id, result=make_result(trace_id, tree), nodes=tree,
                           events=make_events(4, seed=index))
    return trace_id


def test_round_trip_gives_back_equal_values(store: TraceStore) -> None:
    nodes = make_nodes(30, seed=7)
    events = make_events(9, seed=7)
    problem = make_problem(3)
    trace_id = store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="vllm:qwen",
                                 seed=1234)
    result = make_result(trace_id, nodes)
    store.finish_trace(trace_id, result=result, nodes=nodes, events=events)

    record = store.get_trace(trace_id)
    assert record.nodes == nodes
    assert record.events == events
    assert record.problem == problem
    assert record.result == result
    assert record.usage == result.usage
    assert record.candidates == result.candidates and len(result.candidates) == 3
    assert record.budget == BUDGET
    assert (record.status, record.backend, record.seed, record.error) == ("done", "vllm:qwen", 1234, None)
    assert record.started_at.tzinfo is UTC and record.finished_at is not None
    assert 0 <= (record.duration_s or -1) < 60


def test_export_is_json_ready_and_complete(store: TraceStore) -> None:
    trace_id = _write_trace(store, 5, nodes=12)
    exported = store.export_trace(trace_id)
    decoded = json.loads(json.dumps(exported))
    assert decoded["format"] == "ttc.trace/1"
    assert decoded["id"] == trace_id and decoded["status"] == "done"
    assert [node["id"] for node in decoded["nodes"]] == list(range(12))
    assert decoded["nodes"][3]["text"] == make_nodes(12, seed=5)[3].text
    assert decoded["events"][1]["payload"]["kept"] == make_events(4, seed=5)[1].payload["kept"]
    assert decoded["problem"]["meta"] == {"level": 0, "tags": ["arith", "easy"]}
    assert decoded["usage"]["generated_tokens"] == sum(n.token_count for n in make_nodes(12, seed=5))
    datetime.fromisoformat(decoded["started_at"])


def test_nodes_come_back_ordered_by_id_whatever_the_write_order(store: TraceStore) -> None:
    nodes = make_nodes(15, seed=2)
    trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=None)
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=list(reversed(nodes)), events=[])
    record = store.get_trace(trace_id)
    assert record.nodes == nodes and record.events == []


def test_a_problem_is_stored_once_however_many_traces_use_it(store: TraceStore, db_path: Path) -> None:
    for _ in range(3):
        _write_trace(store, 8)
    _write_trace(store, 9)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM problems").fetchone() == (2,)
        assert raw.execute("SELECT count(*) FROM traces").fetchone() == (4,)


def test_get_trace_by_unique_prefix_and_helpful_errors(store: TraceStore) -> None:
    trace_id = _write_trace(store, 1)
    assert store.get_trace(trace_id[:6]).id == trace_id
    with pytest.raises(StorageError, match=r"ttc traces list"):
        store.get_trace("ffffffff-0000")
    with pytest.raises(StorageError, match=r"no trace"):
        store.get_trace(trace_id[:5])  # too short to be taken as a prefix
    with pytest.raises(StorageError, match=r"no trace"):
        store.get_trace("%%%%%%")  # LIKE wildcards are matched literally


def test_ambiguous_prefix_is_refused(store: TraceStore, db_path: Path) -> None:
    ids = [_write_trace(store, i, finish=False) for i in range(2)]
    with sqlite3.connect(db_path) as raw:  # give both traces the same first characters
        for n, trace_id in enumerate(ids):
            raw.execute("UPDATE traces SET id = ? WHERE id = ?", (f"abcdef-{n}", trace_id))
    with pytest.raises(StorageError, match=r"matches several traces"):
        store.get_trace("abcdef")
    assert store.get_trace("abcdef-1").id == "abcdef-1"


def test_a_run_is_found_by_a_unique_prefix_of_its_id(store: TraceStore, db_path: Path) -> None:
    """Tables show the first characters of a run's id; ``--run`` and ``--resume`` take them."""
    runs = [store.create_run(kind="eval", config={"n": n}) for n in range(2)]
    assert store.get_run(runs[0][:8]).id == runs[0]
    assert store.list_traces(run_id=runs[0][:8]) == []  # found, and empty
    with pytest.raises(StorageError, match=r"no run .*unique prefixes of at least 6"):
        store.get_run(runs[0][:5])
    with sqlite3.connect(db_path) as raw:  # give both runs the same first characters
        for n, run_id in enumerate(runs):
            raw.execute("UPDATE runs SET id = ? WHERE id = ?", (f"abcdef-{n}", run_id))
    with pytest.raises(StorageError, match=r"matches several runs"):
        store.get_run("abcdef")
    assert store.get_run("abcdef-1").config == {"n": 1}


def test_list_traces_filters_orders_and_limits(store: TraceStore) -> None:
    run_a = store.create_run(kind="eval", config={"strategy": "beam"}, name="a")
    run_b = store.create_run(kind="solve", config={})
    done_a = [_write_trace(store, i, run_id=run_a) for i in range(4)]
    running_a = _write_trace(store, 10, run_id=run_a, finish=False)
    failed_b = _write_trace(store, 20, run_id=run_b, finish=False)
    store.fail_trace(failed_b, error="BackendError: 503")

    in_a = store.list_traces(run_id=run_a)
    assert [t.id for t in in_a] == [running_a, *reversed(done_a)]  # newest first
    assert {t.id for t in store.list_traces(run_id=run_a, status="done")} == set(done_a)
    assert [t.id for t in store.list_traces(status="failed")] == [failed_b]
    assert len(store.list_traces(limit=2)) == 2
    summary = next(t for t in in_a if t.id == done_a[0])
    assert (summary.dataset, summary.problem_index, summary.question) == ("toy", 0, make_problem(0).question)
    assert summary.generated_tokens == sum(n.token_count for n in make_nodes(6, seed=0))
    assert summary.answer is not None and summary.duration_s is not None
    failed = store.list_traces(status="failed")[0]
    assert failed.error == "BackendError: 503" and failed.generated_tokens is None
    with pytest.raises(ConfigError, match="trace status"):
        store.list_traces(status="finished")
    with pytest.raises(ConfigError, match="limit"):
        store.list_traces(limit=0)


def test_list_traces_without_a_limit_gives_every_trace_of_a_run(store: TraceStore) -> None:
    """Evaluation read "all" of a run's traces with limit=1_000_000, which silently cut a larger run."""
    run = store.create_run(kind="eval", config={})
    other = store.create_run(kind="eval", config={})
    written = [_write_trace(store, i, run_id=run, nodes=1) for i in range(53)]  # more than the default 50
    _write_trace(store, 99, run_id=other, nodes=1)
    everything = store.list_traces(run_id=run, limit=None)
    assert [t.id for t in everything] == list(reversed(written))  # newest first, none left out
    assert len(store.list_traces(run_id=run, status="done", limit=None)) == 53
    assert len(store.list_traces(run_id=run)) == 50
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigError, match=r"limit must be a positive int below 2\*\*63 or None"):
            store.list_traces(limit=bad)  # type: ignore[arg-type]


def test_list_traces_of_an_unknown_run_is_an_error_not_an_empty_list(store: TraceStore) -> None:
    """A mistyped run id listed nothing, exactly like a run without traces; a shortened one names its run."""
    run_id = store.create_run(kind="eval", config={})
    assert store.list_traces(run_id=run_id) == []  # a real run with no traces yet is simply empty
    assert store.list_traces(run_id=run_id[:8]) == []  # its unique prefix names it
    mistyped = "0" * 8 if not run_id.startswith("0") else "f" * 8
    with pytest.raises(StorageError, match=r"no run '.{8}' in .*ttc traces runs"):
        store.list_traces(run_id=mistyped)


def test_runs_are_listed_with_their_counts(store: TraceStore) -> None:
    run_id = store.create_run(kind="eval", config={"budget": 512, "strategies": ["beam"]}, name="gsm8k")
    for i in range(3):
        _write_trace(store, i, run_id=run_id)
    store.fail_trace(_write_trace(store, 9, run_id=run_id, finish=False), error="boom")
    _write_trace(store, 10, run_id=run_id, finish=False)
    store.finish_run(run_id, status="done", summary={"accuracy": 0.5, "n": 4})
    later = store.create_run(kind="solve", config={})

    runs = store.list_runs()
    assert [r.id for r in runs] == [later, run_id]
    run = runs[1]
    assert (run.kind, run.name, run.status, run.traces, run.done, run.failed) == ("eval", "gsm8k", "done", 5, 3, 1)
    assert run.config == {"budget": 512, "strategies": ["beam"]}
    assert run.summary == {"accuracy": 0.5, "n": 4}
    assert run.finished_at is not None and runs[0].finished_at is None and runs[0].traces == 0
    assert store.get_run(run_id) == run
    assert len(store.list_runs(limit=1)) == 1
    with pytest.raises(StorageError, match="no run"):
        store.get_run("nope")
    with pytest.raises(StorageError, match="no run"):
        store.finish_run("nope", status="done", summary={})
    with pytest.raises(ConfigError, match="run kind"):
        store.create_run(kind="train", config={})
    with pytest.raises(ConfigError, match="run status"):
        store.finish_run(run_id, status="running", summary={})


def test_done_problem_indices_only_counts_done_traces_of_the_run(store: TraceStore) -> None:
    run_id = store.create_run(kind="eval", config={})
    other = store.create_run(kind="eval", config={})
    for i in (0, 2, 5):
        _write_trace(store, i, run_id=run_id)
    store.fail_trace(_write_trace(store, 7, run_id=run_id, finish=False), error="x")
    _write_trace(store, 8, run_id=run_id, finish=False)
    _write_trace(store, 9, run_id=other)
    free = store.start_trace(problem=Problem(question="no index"), strategy="s", budget=BUDGET, backend="b",
                             seed=None, run_id=run_id)
    store.finish_trace(free, result=Result(answer=None, text="", score=None, strategy="s", usage=Usage(),
                                           trace_id=free), nodes=[], events=[])
    assert store.done_problem_indices(run_id) == {0, 2, 5}
    assert store.done_problem_indices("unknown") == set()


def test_trace_writes_refuse_unknown_ids_and_a_second_finish(store: TraceStore) -> None:
    problem = make_problem(0)
    with pytest.raises(StorageError, match="no run"):
        store.start_trace(problem=problem, strategy="s", budget=BUDGET, backend="b", seed=None, run_id="nope")
    nodes = make_nodes(3)
    with pytest.raises(StorageError, match="no trace"):
        store.finish_trace("nope", result=make_result("nope", nodes), nodes=nodes, events=[])
    with pytest.raises(StorageError, match="no trace"):
        store.fail_trace("nope", error="x")
    trace_id = _write_trace(store, 0)
    with pytest.raises(StorageError, match="already 'done'"):
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
    with pytest.raises(ConfigError, match=r"result\.trace_id"):
        store.finish_trace(trace_id, result=make_result("other", nodes), nodes=nodes, events=[])
    store.fail_trace(trace_id, error="late cancellation")  # cleanup after a finished write changes nothing
    record = store.get_trace(trace_id)
    assert (record.status, record.error, len(record.nodes)) == ("done", None, 6)


def test_writes_after_close_are_refused_and_close_is_idempotent(db_path: Path) -> None:
    store = TraceStore(str(db_path))
    trace_id = _write_trace(store, 0, finish=False)
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.fail_trace(trace_id, error="x")
    with TraceStore(str(db_path)) as reopened:  # a new store on the same file sees everything committed
        assert reopened.get_trace(trace_id).status == "running"


def test_location_from_argument_env_or_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_DB", str(tmp_path / "env" / "from-env.db"))
    with TraceStore() as store:
        assert store.url == f"sqlite:///{tmp_path / 'env' / 'from-env.db'}"
    assert (tmp_path / "env" / "from-env.db").is_file()

    url = f"sqlite:///{tmp_path / 'as-url.db'}"
    with TraceStore(url) as store:
        assert store.url == url
    assert (tmp_path / "as-url.db").is_file()

    monkeypatch.delenv("TTC_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = default_path()
    assert tmp_path in expected.parents
    with TraceStore() as store:
        assert store.url == f"sqlite:///{expected}"
    assert expected.is_file()  # the directory was created


def test_sqlite_file_is_in_wal_mode_with_the_schema(store: TraceStore, db_path: Path) -> None:
    _write_trace(store, 0)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs", "problems", "traces", "nodes", "events"} <= tables
    assert {"ix_traces_run_id", "ix_traces_status", "ix_traces_started_at"} <= indexes


def test_budget_and_seed_come_back_as_written(store: TraceStore) -> None:
    budget = Budget(calls=3)
    trace_id = store.start_trace(problem=make_problem(0), strategy="s", budget=budget, backend="b",
                                 seed=2**62, run_id=None)
    record = store.get_trace(trace_id)
    assert (record.budget, record.seed, record.status, record.result) == (budget, 2**62, "running", None)


def test_a_nan_score_is_refused_not_read_back_as_unscored(store: TraceStore) -> None:
    """SQLite keeps a NaN REAL as NULL: a done trace would read "not scored" where a NaN was recorded."""
    import dataclasses
    import math

    nodes = make_nodes(5, seed=2)
    trace_id = store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="x", seed=0)
    bad = [*nodes[:3], dataclasses.replace(nodes[3], score=math.nan), nodes[4]]
    with pytest.raises(ConfigError, match="node 3's score is NaN"):
        store.finish_trace(trace_id, result=make_result(trace_id, bad), nodes=bad, events=[])
    with pytest.raises(ConfigError, match="result's score is NaN"):
        store.finish_trace(trace_id, result=dataclasses.replace(make_result(trace_id, nodes), score=math.nan),
                           nodes=nodes, events=[])
    assert store.get_trace(trace_id).status == "running"  # nothing of either write is visible
    store.fail_trace(trace_id, error="ConfigError: node 3's score is NaN", nodes=bad, events=[])
    failed = store.get_trace(trace_id)
    assert failed.status == "failed" and len(failed.nodes) == 5 and failed.nodes[3].score is None

    infinite = [dataclasses.replace(nodes[0], logprob=-math.inf), *nodes[1:]]
    kept = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="x", seed=0)
    store.finish_trace(kept, result=make_result(kept, infinite), nodes=infinite, events=[])
    assert store.get_trace(kept).nodes == infinite  # infinities are kept exactly


def test_an_event_payload_key_that_is_not_a_string_is_refused_when_recorded() -> None:
    """The store's JSON wrote 1 as "1": {1: 0.9, "1": 0.1} read back as {"1": 0.1}, with no error."""
    from ttc.errors import ConfigError
    from ttc.trace import TraceRecorder

    recorder = TraceRecorder()
    recorder.event("tally", {"scores": {"1": 0.9, "2": [{"deep": True}]}})
    with pytest.raises(ConfigError, match=r"the 'tally' event's payload has the key 1 \(int\)"):
        recorder.event("tally", {"scores": [{1: 0.9, "1": 0.1}]})
    assert len(recorder.events()) == 1
