"""DVTS: independent greedy subtrees, each keeping only its best child."""

from __future__ import annotations

import pytest
from tree_doubles import TablePRM, prefix_of, round_events, run_search, tree_responder

from ttc.testing import ScriptedBackend

pytestmark = pytest.mark.anyio

A5, A7, A0 = "The answer is 5.\n", "The answer is 7.\n", "The answer is 0.\n"
SCRIPT = {"": ["a\n", "b\n"], "a\n": ["a1\n", "a2\n"], "b\n": ["b1\n", "b2\n"],
          "a\na1\n": [A7, "a1x\n"], "b\nb1\n": [A5, "b1y\n"]}
SCORES = {"a": 0.6, "b": 0.5, "a1": 0.9, "a2": 0.8, "b1": 0.3, "b2": 0.1, "a1x": 0.2, "b1y": 0.7,
          "The answer is 5.": 0.45, "The answer is 7.": 0.8, "The answer is 0.": 0.5}


async def test_each_subtree_keeps_its_own_best_child() -> None:
    backend = ScriptedBackend(tree_responder(SCRIPT, fallback=A0))
    result, ctx, _ = await run_search("dvts", {"subtrees": 2, "expand": 2}, backend, TablePRM(SCORES))
    node = {n.text: n for n in ctx.recorder.nodes()}
    rounds = round_events(ctx)
    # b1 (0.3) survives although a2 (0.8) scores higher: subtrees do not compete with each other.
    assert rounds[1]["kept"] == [node["a1\n"].id, node["b1\n"].id]
    assert rounds[1]["pruned"] == [node["a2\n"].id, node["b2\n"].id]
    assert node["a2\n"].reason == "dvts: not the best child of its subtree"
    # a1's best child answers, so that subtree ends; b1's best child (b1y) goes on, its answering sibling stays.
    assert node[A7].status in ("finished", "selected")
    assert node["a1x\n"].status == "pruned"
    assert node[A5].status in ("finished", "selected")
    assert [call.prompt for call in backend.calls] == [
        prefix_of(), prefix_of("a\n"), prefix_of("b\n"), prefix_of("a\n", "a1\n"), prefix_of("b\n", "b1\n"),
        prefix_of("b\n", "b1\n", "b1y\n")]
    assert [call.n for call in backend.calls] == [2, 2, 2, 2, 2, 2]
    assert prefix_of("a\n", "a2\n") in backend.released
    assert sorted(c.answer or "" for c in result.candidates) == ["0", "0", "5", "7"]
    assert result.answer == "0"  # weighted vote: 0.5 + 0.5 beats 0.8 and 0.45


async def test_score_selection_takes_the_best_leaf() -> None:
    backend = ScriptedBackend(tree_responder(SCRIPT, fallback=A0))
    result, _, _ = await run_search("dvts", {"subtrees": 2, "expand": 2, "select": "score"}, backend,
                                    TablePRM(SCORES))
    assert result.answer == "7"
