"""best_of_n on the scripted backend: exact budget accounting, selection rules, trace contents."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import numpy as np
import pytest
from cancelling import CancelledAtRelease

from ttc.budget import Meter
from ttc.errors import ConfigError, VerifierError
from ttc.strategies.base import Context, make_strategy
from ttc.testing import ScriptedBackend
from ttc.trace import TraceRecorder
from ttc.types import Budget, Problem
from ttc.verifiers.base import StepScores, StepwiseOutcome

pytestmark = pytest.mark.anyio


class AnswerScorer:
    """Scores a solution by a fixed table of answers: a verifier double for selection logic only."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls = 0

    async def score(self, question: str, solution: str) -> float:
        self.calls += 1
        for answer, value in self.table.items():
            if f"answer is {answer}." in solution:
                return value
        return 0.0


def ctx_for(backend: ScriptedBackend, seed: int = 0, verifier: AnswerScorer | None = None) -> Context:
    return Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(seed), verifier=verifier,
                   prompt_template="Q: {question}\nA:")


def texts(*answers: str) -> Sequence[str]:
    return [f"work\nThe answer is {a}." for a in answers]


async def test_majority_without_verifier() -> None:
    backend = ScriptedBackend(texts("3", "5", "3", "7"))
    ctx = ctx_for(backend)
    strategy = make_strategy("best_of_n", {"n": 4, "max_tokens": 64})
    result = await strategy.run(Problem("1+2?"), Meter(Budget(tokens=100_000)), ctx)
    assert result.answer == "3"
    assert len(result.candidates) == 4
    assert len(backend.calls) == 1 and backend.calls[0].n == 4
    selected = [n for n in ctx.recorder.nodes() if n.status == "selected"]
    assert len(selected) == 1 and selected[0].answer == "3"


async def test_score_selection_prefers_verifier() -> None:
    backend = ScriptedBackend(texts("3", "5", "3", "7"))
    verifier = AnswerScorer({"7": 0.9, "3": 0.2, "5": 0.1})
    ctx = ctx_for(backend, verifier=verifier)
    result = await make_strategy("best_of_n", {"n": 4, "select": "score"}).run(
        Problem("q"), Meter(Budget(tokens=100_000)), ctx)
    assert result.answer == "7"
    assert result.score == pytest.approx(0.9)
    assert verifier.calls == 4


async def test_weighted_vote_is_default_with_verifier() -> None:
    # "3" has two votes of weight 0.2 (0.4 total); "7" one vote of weight 0.9: weighted vote picks 7.
    backend = ScriptedBackend(texts("3", "7", "3", "5"))
    ctx = ctx_for(backend, verifier=AnswerScorer({"7": 0.9, "3": 0.2, "5": 0.1}))
    result = await make_strategy("best_of_n", {"n": 4}).run(Problem("q"), Meter(Budget(tokens=100_000)), ctx)
    assert result.answer == "7"
    select = next(e for e in ctx.recorder.events() if e.kind == "select")
    assert select.payload["how"] == "weighted_vote"


async def test_budget_trims_max_tokens_to_an_equal_share() -> None:
    long = "x" * 100 + "\nThe answer is 1."
    backend = ScriptedBackend([long])
    meter = Meter(Budget(tokens=250))
    await make_strategy("best_of_n", {"n": 8, "max_tokens": 100}).run(Problem("q"), meter, ctx_for(backend))
    assert backend.calls[0].n == 8 and backend.calls[0].sampling.max_tokens == 31
    assert meter.usage().generated_tokens == 8 * 31
    tiny = Meter(Budget(tokens=5))
    backend2 = ScriptedBackend([long])
    await make_strategy("best_of_n", {"n": 8, "max_tokens": 100}).run(Problem("q"), tiny, ctx_for(backend2))
    assert backend2.calls[0].n == 5 and backend2.calls[0].sampling.max_tokens == 1
    assert tiny.usage().generated_tokens == 5


