"""A trace is closed in one transaction: a write that fails part-way leaves nothing of itself behind."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import ConfigError, StorageError
from ttc.storage import TraceStore
from ttc.types import Node, TraceEvent, Usage


def _counts(db_path: Path, trace_id: str) -> tuple[str, int, int]:
    """Status, node count and event count as another connection sees them (committed data only)."""
    with sqlite3.connect(db_path) as raw:
        (status,) = raw.execute("SELECT status FROM traces WHERE id = ?", (trace_id,)).fetchone()
        (nodes,) = raw.execute("SELECT count(*) FROM nodes WHERE trace_id = ?", (trace_id,)).fetchone()
        (events,) = raw.execute("SELECT count(*) FROM events WHERE trace_id = ?", (trace_id,)).fetchone()
    return status, nodes, events


Corruption = Callable[[list[Node]], list[Node]]


def _start(store: TraceStore) -> str:
    return store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0)


def _duplicate_id(nodes: list[Node]) -> list[Node]:
    return [*nodes, replace(nodes[5], text="a second node 5")]


def _bad_status(nodes: list[Node]) -> list[Node]:
    return [*nodes[:10], replace(nodes[10], status="exploded"), *nodes[11:]]  # type: ignore[arg-type]


@pytest.mark.parametrize(("corrupt", "error", "says"), [
    (_duplicate_id, StorageError, r"still 'running'.*fail_trace"),  # the database refuses it mid-write
    (_bad_status, ConfigError, r"status is 'exploded'; it must be one of"),  # refused before the write
], ids=["duplicate-node-id", "invalid-status"])
def test_failed_finish_leaves_the_trace_running_with_no_nodes(store: TraceStore, db_path: Path, corrupt: Corruption,
                                                             error: type[Exception], says: str) -> None:
    trace_id = _start(store)
    nodes = make_nodes(20)
    bad_nodes = corrupt(nodes)
    with pytest.raises(error, match=says):
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=bad_nodes, events=make_events(5))
    assert _counts(db_path, trace_id) == ("running", 0, 0)
    record = store.get_trace(trace_id)
    assert (record.status, record.answer, record.nodes, record.result) == ("running", None, [], None)

    store.fail_trace(trace_id, error="StorageError: could not save the tree")
    assert _counts(db_path, trace_id) == ("failed", 0, 0)
    assert store.get_trace(trace_id).error == "StorageError: could not save the tree"


def test_unserialisable_event_payload_rolls_back_the_nodes_already_inserted(store: TraceStore,
                                                                          db_path: Path) -> None:
    trace_id = _start(store)
    nodes = make_nodes(20)
    events = [*make_events(4), TraceEvent(kind="oops", payload={"value": object()})]
    with pytest.raises(StorageError, match="still 'running'"):
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=events)
    assert _counts(db_path, trace_id) == ("running", 0, 0)
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=make_events(5))
    assert _counts(db_path, trace_id) == ("done", 20, 5)  # a correct retry still works


def test_fail_trace_keeps_the_partial_tree(store: TraceStore, db_path: Path) -> None:
    trace_id = _start(store)
    store.fail_trace(trace_id, error="BudgetExhausted", nodes=make_nodes(7), events=make_events(2))
    assert _counts(db_path, trace_id) == ("failed", 7, 2)
    record = store.get_trace(trace_id)
    assert record.nodes == make_nodes(7) and record.events == make_events(2)


def test_fail_trace_keeps_what_the_run_spent(store: TraceStore) -> None:
    """A failed trace's usage read None, though its run had been charged for every call before the failure."""
    spent = Usage(generated_tokens=120, prompt_tokens=40, backend_calls=3, wall_s=0.5)
    trace_id = _start(store)
    store.fail_trace(trace_id, error="BackendError: gone", nodes=make_nodes(3), usage=spent)
    assert store.get_trace(trace_id).usage == spent
    assert store.list_traces()[0].generated_tokens == 120
    bare = _start(store)
    store.fail_trace(bare, error="BackendError: gone")
    assert store.get_trace(bare).usage is None
    with pytest.raises(ConfigError, match=r"usage must be the ttc\.Usage"):
        store.fail_trace(_start(store), error="x", usage={"generated_tokens": 1})  # type: ignore[arg-type]


def test_fail_trace_with_an_unsavable_tree_still_records_the_failure(store: TraceStore, db_path: Path) -> None:
    trace_id = _start(store)
    store.fail_trace(trace_id, error="ValueError: bad step", nodes=_duplicate_id(make_nodes(8)),
                     events=make_events(3))
    assert _counts(db_path, trace_id) == ("failed", 0, 0)  # the savepoint dropped the whole partial tree
    error = store.get_trace(trace_id).error or ""
    assert error.startswith("ValueError: bad step (its 9 nodes and 3 events were not saved")


def test_no_failure_ever_reads_as_done(store: TraceStore, db_path: Path) -> None:
    """Every way of breaking a finish, one after another on the same store: none may leave a 'done' trace."""
    nodes = make_nodes(20)
    breakages = [
        (_duplicate_id(nodes), make_events(5)),
        (_bad_status(nodes), make_events(5)),
        (nodes, [TraceEvent(kind="x", payload={"set": {1, 2}})]),
        ([replace(nodes[0], token_count=2**70)], []),  # does not fit an SQLite integer
    ]
    ids = []
    for bad_nodes, events in breakages:
        trace_id = _start(store)
        ids.append(trace_id)
        with pytest.raises((StorageError, ConfigError)):
            store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=bad_nodes, events=events)
        store.fail_trace(trace_id, error="finish failed")
    assert {_counts(db_path, trace_id) for trace_id in ids} == {("failed", 0, 0)}
    assert store.list_traces(status="done") == []


def test_non_finite_floats_survive_as_far_as_sqlite_allows(store: TraceStore) -> None:
    trace_id = _start(store)
    node = Node(id=0, parent=None, depth=0, text="x", token_count=1, logprob=-math.inf, score=math.inf,
                step_scores=(math.inf, -math.inf))
    store.finish_trace(trace_id, result=make_result(trace_id, [node]), nodes=[node], events=[])
    assert store.get_trace(trace_id).nodes == [node]
