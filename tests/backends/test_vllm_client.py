"""Client logic of the vLLM backend without a server: metrics parsing, routing, retries and error mapping.

The HTTP exchanges go through ``httpx.MockTransport`` answering in vLLM's response shapes; everything the real
server decides (sampling, caching) is covered by ``test_vllm.py`` against a running vLLM.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ttc.backends.base import Backend
from ttc.backends.retry import Backoff
from ttc.backends.routing import ReplicaRouter, block_keys
from ttc.backends.vllm import VLLMBackend
from ttc.backends.vllm_metrics import (
    PrefixCacheSnapshot,
    ReplicaCounters,
    counters_from_metrics,
    parse_prometheus,
    prefix_cache_hit_rate,
)
from ttc.errors import BackendError, ConfigError, ContextLengthError
from ttc.types import Sampling

pytestmark = pytest.mark.anyio

METRICS = """\
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 120.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 80.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 90.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 10
vllm:gpu_cache_usage_perc{model_name="m"} NaN
garbage line without value
"""


# -- metrics -------------------------------------------------------------------------------------------------


def test_prometheus_parser_sums_label_sets_and_skips_junk() -> None:
    metrics = parse_prometheus(METRICS)
    assert metrics["vllm:prefix_cache_queries_total"] == 200.0
    assert metrics["vllm:prefix_cache_hits_total"] == 100.0
    assert "vllm:gpu_cache_usage_perc" not in metrics  # NaN is not a usable value
    assert "garbage" not in metrics


def test_counters_accept_names_with_and_without_total_suffix() -> None:
    assert counters_from_metrics(METRICS) == ReplicaCounters(queries=200.0, hits=100.0)
    plain = "vllm:prefix_cache_queries 10\nvllm:prefix_cache_hits 4\n"
    assert counters_from_metrics(plain) == ReplicaCounters(queries=10.0, hits=4.0)
    assert counters_from_metrics("vllm:num_requests_running 0\n") is None


def test_hit_rate_diffs_replicas_present_in_both_and_skips_restarts() -> None:
    before = PrefixCacheSnapshot({"a": ReplicaCounters(100, 50), "b": ReplicaCounters(1000, 900),
                                  "gone": ReplicaCounters(5, 5)})
    after = PrefixCacheSnapshot({"a": ReplicaCounters(200, 125), "b": ReplicaCounters(10, 0),  # b restarted
                                 "new": ReplicaCounters(50, 50)})
    assert prefix_cache_hit_rate(before, after) == pytest.approx(75 / 100)
    assert prefix_cache_hit_rate(after, after) is None  # nothing looked up in between
    assert after.hit_rate == pytest.approx(175 / 260)


# -- routing -------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_router_sends_a_prompt_where_its_longest_prefix_went_and_new_prompts_to_the_least_loaded() -> None:
    router = ReplicaRouter(["http://a", "http://b", "http://c"], block_tokens=2)
    question = [1, 2, 3, 4]
    first = router.pick(question)
    router.begin(first)
    router.begin(first)
    # Every block of the branch's question went to ``first``: it stays there though it is the busiest.
    assert router.pick([*question, 5, 6, 7]) is first
    other = router.pick([9, 9, 9, 9])
    assert other is not first and other.in_flight == 0
    router.begin(other)
    third = router.pick([7, 7, 7, 7])
    assert third not in (first, other)
    # A deeper node follows the longest prefix, not the first block: [1, 2, 3, 4, 5, 6] went to ``first`` and
    # [1, 2, 8, 8, 8, 8] goes where [1, 2, 8, 8] was sent (placed on the least loaded, since only 1 of 3 blocks
    # was cached).
    fork = router.pick([1, 2, 8, 8, 8, 8])
    assert fork is not first
    router.begin(fork)
    router.begin(fork)
    router.begin(fork)
    assert router.pick([1, 2, 8, 8, 8, 8, 9, 9]) is fork


def test_router_spreads_new_questions_behind_a_shared_template() -> None:
    # Every prompt opens with the same 8-token template; the questions differ after it.
    router = ReplicaRouter(["http://a", "http://b"], block_tokens=4)
    template = [5, 5, 5, 5, 6, 6, 6, 6]
    placed = []
    for q in range(4):
        replica = router.pick([*template, *([100 + q] * 12)])
        router.begin(replica)
        placed.append(replica.index)
    assert sorted(placed) == [0, 0, 1, 1]  # not all on the replica that saw the template first


def test_router_spills_a_busy_prefix_to_an_idle_replica() -> None:
    router = ReplicaRouter(["http://a", "http://b"], block_tokens=2, spill_in_flight=3)
    question = [1, 2, 3, 4]
    home = router.pick(question)
    for _ in range(2):
        router.begin(home)
    assert router.pick([*question, 5]) is home  # 2 more in flight than the other: still worth the cache
    router.begin(home)
    spilled = router.pick([*question, 6])
    assert spilled is not home  # 3 more in flight: the load wins
    router.begin(spilled)
    # The spilled replica now holds the question too, so its branches may follow it there.
    assert router.pick([*question, 7]) is spilled


def test_router_fails_over_and_brings_a_replica_back_after_its_cooldown() -> None:
    clock = FakeClock()
    router = ReplicaRouter(["http://a", "http://b"], block_tokens=2, cooldown_s=5.0, clock=clock)
    a = router.pick([1, 2])
    router.mark_down(a)
    b = router.pick([1, 2])
    assert b is not a
    assert router.pick([1, 2]) is b  # the key moved with the failover and stays
    assert router.has_alternative(b) is False
    clock.now = 6.0
    assert router.has_alternative(b) is True
    assert router.pick([3, 3]) is a  # healed, idle, lowest index
    router.mark_down(a)
    router.mark_down(b)
    clock.now = 6.5
    # Everything benched: the replica whose cool-down ends first is tried rather than failing outright.
    assert router.pick([1, 2]) is a


def test_router_bounds_its_affinity_table_and_validates_input() -> None:
    router = ReplicaRouter(["http://a", "http://b"], block_tokens=1, max_keys=3)
    for token in range(10):
        router.pick([token, token])
    assert len(router._holders) == 3
    with pytest.raises(ConfigError):
        ReplicaRouter([])
    with pytest.raises(ConfigError):
        ReplicaRouter(["http://a", "http://a"])
    for bad in ({"block_tokens": 0}, {"block_tokens": True}, {"spill_in_flight": 0}, {"min_cached": 1.5},
                {"min_cached": float("nan")}, {"max_keys": 0}):
        with pytest.raises(ConfigError):
            ReplicaRouter(["http://a"], **bad)  # type: ignore[arg-type]


def test_block_keys_name_equal_prefixes_alike_and_only_full_blocks() -> None:
    assert block_keys([1, 2, 3], 4) == []
    a, b = block_keys([1, 2, 3, 4, 5, 6, 7], 2), block_keys([1, 2, 3, 4, 9, 9], 2)
    assert len(a) == 3 and len(b) == 3
    assert a[:2] == b[:2] and a[2] != b[2]
    assert block_keys([3, 4, 1, 2], 2)[1] != a[1]  # the same blocks in another order are another prefix


def test_backoff_grows_exponentially_with_seeded_jitter() -> None:
    a, b = Backoff(base_s=0.1, max_s=1.0, seed=7), Backoff(base_s=0.1, max_s=1.0, seed=7)
    delays = [a.delay(i) for i in range(6)]
    assert delays == [b.delay(i) for i in range(6)]
    for i, d in enumerate(delays):
        raw = min(1.0, 0.1 * 2**i)
        assert 0.5 * raw <= d < 1.5 * raw


# -- a scripted vLLM -----------------------------------------------------------------------------------------


@dataclass
class FakeVLLM:
    """Answers like vLLM 0.x's OpenAI server; ``fail`` maps a path to a queue of statuses to answer first."""

    max_model_len: int = 512
    model: str = "m"
    cached_tokens: int | None = 3
    eos: str | None = "</s>"
    delay_s: float = 0.0
    fail: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.requests.append((path, body))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            queue = self.fail.get(path)
            if queue:
                status = queue.pop(0)
                return httpx.Response(status, json={"error": {"message": f"scripted {status}", "code": status}})
            return self._answer(path, body)
        finally:
            self.in_flight -= 1

    def _answer(self, path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": self.model, "object": "model", "max_model_len": self.max_model_len}]})
        if path == "/tokenizer_info":
            if self.eos is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            return httpx.Response(200, json={"tokenizer_class": "X", "eos_token": self.eos})
        if path == "/tokenize":
            text = body["prompt"]
            tokens = [2] if text == "</s>" else [ord(c) for c in text]
            return httpx.Response(200, json={"count": len(tokens), "max_model_len": 512, "tokens": tokens})
        if path == "/detokenize":
            return httpx.Response(200, json={"prompt": "".join(chr(t) for t in body["tokens"])})
        if path == "/metrics":
            return httpx.Response(200, text=METRICS)
        if path == "/v1/completions":
            return httpx.Response(200, json=self._completions(body))
        return httpx.Response(404, json={"detail": "Not Found"})

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        usage: dict[str, Any] = {"prompt_tokens": len(prompt), "completion_tokens": 0}
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, len(prompt))}
        if body.get("prompt_logprobs") is not None:
            rows: list[Any] = [None] + [{str(t): {"logprob": -1.5, "rank": 3}, "7": {"logprob": -0.1, "rank": 1}}
                                        for t in prompt[1:]]
            choice = {"index": 0, "text": "x", "token_ids": [120], "prompt_logprobs": rows}
            return {"choices": [choice], "usage": usage}
        choices = []
        for i in reversed(range(body["n"])):  # out of order on purpose: the client sorts by index
            ids = [100 + i, 101 + i]
            choices.append({"index": i, "text": "".join(chr(t) for t in ids), "token_ids": ids,
                            "finish_reason": "length" if i % 2 else "stop",
                            "logprobs": {"token_logprobs": [-0.5, -0.25]} if body.get("logprobs") == 0 else None})
        usage["completion_tokens"] = 2 * body["n"]
        return {"choices": choices, "usage": usage}