async def test_a_sample_cut_by_the_budget_has_no_answer_unless_it_states_one() -> None:
    """Cut mid-line, a sample's last number is an intermediate value: it must not vote as an answer."""
    backend = ScriptedBackend(["27 + 9 = 36\n36 - 7 = 29\nThe answer is 29."])
    result = await make_strategy("best_of_n", {"n": 4, "max_tokens": 12}).run(Problem("q"), Meter(Budget(tokens=48)),
                                                                              ctx_for(backend))
    assert {c.text for c in result.candidates} == {"27 + 9 = 36\n"}
    assert result.answer is None and all(c.answer is None for c in result.candidates)
    stated = ScriptedBackend(["The answer is 29. Because 27 + 9 = 36"])
    result = await make_strategy("best_of_n", {"n": 2, "max_tokens": 30}).run(Problem("q"), Meter(Budget(tokens=60)),
                                                                              ctx_for(stated))
    assert result.answer == "29"  # stated before the cut: it counts


async def test_usage_counts_prompt_and_calls() -> None:
    backend = ScriptedBackend(texts("1"))
    meter = Meter(Budget(tokens=100_000))
    await make_strategy("best_of_n", {"n": 3}).run(Problem("abc"), meter, ctx_for(backend))
    usage = meter.usage()
    assert usage.backend_calls == 1
    assert usage.prompt_tokens == len("Q: abc\nA:")
    assert usage.generated_tokens == 3 * len(texts("1")[0])


async def test_tie_break_is_seeded() -> None:
    answers = texts("1", "2", "3", "4")
    picks = set()
    for seed in range(12):
        result = await make_strategy("best_of_n", {"n": 4}).run(
            Problem("q"), Meter(Budget(tokens=100_000)), ctx_for(ScriptedBackend(answers), seed=seed))
        again = await make_strategy("best_of_n", {"n": 4}).run(
            Problem("q"), Meter(Budget(tokens=100_000)), ctx_for(ScriptedBackend(answers), seed=seed))
        assert result.answer == again.answer
        picks.add(result.answer)
    assert len(picks) > 1, "different seeds should break a four-way tie differently"


async def test_no_answer_anywhere_returns_first_text() -> None:
    backend = ScriptedBackend(["no digits here"])
    result = await make_strategy("best_of_n", {"n": 2}).run(Problem("q"), Meter(Budget(tokens=10_000)),
                                                             ctx_for(backend))
    assert result.answer is None
    assert result.text == "no digits here"


async def test_check_arithmetic_applies_to_the_score_pick() -> None:
    slip, right = "17 + 8 = 24\nThe answer is 24.", "17 + 8 = 25\nThe answer is 25."
    scorer = AnswerScorer({"24": 0.9, "25": 0.4})
    for check, winner in ((False, "24"), (True, "25")):
        result = await make_strategy("best_of_n", {"n": 4, "select": "score", "check_arithmetic": check}).run(
            Problem("17 + 8?"), Meter(Budget(tokens=10_000)),
            ctx_for(ScriptedBackend([slip, right]), verifier=scorer))
        assert result.answer == winner


async def test_check_operands_applies_to_the_score_pick() -> None:
    question = "Tom has 3 bags of 4 cups. How many cups?"
    misread, read = "3 * 6 = 18\nThe answer is 18.", "3 * 4 = 12\nThe answer is 12."
    scorer = AnswerScorer({"18": 0.9, "12": 0.4})
    for check, winner in ((False, "18"), (True, "12")):
        ctx = ctx_for(ScriptedBackend([misread, read]), verifier=scorer)
        result = await make_strategy("best_of_n", {"n": 4, "select": "score", "check_operands": check}).run(
            Problem(question), Meter(Budget(tokens=10_000)), ctx)
        assert result.answer == winner
        select = [e for e in ctx.recorder.events() if e.kind == "select"][-1]
        assert select.payload["left_out"] == (2 if check else 0)


@pytest.mark.parametrize("select", ["score", "weighted_vote"])
async def test_ranking_by_score_without_a_verifier_is_a_config_error(select: str) -> None:
    """Without scores the pick would fall to the shortest sample (or a plain vote) without a word."""
    with pytest.raises(ConfigError, match="none is configured"):
        await make_strategy("best_of_n", {"n": 2, "select": select}).run(
            Problem("q"), Meter(Budget(tokens=1000)), ctx_for(ScriptedBackend(texts("1", "2"))))


