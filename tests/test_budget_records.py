"""What a budget buys and what a trace says of it: the budget a pooled batch's traces record, a budget spent before
the first call, and the refusal of options that ``auto`` cannot take in a pooled batch.

A scripted backend and a constant PRM stand in for the models, with real SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pooled_doubles import answer, events

from ttc import Budget, sleep, solve, solve_batch
from ttc.api import BudgetScope
from ttc.errors import BudgetExhausted, ConfigError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend

QUESTIONS = ["hard 0", "hard 1"]
NO_TIME = Budget(wall_s=1e-6)  # spent while the trace opens, before any call


class EvenPRM:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.8] * len(steps)


@pytest.mark.parametrize(("strategy", "budget", "options"), [
    ("self_consistency", Budget(tokens=1200), {}),
    ("self_consistency", Budget(wall_s=30.0), {"max_tokens": 30}),
    ("rebase", Budget(tokens=600), {"max_step_tokens": 20}),
    ("rebase", Budget(tokens=600, calls=9), {"max_step_tokens": 20}),
])
def test_a_pooled_trace_records_the_batch_budget_not_its_own_cap(
        tmp_path: Path, strategy: str, budget: Budget, options: dict[str, object]) -> None:
    """Each trace recorded the cap its meter held as its budget: tokens=8192 for a batch of 1200 tokens, and a token
    limit for a batch that set only wall time."""
    store = TraceStore(tmp_path / "t.db")
    try:
        results = solve_batch(QUESTIONS, budget, strategy=strategy, backend=ScriptedBackend(answer),
                              verifier=EvenPRM(), store=store, seed=3, budget_scope="batch", **options)
        assert sum(r.usage.generated_tokens for r in results) <= (budget.tokens or 10**9)
        for result in results:
            record = store.get_trace(result.trace_id or "")
            assert record.budget == budget
            [plan] = events(store, result.trace_id, "plan")
            limits = {"tokens": budget.tokens, "wall_s": budget.wall_s, "calls": budget.calls}
            assert plan["budget"] == plan["batch_budget"] == limits
            assert isinstance(plan["question_cap"], int) and plan["question_cap"] > 0
    finally:
        store.close()


def test_a_pooled_vote_still_stops_at_its_own_cap_of_samples() -> None:
    """The batch's budget is what the trace records; what a question draws is still bounded by its cap."""
    [result] = solve_batch(["hard 0"], 10_000, strategy="self_consistency", backend=ScriptedBackend(answer),
                           store=False, seed=1, budget_scope="batch", max_tokens=20, max_samples=6, round_size=4)
    assert len(result.candidates) == 6
    assert result.usage.generated_tokens <= 6 * 20


@pytest.mark.parametrize("strategy", ["rebase", "beam", "lookahead", "best_of_n", "self_consistency"])
def test_a_wall_time_spent_before_the_first_call_fails_the_question(tmp_path: Path, strategy: str) -> None:
    """It returned a 'done' trace with no answer, no text and nothing saying why."""
    store = TraceStore(tmp_path / "t.db")
    draft = {"draft": ScriptedBackend(answer)} if strategy == "lookahead" else {}
    try:
        with pytest.raises(BudgetExhausted, match=r"the budget's wall_s \(1e-06 s\) ran out before the first "
                                                  r"backend call.*raise Budget\.wall_s"):
            solve("hard 0", NO_TIME, strategy=strategy, backend=ScriptedBackend(answer), verifier=EvenPRM(),
                  store=store, seed=0, **draft)
        [trace] = store.list_traces()
        record = store.get_trace(trace.id)
        assert record.status == "failed" and "ran out before the first backend call" in (record.error or "")
    finally:
        store.close()


@pytest.mark.parametrize(("scope", "strategy"), [("batch", "self_consistency"), ("batch", "rebase"),
                                                 ("question", "self_consistency")])
def test_a_batch_whose_wall_time_buys_nothing_fails_every_trace(tmp_path: Path, scope: BudgetScope,
                                                               strategy: str) -> None:
    store = TraceStore(tmp_path / "t.db")
    try:
        with pytest.raises(BudgetExhausted, match=r"wall_s \(1e-06 s\) ran out before"):
            solve_batch(QUESTIONS, NO_TIME, strategy=strategy, backend=ScriptedBackend(answer), verifier=EvenPRM(),
                        store=store, seed=0, budget_scope=scope)
        traces = store.list_traces()
        assert traces and {t.status for t in traces} == {"failed"}
        if scope == "batch":
            assert all("before any of its 2 questions" in (store.get_trace(t.id).error or "") for t in traces)
    finally:
        store.close()


def test_sleep_names_the_wall_time_that_ran_out() -> None:
    """It said the sleep budget bought no draft and to raise it, as a draft takes up to 1024 tokens: tokens were
    never short."""
    with pytest.raises(BudgetExhausted) as caught:
        sleep("Meg has 13 cups. Ted has 9 more cups than Meg.", NO_TIME, backend=ScriptedBackend(answer),
              store=False)
    message = str(caught.value)
    assert "the sleep budget's wall_s (1e-06 s) ran out before the first backend call" in message
    assert "raise Budget.wall_s" in message and "tokens" not in message


@pytest.mark.parametrize(("options", "instead"), [
    ({"n": 4}, "use max_samples=N in place of n"),  # refused before the session opens
    ({"width": 3}, "tree search options (width) only with a process verifier"),  # refused with the session's setup
])
def test_a_pooled_auto_refusal_says_auto_runs_votes(options: dict[str, object], instead: str) -> None:
    """It named strategy 'self_consistency', which the caller never chose, and no option to use instead."""
    with pytest.raises(ConfigError) as caught:
        solve_batch(QUESTIONS, 4000, strategy="auto", backend=ScriptedBackend(answer), store=False, seed=1,
                    budget_scope="batch", **options)
    message = str(caught.value)
    assert message.startswith("strategy 'auto' with budget_scope='batch' runs each question as a self-consistency "
                              "vote")
    assert instead in message
    assert f"unknown option {next(iter(options))!r}" in message


def test_a_pooled_self_consistency_refusal_stays_as_it_was() -> None:
    with pytest.raises(ConfigError, match=r"^invalid options for strategy 'self_consistency': unknown option 'n'"):
        solve_batch(QUESTIONS, 4000, strategy="self_consistency", backend=ScriptedBackend(answer), store=False,
                    seed=1, budget_scope="batch", n=4)
