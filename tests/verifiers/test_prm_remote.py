"""PRM adapters against a scripted vLLM server (``httpx.MockTransport``): how its refusals and odd answers reach
the caller. Scores themselves are checked on real models in ``test_prm.py`` and ``tests/backends/test_vllm_prm.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence

import httpx
import pytest

from ttc.backends.vllm import VLLMBackend
from ttc.errors import VerifierError
from ttc.types import PromptLogprobs
from ttc.verifiers.prm import PoolingPRM, StepScoreCache, TokenPRM, judge
from ttc.verifiers.prm_presets import PRMPreset, get_preset

pytestmark = pytest.mark.anyio

MAX_LEN = 64
SEP = "<extra_0>"
TOKEN = PRMPreset(name="tiny", family="token", tag="@", good="Y", bad="N", prefix="Q: {question}\n")
POOLING = PRMPreset(name="pool", family="pooling", tag=SEP, prefix="{question}")
LONG = [f"{i} + 1 = {i + 1}" for i in range(20)]


def ids_of(text: str) -> list[int]:
    return [7 if c == "\x07" else 100 + ord(c) % 1000 for c in text.replace(SEP, "\x07")]


def server(*, head_width: int = 2) -> httpx.MockTransport:
    """vLLM's answers, with its 400 for a pooling input over the context (prompt_logprobs are refused before
    they are sent, from the context length /v1/models gives)."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "max_model_len": MAX_LEN}]})
        if path == "/tokenize":
            text = "".join(m["content"] for m in body["messages"]) if "messages" in body else body["prompt"]
            tokens = ids_of(text)
            return httpx.Response(200, json={"tokens": tokens, "count": len(tokens), "max_model_len": MAX_LEN})
        if path == "/pooling":
            n = len(body["input"])
            if n > MAX_LEN:
                return httpx.Response(400, json={"error": {"message": f"This model's maximum context length is "
                                                                      f"{MAX_LEN} tokens. However, you requested {n}"}})
            return httpx.Response(200, json={"data": [{"index": 0, "data": [[0.25] * head_width] * n}]})
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(handle)


def remote(transport: httpx.MockTransport) -> VLLMBackend:
    return VLLMBackend("http://prm.test", model="m", transport=transport, retries=0)


@pytest.mark.parametrize("prm_type", [TokenPRM, PoolingPRM])
async def test_a_solution_longer_than_a_served_prms_context_is_the_verifiers_failure(prm_type: type) -> None:
    """On vLLM it was a BackendError telling the caller to lower Sampling.max_tokens, which they never set."""
    backend = remote(server())
    prm = prm_type(backend, TOKEN if prm_type is TokenPRM else POOLING)
    with pytest.raises(VerifierError, match=r"cannot score this solution \(\d+ tokens with its question"):
        await prm.score_steps("What is 1 + 1?", LONG)
    await backend.aclose()


async def test_pooling_scores_count_as_backend_calls() -> None:
    backend = remote(server())
    scores = await PoolingPRM(backend, POOLING).score_steps("Q?", ["1 + 1 = 2", "2 + 1 = 3"])
    assert scores == [0.25, 0.25]
    stats = backend.stats()
    assert stats.calls == 1 and stats.scored_tokens > 0  # read 0: pooling work was missing from the stats
    await backend.aclose()


async def test_a_separator_inside_a_step_is_named_not_miscounted() -> None:
    """It read 'pooling PRM returned 9 rows for 9 tokens and 2 steps', which blames the server."""
    backend = remote(server())
    with pytest.raises(VerifierError, match=f"separates steps with '{SEP}', and the question or a step contains"):
        await PoolingPRM(backend, POOLING).score_steps("Q?", [f"1 + 1 = 2{SEP}", "2 + 1 = 3"])
    await backend.aclose()


async def test_a_reward_head_narrower_than_the_positive_class_is_a_verifier_error() -> None:
    backend = remote(server(head_width=1))
    with pytest.raises(VerifierError, match="reads class 1 of the reward head, which returned 1 per token"):
        await PoolingPRM(backend, POOLING).score_steps("Q?", ["1 + 1 = 2"])  # a raw IndexError
    await backend.aclose()


async def test_scoring_many_raises_a_candidates_error_as_itself() -> None:
    """score_steps raised VerifierError; score_many wrapped it in an ExceptionGroup that `except` missed."""
    backend = remote(server())
    with pytest.raises(VerifierError, match="cannot score this solution"):
        await PoolingPRM(backend, POOLING).score_many("Q?", [["1 + 1 = 2"], LONG])
    await backend.aclose()


class SlowTokenizer:
    """Yes/No judgements at 0.9; each tokenize can be held up, as a remote tokenizer's uncached request is."""

    name = "slow"

    def __init__(self) -> None:
        self.hold = 0.0

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if self.hold:
            await asyncio.sleep(self.hold)
        return {" Yes": [1], " No": [2]}.get(text, [10 + ord(c) % 50 for c in text])

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        return PromptLogprobs(tuple(prompt), (None, *({1: math.log(0.9), 2: math.log(0.1), t: -1.0}
                                                      for t in prompt[1:])))


async def test_a_judge_keeps_the_cached_scores_it_found_while_others_evict_them() -> None:
    """It read its cached steps again after awaiting the tokenizer; one a concurrent scoring had evicted read 0.0,
    and 0.0 was cached for it."""
    backend = SlowTokenizer()
    scorer = judge(backend)  # type: ignore[arg-type]
    scorer.cache = StepScoreCache(capacity=2)
    first = await scorer.score_steps("q", ["a"])
    backend.hold = 0.05
    held = asyncio.create_task(scorer.score_steps("q", ["a", "b"]))
    await asyncio.sleep(0.01)
    backend.hold = 0.0
    await scorer.score_steps("q", ["x", "y", "z"])  # fills the two-entry cache meanwhile
    assert await held == pytest.approx([first[0], first[0]])


def test_the_bundled_presets_are_named_by_their_preset_names() -> None:
    """Both files are prm.json, so both presets were named 'prm' in every message."""
    assert (get_preset("mini").name, get_preset("mini-checker").name) == ("mini", "mini-checker")
