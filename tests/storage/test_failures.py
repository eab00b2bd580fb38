"""A locked, unwritable or foreign database, and a process killed mid-trace: errors say what to do."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import ConfigError, StorageError
from ttc.storage import TraceStore, checks
from ttc.storage import writer as writer_module
from ttc.types import TraceEvent

BUSY_S = 0.3


def _start(store: TraceStore) -> str:
    return store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0)


def test_a_lock_held_past_busy_timeout_is_reported_and_the_store_recovers(db_path: Path) -> None:
    with TraceStore(str(db_path), busy_timeout_s=BUSY_S) as store:
        trace_id = _start(store)
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            began = time.perf_counter()
            nodes = make_nodes(5)
            with pytest.raises(StorageError) as caught:
                store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
            waited = time.perf_counter() - began
            message = str(caught.value)
            assert "locked" in message and str(db_path) in message
            assert "Stop the other program" in message and "TTC_DB" in message
            assert BUSY_S * 0.9 <= waited < BUSY_S + 5
            with pytest.raises(StorageError, match="locked"):  # opening needs the write lock too
                TraceStore(str(db_path), busy_timeout_s=BUSY_S)
            assert store.get_trace(trace_id).status == "running"  # WAL: reads go on while the writer waits
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
        assert store.get_trace(trace_id).status == "done"


def test_a_lock_released_within_busy_timeout_is_waited_for(db_path: Path) -> None:
    with TraceStore(str(db_path), busy_timeout_s=5.0) as store:
        holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO runs (id, kind, name, config, status, started_at) "
                       "VALUES ('r1', 'solve', NULL, '{}', 'running', '2024-01-01 00:00:00.000000')")
        releaser = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        releaser.start()
        trace_id = store.start_trace(problem=make_problem(1), strategy="s", budget=BUDGET, backend="b",
                                     seed=None, run_id="r1")
        releaser.join()
        holder.close()
        assert store.get_trace(trace_id).run_id == "r1"


def _start_while_locked_for(store: TraceStore, db_path: Path, seconds: float) -> str:
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    releaser = threading.Timer(seconds, lambda: holder.execute("COMMIT"))
    releaser.start()
    try:
        return _start(store)
    finally:
        releaser.join()
        holder.close()


def test_a_busy_timeout_sqlite_cannot_hold_is_refused_not_turned_into_no_wait(db_path: Path) -> None:
    """SQLite keeps the timeout in a C int of milliseconds: 3e6 s overflowed to 0 and nothing was waited for."""
    with pytest.raises(ConfigError, match=r"busy_timeout_s must be .*at most 2147483"):
        TraceStore(str(db_path), busy_timeout_s=3e6)
    with pytest.raises(ConfigError, match=r"busy_timeout_s must be a finite number.*got '5'"):
        TraceStore(str(db_path), busy_timeout_s="5")  # type: ignore[arg-type]  # a raw TypeError from <=
    with pytest.raises(ConfigError, match="must be named by a path or a database URL, got 123"):
        TraceStore(123)  # type: ignore[arg-type]
    with TraceStore(str(db_path), busy_timeout_s=2147483.0) as store:  # the longest one SQLite can hold
        trace_id = _start_while_locked_for(store, db_path, BUSY_S)
        assert store.get_trace(trace_id).status == "running"


def test_a_path_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=r"is a file, not a directory.*TTC_DB"):
        TraceStore(str(blocker / "traces.db"))


def test_a_directory_as_the_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"cannot open the trace database .*TTC_DB"):
        TraceStore(str(tmp_path))


def test_a_read_only_database_is_refused_at_open(db_path: Path) -> None:
    TraceStore(str(db_path)).close()
    with pytest.raises(StorageError, match=r"not writable.*make the file and its directory writable"):
        TraceStore(f"sqlite:///file:{db_path}?mode=ro&uri=true")


def test_a_read_only_file_is_refused_at_open(db_path: Path, permissions_bind: bool) -> None:
    if not permissions_bind:
        return  # run again without root's privileges, and passed there
    TraceStore(str(db_path)).close()
    db_path.chmod(0o444)
    try:
        with pytest.raises(StorageError, match="not writable"):
            TraceStore(str(db_path))
    finally:
        db_path.chmod(0o644)


def test_a_read_only_wal_or_shm_file_beside_a_writable_store_is_named(tmp_path: Path, permissions_bind: bool) -> None:
    """SQLite makes the -wal and -shm files with the database file's permissions: once a read-only file had been
    opened, making the file writable again still failed, with advice to make the file writable."""
    if not permissions_bind:
        return  # run again without root's privileges, and passed there
    db = tmp_path / "t.db"
    TraceStore(str(db)).close()
    db.chmod(0o444)
    with pytest.raises(StorageError, match="not writable"):
        TraceStore(str(db))  # SQLite leaves read-only -wal and -shm files beside it
    db.chmod(0o644)
    with pytest.raises(StorageError, match="not writable") as caught:
        TraceStore(str(db))
    stuck = [f"{db}{suffix}" for suffix in ("-wal", "-shm") if not os.access(f"{db}{suffix}", os.W_OK)]
    assert stuck  # SQLite makes an empty -wal file anew, but not the -shm file
    assert f"make {' and '.join(stuck)} writable, or set TTC_DB" in str(caught.value)


def test_the_advice_for_a_read_only_store_names_its_wal_and_shm_files(db_path: Path) -> None:
    """Where the files that refuse writes cannot be told (an SQLite URI, or permissions that do not bind), the advice
    names every file a write needs."""
    TraceStore(str(db_path)).close()
    with pytest.raises(StorageError, match=r"make the file and its directory writable, and the -wal and -shm files "
                                           r"beside it"):
        TraceStore(f"sqlite:///file:{db_path}?mode=ro&uri=true")


def test_a_file_that_is_not_a_database_is_refused(db_path: Path) -> None:
    db_path.write_text("these are notes, not a database\n" * 200)
    with pytest.raises(StorageError, match=r"not an SQLite database.*move it away"):
        TraceStore(str(db_path))


def test_a_damaged_database_is_said_to_be_damaged_with_what_to_do(db_path: Path) -> None:
    """SQLite's 'database disk image is malformed' came through bare, with no word of what to do."""
    with TraceStore(str(db_path)) as store:
        for i in range(30):
            trace_id = store.start_trace(problem=make_problem(i), strategy="beam", budget=BUDGET, backend="b", seed=i)
            nodes = make_nodes(20, seed=i)
            store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=make_events(5, i))
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    assert db_path.stat().st_size > 32768
    with db_path.open("r+b") as file:
        file.seek(12288)
        file.write(random.Random(0).randbytes(32768 - 12288))
    damaged = r"is damaged \(database disk image is malformed, found while .*\); restore it from a copy, or set TTC_DB"
    # The open, or else a read, comes upon the damaged pages.
    with pytest.raises(StorageError, match=damaged), TraceStore(str(db_path)) as store:
        for trace in store.list_traces(limit=None):
            store.get_trace(trace.id)


