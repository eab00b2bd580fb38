"""distinct=True on the embedded mini reasoner and checker: best_of_n's samples and a search's children are
different texts, under the same budget rules."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from ttc import solve, solve_batch
from ttc.bench.datasets import load_dataset
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend

pytest.importorskip("torch")


def _texts(store: TraceStore, trace_id: str | None) -> list[str]:
    assert trace_id is not None
    record = store.get_trace(trace_id)
    assert record.status == "done"
    root = next(n for n in record.nodes if n.parent is None)
    return [n.text for n in record.nodes if n.parent == root.id]


def test_distinct_samples_are_different_texts_charged_like_independent_ones(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=12, seed=42_000)
    questions = [p.question for p in problems]
    store = TraceStore(str(tmp_path / "t.db"))
    runs = {
        distinct: solve_batch(questions, 16 * 200, strategy="best_of_n", n=16, max_tokens=200, distinct=distinct,
                              store=store, seed=5)
        for distinct in (False, True)
    }
    different = {}
    for distinct, results in runs.items():
        counts = []
        for result in results:
            texts = _texts(store, result.trace_id)
            record = store.get_trace(result.trace_id or "")
            [sample] = [e.payload for e in record.events if e.kind == "sample"]
            assert sample == {"requested": 16, "drawn": len(texts), "distinct": distinct}
            if distinct:
                assert len(set(texts)) == len(texts) <= 16
            else:
                assert len(texts) == 16
            counts.append(len(set(texts)))
            assert result.usage.generated_tokens == sum(n.token_count for n in record.nodes if n.parent is not None)
        different[distinct] = statistics.mean(counts)
    store.close()
    # The reasoner repeats itself: independent samples of these problems hold fewer different texts.
    assert different[True] > different[False] + 1


def test_a_searchs_siblings_are_different_steps(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=6, seed=42_100)
    store = TraceStore(str(tmp_path / "t.db"))
    results = solve_batch([p.question for p in problems], 2048, strategy="beam", beam_width=2, expand=4,
                          distinct=True, store=store, seed=2)
    siblings = repeats = 0
    for result in results:
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
        assert record.status == "done"
        children: dict[int, list[str]] = {}
        for node in record.nodes:
            if node.parent is not None:
                children.setdefault(node.parent, []).append(node.text)
        for texts in children.values():
            assert len(set(texts)) == len(texts) <= 8  # the root has beam_width x expand children
            siblings += len(texts)
        # A node expanded over several waves (the budget running short) may draw an earlier child again: spent,
        # not kept, and counted in a repeats event.
        repeated = sum(e.payload["tokens"] for e in record.events if e.kind == "repeats")
        repeats += repeated
        assert result.usage.generated_tokens == repeated + sum(n.token_count for n in record.nodes
                                                                          if n.parent is not None)
    store.close()
    assert siblings > 0 and repeats > 0


def test_a_distinct_draw_needs_a_temperature_and_an_engine_that_can_draw_it() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        solve("What is 2 + 3?", 400, strategy="best_of_n", distinct=True, temperature=0.0, store=False)
    with pytest.raises(ConfigError, match="temperature"):
        solve("What is 2 + 3?", 400, strategy="beam", distinct=True, temperature=0.0, store=False)
    with pytest.raises(ConfigError, match="local engine"):
        solve("What is 2 + 3?", 400, strategy="best_of_n", distinct=True, store=False,
              backend=ScriptedBackend(["The answer is 5."]))


@pytest.mark.parametrize(("strategy", "options", "scope"), [
    ("best_of_n", {"n": 2}, "question"), ("parallel_thinking", {"paths": 2}, "question"),
    ("beam", {}, "question"), ("beam", {}, "batch"), ("ets", {"embedder": "ngram"}, "batch"),
])
def test_a_backend_that_cannot_draw_distinct_samples_is_refused_before_any_trace_opens(
        tmp_path: Path, strategy: str, options: dict[str, object], scope: str) -> None:
    """The backend refused only once a question's trace had opened: a batch left one failed trace a question."""
    db = tmp_path / "traces.db"
    with pytest.raises(ConfigError, match=rf"{strategy} with distinct=True .* scripted cannot"):
        solve_batch(["What is 1 + 1?", "What is 2 + 2?"], 600, strategy=strategy, distinct=True, store=str(db),
                    backend=ScriptedBackend(["The answer is 5."]), verifier=None if strategy in (
                        "best_of_n", "parallel_thinking") else _HalfPRM(), budget_scope=scope, **options)
    with TraceStore(str(db)) as store:
        assert store.list_traces() == []


class _HalfPRM:
    async def score_steps(self, question: str, steps: list[str]) -> list[float]:
        return [0.5] * len(steps)
