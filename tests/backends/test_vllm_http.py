"""The vLLM client over real sockets, without vLLM: a scripted server speaking vLLM's HTTP API, a listener that never
answers, and a plain web server standing where vLLM should be.

What these cover happens below ``httpx.MockTransport``: timeouts, the TLS setup, connection pools left open, and
what another server's answer reads as.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_vllm_client import FakeVLLM

import ttc
from ttc.backends.vllm import VLLMBackend
from ttc.backends.vllm_errors import error_from_response
from ttc.config import default_backend
from ttc.errors import BackendError, ConfigError
from ttc.types import Sampling


class _VLLMHandler(http.server.BaseHTTPRequestHandler):
    """Answers as ``FakeVLLM`` does, over keep-alive HTTP/1.1, and counts the connections open."""

    protocol_version = "HTTP/1.1"
    server: _FakeServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.open += 1

    def finish(self) -> None:
        with self.server.lock:
            self.server.open -= 1
        super().finish()

    def do_GET(self) -> None:
        self._answer({})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self._answer(json.loads(self.rfile.read(length)) if length else {})

    def _answer(self, body: dict[str, Any]) -> None:
        time.sleep(self.server.delay_s)
        answer = self.server.fake._answer(self.path, body)
        self.send_response(answer.status_code)
        self.send_header("content-type", answer.headers.get("content-type", "application/json"))
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _VLLMHandler)
        self.fake = FakeVLLM()
        self.lock = threading.Lock()
        self.open = 0
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def settled_open(self, wait_s: float = 5.0) -> int:
        """Open connections once closing ones have closed (a client's close reaches the server a moment later)."""
        deadline = time.monotonic() + wait_s
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.open


@contextlib.contextmanager
def _serve(server: http.server.HTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vllm_fake() -> Iterator[_FakeServer]:
    server = _FakeServer()
    with _serve(server):
        yield server


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """A plain web server (``python -m http.server``) serving an empty folder: every vLLM path is its 404 page."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    with _serve(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A listener that takes connections (the kernel accepts them) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- the timeout ----------------------------------------------------------------------------------------------


def test_a_backend_made_from_a_url_waits_as_long_as_ttc_vllm_timeout_says(
        silent_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--url`` and ``TTC_VLLM_URL`` make the backend with no ``timeout=``: the variable is their only way."""
    monkeypatch.setenv("TTC_VLLM_TIMEOUT", "1")
    backend = default_backend(url=silent_url).backend
    assert isinstance(backend, VLLMBackend) and backend.timeout == 1.0
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"within 1s.*TTC_VLLM_TIMEOUT") as caught:
        asyncio.run(asyncio.wait_for(backend.connect(), 20))
    assert time.monotonic() - started < 10
    assert "timeout=" in str(caught.value)


def test_an_explicit_timeout_wins_over_the_variable_and_unset_means_120(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_VLLM_TIMEOUT", " 300 ")
    assert VLLMBackend("http://127.0.0.1:8000").timeout == 300.0
    assert VLLMBackend("http://127.0.0.1:8000", timeout=5).timeout == 5
    monkeypatch.setenv("TTC_VLLM_TIMEOUT", "")
    assert VLLMBackend("http://127.0.0.1:8000").timeout == 120.0


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1s"])
def test_a_bad_ttc_vllm_timeout_says_what_to_set(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_VLLM_TIMEOUT", value)
    with pytest.raises(ConfigError, match=r"TTC_VLLM_TIMEOUT must be a number of seconds above 0"):
        VLLMBackend("http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match=r"TTC_VLLM_TIMEOUT"):
        default_backend(url="http://127.0.0.1:8000")


# -- TLS setup off the event loop ------------------------------------------------------------------------------


def _record_certificate_loads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each certificate-store load, whether it ran on an event loop."""
    loads: list[bool] = []
    create, load = ssl.create_default_context, ssl.SSLContext.load_verify_locations

    def on_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def recorded_create(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        loads.append(on_loop())
        return create(*args, **kwargs)

    def recorded_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(on_loop())
        load(self, *args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", recorded_create)
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", recorded_load)
    return loads


def test_the_first_request_loads_no_certificates_on_the_event_loop(
        vllm_fake: _FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """asolve opens the backend off the loop; its first request made the HTTP client, which loaded the certificate
    store (60-300 ms) on the loop, for an http:// server too."""
    backend = VLLMBackend(vllm_fake.url)
    loads = _record_certificate_loads(monkeypatch)

    async def first_use() -> None:
        await backend.complete([72, 105], 1, Sampling(max_tokens=2))
        await backend.aclose()

    asyncio.run(first_use())
    assert True not in loads


def test_an_https_backend_loads_its_certificates_when_made_not_on_the_loop(
        dead_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _record_certificate_loads(monkeypatch)
    backend = VLLMBackend(dead_url.replace("http://", "https://"), retries=0)
    assert loads and True not in loads  # made here, by whoever makes the backend
    with pytest.raises(BackendError, match="could not reach"):
        asyncio.run(backend.connect())
    assert True not in loads


# -- connection pools of a lent backend -----------------------------------------------------------------------


def test_a_lent_backend_keeps_no_connection_open_between_solve_calls(vllm_fake: _FakeServer) -> None:
    """Each solve() runs on an event loop of its own, and each left its pool (and a socket) open until garbage
    collection: six calls held six connections."""
    backend = VLLMBackend(vllm_fake.url)
    opened = []
    for seed in range(4):
        result = ttc.solve("What is 2 + 3?", 64, strategy="best_of_n", n=2, backend=backend, store=False, seed=seed)
        assert len(result.candidates) == 2
        opened.append(vllm_fake.settled_open())
    assert opened == [0, 0, 0, 0]
    assert backend.stats().calls == 4  # the backend itself stays open: the caller's to close


def test_a_pool_another_question_is_using_stays_open_until_it_is_done(vllm_fake: _FakeServer) -> None:
    """Two questions on one loop share a lent backend: the first to finish must not cut off the other's request."""
    backend = VLLMBackend(vllm_fake.url)

    async def both() -> tuple[ttc.Result, ttc.Result]:
        await backend.connect()
        vllm_fake.delay_s = 0.3
        return await asyncio.gather(
            ttc.asolve("What is 2 + 3?", 64, strategy="best_of_n", n=1, backend=backend, store=False, seed=1),
            _released_while_in_flight(backend))

    quick, slow = asyncio.run(both())
    assert len(quick.candidates) == 1 and len(slow.candidates) == 1
    assert vllm_fake.settled_open() == 0


def test_a_transport_the_caller_gave_is_left_open_for_its_other_backends(vllm_fake: _FakeServer) -> None:
    """A transport passed in is the caller's, perhaps shared by several backends: releasing one backend's pool
    closed it under the others."""
    async def shared() -> None:
        transport = httpx.AsyncHTTPTransport()
        first, second = (VLLMBackend(vllm_fake.url, transport=transport, retries=0) for _ in range(2))
        await first.connect()
        vllm_fake.delay_s = 0.3
        asking = asyncio.ensure_future(second.connect())
        await asyncio.sleep(0.1)  # the second backend's request is under way on the shared transport
        await first.release_loop()
        await asking  # and is answered
        await transport.aclose()

    asyncio.run(shared())


async def _released_while_in_flight(backend: VLLMBackend) -> ttc.Result:
    await asyncio.sleep(0.1)  # the other question's request is under way
    return await ttc.asolve("What is 4 + 1?", 64, strategy="best_of_n", n=1, backend=backend, store=False, seed=2)


# -- another server where vLLM should be ------------------------------------------------------------------------


def test_a_web_servers_page_is_one_line_that_says_it_is_not_vllm(web_server: str) -> None:
    backend = VLLMBackend(web_server, retries=0)
    with pytest.raises(BackendError) as caught:
        asyncio.run(backend.connect())
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert "HTTP 404" in message and "an HTML page" in message and "not vLLM's JSON API" in message
    assert "vLLM server's base URL" in message
    assert "vLLM answered" not in message and "<" not in message


def test_the_cli_prints_a_web_servers_page_as_one_line(web_server: str, tmp_path: Path) -> None:
    """The command line promises one-line errors; the page came out as thirteen lines of markup."""
    done = subprocess.run([sys.executable, "-m", "ttc", "solve", "What is 2 + 3?", "--url", web_server,
                           "--strategy", "best_of_n", "--budget", "64"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TTC_DB": str(tmp_path / "t.db")})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the server answered HTTP 404 with an HTML page"), lines


def test_a_body_that_is_not_json_is_one_bounded_line_not_said_to_come_from_vllm() -> None:
    """vLLM answers its errors in JSON: a text body comes from a proxy or another server, and is shown on one line."""
    page = "404 page not found\n\n" + "upstream   said\tno\n" * 100
    error = error_from_response(httpx.Response(404, text=page), kind="models", url="http://h:1/v1/models")
    message = str(error)
    assert message.startswith("the server answered HTTP 404: 404 page not found upstream said no")
    assert "\n" not in message and len(message) < 450
    vllm = error_from_response(httpx.Response(404, json={"detail": "Not Found"}), kind="models", url="http://h:1")
    assert str(vllm).startswith("vLLM answered HTTP 404: Not Found")


@pytest.mark.parametrize(("status", "hint"), [(502, "see its log"), (401, "API key")])
def test_a_proxys_page_for_another_status_keeps_that_statuss_hint(status: int, hint: str) -> None:
    """A proxy in front of vLLM answers a restart (502) or its login (401) with a page of its own: the URL is right
    there, and the status's own hint says what to do."""
    page = f"<html><head><title>{status} Error</title></head><body><center>nginx</center></body></html>"
    message = str(error_from_response(httpx.Response(status, html=page), kind="complete", url="http://h:1"))
    assert message.startswith(f"the server answered HTTP {status}: an HTML page ('{status} Error')"), message
    assert hint in message and "not vLLM's JSON API" not in message and "\n" not in message


def test_an_html_page_answered_with_200_says_the_url_is_not_vllms() -> None:
    async def page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, html="<!DOCTYPE html>\n<html><head><title>My app</title></head>\n<body></body>")

    backend = VLLMBackend("http://app:8000", transport=httpx.MockTransport(page), retries=0)
    with pytest.raises(BackendError, match=r"an HTML page \('My app'\), not vLLM's JSON API: check that the URL"):
        asyncio.run(backend.connect())
