"""The vLLM backend: ttc's client for one or more vLLM servers speaking the OpenAI-compatible HTTP API.

One deployment serves many concurrent searches. Prompts travel as token ids so that vLLM's automatic prefix
caching shares a search tree's common prefixes; each request goes to the replica that was sent the longest run of
its leading blocks, unless that replica is far busier than another (see ``ttc.backends.routing``). All requests
share one ``httpx.AsyncClient`` connection pool and one semaphore, so a search that fans out wide never opens more
than ``max_concurrency`` requests at once.

Usage accounting comes from the server: per-call prompt, completion and cached prompt tokens (cached ones need
the server flag ``--enable-prompt-tokens-details``; without it they read 0), and the prefix-cache hit rate from its
Prometheus ``/metrics`` counters (``prefix_cache_snapshot`` before and after a run, ``prefix_cache_hit_rate`` to
diff them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import httpx

from ttc.backends.base import BackendStats, token_ids
from ttc.backends.lru import LRUCache
from ttc.backends.retry import Backoff
from ttc.backends.routing import Replica, ReplicaRouter
from ttc.backends.vllm_errors import (
    connection_error,
    context_length_error,
    error_from_response,
    is_html,
    not_vllm,
    protocol_error,
    server_message,
    timeout_error,
)
from ttc.backends.vllm_metrics import (
    PrefixCacheSnapshot,
    ReplicaCounters,
    counters_from_metrics,
    prefix_cache_hit_rate,
)
from ttc.backends.vllm_protocol import (
    ServerInfo,
    completion_payload,
    int_token_ids,
    parse_completions,
    parse_models,
    parse_prompt_logprobs,
    prompt_logprobs_payload,
)
from ttc.envvars import env_seconds, env_text
from ttc.errors import BackendError, ConfigError, ContextLengthError
from ttc.types import Completion, PromptLogprobs, Sampling, is_finite_number, is_int

# Failures that mean "this replica is not there": bench it and fail over.
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection broke mid-request (server restarting, idle keep-alive closed): worth another try.
_BROKEN = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)

DEFAULT_TIMEOUT_S = 120.0
"""Seconds one request may take where neither ``timeout=`` nor ``TTC_VLLM_TIMEOUT`` says otherwise."""


class _Default(enum.Enum):
    """``timeout``'s default, read when the backend is made. Not None: to httpx that means no limit at all, so a
    ``timeout=None`` is refused rather than read as the default."""

    FROM_ENV = "TTC_VLLM_TIMEOUT, else 120 s"


@dataclass
class _LoopState:
    """The client, semaphore and lock of one event loop; asyncio objects cannot be shared across loops."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    connect_lock: asyncio.Lock
    users: int = 0
    """Requests under way on this client (queued behind the semaphore too): ``release_loop`` leaves it open."""


def _normalise_url(url: object) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"a vLLM server URL must be a string such as http://127.0.0.1:8000, got {url!r}")
    if "," in url:
        raise ConfigError(f"{url!r} holds several URLs: pass replicas as a list (VLLMBackend([url1, url2])), or "
                          "comma-separated in TTC_VLLM_URL")
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"vLLM server URL must start with http:// or https://, got {url!r} "
                          "(e.g. http://127.0.0.1:8000)")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{url!r} is not a valid server URL ({exc}); e.g. http://127.0.0.1:8000") from None
    if not parsed.host or "?" in url or "#" in url:
        # An empty query ("host:8000?") parses as none, yet the paths appended after it would land in it.
        raise ConfigError(f"{url!r} must be a server root (scheme, host and port, e.g. http://127.0.0.1:8000), "
                          "without a query or fragment")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigError(f"{url!r} names port {parsed.port}; a port is 1 to 65535")
    return url


def _env_timeout() -> float:
    """``TTC_VLLM_TIMEOUT``, else the default: a backend made from ``TTC_VLLM_URL`` or ``--url`` has no other way
    to wait longer for a slow server."""
    return env_seconds("TTC_VLLM_TIMEOUT", default=DEFAULT_TIMEOUT_S, zero=False)


