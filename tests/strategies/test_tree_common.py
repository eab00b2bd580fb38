"""What every step-level search shares (ttc.strategies.tree): budget planning, step boundaries, PRM scoring,
KV release and accounting, reproducibility, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace

import pytest
from cancelling import CancelledAtRelease
from tree_doubles import (
    HashPRM,
    TablePRM,
    make_ctx,
    prefix_of,
    random_responder,
    round_events,
    run_search,
    tree_responder,
)

from ttc.backends.base import BackendStats
from ttc.budget import Meter
from ttc.errors import BackendError, ConfigError, VerifierError
from ttc.strategies.base import Context, make_strategy
from ttc.strategies.tree import SearchTree, TreeSearchOptions, plan_round
from ttc.testing import ScriptedBackend
from ttc.trace import TraceRecorder
from ttc.types import Budget, Completion, Problem, Sampling
from ttc.verifiers.base import StepwiseOutcome

pytestmark = pytest.mark.anyio

SEARCHES = {
    "beam": {"beam_width": 2, "expand": 3, "max_step_tokens": 24},
    "dvts": {"subtrees": 3, "expand": 2, "max_step_tokens": 24},
    "rebase": {"width": 6, "max_step_tokens": 24},
    "ets": {"width": 6, "max_step_tokens": 24},
}


def test_plan_round_reserves_worst_case_and_trims_the_last() -> None:
    meter = Meter(Budget(tokens=45))
    assert plan_round(meter, [2, 2, 2], 10) == [(2, 10), (2, 10), (0, 0)]
    assert plan_round(Meter(Budget(tokens=1000, calls=2)), [1, 1, 1], 10) == [(1, 10), (1, 10), (0, 0)]
    assert plan_round(Meter(Budget(wall_s=60)), [7, 3], 10) == [(7, 10), (3, 10)]
    assert plan_round(Meter(Budget(tokens=25)), [4, 1], 10) == [(2, 10), (0, 0)]
    assert plan_round(Meter(Budget(tokens=5)), [2, 1], 10) == [(1, 5), (0, 0)]


async def test_without_a_process_verifier_the_search_refuses() -> None:
    ctx = Context(backend=ScriptedBackend(["a\n"]), recorder=TraceRecorder(), rng=__import__("random").Random(0))
    with pytest.raises(ConfigError, match="verifier=prm"):
        await make_strategy("beam").run(Problem("q"), Meter(Budget(tokens=100)), ctx)


async def test_step_boundaries_decide_completion() -> None:
    backend = ScriptedBackend(tree_responder({"": ["go on\n", "The answer is 4.\n", "2 + 2 = 4\n",
                                                   "ends without a delimiter", "y" * 40 + "\n"]}))
    ctx = Context(backend=backend, recorder=TraceRecorder(), rng=__import__("random").Random(0), prm=TablePRM(),
                  prompt_template="Q: {question}\n")
    tree = await SearchTree.open(Problem("q"), Meter(Budget(tokens=1000)), ctx,
                                 TreeSearchOptions(max_step_tokens=20))
    children = await tree.expand([(tree.root, 5)])
    assert [c.complete for c in children] == [False, True, False, True, True]
    assert children[1].answer == "4"
    assert backend.calls[0].sampling.stop == ("\n",)
    assert all(c.prefix == tree.root.prefix + c.token_ids for c in children)
    deeper = await tree.expand([(children[0], 1)])
    assert deeper[0].depth == 2 and deeper[0].prefix == children[0].prefix + deeper[0].token_ids
    shallow = await SearchTree.open(Problem("q"), Meter(Budget(tokens=1000)), ctx, TreeSearchOptions(max_depth=1))
    assert all(c.complete for c in await shallow.expand([(shallow.root, 3)]))


async def test_children_extend_their_parent_exact_ids() -> None:
    script = {"": ["a\n", "b\n", "c\n", "d\n"], "a\n": ["a1\n", "a2\n"], "b\n": ["b1\n", "b2\n"]}
    prm = TablePRM({"a": 0.9, "b": 0.8})
    backend = ScriptedBackend(tree_responder(script))
    await run_search("beam", {"beam_width": 2, "expand": 2}, backend, prm)
    prompts = [call.prompt for call in backend.calls]
    assert prompts[:3] == [prefix_of(), prefix_of("a\n"), prefix_of("b\n")]
    assert prefix_of("a\n", "a1\n") in prompts


async def test_prm_sees_the_whole_path_and_scores_are_kept_on_nodes() -> None:
    script = {"": ["a\n"], "a\n": ["b\n"], "a\nb\n": ["The answer is 1.\n"]}
    prm = TablePRM({"a": 0.9, "b": 0.3, "The answer is 1.": 0.6})
    for how, expected in (("last", 0.6), ("min", 0.3), ("mean", 0.6), ("prod", 0.9 * 0.3 * 0.6)):
        prm.calls.clear()
        result, ctx, _ = await run_search("beam", {"beam_width": 1, "expand": 1, "aggregate": how},
                                          ScriptedBackend(tree_responder(script)), prm)
        assert prm.calls == [("a",), ("a", "b"), ("a", "b", "The answer is 1.")]
        leaf = ctx.recorder.node(result.candidates[0].node_id or 0)
        assert leaf.step_scores == (0.9, 0.3, 0.6)
        assert leaf.score == pytest.approx(expected)
        assert result.score == pytest.approx(expected)


async def test_empty_step_inherits_its_parent_scores() -> None:
    script = {"": ["a\n"], "a\n": ["\n"], "a\n\n": ["The answer is 2.\n"]}
    prm = TablePRM({"a": 0.7, "The answer is 2.": 0.4})
    result, ctx, _ = await run_search("beam", {"beam_width": 1, "expand": 1}, ScriptedBackend(tree_responder(script)),
                                      prm)
    blank = next(n for n in ctx.recorder.nodes() if n.text == "\n")
    assert blank.step_scores == (0.7,) and blank.score == pytest.approx(0.7)
    assert ("a", "The answer is 2.") in prm.calls
    assert result.answer == "2"


async def test_peak_kv_counts_shared_ancestors_once() -> None:
    script = {"": ["a\n", "b\n", "c\n", "d\n"], "a\n": ["a1\n", "a2\n"], "c\n": ["c1\n", "c2\n"]}
    prm = TablePRM({"a": 0.9, "b": 0.1, "c": 0.8, "d": 0.2, "a1": 0.9, "a2": 0.3, "c1": 0.7, "c2": 0.1})
    answer = "The answer is 0.\n"
    _, _, meter = await run_search("beam", {"beam_width": 2, "expand": 2},
                                   ScriptedBackend(tree_responder(script, fallback=answer)), prm)
    prompt = len(prefix_of())
    # Largest moment: prompt, a and c (2 each), a1 and c1 (3 each), and the four fresh answer steps.
    assert meter.usage().peak_kv_tokens == prompt + 2 * 2 + 2 * 3 + 4 * len(answer)


class EngineLikeBackend(ScriptedBackend):
    """Reports live KV as the local engine does; the search must take its figure over its own estimate."""

    def stats(self) -> BackendStats:
        base = super().stats()
        return BackendStats(calls=base.calls, live_kv_tokens=1000 + 10 * base.calls)


async def test_engine_live_kv_is_used_when_reported() -> None:
    backend = EngineLikeBackend(random_responder)
    _, _, meter = await run_search("rebase", {"width": 4}, backend, HashPRM())
    assert meter.usage().peak_kv_tokens == 1000 + 10 * len(backend.calls)


async def test_every_node_is_released_once_it_can_no_longer_grow() -> None:
    backend = ScriptedBackend(random_responder)
    _, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 3}, backend, HashPRM())
    nodes = ctx.recorder.nodes()

    def ids(node_id: int) -> tuple[int, ...]:
        node = nodes[node_id]
        own = tuple(ord(ch) for ch in node.text)
        return own if node.parent is None else ids(node.parent) + own

    assert sorted(backend.released) == sorted(ids(n.id) for n in nodes)
    for node in nodes:
        if node.status == "pruned":
            assert node.reason


@pytest.mark.parametrize("name", sorted(SEARCHES))
@pytest.mark.parametrize("tokens", [7, 60, 157, 400])
async def test_budget_is_never_exceeded(name: str, tokens: int) -> None:
    backend = ScriptedBackend(random_responder)
    _, _, meter = await run_search(name, SEARCHES[name], backend, HashPRM(), budget=Budget(tokens=tokens))
    usage = meter.usage()
    assert usage.generated_tokens <= tokens
    assert usage.backend_calls == len(backend.calls)
    planned = sum(call.n * call.sampling.max_tokens for call in backend.calls)
    assert planned >= usage.generated_tokens
    if tokens < 400:
        # The budget binds: the last expansions were trimmed, in samples or in step length.
        assert any(call.sampling.max_tokens < 24 for call in backend.calls) or meter.tokens_left() < 24


def steady_responder(prompt_text: str, index: int, seed: int | None) -> str:
    depth = prompt_text.count("\n") - 1
    return f"The answer is {index}.\n" if depth >= 3 else f"s{depth} t{index} {(seed or 0) % 97}\n"


@pytest.mark.parametrize("name", sorted(SEARCHES))
async def test_calls_budget_is_honoured(name: str) -> None:
    free = ScriptedBackend(steady_responder)
    await run_search(name, SEARCHES[name], free, HashPRM(), budget=Budget(calls=1000))
    assert len(free.calls) > 3
    backend = ScriptedBackend(steady_responder)
    _, _, meter = await run_search(name, SEARCHES[name], backend, HashPRM(), budget=Budget(calls=3))
    assert len(backend.calls) == 3 and meter.usage().backend_calls == 3


def _trace(ctx: Context) -> tuple[list[object], list[object]]:
    nodes = [(n.id, n.parent, n.text, n.status, n.score, n.reason) for n in ctx.recorder.nodes()]
    events = [(e.kind, dict(e.payload)) for e in ctx.recorder.events()]
    for _, payload in events:
        payload.pop("t", None)
    return nodes, events


@pytest.mark.parametrize("name", sorted(SEARCHES))
async def test_same_seed_same_trace(name: str) -> None:
    traces = []
    for seed in (5, 5, 6):
        backend = ScriptedBackend(random_responder)
        result, ctx, meter = await run_search(name, SEARCHES[name], backend, HashPRM(), seed=seed,
                                              budget=Budget(tokens=600))
        traces.append((_trace(ctx), result.answer, meter.usage().generated_tokens, backend.calls))
    assert traces[0] == traces[1]
    assert traces[0] != traces[2]


async def test_no_complete_leaf_returns_the_best_partial_without_an_answer() -> None:
    script = {"": ["a\n", "b\n"]}
    result, ctx, _ = await run_search("rebase", {"width": 2}, ScriptedBackend(tree_responder(script)),
                                      TablePRM({"a": 0.2, "b": 0.7}), budget=Budget(calls=1))
    assert result.answer is None and result.candidates == ()
    assert result.text == "b\n"
    statuses = {n.text: (n.status, n.reason) for n in ctx.recorder.nodes()}
    assert statuses["b\n"][0] == "selected"
    assert statuses["a\n"] == ("pruned", "search ended: budget spent")


async def test_a_leaf_cut_by_its_token_limit_states_no_answer_unless_it_said_one() -> None:
    """A step that runs out of tokens ends its path mid-line; its last number is not the path's answer."""
    script = {"": ["27 + 9 = 36, then 36 - 7 = 29\n", "The answer is 29. Since 27 + 9 = 36 and 36 - 7 = 29\n"]}
    result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 2, "max_step_tokens": 14},
                                      ScriptedBackend(tree_responder(script)), TablePRM(default=0.5))
    answers = {n.text: n.answer for n in ctx.recorder.nodes() if n.parent is not None}
    assert answers == {"27 + 9 = 36, t": None, "The answer is ": None}
    assert result.answer is None
    result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 2, "max_step_tokens": 18},
                                      ScriptedBackend(tree_responder(script)), TablePRM(default=0.5))
    assert result.answer == "29"  # "The answer is 29." fits before the cut
    # '2' of 29 was read as the answer; '29.' may be the start of 29.5
    for cap, cut in ((15, "The answer is 2"), (17, "The answer is 29.")):
        result, ctx, _ = await run_search("beam", {"beam_width": 2, "expand": 2, "max_step_tokens": cap},
                                          ScriptedBackend(tree_responder(script)), TablePRM(default=0.5))
        assert {n.text: n.answer for n in ctx.recorder.nodes() if n.parent is not None}[cut] is None


