"""A store changed outside ttc is refused rather than misread, and readers open a store without changing it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from trace_data import BUDGET, make_events, make_nodes, make_problem, make_result

from ttc.errors import StorageError
from ttc.storage import TraceStore


def _done_trace(path: Path) -> str:
    with TraceStore(str(path)) as store:
        trace_id = store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0)
        nodes = make_nodes(5)
        store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=make_events(3))
    return trace_id


def test_a_dropped_table_is_refused_not_created_again_empty(tmp_path: Path) -> None:
    """create_all used to make a new, empty events table: the done trace then read as complete without events."""
    db = tmp_path / "t.db"
    _done_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("DROP TABLE events")
    for read_only in (False, True):
        with pytest.raises(StorageError, match=r"not laid out as ttc writes it \(table events is missing\)"):
            TraceStore(str(db), read_only=read_only)
    with sqlite3.connect(db) as raw:
        assert "events" not in {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_store_from_before_the_later_tables_opens_and_gains_them(tmp_path: Path) -> None:
    """Stores written before trace_owners and run_leases existed are whole: readers open them, writers add both."""
    db = tmp_path / "t.db"
    trace_id = _done_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("DROP TABLE trace_owners")
        raw.execute("DROP TABLE run_leases")
    with TraceStore(str(db), read_only=True) as store:
        assert store.get_trace(trace_id).status == "done"
        assert store.list_runs() == []
    with TraceStore(str(db)) as store:
        run_id = store.create_run(kind="eval", name="after", config={})
        store.claim_run(run_id)
    with sqlite3.connect(db) as raw:
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"trace_owners", "run_leases"} <= names


def test_a_dropped_column_is_refused_at_open(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    _done_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("ALTER TABLE traces DROP COLUMN candidates")
    with pytest.raises(StorageError, match=r"column traces\.candidates is missing.*restore it from a copy"):
        TraceStore(str(db))


def test_a_stored_value_that_does_not_read_back_is_a_storage_error(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    trace_id = _done_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE traces SET started_at = 'yesterday'")
    with TraceStore(str(db), read_only=True) as store, \
            pytest.raises(StorageError, match=r"holds a value that cannot be read back while listing traces"):
        store.list_traces()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE traces SET started_at = '2026-01-01T00:00:00+00:00', usage = '{bad json'")
    with TraceStore(str(db), read_only=True) as store, \
            pytest.raises(StorageError, match="cannot be read back"):
        store.get_trace(trace_id)


def test_a_reader_creates_nothing_and_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "dir" / "x.db"
    with pytest.raises(StorageError, match=r"there is no trace database at .*x\.db: check the path"):
        TraceStore(str(missing), read_only=True)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(StorageError, match="path is empty"):
        TraceStore("", read_only=True)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(StorageError, match="holds no ttc traces"):
        TraceStore(str(other), read_only=True)


def test_a_reader_of_an_sqlite_uri_creates_nothing_and_reads_what_is_there(tmp_path: Path) -> None:
    """A file: URI skipped the reader's mode=ro, so a typo made an empty file and blamed it for holding no traces."""
    db = tmp_path / "u.db"
    with pytest.raises(StorageError, match="cannot open the trace database"):
        TraceStore(f"sqlite:///file:{db}?uri=true", read_only=True)
    assert not db.exists()
    trace_id = _done_trace(db)
    for url in (f"sqlite:///file:{db}?uri=true", f"sqlite:///file:{db}"):
        with TraceStore(url, read_only=True) as store:
            assert store.get_trace(trace_id).status == "done"


def test_ttc_db_is_read_as_every_ttc_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """' /abs/t.db' made a folder named ' ' in the working directory and wrote the traces there."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "sub" / "t.db"
    monkeypatch.setenv("TTC_DB", f"  {db}\n")
    TraceStore().close()
    assert db.is_file() and not (tmp_path / " ").exists()


def test_a_reader_reads_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    trace_id = _done_trace(db)
    before = db.read_bytes()
    with TraceStore(str(db), read_only=True) as store:
        assert store.get_trace(trace_id).status == "done"
        assert [t.id for t in store.list_traces()] == [trace_id]
        with pytest.raises(StorageError, match="opened read-only"):
            store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=0)
    assert db.read_bytes() == before


def test_a_store_copied_as_sql_text_is_read_and_written_as_a_store(tmp_path: Path) -> None:
    """``sqlite3 traces.db .dump | sqlite3 copy.db`` keeps every table and row but not the user_version stamp: the
    copy was refused by readers ("holds no ttc traces") and writers ("has tables ttc did not create")."""
    source, copy = tmp_path / "t.db", tmp_path / "copy.db"
    trace_id = _done_trace(source)
    with TraceStore(str(source)) as store:
        run_id = store.create_run(kind="eval", name="copied", config={"n": 1})
        store.finish_run(run_id, status="done", summary={})
    with sqlite3.connect(source) as raw:
        dump = "\n".join(raw.iterdump())
    with sqlite3.connect(copy) as raw:
        raw.executescript(dump)
        assert raw.execute("PRAGMA user_version").fetchone() == (0,)
    with TraceStore(str(copy), read_only=True) as reader:
        assert reader.get_trace(trace_id).status == "done"
        assert [run.id for run in reader.list_runs()] == [run_id]
    with sqlite3.connect(copy) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (0,)  # a reader changes nothing
    with TraceStore(str(copy)) as writer:
        assert len(writer.get_trace(trace_id).nodes) == 5
        writer.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=0)
    with sqlite3.connect(copy) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # as every store ttc writes
        assert raw.execute("SELECT count(*) FROM traces").fetchone() == (2,)


def test_a_file_at_user_version_0_with_ttc_s_tables_and_another_s_is_still_refused(tmp_path: Path) -> None:
    """Only exactly ttc's tables make an unstamped file a store: with another program's table beside them, ttc's
    names may be that program's too."""
    db = tmp_path / "t.db"
    _done_trace(db)
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        raw.execute("PRAGMA user_version = 0")
    with pytest.raises(StorageError, match="has tables ttc did not create"):
        TraceStore(str(db))
    with pytest.raises(StorageError, match="holds no ttc traces"):
        TraceStore(str(db), read_only=True)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (0,)