def make_backend(fake: Callable[[httpx.Request], Any], urls: str | list[str] = "http://vllm:8000",
                 **options: Any) -> VLLMBackend:
    options.setdefault("backoff_s", 0.001)
    return VLLMBackend(urls, transport=httpx.MockTransport(fake), **options)


# -- behaviour against the scripted server -------------------------------------------------------------------


async def test_complete_sends_token_ids_and_parses_ids_logprobs_and_usage() -> None:
    fake = FakeVLLM()
    backend = make_backend(fake)
    assert isinstance(backend, Backend)
    sampling = Sampling(max_tokens=8, temperature=0.7, top_p=0.9, stop=("\n",), seed=11, logprobs=True)
    out = await backend.complete([5, 6, 7], n=3, sampling=sampling)
    body = dict(fake.requests)["/v1/completions"]
    assert body["prompt"] == [5, 6, 7] and body["model"] == "m" and body["n"] == 3
    assert body["seed"] == 11 and body["stop"] == ["\n"] and body["include_stop_str_in_output"] is True
    assert body["return_token_ids"] is True and body["logprobs"] == 0
    assert [c.token_ids for c in out] == [(100, 101), (101, 102), (102, 103)]
    assert [c.finish_reason for c in out] == ["stop", "length", "stop"]
    assert out[0].logprobs == (-0.5, -0.25) and out[0].cumulative_logprob == -0.75
    assert all(c.prompt_tokens == 3 and c.cached_prompt_tokens == 3 for c in out)
    stats = backend.stats()
    assert (stats.calls, stats.prompt_tokens, stats.cached_prompt_tokens, stats.generated_tokens) == (1, 3, 3, 6)
    assert backend.eos_token_id == 2
    await backend.aclose()


