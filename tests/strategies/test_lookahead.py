"""lookahead on scripted target and draft models: acceptance, the target's own text, budget, refusals, trace."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from cancelling import CancelledAtRelease

from ttc import solve
from ttc.budget import Meter
from ttc.errors import ConfigError, ContextLengthError
from ttc.strategies.base import Context, make_strategy
from ttc.strategies.lookahead import NO_DRAFT, steps_to_propose
from ttc.testing import ScriptedBackend
from ttc.testing.scripted import Responder
from ttc.trace import TraceRecorder
from ttc.types import Budget, Completion, Problem, Sampling

pytestmark = pytest.mark.anyio

TARGET = ["1 + 2 = 3\n", "3 * 4 = 12\n", "12 - 5 = 7\n", "7 + 1 = 8\n", "The answer is 8."]
TEMPLATE = "Q: {question}\nA:\n"


def script(lines: Sequence[str]) -> Responder:
    """Writing ``lines`` in order: the next line is the one after those already in the prompt (a prompt that
    strays from ``lines`` gets the line at the same position)."""

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        done = prompt_text.split("A:\n", 1)[1].count("\n")
        return "".join(lines[done:])

    return respond


def writer(lines: Sequence[str], fail_after: int | None = None) -> ScriptedBackend:
    """A model that writes ``lines`` in order (:func:`script`)."""
    return ScriptedBackend(script(lines), fail_after=fail_after)


def ctx_for(target: ScriptedBackend, draft: ScriptedBackend | None) -> Context:
    return Context(backend=target, recorder=TraceRecorder(), rng=random.Random(0), prompt_template=TEMPLATE,
                   draft=draft)


async def run(target: ScriptedBackend, draft: ScriptedBackend | None, budget: int = 10_000,
              **options: object) -> tuple[str, str | None, Context, Meter]:
    ctx = ctx_for(target, draft)
    meter = Meter(Budget(tokens=budget))
    found = await make_strategy("lookahead", options).run(Problem(question="q"), meter, ctx)
    return found.text, found.answer, ctx, meter


async def test_a_draft_that_agrees_is_accepted_and_the_text_is_the_targets() -> None:
    target, draft = writer(TARGET), writer(TARGET)
    text, answer, ctx, _ = await run(target, draft, gamma=2)
    assert text == "".join(TARGET) and answer == "8"
    rounds = [e.payload for e in ctx.recorder.events() if e.kind == "lookahead"]
    # Each round accepts both proposals and adds the target's own step after them: 3 steps, then 2 (the draft
    # stops proposing at the answer line, so the target has nothing to add after it).
    assert [(r["proposed"], r["accepted"], r["steps"]) for r in rounds] == [(2, 2, 3), (2, 2, 5)]
    [summary] = [e.payload for e in ctx.recorder.events() if e.kind == "lookahead_summary"]
    assert summary["acceptance"] == 1.0 and summary["rounds"] == 2 and summary["draft"] == draft.name
    # Round one checks three prefixes (none, one and two draft steps) in one wave; round two two.
    assert len(target.calls) == 5 and len(draft.calls) == 4


async def test_a_wrong_draft_step_is_rejected_and_the_target_writes_its_own() -> None:
    wrong = [*TARGET[:2], "12 - 4 = 8\n", "8 + 1 = 9\n", "The answer is 9."]
    target, draft = writer(TARGET), writer(wrong)
    text, answer, ctx, _ = await run(target, draft, gamma=3)
    assert text == "".join(TARGET) and answer == "8"
    first = next(e.payload for e in ctx.recorder.events() if e.kind == "lookahead")
    assert (first["proposed"], first["accepted"], first["steps"]) == (3, 2, 3)
    pruned = [n for n in ctx.recorder.nodes() if n.status == "pruned"]
    # The draft strays at each of its last three lines, so each round after the first rejects its first proposal;
    # every proposal not taken is in the tree (only the first of each round's was), under the step it followed.
    [summary] = [e.payload for e in ctx.recorder.events() if e.kind == "lookahead_summary"]
    assert len(pruned) == summary["proposed"] - summary["accepted"]
    by_id = {n.id: n for n in ctx.recorder.nodes()}
    first_rejects = [n for n in pruned if by_id[n.parent].status != "pruned"]  # type: ignore[index]
    assert [n.text for n in first_rejects] == wrong[2:]
    assert all(n.reason is not None and "rejected" in n.reason for n in first_rejects)
    followers = [n for n in pruned if n not in first_rejects]
    assert [n.text for n in followers] == wrong[4:] and \
        all(n.reason == "draft step after one not taken" for n in followers)
    chain = [n for n in ctx.recorder.nodes() if n.parent is not None and n.status != "pruned"]
    assert [n.text for n in chain] == TARGET
    assert chain[-1].status == "selected" and chain[-1].answer == "8"
    assert [n.reason for n in chain[:3]] == ["written by the draft", "written by the draft",
                                             "written by the target"]


async def test_every_round_releases_what_it_generated() -> None:
    target, draft = writer(TARGET), writer(TARGET)
    await run(target, draft, gamma=2)
    assert len(draft.released) == len(draft.calls)
    assert len(target.released) == len(target.calls)


@pytest.mark.parametrize("again", [False, True])
@pytest.mark.parametrize("at", [1, 2])
async def test_a_cancellation_while_a_round_is_released_still_releases_all_of_it(at: int, again: bool) -> None:
    """An anyio shield does not stop asyncio's task.cancel(): a cancellation between two releases left the rest of
    the round held in the caller's backends."""
    target, draft = writer(TARGET), CancelledAtRelease(script(TARGET), at, again)
    task: asyncio.Task[object] = asyncio.ensure_future(
        make_strategy("lookahead", {"gamma": 3}).run(Problem(question="q"), Meter(Budget(tokens=10_000)),
                                                     ctx_for(target, draft)))
    draft.victim = task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(draft.released) == len(draft.calls) and len(target.released) == len(target.calls)


