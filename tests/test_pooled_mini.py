"""A batch sharing one budget on the embedded default: the bundled mini reasoner and checker on the local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc import solve_batch
from ttc.bench.datasets import load_dataset
from ttc.storage import TraceStore

pytest.importorskip("torch")

MAX_TOKENS = 160
STOPS = {"decided", "max_samples", "batch_budget"}


def test_a_batch_shares_its_budget_on_the_mini_models(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=6, seed=40_000)
    questions = [p.question for p in problems]
    budget = len(questions) * 6 * MAX_TOKENS
    store = TraceStore(str(tmp_path / "t.db"))
    options = {"select": "vote", "check_arithmetic": True, "max_tokens": MAX_TOKENS, "max_samples": 24}
    results = solve_batch(questions, budget, store=store, seed=11, budget_scope="batch", concurrency=6, **options)
    assert sum(r.usage.generated_tokens for r in results) <= budget
    assert all(r.answer is not None for r in results)
    for r in results:
        assert r.trace_id is not None
        record = store.get_trace(r.trace_id)
        assert record.status == "done"
        grants = [e.payload["samples"] for e in record.events if e.kind == "grant"]
        assert sum(grants) == len(r.candidates)  # the local engine returned every sample granted
        [stop] = [e.payload for e in record.events if e.kind == "stop"]
        assert stop["reason"] in STOPS
    store.close()
    again = solve_batch(questions, budget, store=False, seed=11, budget_scope="batch", concurrency=2, **options)
    assert [(r.answer, len(r.candidates)) for r in again] == [(r.answer, len(r.candidates)) for r in results]


def test_a_batch_shares_its_budget_over_searches_on_the_mini_models(tmp_path: Path) -> None:
    """With the mini checker configured, auto pools REBASE searches: a question whose solutions disagree gets a
    search with twice the grant, grown from the same prompt node, and the batch stays within its budget."""
    problems = load_dataset("synthetic", limit=6, seed=40_000)
    questions = [p.question for p in problems]
    budget = len(questions) * 256
    store = TraceStore(str(tmp_path / "t.db"))
    results = solve_batch(questions, budget, store=store, seed=11, budget_scope="batch", concurrency=6)
    assert sum(r.usage.generated_tokens for r in results) <= budget
    assert {r.strategy for r in results} == {"rebase"}
    assert all(r.answer is not None for r in results)
    widths = []
    for r in results:
        assert r.trace_id is not None
        record = store.get_trace(r.trace_id)
        assert record.status == "done"
        assert sum(n.parent is None for n in record.nodes) == 1
        grants = [e.payload for e in record.events if e.kind == "grant"]
        assert [g["tokens"] for g in grants] == [256 * 2**k for k in range(len(grants))]
        widths.append([g["options"]["width"] for g in grants])
        # A search narrowed to one finishable path would look decided; the pool's next search finishes instead.
        assert {g["options"]["narrow_to_finish"] for g in grants} == {False}
        [stop] = [e.payload for e in record.events if e.kind == "stop"]
        assert stop["reason"] in {"decided", "max_searches", "batch_budget"}
        assert stop["searches"] == len(grants)
    assert any(len(w) > 1 for w in widths), widths  # some question was searched again, wider
    # Each search is what auto runs with its grant: 256, 512, 1024 and 2048 tokens.
    assert all(w == [4, 8, 8, 16][: len(w)] for w in widths)
    store.close()
    again = solve_batch(questions, budget, store=False, seed=11, budget_scope="batch", concurrency=2)
    assert [(r.answer, r.usage.generated_tokens) for r in again] == [(r.answer, r.usage.generated_tokens)
                                                                     for r in results]