async def test_missing_cached_token_details_and_tokenizer_info_read_as_zero_and_none() -> None:
    fake = FakeVLLM(cached_tokens=None, eos=None)
    backend = make_backend(fake)
    out = await backend.complete([1, 2], n=1, sampling=Sampling(max_tokens=4))
    assert out[0].cached_prompt_tokens == 0 and out[0].logprobs is None
    assert backend.eos_token_id is None
    assert "logprobs" not in dict(fake.requests)["/v1/completions"]


async def test_model_is_discovered_once_under_concurrent_first_use() -> None:
    fake = FakeVLLM(delay_s=0.01)
    backend = make_backend(fake)
    await asyncio.gather(*(backend.complete([i + 1], 1, Sampling(max_tokens=2)) for i in range(10)))
    assert fake.paths().count("/v1/models") == 1
    assert backend.model == "m" and backend.max_model_len == 512


async def test_a_concurrent_connect_waits_until_the_first_has_finished() -> None:
    """A second caller returned while the first still asked for the EOS id: it read eos_token_id as None, and its
    completion went out before the baseline /metrics snapshot."""
    fake = FakeVLLM()

    async def slow_tokenizer_info(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenizer_info":
            await asyncio.sleep(0.1)
        return await fake(request)

    backend = make_backend(slow_tokenizer_info)
    seen: list[int | None] = []

    async def second() -> None:
        await asyncio.sleep(0.02)
        await backend.connect()
        seen.append(backend.eos_token_id)
        await backend.complete([1, 2, 3], 1, Sampling(max_tokens=2))

    await asyncio.gather(backend.connect(), second())
    assert seen == [2]
    paths = fake.paths()
    assert paths.index("/metrics") < paths.index("/v1/completions")
    await backend.aclose()


async def test_a_failed_async_with_closes_its_connection_pool() -> None:
    backend = make_backend(FakeVLLM(), model="not-served")
    with pytest.raises(BackendError, match="not-served"):
        async with backend:
            pass
    assert backend._state is None  # the pool connect() opened was closed, not left to the garbage collector


async def test_prompt_logprobs_maps_rows_to_token_ids() -> None:
    fake = FakeVLLM()
    backend = make_backend(fake)
    result = await backend.prompt_logprobs([4, 5, 6], top_k=1)
    body = dict(fake.requests)["/v1/completions"]
    assert body["prompt_logprobs"] == 1 and body["max_tokens"] == 1
    assert result.top[0] is None
    assert result.top[1] == {5: -1.5, 7: -0.1}
    assert result.token_logprob(2) == -1.5
    assert backend.stats().scored_tokens == 3


async def test_tokenize_and_detokenize_are_cached() -> None:
    fake = FakeVLLM()
    backend = make_backend(fake, cache_size=2)
    assert await backend.tokenize("ab") == [97, 98]
    assert await backend.tokenize("ab") == [97, 98]
    assert await backend.detokenize([97, 98]) == "ab"
    assert await backend.detokenize((97, 98)) == "ab"
    asked = [body for path, body in fake.requests if path == "/tokenize" and body["prompt"] == "ab"]
    assert len(asked) == 1 and fake.paths().count("/detokenize") == 1
    assert asked[0]["add_special_tokens"] is False


async def test_a_prompt_that_leaves_no_room_is_refused_before_sending_with_the_lengths_named() -> None:
    fake = FakeVLLM(max_model_len=64)
    backend = make_backend(fake)
    with pytest.raises(ContextLengthError) as err:
        await backend.complete(list(range(1, 65)), n=1, sampling=Sampling(max_tokens=10))
    message = str(err.value)
    assert "prompt of 64 tokens leaves no room" in message and "max_model_len of 64" in message
    assert err.value.kind == "complete" and err.value.url == "http://vllm:8000"
    assert err.value.retryable is False
    assert "/v1/completions" not in fake.paths()


async def test_max_tokens_is_cut_to_the_room_the_context_leaves() -> None:
    """A prompt of 60 with max_tokens 10 in a 64-token context was refused, though the server (and the local
    engine) answer it with 4 tokens: at the defaults every question of the mini reasoner on vLLM failed."""
    fake = FakeVLLM(max_model_len=64)
    backend = make_backend(fake)
    out = await backend.complete(list(range(1, 61)), n=1, sampling=Sampling(max_tokens=10))
    assert dict(fake.requests)["/v1/completions"]["max_tokens"] == 4 and out[0].token_ids == (100, 101)


async def test_a_stop_on_the_contexts_last_position_finishes_length() -> None:
    """As the local engine reports it: 'stop' there made a search ask for the next step of a full path."""
    fake = FakeVLLM(max_model_len=64)
    backend = make_backend(fake)
    ended = await backend.complete(list(range(1, 63)), n=1, sampling=Sampling(max_tokens=10, stop=("e",)))
    assert [c.finish_reason for c in ended] == ["length"]  # 62 + 2 tokens ending 'e' (101): the context is full
    early = await backend.complete(list(range(1, 61)), n=1, sampling=Sampling(max_tokens=10, stop=("e",)))
    assert [c.finish_reason for c in early] == ["stop"]


async def test_client_errors_are_not_retried() -> None:
    fake = FakeVLLM(fail={"/v1/completions": [400]})
    backend = make_backend(fake)
    with pytest.raises(BackendError) as err:
        await backend.complete([1], 1, Sampling(max_tokens=2))
    assert fake.paths().count("/v1/completions") == 1
    assert "HTTP 400" in str(err.value) and "scripted 400" in str(err.value)
    assert err.value.url == "http://vllm:8000/v1/completions" and err.value.kind == "complete"
    assert not err.value.retryable


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_overload_and_server_errors_are_retried_until_success(status: int) -> None:
    fake = FakeVLLM(fail={"/v1/completions": [status, status]})
    backend = make_backend(fake, retries=2)
    out = await backend.complete([1], 1, Sampling(max_tokens=2))
    assert len(out) == 1 and fake.paths().count("/v1/completions") == 3


@pytest.mark.parametrize("status", [501, 505])
async def test_a_server_that_cannot_serve_the_request_is_not_retried(status: int) -> None:
    """vLLM answers 501 to a request its model does not implement; it was retried as a passing failure."""
    fake = FakeVLLM(fail={"/v1/completions": [status] * 5})
    backend = make_backend(fake, retries=3)
    with pytest.raises(BackendError) as err:
        await backend.complete([1], 1, Sampling(max_tokens=2))
    assert fake.paths().count("/v1/completions") == 1 and not err.value.retryable
    await backend.aclose()


def test_backoff_stays_finite_however_many_retries() -> None:
    assert Backoff(base_s=0.1, max_s=2.0).delay(5000) < 3.0  # 2.0**1024 raised OverflowError


async def test_retries_give_up_with_a_retryable_error() -> None:
    fake = FakeVLLM(fail={"/v1/completions": [503] * 10})
    backend = make_backend(fake, retries=3)
    with pytest.raises(BackendError) as err:
        await backend.complete([1], 1, Sampling(max_tokens=2))
    assert fake.paths().count("/v1/completions") == 4
    assert err.value.retryable and "HTTP 503" in str(err.value)


async def test_wrong_model_name_says_which_models_exist() -> None:
    backend = make_backend(FakeVLLM(), model="other")
    with pytest.raises(BackendError, match=r"'other' is not served here.*\['m'\]"):
        await backend.complete([1], 1, Sampling(max_tokens=2))


async def test_unauthorised_says_to_set_the_api_key() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer wrong"
        return httpx.Response(401, json={"error": "Unauthorized"})

    backend = make_backend(handler, api_key="wrong")
    with pytest.raises(BackendError, match="TTC_VLLM_API_KEY") as err:
        await backend.connect()
    assert err.value.kind == "models"


async def test_failover_to_a_healthy_replica_when_one_refuses_connections() -> None:
    fake = FakeVLLM()
    dead_hits: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead":
            dead_hits.append(request.url.path)
            raise httpx.ConnectError("connection refused", request=request)
        return await fake(request)

    backend = make_backend(handler, ["http://dead:1", "http://alive:2"], retries=1, cooldown_s=60)
    for i in range(6):
        out = await backend.complete([i + 1, 1, 1], 1, Sampling(max_tokens=2))
        assert out[0].token_ids == (100, 101)
    # The dead replica was tried once, benched, and never chosen again during its cool-down.
    assert len(dead_hits) == 1
    snapshot = await backend.prefix_cache_snapshot()
    assert set(snapshot.replicas) == {"http://alive:2"}


async def test_connection_refused_everywhere_ends_in_an_error_naming_the_url() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    backend = make_backend(handler, "http://nowhere:9/", retries=2)
    with pytest.raises(BackendError) as err:
        await backend.complete([1], 1, Sampling(max_tokens=2))
    assert err.value.url == "http://nowhere:9/v1/models" and err.value.retryable
    assert "after 3 attempt(s)" in str(err.value)


async def test_read_timeout_is_reported_without_retrying() -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("slow", request=request)

    backend = make_backend(handler, timeout=1.5)
    with pytest.raises(BackendError, match=r"within 1\.5s"):
        await backend.connect()
    assert calls == ["/v1/models"]


async def test_concurrency_is_bounded_by_max_concurrency() -> None:
    fake = FakeVLLM(delay_s=0.01)
    backend = make_backend(fake, max_concurrency=3)
    await asyncio.gather(*(backend.complete([i + 1], 1, Sampling(max_tokens=2)) for i in range(20)))
    assert fake.peak == 3  # reached, never exceeded
    assert backend.peak_in_flight == 3 and backend.in_flight == 0


async def test_stats_report_the_servers_hit_rate_between_snapshots() -> None:
    metrics = [METRICS, METRICS.replace("90.0", "190.0").replace("120.0", "220.0")]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text=metrics.pop(0))
        return await FakeVLLM()(request)

    backend = make_backend(handler)
    await backend.connect()  # takes the baseline
    assert backend.stats().prefix_cache_hit_rate is None
    await backend.prefix_cache_snapshot()
    assert backend.stats().prefix_cache_hit_rate == pytest.approx(1.0)  # +100 queries, +100 hits