def test_a_database_from_a_newer_schema_is_refused(db_path: Path) -> None:
    TraceStore(str(db_path)).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        TraceStore(str(db_path))


def test_an_sqlite_database_of_another_program_is_refused_and_left_alone(db_path: Path) -> None:
    """It was stamped as a ttc schema around its own 'traces' table, then every read failed: no such column."""
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE traces (id INTEGER PRIMARY KEY, payload TEXT)")
        raw.execute("INSERT INTO traces (payload) VALUES ('not ours')")
    with pytest.raises(StorageError, match=r"not a ttc trace store.*traces.*TTC_DB"):
        TraceStore(str(db_path))
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (0,)
        assert raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("traces",)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not switched to WAL either


@pytest.mark.parametrize("user_version", [0, 1, 2, 7])
def test_an_sqlite_database_with_none_of_ttc_s_tables_is_refused_as_such_and_left_alone(
        db_path: Path, user_version: int) -> None:
    """Stamped 0, another program's database gained ttc's tables, a WAL journal and ttc's stamp; stamped otherwise
    (as other programs stamp theirs), it was switched to WAL and then called damaged or newer than ttc."""
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO users (name) VALUES ('not ours')")
        raw.execute(f"PRAGMA user_version = {user_version}")
    for read_only in (False, True):
        with pytest.raises(StorageError, match=r"is an SQLite database but not a ttc trace store: it holds other "
                                               r"tables or views \(users\) and none of ttc's tables; set TTC_DB to "
                                               r"another file"):
            TraceStore(str(db_path), read_only=read_only)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (user_version,)
        assert raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("users",)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_an_sqlite_database_of_views_alone_is_refused_and_left_alone(db_path: Path) -> None:
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE VIEW answers AS SELECT 42 AS answer")
    with pytest.raises(StorageError, match=r"not a ttc trace store: it holds other tables or views \(answers\)"):
        TraceStore(str(db_path))
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT name FROM sqlite_master").fetchall() == [("answers",)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_an_empty_file_becomes_a_store(db_path: Path) -> None:
    db_path.touch()
    with TraceStore(str(db_path)) as store:
        assert store.get_trace(_start(store)).status == "running"
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unusable_urls_are_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match="in-memory"):
        TraceStore("sqlite://")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match=r"in-memory SQLite \(':memory:'\).*store=False"):
        TraceStore(":memory:")  # sqlite3's own spelling: refused, not a file named ':memory:'
    assert not (tmp_path / ":memory:").exists()
    with pytest.raises(StorageError, match="no database driver"):
        TraceStore("nosuchdb://host/db")