@pytest.mark.parametrize("budget", [12, 40, 75, 200])
async def test_both_models_tokens_stay_within_the_budget(budget: int) -> None:
    target, draft = writer(TARGET), writer(TARGET)
    _, _, _, meter = await run(target, draft, budget=budget, gamma=3, max_step_tokens=12)
    spent = target.stats().generated_tokens + draft.stats().generated_tokens
    assert spent == meter.usage().generated_tokens <= budget


async def test_a_budget_for_one_step_at_a_time_leaves_the_draft_idle() -> None:
    target, draft = writer(TARGET), writer(TARGET)
    # 2k + 1 steps of 12 tokens never fit in 30 with k >= 1, so every round is a plain target step.
    text, _, _, _ = await run(target, draft, budget=30, gamma=3, max_step_tokens=12)
    assert draft.calls == []
    assert text == "".join(TARGET)[: len(text)] and len(target.calls) >= 2


def test_steps_to_propose_fits_the_rounds_worst_case() -> None:
    assert steps_to_propose(Meter(Budget(calls=100)), 4, 64) == 4
    assert steps_to_propose(Meter(Budget(tokens=7 * 10)), 4, 10) == 3
    assert steps_to_propose(Meter(Budget(tokens=2 * 10)), 4, 10) == 0
    assert steps_to_propose(Meter(Budget(tokens=5, calls=3)), 4, 1) == 1
    spent = Meter(Budget(tokens=10))
    spent.charge([Completion(text="x" * 10, token_ids=(1,) * 10, finish_reason="stop")])
    assert steps_to_propose(spent, 4, 10) is None


async def test_without_a_draft_lookahead_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        await run(writer(TARGET), None)
    assert str(caught.value) == NO_DRAFT


class ShiftedTokens(ScriptedBackend):
    """A model whose vocabulary numbers characters differently from the target's."""

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) + 1 for ch in text]


async def test_a_draft_with_another_tokenizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="tokenizes the prompt differently"):
        await run(writer(TARGET), ShiftedTokens(TARGET))


def test_solve_runs_lookahead_with_the_callers_draft_and_refuses_none() -> None:
    target, draft = writer(TARGET), writer(TARGET)
    result = solve("q", 500, strategy="lookahead", backend=target, draft=draft, store=False,
                   prompt_template=TEMPLATE, gamma=2)
    assert result.answer == "8" and result.strategy == "lookahead"
    assert result.usage.generated_tokens == target.stats().generated_tokens + draft.stats().generated_tokens
    with pytest.raises(ConfigError, match="needs a draft model"):
        solve("q", 500, strategy="lookahead", backend=writer(TARGET), store=False, prompt_template=TEMPLATE)
    with pytest.raises(ConfigError, match="draft must be a Backend"):
        solve("q", 500, strategy="lookahead", backend=target, draft="/some/dir", store=False)  # type: ignore[arg-type]


def test_no_draft_is_refused_before_a_trace_opens(tmp_path: Path) -> None:
    """The trace opened and then failed on the missing draft: a failed trace for a call that never ran."""
    from ttc.storage import TraceStore

    with TraceStore(str(tmp_path / "t.db")) as store:
        with pytest.raises(ConfigError, match="needs a draft model"):
            solve("q", 500, strategy="lookahead", backend=writer(TARGET), store=store, prompt_template=TEMPLATE)
        assert store.list_traces() == []


