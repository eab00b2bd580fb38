"""REBASE: the width shared out by softmax of scores, exactly, and the search ending at `width` solutions."""

from __future__ import annotations

import math
import random

import pytest
from tree_doubles import HashPRM, TablePRM, prefix_of, random_responder, round_events, run_search, tree_responder

from ttc.strategies.ets_ilp import softmax
from ttc.strategies.rebase import apportion
from ttc.strategies.tree import StepNode
from ttc.testing import ScriptedBackend
from ttc.types import Budget

pytestmark = pytest.mark.anyio


def nodes(scores: list[float]) -> list[StepNode]:
    return [StepNode(id=i, parent=None, prefix=(), token_ids=(), text="", depth=1, score=s)
            for i, s in enumerate(scores)]


def test_apportion_by_largest_remainder() -> None:
    frontier = nodes([0.9, 0.5, 0.1])
    # softmax(s / 0.5) = (0.606, 0.272, 0.122); x3 = (1.82, 0.82, 0.37): floors (1, 0, 0), two left over.
    assert apportion(frontier, softmax([0.9, 0.5, 0.1], 0.5), 3) == {0: 2, 1: 1, 2: 0}
    assert apportion(frontier, softmax([0.9, 0.5, 0.1], 100.0), 3) == {0: 1, 1: 1, 2: 1}
    assert apportion(frontier, softmax([0.9, 0.5, 0.1], 0.01), 3) == {0: 3, 1: 0, 2: 0}


def test_apportion_always_sums_to_the_total_within_one_of_the_quota() -> None:
    rng = random.Random(7)
    for _ in range(200):
        scores = [rng.random() for _ in range(rng.randrange(1, 9))]
        weights = softmax(scores, rng.choice([0.05, 0.2, 1.0]))
        total = rng.randrange(1, 40)
        shares = apportion(nodes(scores), weights, total)
        assert sum(shares.values()) == total
        for i, w in enumerate(weights):
            assert math.floor(w * total) <= shares[i] <= math.floor(w * total) + 1


async def test_children_follow_the_allocation_and_starved_nodes_are_pruned() -> None:
    script = {"": ["a\n", "b\n", "c\n", "The answer is 1.\n"]}
    backend = ScriptedBackend(tree_responder(script))
    prm = TablePRM({"a": 0.9, "b": 0.5, "c": 0.1})
    result, ctx, _ = await run_search("rebase", {"width": 4, "balance_temperature": 0.5}, backend, prm)
    node = {n.text: n for n in ctx.recorder.nodes()}
    first = round_events(ctx)[0]
    assert first["owed"] == 3
    assert first["allocation"] == {str(node["a\n"].id): 2, str(node["b\n"].id): 1}
    assert (node["c\n"].status, node["c\n"].reason) == ("pruned", "rebase: no share of the width")
    assert prefix_of("c\n") in backend.released
    assert [(call.prompt, call.n) for call in backend.calls] == [
        (prefix_of(), 4), (prefix_of("a\n"), 2), (prefix_of("b\n"), 1)]
    assert len(result.candidates) == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_ends_with_exactly_width_solutions(seed: int) -> None:
    result, ctx, _ = await run_search("rebase", {"width": 5}, ScriptedBackend(random_responder), HashPRM(),
                                      seed=seed)
    assert len(result.candidates) == 5
    for event in round_events(ctx):
        assert sum(event["allocation"].values()) == event["owed"]  # type: ignore[attr-defined]


def slow_responder(prompt_text: str, index: int, seed: int | None) -> str:
    """Seven steps to an answer on every path: a budget for a few paths, not for four."""
    depth = prompt_text.count("\n") - 1
    return "The answer is 1.\n" if depth >= 6 else f"step {depth} {'x' * (index % 3)}\n"


async def test_narrowing_to_what_the_budget_can_finish_leaves_an_answer_where_the_full_width_leaves_none() -> None:
    budget = Budget(tokens=180)  # the full width finishes a path from 210 tokens on, the narrowed search from 170
    wide, _, wide_meter = await run_search("rebase", {"width": 4}, ScriptedBackend(slow_responder), HashPRM(),
                                           budget=budget)
    assert wide.answer is None and all(c.answer is None for c in wide.candidates)  # every path cut short
    narrow, ctx, meter = await run_search("rebase", {"width": 4, "narrow_to_finish": True},
                                          ScriptedBackend(slow_responder), HashPRM(), budget=budget)
    assert narrow.answer == "1"
    assert meter.usage().generated_tokens <= 180 and wide_meter.usage().generated_tokens <= 180
    rounds = round_events(ctx)
    narrowed = [r for r in rounds if "narrowed_from" in r]
    assert narrowed and all(r["owed"] < r["narrowed_from"] for r in narrowed)  # type: ignore[operator]
    assert all("narrowed_from" not in r for r in round_events(ctx)[: rounds.index(narrowed[0])])
