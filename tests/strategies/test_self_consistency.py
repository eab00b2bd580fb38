"""self_consistency on the scripted backend: early stopping, budget exactness, round structure."""

from __future__ import annotations

import random

import pytest

from ttc import solve, solve_batch
from ttc.budget import Meter
from ttc.errors import ContextLengthError, VerifierError
from ttc.strategies.base import Context, make_strategy
from ttc.testing import ScriptedBackend
from ttc.trace import TraceRecorder
from ttc.types import Budget, Problem

pytestmark = pytest.mark.anyio


def ctx_for(backend: ScriptedBackend, seed: int = 0) -> Context:
    return Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(seed),
                   prompt_template="Q: {question}\nA:")


def answer(a: str) -> str:
    return f"step\nThe answer is {a}."


async def test_unanimous_first_round_stops_early() -> None:
    backend = ScriptedBackend([answer("4")])
    ctx = ctx_for(backend)
    meter = Meter(Budget(tokens=10_000))
    result = await make_strategy("self_consistency", {"max_samples": 16, "round_size": 4}).run(
        Problem("2+2"), meter, ctx)
    assert result.answer == "4"
    assert len(backend.calls) == 1
    stops = [e for e in ctx.recorder.events() if e.kind == "stop"]
    assert stops and stops[0].payload["reason"] == "decided"
    assert meter.usage().generated_tokens == 4 * len(answer("4"))


async def test_split_vote_uses_all_samples() -> None:
    backend = ScriptedBackend([answer("1"), answer("2")])
    ctx = ctx_for(backend)
    result = await make_strategy("self_consistency", {"max_samples": 12, "round_size": 4}).run(
        Problem("q"), Meter(Budget(tokens=10_000)), ctx)
    assert len(backend.calls) == 3
    assert len(result.candidates) == 12
    # The trace said nothing of why it stopped (a pooled batch's says max_samples).
    assert [e.payload for e in ctx.recorder.events() if e.kind == "stop"] == [{"reason": "max_samples",
                                                                               "samples": 12}]


async def test_lead_that_cannot_be_overturned_stops() -> None:
    # 3 of the first 4 say "5": with stop_share 0.9 the share rule does not fire, but with max_samples 5
    # one more sample cannot overturn a lead of 2.
    backend = ScriptedBackend([answer("5"), answer("5"), answer("5"), answer("6")])
    result = await make_strategy("self_consistency", {"max_samples": 5, "round_size": 4, "stop_share": 0.9}).run(
        Problem("q"), Meter(Budget(tokens=10_000)), ctx_for(backend))
    assert len(backend.calls) == 1
    assert result.answer == "5"


