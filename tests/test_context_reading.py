"""Questions about a context: what reads the question besides the model (a PRM, the operand check, a synthesizer)
reads it after its context and notes, as the model's prompt holds them, not the bare question."""

from __future__ import annotations

from collections.abc import Sequence

from ttc import solve
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
