"""Scoring many prompts at once: a search's new nodes run in few forwards and score as transformers does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ttc.backends.local import LocalBackend
from ttc.engine.engine import Engine, ScoreRequest
from ttc.engine.loading import load_model
from ttc.types import PromptLogprobs, Sampling

CountForwards = Callable[[Engine], list[tuple[int, ...]]]


def _engine(path: Path) -> Engine:
    return Engine(load_model(path, device="cpu", dtype=torch.float32), seed=0)


def _reference_logprobs(path: Path, prompt: tuple[int, ...]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(prompt)])).logits[0].float(), dim=-1)


def _score_all(engine: Engine, prompts: list[tuple[int, ...]], top_k: int) -> list[Any]:
    results: dict[int, Any] = {}
    engine.score_all([ScoreRequest(p, top_k, lambda result, i=i: results.__setitem__(i, result))
                      for i, p in enumerate(prompts)])
    return [results[i] for i in range(len(prompts))]


def test_new_nodes_score_in_one_forward_as_transformers_scores_them(
    checkpoint: Path, count_forwards: CountForwards,
) -> None:
    engine = _engine(checkpoint)
    question = tuple(range(3, 40))
    engine.score(question, 3)  # the parent path, scored and cached as a search's is
    # Siblings of different lengths; two share new tokens the tree lacks (4, 5, 6); one repeats.
    nodes = [(*question, 4, 5, 6, 7), (*question, 4, 5, 6, 9, 10, 11), (*question, 12), (*question, 4, 5, 6, 7)]
    forwards = count_forwards(engine)
    together = _score_all(engine, nodes, 3)
    # One forward, from each node's last cached token (its distribution predicts the first new one); the
    # repeated node runs once, the shorter rows are padded to the longest.
    assert forwards == [(3, 7)]
    engine.tree.check()
    # What the siblings share is kept once: the question, 4 5 6, then 7 / 9 10 11 / 12.
    assert engine.tree.cached_tokens == len(question) + 3 + 1 + 3 + 1
    for node, scored in zip(nodes, together, strict=True):
        assert isinstance(scored, PromptLogprobs)
        reference = _reference_logprobs(checkpoint, node)
        for i in range(1, len(node)):
            assert scored.token_logprob(i) == pytest.approx(reference[i - 1, node[i]].item(), abs=1e-4)
            values, ids = reference[i - 1].topk(3)
            dist = scored.top[i]
            assert dist is not None
            for token, value in zip(ids.tolist(), values.tolist(), strict=True):
                assert dist[token] == pytest.approx(value, abs=1e-4)
    assert engine.counters.scored_tokens == len(question) - 1 + 4 + 6 + 1  # each position computed once
    assert _score_all(engine, nodes, 3) == together  # all cached now: the same distributions, no forward
    assert len(forwards) == 1


def test_rows_of_very_different_lengths_run_in_separate_forwards(
    checkpoint: Path, count_forwards: CountForwards,
) -> None:
    engine = _engine(checkpoint)
    long = tuple(range(3, 60))
    short = [(3, 60 + i, 61 + i) for i in range(5)]
    forwards = count_forwards(engine)
    results = _score_all(engine, [*short, long], 0)
    # A forward takes rows, longest first, while its padding stays below its real tokens: the long prompt
    # takes one short one (54 padded positions for 60 real ones), the other four run together.
    assert forwards == [(2, len(long)), (4, 3)]
    for prompt, scored in zip([*short, long], results, strict=True):
        alone = _engine(checkpoint).score(prompt, 0)
        assert [scored.token_logprob(i) for i in range(1, len(prompt))] == pytest.approx(
            [alone.token_logprob(i) for i in range(1, len(prompt))], abs=1e-5)


@pytest.mark.anyio
async def test_concurrent_scoring_calls_share_forwards(
    checkpoint: Path, count_forwards: CountForwards,
) -> None:
    async with LocalBackend.from_pretrained(checkpoint, threads=1) as backend:
        question = list(range(3, 30))
        await backend.prompt_logprobs(question, top_k=2)
        forwards = count_forwards(backend.engine)
        nodes = [[*question, 40 + i, 41 + i, 42 + i] for i in range(8)]
        together = await asyncio.gather(*(backend.prompt_logprobs(node, top_k=2) for node in nodes))
        assert len(forwards) < len(nodes)  # calls that land together are scored together
        assert sum(b for b, _ in forwards) == len(nodes)
        for node, scored in zip(nodes, together, strict=True):
            alone = _engine(checkpoint).score(tuple(node), 2)
            assert [scored.token_logprob(i) for i in range(1, len(node))] == pytest.approx(
                [alone.token_logprob(i) for i in range(1, len(node))], abs=1e-5)


def test_scoring_a_generated_sequence_keeps_no_more_kv_than_its_tokens(llama_path: Path) -> None:
    """A score run alone recomputes a cached, unscored path, and kept its new last token as a view of the whole
    forward's buffer: twelve 1-token blocks held 3979 tokens' KV for 1990 cached, past the cache's cap."""
    backend = LocalBackend.from_pretrained(llama_path, device="cpu", cache_tokens=4096, threads=1)

    async def run() -> None:
        for prompt in ([3, 4, 5], [3, 9], [6, 7, 8, 9, 10]):
            (completion,) = await backend.complete(prompt, 1, Sampling(max_tokens=12, temperature=0))
            await backend.prompt_logprobs([*prompt, *completion.token_ids], 0)
            await backend.release([*prompt, *completion.token_ids])

    try:
        asyncio.run(run())
        tree = backend.engine.tree
        tree.check()
        assert tree.live_tokens == 0 and tree.cached_tokens > 0
        assert tree.reserved_bytes == tree.cached_tokens * tree.bytes_per_token
    finally:
        backend.close()