def test_a_draft_that_fails_mid_solution_fails_the_trace_and_releases_the_round(tmp_path: Path) -> None:
    from ttc.errors import BackendError
    from ttc.storage import TraceStore

    target = writer(TARGET)
    draft = writer(TARGET, fail_after=3)
    store = TraceStore(f"{tmp_path}/t.db")
    with pytest.raises(BackendError, match="fail_after"):
        solve("q", 500, strategy="lookahead", backend=target, draft=draft, store=store, prompt_template=TEMPLATE,
              gamma=2)
    [failed] = store.list_traces(status="failed")
    record = store.get_trace(failed.id)
    assert "BackendError" in (record.error or "")
    # The first round kept two draft steps and the target's third; the second round's second proposal failed,
    # and its first, paid for, is in the tree (it was not: the failed trace's usage counted tokens no node held).
    # Nothing either model generated may stay held.
    assert [n.reason for n in record.nodes if n.parent is not None] == ["written by the draft"] * 2 + \
        ["written by the target", "draft step not taken: the round stopped (the trace's error)"]
    assert record.usage is not None
    # An accepted step was generated twice, by the draft and by the target's check: one node holds both.
    steps = [n for n in record.nodes if n.parent is not None]
    accepted = sum(n.token_count for n in steps if n.reason == "written by the draft")
    assert sum(n.token_count for n in steps) + accepted == record.usage.generated_tokens
    assert len(draft.released) == len(draft.calls) and len(target.released) == len(target.calls)
    store.close()


def test_a_target_check_that_fails_within_a_wave_leaves_the_checks_that_returned_charged_and_released(
        tmp_path: Path) -> None:
    """The wave's checks were charged only once all had returned: the failed trace reported fewer target tokens
    and calls than the target generated, and the sequences of the checks that returned stayed held."""
    from ttc.errors import BackendError
    from ttc.storage import TraceStore

    target = writer(TARGET, fail_after=1)  # the first round's wave checks three heads: one returns
    draft = writer(TARGET)
    store = TraceStore(f"{tmp_path}/t.db")
    with pytest.raises(BackendError, match="fail_after"):
        solve("q", 500, strategy="lookahead", backend=target, draft=draft, store=store, prompt_template=TEMPLATE,
              gamma=2)
    [failed] = store.list_traces(status="failed")
    record = store.get_trace(failed.id)
    usage = record.usage
    store.close()
    assert len(target.calls) == 1 and len(draft.calls) == 2
    assert usage is not None
    assert usage.generated_tokens == target.stats().generated_tokens + draft.stats().generated_tokens
    # The two proposals and the check that returned are in the tree, pruned, as a tree search keeps them.
    kept = [n for n in record.nodes if n.parent is not None]
    assert [n.status for n in kept] == ["pruned"] * 3
    assert sum(n.token_count for n in kept) == usage.generated_tokens
    assert usage.backend_calls == 3
    assert len(draft.released) == len(draft.calls) and len(target.released) == len(target.calls)


class FailsAtRoundEnd(TraceRecorder):
    """A failure after a round has recorded its steps (an interrupt in a script, say): its last event raises."""

    def event(self, kind: str, payload: Mapping[str, object], *, node_id: int | None = None) -> None:
        if kind == "lookahead":
            raise KeyboardInterrupt
        super().event(kind, payload, node_id=node_id)


async def test_a_round_that_fails_after_recording_its_steps_records_them_once() -> None:
    """The round's handler recorded its proposals and checks again, as pruned children of its own last step."""
    target, draft = writer(TARGET), writer(TARGET)
    ctx = Context(backend=target, recorder=FailsAtRoundEnd(), rng=random.Random(0), prompt_template=TEMPLATE,
                  draft=draft)
    meter = Meter(Budget(tokens=10_000))
    with pytest.raises(KeyboardInterrupt):
        await make_strategy("lookahead", {"gamma": 2}).run(Problem(question="q"), meter, ctx)
    steps = ctx.recorder.nodes()[1:]
    assert [n.reason for n in steps] == ["written by the draft"] * 2 + ["written by the target"]
    accepted = sum(n.token_count for n in steps if n.reason == "written by the draft")
    assert sum(n.token_count for n in steps) + accepted == meter.usage().generated_tokens


