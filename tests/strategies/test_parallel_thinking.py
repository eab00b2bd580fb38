"""parallel_thinking on scripted models: the synthesis prompt, who synthesizes, the budget, left-out paths, trace."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from ttc import asolve, solve
from ttc.budget import Meter
from ttc.errors import ConfigError, ContextLengthError
from ttc.strategies.base import Context, make_strategy
from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE, merge_paths, render_synthesis
from ttc.testing import ScriptedBackend
from ttc.testing.scripted import Responder
from ttc.trace import TraceRecorder
from ttc.types import Budget, Completion, Problem, Sampling

pytestmark = pytest.mark.anyio

PATHS = ["1 + 2 = 3\nThe answer is 3.", "1 + 2 = 4\nThe answer is 4.", "1 + 2 = 3\nThe answer is 3."]
TEMPLATE = "{question}\n{paths}so:\n"
PATH = "{count} of {total}:\n{text}\n"


def path_or_synthesis(prompt: str, index: int, seed: int | None) -> str:
    if prompt.endswith("so:\n") or "attempts at it" in prompt:  # the mini template's end, the generic one's
        return "the target wrote this\nThe answer is 7."
    return PATHS[index % len(PATHS)]


def sampler() -> ScriptedBackend:
    """The target: path ``i`` of a call is ``PATHS[i % 3]``; asked to synthesize, it says so."""
    return ScriptedBackend(path_or_synthesis)


def last_answer_shown(prompt: str, index: int, seed: int | None) -> str:
    lines = [line for line in prompt.splitlines() if line.startswith("The answer is")]
    return lines[-1] if lines else "The answer is 0."


def synthesizer() -> ScriptedBackend:
    """A synthesizer that answers with the last answer line its prompt shows (so a test sees what it was shown)."""
    return ScriptedBackend(last_answer_shown)


class Windowed(ScriptedBackend):
    """A model whose context holds ``max_model_len`` positions: a longer generation is cut to the room left and a
    prompt that leaves none is refused, as a server does."""

    def __init__(self, responses: Responder, max_model_len: int) -> None:
        super().__init__(responses)
        self.max_model_len = max_model_len

    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        room = self.max_model_len - len(prompt)
        if room < 1:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens leaves no room in {self.max_model_len}")
        return await super().complete(prompt, n, dataclasses.replace(sampling,
                                                                     max_tokens=min(sampling.max_tokens, room)))


def windowed_synthesizer(max_model_len: int) -> Windowed:
    """:func:`synthesizer` with a context of ``max_model_len``."""
    return Windowed(last_answer_shown, max_model_len)


def context(target: ScriptedBackend, synth: ScriptedBackend | None) -> Context:
    return Context(backend=target, recorder=TraceRecorder(), rng=random.Random(0), prompt_template="{question}\n",
                   synthesizer=synth, synthesis_template=TEMPLATE, path_template=PATH)


async def run(target: ScriptedBackend, synth: ScriptedBackend | None, budget: Budget | None = None,
              **options: object) -> tuple[str, str | None, Context, Meter]:
    ctx = context(target, synth)
    meter = Meter(budget or Budget(tokens=10_000))
    found = await make_strategy("parallel_thinking", {"paths": 3, **options}).run(Problem(question="q?"), meter, ctx)
    return found.text, found.answer, ctx, meter


def test_identical_paths_are_shown_once_with_their_count_most_common_first() -> None:
    merged = merge_paths(["b", "a", "b", "c", "a", "b"])
    assert [(p.text, p.count) for p in merged] == [("b", 3), ("a", 2), ("c", 1)]
    text = render_synthesis("q?", [" x\n", "y", "x"], TEMPLATE, PATH)
    assert text == "q?\n2 of 3:\nx\n1 of 3:\ny\nso:\n"
    assert render_synthesis("q?", [], TEMPLATE, PATH) == "q?\nso:\n"
    generic = render_synthesis("What is 1 + 2?", ["The answer is 3."], SYNTHESIS_TEMPLATE, PATH_TEMPLATE)
    assert "What is 1 + 2?" in generic and "Attempt 1 (written by 1 of 1):\nThe answer is 3." in generic


async def test_the_setups_synthesizer_reads_every_path_and_its_solution_is_the_answer() -> None:
    target, synth = sampler(), synthesizer()
    text, answer, ctx, meter = await run(target, synth)
    # One batched call for the three paths on the target, one greedy call on the synthesizer.
    assert [c.n for c in target.calls] == [3] and len(synth.calls) == 1
    assert synth.calls[0].sampling.temperature == 0.0
    shown = "".join(chr(t) for t in synth.calls[0].prompt)
    assert shown == "q?\n2 of 3:\n1 + 2 = 3\nThe answer is 3.\n1 of 3:\n1 + 2 = 4\nThe answer is 4.\nso:\n"
    assert (text, answer) == ("The answer is 4.", "4")
    usage = meter.usage()
    assert usage.generated_tokens == sum(len(p) for p in PATHS) + len(text)
    assert usage.backend_calls == 2 and usage.prompt_tokens == len("q?\n") + len(shown)
    [event] = [e.payload for e in ctx.recorder.events() if e.kind == "synthesis"]
    assert event == {"synthesizer": "setup", "model": synth.name, "paths": 3, "shown": 3, "left_out": 0,
                     "prompt_tokens": len(shown)}
    nodes = ctx.recorder.nodes()
    # The question and its three paths; the synthesis prompt is a root of its own, its solution the selected node.
    assert [(n.parent, n.status) for n in nodes] == [(None, "active"), (0, "finished"), (0, "finished"),
                                                      (0, "finished"), (None, "active"), (4, "selected")]
    assert nodes[5].answer == "4"


async def test_without_a_synthesizer_the_target_synthesizes() -> None:
    target = sampler()
    text, _, ctx, _ = await run(target, None)
    assert text == "the target wrote this\nThe answer is 7." and len(target.calls) == 2
    assert [e.payload["synthesizer"] for e in ctx.recorder.events() if e.kind == "synthesis"] == ["target"]


@pytest.mark.parametrize(("budget", "planned"), [(Budget(tokens=60), 1), (Budget(tokens=119), 2),
                                               (Budget(tokens=120), 3), (Budget(calls=5), 3)])
async def test_the_paths_are_drawn_whole_as_many_as_the_budget_affords_beside_the_synthesis(
        budget: Budget, planned: int) -> None:
    """The paths shared what the synthesis left: at 60 tokens, three of 10, cut before their answer lines, which
    the synthesizer read as attempts (on the mini models it answered worse than shown no path)."""
    target, synth = sampler(), synthesizer()
    text, _, ctx, meter = await run(target, synth, budget, max_tokens=30, synthesis_max_tokens=30)
    assert [(c.n, c.sampling.max_tokens) for c in target.calls] == [(planned, 30)]
    assert synth.calls[0].sampling.max_tokens == 30
    assert [e.payload for e in ctx.recorder.events() if e.kind == "sample"] == [
        {"requested": 3, "planned": planned, "drawn": planned, "distinct": False}]
    assert meter.usage().generated_tokens <= (budget.tokens or 10_000) and text


def test_the_meter_keeps_a_reserve_back_from_a_plan() -> None:
    meter = Meter(Budget(tokens=100))
    assert meter.plan(4, 50, reserve=20) == (4, 20)
    assert meter.plan(4, 50, reserve=97) == (3, 1)  # fewer samples only below one token each
    assert meter.plan(4, 50, reserve=100) == (0, 0)
    assert Meter(Budget(wall_s=60)).plan(4, 50, reserve=10) == (4, 50)  # no token budget: nothing to keep back


async def test_a_budget_of_one_call_goes_to_the_synthesis() -> None:
    target, synth = sampler(), synthesizer()
    text, _, ctx, meter = await run(target, synth, Budget(calls=1))
    assert target.calls == [] and len(synth.calls) == 1 and meter.usage().backend_calls == 1
    assert [e.payload["drawn"] for e in ctx.recorder.events() if e.kind == "sample"] == [0]
    assert text == "The answer is 0."  # it was shown no path


@pytest.mark.parametrize(("budget", "limit"), [(Budget(calls=1), "calls"), (Budget(tokens=5000, calls=1), "calls"),
                                             (Budget(tokens=30), "tokens"), (Budget(tokens=20), "tokens"),
                                             (Budget(tokens=285), "tokens")])
async def test_a_budget_that_leaves_the_paths_nothing_says_so(budget: Budget, limit: str) -> None:
    """The synthesizer answered unaided, and nothing in the trace said why no path was drawn. 285 tokens leave
    255 beside the synthesis, short of one whole path (max_tokens 256): no path, rather than three cut short."""
    target, synth = sampler(), synthesizer()
    _, _, ctx, _ = await run(target, synth, budget, synthesis_max_tokens=30)
    assert target.calls == [] and len(synth.calls) == 1
    assert [e.payload for e in ctx.recorder.events() if e.kind == "fallback"] == [
        {"to": "synthesis", "reason": "no_budget_for_paths", "limit": limit}]


async def test_paths_drawn_record_no_fallback_to_the_synthesis() -> None:
    _, _, ctx, _ = await run(sampler(), synthesizer(), Budget(tokens=40), max_tokens=10, synthesis_max_tokens=30)
    assert [e.kind for e in ctx.recorder.events() if e.kind == "fallback"] == []


async def test_the_least_common_paths_are_left_out_of_a_prompt_too_long() -> None:
    target, synth = sampler(), synthesizer()
    full = len("q?\n2 of 3:\n1 + 2 = 3\nThe answer is 3.\n1 of 3:\n1 + 2 = 4\nThe answer is 4.\nso:\n")
    _, answer, ctx, _ = await run(target, synth, synthesis_max_prompt_tokens=full - 1)
    shown = "".join(chr(t) for t in synth.calls[0].prompt)
    # The total counts the paths shown: the prompt reads as if only those were sampled.
    assert shown == "q?\n2 of 2:\n1 + 2 = 3\nThe answer is 3.\nso:\n" and answer == "3"
    [event] = [e.payload for e in ctx.recorder.events() if e.kind == "synthesis"]
    assert (event["shown"], event["left_out"]) == (2, 1)


async def test_a_long_common_path_that_does_not_fit_leaves_room_for_shorter_ones() -> None:
    """Paths were left out by count alone: a long path drawn twice took every path out with it, and the
    synthesizer answered unaided after all of them were paid for."""
    long_path = "1 + 2 = 3\n" * 30 + "The answer is 3."
    scripted = [long_path, "1 + 2 = 4\nThe answer is 4.", long_path]
    target = ScriptedBackend(lambda prompt, index, seed: scripted[index % 3])
    synth = synthesizer()
    limit = len("q?\n1 of 1:\n1 + 2 = 4\nThe answer is 4.\nso:\n")
    _, answer, ctx, _ = await run(target, synth, synthesis_max_prompt_tokens=limit)
    shown = "".join(chr(t) for t in synth.calls[0].prompt)
    assert shown == "q?\n1 of 1:\n1 + 2 = 4\nThe answer is 4.\nso:\n" and answer == "4"
    [event] = [e.payload for e in ctx.recorder.events() if e.kind == "synthesis"]
    assert (event["shown"], event["left_out"]) == (1, 2)


async def test_where_no_path_fits_the_paths_vote_without_a_synthesis() -> None:
    long_path = "1 + 2 = 3\n" * 10 + "The answer is 3."
    target = ScriptedBackend(lambda prompt, index, seed: long_path)
    synth = synthesizer()
    _, answer, ctx, _ = await run(target, synth, synthesis_max_prompt_tokens=40)
    assert answer == "3" and synth.calls == []
    assert [e.payload for e in ctx.recorder.events() if e.kind == "fallback"] == [{"to": "vote",
                                                                                   "reason": "no_path_fits"}]


@pytest.mark.parametrize("synthesis", ["Let me check each attempt", "Thus \\boxed{\\,}",
                                       "\\boxed{" + "{" * 105 + "3" + "}" * 106])
async def test_a_synthesis_that_states_no_answer_gives_way_to_the_paths_vote(synthesis: str) -> None:
    """A synthesis cut by synthesis_max_tokens left the question unanswered though every path agreed; one whose
    answer a vote cannot count (blank, or nested past reading) was kept as the answer the same way."""
    target = ScriptedBackend(lambda prompt, index, seed: "1 + 2 = 3\nThe answer is 3.")
    synth = ScriptedBackend(lambda prompt, index, seed: synthesis)
    text, answer, ctx, _ = await run(target, synth)
    assert (text, answer) == ("1 + 2 = 3\nThe answer is 3.", "3")
    events = ctx.recorder.events()
    assert [e.payload for e in events if e.kind == "fallback"] == [{"to": "vote", "reason": "synthesis_unanswered"}]
    [select] = [e.payload for e in events if e.kind == "select"]
    assert select["how"] == "vote" and select["answer"] == "3"
    synthesis = ctx.recorder.nodes()[-1]
    assert synthesis.parent == 4 and synthesis.status != "selected"  # kept in the trace, not chosen


async def test_a_prompt_limit_that_leaves_no_room_for_a_path_is_refused_before_any_path_is_drawn() -> None:
    """Every path was left out and the synthesizer answered unaided, after the paths' tokens were spent."""
    target, synth = sampler(), synthesizer()
    with pytest.raises(ConfigError, match=r"takes 7 tokens before any path is shown, and "
                                          r"synthesis_max_prompt_tokens is 7"):
        await run(target, synth, synthesis_max_prompt_tokens=len("q?\nso:\n"))
    assert target.calls == [] and synth.calls == []


