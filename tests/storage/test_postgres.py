"""The trace store on a PostgreSQL server: the same values, refusals and concurrency as on SQLite.

Run with ``TTC_TEST_PG_URL=postgresql+psycopg://USER:PASSWORD@HOST/DB``, a role that may create databases: every
test gets a database of its own, dropped at the end.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

URL_VAR = "TTC_TEST_PG_URL"
if not os.environ.get(URL_VAR):
    pytest.skip(f"set {URL_VAR}=postgresql+psycopg://USER:PASSWORD@HOST/DB (a role that may CREATE DATABASE) to run "
                "the PostgreSQL tests", allow_module_level=True)
psycopg = pytest.importorskip("psycopg")

from sqlalchemy.engine import make_url  # noqa: E402
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result  # noqa: E402

from ttc.errors import ConfigError, NotFound, StorageError  # noqa: E402
from ttc.storage import TraceStore  # noqa: E402
from ttc.storage.database import CREATION_LOCK  # noqa: E402
from ttc.types import Node, TraceEvent  # noqa: E402

Raw = Callable[[], Any]
"""Opens a psycopg connection (autocommit) to the test's database."""


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, empty database on the server of TTC_TEST_PG_URL; its URL. Stores (and worker processes started
    after this fixture) wait up to a minute for a lock, longer than a test waits for them to queue on it."""
    monkeypatch.setenv("TTC_DB_BUSY_TIMEOUT_S", "60")
    given = os.environ[URL_VAR]
    name = f"ttc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_conninfo(given), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(given).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_conninfo(given), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def raw(pg_url: str) -> Iterator[Raw]:
    opened: list[Any] = []

    def connect() -> Any:
        connection = psycopg.connect(_conninfo(pg_url), autocommit=True)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


def _tables(connect: Raw) -> set[str]:
    rows = connect().execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    return {row[0] for row in rows}


def _done_trace(store: TraceStore, *, seed: int = 0, nodes: list[Node] | None = None,
                events: list[TraceEvent] | None = None, run_id: str | None = None) -> str:
    trace_id = store.start_trace(problem=make_problem(seed % 1000), strategy="beam", budget=BUDGET, backend="b",
                                 seed=seed, run_id=run_id)
    nodes = make_nodes(5) if nodes is None else nodes
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes,
                       events=make_events(3) if events is None else events)
    return trace_id


def _wait_for_lock_waiters(connect: Raw, count: int, *, lock_type: str | None = None) -> None:
    """Block until ``count`` other connections wait on a lock (of ``lock_type``, if given)."""
    query = "SELECT count(*) FROM pg_locks WHERE NOT granted"
    if lock_type is not None:
        query += f" AND locktype = '{lock_type}'"
    watcher = connect()
    deadline = time.monotonic() + 20
    while watcher.execute(query).fetchone()[0] < count:
        assert time.monotonic() < deadline, f"{count} processes never waited on the lock"
        time.sleep(0.05)


def test_64_bit_seeds_indices_and_token_counts_are_kept(pg_url: str) -> None:
    """They were 32-bit INTEGER columns: 'integer out of range' for any seed from 2**31."""
    big = 2**63 - 1
    with TraceStore(pg_url) as store:
        problem = dataclasses.replace(make_problem(1), index=2**62)
        trace_id = store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="b", seed=big)
        nodes = [dataclasses.replace(node, token_count=2**40 + node.id) for node in make_nodes(4)]
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
        record = store.get_trace(trace_id)
    assert (record.seed, record.problem.index, record.nodes) == (big, 2**62, nodes)


def test_non_finite_floats_in_json_columns_round_trip(pg_url: str) -> None:
    """PostgreSQL's json has no NaN or Infinity: finish_trace failed and the trace stayed running."""
    nodes = [dataclasses.replace(make_nodes(2)[0], step_scores=(0.5, math.inf, -math.inf)), make_nodes(2)[1]]
    events = [TraceEvent(kind="score", payload={"best": math.inf, "all": [math.nan, 1.0], "$ttc": "NaN",
                                                  "own": {"$ttc": "Infinity"}}, t=0.0)]
    with TraceStore(pg_url) as store:
        run_id = store.create_run(kind="eval", config={"temperature": math.inf, "floor": -math.inf})
        trace_id = _done_trace(store, nodes=nodes, events=events, run_id=run_id)
        store.finish_run(run_id, status="done", summary={"accuracy": math.nan})
        record = store.get_trace(trace_id)
        run = store.get_run(run_id)
    assert record.status == "done" and record.nodes == nodes
    payload = record.events[0].payload
    assert payload["best"] == math.inf and math.isnan(payload["all"][0]) and payload["all"][1] == 1.0
    assert payload["$ttc"] == "NaN" and payload["own"] == {"$ttc": "Infinity"}  # the caller's own, not floats
    assert run.config == {"temperature": math.inf, "floor": -math.inf} and run.summary is not None
    assert math.isnan(run.summary["accuracy"])