def test_from_env_reads_replicas_model_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_VLLM_URL", "http://a:1/v1, http://b:2/")
    monkeypatch.setenv("TTC_VLLM_MODEL", "qwen")
    monkeypatch.setenv("TTC_VLLM_API_KEY", "k")
    backend = VLLMBackend.from_env(max_concurrency=8)
    assert backend.urls == ("http://a:1", "http://b:2")
    assert backend.model == "qwen" and backend.max_concurrency == 8
    assert backend.name == "vllm:http://a:1,http://b:2"
    monkeypatch.delenv("TTC_VLLM_URL")
    with pytest.raises(ConfigError, match="TTC_VLLM_URL"):
        VLLMBackend.from_env()


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="http://"):
        VLLMBackend("localhost:8000")
    with pytest.raises(ConfigError, match="max_concurrency"):
        VLLMBackend("http://a", max_concurrency=0)
    with pytest.raises(ConfigError, match="retries"):
        VLLMBackend("http://a", retries=-1)
    for options in ({"retries": 1.5}, {"timeout": None}, {"timeout": 0}, {"max_concurrency": None},
                    {"backoff_s": float("inf")}, {"cache_size": 0}, {"block_tokens": True},
                    {"spill_in_flight": 0}, {"min_cached": -0.1}, {"timeout": 10**400}):
        with pytest.raises(ConfigError, match=next(iter(options))):
            VLLMBackend("http://a", **options)  # type: ignore[arg-type]