def _tls_context(urls: Sequence[str]) -> ssl.SSLContext:
    """The TLS settings every client of the backend uses, made once, by whoever makes the backend.

    An httpx client loads the certificate store (tens to hundreds of ms) when it is made, also for http:// URLs,
    and a client is made on each event loop the backend is used on: that stalled the loop. For plain-HTTP servers a
    bare verifying context serves, as no TLS connection is ever opened (redirects are not followed)."""
    if any(url.startswith("https://") for url in urls):
        return httpx.create_ssl_context()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.contextmanager
def _shape(kind: str, response: httpx.Response) -> Iterator[None]:
    """A body that is JSON but not of the shape vLLM sends becomes a BackendError naming the call and the server,
    not a TypeError from deep inside the parser."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise protocol_error(f"the {kind} response is not shaped as vLLM's ({type(exc).__name__}: {exc})",
                             kind=kind, url=str(response.url)) from exc


class VLLMBackend:
    """A ``Backend`` that sends every request to vLLM servers over HTTP.

    ``base_url`` is a server root (``http://host:8000``) or several, one per replica. ``model`` defaults to the
    first model the server lists. ``timeout`` bounds each request, in seconds: by default ``TTC_VLLM_TIMEOUT``, or
    120 where that is unset. ``retries`` counts extra attempts after the first, made on connection errors,
    429, 500, 502, 503 and 504 only, with exponential backoff and seeded jitter (``backoff_s`` is the first delay).
    ``block_tokens`` (vLLM's KV block size), ``min_cached`` and ``spill_in_flight`` tune replica affinity; see
    ``ttc.backends.routing.ReplicaRouter``.
    """

    draws_distinct: ClassVar[bool] = False
    """vLLM samples each continuation independently: ``Sampling(distinct=True)`` is refused."""

    def __init__(self, base_url: str | Sequence[str], model: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 64, timeout: float | _Default = _Default.FROM_ENV, retries: int = 3, *,
                 block_tokens: int = 16, min_cached: float = 0.5, spill_in_flight: int = 32,
                 cooldown_s: float = 10.0, backoff_s: float = 0.25, seed: int = 0,
                 cache_size: int = 4096, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not isinstance(base_url, str) and not (isinstance(base_url, Sequence) and base_url):
            raise ConfigError(f"base_url must be a server URL or a list of them, got {base_url!r}")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        timeout = _env_timeout() if timeout is _Default.FROM_ENV else timeout
        for name, count, least in (("max_concurrency", max_concurrency, 1), ("retries", retries, 0),
                                   ("cache_size", cache_size, 1)):
            if not is_int(count) or count < least:
                raise ConfigError(f"{name} must be an int >= {least}, got {count!r}")
        for name, seconds, positive in (("timeout", timeout, True), ("cooldown_s", cooldown_s, False),
                                        ("backoff_s", backoff_s, False)):
            if not is_finite_number(seconds) or seconds < 0 or (positive and seconds == 0):
                bound = "> 0" if positive else ">= 0"
                raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {seconds!r}")
        self.urls = tuple(_normalise_url(u) for u in urls)
        self._router = ReplicaRouter(self.urls, block_tokens=block_tokens, min_cached=min_cached,
                                     spill_in_flight=spill_in_flight, cooldown_s=cooldown_s)
        self._model = model
        self._api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self._backoff = Backoff(base_s=backoff_s, seed=seed)
        self._transport = transport
        self._tls = _tls_context(self.urls) if transport is None else None  # a given transport brings its own
        self._tokens: LRUCache[tuple[str, bool], tuple[int, ...]] = LRUCache(cache_size)
        self._texts: LRUCache[tuple[int, ...], str] = LRUCache(cache_size)
        self._state: _LoopState | None = None
        self._info: ServerInfo | None = None
        self._connected: ServerInfo | None = None  # set once connect() has finished
        self._eos: int | None = None
        self._unk: tuple[str, int] | None = None  # the unknown token's text and id, where the tokenizer has one
        self._baseline: PrefixCacheSnapshot | None = None
        self._latest: PrefixCacheSnapshot | None = None
        self._calls = self._prompt_tokens = self._cached_tokens = self._generated = self._scored = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    @classmethod
    def from_env(cls, **options: Any) -> VLLMBackend:
        """Build from ``TTC_VLLM_URL`` (comma-separated for replicas), ``TTC_VLLM_MODEL``, ``TTC_VLLM_API_KEY``."""
        urls = [u.strip() for u in (env_text("TTC_VLLM_URL") or "").split(",") if u.strip()]
        if not urls:
            raise ConfigError("TTC_VLLM_URL is not set: set it to the vLLM server's base URL, e.g. "
                              "http://127.0.0.1:8000 (comma-separate several replicas)")
        # Trimmed, blank read as unset: ' qwen ' named no served model, and a blank key went out as 'Bearer   '.
        return cls(urls, model=env_text("TTC_VLLM_MODEL"), api_key=env_text("TTC_VLLM_API_KEY"), **options)

    # -- identity -------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "vllm:" + ",".join(self.urls)

    @property
    def model(self) -> str | None:
        """The served model's name: as given, or as discovered by ``connect``."""
        return self._info.model if self._info is not None else self._model

    @property
    def max_model_len(self) -> int | None:
        return None if self._info is None else self._info.max_model_len

    @property
    def eos_token_id(self) -> int | None:
        """The EOS id, known after ``connect`` when the server runs with ``--enable-tokenizer-info-endpoint``."""
        return self._eos

    # -- connection -----------------------------------------------------------------------------------------

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # A new event loop (e.g. a second asyncio.run): the old pool's connections belong to the old loop.
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency,
                                  max_keepalive_connections=self.max_concurrency)
            timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
            client = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, transport=self._transport,
                                       verify=self._tls or True)
            self._state = _LoopState(loop, client, asyncio.Semaphore(self.max_concurrency), asyncio.Lock())
        return self._state

    async def connect(self) -> ServerInfo:
        """Learn the model name, its context length and EOS id once; later calls return the cached answer."""
        if self._connected is not None:
            return self._connected
        async with self._loop_state().connect_lock:
            if self._connected is None:
                response = await self._send("models", "GET", "/v1/models")
                with _shape("models", response):
                    info = parse_models(self._json(response, "models"), self._model, url=str(response.url))
                self._info = info  # the EOS lookup and the cache snapshot below ask the server with it
                try:
                    self._eos, self._unk = await self._discover_special_tokens()
                    self._baseline = self._latest = await self.prefix_cache_snapshot()
                except BaseException:
                    self._info = None  # not connected after all: the next call starts over
                    raise
                # Published last: a concurrent caller that finds it set may rely on the EOS id and the baseline.
                self._connected = info
            return self._connected

    async def _discover_special_tokens(self) -> tuple[int | None, tuple[str, int] | None]:
        """The EOS id and the unknown token from ``/tokenizer_info``, an optional endpoint: a server without it, or
        one that answers it with something else than a JSON object, offers neither."""
        try:
            response = await self._send("tokenizer_info", "GET", "/tokenizer_info", retry=False)
            info = self._json(response, "tokenizer_info")
        except BackendError:
            return None, None
        eos = await self._single_token(info.get("eos_token"))
        unk = info.get("unk_token")
        unk = unk.get("content") if isinstance(unk, dict) else unk
        unk_id = await self._single_token(unk)
        return eos, (None if unk_id is None or not isinstance(unk, str) else (unk, unk_id))

    async def _single_token(self, token: object) -> int | None:
        """The id of a special token named by its text (or ``{"content": text}``); None unless it is one token."""
        if isinstance(token, dict):
            token = token.get("content")
        if not isinstance(token, str) or not token:
            return None
        ids = await self._tokenized({"prompt": token, "add_special_tokens": False})
        return ids[0] if len(ids) == 1 else None

    async def aclose(self) -> None:
        """Close the connection pool. A pool opened on another (finished) event loop is dropped, not closed:
        its connections can only be closed from the loop that opened them."""
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.client.aclose()

    async def release_loop(self) -> None:
        """Close the connection pool of the running event loop where no request is using it; the backend stays
        open, and a later request opens a new pool.

        A session calls this for the backends it was lent: ``solve()`` runs each call on an event loop of its own,
        and the pool each call left behind held its connections open until garbage collection."""
        state = self._state
        if state is not None and state.loop is asyncio.get_running_loop() and not state.users:
            self._state = None
            if self._transport is None:  # a transport given is the caller's, perhaps another backend's too
                await state.client.aclose()

    async def __aenter__(self) -> VLLMBackend:
        try:
            await self.connect()
        except BaseException:
            await self.aclose()  # __aexit__ does not run when __aenter__ fails
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- transport ------------------------------------------------------------------------------------------

    async def _send(self, kind: str, method: str, path: str, *, body: dict[str, Any] | None = None,
                    prompt: Sequence[int] | None = None, replica: Replica | None = None,
                    retry: bool = True) -> httpx.Response:
        """One request with bounded concurrency, failover and retries; returns a 2xx response or raises.

        Moving on from a replica that cannot be reached (or does not answer in time) to another healthy one is a
        failover, not a retry: with ``retries=0`` a dead replica beside a live one must not fail the call. Failovers
        are bounded by the number of replicas, retries by ``retries``."""
        state = self._loop_state()
        state.users += 1
        try:
            return await self._attempts(state, kind, method, path, body=body, prompt=prompt, replica=replica,
                                        retry=retry)
        finally:
            state.users -= 1

    async def _attempts(self, state: _LoopState, kind: str, method: str, path: str, *, body: dict[str, Any] | None,
                        prompt: Sequence[int] | None, replica: Replica | None, retry: bool) -> httpx.Response:
        retries = self.retries if retry else 0
        failovers = len(self.urls) - 1 if replica is None else 0
        previous: list[Replica] = []
        down: list[Replica] = []  # unreachable or silent for this request: failovers go elsewhere
        refused: set[str] = set()  # the replicas that could not be reached, for the error where none could
        for attempt in itertools.count(1):
            target = replica or self._router.pick(prompt, avoid=[*down, *previous])
            url = target.url + path
            try:
                response = await self._exchange(state, target, method, url, body)
            except _UNREACHABLE as exc:
                self._router.mark_down(target)
                refused.add(target.url)
                down.append(target)
                if failovers and self._router.has_alternative(down):
                    failovers -= 1
                elif retries:
                    retries -= 1
                    await asyncio.sleep(self._backoff.delay(self.retries - retries - 1))
                else:
                    every = len(refused) if replica is None and len(refused) == len(self.urls) else 1
                    raise connection_error(exc, kind=kind, url=url, attempts=attempt, replicas=every) from exc
            except _BROKEN as exc:
                if not retries:
                    raise connection_error(exc, kind=kind, url=url, attempts=attempt, reached=True) from exc
                retries -= 1
                await asyncio.sleep(self._backoff.delay(self.retries - retries - 1))
            except (httpx.TimeoutException, TimeoutError) as exc:
                # A replica that does not answer in time is benched like one that refuses: another may answer.
                self._router.mark_down(target)
                down.append(target)
                if not failovers or not self._router.has_alternative(down):
                    raise timeout_error(exc, kind=kind, url=url, timeout=self.timeout) from exc
                failovers -= 1
            except httpx.HTTPError as exc:
                raise BackendError(f"HTTP request failed: {type(exc).__name__}: {exc}", url=url,
                                   kind=kind) from exc
            else:
                if target.failures:
                    self._router.mark_up(target)
                if response.is_success:
                    return response
                error = error_from_response(response, kind=kind, url=url)
                if not error.retryable or not retries:
                    raise error
                retries -= 1
                await asyncio.sleep(self._backoff.delay(self.retries - retries - 1))
            previous = [target]
        raise AssertionError("unreachable: every attempt returns, raises or uses up a bounded budget")

    async def _exchange(self, state: _LoopState, target: Replica, method: str, url: str,
                        body: dict[str, Any] | None) -> httpx.Response:
        # A request counts on its replica from the moment it is placed, queued behind max_concurrency or not: the
        # next pick (with no await in between) sees it, so requests that queue together spread over the replicas.
        self._router.begin(target)
        try:
            async with state.semaphore:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    # httpx's timeout bounds each read; this bounds the whole exchange (a server trickling bytes).
                    async with asyncio.timeout(self.timeout):
                        return await state.client.request(method, url, json=body)
                finally:
                    self.in_flight -= 1
        finally:
            self._router.end(target)

    @staticmethod
    def _json(response: httpx.Response, kind: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            detail = not_vllm(server_message(response)) if is_html(response) else \
                f"the body is not JSON: {response.text[:200]!r}"
            raise protocol_error(detail, kind=kind, url=str(response.url)) from exc
        if not isinstance(body, dict):
            raise protocol_error(f"the body is not a JSON object: {response.text[:200]!r}", kind=kind,
                                 url=str(response.url))
        return body

    # -- tokenization ---------------------------------------------------------------------------------------

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids from the server's own tokenizer (cached), so ttc needs no tokenizer for remote models.

        A character the vocabulary has no token for is a ConfigError, as on the local engine, not an unknown token:
        the model would read something else than was asked. That needs the unknown token's id, learnt by
        ``connect`` from ``/tokenizer_info`` (``--enable-tokenizer-info-endpoint``)."""
        if not isinstance(text, str):
            raise ConfigError(f"tokenize takes text (a str), got {type(text).__name__}")
        key = (text, add_special_tokens)
        cached = self._tokens.get(key)
        if cached is not None:
            return list(cached)
        await self.connect()
        ids = await self._tokenized({"prompt": text, "add_special_tokens": add_special_tokens})
        if self._unk is not None and self._unk[1] in ids and self._unk[0] not in text:
            await self._refuse_unknown(text, self._unk[1])
        self._tokens.put(key, ids)
        return list(ids)

    async def _refuse_unknown(self, text: str, unk_id: int) -> None:
        """Name the characters of ``text`` that the vocabulary lacks: /tokenize gives no offsets, so each distinct
        character is tokenized alone (only on this failing path)."""
        chars = sorted(set(text))
        alone = await asyncio.gather(*(self._tokenized({"prompt": c, "add_special_tokens": False}) for c in chars))
        unknown = [c for c, ids in zip(chars, alone, strict=True) if unk_id in ids]
        shown = ", ".join(map(repr, unknown)) if unknown else "some of the characters"
        raise ConfigError(f"{self.name} (model {self.model!r}) has no token for {shown} in {_short(text)!r}: write "
                          "the text (a prompt template's own words too) with the characters its vocabulary holds, "
                          "or use a model that reads them (TTC_MODEL, TTC_VLLM_URL)")

    async def _tokenized(self, body: dict[str, Any]) -> tuple[int, ...]:
        """The token ids /tokenize returns for ``body`` (a text or a conversation)."""
        response = await self._send("tokenize", "POST", "/tokenize", body=self._for_model(body))
        tokens = self._json(response, "tokenize").get("tokens")
        if not isinstance(tokens, list):
            raise protocol_error("/tokenize returned no token list", kind="tokenize", url=str(response.url))
        ids = int_token_ids(tokens)
        if ids is None:
            raise protocol_error("/tokenize returned token ids that are not a list of ints >= 0", kind="tokenize",
                                 url=str(response.url))
        return tuple(ids)

    def _for_model(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` naming the served model where one is set: a server with several models needs the name."""
        if self.model is not None:
            body["model"] = self.model
        return body

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        key = tuple(token_ids)
        cached = self._texts.get(key)
        if cached is not None:
            return cached
        response = await self._send("detokenize", "POST", "/detokenize", body=self._for_model({"tokens": list(key)}))
        text = self._json(response, "detokenize").get("prompt")
        if not isinstance(text, str):
            raise protocol_error("/detokenize returned no text", kind="detokenize", url=str(response.url))
        self._texts.put(key, text)
        return text

    async def tokenize_chat(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool) -> list[int]:
        """Token ids of a conversation rendered by the served model's own chat template (chat-judgement PRMs)."""
        return list(await self._tokenized({"messages": [dict(m) for m in messages],
                                           "add_generation_prompt": add_generation_prompt}))

    async def pool(self, prompt: Sequence[int]) -> list[list[float]]:
        """Per-token outputs of a pooling model's head (``token_classify``), e.g. a PRM's class probabilities."""
        prompt = token_ids(prompt)
        if len(prompt) == 0:
            raise ConfigError("prompt must hold at least one token id")
        info = await self.connect()
        self._check_fits(info, len(prompt), 0, "pooling")
        body = self._for_model({"input": list(prompt), "task": "token_classify", "add_special_tokens": False})
        response = await self._send("pooling", "POST", "/pooling", body=body, prompt=prompt)
        data = self._json(response, "pooling").get("data")
        rows = data[0].get("data") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise protocol_error("/pooling returned no per-token rows", kind="pooling", url=str(response.url))
        with _shape("pooling", response):
            out = [[float(x) for x in row] for row in rows]
        self._calls += 1  # a PRM's scoring is a call like prompt_logprobs', and reads its prompt the same way
        self._scored += len(prompt)
        return out

    # -- generation and scoring -----------------------------------------------------------------------------

    def _within_context(self, info: ServerInfo, prompt_len: int, sampling: Sampling) -> Sampling:
        """``sampling`` with ``max_tokens`` cut to the room the context leaves after the prompt, as the local
        engine (and the server itself) does: a step near the end of the context ends there, 'length', rather than
        the whole solve failing. A prompt that leaves no room at all is refused, named, before it is sent."""
        if info.max_model_len is None or prompt_len + sampling.max_tokens <= info.max_model_len:
            return sampling
        room = info.max_model_len - prompt_len
        if room < 1:
            raise ContextLengthError(f"prompt of {prompt_len} tokens leaves no room in the server's max_model_len "
                                     f"of {info.max_model_len}: shorten it, or serve the model with a larger "
                                     "--max-model-len", url=",".join(self.urls), kind="complete")
        return dataclasses.replace(sampling, max_tokens=room)

    @staticmethod
    def _at_context_end(info: ServerInfo, prompt_len: int, completion: Completion, sampling: Sampling) -> Completion:
        """A stop string on the context's last position ends a sequence that cannot go on: 'length', as the local
        engine reports it, so a search does not ask for the next step of a path with no room left."""
        full = info.max_model_len is not None and prompt_len + len(completion.token_ids) >= info.max_model_len
        if full and completion.finish_reason == "stop" and any(completion.text.endswith(s) for s in sampling.stop):
            return dataclasses.replace(completion, finish_reason="length")
        return completion

    def _check_fits(self, info: ServerInfo, prompt_len: int, max_tokens: int, kind: str) -> None:
        if info.max_model_len is not None and prompt_len + max_tokens > info.max_model_len:
            raise context_length_error(prompt_tokens=prompt_len, max_tokens=max_tokens,
                                       max_model_len=info.max_model_len, kind=kind, url=",".join(self.urls))

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        """``n`` continuations in one request; every completion carries the call's prompt and cached counts.

        ``stats().generated_tokens`` counts what the server generated, so a greedy call with ``n > 1`` (answered
        by one generation) adds its tokens once.
        """
        if not is_int(n) or n < 1:
            raise ConfigError(f"n must be a positive int, got {n!r}")
        if sampling.distinct:
            raise ConfigError("vLLM samples each continuation independently and cannot draw them without "
                              "replacement: use the local engine for Sampling(distinct=True), or distinct=False")
        prompt = token_ids(prompt)  # a str would go out as a batch of one-character prompts
        if len(prompt) == 0:
            raise ConfigError("prompt must hold at least one token id")
        info = await self.connect()
        sent = self._within_context(info, len(prompt), sampling)
        # vLLM refuses n > 1 with greedy decoding; n greedy continuations are one continuation n times.
        sent_n = 1 if sampling.temperature == 0 else n
        payload = completion_payload(info.model, prompt, sent_n, sent)
        response = await self._send("complete", "POST", "/v1/completions", body=payload, prompt=prompt)
        with _shape("complete", response):
            completions, usage = parse_completions(self._json(response, "complete"), n=sent_n,
                                                   want_logprobs=sampling.logprobs, url=str(response.url),
                                                   max_tokens=sent.max_tokens)
        completions = [self._at_context_end(info, len(prompt), c, sampling) for c in completions]
        if usage.prompt_tokens not in (0, len(prompt)) or usage.cached_prompt_tokens > len(prompt):
            raise protocol_error(f"usage counts {usage.prompt_tokens} prompt tokens ({usage.cached_prompt_tokens} "
                                 f"cached) for a prompt of {len(prompt)}", kind="complete", url=str(response.url))
        self._calls += 1
        self._prompt_tokens += len(prompt)  # what was sent, which the server's count (where given) equals
        self._cached_tokens += usage.cached_prompt_tokens
        self._generated += sum(len(c.token_ids) for c in completions)  # what came back, not what usage claims
        return completions * (n // sent_n)

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        """Logprobs of each prompt token (and the ``top_k`` best) from one ``max_tokens=1`` request.

        The server refuses (400) a ``top_k`` above its ``--max-logprobs`` (20 by default), and checks it against
        nothing else: a ``top_k`` above the model's vocabulary crashes the server (vLLM 0.32), so serve a model with
        ``--max-logprobs`` no larger than its vocabulary (``scripts/vllm_server.sh`` caps it so).
        """
        if not is_int(top_k) or top_k < 0:
            raise ConfigError(f"top_k must be an int >= 0, got {top_k!r}")
        prompt = token_ids(prompt)
        if len(prompt) == 0:
            raise ConfigError("prompt must hold at least one token id")
        info = await self.connect()
        self._check_fits(info, len(prompt), 1, "prompt_logprobs")
        payload = prompt_logprobs_payload(info.model, prompt, top_k)
        response = await self._send("prompt_logprobs", "POST", "/v1/completions", body=payload, prompt=prompt)
        with _shape("prompt_logprobs", response):
            result, _usage = parse_prompt_logprobs(self._json(response, "prompt_logprobs"), prompt,
                                                   url=str(response.url))
        self._calls += 1
        self._scored += len(prompt)
        return result

    async def release(self, prompt: Sequence[int]) -> None:
        """Nothing to do: vLLM evicts cached prefixes by itself (LRU), and keeping them is what makes hits."""
        return None

    # -- accounting -----------------------------------------------------------------------------------------

    async def prefix_cache_snapshot(self) -> PrefixCacheSnapshot:
        """Every reachable replica's prefix-cache counters now; benched replicas and those without them are left out."""
        counters: dict[str, ReplicaCounters] = {}
        for replica in self._router.replicas:
            if not self._router.is_healthy(replica):
                continue
            try:
                response = await self._send("metrics", "GET", "/metrics", replica=replica, retry=False)
            except BackendError:
                continue
            found = counters_from_metrics(response.text)
            if found is not None:
                counters[replica.url] = found
        snapshot = PrefixCacheSnapshot(counters)
        self._latest = snapshot
        if self._baseline is None:
            self._baseline = snapshot
        return snapshot

    def stats(self) -> BackendStats:
        """Counters since creation. The hit rate covers first use up to the latest ``prefix_cache_snapshot``."""
        rate = None
        if self._baseline is not None and self._latest is not None:
            rate = prefix_cache_hit_rate(self._baseline, self._latest)
        return BackendStats(
            calls=self._calls,
            prompt_tokens=self._prompt_tokens,
            cached_prompt_tokens=self._cached_tokens,
            generated_tokens=self._generated,
            scored_tokens=self._scored,
            prefix_cache_hit_rate=rate,
        )


__all__ = ["PrefixCacheSnapshot", "VLLMBackend", "prefix_cache_hit_rate"]
