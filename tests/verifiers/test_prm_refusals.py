"""What a PRM does with text it cannot read, with scores it already holds, with a cache it shares, and with what a
caller's process verifier returns: one unreadable sample is set aside (as one too long for the verifier's
context is) rather than failing its question, a step scores the same wherever it stands in a path, and a
verifier's odd return is named where it is made."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

import ttc
from ttc.backends.local import LocalBackend
from ttc.errors import ConfigError, VerifierError
from ttc.models import mini_model_path
from ttc.storage import TraceStore
from ttc.strategies.tree import UNREADABLE
from ttc.testing import ScriptedBackend
from ttc.types import PromptLogprobs
from ttc.verifiers.base import StepwiseOutcome, UnreadableSolution, unscorable
from ttc.verifiers.prm import CachedPRM, StepScoreCache, TokenPRM, load_prm
from ttc.verifiers.prm_presets import PRMPreset, get_preset

pytest.importorskip("torch")
pytestmark = pytest.mark.anyio

QUESTION = "Ann has 12 pens. She buys 7 more. How many pens does she have?"
RIGHT, WRONG = "12 + 7 = 19\nThe answer is 19.", "12 + 7 = 20\nThe answer is 20."
ACCENTED = "12 + 7 = 19 café\nThe answer is 19."  # the mini checker's vocabulary has no 'é'


@pytest.fixture(scope="module")
def checker_backend() -> Iterator[LocalBackend]:
    backend = LocalBackend.from_pretrained(mini_model_path("checker"), threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prm_backend() -> Iterator[LocalBackend]:
    backend = LocalBackend.from_pretrained(mini_model_path("prm"), threads=1)
    yield backend
    backend.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    opened = TraceStore(str(tmp_path / "t.db"))
    yield opened
    opened.close()


# 1. A sample the verifier cannot read

async def test_a_step_the_verifier_cannot_read_is_that_solutions_failure_naming_the_verifier(
        checker_backend: LocalBackend) -> None:
    """It was the backend's ConfigError, which told the caller to rewrite their text or change TTC_MODEL."""
    checker = load_prm(checker_backend, "mini-checker")
    with pytest.raises(UnreadableSolution, match=r"PRM preset 'mini-checker' .* cannot read step 1 .*no token for 'é'"):
        await checker.score_steps(QUESTION, ["12 + 7 = 19 café", "The answer is 19."])
    assert await checker.score_steps(QUESTION, ["12 + 7 = 19", "The answer is 19."])  # the others still score
    for preset in ("mini-checker", "mini"):  # each named the first step, whichever held the character
        with pytest.raises(UnreadableSolution, match=r"cannot read step 2 of this solution \('so 19 café'\)"):
            await load_prm(checker_backend, preset).score_steps(QUESTION, ["12 + 7 = 19", "so 19 café"])


def test_one_sample_the_verifier_cannot_read_is_left_unscored_and_the_others_choose(
        checker_backend: LocalBackend, store: TraceStore) -> None:
    result = ttc.solve(QUESTION, 4000, strategy="best_of_n", backend=ScriptedBackend([RIGHT, ACCENTED, WRONG, RIGHT]),
                       verifier=load_prm(checker_backend, "mini-checker"), store=store, seed=0, n=4, select="score")
    assert result.answer == "19" and result.score is not None
    assert [c.score is None for c in result.candidates] == [False, True, False, False]
    assert result.trace_id is not None
    [event] = [e.payload for e in store.get_trace(result.trace_id).events if e.kind == "unscored"]
    assert event["reason"] == "verifier_unreadable" and event["unscored"] == 1
    assert event["node_ids"] == [result.candidates[1].node_id] and "'é'" in str(event["error"])


def test_a_question_none_of_whose_samples_the_verifier_can_read_fails_with_its_error(
        checker_backend: LocalBackend) -> None:
    with pytest.raises(UnreadableSolution, match="cannot read step 1"):
        ttc.solve(QUESTION, 4000, strategy="best_of_n", backend=ScriptedBackend([ACCENTED]),
                  verifier=load_prm(checker_backend, "mini-checker"), store=False, seed=0, n=2, select="score")