async def test_a_text_prompt_is_refused_before_it_goes_out_as_a_batch_of_characters() -> None:
    fake = FakeVLLM()
    backend = make_backend(fake)
    with pytest.raises(ConfigError, match="token ids, not text"):
        await backend.complete("What is 2+2?", 1, Sampling())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not an int"):
        await backend.prompt_logprobs([1, "2"])  # type: ignore[list-item]
    assert "/v1/completions" not in fake.paths()


@pytest.mark.parametrize(("path", "answer"), [
    ("/v1/completions", {"choices": [{"index": None, "text": "x", "token_ids": [1]}]}),
    ("/v1/completions", ["not", "an", "object"]),
    ("/tokenize", ["a", "list"]),
    ("/tokenize", {"tokens": ["x"]}),
    ("/tokenize", {"tokens": [32.7, 5]}),  # read as [32, 5], though the same ids in a completion are refused
    ("/tokenize", {"tokens": ["32", True]}),
    # json.loads reads 1e999 as inf, and int(inf) raised a raw OverflowError
    ("/v1/completions",
     '{"choices": [{"index": 0, "text": "a", "token_ids": [97]}], "usage": {"prompt_tokens": 1e999}}'),
])
async def test_a_body_not_shaped_as_vllms_is_a_backend_error(path: str, answer: Any) -> None:
    fake = FakeVLLM()

    async def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path == path and not (path == "/tokenize" and b"</s>" in request.content):
            if isinstance(answer, str):
                return httpx.Response(200, content=answer.encode(), headers={"content-type": "application/json"})
            return httpx.Response(200, json=answer)
        return await fake(request)

    backend = make_backend(odd)
    with pytest.raises(BackendError, match="unexpected answer from the vLLM server"):
        if path == "/tokenize":
            await backend.tokenize("hi")
        else:
            await backend.complete([1, 2, 3], 1, Sampling(max_tokens=4))