def _killed_worker(db_path: Path,
                   spawn_worker: Callable[..., subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A worker process that opened a run and a trace, then was killed outright; with the ids it printed."""
    process = spawn_worker(db_path, "crash")
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else "worker printed nothing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return process, json.loads(line)


def test_a_killed_process_s_trace_is_failed_by_the_next_writer_on_its_host(
    db_path: Path, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """SIGKILL leaves no chance to fail a trace; it read 'running' for good until its run was resumed."""
    process, ids = _killed_worker(db_path, spawn_worker)
    with TraceStore(str(db_path), read_only=True) as reader:  # a reader changes nothing
        assert reader.get_trace(ids["trace_id"]).status == "running"
    with TraceStore(str(db_path)) as store:
        stale = store.get_trace(ids["trace_id"])
        assert (stale.status, stale.error) == ("failed", f"interrupted: process {process.pid} ended without "
                                                         "finishing it")
        assert stale.finished_at is not None
        run = store.get_run(ids["run_id"])  # it read 'running' for good, though nothing would ever finish it
        assert (run.status, run.finished_at is not None) == ("interrupted", True)
        mine = store.start_trace(problem=make_problem(2), strategy="s", budget=BUDGET, backend="b", seed=None)
    with TraceStore(str(db_path)) as again:  # this process is alive: its open trace is left alone
        assert again.get_trace(mine).status == "running"
        again.finish_trace(mine, result=make_result(mine, []), nodes=[], events=[])
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM trace_owners").fetchone() == (0,)
        assert raw.execute("SELECT count(*) FROM run_leases").fetchone() == (0,)
    with TraceStore(str(db_path)) as resumed:  # claiming it again puts it back in progress
        resumed.claim_run(ids["run_id"])
        assert resumed.get_run(ids["run_id"]).status == "running"


def test_a_trace_of_a_process_on_another_host_is_left_to_mark_stale_running(
    db_path: Path, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    _, ids = _killed_worker(db_path, spawn_worker)
    with sqlite3.connect(db_path) as raw:  # as if the process had run on another machine
        raw.execute("UPDATE trace_owners SET host = 'elsewhere'")
        raw.execute("UPDATE run_leases SET host = 'elsewhere'")

    with TraceStore(str(db_path)) as store:
        assert store.get_run(ids["run_id"]).status == "running"
        trace = store.get_trace(ids["trace_id"])
        assert (trace.status, trace.run_id, trace.backend) == ("running", ids["run_id"], "worker")
        mine = store.start_trace(problem=make_problem(2), strategy="s", budget=BUDGET, backend="b", seed=None,
                                 run_id=ids["run_id"])
        store.finish_trace(mine, result=make_result(mine, []), nodes=[], events=[])
        assert store.mark_stale_running(ids["run_id"]) == 1
        assert store.mark_stale_running(ids["run_id"]) == 0
        stale = store.get_trace(ids["trace_id"])
        assert (stale.status, stale.error) == ("failed", "interrupted")
        assert stale.finished_at is not None
        assert store.get_trace(mine).status == "done"


class _Abort(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit, raised inside a write."""


def _raise_abort(connection: object) -> None:
    raise _Abort("stop here")


def test_a_base_exception_in_a_write_resolves_its_future_and_later_writes_fail_typed(db_path: Path) -> None:
    """A BaseException killed the writer thread with the job's future still pending: its caller hung forever."""
    store = TraceStore(str(db_path), busy_timeout_s=BUSY_S)
    try:
        writer = store._writer
        pending = writer.submit(_raise_abort, lambda exc: exc)
        with pytest.raises(_Abort):
            pending.result(timeout=10)
        later = None
        deadline = time.monotonic() + 10
        with pytest.raises(StorageError, match="writer stopped"):
            while time.monotonic() < deadline:  # a submit racing the thread's end is failed by the drain
                later = writer.submit(lambda connection: None, lambda exc: exc)
                later.result(timeout=10)
                time.sleep(0.01)
    finally:
        store.close()


def test_an_error_while_explaining_a_failed_write_still_resolves_its_future(db_path: Path) -> None:
    with TraceStore(str(db_path), busy_timeout_s=BUSY_S) as store:

        def broken_explain(exc: BaseException) -> BaseException:
            raise RuntimeError("explaining failed")

        def fail(connection: object) -> None:
            raise ValueError("bad value")

        pending = store._writer.submit(fail, broken_explain)
        with pytest.raises(StorageError, match="bad value") as caught:
            pending.result(timeout=10)
        assert "explaining failed" in str(caught.value)
        assert store.list_traces() == []  # the writer still works
        assert _start(store)


class _Unrenderable(ValueError):
    """A failure whose message cannot be rendered, as SQLAlchemy's error quoting a payload too deeply nested to
    print is."""

    def __str__(self) -> str:
        raise RecursionError("maximum recursion depth exceeded while getting the repr of an object")


def _raise_unrenderable(connection: object) -> None:
    raise _Unrenderable


def _explain_by_message(exc: BaseException) -> BaseException:
    return StorageError(f"failed: {exc}")


def test_a_failure_whose_message_cannot_be_rendered_still_resolves_its_future(db_path: Path) -> None:
    """Explaining it raised, describing it for the fallback raised again, and the job's future was never
    resolved: finish_trace blocked forever, and the writer thread was gone."""
    with TraceStore(str(db_path), busy_timeout_s=BUSY_S) as store:
        pending = store._writer.submit(_raise_unrenderable, store._explainer("finishing trace x"))
        with pytest.raises(StorageError, match=r"rejected the data while finishing trace x: _Unrenderable;"):
            pending.result(timeout=10)
        pending = store._writer.submit(_raise_unrenderable, _explain_by_message)
        with pytest.raises(StorageError, match=r"a write failed with _Unrenderable \(its message could not be "
                                               r"rendered: RecursionError\), and explaining it raised "
                                               r"RecursionError: maximum recursion"):
            pending.result(timeout=10)
        assert _start(store)  # the writer still works


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies
def test_a_failure_escaping_a_job_s_own_handling_fails_the_job(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's last-resort path failed the queued jobs but not the one it was running: its caller hung."""
    def broken_fail(job: object, exc: BaseException) -> None:
        raise _Abort("the failure handling itself failed")

    store = TraceStore(str(db_path), busy_timeout_s=BUSY_S)
    try:
        monkeypatch.setattr(writer_module, "_fail", broken_fail)
        pending = store._writer.submit(_raise_abort, lambda exc: exc)
        with pytest.raises(StorageError, match=r"writer stopped while running this write \(it failed: _Abort: the "
                                               r"failure handling itself failed\), so it was not saved"):
            pending.result(timeout=10)
    finally:
        store.close()
        # The job's caller is answered before the dying thread raises: wait for that here, or the warning this
        # test ignores is raised during the next one.
        store._writer._thread.join(timeout=10)


def test_a_payload_too_deep_for_json_fails_the_write_rather_than_hanging(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the nesting limit (a store that did not refuse the payload up front), the JSON encoder's
    RecursionError came wrapped in an error whose message recursed again: finish_trace never returned."""
    monkeypatch.setattr(checks, "MAX_NESTING", 10**9)
    deep: dict[str, object] = {}
    level = deep
    for _ in range(3000):
        level["a"] = {}
        level = level["a"]  # type: ignore[assignment]
    with TraceStore(str(db_path), busy_timeout_s=BUSY_S) as store:
        trace_id = _start(store)
        nodes = make_nodes(3)
        outcome: list[BaseException | None] = []

        def finish() -> None:
            try:
                store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes,
                                   events=[TraceEvent(kind="deep", payload=deep)])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=finish, daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "finish_trace is still blocked"
        [error] = outcome
        assert isinstance(error, StorageError) and "nothing of this write was saved" in str(error)
        assert store.get_trace(trace_id).status == "running"
        store.fail_trace(trace_id, error="StorageError: too deep", nodes=nodes, events=make_events(1))
        assert store.get_trace(trace_id).status == "failed"


_INTERRUPTED_OPEN = """
import signal, sys, time
from sqlalchemy import create_engine
from ttc.storage.writer import Writer

def slow_open(connection):  # an open that succeeds after a wait, as one waiting out another process's lock
    time.sleep(1.0)

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
signal.setitimer(signal.ITIMER_REAL, 0.2)
try:
    Writer(create_engine("sqlite:///" + sys.argv[1]), open_work=slow_open, explain_open=lambda e: e, name="w")
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_an_interrupt_does_not_wait_out_an_open_that_hangs(db_path: Path) -> None:
    """A connect to a server that never answers lasts its connect timeout: Ctrl-C waited it out (psycopg's own
    default is 130 s) before the process could end."""
    hanging = _INTERRUPTED_OPEN.replace("time.sleep(1.0)", "time.sleep(60.0)").replace(
        'print("interrupted", flush=True)', 'print("interrupted", round(time.monotonic() - started), flush=True)')
    hanging = hanging.replace("try:\n    Writer(", "started = time.monotonic()\ntry:\n    Writer(", 1)
    done = subprocess.run([sys.executable, "-c", hanging, str(db_path)], capture_output=True, text=True, timeout=50)
    assert (done.returncode, done.stdout) == (0, "interrupted 1\n"), done.stderr


def test_a_server_that_accepts_and_never_answers_fails_within_the_busy_timeout() -> None:
    """libpq waits for ever on such a server (psycopg 130 s): a stuck server or proxy hung every command."""
    pytest.importorskip("psycopg")
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StorageError, match="failed while opening it"):
            TraceStore(f"postgresql+psycopg://ttc@127.0.0.1:{port}/ttc", busy_timeout_s=1.0)
        assert time.monotonic() - started < 15


def test_an_interrupt_while_the_store_opens_ends_the_open_instead_of_hanging(db_path: Path) -> None:
    """Ctrl-C during a slow open that then succeeded left the writer thread waiting for jobs, and the constructor
    joining it: the process never ended. Run in a process of its own, so that a hang fails the test."""
    try:
        done = subprocess.run([sys.executable, "-c", _INTERRUPTED_OPEN, str(db_path)], capture_output=True,
                              text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the interrupted open never returned")
    assert (done.returncode, done.stdout) == (0, "interrupted\n"), done.stderr
