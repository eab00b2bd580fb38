"""Batch evaluation through its API: what a run needs of its problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.api import open_session
from ttc.bench.eval import evaluate, summarize
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend, guessing_responder
from ttc.types import Budget, Problem

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("indices", [(None, None, None), (0, 1, 1)])
async def test_problems_without_their_own_index_are_refused(tmp_path: Path, indices: tuple[int | None, ...]) -> None:
    """The index marks a problem done and seeds it: problems sharing one would be solved and counted as one."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=index) for i, index in enumerate(indices)]
    try:
        with pytest.raises(ConfigError, match="its own index"):
            await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2}, seed=0)
        assert session.store is not None and session.store.list_runs() == []  # refused before a run is opened
        report = await evaluate([Problem(p.question, gold=p.gold, index=i) for i, p in enumerate(problems)],
                                Budget(tokens=200), session, strategy="best_of_n", options={"n": 2}, seed=0)
        assert report.done == 3
    finally:
        await session.aclose()


async def test_a_runs_summary_reads_every_one_of_its_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summarize listed "all" traces with limit=1_000_000, so a larger run would have been counted short, silently."""
    session = open_session(backend=ScriptedBackend(guessing_responder), store=str(tmp_path / "t.db"), verifier=None,
                           prompt_template=None)
    problems = [Problem(f"What is {i} + 1?", gold=str(i + 1), index=i) for i in range(3)]
    try:
        report = await evaluate(problems, Budget(tokens=200), session, strategy="best_of_n", options={"n": 2},
                                seed=0)
        assert session.store is not None
        limits: list[object] = []
        listed = TraceStore.list_traces

        def list_traces(store: TraceStore, **kwargs: object) -> object:
            limits.append(kwargs.get("limit", 50))
            return listed(store, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(TraceStore, "list_traces", list_traces)
        again = summarize(session.store, report.run_id, total=3, wall_s=0.0)
        assert limits and all(limit is None for limit in limits)
        assert (again.done, again.trace_ids) == (3, report.trace_ids)
    finally:
        await session.aclose()
