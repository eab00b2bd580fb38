"""Beam search over steps: which nodes survive each round, the final pick, and where the search stops."""

from __future__ import annotations

import pytest
from tree_doubles import TablePRM, prefix_of, round_events, run_search, tree_responder

from ttc.errors import VerifierError
from ttc.strategies.base import Context, StrategyResult
from ttc.testing import ScriptedBackend
from ttc.types import Budget

pytestmark = pytest.mark.anyio

A5, A7 = "The answer is 5.\n", "The answer is 7.\n"
SCRIPT = {"": ["a\n", "b\n", "c\n", "d\n"], "a\n": ["a1\n", "a2\n"], "c\n": ["c1\n", A5], "a\na2\n": [A7, A5]}
SCORES = {"a": 0.9, "b": 0.2, "c": 0.7, "d": 0.5, "a1": 0.4, "a2": 0.95, "c1": 0.6,
          "The answer is 5.": 0.45, "The answer is 7.": 0.8}


async def run_beam(select: str = "weighted_vote") -> tuple[StrategyResult, Context, ScriptedBackend]:
    backend = ScriptedBackend(tree_responder(SCRIPT))
    result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 2, "select": select}, backend,
                                      TablePRM(SCORES))
    return result, ctx, backend


async def test_keeps_the_best_beam_width_and_cuts_the_rest() -> None:
    _, ctx, backend = await run_beam()
    node = {n.text: n for n in ctx.recorder.nodes()}  # texts in this script are unique where it matters
    rounds = round_events(ctx)
    assert rounds[0]["kept"] == [node["a\n"].id, node["c\n"].id]
    assert rounds[0]["pruned"] == [node["d\n"].id, node["b\n"].id]
    # One solution finished under c, so one slot is left: only a2 goes on.
    assert rounds[1]["kept"] == [node["a2\n"].id]
    assert rounds[1]["pruned"] == [node["c1\n"].id, node["a1\n"].id]
    assert len(rounds) == 2
    for text in ("b\n", "d\n", "a1\n", "c1\n"):
        assert (node[text].status, node[text].reason) == ("pruned", "beam cut")
    assert [call.n for call in backend.calls] == [4, 2, 2, 2]
    for pruned in (prefix_of("b\n"), prefix_of("d\n"), prefix_of("a\n", "a1\n"), prefix_of("c\n", "c1\n")):
        assert pruned in backend.released
    # Each pruned prefix is never extended afterwards.
    assert prefix_of("b\n") not in [call.prompt for call in backend.calls]


async def test_weighted_vote_and_score_pick_differently() -> None:
    voted, _, _ = await run_beam("weighted_vote")
    assert voted.answer == "5"
    assert len(voted.candidates) == 3
    best, ctx, _ = await run_beam("score")
    assert best.answer == "7" and best.score == pytest.approx(0.8)
    selected = [n for n in ctx.recorder.nodes() if n.status == "selected"]
    assert len(selected) == 1 and selected[0].text == A7
    assert best.text == "a\na2\n" + A7


async def test_stops_at_max_depth() -> None:
    backend = ScriptedBackend(lambda prompt, index, seed: f"more {index}\n")
    result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 2, "max_depth": 3}, backend,
                                      TablePRM(default=0.5))
    assert max(n.depth for n in ctx.recorder.nodes()) == 3
    assert all(c.text.count("\n") == 3 for c in result.candidates)


@pytest.mark.parametrize("select", ["score", "weighted_vote"])
async def test_a_fragment_the_budget_cut_does_not_beat_a_better_partial_path(select: str) -> None:
    """The last wave's 2-token grant wrote the fragment 'c1', which counted as a finished leaf and was chosen over
    the path scored 0.95, though neither states an answer."""
    script = {"": ["aa\n", "cc\n"], "aa\n": ["a1\n"], "cc\n": ["c1\n"]}
    table = {"aa": 0.9, "cc": 0.7, "a1": 0.95, "c1": 0.6}
    result, _, _ = await run_search("beam", {"beam_width": 2, "expand": 1, "max_step_tokens": 3, "select": select},
                                    ScriptedBackend(tree_responder(script)), TablePRM(table),
                                    budget=Budget(tokens=11))
    assert (result.text, result.score, result.answer) == ("aa\na1\n", 0.95, None)


async def test_a_product_of_negative_step_scores_is_refused() -> None:
    """Two negative scores multiply to a positive one: the path with two bad steps ranked first."""
    script = {"": ["bad\n", "good\n"], "bad\n": ["The answer is 1.\n"], "good\n": ["The answer is 2.\n"]}
    prm = TablePRM({"bad": -2.0, "good": 2.0, "The answer is 1.": -3.0, "The answer is 2.": 1.5})
    with pytest.raises(VerifierError, match="product of step scores needs scores >= 0"):
        await run_search("beam", {"beam_width": 2, "expand": 1, "aggregate": "prod"},
                         ScriptedBackend(tree_responder(script)), prm)


async def test_a_process_verifier_that_is_not_async_is_a_typed_error() -> None:
    class SyncPRM:
        def score_steps(self, question: str, steps: list[str]) -> list[float]:
            return [0.5 for _ in steps]

    with pytest.raises(VerifierError, match=r"SyncPRM\.score_steps must be a coroutine function"):
        await run_search("beam", {"beam_width": 1, "expand": 2}, ScriptedBackend(tree_responder({})), SyncPRM())
