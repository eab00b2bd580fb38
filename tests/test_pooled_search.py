"""A batch of tree searches under one shared budget (budget_scope="batch"), end to end with real SQLite.

The scripted backend and a table PRM stand in for the models so the controller's decisions can be asserted exactly;
the run on the bundled mini models is in tests/test_pooled_mini.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pooled_doubles import answer, events

from ttc import solve_batch
from ttc.budget import Meter
from ttc.errors import BackendError, ConfigError, ContextLengthError, VerifierError
from ttc.pooled_search import MAX_SEARCHES, _Searcher
from ttc.storage import TraceStore
from ttc.strategies.tree import StepNode
from ttc.testing import ScriptedBackend
from ttc.types import Budget, Completion

EASY = [f"easy {i}" for i in range(4)]
HARD = [f"hard {i}" for i in range(2)]
STEP = "Add them up.\n"


class StepPRM:
    """Every step scores 0.8: the vote is then a plain count, and what splits it is the responder."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.8] * len(steps)


def responder(prompt_text: str, index: int, seed: int | None) -> str:
    """One step, then an answer: easy questions always 4, hard ones one of three answers by seed and sample."""
    if not prompt_text.endswith(STEP):
        return STEP
    return answer(prompt_text, index, seed) + "\n"


OPTIONS = {"width": 3, "max_step_tokens": 20, "max_depth": 4}