async def test_children_drawn_without_replacement_are_owed_past_a_wave_of_repeats() -> None:
    """Split over waves of one child, a wave whose child repeated an earlier one read as 'generated nothing' and
    ended the node's expansion: on the mini models REBASE at width 6 grew one chain."""
    script = iter(["a\n", "a\n", "b\n", "c\n", "d\n"])  # the second wave draws the first wave's step again

    class PerCallDistinct(ScriptedBackend):
        async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
            return await super().complete(prompt, n, replace(sampling, distinct=False))

    backend = PerCallDistinct(lambda prompt, index, seed: next(script))
    meter = Meter(Budget(tokens=70))
    tree = await SearchTree.open(Problem("q"), meter, make_ctx(backend, HashPRM()),
                                 TreeSearchOptions(max_step_tokens=40, distinct=True, temperature=1.0))
    created = await tree.expand([(tree.root, 4)])
    assert [child.text for child in created] == ["a\n", "b\n", "c\n"] and len(backend.calls) == 4


class NanPRM:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [float("nan")] * len(steps)


@pytest.mark.parametrize("name", ["beam", "rebase"])
async def test_a_verifier_score_that_is_not_a_finite_number_is_a_verifier_error(name: str) -> None:
    with pytest.raises(VerifierError, match="NanPRM returned the score nan"):
        await run_search(name, SEARCHES[name], ScriptedBackend(random_responder), NanPRM())
    ctx = Context(backend=ScriptedBackend(random_responder), recorder=TraceRecorder(),
                  rng=__import__("random").Random(0), verifier=StepwiseOutcome(NanPRM()))
    with pytest.raises(VerifierError, match="NanPRM returned the score nan"):
        await make_strategy("best_of_n", {"n": 2}).run(Problem("q"), Meter(Budget(tokens=1000)), ctx)


