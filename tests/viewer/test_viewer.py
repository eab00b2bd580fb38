"""The trace viewer over HTTP, on a real SQLite store holding real traces (a solve, a tree search, a failure)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from wide_trees import selected_past

from ttc import solve
from ttc.errors import BackendError, ConfigError
from ttc.storage import TraceStore
from ttc.storage import export as export_module
from ttc.storage.export import strict_json
from ttc.testing import ScriptedBackend
from ttc.types import Budget, Problem
from ttc.viewer import make_server
from ttc.viewer.pages import tree_rows
from ttc.viewer.server import ViewerServer

HOSTILE = "What is <script>alert('x')</script> 2 + 3?"
SOLUTION = "2 + 3 = 5\nThe answer is 5."


@dataclass
class Viewer:
    store: TraceStore
    server: ViewerServer
    client: httpx.Client
    solved: str
    searched: str
    failed: str


@pytest.fixture
def viewer(tmp_path: Path) -> Iterator[Viewer]:
    store = TraceStore(str(tmp_path / "traces.db"))
    solved = solve(HOSTILE, 400, strategy="best_of_n", n=3, backend=ScriptedBackend([SOLUTION]), store=store,
                   seed=1).trace_id
    searched = solve("What is 2 + 3?", 400, strategy="lookahead", gamma=2, backend=ScriptedBackend([SOLUTION]),
                     draft=ScriptedBackend(["2 + 3 = 6\nThe answer is 6."]), store=store, seed=2).trace_id
    with pytest.raises(BackendError):
        solve("What fails?", 400, strategy="best_of_n", backend=ScriptedBackend([SOLUTION], fail_after=0),
              store=store, seed=3)
    [failed] = store.list_traces(status="failed")
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert solved is not None and searched is not None
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield Viewer(store, server, client, solved, searched, failed.id)
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_the_index_lists_every_trace_with_links(viewer: Viewer) -> None:
    page = viewer.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for trace_id in (viewer.solved, viewer.searched, viewer.failed):
        assert f'href="/traces/{trace_id}"' in page.text
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text
    assert "scripted backend refused the call" in page.text  # the failed trace's error


def test_the_index_filters_by_status(viewer: Viewer) -> None:
    page = viewer.client.get("/", params={"status": "failed"})
    assert viewer.failed in page.text and viewer.solved not in page.text
    refused = viewer.client.get("/", params={"status": "bogus"})
    assert refused.status_code == 400 and "trace status must be one of running, done, failed" in refused.text
    assert viewer.client.get("/", params={"limit": "0"}).status_code == 400


def test_a_trace_page_shows_the_tree_the_decisions_and_the_chosen_path(viewer: Viewer) -> None:
    page = viewer.client.get(f"/traces/{viewer.solved[:8]}")  # a unique prefix finds it too
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
    record = viewer.store.get_trace(viewer.solved)
    for node in record.nodes:
        assert f'id="node-{node.id}"' in page.text
    for event in record.events:
        assert f"<td>{event.kind}</td>" in page.text
    selected = [n for n in record.nodes if n.status == "selected"]
    assert len(selected) == 1 and f'<tr id="node-{selected[0].id}" class="path">' in page.text


def test_a_lookahead_trace_shows_which_model_wrote_each_step(viewer: Viewer) -> None:
    page = viewer.client.get(f"/traces/{viewer.searched}")
    assert "written by the target" in page.text and "draft step rejected" in page.text
    assert "lookahead_summary" in page.text


def test_a_question_about_a_context_shows_the_context(viewer: Viewer) -> None:
    from ttc.bench.eval import evaluate
    from ttc.session import open_session
    from ttc.types import Budget, Problem

    context = "Ann has <b>2</b> pens. She buys 3 more."
    session = open_session(backend=ScriptedBackend([SOLUTION]), store=viewer.store, verifier=None,
                           prompt_template=None)
    problem = Problem("How many pens does Ann have?", gold="5", index=0, context=context)
    try:
        report = anyio.run(lambda: evaluate([problem], Budget(tokens=200), session, strategy="best_of_n",
                                            options={"n": 1}, seed=0))
    finally:
        anyio.run(session.aclose)
    page = viewer.client.get(f"/traces/{report.trace_ids[0]}")
    assert "<th>context</th>" in page.text and "Ann has &lt;b&gt;2&lt;/b&gt; pens." in page.text
    assert "<th>context</th>" not in viewer.client.get(f"/traces/{viewer.solved}").text


def test_the_json_endpoint_is_the_export(viewer: Viewer) -> None:
    reply = viewer.client.get(f"/api/traces/{viewer.searched}")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json() == json.loads(json.dumps(strict_json(viewer.store.export_trace(viewer.searched), "t")))


def test_a_failed_trace_shows_what_it_spent_and_one_failed_without_it_not_recorded(viewer: Viewer) -> None:
    """A failed trace records what its run spent (here nothing: the backend refused the first call). One failed
    without it (by fail_trace alone, or an older ttc) has no usage row: zeros would read as 'spent nothing', which
    a partial tree can contradict, so the page says it was not recorded."""
    record = viewer.store.get_trace(viewer.failed)
    assert record.usage is not None and record.usage.generated_tokens == 0
    page = viewer.client.get(f"/traces/{viewer.failed}").text
    assert "generated=0" in page and "not recorded" not in page
    assert "answer</th><td><span class=\"muted\">none</span>" in page and "None" not in page
    bare = viewer.store.start_trace(problem=Problem("What is 1 + 1?"), strategy="best_of_n", budget=Budget(tokens=8),
                                    backend="scripted", seed=0)
    viewer.store.fail_trace(bare, error="RuntimeError: stopped")
    assert viewer.store.get_trace(bare).usage is None
    assert viewer.client.get(f"/api/traces/{bare}").json()["usage"] is None
    page = viewer.client.get(f"/traces/{bare}").text
    assert "not recorded (the trace did not finish)" in page and "generated=0" not in page
    done = viewer.store.get_trace(viewer.solved)
    assert done.usage is not None and done.usage.generated_tokens > 0
    assert f"generated={done.usage.generated_tokens}" in viewer.client.get(f"/traces/{viewer.solved}").text


def test_unknown_ids_and_pages_are_404_with_the_stores_message(viewer: Viewer) -> None:
    missing = viewer.client.get("/traces/ffffffffff")
    assert missing.status_code == 404 and "no trace" in missing.text and "ttc traces list" in missing.text
    api = viewer.client.get("/api/traces/ffffffffff")
    assert api.status_code == 404 and "no trace" in api.json()["error"]
    assert viewer.client.get("/nowhere").status_code == 404
    run = viewer.client.get("/", params={"run": "no-such-run"})
    assert run.status_code == 404 and "no run" in run.text


def test_a_failing_read_is_answered_with_its_error(viewer: Viewer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(viewer.store, "list_runs", broken)
    page = viewer.client.get("/")
    assert page.status_code == 500 and "RuntimeError: disk on fire" in page.text


def test_tree_rows_walk_a_deep_chain_without_recursion(viewer: Viewer) -> None:
    from ttc.types import Node

    chain = [Node(id=i, parent=i - 1 if i else None, depth=i, text=f"{i}\n", token_count=1,
                  status="selected" if i == 4999 else "active") for i in range(5000)]
    rows = tree_rows(chain, limit=5000)
    assert [r.depth for r in rows] == list(range(5000)) and all(r.on_selected_path for r in rows)


def test_a_tree_over_the_cap_shows_the_path_to_its_last_node_selected(viewer: Viewer) -> None:
    """A best-of-3000 whose last sample won showed no selected row and only the root on the path: the walk stopped
    at MAX_TREE_ROWS before it. Room is now kept for the path; the siblings shown keep their id order."""
    from ttc.types import Result, Usage
    from ttc.viewer.pages import MAX_TREE_ROWS

    last = MAX_TREE_ROWS + 200
    nodes = selected_past(last)
    trace_id = viewer.store.start_trace(problem=Problem(question="q"), strategy="beam", budget=Budget.of(10),
                                        backend="b", seed=1)
    viewer.store.finish_trace(trace_id, result=Result(answer="42", text="t", score=None, strategy="beam",
                                                      usage=Usage(), trace_id=trace_id), nodes=nodes, events=[])
    page = viewer.client.get(f"/traces/{trace_id}").text
    for node_id in (0, last - 1, last):
        assert f'<tr id="node-{node_id}" class="path">' in page
    assert '<td class="status-selected">selected</td>' in page
    shown = [int(found) for found in re.findall(r'<tr id="node-(\d+)"', page)]
    assert shown == [*range(MAX_TREE_ROWS - 2), last - 1, last]
    assert f"{len(nodes) - MAX_TREE_ROWS} more nodes are in the" in page


def test_tree_rows_keep_to_the_limit_when_the_path_alone_is_longer() -> None:
    from ttc.types import Node

    chain = [Node(id=i, parent=i - 1 if i else None, depth=i, text="", token_count=1,
                  status="selected" if i == 9 else "active") for i in range(10)]
    side = [Node(id=10, parent=0, depth=1, text="", token_count=1)]
    assert [r.node.id for r in tree_rows(chain + side, limit=4)] == [0, 1, 2, 3]
    assert [r.node.id for r in tree_rows(chain + side, limit=11)] == [*range(11)]


def test_a_taken_port_is_a_config_error(viewer: Viewer) -> None:
    port = viewer.server.server_address[1]
    with pytest.raises(ConfigError, match="cannot serve the viewer"):
        make_server(viewer.store, "127.0.0.1", port)


def test_ttc_view_prints_its_address_and_serves_until_stopped(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "TTC_DB": str(db)}
    missing = subprocess.run([sys.executable, "-m", "ttc", "view", "--port", "0"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert missing.returncode == 2 and "there is no trace database at" in missing.stderr  # and it made none
    assert not db.exists()
    TraceStore(str(db)).close()
    proc = subprocess.Popen([sys.executable, "-m", "ttc", "view", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ttc viewer on http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[3]
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "No runs recorded" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_request_naming_another_host_is_refused(viewer: Viewer) -> None:
    """A web page that points its own domain at 127.0.0.1 (DNS rebinding) could read every trace."""
    stranger = viewer.client.get(f"/api/traces/{viewer.solved}", headers={"Host": "attacker.example:8321"})
    assert stranger.status_code == 421 and "addressed to this machine" in stranger.json()["error"]
    for host in ("127.0.0.1", "localhost:8321", "LOCALHOST"):
        assert viewer.client.get("/", headers={"Host": host}).status_code == 200
    page = viewer.client.get("/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def _serving(store: TraceStore, host: str) -> Iterator[httpx.Client]:
    server = make_server(store, host, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()


def test_any_loopback_address_is_guarded_and_ipv6_loopback_serves(viewer: Viewer) -> None:
    """A viewer on 127.0.0.2 skipped the Host check (only 127.0.0.1 counted as loopback); ::1 could not bind."""
    for client in _serving(viewer.store, "127.0.0.2"):
        stranger = client.get(f"/api/traces/{viewer.solved}", headers={"Host": "attacker.example"})
        assert stranger.status_code == 421
        assert client.get("/").status_code == 200  # Host 127.0.0.2:PORT, a loopback address
    if not socket.has_ipv6:
        return
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return  # this machine has no IPv6 loopback
    for client in _serving(viewer.store, "::1"):
        assert str(client.base_url).startswith("http://[::1]:")
        assert client.get(f"/api/traces/{viewer.solved}").json()["id"] == viewer.solved
        assert client.get("/", headers={"Host": "attacker.example"}).status_code == 421


def test_loopback_names_are_the_loopback_addresses_and_localhost_only() -> None:
    from ttc.viewer.server import _loopback

    for name in ("localhost", "127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):  # the last: an IPv4-mapped one
        assert _loopback(name), name
    for name in ("attacker.example", "10.0.0.1", "::ffff:8.8.8.8", "0.0.0.0", ""):
        assert not _loopback(name), name


def test_a_client_that_hangs_up_mid_answer_is_let_go_quietly(viewer: Viewer, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Writing to a reset socket raised into the 'bug' path, which wrote a second answer and printed two
    tracebacks."""
    monkeypatch.setattr(viewer.store, "export_trace", lambda _id: {"text": "x" * 20_000_000})
    host, port = viewer.server.server_address[:2]
    with socket.create_connection((host, port)) as raw:
        raw.sendall(b"GET /api/traces/anything HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.0 200")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    monkeypatch.undo()
    assert viewer.client.get(f"/api/traces/{viewer.solved}").status_code == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err