def test_what_easy_questions_leave_goes_to_the_split_ones(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    questions = EASY + HARD
    budget = len(questions) * 300
    results = solve_batch(questions, budget, backend=ScriptedBackend(responder), verifier=StepPRM(), store=store,
                          seed=3, strategy="rebase", budget_scope="batch", **OPTIONS)
    assert sum(r.usage.generated_tokens for r in results) <= budget
    assert [r.answer for r in results[:4]] == ["4"] * 4
    for r in results[:4]:
        assert r.strategy == "rebase"
        assert events(store, r.trace_id, "stop") == [{"reason": "decided", "searches": 1, "solutions": 3}]
        assert len(events(store, r.trace_id, "grant")) == 1
    for r in results[4:]:
        # Split votes: searched again, up to the cap, every search grown from the one prompt node.
        [stop] = events(store, r.trace_id, "stop")
        assert stop == {"reason": "max_searches", "searches": MAX_SEARCHES, "solutions": 3 * MAX_SEARCHES}
        assert [g["tokens"] for g in events(store, r.trace_id, "grant")] == [300] * MAX_SEARCHES
        assert len(r.candidates) == 3 * MAX_SEARCHES
        assert r.usage.generated_tokens > 300  # more than an even share
        assert r.trace_id is not None
        nodes = store.get_trace(r.trace_id).nodes
        assert sum(n.parent is None for n in nodes) == 1
        [plan] = events(store, r.trace_id, "plan")
        assert plan["budget_scope"] == "batch" and plan["batch_size"] == 6 and plan["max_searches"] == MAX_SEARCHES
        assert plan["strategy"] == "rebase"
    assert all(t.status == "done" for t in store.list_traces())
    store.close()


@pytest.mark.parametrize("per_question", [20, 45, 130])
def test_the_batch_never_spends_more_than_its_budget(per_question: int) -> None:
    questions = EASY[:2] + HARD
    budget = per_question * len(questions)
    results = solve_batch(questions, budget, backend=ScriptedBackend(responder), verifier=StepPRM(), store=False,
                          seed=1, strategy="rebase", budget_scope="batch", **OPTIONS)
    assert sum(r.usage.generated_tokens for r in results) <= budget
    assert len(results) == len(questions)


def test_auto_pools_beam_searches_twice_as_large_each_time(tmp_path: Path) -> None:
    """Under auto each further search of a question gets twice the grant, and auto sizes the beam for it."""
    store = TraceStore(str(tmp_path / "t.db"))
    results = solve_batch(EASY[:2] + HARD, 4 * 2048, backend=ScriptedBackend(responder), verifier=StepPRM(),
                          store=store, seed=5, budget_scope="batch")
    assert {r.strategy for r in results} == {"beam"}
    assert [r.answer for r in results[:2]] == ["4", "4"]
    for r in results[:2]:
        assert [(g["tokens"], g["options"]["beam_width"]) for g in events(store, r.trace_id, "grant")] == [(2048, 1)]
    # The least settled takes its doubled grant while the pool affords it, and then what the pool has left (at
    # least an even share): the other's second grant, and both questions' next ones, are what was left.
    grants = [[(g["tokens"], g["options"]["beam_width"]) for g in events(store, r.trace_id, "grant")]
              for r in results[2:]]
    assert grants == [[(2048, 1), (4096, 2), (7352, 3), (6992, 3)], [(2048, 1), (3616, 1), (6632, 3), (6272, 3)]]
    for r in results[2:]:
        assert events(store, r.trace_id, "stop")[0]["reason"] == "max_searches"
    assert sum(r.usage.generated_tokens for r in results) <= 4 * 2048
    [plan] = events(store, results[0].trace_id, "plan")
    assert plan["strategy"] == "beam" and plan["budget_scope"] == "batch" and plan["growth"] == 2
    store.close()


def test_the_same_seed_spends_the_same_way_at_any_concurrency() -> None:
    def run(concurrency: int) -> list[tuple[str | None, int, int]]:
        results = solve_batch(EASY[:2] + HARD, 4 * 200, backend=ScriptedBackend(responder, delay_s=0.001),
                              verifier=StepPRM(), store=False, seed=9, strategy="rebase", budget_scope="batch",
                              concurrency=concurrency, **OPTIONS)
        return [(r.answer, len(r.candidates), r.usage.generated_tokens) for r in results]

    assert run(1) == run(8)


@pytest.mark.parametrize("strategy", ["beam", "auto"])
def test_a_batch_budget_near_the_largest_limit_runs(strategy: str) -> None:
    """A question's internal cap (its share times the searches' growth) passed 2**63 - 1, and a budget the caller
    was allowed to give was refused as too large."""
    results = solve_batch(EASY[:2], 2**62, backend=ScriptedBackend(responder), verifier=StepPRM(), store=False,
                          seed=0, strategy=strategy, budget_scope="batch")
    assert [r.answer for r in results] == ["4", "4"]


def test_a_failure_marks_every_trace_of_the_batch_failed(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    with pytest.raises(BackendError, match="refused"):
        solve_batch(EASY[:2] + HARD, 4 * 300, backend=ScriptedBackend(responder, fail_after=10), verifier=StepPRM(),
                    store=store, seed=0, strategy="rebase", budget_scope="batch", concurrency=2, **OPTIONS)
    traces = store.list_traces()
    assert len(traces) == 4 and {t.status for t in traces} == {"failed"}
    # the question whose call failed carries the error; the others were stopped because of it
    errors = [str(store.get_trace(t.id).error) for t in traces]
    assert errors.count("cancelled") == 3 and sum(e.startswith("BackendError: ") for e in errors) == 1
    store.close()


def test_what_cannot_start_a_search_each_is_refused_before_anything_runs() -> None:
    backend = ScriptedBackend(responder)
    with pytest.raises(ConfigError, match="cannot give each of 4 questions' searches one step"):
        solve_batch(EASY, 4 * 20 - 1, backend=backend, verifier=StepPRM(), store=False, strategy="rebase",
                    budget_scope="batch", **OPTIONS)
    with pytest.raises(ConfigError, match="unknown option 'n'"):
        solve_batch(EASY, 10_000, backend=backend, verifier=StepPRM(), store=False, strategy="rebase",
                    budget_scope="batch", n=4)
    with pytest.raises(ConfigError, match="process verifier"):
        solve_batch(EASY, 10_000, backend=backend, store=False, strategy="rebase", budget_scope="batch")
    assert backend.calls == []


def test_a_meter_grant_limits_what_comes_next_only() -> None:
    meter = Meter(Budget(tokens=10, wall_s=100.0))
    meter.charge([Completion(text="abc", token_ids=(1, 2, 3), finish_reason="stop")])
    meter.allow(tokens=5, calls=2)
    assert meter.tokens_left() == 5 and meter.calls_left() == 2
    meter.allow(tokens=None, calls=None)
    assert meter.tokens_left() is None and not meter.exhausted()


def test_a_cancelled_batch_of_searches_leaves_no_trace_running(tmp_path: Path) -> None:
    import anyio

    from ttc import asolve_batch

    store = TraceStore(str(tmp_path / "t.db"))

    async def main() -> bool:
        with anyio.move_on_after(0.3) as scope:
            await asolve_batch(EASY[:2] + HARD, 4 * 300, backend=ScriptedBackend(responder, delay_s=0.05),
                               verifier=StepPRM(), store=store, seed=0, strategy="rebase", budget_scope="batch",
                               **OPTIONS)
        return scope.cancelled_caught

    assert anyio.run(main), "the batch should still have been searching when cancelled"
    traces = store.list_traces()
    assert len(traces) == 4 and {t.status for t in traces} == {"failed"}
    assert {store.get_trace(t.id).error for t in traces} == {"cancelled"}
    store.close()


@pytest.mark.parametrize("strategy", ["beam", "rebase", "auto", "self_consistency"])
def test_an_empty_batch_sharing_a_budget_answers_nothing(strategy: str) -> None:
    """A named tree search raised a ConfigError that told the caller to use a tree search."""
    assert solve_batch([], 100, strategy=strategy, backend=ScriptedBackend(responder), verifier=StepPRM(),
                       store=False, budget_scope="batch") == []


@pytest.mark.parametrize("scope", ["batch", "question"])
def test_a_named_search_without_a_process_verifier_is_refused_before_any_trace_opens(
        tmp_path: Path, scope: str) -> None:
    store = TraceStore(tmp_path / "t.db")
    try:
        with pytest.raises(ConfigError, match="tree searches score every step with a process verifier"):
            solve_batch(EASY[:2], 2 * 2048, backend=ScriptedBackend(responder), verifier=None, store=store, seed=0,
                        strategy="rebase", budget_scope=scope)
        assert store.list_traces() == []  # each question's trace was opened, then failed on it
    finally:
        store.close()


class ZeroForOthersPRM:
    """Scores the answer 5 at 0.8 and every other answer at exactly 0: a weight of nothing, not no answer."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.0 if "answer is" in step and "answer is 5" not in step else 0.8 for step in steps]


def test_solutions_that_disagree_are_not_decided_where_the_verifier_scores_some_at_zero(tmp_path: Path) -> None:
    """The weighted margin of 5 (0.8) over 6 and 7 (0 each) is 1.0, which read as every solution agreeing."""
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        results = solve_batch(HARD, 2 * 300, backend=ScriptedBackend(responder), verifier=ZeroForOthersPRM(),
                              store=store, seed=3, strategy="rebase", budget_scope="batch", **OPTIONS)
        for r in results:
            answers = {c.answer for c in r.candidates}
            [stop] = events(store, r.trace_id, "stop")
            assert len(answers) > 1 and stop["reason"] != "decided"
    finally:
        store.close()


def _solution(node_id: int, answer: str | None, score: float) -> StepNode:
    return StepNode(id=node_id, parent=None, prefix=(), token_ids=(), text="", depth=1, score=score, complete=True,
                    answer=answer)


def _searcher_with(*finished: StepNode) -> _Searcher:
    searcher = _Searcher(0, run=None, planner=lambda tokens: None, first_tokens=None,  # type: ignore[arg-type]
                         growth=2)
    searcher.finished = list(finished)
    return searcher


def test_a_solution_without_an_answer_does_not_turn_the_margin_into_zero() -> None:
    """Scored 0 (or below), the answers weigh nothing; the non-answer's 0.9 kept them from counting as a plain
    vote, so 7 against 9 by two to one had a margin of 0 and took the batch's next search first."""
    searcher = _searcher_with(_solution(1, "7", 0.0), _solution(2, "7", 0.0), _solution(3, "9", 0.0),
                             _solution(4, None, 0.9))
    assert searcher.margin() == 1 / 3


class ThirtyCharacterPRM:
    """Scores 0.9 for "The answer is 1.", 0.4 else, and refuses a path over 30 characters as too long."""

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        if sum(len(step) for step in steps) > 30:
            raise VerifierError("cannot score this solution") from ContextLengthError("no room in its context")
        return [0.9 if step == "The answer is 1." else 0.4 for step in steps]


def test_a_later_search_whose_first_steps_are_too_long_keeps_the_questions_judged_answer(tmp_path: Path) -> None:
    """A question's second search, every first step of it too long for the verifier, raised as if the question
    had no judged path at all: the whole batch failed, the questions already decided among it."""
    first_search: dict[int | None, int] = {}

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        head, path = prompt_text.split("\n", 1)
        if head != "Q: q":
            return "The answer is 7.\n"
        if path:
            return "The answer is 3.\n"
        if first_search.setdefault(seed, len(first_search)) == 0:  # two judged answers that disagree
            return ["The answer is 1.\n", "The answer is 2.\n"][index % 2]
        return "y = " + "9" * 40 + "\n"

    db = str(tmp_path / "t.db")
    results = solve_batch(["q", "q2", "q3"], 2000, strategy="rebase", backend=ScriptedBackend(respond),
                          verifier=ThirtyCharacterPRM(), store=db, seed=1, budget_scope="batch",
                          prompt_template="Q: {question}\n", width=2, max_step_tokens=50)
    assert [r.answer for r in results] == ["1", "7", "7"] and len(first_search) > 1  # q was searched again
    with TraceStore(db, read_only=True) as store:
        assert {t.status for t in store.list_traces()} == {"done"}