def test_no_call_starts_once_the_wall_time_is_spent_within_a_round() -> None:
    """Draft and target steps kept starting after the deadline: 7 calls of 0.1 s on a 0.05 s budget."""
    def steps(prompt: str, index: int, seed: int | None) -> str:
        return "Add.\n" if prompt.count("Add.") < 4 else "The answer is 5.\n"

    target, draft = ScriptedBackend(steps, delay_s=0.1), ScriptedBackend(steps, delay_s=0.1)
    solve("Ann has 2 pens and buys 3. How many?", Budget(wall_s=0.05), strategy="lookahead", backend=target,
          draft=draft, store=False, seed=0)
    assert len(draft.calls) == 1 and target.calls == []


def test_drafts_paid_for_when_the_wall_time_ends_are_counted_and_recorded(tmp_path: Path) -> None:
    """The round returned before counting them: the summary read 0 proposed beside their draft tokens, and the
    tree held none of the steps."""
    from ttc.storage import TraceStore

    def steps(prompt: str, index: int, seed: int | None) -> str:
        return "Add.\n" if prompt.count("Add.") < 4 else "The answer is 5.\n"

    target, draft = ScriptedBackend(steps), ScriptedBackend(steps, delay_s=0.2)
    with TraceStore(str(tmp_path / "t.db")) as store:
        result = solve("Ann has 2 pens and buys 3. How many?", Budget(wall_s=0.3), strategy="lookahead",
                       backend=target, draft=draft, store=store, seed=0, gamma=3)
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
    [summary] = [e.payload for e in record.events if e.kind == "lookahead_summary"]
    pruned = [n for n in record.nodes if n.status == "pruned"]
    assert target.calls == [] and summary["rounds"] == 1 and summary["proposed"] == len(draft.calls) >= 1
    assert summary["unchecked"] == summary["proposed"] and summary["acceptance"] is None
    assert len(pruned) == summary["proposed"] and sum(n.token_count for n in pruned) == summary["draft_tokens"]
    assert pruned[0].reason == "draft step not checked: the budget ran out after drafting"


async def test_a_chain_stopped_by_max_depth_states_no_answer_it_did_not_write() -> None:
    """Its last line's value (3 after one step) is an intermediate value, not the solution's answer."""
    text, answer, _, _ = await run(writer(TARGET), writer(TARGET), gamma=1, max_depth=2)
    assert text == "".join(TARGET[:2]) and answer is None


class Garbled(ScriptedBackend):
    """A draft that writes the target's token ids but renders them as other text, with logprobs of its own: a
    vocabulary that maps the same ids to other strings, seen from outside."""

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        return [dataclasses.replace(c, text=c.text.replace("=", "+"), logprobs=(-9.0,) * len(c.token_ids))
                for c in await super().complete(prompt, n, sampling)]


async def test_an_accepted_step_reads_as_the_targets_text_and_logprob() -> None:
    """The chain took an accepted step's text and logprob from the draft: '1 + 2 + 3' for the target's ids."""
    text, answer, ctx, _ = await run(writer(TARGET), Garbled(script(TARGET)), gamma=2)
    assert text == "".join(TARGET) and answer == "8"
    chain = [n for n in ctx.recorder.nodes() if n.parent is not None and n.status != "pruned"]
    assert "written by the draft" in {n.reason for n in chain}
    assert [n.text for n in chain] == TARGET and all(n.logprob is None for n in chain)


class SwappedSigns(ScriptedBackend):
    """A vocabulary with the ids of '+' and '=' swapped: it reads the prompt as the target does."""

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        swap = {ord("+"): ord("="), ord("="): ord("+")}
        return [swap.get(ord(ch), ord(ch)) for ch in text]


async def test_a_draft_that_reads_only_the_prompt_alike_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"draft model scripted tokenizes '\+-\*/=.*' differently.*TTC_DRAFT_MODEL"):
        await run(writer(TARGET), SwappedSigns(script(TARGET)))


class FewCapitals(ScriptedBackend):
    """A small vocabulary, as the mini models': of the capitals only A B E H K M Q S T. ``swap`` numbers two of them
    the other way round."""

    def __init__(self, responses: Responder, swap: str = "") -> None:
        super().__init__(responses)
        self.swap = {ord(a): ord(b) for a, b in zip(swap, swap[::-1], strict=True)}

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if missing := [ch for ch in dict.fromkeys(text) if ch.isupper() and ch not in "ABEHKMQST"]:
            raise ConfigError(f"{self.name} has no token for {missing}")
        return [self.swap.get(ord(ch), ord(ch)) for ch in text]