async def test_a_connect_that_fails_half_way_is_tried_again_whole() -> None:
    fake = FakeVLLM(fail={"/tokenize": [503] * 4})
    backend = make_backend(fake)
    with pytest.raises(BackendError):
        await backend.connect()
    await backend.connect()
    assert backend.eos_token_id == 2  # the EOS lookup ran again once the server answered


def test_the_backend_survives_a_new_event_loop() -> None:
    """Sync wrappers run each call under a fresh ``asyncio.run``; the pool must follow the loop."""
    fake = FakeVLLM()
    backend = make_backend(fake)
    first = asyncio.run(backend.complete([1], 1, Sampling(max_tokens=2)))
    second = asyncio.run(backend.complete([1], 1, Sampling(max_tokens=2)))
    assert first == second
    asyncio.run(backend.aclose())


async def test_greedy_with_several_samples_asks_the_server_for_one() -> None:
    fake = FakeVLLM()
    backend = make_backend(fake)
    out = await backend.complete([1, 2], n=3, sampling=Sampling(max_tokens=2, temperature=0.0))
    assert dict(fake.requests)["/v1/completions"]["n"] == 1  # vLLM refuses n > 1 when greedy
    assert len(out) == 3 and len({c.token_ids for c in out}) == 1
    assert backend.stats().generated_tokens == 2


async def test_failover_to_a_healthy_replica_when_one_does_not_answer_in_time() -> None:
    """A hung replica failed every call sent to it, though a healthy one was there."""
    fake = FakeVLLM()
    hung_hits: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hung":
            hung_hits.append(request.url.path)
            await asyncio.sleep(5)
        return await fake(request)

    backend = make_backend(handler, ["http://hung:1", "http://alive:2"], retries=1, cooldown_s=60, timeout=0.2)
    for i in range(4):
        out = await backend.complete([i + 1, 1, 1], 1, Sampling(max_tokens=2))
        assert out[0].token_ids == (100, 101)
    assert len(hung_hits) == 1  # tried once, then benched for its cool-down
    await backend.aclose()


async def test_the_timeout_bounds_the_whole_exchange() -> None:
    backend = make_backend(FakeVLLM(delay_s=1.0), timeout=0.2)
    with pytest.raises(BackendError, match=r"no answer from the vLLM server within 0.2s"):
        await backend.tokenize("hi")
    await backend.aclose()


def _choice(index: int, **fields: Any) -> dict[str, Any]:
    return {"index": index, "text": "ab", "token_ids": [97, 98], "finish_reason": "stop", **fields}


@pytest.mark.parametrize(("choices", "usage", "message"), [
    ([_choice(0, token_ids=list(range(50)), text="x" * 50)], None, "holds 50 tokens, over the max_tokens=8"),
    ([_choice(0)], {"prompt_tokens": 9999, "completion_tokens": 2}, "usage counts 9999 prompt tokens"),
    ([_choice(0)], {"prompt_tokens": -5, "completion_tokens": 2}, "negative token counts"),
    ([_choice(0, text=None)], None, "a choice has no text"),
    ([_choice(0, token_ids=[32.7, 1])], None, "token_ids are not a list of ints"),
    ([_choice(0, token_ids=["32"])], None, "token_ids are not a list of ints"),
    ([_choice(0, token_ids=[True])], None, "token_ids are not a list of ints"),
    ([_choice(0), _choice(0)], None, r"indices are \[0, 0\], not 0 to 1"),
])
async def test_completions_the_server_could_not_have_meant_are_protocol_errors(
        choices: list[dict[str, Any]], usage: dict[str, Any] | None, message: str) -> None:
    """Each was accepted: 50 tokens on a budget of 8, usage taken as given, '32.7' read as token 32, a missing
    text read as '', two copies of choice 0 as two samples."""
    fake = FakeVLLM()

    async def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            return httpx.Response(200, json={"choices": choices, "usage": usage or {"prompt_tokens": 3}})
        return await fake(request)

    backend = make_backend(odd)
    with pytest.raises(BackendError, match=message) as err:
        await backend.complete([1, 2, 3], len(choices), Sampling(max_tokens=8, temperature=0.8))
    assert not err.value.retryable
    await backend.aclose()