async def test_bad_templates_and_options_are_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"synthesis_template must contain the placeholder\(s\) \{paths\}"):
        make_strategy("parallel_thinking", {"synthesis_template": "{question}"})
    # An escaped brace pair renders as the text "{paths}": the synthesizer would see no path at all.
    with pytest.raises(ConfigError, match=r"synthesis_template must contain the placeholder\(s\) \{paths\}"):
        make_strategy("parallel_thinking", {"synthesis_template": "Q: {question}\n{{paths}}\nA:"})
    with pytest.raises(ConfigError, match=r"path_template must contain the placeholder\(s\) \{text\}"):
        make_strategy("parallel_thinking", {"path_template": "{{text}} {index}"})
    with pytest.raises(ConfigError, match=r"path_template has unknown placeholder\(s\) \{score\}"):
        make_strategy("parallel_thinking", {"path_template": "{text} {score}"})
    with pytest.raises(ConfigError, match="synthesis_template does not render"):
        make_strategy("parallel_thinking", {"synthesis_template": "{question} {paths!z}"})
    with pytest.raises(ConfigError, match="path_template does not render"):
        make_strategy("parallel_thinking", {"path_template": "{text:d}"})
    # The path's number is an int when rendered, so an int's format spec is a template's own choice.
    make_strategy("parallel_thinking", {"path_template": "Path {index:02d} of {total}: {text}\n"})
    with pytest.raises(ConfigError, match="temperature"):
        make_strategy("parallel_thinking", {"temperature": 0})