async def test_budget_is_never_exceeded_and_last_round_trimmed() -> None:
    texts = [answer("1") + " " * 20, answer("2") + " " * 20]
    length = len(texts[0])
    backend = ScriptedBackend(texts)
    meter = Meter(Budget(tokens=2 * length + length // 2))
    await make_strategy("self_consistency", {"max_samples": 16, "round_size": 2, "max_tokens": length}).run(
        Problem("q"), meter, ctx_for(backend))
    assert [c.n for c in backend.calls] == [2, 2]
    assert backend.calls[-1].sampling.max_tokens == (length // 2) // 2
    assert meter.usage().generated_tokens == 2 * length + 2 * ((length // 2) // 2)
    assert meter.usage().generated_tokens <= meter.budget.tokens


async def test_calls_budget_is_honoured() -> None:
    backend = ScriptedBackend([answer("1"), answer("2")])
    meter = Meter(Budget(calls=2))
    await make_strategy("self_consistency", {"max_samples": 16, "round_size": 2}).run(
        Problem("q"), meter, ctx_for(backend))
    assert len(backend.calls) == 2
    assert meter.usage().backend_calls == 2


async def test_same_seed_same_trace() -> None:
    def responder(prompt: str, index: int, seed: int | None) -> str:
        return answer(str((seed or 0) % 3))

    runs = []
    for _ in range(2):
        ctx = ctx_for(ScriptedBackend(responder), seed=11)
        result = await make_strategy("self_consistency", {"max_samples": 8, "round_size": 2}).run(
            Problem("q"), Meter(Budget(tokens=10_000)), ctx)
        runs.append((result.answer, [(n.text, n.status) for n in ctx.recorder.nodes()]))
    assert runs[0] == runs[1]


SLIP = "17 + 8 = 24\nThe answer is 24."
RIGHT = "17 + 8 = 25\nThe answer is 25."


async def test_check_arithmetic_leaves_slips_out_of_the_vote() -> None:
    texts = [SLIP, SLIP, SLIP, RIGHT, RIGHT]
    for check, winner in ((False, "24"), (True, "25")):
        ctx = ctx_for(ScriptedBackend(texts))
        result = await make_strategy("self_consistency", {
            "max_samples": 5, "round_size": 5, "check_arithmetic": check}).run(
            Problem("17 + 8?"), Meter(Budget(tokens=10_000)), ctx)
        assert result.answer == winner
        assert len(result.candidates) == 5  # a slip is kept in the result and the trace, only not counted
        select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
        assert select.payload["left_out"] == (3 if check else 0)
        assert select.payload["failed"] == ({"arithmetic": 3} if check else {})
        assert select.payload["tally"] == ({"25": 2.0} if check else {"24": 3.0, "25": 2.0})


async def test_check_arithmetic_keeps_every_sample_when_all_slip() -> None:
    ctx = ctx_for(ScriptedBackend([SLIP, "17 + 8 = 26\nThe answer is 26.", SLIP]))
    result = await make_strategy("self_consistency", {
        "max_samples": 3, "round_size": 3, "check_arithmetic": True}).run(
        Problem("17 + 8?"), Meter(Budget(tokens=10_000)), ctx)
    assert result.answer == "24"
    select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
    assert select.payload["left_out"] == 0
    assert select.payload["failed"] == {"arithmetic": 3}


QUESTION = "Tom has 3 bags of 4 cups. Sue gives Tom 5. How many cups now?"
READ = "3 * 4 = 12\n12 + 5 = 17\nThe answer is 17."
MISREAD = "3 * 6 = 18\n18 + 5 = 23\nThe answer is 23."  # no 6 in the question: a misread operand
SLIPPED_READ = "3 * 4 = 12\n12 + 5 = 23\nThe answer is 23."


async def test_check_operands_leaves_misread_operands_out_of_the_vote() -> None:
    texts = [MISREAD, MISREAD, MISREAD, READ, READ]
    for check, winner in ((False, "23"), (True, "17")):
        ctx = ctx_for(ScriptedBackend(texts))
        result = await make_strategy("self_consistency", {
            "max_samples": 5, "round_size": 5, "check_operands": check}).run(
            Problem(QUESTION), Meter(Budget(tokens=10_000)), ctx)
        assert result.answer == winner
        assert len(result.candidates) == 5
        select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
        assert select.payload["failed"] == ({"operands": 3} if check else {})


async def test_checks_combine_and_count_each_failure() -> None:
    ctx = ctx_for(ScriptedBackend([MISREAD, SLIPPED_READ, SLIPPED_READ, READ]))
    result = await make_strategy("self_consistency", {
        "max_samples": 4, "round_size": 4, "check_operands": True, "check_arithmetic": True}).run(
        Problem(QUESTION), Meter(Budget(tokens=10_000)), ctx)
    assert result.answer == "17"  # 23 has three samples, each failing one check
    select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
    assert select.payload["left_out"] == 3
    assert select.payload["failed"] == {"arithmetic": 2, "operands": 1}
    assert select.payload["tally"] == {"17": 1.0}


async def test_samples_the_checks_leave_out_do_not_decide_the_vote() -> None:
    """One passing sample among slips is not min_samples agreeing: sampling goes on."""
    backend = ScriptedBackend([RIGHT, SLIP, SLIP, SLIP])
    ctx = ctx_for(backend)
    result = await make_strategy("self_consistency", {
        "max_samples": 8, "round_size": 4, "min_samples": 4, "check_arithmetic": True}).run(
        Problem("17 + 8?"), Meter(Budget(tokens=10_000)), ctx)
    assert result.answer == "25" and len(backend.calls) == 2
    assert not [e for e in ctx.recorder.events() if e.kind == "stop" and e.payload["samples"] == 4]


class TableScorer:
    """An outcome verifier whose scores are not probabilities (a reward model's raw score)."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    async def score(self, question: str, solution: str) -> float:
        return self.table[solution]


async def test_a_weighted_lead_is_not_taken_as_final_when_a_score_can_exceed_one() -> None:
    a, b_low, b_high = answer("3"), "other work\nThe answer is 5.", "more work\nThe answer is 5."
    scorer = TableScorer({a: 1.0, b_low: 0.5, b_high: 5.0})
    backend = ScriptedBackend([a, a, a, b_low, b_high])
    ctx = Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(0), verifier=scorer,
                  prompt_template="Q: {question}\nA:")
    result = await make_strategy("self_consistency", {
        "max_samples": 5, "round_size": 4, "min_samples": 4, "stop_share": 0.9}).run(
        Problem("q"), Meter(Budget(tokens=10_000)), ctx)
    assert len(result.candidates) == 5  # a lead of 2.5 with one sample to come is not safe: it may weigh 5
    assert result.answer == "5"


async def test_samples_without_an_answer_do_not_reach_min_samples() -> None:
    backend = ScriptedBackend(["I am not sure.", "Hmm, unclear.", "No idea.", answer("5"), *[answer("6")] * 4])
    ctx = ctx_for(backend)
    result = await make_strategy("self_consistency", {
        "max_samples": 16, "round_size": 4, "min_samples": 4, "stop_share": 0.75}).run(
        Problem("q"), Meter(Budget(tokens=10_000)), ctx)
    assert len(backend.calls) >= 2  # one answer among four samples decides nothing
    assert result.answer == "6"


async def test_a_tied_vote_answers_the_leader_its_trace_recorded() -> None:
    for seed in range(8):
        ctx = ctx_for(ScriptedBackend([answer("7"), answer("6")]), seed=seed)
        result = await make_strategy("self_consistency", {
            "max_samples": 4, "round_size": 2, "min_samples": 2, "stop_share": 0.5}).run(
            Problem("q"), Meter(Budget(tokens=10_000)), ctx)
        rounds = [e for e in ctx.recorder.events() if e.kind == "round"]
        select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
        assert result.answer == rounds[-1].payload["leader"] == select.payload["answer"], seed


class LogitScorer:
    """A reward model's logits: below 0 for every answering sample, above 0 for the one that states no answer."""

    async def score(self, question: str, solution: str) -> float:
        return 2.0 if "not sure" in solution else -1.0


async def test_a_positive_score_on_a_sample_without_an_answer_does_not_keep_the_vote_from_deciding() -> None:
    """Its weight kept the all-zero check from applying: every answer weighed 0, the leader's share stayed 0 and
    the vote never stopped early (its leader was the seed's tie-break)."""
    for seed in range(4):
        backend = ScriptedBackend([answer("7"), answer("7"), answer("7"), answer("9"), "I am not sure"])
        ctx = Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(seed), verifier=LogitScorer(),
                      prompt_template="Q: {question}\nA:")
        result = await make_strategy("self_consistency", {
            "max_samples": 10, "round_size": 5, "min_samples": 4, "stop_share": 0.7}).run(
            Problem("q"), Meter(Budget(tokens=10_000)), ctx)
        assert result.answer == "7" and len(backend.calls) == 1, seed
        [stop] = [e.payload for e in ctx.recorder.events() if e.kind == "stop"]
        assert stop["reason"] == "decided" and stop["share"] == 0.75


class FitsHundredCharacters:
    """An outcome verifier whose context holds 100 characters of solution, as a PRM's holds its positions."""

    async def score(self, question: str, solution: str) -> float:
        if len(solution) > 100:
            raise VerifierError("cannot score this solution") from ContextLengthError(
                "prompt does not fit in the model's 512-position context")
        return 0.9


LONG = "x" * 300 + " The answer is 5."


@pytest.mark.parametrize("pooled", [False, True])
def test_a_round_whose_samples_are_all_too_long_for_the_verifier_leaves_them_unscored(pooled: bool) -> None:
    """The refusal was judged a round at a time: one round of one long sample failed the question (and a pooled
    batch every question) although the other rounds' samples were scored."""
    texts = ["The answer is 4.", "The answer is 4.", LONG, "The answer is 4."]
    options: dict[str, object] = {"round_size": 1, "max_samples": 4, "min_samples": 4, "select": "weighted_vote"}
    if pooled:
        [result, _] = solve_batch(["2+2?", "3+1?"], 100_000, strategy="self_consistency", store=False, seed=1,
                                  backend=ScriptedBackend(texts * 2), verifier=FitsHundredCharacters(),
                                  budget_scope="batch", **options)
    else:
        result = solve("2+2?", 100_000, strategy="self_consistency", backend=ScriptedBackend(texts),
                       verifier=FitsHundredCharacters(), store=False, seed=1, **options)
    assert result.answer == "4" and None in [c.score for c in result.candidates]


def test_a_question_not_one_sample_of_which_fits_the_verifier_fails_with_its_error() -> None:
    with pytest.raises(VerifierError, match="cannot score this solution"):
        solve("2+2?", 100_000, strategy="self_consistency", backend=ScriptedBackend([LONG] * 4),
              verifier=FitsHundredCharacters(), store=False, seed=1, round_size=1, max_samples=4, min_samples=4,
              select="weighted_vote")
