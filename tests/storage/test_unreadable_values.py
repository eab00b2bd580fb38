"""Values the store used to take and then could not give back: a meta or payload nested hundreds of levels deep, a
step score that is no number. Each is refused when written, and one already stored is a StorageError, not a crash."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import ConfigError, StorageError
from ttc.storage import TraceStore
from ttc.storage import database as database_module
from ttc.storage import export as export_module
from ttc.storage.checks import MAX_NESTING
from ttc.storage.export import strict_json_text
from ttc.storage.records import _problem_json
from ttc.types import Node, Problem, TraceEvent


def nested(depth: int) -> list[object]:
    """A list ``depth`` levels deep (itself included), built without recursion."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _start(store: TraceStore, index: int = 0) -> str:
    return store.start_trace(problem=make_problem(index), strategy="beam", budget=BUDGET, backend="b", seed=0)


def _finish(store: TraceStore, trace_id: str, nodes: list[Node], events: list[TraceEvent]) -> None:
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=events)


def _store_raw(db_path: Path, sql: str, *params: object) -> None:
    """Write as an older ttc (one without today's refusals) would have: straight into the file."""
    with sqlite3.connect(db_path) as raw:
        raw.execute(sql, params)


def test_a_meta_nested_500_deep_exports(store: TraceStore, db_path: Path) -> None:
    """``asdict`` deep-copied the meta two stack frames a level: the export (and the viewer's JSON) failed."""
    trace_id = _start(store)
    _finish(store, trace_id, make_nodes(3), [])
    deep = {"level": nested(500)}
    _store_raw(db_path, "UPDATE problems SET meta = ?", json.dumps(deep))
    exported = store.export_trace(trace_id)
    assert exported["problem"]["meta"] == deep  # type: ignore[index]
    assert json.loads(strict_json_text(exported, "trace"))["problem"]["meta"] == deep


def test_the_export_names_every_field_of_a_problem() -> None:
    """The problem is exported field by field: a field added to Problem must be added there too."""
    problem = Problem("q", gold="1", dataset="d", index=3, meta={"a": [1, {"b": None}]}, context="c")
    assert _problem_json(problem) == asdict(problem)
    assert list(_problem_json(problem)) == [f.name for f in fields(Problem)]


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 3000])
def test_a_payload_nested_past_the_limit_is_refused_and_the_trace_stays_running(store: TraceStore,
                                                                                depth: int) -> None:
    trace_id = _start(store)
    nodes = make_nodes(4)
    events = [*make_events(2), TraceEvent(kind="deep", payload={"p": nested(depth - 1)})]
    with pytest.raises(ConfigError, match=rf"the payload of event 2 \('deep'\) is nested more than {MAX_NESTING} "):
        _finish(store, trace_id, nodes, events)
    assert store.get_trace(trace_id).status == "running"  # nothing of the write is visible
    store.fail_trace(trace_id, error="ConfigError: too deep", nodes=nodes, events=events)
    failed = store.get_trace(trace_id)  # the failure is recorded, the tree it cannot give back is not
    assert failed.status == "failed" and failed.nodes == [] and failed.events == []
    assert (failed.error or "").startswith("ConfigError: too deep (its 4 nodes and 3 events were not saved: the "
                                           "payload of event 2")


def test_a_payload_at_the_limit_is_kept(store: TraceStore) -> None:
    trace_id = _start(store)
    events = [TraceEvent(kind="deep", payload={"p": nested(MAX_NESTING - 1)})]
    _finish(store, trace_id, make_nodes(2), events)
    assert store.get_trace(trace_id).events == events


def test_a_meta_or_run_value_nested_past_the_limit_is_refused(store: TraceStore) -> None:
    too_deep = nested(MAX_NESTING)
    with pytest.raises(ConfigError, match=f"the problem's meta is nested more than {MAX_NESTING} levels"):
        store.start_trace(problem=Problem("q", meta={"level": too_deep}), strategy="beam", budget=BUDGET,
                          backend="b", seed=0)
    with pytest.raises(ConfigError, match="the run config is nested"):
        store.create_run(kind="eval", config={"x": too_deep})
    run_id = store.create_run(kind="eval", config={"x": nested(MAX_NESTING - 1)})
    with pytest.raises(ConfigError, match="the run summary is nested"):
        store.finish_run(run_id, status="done", summary={"x": too_deep})
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(ConfigError, match="the run config is nested"):  # measured, not overflowed
        store.create_run(kind="eval", config={"x": cyclic})
    assert store.list_traces() == [] and [run.id for run in store.list_runs()] == [run_id]