class MiscountingPRM:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.5] * (len(steps) + 1)


async def test_a_prm_that_miscounts_steps_is_a_verifier_error() -> None:
    with pytest.raises(VerifierError, match="one score per step"):
        await run_search("beam", {}, ScriptedBackend(random_responder), MiscountingPRM())


async def test_backend_failure_surfaces_as_itself_and_releases_held_nodes() -> None:
    backend = ScriptedBackend(tree_responder({"": ["a\n", "b\n", "c\n"]}), fail_after=1)
    with pytest.raises(BackendError):
        await run_search("rebase", {"width": 3}, backend, TablePRM({"a": 0.5, "b": 0.5, "c": 0.5}))
    for step in ("a\n", "b\n", "c\n"):
        assert prefix_of(step) in backend.released


async def test_a_call_that_fails_within_a_wave_leaves_the_calls_that_returned_charged_recorded_and_released(
) -> None:
    """The wave's calls were charged only once all had returned: the failed trace reported fewer tokens and calls
    than the backend generated, and the children of a call that returned were neither in the tree nor released."""
    script = {"": ["a\n", "b\n"], "a\n": ["a1\n"], "b\n": ["b1\n"]}
    backend = ScriptedBackend(tree_responder(script), fail_after=2)  # the root's call, then one of the wave's two
    ctx, meter = make_ctx(backend, TablePRM({"a\n": 0.6, "b\n": 0.4})), Meter(Budget(tokens=1000))
    with pytest.raises(BackendError, match="fail_after"):
        await make_strategy("beam", {"beam_width": 2, "expand": 1}).run(Problem("q"), meter, ctx)
    assert len(backend.calls) == 2
    assert meter.usage().generated_tokens == backend.stats().generated_tokens == len("a\nb\na1\n")
    assert meter.usage().backend_calls == 2
    nodes = {n.text: n for n in ctx.recorder.nodes()}
    assert nodes["a1\n"].parent == nodes["a\n"].id and "b1\n" not in nodes
    assert prefix_of("a\n", "a1\n") in backend.released


