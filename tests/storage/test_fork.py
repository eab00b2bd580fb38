"""A TraceStore is one process's: a forked child (multiprocessing's default start method on Linux) is told so."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from trace_data import BUDGET, make_problem

from ttc.errors import StorageError
from ttc.storage import TraceStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ANSWER_S = 20
"""How long the child has to answer: a refusal is at once; before it, a write waited for ever."""


def _use_in_child(store: TraceStore, use: str, answer: Connection) -> None:
    try:
        if use == "write":
            store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=0)
        else:
            store.list_traces()
        answer.send("no error")
    except StorageError as exc:
        answer.send(f"StorageError: {exc}")
    except BaseException as exc:
        answer.send(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("use", ["write", "read"])
def test_a_store_used_in_a_forked_child_refuses_at_once(db_path: Path, use: str) -> None:
    """The child's writes were queued for a writer thread that fork() does not copy, and start_trace never
    returned; its reads used the parent's SQLite connections, which must not cross a fork."""
    context = multiprocessing.get_context("fork")
    with TraceStore(str(db_path)) as store:
        first = store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0)
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_use_in_child, args=(store, use, sending))
        child.start()
        try:
            assert receiving.poll(ANSWER_S), f"the forked child's {use} did not return within {ANSWER_S} s"
            answer = receiving.recv()
        finally:
            child.kill()
            child.join()
        assert answer.startswith("StorageError: ")
        assert f"was opened in process {os.getpid()}" in answer
        assert "cannot be used across fork(); open one in each process (pass the database path)" in answer
        # the parent's store goes on as before
        assert [trace.id for trace in store.list_traces()] == [first]
        store.fail_trace(first, error="test")


def _open_in_child(path: str, answer: Connection) -> None:
    with TraceStore(path) as store:
        store.start_trace(problem=make_problem(1), strategy="beam", budget=BUDGET, backend="b", seed=0)
        answer.send(len(store.list_traces()))


def test_a_store_opened_in_the_forked_child_itself_works(db_path: Path) -> None:
    """What the refusal advises: each process opens its own store on the same path."""
    context = multiprocessing.get_context("fork")
    with TraceStore(str(db_path)) as store:
        store.start_trace(problem=make_problem(0), strategy="beam", budget=BUDGET, backend="b", seed=0)
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_open_in_child, args=(str(db_path), sending))
        child.start()
        try:
            assert receiving.poll(ANSWER_S)
            assert receiving.recv() == 2
        finally:
            child.join(ANSWER_S)
            if child.is_alive():
                child.kill()
                child.join()
        assert child.exitcode == 0
        assert len(store.list_traces()) == 2