def test_a_stored_value_too_deep_to_read_is_a_storage_error(store: TraceStore, db_path: Path) -> None:
    """The reader's RecursionError escaped as a traceback from every read of the trace."""
    trace_id = _start(store)
    _finish(store, trace_id, make_nodes(2), make_events(1))
    _store_raw(db_path, "UPDATE events SET payload = ?", '{"p": ' + "[" * 3000 + "]" * 3000 + "}")
    with pytest.raises(StorageError, match=rf"holds a value nested too deeply to read back while reading trace "
                                           rf"{trace_id}.*more than {MAX_NESTING} levels"):
        store.get_trace(trace_id)
    assert [t.id for t in store.list_traces()] == [trace_id]  # the rest of the store still reads


@pytest.mark.parametrize("bad", [
    {"step_scores": (0.5, None)},
    {"step_scores": ("0.5",)},
    {"step_scores": (True,)},
    {"step_scores": (10**400,)},
    {"step_scores": "0.5"},
    {"score": "0.9"},
    {"logprob": None, "score": [0.5]},
])
def test_a_node_number_that_is_no_number_is_refused_like_nan(store: TraceStore, bad: dict[str, object]) -> None:
    """``step_scores=(None,)`` was stored, and every read of the done trace then failed as a damaged database."""
    trace_id = _start(store)
    nodes = make_nodes(4)
    broken = [*nodes[:2], replace(nodes[2], **bad), nodes[3]]  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"node 2's (step_scores|score).* which the store cannot"):
        _finish(store, trace_id, broken, [])
    assert store.get_trace(trace_id).status == "running"
    store.fail_trace(trace_id, error="ConfigError: bad score", nodes=broken, events=make_events(2))
    failed = store.get_trace(trace_id)  # readable, with the failure and why the tree is missing
    assert failed.status == "failed" and failed.nodes == []
    assert "were not saved: node 2's" in (failed.error or "")


@pytest.mark.parametrize(("bad", "field"), [
    ({"id": 1.5}, "id"),
    ({"id": -1}, "id"),
    ({"id": 2**31}, "id"),
    ({"parent": "1"}, "parent"),
    ({"depth": 2**40}, "depth"),
    ({"depth": True}, "depth"),
    ({"token_count": -5}, "token_count"),
    ({"token_count": 2**70}, "token_count"),
    ({"text": 5}, "text"),
    ({"answer": 18}, "answer"),
    ({"reason": b"pruned"}, "reason"),
    ({"status": "done"}, "status"),
])
def test_a_node_field_its_type_does_not_allow_is_refused_by_every_database(
        store: TraceStore, bad: dict[str, object], field: str) -> None:
    """SQLite kept an id of 1.5, a depth of 2**40, a negative token count and a text given as a number (read back as
    a string), where PostgreSQL refused ids past 32 bits: one trace was kept by one database and not the other."""
    trace_id = _start(store)
    nodes = make_nodes(4)
    broken = [*nodes[:2], replace(nodes[2], **bad), nodes[3]]  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"node .*'s {field} is .*(cannot keep|must be one of)"):
        _finish(store, trace_id, broken, [])
    assert store.get_trace(trace_id).status == "running"


@pytest.mark.parametrize(("bad", "field"), [
    ({"node_id": 2**40}, "node_id"),
    ({"node_id": -3}, "node_id"),
    ({"node_id": "2"}, "node_id"),
    ({"kind": 5}, "kind"),
    ({"kind": ""}, "kind"),
    ({"t": "soon"}, "t"),
    ({"t": math.nan}, "t"),
    ({"t": math.inf}, "t"),
    ({"payload": [1, 2]}, "payload"),
])
def test_an_event_field_its_type_does_not_allow_is_refused_by_every_database(
        store: TraceStore, bad: dict[str, object], field: str) -> None:
    """SQLite kept a node id of 2**40 and a kind given as a number, PostgreSQL a NaN time; a list payload failed
    with a raw TypeError."""
    trace_id = _start(store)
    events = make_events(3)
    broken = [events[0], replace(events[1], **bad), events[2]]  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"event 1.*'s {field} is .*which the store cannot keep"):
        _finish(store, trace_id, make_nodes(3), broken)
    assert store.get_trace(trace_id).status == "running"


def test_node_ids_and_depths_up_to_32_bits_are_kept(store: TraceStore) -> None:
    trace_id = _start(store)
    top = 2**31 - 1
    nodes = [Node(id=top - 1, parent=None, depth=0, text="", token_count=0),
             Node(id=top, parent=top - 1, depth=top, text="x", token_count=2**63 - 1, answer="", reason="")]
    _finish(store, trace_id, nodes, [])
    assert store.get_trace(trace_id).nodes == nodes


def test_a_result_score_that_is_no_number_is_refused(store: TraceStore) -> None:
    trace_id = _start(store)
    nodes = make_nodes(3)
    with pytest.raises(ConfigError, match="the result's score is 'high'"):
        store.finish_trace(trace_id, result=replace(make_result(trace_id, nodes), score="high"),  # type: ignore[arg-type]
                           nodes=nodes, events=[])
    assert store.get_trace(trace_id).status == "running"


