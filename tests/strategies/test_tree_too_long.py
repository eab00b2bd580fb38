"""Paths too long for the verifier's context in a tree search: every step only lengthens a path, so one the
verifier refused is refused with every child. It is not grown while a judged path is open, and the budget it would
have taken goes to judged paths; what the verifier spent before refusing is charged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from tree_doubles import TablePRM, make_ctx, prefix_of, round_events, run_search, tree_responder

from ttc.budget import Meter
from ttc.errors import ContextLengthError, VerifierError
from ttc.strategies.base import Context, make_strategy
from ttc.strategies.tree import TOO_LONG
from ttc.testing import ScriptedBackend
from ttc.types import Budget, Node, Problem, PromptLogprobs
from ttc.verifiers.prm import GenerativeJudge
from ttc.verifiers.prm_presets import PRMPreset

pytestmark = pytest.mark.anyio

LIMIT = 30
LONG, LONGER = "y = " + "9" * 30 + "\n", "z = " + "8" * 30 + "\n"  # past LIMIT on their own


class ShortPRM(TablePRM):
    """Scores from a table; refuses a path of more than ``limit`` characters as too long for its context."""

    def __init__(self, table: Mapping[str, float], limit: int = LIMIT) -> None:
        super().__init__(table)
        self.limit = limit
        self.refused: list[tuple[str, ...]] = []

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        if sum(len(step) for step in steps) > self.limit:
            self.refused.append(tuple(steps))
            raise VerifierError("cannot score this solution") from ContextLengthError("too long")
        return await super().score_steps(question, steps)


def node(ctx: Context, text: str) -> Node:
    [found] = [n for n in ctx.recorder.nodes() if n.text == text]
    return found


def prompts(backend: ScriptedBackend) -> list[tuple[int, ...]]:
    return [call.prompt for call in backend.calls]


async def test_beam_keeps_no_path_too_long_for_the_verifier_beside_a_judged_one() -> None:
    script = {"": ["a = 1\n", LONG], "a = 1\n": ["The answer is 1.\n"], LONG: ["The answer is 2.\n"]}
    backend = ScriptedBackend(tree_responder(script))
    result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 1}, backend, ShortPRM({"a = 1": 0.9}))
    assert node(ctx, LONG).status == "pruned" and node(ctx, LONG).reason == TOO_LONG
    assert prompts(backend) == [prefix_of(), prefix_of("a = 1\n")]  # never grown
    assert round_events(ctx)[0]["kept"] == [node(ctx, "a = 1\n").id]
    assert (result.answer, result.score) == ("1", 0.5)


@pytest.mark.parametrize("name", ["rebase", "ets"])
async def test_rebase_and_ets_share_the_width_among_judged_paths_only(name: str) -> None:
    """REBASE gave each refused path, ranked at the lowest judged score, its softmax share of the width."""
    script = {"": ["a = 1\n", "b = 2\n", LONG, LONGER]}
    prm = ShortPRM({"a = 1": 0.6, "b = 2": 0.5})  # close enough for every path ranked with b to earn a share
    options: dict[str, object] = {"width": 4}
    if name == "ets":
        options |= {"lambda_kv": 0.0, "lambda_coverage": 1.0, "n_clusters": 2}
    backend = ScriptedBackend(tree_responder(script))
    _, ctx, _ = await run_search(name, options, backend, prm)
    judged = {node(ctx, "a = 1\n").id, node(ctx, "b = 2\n").id}
    first = round_events(ctx)[0]
    allocation = first["allocation"]
    assert isinstance(allocation, dict) and {int(i) for i in allocation} <= judged
    assert allocation == {str(node(ctx, "a = 1\n").id): 2, str(node(ctx, "b = 2\n").id): 2}  # the whole width
    for text in (LONG, LONGER):
        assert node(ctx, text).reason == TOO_LONG and node(ctx, text).id not in first["pruned"]  # type: ignore[operator]
        assert prefix_of(text) not in prompts(backend)
    if name == "ets":  # the program chose among judged paths alone
        clusters = first["clusters"]
        assert isinstance(clusters, dict) and {int(i) for i in clusters} <= judged


async def test_dvts_ends_a_subtree_whose_children_are_all_too_long_while_another_grows() -> None:
    """The best of its refused children (ranked at the floor) became its head and was grown, child after child."""
    script = {"": ["a = 1\n", "b = 2\n"], "a = 1\n": ["c = 3\n", "d = 4\n"], "b = 2\n": [LONG, LONGER],
              "a = 1\nc = 3\n": ["The answer is 3.\n"]}
    prm = ShortPRM({"a = 1": 0.9, "b = 2": 0.8, "c = 3": 0.7, "d = 4": 0.6, "The answer is 3.": 0.9})
    backend = ScriptedBackend(tree_responder(script))
    result, ctx, _ = await run_search("dvts", {"subtrees": 2, "expand": 2}, backend, prm)
    assert all(node(ctx, text).reason == TOO_LONG for text in (LONG, LONGER))
    refused = [prefix_of("b = 2\n", text) for text in (LONG, LONGER)]
    assert not any(p[: len(r)] == r for p in prompts(backend) for r in refused)  # nothing grown under them
    second = round_events(ctx)[1]
    assert second["kept"] == [node(ctx, "c = 3\n").id] and second["subtrees"] == {
        "0": node(ctx, "c = 3\n").id, "1": node(ctx, "b = 2\n").id}
    assert result.answer == "3"


async def test_once_a_judged_solution_answers_no_path_too_long_is_grown() -> None:
    """No judged path is open, but a judged one is complete: anything grown under the refused path would be left
    out of a choice by score."""
    script = {"": ["The answer is 1.\n", "a = 1\n"], "a = 1\n": [LONG], "a = 1\n" + LONG: ["The answer is 2.\n"]}
    backend = ScriptedBackend(tree_responder(script))
    result, ctx, _ = await run_search("rebase", {"width": 2}, backend, ShortPRM({"a = 1": 0.9}))
    assert node(ctx, LONG).reason == f"{TOO_LONG}, and a judged solution states an answer"
    assert prefix_of("a = 1\n", LONG) not in prompts(backend)
    assert result.answer == "1"


async def test_where_no_judged_path_is_open_or_answers_a_path_too_long_is_grown_on_blind() -> None:
    """The search still ends with an answer; a blank step under the refused path is refused with it, not reported
    as left for lack of time."""
    script = {"": ["a = 1\n"], "a = 1\n": [LONG], "a = 1\n" + LONG: ["\n"],
              "a = 1\n" + LONG + "\n": ["The answer is 5.\n"]}
    backend = ScriptedBackend(tree_responder(script))
    result, ctx, _ = await run_search("rebase", {"width": 1}, backend, ShortPRM({"a = 1": 0.9}))
    assert prefix_of("a = 1\n", LONG) in prompts(backend)
    assert (result.answer, result.score) == ("5", None)
    events = [e.payload for e in ctx.recorder.events() if e.kind == "unscored"]
    assert {e["reason"] for e in events} == {"verifier_context"}
    assert node(ctx, "\n").id in [i for e in events for i in e["node_ids"]]  # type: ignore[attr-defined]


class SmallContext(ScriptedBackend):
    """A judge's backend refusing prompts past ``limit`` tokens before computing them, as a server does."""

    def __init__(self, limit: int) -> None:
        super().__init__(["unused"])
        self.limit = limit

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        if len(prompt) > self.limit:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens does not fit the {self.limit}-position context")
        return await super().prompt_logprobs(prompt, top_k)


async def test_a_judge_refused_at_a_later_step_of_a_path_is_charged_for_the_steps_it_judged() -> None:
    """A judge asks about each step of a path (every one, where it keeps no cache); the steps it judged before one
    overflowed its context were computed, and went uncharged where the path was left unscored."""
    script = {"": ["a = 1\n", "b = 2\n"], "a = 1\n": ["The answer is 1.\n"], "b = 2\n": ["x" * 120 + "\n"]}
    judge_backend = SmallContext(170)
    verdicts = GenerativeJudge(judge_backend, PRMPreset(name="judge", family="chat", good="Y", bad="N"),
                               incremental=False)
    ctx = make_ctx(ScriptedBackend(tree_responder(script)), verdicts)
    meter = Meter(Budget(tokens=10_000))
    await make_strategy("beam", {"beam_width": 2, "expand": 1, "max_depth": 2}).run(Problem("q"), meter, ctx)
    assert any(e.kind == "unscored" and e.payload["reason"] == "verifier_context" for e in ctx.recorder.events())
    usage = meter.usage()
    assert usage.verifier_tokens == judge_backend.stats().scored_tokens == verdicts.scored_tokens
    assert usage.verifier_calls == verdicts.calls == 5  # a; b; a and its answer; b, not the long step
