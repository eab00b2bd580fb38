"""What a PRM spent on a solution it could not score: a judge asks about each step in a request of its own, and a
step past its context is refused after the steps before it were judged and computed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ttc.errors import ContextLengthError, VerifierError
from ttc.testing import ScriptedBackend
from ttc.types import PromptLogprobs
from ttc.verifiers.base import unscorable
from ttc.verifiers.prm import PartlyScored, judge, load_prm, spent_before
from ttc.verifiers.prm_presets import PRMPreset

pytestmark = pytest.mark.anyio

QUESTION = "What is 2 + 3?"
STEPS = ["2 + 3 = 5", "3 + 4 = 7", "x" * 120, "The answer is 5."]
TOKEN = PRMPreset(name="tiny", family="token", tag="@", good="Y", bad="N", prefix="Q: {question}\n")
LIKELIHOOD = PRMPreset(name="checker", family="likelihood", prefix="Q: {question}\n")


class SmallContext(ScriptedBackend):
    """Refuses a scoring prompt longer than ``limit`` tokens (one a character), as a server or the engine does:
    before computing any of it, so a refused request counts nothing in ``stats().scored_tokens``."""

    def __init__(self, limit: int) -> None:
        super().__init__(["unused"])
        self.limit = limit

    async def prompt_logprobs(self, prompt: Sequence[int], top_k: int = 0) -> PromptLogprobs:
        if len(prompt) > self.limit:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens does not fit in the model's "
                                     f"{self.limit}-position context")
        return await super().prompt_logprobs(prompt, top_k)


async def test_a_judge_refused_at_a_later_step_counts_and_keeps_the_steps_it_judged_before() -> None:
    """The three steps judged before the last overflowed were computed, yet counted nowhere, and asked about
    again by the next path through them."""
    backend = SmallContext(260)
    verdicts = judge(backend, yes="Y", no="N")
    with pytest.raises(VerifierError, match="cannot score this solution") as raised:
        await verdicts.score_steps_detailed(QUESTION, STEPS)
    assert unscorable(raised.value) == "verifier_context"
    spent = spent_before(raised.value)
    assert spent.scores == (0.5, 0.5, 0.5) and spent.calls == 3
    assert spent.scored_tokens == backend.stats().scored_tokens > 0
    assert (verdicts.scored_tokens, verdicts.calls) == (backend.stats().scored_tokens, 3)
    again = await verdicts.score_steps_detailed(QUESTION, STEPS[:3])
    assert again.calls == 0 and again.cached_steps == 3
    assert backend.stats().scored_tokens == spent.scored_tokens  # nothing asked twice


async def test_a_judge_refused_at_its_first_new_step_spent_nothing() -> None:
    backend = SmallContext(260)
    verdicts = judge(backend, yes="Y", no="N")
    await verdicts.score_steps(QUESTION, STEPS[:3])
    before = (verdicts.scored_tokens, verdicts.calls)
    with pytest.raises(VerifierError, match="cannot score this solution") as raised:
        await verdicts.score_steps(QUESTION, STEPS)
    assert not isinstance(raised.value, PartlyScored) and spent_before(raised.value).calls == 0
    assert (verdicts.scored_tokens, verdicts.calls) == before


@pytest.mark.parametrize("family", ["token", "likelihood"])
async def test_a_prm_scoring_a_path_in_one_request_spends_nothing_on_one_refused(family: str) -> None:
    """The other families send the whole path at once: a refusal is all or nothing, and computes nothing."""
    backend = SmallContext(60)
    prm = load_prm(backend, TOKEN if family == "token" else LIKELIHOOD)
    with pytest.raises(VerifierError, match="cannot score this solution") as raised:
        await prm.score_steps(QUESTION, STEPS)
    assert spent_before(raised.value).scored_tokens == 0 == backend.stats().scored_tokens
    assert (prm.scored_tokens, prm.calls) == (0, 0)
