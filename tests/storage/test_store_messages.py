"""What the store says when it cannot use a URL, or refuses a result: each message true and saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

import ttc
from ttc.errors import RejectedData, StorageError
from ttc.storage import TraceStore
from ttc.testing.scripted import ScriptedBackend


def test_a_port_that_is_not_a_number_is_explained() -> None:
    """It escaped as a raw ValueError traceback from the URL parser."""
    with pytest.raises(StorageError, match=r"'postgresql\+psycopg://ttc@127\.0\.0\.1:notaport/db' is neither a file "
                                           r"path nor a valid SQLAlchemy URL \(.*'notaport'\); pass a path"):
        TraceStore("postgresql+psycopg://ttc@127.0.0.1:notaport/db")


def test_a_postgres_scheme_url_says_how_to_write_it() -> None:
    """postgres:// (Heroku's form) said to pip install psycopg, which was installed and did not help."""
    with pytest.raises(StorageError, match=r"starts with postgres://.*write it as postgresql\+psycopg://") as caught:
        TraceStore("postgres://ttc:secret@127.0.0.1:5432/db")
    assert "pip install" not in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_result_the_store_refuses_fails_the_trace_with_a_message_that_is_true(db_path: Path) -> None:
    """A lone surrogate in the model's output: the error raised, and stored as the failed trace's, said the trace
    was still 'running' and to record the failure with fail_trace, which the session had done."""
    backend = ScriptedBackend(["2 + 6 = 8 \udc80\nThe answer is 8"])
    with pytest.raises(RejectedData, match=r"surrogates not allowed; nothing of this write was saved$") as caught:
        ttc.solve("What is 2 + 6?", 200, strategy="best_of_n", n=2, backend=backend, store=str(db_path), seed=1)
    assert "still 'running'" not in str(caught.value)
    with TraceStore(str(db_path), read_only=True) as store:
        [trace] = store.list_traces()
        record = store.get_trace(trace.id)
    assert record.status == "failed"
    assert record.error is not None and record.error.startswith("RejectedData: the trace store rejected the data")
    assert "still 'running'" not in record.error and "fail_trace" not in record.error