async def test_a_draft_that_reads_capitals_as_other_ids_is_refused_where_the_target_lacks_some() -> None:
    """The probes held only lowercase letters, and a target with no token for C let a whole probe of capitals pass
    unread: a draft with A and M swapped was taken."""
    target, draft = FewCapitals(script(TARGET)), FewCapitals(script(TARGET), swap="AM")
    ctx = dataclasses.replace(ctx_for(target, draft), prompt_template="Q: {question}\nB:\n")
    with pytest.raises(ConfigError, match=r"draft model scripted tokenizes 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' "
                                          r"differently from the target scripted"):
        await make_strategy("lookahead", {}).run(Problem(question="q"), Meter(Budget(tokens=10_000)), ctx)
    assert target.calls == [] and draft.calls == []
    # The same vocabulary passes: the capitals the target lacks are no reason to refuse a draft.
    text, answer, _, _ = await run(FewCapitals(script(TARGET)), FewCapitals(script(TARGET)), gamma=2)
    assert (text, answer) == ("".join(TARGET), "8")


class OtherEnd(ScriptedBackend):
    @property
    def eos_token_id(self) -> int | None:
        return 7


class OwnEnd(ScriptedBackend):
    @property
    def eos_token_id(self) -> int | None:
        return 2


async def test_a_draft_that_ends_sequences_with_another_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="ends sequences with token 7 where the target scripted uses 2"):
        await run(OwnEnd(script(TARGET)), OtherEnd(script(TARGET)))


def reciter(lines: Sequence[str]) -> ScriptedBackend:
    """A model that writes ``lines`` on from wherever the prompt's solution stopped, mid-line too."""
    text = "".join(lines)

    def respond(prompt_text: str, index: int, seed: int | None) -> str:
        return text[len(prompt_text.split("A:\n", 1)[1]):]

    return ScriptedBackend(respond)


async def test_a_step_cut_at_max_step_tokens_is_continued_not_ended() -> None:
    """A step that reached max_step_tokens ended the solution: '1 + ' and no answer, the budget unspent."""
    text, answer, ctx, _ = await run(reciter(TARGET), reciter(TARGET), gamma=2, max_step_tokens=4)
    assert text == "".join(TARGET) and answer == "8"
    pieces = [n for n in ctx.recorder.nodes() if n.parent is not None and n.status != "pruned"]
    assert pieces[0].text == "1 + " and pieces[0].reason is not None and "next node goes on" in pieces[0].reason


async def test_max_depth_counts_a_step_written_in_pieces_once() -> None:
    text, answer, _, _ = await run(reciter(TARGET), reciter(TARGET), gamma=2, max_step_tokens=4, max_depth=2)
    assert text == "".join(TARGET[:2]) and answer is None


class ShortContext(ScriptedBackend):
    """A served draft that learns its context window only when asked, as a vLLM server may."""

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        if len(prompt) >= 20:
            raise ContextLengthError("prompt leaves no room in the server's max_model_len of 20")
        return await super().complete(prompt, n, sampling)


async def test_a_chain_past_the_drafts_context_goes_on_with_target_steps() -> None:
    """The draft's refusal of a long prompt failed the solve the target could finish on its own."""
    text, answer, ctx, _ = await run(writer(TARGET), ShortContext(script(TARGET)), gamma=2)
    assert text == "".join(TARGET) and answer == "8"
    [stopped] = [e.payload for e in ctx.recorder.events() if e.kind == "draft_stopped"]
    assert "max_model_len of 20" in str(stopped["reason"])


class Window(ScriptedBackend):
    """A target whose context holds ``max_model_len`` positions: it refuses a longer prompt and stops a
    completion at the window's end, as the local engine and a vLLM server do."""

    max_model_len = 24

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        if len(prompt) >= self.max_model_len:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens leaves no room")
        room = self.max_model_len - len(prompt)
        out = await super().complete(prompt, n, dataclasses.replace(sampling, max_tokens=min(sampling.max_tokens,
                                                                                             room)))
        return [dataclasses.replace(c, finish_reason="length") if len(prompt) + len(c.token_ids) >= self.max_model_len
                else c for c in out]


async def test_proposals_and_heads_stay_within_the_targets_context() -> None:
    """A draft with a larger context proposed steps past the target's, and the target was sent them as heads."""
    target, draft = Window(script(TARGET)), writer(TARGET)
    text, answer, _, _ = await run(target, draft, gamma=3)
    assert text == "".join(TARGET)[: 24 - len(TEMPLATE.format(question="q"))] and answer is None
    assert all(len(call.prompt) < Window.max_model_len for call in target.calls)
    assert all(len(call.prompt) + call.sampling.max_tokens <= Window.max_model_len for call in draft.calls)