def test_sigterm_stops_a_viewer_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A background job of a script starts with SIGINT ignored; SIGTERM was turned into that SIGINT and lost."""
    db = tmp_path / "bg.db"
    TraceStore(str(db)).close()
    proc = subprocess.Popen([sys.executable, "-m", "ttc", "view", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TTC_DB": str(db)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ttc viewer on")
        proc.terminate()
        proc.wait(timeout=20)  # it stopped (the viewer ends quietly, as on Ctrl-C)
    finally:
        if proc.poll() is None:
            proc.kill()


def _stored_with(tmp_path: Path, *, meta: str | None = None, payload: str | None = None) -> tuple[Path, str]:
    """A store with one done trace whose problem meta or event payload is then set to the given JSON text, as a
    ttc that did not refuse deep values would have stored it."""
    from ttc.types import Budget, Node, Problem, Result, TraceEvent, Usage

    db = tmp_path / "deep.db"
    with TraceStore(str(db)) as store:
        trace_id = store.start_trace(problem=Problem("q"), strategy="beam", budget=Budget.of(10), backend="b",
                                     seed=1)
        store.finish_trace(trace_id, result=Result(answer="1", text="t", score=0.5, strategy="beam", usage=Usage(),
                                                   trace_id=trace_id),
                           nodes=[Node(id=0, parent=None, depth=0, text="t", token_count=1)],
                           events=[TraceEvent(kind="e", payload={})])
    with sqlite3.connect(db) as raw:
        if meta is not None:
            raw.execute("UPDATE problems SET meta = ?", (meta,))
        if payload is not None:
            raw.execute("UPDATE events SET payload = ?", (payload,))
    return db, trace_id


def test_a_trace_whose_meta_is_nested_500_deep_is_served(tmp_path: Path) -> None:
    """A dataset row's 500-deep field was kept, and then its trace's JSON was a 500 (RecursionError)."""
    db, trace_id = _stored_with(tmp_path, meta='{"level": ' + "[" * 500 + "]" * 500 + "}")
    with TraceStore(str(db), read_only=True) as store:
        for client in _serving(store, "127.0.0.1"):
            reply = client.get(f"/api/traces/{trace_id}")
            assert reply.status_code == 200
            level = reply.json()["problem"]["meta"]["level"]
            depth = 0
            while level:
                [level], depth = level, depth + 1
            assert depth == 499
            assert client.get(f"/traces/{trace_id}").status_code == 200


def test_a_trace_too_deep_to_read_is_answered_with_the_store_s_message(tmp_path: Path) -> None:
    """The reader's RecursionError was a 500 naming only RecursionError."""
    db, trace_id = _stored_with(tmp_path, payload='{"p": ' + "[" * 3000 + "]" * 3000 + "}")
    with TraceStore(str(db), read_only=True) as store:
        for client in _serving(store, "127.0.0.1"):
            for path in (f"/traces/{trace_id}", f"/api/traces/{trace_id}"):
                reply = client.get(path)
                assert reply.status_code == 503, path
                assert "holds a value nested too deeply to read back" in reply.text, path
                assert "RecursionError" not in reply.text
            assert client.get("/").status_code == 200  # every other page still serves


def test_json_the_encoder_cannot_write_is_answered_with_the_store_s_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder's RecursionError (after a conversion that fit) was a 500 from the 'bug' path."""

    class Recursing:
        @staticmethod
        def dumps(*args: object, **kwargs: object) -> str:
            raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")

    db, trace_id = _stored_with(tmp_path)
    with TraceStore(str(db), read_only=True) as store:
        for client in _serving(store, "127.0.0.1"):
            monkeypatch.setattr(export_module, "json", Recursing)
            for path in (f"/traces/{trace_id}", f"/api/traces/{trace_id}"):
                reply = client.get(path)
                assert reply.status_code == 503 and "it is nested too deeply" in reply.text, path
