"""lookahead on the bundled mini reasoner (target) and mini draft, each on its own local engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc import solve, solve_batch
from ttc.bench.datasets import load_dataset
from ttc.config import default_backend
from ttc.storage import TraceStore

pytest.importorskip("torch")


def test_lookahead_writes_the_reasoners_greedy_solution_and_accepts_draft_steps(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=8, seed=41_000)
    questions = [p.question for p in problems]
    greedy = solve_batch(questions, 400, strategy="best_of_n", n=1, temperature=0.0, store=False, seed=3)
    store = TraceStore(str(tmp_path / "t.db"))
    ahead = solve_batch(questions, 2000, strategy="lookahead", gamma=3, store=store, seed=3)
    assert [r.text for r in ahead] == [r.text for r in greedy]
    accepted = proposed = 0
    for result in ahead:
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
        assert record.status == "done"
        [summary] = [e.payload for e in record.events if e.kind == "lookahead_summary"]
        accepted += summary["accepted"]
        proposed += summary["proposed"]
        assert summary["draft_tokens"] + summary["target_tokens"] == result.usage.generated_tokens
        # Every accepted draft step saved the target one sequential step.
        assert summary["target_passes"] < summary["target_tokens"] or summary["accepted"] == 0
    store.close()
    # The draft writes the reasoner's own next step on 64% of steps (the model card); proposals after a rejected
    # one are never accepted, so fewer of all proposals are (37% on these problems).
    assert accepted / proposed > 0.25


def test_the_embedded_draft_loads_only_for_lookahead_and_closes_with_the_setup() -> None:
    import anyio

    from ttc.errors import BackendError
    from ttc.session import Session
    from ttc.types import Sampling

    question = load_dataset("synthetic", limit=1, seed=41_100)[0].question
    setup = default_backend()
    try:
        assert setup.draft is None  # nothing has asked for it yet
        draft = Session(setup=setup, store=None).setup.draft_backend()
        assert draft is not None and draft in setup.closers
    finally:
        anyio.run(setup.aclose)
    with pytest.raises(BackendError, match="closed"):
        anyio.run(draft.complete, [1, 5, 6], 1, Sampling(max_tokens=2, temperature=0.0))
    result = solve(question, 1500, strategy="lookahead", store=False, seed=1)
    assert result.answer is not None


def test_a_draft_folder_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttc.models import mini_model_path

    question = load_dataset("synthetic", limit=1, seed=41_200)[0].question
    monkeypatch.setenv("TTC_DRAFT_MODEL", str(mini_model_path("draft")))
    assert solve(question, 1500, strategy="lookahead", store=False, seed=1).answer is not None
    monkeypatch.setenv("TTC_DRAFT_MODEL", "/no/such/folder")
    from ttc.errors import ConfigError

    with pytest.raises(ConfigError, match="TTC_DRAFT_MODEL must name a folder"):
        solve(question, 1500, strategy="lookahead", store=False, seed=1)
