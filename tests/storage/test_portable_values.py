"""Values every database must keep alike: 64-bit integers, NUL characters, NaN and infinities in JSON, ids in any
case. The column types are checked against PostgreSQL's dialect here without a server (test_postgres.py runs them
on one); the store itself on SQLite, whose stored values must stay as they were."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, OperationalError
from trace_data import BUDGET, make_nodes, make_problem, make_result

from ttc.errors import NotFound, StorageError
from ttc.storage import TraceStore
from ttc.storage.database import Location, make_engine, storage_error
from ttc.storage.models import (
    JSON_TAG,
    NUL_MARK,
    PortableJSON,
    SafeText,
    decode_json,
    encode_json,
    escape_nul,
    unescape_nul,
)
from ttc.types import TraceEvent

PG = postgresql.dialect()
SQLITE = sqlite.dialect()
PG_LOCATION = Location(make_url("postgresql+psycopg://u@localhost/db"), None)

_keys = st.sampled_from([JSON_TAG, "items", "x", "NaN"]) | st.text(max_size=4)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "object", JSON_TAG]) | st.text(max_size=6)
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(_keys, inner, max_size=4), max_leaves=20)
_text = st.text(alphabet=st.sampled_from(["\x00", NUL_MARK, "0", "a", "\\"]) | st.characters(), max_size=30)


def _comparable(value: object) -> object:
    """``value`` with NaN as a string, so that equal trees compare equal (NaN != NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "<nan>"
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


@given(json_values)
def test_encoded_json_is_strict_and_decodes_to_what_was_written(value: object) -> None:
    stored = json.dumps(encode_json(value), allow_nan=False)  # strict JSON, as PostgreSQL's json takes it
    assert _comparable(decode_json(json.loads(stored))) == _comparable(value)


@given(json_values)
def test_the_json_type_encodes_on_a_server_and_leaves_sqlite_s_values_alone(value: object) -> None:
    column = PortableJSON()
    assert column.process_bind_param(value, SQLITE) is value
    assert column.process_result_value(value, SQLITE) is value
    bound = column.process_bind_param(value, PG)
    assert _comparable(column.process_result_value(json.loads(json.dumps(bound, allow_nan=False)), PG)) == \
        _comparable(value)


def test_non_finite_floats_have_a_readable_encoded_form() -> None:
    assert encode_json([math.nan, math.inf, -math.inf, 1.5]) == [
        {JSON_TAG: "NaN"}, {JSON_TAG: "Infinity"}, {JSON_TAG: "-Infinity"}, 1.5]
    assert encode_json({JSON_TAG: "NaN"}) == {JSON_TAG: "object", "items": [[JSON_TAG, "NaN"]]}


@given(_text)
def test_nul_escaping_leaves_no_nul_and_is_undone_exactly(text: str) -> None:
    escaped = escape_nul(text)
    assert "\x00" not in escaped and unescape_nul(escaped) == text
    column = SafeText()
    assert column.process_bind_param(text, PG) == escaped
    assert column.process_result_value(escaped, PG) == text
    assert column.process_bind_param(text, SQLITE) == text


def test_text_without_nul_or_the_mark_is_stored_as_it_is() -> None:
    assert escape_nul("plain \\ text ∑") == "plain \\ text ∑"


def test_seeds_indices_and_token_counts_up_to_2_63_are_kept(store: TraceStore) -> None:
    big = 2**63 - 1
    problem = dataclasses.replace(make_problem(1), index=big)
    trace_id = store.start_trace(problem=problem, strategy="beam", budget=BUDGET, backend="b", seed=big)
    nodes = [dataclasses.replace(node, token_count=big - node.id) for node in make_nodes(3)]
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=[])
    record = store.get_trace(trace_id)
    assert (record.seed, record.problem.index, record.nodes) == (big, big, nodes)
    with pytest.raises(StorageError, match=r"rejected the data while starting a trace.*fit in 64 bits"):
        store.start_trace(problem=make_problem(2), strategy="beam", budget=BUDGET, backend="b", seed=2**63)


