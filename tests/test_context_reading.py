"""Questions about a context: what reads the question besides the model (a PRM, the operand check, a synthesizer)
reads it after its context and notes, as the model's prompt holds them, not the bare question."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from ttc import ConfigError, sleep, solve
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend
from ttc.types import Notes, Usage

CONTEXT = "Ann has 12 pens. She buys 7 more."
QUESTION = "How many pens does Ann have now?"


def test_the_operand_check_finds_the_numbers_the_context_gives() -> None:
    """12 and 7 appear only in the context: read from the bare question, the right sample fails the check, every
    sample then does, the check falls back to all of them, and the two copies of a misread answer win the vote."""
    texts = ["12 + 7 = 19\nThe answer is 19.", "3 + 4 = 7\nThe answer is 7.", "3 + 4 = 7\nThe answer is 7."]
    backend = ScriptedBackend(lambda _prompt, index, _seed: texts[index % 3])
    result = solve(QUESTION, 600, strategy="best_of_n", backend=backend, store=False, seed=0, context=CONTEXT,
                   n=3, select="vote", check_operands=True)
    assert result.answer == "19"


class RecordingPRM:
    """Scores every step 0.5 and keeps the question text it was given."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    async def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        self.questions.append(question)
        return [0.5 for _ in steps]


def test_a_prm_judges_steps_after_the_context_and_its_notes() -> None:
    prm = RecordingPRM()
    # A step, then the answer: a search writes one line per call, and a path that only repeats the step would
    # reach max_depth without an answer.
    backend = ScriptedBackend(lambda prompt, _index, _seed: "The answer is 19." if prompt.endswith("= 19\n")
                              else "12 + 7 = 19\nThe answer is 19.")
    notes = Notes(context=CONTEXT, text="Ann: 19", usage=Usage(generated_tokens=7), trace_id=None, model="scripted")
    result = solve(QUESTION, 2000, strategy="beam", backend=backend, verifier=prm, store=False, seed=0,
                   notes=notes, beam_width=1, expand=2, max_step_tokens=24)
    assert result.answer == "19" and prm.questions
    assert set(prm.questions) == {f"{CONTEXT}\nAnn: 19\n{QUESTION}"}


def test_the_synthesizer_reads_the_question_after_its_context() -> None:
    target = ScriptedBackend(lambda _prompt, _index, _seed: "12 + 7 = 19\nThe answer is 19.")
    synthesizer = ScriptedBackend(lambda _prompt, _index, _seed: "The answer is 19.")
    solve(QUESTION, 2000, strategy="parallel_thinking", backend=target, synthesizer=synthesizer, store=False,
          seed=0, context=CONTEXT, paths=2)
    shown = "".join(chr(t) for t in synthesizer.calls[0].prompt)
    assert shown.startswith(f"Question: {CONTEXT}\n{QUESTION}\n")


def test_literal_braces_of_a_template_reach_the_prompt_with_a_context_as_without() -> None:
    """The context template was formatted twice, so its {{literal}} became a placeholder the second time: a raw
    KeyError after the trace opened, and a literal {{question}} became the question."""
    prompts: list[str] = []

    def answer(prompt: str, _index: int, _seed: int | None) -> str:
        prompts.append(prompt)
        return "12 + 7 = 19\nThe answer is 19."

    template = "Ctx {{json}}: {context}\n{{question}} {{}}\nQ: {question}\n"
    solve(QUESTION, 200, strategy="best_of_n", n=1, backend=ScriptedBackend(answer), store=False,
          context="Ann has {12} pens.", prompt_template=template)
    assert prompts == [f"Ctx {{json}}: Ann has {{12}} pens.\n{{question}} {{}}\nQ: {QUESTION}\n"]
    sleep(CONTEXT, 64, backend=ScriptedBackend(answer), store=False, sleep_template="Think {{json}}: {context}\n")
    assert prompts[-1] == f"Think {{json}}: {CONTEXT}\n"
    # A conversion or format spec on the field left open is kept for it, not applied to a stand-in.
    solve(QUESTION, 200, strategy="best_of_n", n=1, backend=ScriptedBackend(answer), store=False,
          context="Ann has 12 pens.", prompt_template="{context}\nQ: {question!r}\n")
    assert prompts[-1] == f"Ann has 12 pens.\nQ: {QUESTION!r}\n"
    sleep(CONTEXT, 64, backend=ScriptedBackend(answer), store=False, sleep_template="Context: {context:.3}\n")
    assert prompts[-1] == f"Context: {CONTEXT[:3]}\n"