async def test_options_templates_win_over_the_setups() -> None:
    target, synth = sampler(), synthesizer()
    await run(target, synth, synthesis_template="Q {question}\n{paths}=>", path_template="[{index}] {text}\n")
    shown = "".join(chr(t) for t in synth.calls[0].prompt)
    assert shown.startswith("Q q?\n[1] 1 + 2 = 3\nThe answer is 3.\n[2] 1 + 2 = 4") and shown.endswith("=>")


def test_solve_runs_it_through_the_api_with_the_target_as_synthesizer() -> None:
    target = sampler()
    result = solve("q?", 10_000, strategy="parallel_thinking", backend=target, store=False, seed=3,
                   paths=3)
    assert result.strategy == "parallel_thinking" and result.text == "the target wrote this\nThe answer is 7."
    assert result.usage.backend_calls == 2 and len(result.candidates) == 4


def test_a_callers_synthesizer_reads_the_paths_through_the_generic_templates() -> None:
    target, synth = sampler(), synthesizer()
    result = solve("q?", 10_000, strategy="parallel_thinking", backend=target, synthesizer=synth, store=False,
                   seed=3, paths=3)
    shown = "".join(chr(t) for t in synth.calls[0].prompt)
    assert shown == render_synthesis("q?", PATHS, SYNTHESIS_TEMPLATE, PATH_TEMPLATE)
    # It answers with the last answer line shown: the least common path's, listed last.
    assert result.text == "The answer is 4." and len(target.calls) == 1 and len(synth.calls) == 1
    with pytest.raises(ConfigError, match="synthesizer must be a Backend"):
        solve("q?", 10_000, strategy="parallel_thinking", backend=target, synthesizer="http://x", store=False)  # type: ignore[arg-type]