def test_a_question_the_verifier_cannot_read_is_still_the_callers_text_to_fix(checker_backend: LocalBackend) -> None:
    with pytest.raises(ConfigError, match="has no token for 'é'") as refused:
        ttc.solve(QUESTION.replace("pens", "pensées"), 4000, strategy="best_of_n", backend=ScriptedBackend([RIGHT]),
                  verifier=load_prm(checker_backend, "mini-checker"), store=False, seed=0, n=2, select="score")
    assert not isinstance(refused.value, VerifierError)


def test_a_search_path_the_verifier_cannot_read_is_set_aside_as_unreadable(
        checker_backend: LocalBackend, store: TraceStore) -> None:
    def responder(prompt: str, index: int, seed: int | None) -> str:
        if prompt.endswith("= 19\n"):
            return "The answer is 19."
        return "12 + 7 = 19\n" if index % 2 == 0 else "12 + 7 = 19 café\n"

    result = ttc.solve(QUESTION, 4000, strategy="beam", backend=ScriptedBackend(responder),
                       verifier=load_prm(checker_backend, "mini-checker"), store=store, seed=0, beam_width=2,
                       expand=2)
    assert result.answer == "19" and result.trace_id is not None
    record = store.get_trace(result.trace_id)
    events = [e.payload for e in record.events if e.kind == "unscored"]
    assert events and {e["reason"] for e in events} == {"verifier_unreadable"}
    refused = {node_id for e in events for node_id in e["node_ids"]}  # type: ignore[union-attr]
    assert all("café" in record.nodes[i].text for i in refused)  # type: ignore[index]
    assert any(record.nodes[i].status == "pruned" and record.nodes[i].reason == UNREADABLE  # type: ignore[index]
               for i in refused)


# 9. Text that is not valid Unicode

async def test_a_lone_surrogate_in_a_step_is_an_unreadable_solution_and_in_the_question_a_config_error(
        checker_backend: LocalBackend) -> None:
    """It was a raw UnicodeEncodeError from the cache key."""
    checker = load_prm(checker_backend, "mini-checker")
    with pytest.raises(UnreadableSolution, match="step 1 is not valid Unicode text"):
        await checker.score_steps(QUESTION, ["12 + 7 = 19\ud800"])
    with pytest.raises(ConfigError, match="the question is not valid Unicode text"):
        await checker.score_steps(QUESTION + "\ud800", ["12 + 7 = 19"])


def test_a_sample_holding_a_lone_surrogate_is_left_unscored(checker_backend: LocalBackend) -> None:
    result = ttc.solve(QUESTION, 4000, strategy="best_of_n",
                       backend=ScriptedBackend(["12 + 7 = 19\ud800\nThe answer is 19.", RIGHT]),
                       verifier=load_prm(checker_backend, "mini-checker"), store=False, seed=0, n=2, select="score")
    assert result.answer == "19" and [c.score is None for c in result.candidates] == [True, False]


# 2. The same steps always score the same

OWN_LOGPROBS = {ord("✓"): -5.0, ord("✗"): -3.0}  # the good and bad tokens' logprobs (one token per character)


class FarGood(ScriptedBackend):
    """Every position's top-k holds the bad token and fillers, never the good one; a prompt position also returns
    its own token, as both engines do, with its own logprob."""

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        top: list[dict[int, float] | None] = [None]
        for token in prompt[1:]:
            dist = {1000 + j: -1.0 - j / 10 for j in range(top_k - 1)} | {ord("✗"): -3.0}
            top.append(dist if token in dist else {**dist, token: OWN_LOGPROBS.get(token, -9.0)})
        return PromptLogprobs(tuple(prompt), tuple(top))


async def test_a_token_prm_scores_a_step_alike_whether_or_not_it_is_the_last() -> None:
    """With the good token outside the top-k, the last tag was judged by its own logprob (the prompt holds it
    there), an inner tag by the top-k's floor: the same step scored 0.12 as the last, 0.5 before another."""
    preset = replace(get_preset("mini"), top_k=4)
    alone = await TokenPRM(FarGood(["x"]), preset).score_steps("q", ["a = 1"])
    inner = await TokenPRM(FarGood(["x"]), preset).score_steps("q", ["a = 1", "b = 2"])
    assert alone[0] == inner[0] == inner[1] == pytest.approx(0.5)