@pytest.mark.parametrize("template", ["Context: {context!x}\n", "{context:x}", "C: {context:{context}}"])
def test_a_sleep_template_that_cannot_be_filled_is_refused_before_anything_runs(template: str) -> None:
    """It passed the placeholder check and failed at the first prompt with a raw ValueError or KeyError."""
    backend = ScriptedBackend(["Ann: 3\n"])
    with pytest.raises(ConfigError, match="sleep_template does not render"):
        sleep(CONTEXT, 100, backend=backend, store=False, sleep_template=template)
    assert backend.calls == []


@pytest.mark.parametrize("template", ["{context!x}{notes}{question}", "{context}{notes}{question:x}",
                                      "{context}{notes}{question:>{context}}", "{context}{notes:{context}}{question}"])
def test_a_context_template_that_cannot_be_filled_is_refused_before_anything_runs(template: str) -> None:
    with pytest.raises(ConfigError, match="prompt_template does not render"):
        solve(QUESTION, 100, backend=ScriptedBackend(["The answer is 1."]), store=False, context=CONTEXT,
              prompt_template=template)


def test_sleeping_on_no_context_is_refused() -> None:
    """None read as 'no context': the model was asked about 'Context: None', and its notes failed only later."""
    with pytest.raises(ConfigError, match="context must be the text to think about, got None"):
        sleep(None, 100, backend=ScriptedBackend(["Ann: 3\n"]), store=False, seed=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [
    {"prompt_template": "Q\udc80: {question}"},
    {"prompt_template": "Q\udc80: {context} {question}", "context": CONTEXT},
    {"strategy": "parallel_thinking", "synthesis_template": "{question}\n{paths}\n\udcffA:"},
    {"strategy": "parallel_thinking", "path_template": "- {text}\udcff"},
])
def test_a_template_that_is_not_unicode_is_refused_before_anything_runs(options: dict[str, object],
                                                                        tmp_path: Path) -> None:
    """It reached the tokenizer (a raw TypeError) or the store (after the budget was spent) instead."""
    backend = ScriptedBackend(["The answer is 1."])
    with TraceStore(str(tmp_path / "t.db")) as store:
        with pytest.raises(ConfigError, match="is not valid Unicode text"):
            solve(QUESTION, 200, backend=backend, store=store, **options)  # type: ignore[arg-type]
        assert store.list_traces() == [] and backend.calls == []
    with pytest.raises(ConfigError, match="sleep_template is not valid Unicode text"):
        sleep(CONTEXT, 64, backend=backend, store=False, sleep_template="{context}\udcff")


def test_notes_reach_the_prompt_as_they_were_written() -> None:
    """str.splitlines also split at \\r, form feeds, \\x1c-\\x1e, \\x85 and U+2028/U+2029 and wrote \\n there, so the
    model read other notes than the stored ones (and than the trace's plan event names)."""
    text = "Ann: 19\r\nBob: 4\x0cx\x1cy\x1dz\x1e\x85w\u2028v\u2029u\n\nCal: 2"
    notes = Notes(context=CONTEXT, text=f"\n{text}\n\n", usage=Usage(), trace_id=None, model="scripted")
    backend = ScriptedBackend(["The answer is 19."])
    solve(QUESTION, 100, strategy="best_of_n", n=1, backend=backend, store=False, notes=notes,
          prompt_template="C: {context}\n{notes}Q: {question}\n")
    assert "".join(chr(t) for t in backend.calls[0].prompt) == f"C: {CONTEXT}\n{text}\nQ: {QUESTION}\n"
    empty = Notes(context=CONTEXT, text="\n", usage=Usage(), trace_id=None, model="scripted")
    solve(QUESTION, 100, strategy="best_of_n", n=1, backend=backend, store=False, notes=empty,
          prompt_template="C: {context}\n{notes}Q: {question}\n")
    assert "".join(chr(t) for t in backend.calls[1].prompt) == f"C: {CONTEXT}\nQ: {QUESTION}\n"