class CachingPRM:
    """Scores steps once per distinct solution and reports later scorings as cached, as the PRM adapters do."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, ...]] = set()

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return list((await self.score_steps_detailed(question, steps)).scores)

    async def score_steps_detailed(self, question: str, steps: Sequence[str]) -> StepScores:
        cached = len(steps) if tuple(steps) in self.seen else 0
        self.seen.add(tuple(steps))
        return StepScores(tuple(0.5 for _ in steps), 0 if cached else 10 * len(steps), cached)


async def test_verifier_calls_count_scorings_not_cache_hits() -> None:
    backend = ScriptedBackend(texts("1", "2", "1", "1", "2", "1", "1", "1"))
    ctx = Context(backend=backend, recorder=TraceRecorder(), rng=random.Random(0),
                  verifier=StepwiseOutcome(CachingPRM()), prompt_template="Q: {question}\nA:")
    meter = Meter(Budget(tokens=10_000))
    await make_strategy("best_of_n", {"n": 8}).run(Problem("q"), meter, ctx)
    assert meter.usage().verifier_calls == 2  # two distinct solutions; six scorings came from the cache
    assert meter.usage().verifier_tokens == 2 * 10 * 2


async def test_a_sample_without_an_answer_does_not_take_the_checked_vote_alone() -> None:
    """It passes the calculator check with nothing to check; the answered samples that slipped still vote."""
    slipped = "3 + 4 = 8\nThe answer is 8."
    backend = ScriptedBackend([slipped, slipped, "Let me think about the pens"])
    ctx = ctx_for(backend)
    result = await make_strategy("best_of_n", {"n": 3, "check_arithmetic": True}).run(
        Problem("Ann has 3 pens and 4 more. How many?"), Meter(Budget(tokens=10_000)), ctx)
    assert result.answer == "8"
    select = next(e for e in ctx.recorder.events() if e.kind == "select")
    assert select.payload["left_out"] == 0 and select.payload["failed"] == {"arithmetic": 2}


async def test_a_weighted_vote_where_no_score_is_above_zero_is_a_plain_count() -> None:
    """Scores at or below 0 weigh nothing; where none weighs anything, the tie of every answer went to the seed's
    tie-break, whatever the counts."""
    for seed in range(6):
        for table in ({}, {"5": -1.0, "6": -2.0}):  # all zero; all negative (a reward model's logits)
            ctx = ctx_for(ScriptedBackend(texts("5", "5", "5", "6")), seed=seed, verifier=AnswerScorer(table))
            result = await make_strategy("best_of_n", {"n": 4}).run(Problem("q"), Meter(Budget(tokens=100_000)),
                                                                    ctx)
            assert result.answer == "5"


class NumpyScorer:
    """A verifier written with numpy, as many are: its scores are numpy scalars, not Python floats."""

    async def score(self, question: str, solution: str) -> float:
        return np.float32(0.9 if "answer is 7." in solution else 0.2)  # type: ignore[return-value]


async def test_a_numpy_score_is_a_number_and_is_stored_as_a_float() -> None:
    ctx = ctx_for(ScriptedBackend(texts("3", "7", "3")), verifier=NumpyScorer())  # type: ignore[arg-type]
    result = await make_strategy("best_of_n", {"n": 3, "select": "score"}).run(
        Problem("q"), Meter(Budget(tokens=100_000)), ctx)
    assert result.answer == "7" and type(result.score) is float


def test_a_stepwise_outcome_refuses_an_unknown_aggregation_when_made() -> None:
    with pytest.raises(ConfigError, match="unknown aggregation 'product'"):
        StepwiseOutcome(TablePRMForOutcome(), how="product")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="step delimiter must be a non-empty string"):
        StepwiseOutcome(TablePRMForOutcome(), delimiter="")


class TablePRMForOutcome:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.5] * len(steps)


class LogitScorer:
    """A reward model's logits: below 0 for every answering sample, above 0 for the one that states no answer."""

    async def score(self, question: str, solution: str) -> float:
        return 2.0 if "not sure" in solution else -1.0