async def test_step_delimiter_comes_from_the_context() -> None:
    script = {"": ["first part\n\n"], "first part\n\n": ["The answer is 3.\n\n"]}
    backend = ScriptedBackend(tree_responder(script))
    result, _, _ = await run_search("beam", {"beam_width": 1, "expand": 1}, backend, TablePRM(), delimiter="\n\n")
    assert {call.sampling.stop for call in backend.calls} == {("\n\n",)}
    assert result.answer == "3"


@pytest.mark.parametrize("name", ["beam", "rebase"])
async def test_when_no_leaf_states_an_answer_the_vote_falls_back_to_the_best_scored_leaf(name: str) -> None:
    """No answer to vote on: the pick is the best-scored complete leaf, not whichever finished first."""
    script = {"": ["no number here", "still no number"]}
    options = {"beam": {"beam_width": 2, "expand": 1}, "rebase": {"width": 2}}[name]
    result, _, _ = await run_search(name, options, ScriptedBackend(tree_responder(script)),
                                    TablePRM({"no number here": 0.1, "still no number": 0.9}))
    assert len(result.candidates) == 2 and all(c.answer is None for c in result.candidates)
    assert result.answer is None
    assert result.text == "still no number" and result.score == pytest.approx(0.9)


async def test_a_step_is_not_cut_short_for_tokens_only_reserved_ahead_of_it() -> None:
    """Within a wave, earlier expansions reserve their worst case; the next wave replans from what they really
    spent. A later expansion must wait for that rather than have its step cut to the reserved remainder."""
    step = "abcdef\n"  # 7 tokens, under the 10-token step limit
    backend = ScriptedBackend(lambda prompt, index, seed: step)
    ctx = Context(backend=backend, recorder=TraceRecorder(), rng=__import__("random").Random(0), prm=TablePRM(),
                  prompt_template="Q: {question}\n")
    meter = Meter(Budget(tokens=66))
    tree = await SearchTree.open(Problem("q"), meter, ctx, TreeSearchOptions(max_step_tokens=10))
    first = await tree.expand([(tree.root, 3)])  # 21 tokens: 45 left, worst case 3 x 2 x 10 = 60
    created = await tree.expand([(node, 2) for node in first])
    assert meter.usage().generated_tokens <= 66
    assert len(created) == 6
    assert not any(child.cut for child in created), "the budget held a whole step for every child"
    assert all(call.sampling.max_tokens == 10 for call in backend.calls)