async def test_token_counts_are_what_was_sent_and_what_came_back() -> None:
    fake = FakeVLLM()

    async def without_usage(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            return httpx.Response(200, json={"choices": [_choice(0)]})
        return await fake(request)

    backend = make_backend(without_usage)
    await backend.complete([1, 2, 3], 1, Sampling(max_tokens=8))
    stats = backend.stats()
    assert (stats.prompt_tokens, stats.generated_tokens) == (3, 2)
    await backend.aclose()


@pytest.mark.parametrize(("urls", "message"), [
    (8000, "must be a server URL or a list of them"),
    (None, "must be a server URL or a list of them"),
    (["http://127.0.0.1:8000", 5], "must be a string"),
    ("http://127.0.0.1:1,http://127.0.0.1:2", "holds several URLs: pass replicas as a list"),
    ("http://host:notaport", "is not a valid server URL"),
    ("http://h:8000?x=1", "without a query or fragment"),
    ("http://h:8000?", "without a query or fragment"),  # '/v1/models' was sent as the query
    ("http://h:8000#", "without a query or fragment"),
    ("http://h:70000", "a port is 1 to 65535"),  # a raw OverflowError at the first request
])
def test_server_urls_are_checked_when_the_backend_is_made(urls: Any, message: str) -> None:
    """They raised TypeError or AttributeError, or httpx.InvalidURL at the first request."""
    with pytest.raises(ConfigError, match=message):
        VLLMBackend(urls)


async def test_a_redirect_names_where_it_leads() -> None:
    fake = FakeVLLM()

    async def moved(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(301, headers={"location": "http://elsewhere:8000/v1/models"})
        return await fake(request)

    backend = make_backend(moved)
    with pytest.raises(BackendError, match=r"redirects to http://elsewhere:8000/v1/models"):
        await backend.complete([1], 1, Sampling(max_tokens=2))
    await backend.aclose()


async def test_requests_queued_behind_max_concurrency_spread_over_the_replicas() -> None:
    """They were placed before they waited for a slot, all seeing the same loads, so they went to one replica."""
    fake = FakeVLLM()
    hosts: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            hosts.append(request.url.host)
            await asyncio.sleep(0.02)
        return await fake(request)

    backend = make_backend(slow, ["http://a:8000", "http://b:8000", "http://c:8000"], max_concurrency=6)
    try:
        await asyncio.gather(*[backend.complete([300 + i] * 40, 1, Sampling(max_tokens=4)) for i in range(30)])
    finally:
        await backend.aclose()
    assert Counter(hosts) == {"a": 10, "b": 10, "c": 10}


async def test_a_server_that_breaks_the_connection_mid_reply_is_not_called_unreachable() -> None:
    """"Is it running, and is the URL right?" sent users to check what was fine: the server answered, then broke off."""

    async def breaks(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/completions":
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        return await FakeVLLM()(request)

    backend = make_backend(breaks, retries=1)
    try:
        with pytest.raises(BackendError, match="broke the connection mid-reply, 2 attempt") as caught:
            await backend.complete([1, 2], 1, Sampling(max_tokens=2))
        assert "is it running" not in str(caught.value) and caught.value.retryable
    finally:
        await backend.aclose()


async def test_every_replica_refusing_says_so_not_only_the_last_one_tried() -> None:
    async def refuses(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    backend = make_backend(refuses, ["http://a:1", "http://b:2"], retries=2)
    try:
        with pytest.raises(BackendError, match=r"could not reach any of the 2 vLLM replicas \(the last tried below\)"):
            await backend.complete([1, 2], 1, Sampling(max_tokens=2))
    finally:
        await backend.aclose()


async def test_a_refusal_after_other_replicas_answered_is_not_called_every_replica_refusing() -> None:
    """Two replicas answered 503 and the third was never tried, yet the error said none could be reached."""
    fake = FakeVLLM()
    refusals = {"n": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/completions":
            return await fake(request)
        if request.url.host == "a" and refusals["n"]:
            raise httpx.ConnectError("connection refused")
        refusals["n"] += 1
        return httpx.Response(503, json={"detail": "busy"})

    backend = make_backend(handler, ["http://a:1", "http://b:2", "http://c:3"], retries=2)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.complete([1, 2], 1, Sampling(max_tokens=2))
        assert "any of the" not in str(caught.value)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("body", [b'["not", "an", "object"]', b"<html>tokenizer info</html>", b"null"])
async def test_a_tokenizer_info_body_that_is_no_json_object_reads_as_no_tokenizer_info(body: bytes) -> None:
    """The endpoint is optional; a 200 with some other body (a proxy's page, another server's answer) failed
    connect() as a missing endpoint does not."""
    fake = FakeVLLM()

    async def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenizer_info":
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return await fake(request)

    backend = make_backend(odd)
    try:
        info = await backend.connect()
        assert info.model == "m" and backend.eos_token_id is None
        assert (await backend.complete([1, 2], 1, Sampling(max_tokens=2)))[0].token_ids == (100, 101)
    finally:
        await backend.aclose()


_NAN_BODY = ('{"choices": [{"index": 0, "text": "ab", "token_ids": [97, 98], "finish_reason": "stop", '
             '"logprobs": {"token_logprobs": [-0.5, NaN]}}], "usage": {"prompt_tokens": 3}}')


@pytest.mark.parametrize(("call", "answer", "message"), [
    ("complete", _NAN_BODY, r"a logprob of nan is no log-probability"),
    ("complete", {"choices": [_choice(0, logprobs={"token_logprobs": [-0.5, 0.75]})]}, "a logprob of 0.75"),
    ("complete", {"choices": [_choice(0, token_ids=[97, -3], logprobs={"token_logprobs": [-0.5, -0.25]})]},
     r"token_ids are not a list of ints >= 0"),
    ("prompt_logprobs", {"choices": [{"index": 0, "text": "x", "token_ids": [1], "prompt_logprobs": [
        None, {"5": {"logprob": 2.5}}, {"6": {"logprob": -1.0}}]}]}, "a logprob of 2.5"),
    ("prompt_logprobs", '{"choices": [{"index": 0, "text": "x", "token_ids": [1], "prompt_logprobs": '
                        '[null, {"5": {"logprob": NaN}}, {"6": {"logprob": -1.0}}]}]}', "a logprob of nan"),
    ("prompt_logprobs", {"choices": [{"index": 0, "text": "x", "token_ids": [1], "prompt_logprobs": [
        None, {"-1": {"logprob": -0.5}}, {"6": {"logprob": -1.0}}]}]}, "names token id '-1', below 0"),
    ("tokenize", {"tokens": [104, -105]}, "not a list of ints >= 0"),
])
async def test_impossible_logprobs_and_token_ids_are_protocol_errors(call: str, answer: Any, message: str) -> None:
    """NaN and positive logprobs were taken as scores, and a negative id as a token (the vocabulary's last ones)."""
    fake = FakeVLLM()
    path = "/tokenize" if call == "tokenize" else "/v1/completions"

    async def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path == path and b"</s>" not in request.content:
            if isinstance(answer, str):
                return httpx.Response(200, content=answer.encode(), headers={"content-type": "application/json"})
            return httpx.Response(200, json={"usage": {"prompt_tokens": 3}, **answer})
        return await fake(request)

    backend = make_backend(odd)
    try:
        with pytest.raises(BackendError, match=message) as err:
            if call == "complete":
                await backend.complete([1, 2, 3], 1, Sampling(max_tokens=8, logprobs=True))
            elif call == "prompt_logprobs":
                await backend.prompt_logprobs([4, 5, 6], top_k=1)
            else:
                await backend.tokenize("hi")
        assert "unexpected answer from the vLLM server" in str(err.value) and not err.value.retryable
    finally:
        await backend.aclose()


async def test_a_dead_replica_beside_a_live_one_fails_over_without_using_up_retries(dead_url: str) -> None:
    """VLLMBackend([dead, live], retries=0) failed at connect: the move to the live replica counted as a retry."""
    fake = FakeVLLM()
    network = httpx.AsyncHTTPTransport()
    dead_hits: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(dead_url):
            dead_hits.append(request.url.path)
            return await network.handle_async_request(request)  # a real connection to a closed port
        return await fake(request)

    backend = make_backend(handler, [dead_url, "http://alive:2"], retries=0, cooldown_s=60)
    try:
        out = await backend.complete([1, 2, 3], 1, Sampling(max_tokens=2))
        assert out[0].token_ids == (100, 101) and dead_hits == ["/v1/models"]
    finally:
        await backend.aclose()
        await network.aclose()


async def test_failovers_are_bounded_by_the_replicas_even_without_a_cool_down() -> None:
    hits: list[str] = []

    async def refuses(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.host)
        raise httpx.ConnectError("connection refused")

    backend = make_backend(refuses, ["http://a:1", "http://b:2", "http://c:3"], retries=1, cooldown_s=0)
    try:
        with pytest.raises(BackendError, match=r"any of the 3 vLLM replicas .* after 4 attempt"):
            await backend.complete([1, 2], 1, Sampling(max_tokens=2))
        assert len(hits) == 4  # the first, two failovers and one retry
    finally:
        await backend.aclose()


@dataclass
class _TokenizeRefusingFake(FakeVLLM):
    """A server (or a proxy before one) whose ``/tokenize`` refuses a text past the context, in vLLM's words."""

    def _answer(self, path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "/tokenize" and len(body["prompt"]) > 100:
            return httpx.Response(400, json={"error": {"message": "This model's maximum context length is 512 "
                                                                  "tokens", "code": 400}})
        return super()._answer(path, body)


def test_a_batch_questions_refusal_by_the_server_keeps_its_class_and_names_the_question() -> None:
    """The batch's up-front check rewrapped every ConfigError, and a server's ContextLengthError (a BackendError
    too) lost its class, kind and URL: ``except BackendError`` no longer caught it."""
    from ttc.api import solve_batch

    backend = make_backend(_TokenizeRefusingFake())
    try:
        with pytest.raises(ContextLengthError) as caught:
            solve_batch(["q1?", "y" * 200], 400, backend=backend, store=False, strategy="best_of_n", n=2,
                        max_tokens=8, seed=0)
        assert caught.value.kind == "tokenize" and caught.value.url == "http://vllm:8000/tokenize"
        assert "question 1 of the batch" in caught.value.__notes__
    finally:
        asyncio.run(backend.aclose())