def test_sqlite_keeps_non_finite_floats_and_nul_as_python_writes_them(store: TraceStore, db_path: Path) -> None:
    nodes = [dataclasses.replace(make_nodes(1)[0], text="a\x00b", step_scores=(math.inf, -math.inf))]
    trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
    events = [TraceEvent(kind="k", payload={"x": math.nan, JSON_TAG: "NaN"}, t=0.0)]
    store.finish_trace(trace_id, result=make_result(trace_id, nodes), nodes=nodes, events=events)
    record = store.get_trace(trace_id)
    assert record.nodes == nodes and math.isnan(record.events[0].payload["x"])
    assert record.events[0].payload[JSON_TAG] == "NaN"
    with sqlite3.connect(db_path) as raw:
        text, steps = raw.execute("SELECT text, step_scores FROM nodes").fetchone()
        payload = raw.execute("SELECT payload FROM events").fetchone()[0]
    assert (text, steps, payload) == ("a\x00b", "[Infinity, -Infinity]", '{"x": NaN, "$ttc": "NaN"}')


def test_ids_and_prefixes_are_found_in_any_case(store: TraceStore) -> None:
    run_id = store.create_run(kind="eval", config={})
    trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1,
                                 run_id=run_id)
    assert store.get_trace(trace_id.upper()).id == trace_id
    assert store.get_trace(trace_id[:7].upper()).id == trace_id
    assert store.get_run(run_id.upper()).id == run_id
    assert store.get_run(run_id[:6].upper()).id == run_id


def test_an_id_with_a_nul_names_nothing(store: TraceStore) -> None:
    trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
    for given_id in (trace_id + "\x00", "\x00", trace_id[:8] + "\x00"):
        with pytest.raises(NotFound, match="ids never contain a NUL character"):
            store.get_trace(given_id)
    with pytest.raises(NotFound, match="ids never contain a NUL character"):
        store.get_run("abcdef\x00")


def test_a_failure_message_with_a_nul_is_recorded(store: TraceStore) -> None:
    trace_id = store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=1)
    store.fail_trace(trace_id, error="bad \x00 byte", nodes=make_nodes(2))
    record = store.get_trace(trace_id)
    assert (record.status, record.error, len(record.nodes)) == ("failed", "bad \x00 byte", 2)


def test_a_server_s_data_error_is_rejected_data_and_its_lock_timeout_a_lock() -> None:
    class ServerError(Exception):
        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    data = DataError("INSERT", {}, ServerError("PostgreSQL text fields cannot contain NUL (0x00) bytes", "22021"))
    error = storage_error(data, PG_LOCATION, "writing", busy_timeout_s=3, hint="fix the text")
    assert "rejected the data while writing" in str(error) and "fix the text" in str(error)
    assert "server is running" not in str(error)
    locked = OperationalError("UPDATE", {}, ServerError("canceling statement due to lock timeout", "55P03"))
    error = storage_error(locked, PG_LOCATION, "writing", busy_timeout_s=3)
    assert "is locked: another connection held it for more than 3s while writing" in str(error)


def test_a_server_waits_for_a_lock_as_long_as_the_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection sets lock_timeout by SQL (any driver takes it), 1 ms at least since 0 waits forever there,
    and reads committed data, which the creation and claim locks rely on."""
    import sqlalchemy

    seen: list[dict[str, object]] = []

    def create(url: object, **options: object) -> sqlalchemy.Engine:
        seen.append(options)
        return sqlalchemy.create_engine("sqlite://")

    executed: list[str] = []

    class Cursor:
        def execute(self, sql: str) -> None:
            executed.append(sql)

        def close(self) -> None:
            pass

    class Connection:
        def cursor(self) -> Cursor:
            return Cursor()

        def commit(self) -> None:
            executed.append("COMMIT")

    monkeypatch.setattr("ttc.storage.database.create_engine", create)
    for timeout in (2.5, 0):
        engine = make_engine(PG_LOCATION, busy_timeout_s=timeout, writer=True)
        [set_timeout] = [listener for listener in engine.pool.dispatch.connect
                         if getattr(listener, "__name__", "") == "_lock_timeout"]  # not the stand-in sqlite's own
        set_timeout(Connection(), None)
    assert executed == ["SET lock_timeout = 2500", "COMMIT", "SET lock_timeout = 1", "COMMIT"]
    assert [options["isolation_level"] for options in seen] == ["READ COMMITTED"] * 2