class MergedStopBackend(ScriptedBackend):
    """A subword tokenizer can finish the stop string inside a token that goes on (``"\\n\\nThe"``): the completion
    then stops with text past the delimiter, as the local engine returns it (text is derived from whole tokens)."""

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        out = await super().complete(prompt, n, sampling)
        merged = []
        for c in out:
            if c.finish_reason == "stop" and any(c.text.endswith(s) for s in sampling.stop):
                c = Completion(text=c.text + "Th", token_ids=(*c.token_ids, ord("T"), ord("h")),
                               finish_reason="stop", prompt_tokens=c.prompt_tokens)
            merged.append(c)
        return merged


async def test_a_step_whose_stop_ends_inside_a_token_is_still_a_step_not_the_end() -> None:
    script = {"": ["2 + 1 = 3\n"], "2 + 1 = 3\nTh": ["e answer is 3."]}
    backend = MergedStopBackend(tree_responder(script))
    result, _, _ = await run_search("beam", {"beam_width": 1, "expand": 1}, backend, TablePRM())
    assert len(backend.calls) == 2, "the first step ended at its delimiter, so the search went on"
    assert result.answer == "3"


async def test_ranking_by_score_prefers_a_leaf_that_answers_to_one_cut_off_before_its_answer() -> None:
    long = "Let me think about this very carefully and at length\n"
    script = {"": [long, "The answer is 4.\n"]}
    result, _, _ = await run_search("beam", {"beam_width": 2, "expand": 1, "max_step_tokens": 20, "select": "score"},
                                    ScriptedBackend(tree_responder(script)),
                                    TablePRM({long[:20].strip(): 0.99, "The answer is 4.": 0.3}))
    assert result.answer == "4" and result.score == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["beam", "rebase", "ets"])
