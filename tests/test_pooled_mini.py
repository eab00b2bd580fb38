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