async def test_a_positive_score_on_a_sample_without_an_answer_leaves_the_vote_a_plain_count() -> None:
    """Its weight kept the all-zero check from applying, so the answers' zero weights tied and the seed's tie-break
    chose 9 or 7 whatever the counts."""
    for seed in range(6):
        ctx = ctx_for(ScriptedBackend([*texts("7", "7", "9"), "I am not sure"]), seed=seed)
        ctx.verifier = LogitScorer()
        result = await make_strategy("best_of_n", {"n": 4}).run(Problem("q"), Meter(Budget(tokens=100_000)), ctx)
        assert result.answer == "7", seed
        select = next(e for e in ctx.recorder.events() if e.kind == "select")
        assert select.payload["tally"] == {"7": 2.0, "9": 1.0}


class PlainDefScorer:
    def score(self, question: str, solution: str) -> float:
        return 0.5


async def test_an_outcome_verifier_that_is_not_async_is_a_verifier_error() -> None:
    ctx = ctx_for(ScriptedBackend(texts("5")))
    ctx.verifier = PlainDefScorer()  # type: ignore[assignment]
    with pytest.raises(VerifierError, match=r"PlainDefScorer\.score must be a coroutine function \(async def\)"):
        await make_strategy("best_of_n", {"n": 2}).run(Problem("q"), Meter(Budget(tokens=100_000)), ctx)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowScorer(AnswerScorer):
    """Each scoring takes a quarter of a second on ``clock``."""

    def __init__(self, table: dict[str, float], clock: FakeClock) -> None:
        super().__init__(table)
        self.clock = clock

    async def score(self, question: str, solution: str) -> float:
        self.clock.now += 0.25
        return await super().score(question, solution)


async def test_no_verifier_call_starts_after_the_wall_time_is_spent() -> None:
    """Every sample was scored however long it took; those left unscored would then weigh 1 in a vote of
    probabilities (the six 7s would outvote the scored 3s by 6 to 0.4)."""
    clock = FakeClock()
    verifier = SlowScorer({"3": 0.2, "7": 0.2}, clock)
    ctx = ctx_for(ScriptedBackend(texts("3", "3", "7", "7", "7", "7", "7", "7")), verifier=verifier)
    meter = Meter(Budget(wall_s=0.5), clock=clock)
    result = await make_strategy("best_of_n", {"n": 8, "max_tokens": 64}).run(Problem("q"), meter, ctx)
    assert verifier.calls == 2 and meter.usage().verifier_calls == 2
    [unscored] = [e.payload for e in ctx.recorder.events() if e.kind == "unscored"]
    assert unscored == {"reason": "wall_time", "scored": 2, "unscored": 6}
    assert [c.score for c in result.candidates] == [0.2, 0.2, *[None] * 6]
    assert result.answer == "3"  # only the scored samples take part in the weighted vote
    select = next(e for e in ctx.recorder.events() if e.kind == "select")
    assert select.payload["unscored"] == 6 and select.payload["tally"] == {"3": pytest.approx(0.4)}


async def test_unscored_samples_still_answer_where_no_scored_one_does() -> None:
    clock = FakeClock()
    verifier = SlowScorer({}, clock)
    ctx = ctx_for(ScriptedBackend(["I am not sure", "No idea", *texts("7", "7")]), verifier=verifier)
    result = await make_strategy("best_of_n", {"n": 4, "max_tokens": 64, "select": "score"}).run(
        Problem("q"), Meter(Budget(wall_s=0.5), clock=clock), ctx)
    assert verifier.calls == 2 and result.answer == "7"
    select = next(e for e in ctx.recorder.events() if e.kind == "select")
    assert select.payload["unscored"] == 0


@pytest.mark.parametrize("again", [False, True])
@pytest.mark.parametrize("at", [1, 2, 3])
async def test_a_cancellation_while_the_samples_are_released_still_releases_every_one(at: int, again: bool) -> None:
    """draw() released its samples one await at a time: a cancellation at one of them left the rest held in the
    caller's backend, and every later run on it counted them in its peak KV."""
    backend = CancelledAtRelease(texts("3", "5", "4", "7"), at, again)
    run = make_strategy("best_of_n", {"n": 4, "max_tokens": 64}).run(Problem("1+2?"), Meter(Budget(tokens=1000)),
                                                                     ctx_for(backend))
    task: asyncio.Task[object] = asyncio.ensure_future(run)
    backend.victim = task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(backend.drawn) == 4
    assert backend.drawn - set(backend.released) == set()