def test_nul_characters_in_text_are_kept(pg_url: str, raw: Raw) -> None:
    """PostgreSQL's text refuses NUL; the store failed as if the server were down, and fail_trace lost the
    failure itself."""
    nodes = [dataclasses.replace(node, text=f"a\x00b \u2400 {node.id}\x00") for node in make_nodes(3)]
    problem = dataclasses.replace(make_problem(7), question="what is \x00?")
    with TraceStore(pg_url) as store:
        run_id = store.create_run(kind="eval", name="run\x00name", config={"note": "a\x00b"})
        trace_id = store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="b", seed=1,
                                     run_id=run_id)
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
        failed = store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="b", seed=2)
        store.fail_trace(failed, error="model wrote \x00 here", nodes=nodes)
        record = store.get_trace(trace_id)
        assert record.nodes == nodes and record.problem.question == "what is \x00?"
        assert store.get_run(run_id).name == "run\x00name"
        assert store.get_run(run_id).config == {"note": "a\x00b"}
        failure = store.get_trace(failed)
        assert (failure.status, failure.error, failure.nodes) == ("failed", "model wrote \x00 here", nodes)
    stored = raw().execute("SELECT text FROM nodes WHERE trace_id = %s AND id = 0", (trace_id,)).fetchone()[0]
    assert stored == "a\u24000b \u2400\u2400 0\u24000"


def test_an_id_with_a_nul_is_not_found_and_data_errors_are_data_errors(pg_url: str) -> None:
    with TraceStore(pg_url) as store:
        trace_id = _done_trace(store)
        with pytest.raises(NotFound, match="never contain a NUL"):
            store.get_trace(trace_id[:8] + "\x00")
        with pytest.raises(NotFound, match="never contain a NUL"):
            store.list_traces(run_id="abcdef\x00")
        with pytest.raises(NotFound):
            store.fail_trace(trace_id[:-1] + "\x00", error="x")
        with pytest.raises(StorageError, match="rejected the data") as caught:
            store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=2**64)
        assert "server is running" not in str(caught.value)
        assert store.get_trace(trace_id).status == "done"  # the store works on after the refusal


def test_ids_and_prefixes_are_found_whatever_their_case(pg_url: str) -> None:
    with TraceStore(pg_url) as store:
        run_id = store.create_run(kind="eval", config={})
        trace_id = _done_trace(store, run_id=run_id)
        assert store.get_trace(trace_id.upper()).id == trace_id
        assert store.get_trace(trace_id[:8].upper()).id == trace_id
        assert store.get_run(run_id[:6].upper()).id == run_id
        assert [t.id for t in store.list_traces(run_id=run_id.upper())] == [trace_id]


def test_a_lock_held_past_busy_timeout_is_reported_and_the_store_recovers(pg_url: str, raw: Raw) -> None:
    """The busy timeout was never applied on PostgreSQL: a locked table was waited for forever."""
    with TraceStore(pg_url, busy_timeout_s=0.5) as store:
        holder = raw()
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"is locked: another connection held it for more than 0\.5s"):
            store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
        assert time.monotonic() - started < 30
        holder.execute("ROLLBACK")
        assert store.get_trace(_done_trace(store)).status == "done"


def test_a_dropped_table_is_refused_not_created_again_empty(pg_url: str, raw: Raw) -> None:
    with TraceStore(pg_url) as store:
        _done_trace(store)
    raw().execute("DROP TABLE events")
    for read_only in (False, True):
        with pytest.raises(StorageError, match=r"not laid out as ttc writes it \(table events is missing\)"):
            TraceStore(pg_url, read_only=read_only)
    assert "events" not in _tables(raw)


def test_another_programs_tables_under_ttcs_names_are_named_as_such(pg_url: str, raw: Raw) -> None:
    """A shared database is shared by design: a table named like ttc's was called a damaged store to restore."""
    raw().execute("CREATE TABLE runs (id integer PRIMARY KEY)")
    with pytest.raises(StorageError, match=r"another program's tables may have ttc's names.*search_path") as caught:
        TraceStore(pg_url)
    assert "restore it from a copy" not in str(caught.value)


def test_a_store_from_before_the_later_tables_opens_and_gains_them(pg_url: str, raw: Raw) -> None:
    with TraceStore(pg_url) as store:
        trace_id = _done_trace(store)
    raw().execute("DROP TABLE trace_owners, run_leases")
    with TraceStore(pg_url, read_only=True) as store:
        assert store.get_trace(trace_id).status == "done"
    with TraceStore(pg_url) as store:
        store.claim_run(store.create_run(kind="eval", config={}))
    assert {"trace_owners", "run_leases"} <= _tables(raw)


def test_writers_opening_a_fresh_database_at_once_take_turns(pg_url: str, raw: Raw, spawn_worker: Any) -> None:
    """They raced on create_all: 'duplicate key value violates unique constraint pg_type_typname_nsp_index'."""
    holder = raw()
    holder.execute("SELECT pg_advisory_lock(%s)", (CREATION_LOCK,))
    workers = [spawn_worker(pg_url, "open") for _ in range(3)]
    _wait_for_lock_waiters(raw, len(workers), lock_type="advisory")
    holder.execute("SELECT pg_advisory_unlock(%s)", (CREATION_LOCK,))
    assert [worker.stdout.readline().strip() for worker in workers] == ["ok"] * len(workers)
    with TraceStore(pg_url) as store:
        assert store.get_trace(_done_trace(store)).status == "done"