class Drifting(CachedPRM):
    """Scores each step by how many scorings came before: a recomputed step scores differently."""

    def __init__(self, preset: PRMPreset, value: float = 0.0, cache: StepScoreCache | None = None) -> None:
        super().__init__(ScriptedBackend(["x"]), preset, cache=cache)
        self.value = value
        self.runs = 0

    async def _score(self, question: str, steps: Sequence[str], cached: Sequence[float]) -> tuple[list[float], int]:
        self.runs += 1
        return [self.value + self.runs / 10] * len(steps), len(steps)


async def test_cached_step_scores_stay_what_the_cache_holds() -> None:
    prm = Drifting(get_preset("mini"))
    first = await prm.score_steps("q", ["a"])
    longer = await prm.score_steps_detailed("q", ["a", "b"])
    assert longer.scores[0] == first[0] and longer.cached_steps == 1
    assert await prm.score_steps("q", ["a"]) == first


# 8. The cache key names the verifier

async def test_prms_sharing_a_cache_do_not_answer_each_others_scores() -> None:
    shared = StepScoreCache()
    low = Drifting(get_preset("mini-checker"), 0.0, cache=shared)
    high = Drifting(get_preset("mini"), 0.5, cache=shared)
    assert await low.score_steps("q", ["a"]) == [pytest.approx(0.1)]
    assert await high.score_steps("q", ["a"]) == [pytest.approx(0.6)]
    same = Drifting(get_preset("mini-checker"), 0.9, cache=shared)  # the same verifier: its scores are shared
    assert await same.score_steps("q", ["a"]) == [pytest.approx(0.1)]
    adapter = Drifting(get_preset("mini-checker"), 0.3, cache=shared)  # the same server, another model it serves
    adapter.backend.model = "adapter"  # type: ignore[attr-defined]
    assert await adapter.score_steps("q", ["a"]) == [pytest.approx(0.4)]


# 3. A caller's process verifier through best-of-N and self-consistency

class Short:
    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.9]


class Keyed:
    async def score_steps(self, question: str, steps: Sequence[str]) -> dict[int, float]:
        return {0: 0.9, 1: 0.1, 2: 0.5}


class Plain:
    async def score_steps_detailed(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.5] * len(steps)

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        return [0.5] * len(steps)


@pytest.mark.parametrize(("verifier", "message"), [
    (Short(), "returned 1 scores for 3 steps: score_steps must return one score per step"),
    (Keyed(), r"Keyed.score_steps returned \{0: 0.9.*one score per step"),
    (Plain(), r"Plain.score_steps_detailed returned list .*must return a ttc.verifiers.base.StepScores"),
])
async def test_a_process_verifiers_scores_that_are_not_one_per_step_are_refused(verifier: object,
                                                                               message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        await StepwiseOutcome(verifier).score_detailed("q", "a\nb\nc")  # type: ignore[arg-type]


def test_a_short_score_list_fails_best_of_n_as_it_fails_a_search() -> None:
    with pytest.raises(VerifierError, match="one score per step"):
        ttc.solve(QUESTION, 4000, strategy="best_of_n", backend=ScriptedBackend([RIGHT, WRONG]), verifier=Short(),
                  store=False, seed=0, n=2, select="score")


# 10. load_prm's backend

@pytest.mark.parametrize("backend", [None, "mini", 5])
def test_load_prm_refuses_what_is_not_a_backend(backend: object) -> None:
    with pytest.raises(ConfigError, match="load_prm needs the Backend serving the PRM checkpoint"):
        load_prm(backend, "mini-checker")  # type: ignore[arg-type]


# 11. The token PRM's own step tag inside the text

async def test_a_token_prm_refuses_a_step_holding_its_step_tag(prm_backend: LocalBackend) -> None:
    """The tag inside a step was read as a step boundary no judgement follows: the wrong half went unjudged."""
    prm = load_prm(prm_backend, "mini")
    with pytest.raises(UnreadableSolution, match=r"separates steps with '¶', and the question or a step contains it "
                                                 r"\(step 1\)"):
        await prm.score_steps(QUESTION, ["12 * 7 = 3¶\n12 + 7 = 19"])
    with pytest.raises(ConfigError, match=r"contains it \(the question\)"):  # the caller's text: no sample scores
        await prm.score_steps(QUESTION + "¶", ["12 + 7 = 19"])


def test_unscorable_reads_the_cause_chain() -> None:
    judged = VerifierError("partly judged")
    judged.__cause__ = UnreadableSolution("cannot read")
    assert unscorable(judged) == "verifier_unreadable" and unscorable(VerifierError("other")) is None
