"""The viewer's HTTP server: the standard library's threading server, read-only routes over one TraceStore.

Routes: ``/`` (runs and traces; ``?run=ID``, ``?status=done``, ``?limit=N``), ``/traces/ID`` (one trace, by id or a
unique prefix), ``/api/traces/ID`` (the trace as strict JSON, as ``ttc traces export`` writes it). A request the
store refuses (an unknown or ambiguous id, a bad filter) gets the store's own message with 404 or 400, never a
stack trace.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from ttc.errors import ConfigError, NotFound, StorageError
from ttc.storage import TraceStore
from ttc.storage.export import strict_json_text
from ttc.viewer.pages import error_page, index_page, trace_page

DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
"""The pages are static HTML with one inline stylesheet and links: nothing else may load or run."""


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its store. Store reads are safe from several threads at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: TraceStore) -> None:
        if ":" in address[0]:  # an IPv6 address: the base class binds IPv4 sockets only
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewerHandler)
        self.store = store

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    _answered = False

    def do_GET(self) -> None:
        self._answered = False  # per request: a kept-alive connection asks again
        if not self._addressed_here():
            self._fail(HTTPStatus.MISDIRECTED_REQUEST, "the viewer answers only requests addressed to this machine "
                       "(Host localhost or a loopback address such as 127.0.0.1 or [::1]); serve it with --host to "
                       "reach it from elsewhere")
            return
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            if path == "/":
                self._index(query)
            elif path.startswith("/traces/") and path.count("/") == 2:
                record = self.server.store.get_trace(path.removeprefix("/traces/"))
                self._send(HTTPStatus.OK, trace_page(record, store=self.server.store.url))
            elif path.startswith("/api/traces/") and path.count("/") == 3:
                data = self.server.store.export_trace(path.removeprefix("/api/traces/"))
                self._send(HTTPStatus.OK, strict_json_text(data, "trace"), "application/json")
            else:
                self._fail(HTTPStatus.NOT_FOUND, f"no page at {path}: the viewer has /, /traces/ID and "
                           "/api/traces/ID")
        except ConfigError as exc:
            self._fail(HTTPStatus.BAD_REQUEST, str(exc))
        except NotFound as exc:
            self._fail(HTTPStatus.NOT_FOUND, str(exc))
        except StorageError as exc:
            self._fail(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except Exception as exc:  # a bug: answered, not a dropped connection, so the page says what broke
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"the viewer failed: {type(exc).__name__}: {exc}")

    def _index(self, query: dict[str, str]) -> None:
        limit = _limit(query.get("limit"))
        run, status = query.get("run") or None, query.get("status") or None
        store = self.server.store
        traces = store.list_traces(run_id=run, status=status, limit=limit)
        self._send(HTTPStatus.OK, index_page(store.list_runs(limit=50), traces, run=run, status=status,
                                             limit=limit, store=store.url))

    def _addressed_here(self) -> bool:
        """A viewer bound to loopback answers only requests naming a loopback host. A web page can point its own
        domain at 127.0.0.1 (DNS rebinding) and then read this machine's traces; its requests carry that domain in
        ``Host``, which is how they are told apart. A viewer bound elsewhere was exposed on purpose."""
        if not _loopback(str(self.server.server_address[0])):
            return True
        host = self.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser, which always sends one
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        return _loopback(name)

    def _fail(self, status: HTTPStatus, message: str) -> None:
        if self._answered:  # the headers went out: a second answer would only garble the first
            self.close_connection = True
            return
        if self.path.startswith("/api/"):
            self._send(status, json.dumps({"error": message}), "application/json")
        else:
            self._send(status, error_page(status.value, message))

    def _send(self, status: HTTPStatus, body: str, content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self._answered = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:  # the client went away mid-answer: nobody is left to tell
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a local viewer's access log would only bury the URL it printed."""


def _loopback(name: str) -> bool:
    """Whether ``name`` (an address or a Host header's name) can only mean this machine: ``localhost`` or a
    loopback address such as 127.0.0.2 or ::1. A domain name is not, even one that resolves here."""
    if name.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ConfigError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def make_server(store: TraceStore, host: str = "127.0.0.1", port: int = 8321) -> ViewerServer:
    """A viewer bound to ``host:port`` (port 0: any free port; ``server.url`` says which), not yet serving.

    An empty host is refused: the socket layer reads it as every interface, which would serve the whole trace
    store to the network where the caller meant this machine (an unset ``--host "$HOST"``)."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"--host must name an address, got {host!r}: 127.0.0.1 serves this machine only, 0.0.0.0 "
                          "every interface")
    try:
        return ViewerServer((host, port), store)
    except OSError as exc:
        raise ConfigError(f"cannot serve the viewer on {host}:{port}: {exc.strerror or exc}; check the --host "
                          "address, or pick another --port (0 takes any free one)") from None


def serve(server: ViewerServer) -> None:
    """Serve until interrupted; the caller closes the store."""
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["DEFAULT_LIMIT", "ViewerHandler", "ViewerServer", "make_server", "serve"]