def test_concurrent_claims_of_a_run_leave_one_holder_and_explain_the_refusal(
    pg_url: str, raw: Raw, spawn_worker: Any
) -> None:
    """Under READ COMMITTED both claimants read no lease: the second failed on run_leases_pkey as bad data."""
    with TraceStore(pg_url) as store:
        run_id = store.create_run(kind="eval", config={})
    holder = raw()
    holder.execute("BEGIN")
    holder.execute("SELECT id FROM runs WHERE id = %s FOR UPDATE", (run_id,))
    workers = [spawn_worker(pg_url, "claim", run_id) for _ in range(2)]
    _wait_for_lock_waiters(raw, len(workers))
    holder.execute("ROLLBACK")
    answers = sorted(worker.stdout.readline().strip() for worker in workers)
    assert answers[0] == "claimed", answers
    assert answers[1].startswith(f"error: run {run_id} is being evaluated by process "), answers


def test_a_reader_of_an_empty_database_says_no_store_was_created_yet(pg_url: str, raw: Raw) -> None:
    with pytest.raises(StorageError, match=r"no trace store in the database .* yet: a first solve or eval creates "
                                           r"it") as caught:
        TraceStore(pg_url, read_only=True)
    assert "restore it from a copy" not in str(caught.value)
    assert _tables(raw) == set()


def test_a_nan_score_is_still_refused(pg_url: str) -> None:
    """A float column would keep NaN here, but SQLite's would not: both refuse it alike."""
    with TraceStore(pg_url) as store:
        trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
        nodes = make_nodes(2)
        with pytest.raises(ConfigError, match="score is NaN"):
            store.finish_trace(trace_id, result=dataclasses.replace(make_result(trace_id, nodes), score=math.nan),
                               nodes=nodes, events=[])


def test_a_write_after_the_server_closed_the_idle_connection_succeeds(pg_url: str) -> None:
    """The writer kept one connection for the store's life: once the server closed it for sitting idle, the next
    write failed although the server was there (and a failure recorded with fail_trace was lost with it)."""
    closing = make_url(pg_url).update_query_dict({"options": "-cidle_session_timeout=500"})
    with TraceStore(closing.render_as_string(hide_password=False)) as store:
        trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
        time.sleep(1.5)
        store.fail_trace(trace_id, error="boom")
        assert (store.get_trace(trace_id).status, store.get_trace(trace_id).error) == ("failed", "boom")
        time.sleep(1.5)
        assert store.get_trace(_done_trace(store, seed=2)).status == "done"


def test_a_write_after_the_server_ended_the_writers_connection_succeeds(pg_url: str, raw: Raw) -> None:
    """As after a server restart: the connection the last write used is gone before the next one."""
    with TraceStore(pg_url) as store:
        trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
        admin = raw()
        # The store has read nothing yet, so its one connection to the database is the writer's.
        pids = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        assert len(pids) == 1, pids
        assert admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pids[0],)).fetchone()[0]
        store.fail_trace(trace_id, error="boom")
        assert store.get_trace(trace_id).status == "failed"


class _Relay:
    """A TCP relay to the server that can stop passing anything on, as a network that drops every packet does: the
    connections stay open and no answer comes back, so the driver waits without end."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._passing = threading.Event()
        self._passing.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._passing.clear()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pass, args=(source, target), daemon=True).start()

    def _pass(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._passing.wait()
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            return


def test_a_signal_ends_an_eval_whose_server_stopped_answering(pg_url: str, raw: Raw) -> None:
    """The open traces' failures waited on the server for good: SIGTERM (and every signal after it) left `ttc eval`
    running."""
    url = make_url(pg_url)
    relay = _Relay(url.host or "127.0.0.1", url.port or 5432)
    relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    env = {**os.environ, "TTC_DB_BUSY_TIMEOUT_S": "1", "TTC_SCRIPTED_DELAY_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "ttc", "eval", "--backend", "scripted", "--dataset", "synthetic",
                             "--limit", "40", "--concurrency", "2", "--db", relayed],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        watcher = raw()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            tables = watcher.execute("SELECT to_regclass('traces') IS NOT NULL").fetchone()[0]
            if tables and watcher.execute("SELECT count(*) FROM traces WHERE status = 'done'").fetchone()[0] >= 2:
                break
            time.sleep(0.05)
        relay.freeze()
        time.sleep(1.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        relay.close()
    assert time.monotonic() - signalled < 30
    assert proc.returncode == 130, errors
    assert errors.strip().splitlines()[-1].startswith("interrupted: the trace store did not answer for 5s"), errors
    with TraceStore(pg_url) as store:  # the next open marks what the ended process left open
        [run] = store.list_runs()
        assert run.status == "interrupted"
        assert not store.list_traces(run_id=run.id, status="running", limit=None)