async def test_a_path_score_that_overflows_is_a_verifier_error(name: str) -> None:
    with pytest.raises(VerifierError, match=r"scores inf under aggregate='prod'"):
        await run_search(name, {**SEARCHES[name], "aggregate": "prod"}, ScriptedBackend(random_responder),
                         TablePRM(default=1e200))


@pytest.mark.parametrize("select", ["weighted_vote", "score"])
async def test_negative_path_scores_rank_and_vote_without_failing(select: str) -> None:
    result, _, _ = await run_search("beam", {**SEARCHES["beam"], "select": select}, ScriptedBackend(random_responder),
                                    TablePRM(default=-0.5))
    assert result.answer is not None


@pytest.mark.parametrize("name", ["beam", "rebase"])
async def test_a_path_stopped_by_max_depth_states_no_answer_it_did_not_write(name: str) -> None:
    script = {"": ["1 + 2 = 3\n"], "1 + 2 = 3\n": ["3 * 4 = 12\n"]}
    options = {"beam": {"beam_width": 1, "expand": 1}, "rebase": {"width": 1}}[name]
    result, _, _ = await run_search(name, {**options, "max_depth": 2}, ScriptedBackend(tree_responder(script)),
                                      TablePRM(default=0.5))
    assert result.answer is None and result.text == "1 + 2 = 3\n3 * 4 = 12\n"
    result, _, _ = await run_search(name, {**options, "max_depth": 3}, ScriptedBackend(tree_responder(
        {**script, "1 + 2 = 3\n3 * 4 = 12\n": ["The answer is 12.\n"]})), TablePRM(default=0.5))
    assert result.answer == "12"


class WallClock:
    """A clock that only the scripted backend moves: each call to a path in ``slow`` takes ``seconds``."""

    def __init__(self, slow: Sequence[str], seconds: float) -> None:
        self.now = 0.0
        self.slow = set(slow)
        self.seconds = seconds

    def __call__(self) -> float:
        return self.now

    def responder(self, script: dict[str, list[str]]) -> object:
        respond = tree_responder(script)

        def timed(prompt_text: str, index: int, seed: int | None) -> str:
            if index == 0 and prompt_text[len("Q: q\n"):] in self.slow:
                self.now += self.seconds
            return respond(prompt_text, index, seed)

        return timed


async def test_no_step_is_scored_after_the_wall_time_is_spent() -> None:
    """The last expansion's steps were scored after the wall time, and the path found then outvoted the one
    scored in time; unscored paths take no part in a choice by score, as unscored samples do not."""
    script = {"": ["The answer is 3.\n", "a\n"], "a\n": ["The answer is 7.\n"]}
    prm = TablePRM({"The answer is 3.": 0.2, "a": 0.9, "The answer is 7.": 0.95})
    clock = WallClock(["a\n"], seconds=1.0)
    ctx = make_ctx(ScriptedBackend(clock.responder(script)), prm)  # type: ignore[arg-type]
    meter = Meter(Budget(wall_s=0.5), clock=clock)
    result = await make_strategy("beam", {"beam_width": 2, "expand": 1}).run(Problem("q"), meter, ctx)
    assert prm.calls == [("The answer is 3.",), ("a",)]
    assert meter.usage().verifier_calls == 2
    [unscored] = [e.payload for e in ctx.recorder.events() if e.kind == "unscored"]
    late = next(n for n in ctx.recorder.nodes() if n.text == "The answer is 7.\n")
    assert unscored == {"reason": "wall_time", "scored": 0, "unscored": 1, "node_ids": [late.id]}
    assert late.score is None and late.step_scores == ()
    assert result.answer == "3"
    assert sorted((c.answer, c.score) for c in result.candidates) == [("3", 0.2), ("7", None)]


