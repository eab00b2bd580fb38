"""A batch sharing one budget on the embedded default: the bundled mini reasoner and checker on the local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc import solve_batch
from ttc.bench.datasets import load_dataset
from ttc.controller.per_question import AUTO_FULL_WIDTH
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
    widths: list[list[int]] = []
    sizes: list[list[int]] = []
    for r in results:
        assert r.trace_id is not None
        record = store.get_trace(r.trace_id)
        assert record.status == "done"
        assert sum(n.parent is None for n in record.nodes) == 1
        grants = [e.payload for e in record.events if e.kind == "grant"]
        # Twice the grant before while the pool affords it, else what it has left, at least an even share.
        tokens = [g["tokens"] for g in grants]
        assert tokens[0] == 256 and all(256 <= t <= 256 * 2**k for k, t in enumerate(tokens))
        widths.append([g["options"]["width"] for g in grants])
        sizes.append(tokens)
        # A search narrowed to one finishable path would look decided; the pool's next search finishes instead.
        assert {g["options"]["narrow_to_finish"] for g in grants} == {False}
        [stop] = [e.payload for e in record.events if e.kind == "stop"]
        assert stop["reason"] in {"decided", "max_searches", "batch_budget"}
        assert stop["searches"] == len(grants)
    assert any(len(w) > 1 for w in widths), widths  # some question was searched again
    # Each search is what auto runs with its grant: budget / 128 solutions in flight, twice that up to 8 (4 at 256
    # tokens, 8 at 512 and 1024, 16 at 2048).
    assert [[max(t // 128, min(AUTO_FULL_WIDTH, 2 * t // 128)) for t in ts] for ts in sizes] == widths
    store.close()
    again = solve_batch(questions, budget, store=False, seed=11, budget_scope="batch", concurrency=2)
    assert [(r.answer, r.usage.generated_tokens) for r in again] == [(r.answer, r.usage.generated_tokens)
                                                                     for r in results]
