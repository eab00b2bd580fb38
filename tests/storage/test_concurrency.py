"""Many writers at once, on threads, on an event loop, and in two processes: no row is lost."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.storage import TraceStore

WRITERS = 200
NODES = 20
EVENTS = 5


def _totals(db_path: Path) -> tuple[int, int, int, int]:
    with sqlite3.connect(db_path) as raw:
        done = raw.execute("SELECT count(*) FROM traces WHERE status = 'done'").fetchone()[0]
        traces = raw.execute("SELECT count(*) FROM traces").fetchone()[0]
        nodes = raw.execute("SELECT count(*) FROM nodes").fetchone()[0]
        events = raw.execute("SELECT count(*) FROM events").fetchone()[0]
    return done, traces, nodes, events


def _one_trace(store: TraceStore, run_id: str, i: int) -> str:
    nodes = make_nodes(NODES, seed=i)
    trace_id = store.start_trace(problem=make_problem(i), strategy="beam", budget=BUDGET, backend="b", seed=i,
                                 run_id=run_id)
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=make_events(EVENTS, i))
    return trace_id


def test_200_threads_lose_no_row(store: TraceStore, db_path: Path) -> None:
    run_id = store.create_run(kind="eval", config={})
    barrier = threading.Barrier(WRITERS)
    ids: list[str] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            barrier.wait()
            ids.append(_one_trace(store, run_id, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == WRITERS
    assert _totals(db_path) == (WRITERS, WRITERS, WRITERS * NODES, WRITERS * EVENTS)
    assert store.done_problem_indices(run_id) == set(range(WRITERS))
    sample = store.get_trace(ids[123])
    assert sample.nodes == make_nodes(NODES, seed=sample.problem.index or 0)


@pytest.mark.anyio
async def test_200_async_tasks_lose_no_row_and_do_not_block_the_loop(store: TraceStore, db_path: Path) -> None:
    run_id = store.create_run(kind="eval", config={})
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:  # keeps running only if no write blocks the event loop
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.002)

    async def writer(i: int) -> str:
        nodes = make_nodes(NODES, seed=i)
        trace_id = await store.astart_trace(problem=make_problem(i), strategy="beam", budget=BUDGET,
                                            backend="b", seed=i, run_id=run_id)
        await store.afinish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes,
                                  events=make_events(EVENTS, i))
        return trace_id

    tick_task = asyncio.create_task(ticker())
    ids = await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    stop.set()
    await tick_task
    assert len(set(ids)) == WRITERS
    assert _totals(db_path) == (WRITERS, WRITERS, WRITERS * NODES, WRITERS * EVENTS)
    assert ticks > 10  # the loop kept turning while 400 transactions committed


@pytest.mark.anyio
async def test_async_fail_and_a_cancelled_finish_still_lands(db_path: Path) -> None:
    """A finish whose awaiting task is cancelled is still written: the caller handed the trace over."""
    store = TraceStore(str(db_path), busy_timeout_s=5.0)
    try:
        nodes = make_nodes(NODES)
        failing = await store.astart_trace(problem=make_problem(1), strategy="s", budget=BUDGET, backend="b",
                                           seed=None)
        await store.afail_trace(failing, error="boom", nodes=nodes[:3])
        trace_id = await store.astart_trace(problem=make_problem(2), strategy="s", budget=BUDGET, backend="b",
                                            seed=None)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer waits for this lock, so the finish stays pending
        task = asyncio.create_task(store.afinish_trace(trace_id, result=make_result(trace_id, nodes),
                                                       nodes=nodes, events=make_events(EVENTS)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker.execute("ROLLBACK")
        blocker.close()
    finally:
        store.close()  # drains the queue
    assert _totals(db_path) == (1, 2, NODES + 3, EVENTS)
    with TraceStore(str(db_path)) as reopened:
        assert reopened.get_trace(failing).error == "boom"
        assert reopened.get_trace(trace_id).status == "done"


def test_two_processes_write_one_file(store: TraceStore, db_path: Path,
                                      spawn_worker: Callable[..., subprocess.Popen[str]]) -> None:
    run_id = store.create_run(kind="eval", config={"processes": 2})
    other = spawn_worker(db_path, "write", run_id, "40")
    mine = [_one_trace(store, run_id, i) for i in range(40)]
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.strip() == "ok"
    assert _totals(db_path) == (80, 80, 80 * NODES, 80 * EVENTS)
    summaries = store.list_traces(run_id=run_id, limit=1000)
    assert {t.backend for t in summaries} == {"b", "worker"}
    assert {t.id for t in summaries} >= set(mine)
    assert store.done_problem_indices(run_id) == set(range(40)) | set(range(1000, 1040))