async def test_unscored_paths_still_answer_where_no_scored_one_does() -> None:
    script = {"": ["The answer is 7.\n", "The answer is 7.\n"]}
    prm = TablePRM()
    clock = WallClock([""], seconds=1.0)
    ctx = make_ctx(ScriptedBackend(clock.responder(script)), prm)  # type: ignore[arg-type]
    result = await make_strategy("beam", {"beam_width": 2, "expand": 1}).run(
        Problem("q"), Meter(Budget(wall_s=0.5), clock=clock), ctx)
    assert prm.calls == [] and result.answer == "7" and result.score is None


@pytest.mark.parametrize("name", ["beam", "rebase"])
async def test_a_blank_first_step_is_left_unscored_and_never_outranks_a_judged_one(name: str) -> None:
    """It was written to the trace as scored 0.0, which a verifier scoring logits ranks above every real step:
    beam kept the blank path and REBASE gave it the whole width, and the search answered by the path scored
    lowest."""
    script = {"": ["\n", "x = 2 + 2\n", "y = 5\n"], "\n": ["The answer is 9.\n"],
              "x = 2 + 2\n": ["The answer is 4.\n"], "y = 5\n": ["The answer is 5.\n"]}
    prm = TablePRM({"x = 2 + 2": -0.5, "y = 5": -1.0, "The answer is 4.": -0.1, "The answer is 5.": -0.2,
                    "The answer is 9.": -3.0})
    options = {"beam_width": 1, "expand": 3} if name == "beam" else {"width": 3}
    result, ctx, _ = await run_search(name, options, ScriptedBackend(tree_responder(script)), prm)
    blank = next(n for n in ctx.recorder.nodes() if n.text == "\n")
    assert blank.score is None and blank.step_scores == ()
    assert ("",) not in prm.calls and () not in prm.calls
    [event] = [e.payload for e in ctx.recorder.events() if e.kind == "unscored"]
    assert event == {"reason": "blank_steps", "scored": 2, "unscored": 1, "node_ids": [blank.id],
                     "ranked_as": -1.0}
    first_round = round_events(ctx)[0]
    assert str(blank.id) not in first_round.get("allocation", {str(n): 1 for n in first_round["kept"]})
    assert result.answer == "4"


def test_rebase_gives_a_tied_remainder_to_a_judged_step_before_an_unscored_one() -> None:
    """A blank path ranks with the lowest judged score beside it; where their remainders tied, the older node won
    the child, and blank paths are usually the older."""
    from ttc.strategies.rebase import apportion
    from ttc.strategies.tree import StepNode

    def node(node_id: int, score: float, scored: bool) -> StepNode:
        return StepNode(id=node_id, parent=None, prefix=(), token_ids=(), text="", depth=1, score=score,
                        scored=scored)

    blank, judged = node(1, -1.0, scored=False), node(3, -1.0, scored=True)
    assert apportion([blank, judged], [0.5, 0.5], 1) == {1: 0, 3: 1}
    assert apportion([node(1, -1.0, True), judged], [0.5, 0.5], 1) == {1: 1, 3: 0}  # judged alike: the older


async def _cancelled_search(name: str, at: int, again: bool) -> CancelledAtRelease:
    backend = CancelledAtRelease(random_responder, at, again)
    task: asyncio.Task[object] = asyncio.ensure_future(run_search(name, SEARCHES[name], backend, HashPRM()))
    backend.victim = task
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return backend


@pytest.mark.parametrize("again", [False, True])
@pytest.mark.parametrize("name", sorted(SEARCHES))
async def test_a_search_cancelled_at_any_release_still_releases_every_sequence_it_drew(name: str,
                                                                                      again: bool) -> None:
    """A second cancellation during a cancelled search's cleanup (anyio's shield does not stop asyncio's own
    task.cancel()) cut its close off after one release, and one during the close of a finished search did too:
    the KV of every node not yet released stayed held in the caller's backend."""
    releases = len((await _cancelled_search(name, 0, again=False)).released)
    assert releases > 5
    for at in range(1, releases + 1):
        backend = await _cancelled_search(name, at, again)
        assert backend.drawn - set(backend.released) == set(), f"cancelled at release {at}"