def test_the_environment_names_a_synthesizer_loaded_only_for_parallel_thinking(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ttc.config import BackendSetup, with_helpers

    monkeypatch.setenv("TTC_SYNTHESIZER_MODEL", str(tmp_path / "absent"))
    setup = with_helpers(BackendSetup(backend=sampler(), synthesis_template=TEMPLATE, path_template=PATH))
    assert (setup.synthesis_template, setup.path_template) == (SYNTHESIS_TEMPLATE, PATH_TEMPLATE)
    assert solve("q?", 1000, strategy="best_of_n", backend=sampler(), store=False, n=2).answer is not None
    with pytest.raises(ConfigError, match="TTC_SYNTHESIZER_MODEL must name a folder"):
        solve("q?", 10_000, strategy="parallel_thinking", backend=sampler(), store=False, paths=3)


async def test_a_wall_time_spent_before_the_synthesis_answers_by_the_paths_majority() -> None:
    """Tokens and a call are kept back for the synthesis, time cannot be: the result had no answer and no text
    though every path answered."""

    def respond(prompt: str, index: int, seed: int | None) -> str:
        if "attempts" in prompt:
            return "SYN\nThe answer is 9."
        return "The answer is 3." if index == 2 else "The answer is 2."

    backend = ScriptedBackend(respond, delay_s=0.3)
    result = await asolve("1+1?", Budget(tokens=2000, wall_s=0.2), strategy="parallel_thinking", backend=backend,
                   store=False, paths=3, synthesis_max_tokens=50, seed=0)
    assert (result.answer, result.text) == ("2", "The answer is 2.")
    assert len(backend.calls) == 1  # the paths' call: no synthesis started past the wall time


async def test_the_synthesizers_context_holds_the_prompt_to_what_leaves_the_synthesis_its_tokens() -> None:
    """A synthesizer's context shorter than synthesis_max_prompt_tokens was never consulted: the prompt showed
    every path and the synthesis was cut to what its context left, or refused after every path was paid for."""
    target = sampler()
    full = len("q?\n2 of 3:\n1 + 2 = 3\nThe answer is 3.\n1 of 3:\n1 + 2 = 4\nThe answer is 4.\nso:\n")
    synth = windowed_synthesizer(full - 1 + 30)
    _, answer, ctx, _ = await run(target, synth, synthesis_max_tokens=30)
    [call] = synth.calls
    shown = "".join(chr(t) for t in call.prompt)
    assert shown == "q?\n2 of 2:\n1 + 2 = 3\nThe answer is 3.\nso:\n" and answer == "3"
    assert call.sampling.max_tokens == 30 and len(call.prompt) + 30 <= synth.max_model_len
    [event] = [e.payload for e in ctx.recorder.events() if e.kind == "synthesis"]
    assert (event["shown"], event["left_out"]) == (2, 1)


async def test_a_target_synthesizing_in_a_short_context_falls_back_to_the_vote_rather_than_failing() -> None:
    """The target synthesizes (no synthesizer is set up) and no path fits its context with the synthesis's tokens:
    the solve failed with its context error after the paths were paid for."""
    target = Windowed(path_or_synthesis, 60)
    _, answer, ctx, meter = await run(target, None, synthesis_max_tokens=30)
    assert answer == "3" and [c.n for c in target.calls] == [3]
    assert [e.payload for e in ctx.recorder.events() if e.kind == "fallback"] == [{"to": "vote",
                                                                                   "reason": "no_path_fits"}]
    assert meter.usage().generated_tokens == target.stats().generated_tokens


async def test_a_synthesizer_context_too_short_for_the_bare_prompt_is_refused_before_any_path_is_drawn() -> None:
    target, synth = sampler(), windowed_synthesizer(len("q?\nso:\n") + 30)
    with pytest.raises(ConfigError, match=r"takes 7 tokens before any path is shown, and the synthesizer scripted "
                                          r"holds 37 positions, which leaves 7 for the prompt once "
                                          r"synthesis_max_tokens \(30\) are kept for the synthesis: lower "
                                          r"synthesis_max_tokens"):
        await run(target, synth, synthesis_max_tokens=30)
    assert target.calls == [] and synth.calls == []


class Lowercase(ScriptedBackend):
    """A small vocabulary with no capital letters, which has no token for the generic templates' own words."""

    async def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if missing := [ch for ch in dict.fromkeys(text) if ch.isupper()]:
            raise ConfigError(f"{self.name} has no token for {missing} in {text[:20]!r}: write the text with the "
                              "characters its vocabulary holds")
        return await super().tokenize(text, add_special_tokens=add_special_tokens)


async def test_templates_the_synthesizer_cannot_spell_are_named_rather_than_the_question() -> None:
    """The backend's error quoted the prompt, which opens with the question, and so blamed the caller's question
    for the template's 'Q', 'C' and 'N'."""
    target, synth = sampler(), Lowercase(last_answer_shown)
    ctx = dataclasses.replace(context(target, synth), synthesis_template=SYNTHESIS_TEMPLATE,
                              path_template=PATH_TEMPLATE)
    strategy = make_strategy("parallel_thinking", {"paths": 3})
    with pytest.raises(ConfigError, match=r"synthesizer scripted has no token for characters of the synthesis "
                                          r"prompt's own words \(synthesis_template holds 'Q', 'H', 'C', 'T', 'N', "
                                          r"'A'; path_template holds 'A'\): pass synthesis_template= and "
                                          r"path_template="):
        await strategy.run(Problem(question="how many?"), Meter(Budget(tokens=10_000)), ctx)
    assert target.calls == [] and synth.calls == []
    # Templates it reads leave a capital of the question's own to the backend's error, which names it.
    with pytest.raises(ConfigError, match=r"no token for \['W'\] in 'What\?"):
        await strategy.run(Problem(question="What?"), Meter(Budget(tokens=10_000)), context(target, synth))