def test_numbers_of_every_kind_the_node_type_allows_are_kept(store: TraceStore) -> None:
    trace_id = _start(store)
    node = Node(id=0, parent=None, depth=0, text="x", token_count=1, logprob=-3, score=1,
                step_scores=(1, 0.5, math.inf, -math.inf))
    _finish(store, trace_id, [node], [])
    assert store.get_trace(trace_id).nodes == [node]
    nan_step = _start(store, 1)  # SQLite's JSON keeps a NaN step score, so it is not refused
    _finish(store, nan_step, [replace(node, step_scores=(math.nan,))], [])
    assert math.isnan(store.get_trace(nan_step).nodes[0].step_scores[0])


def test_json_text_too_deep_for_the_encoder_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conversion was guarded but not the encoder after it: its RecursionError reached the viewer as a 500
    and the CLI as a traceback."""

    class Recursing:
        @staticmethod
        def dumps(*args: object, **kwargs: object) -> str:
            raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")

    assert strict_json_text({"a": [1.5, math.inf]}, "trace") == '{"a": [1.5, "Infinity"]}'
    monkeypatch.setattr(export_module, "json", Recursing)
    with pytest.raises(StorageError, match="cannot write trace as JSON: it is nested too deeply") as caught:
        strict_json_text({"a": 1}, "trace")
    assert "\n" not in str(caught.value)


def test_a_reader_in_a_folder_it_cannot_write_reads_a_snapshot_and_creates_nothing(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only open of a WAL database creates its -wal and -shm files, and fails where the folder is not
    writable; the file alone holds every trace once no writer has it open."""
    with TraceStore(str(db_path)) as writer:
        trace_id = _start(writer)
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]
    with TraceStore(str(db_path), read_only=True) as live:
        assert not live.snapshot and [t.id for t in live.list_traces()] == [trace_id]
    for side in ("-wal", "-shm"):  # what a live reader leaves
        Path(f"{db_path}{side}").unlink(missing_ok=True)
    monkeypatch.setattr(database_module, "_folder_writable", lambda folder: False)
    with TraceStore(str(db_path), read_only=True) as reader:
        assert reader.snapshot and [t.id for t in reader.list_traces()] == [trace_id]
        assert reader.get_trace(trace_id).status == "running"
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_snapshot_changed_under_its_reader_is_not_called_damaged(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite reads an immutable file that another process rewrote as damaged: the advice is to reopen it, not
    to restore a file that is likely whole."""
    with TraceStore(str(db_path)) as writer:
        for _ in range(20):
            _start(writer)
    for side in ("-wal", "-shm"):
        Path(f"{db_path}{side}").unlink(missing_ok=True)
    monkeypatch.setattr(database_module, "_folder_writable", lambda folder: False)
    with TraceStore(str(db_path), read_only=True) as reader:
        assert reader.snapshot
        size = db_path.stat().st_size
        with db_path.open("r+b") as raw:  # what a writer's pages look like to a reader that assumed none
            raw.seek(4096)
            raw.write(bytes(range(256)) * ((size - 4096) // 256))
        reader._read_engine.dispose()  # a connection opened now, as the viewer's pool opens them
        with pytest.raises(StorageError, match=r"read as a snapshot.*open it again.*if it fails again then"):
            reader.list_traces()


def test_a_reader_beside_a_wal_file_never_reads_a_snapshot(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The -wal file holds committed traces that the database file does not have yet: a snapshot would miss them."""
    monkeypatch.setattr(database_module, "_folder_writable", lambda folder: False)
    with TraceStore(str(db_path)) as writer:  # open: its -wal file is there
        trace_id = _start(writer)
        with TraceStore(str(db_path), read_only=True) as reader:
            assert not reader.snapshot and [t.id for t in reader.list_traces()] == [trace_id]


def test_a_reader_in_a_read_only_folder_reads_the_store(db_path: Path, permissions_bind: bool) -> None:
    if not permissions_bind:
        return  # run again without root's privileges, and passed there
    with TraceStore(str(db_path)) as writer:
        trace_id = _start(writer)
    db_path.parent.chmod(0o555)
    try:
        with TraceStore(str(db_path), read_only=True) as reader:
            assert reader.snapshot and [t.id for t in reader.list_traces()] == [trace_id]
    finally:
        db_path.parent.chmod(0o755)


@pytest.mark.parametrize("field", ["meta", "gold", "dataset"])
def test_a_problem_field_that_is_not_unicode_is_refused_before_its_trace_opens(store: TraceStore, field: str) -> None:
    """A lone surrogate in a dataset row's meta (a JSON escape such as \\ud800) escaped evaluate as a raw
    UnicodeEncodeError, from hashing the problem, and failed the whole run."""
    value: object = {"note": "\ud800"} if field == "meta" else "\ud800"
    problem = replace(make_problem(0), **{field: value})
    with pytest.raises(ConfigError, match="not valid Unicode"):
        store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="b", seed=0)
    assert store.list_traces() == []
