"""Sleep-time compute end to end on the embedded default: the mini stateful reasoner thinks about held-out contexts,
and its notes make each question cheaper than answering from the context alone."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

import ttc
from ttc.bench.synthetic import EVAL_SEEDS, generate_stateful
from ttc.errors import ConfigError
from ttc.models import mini_model_path
from ttc.storage import TraceStore
from ttc.types import Notes, Usage

pytest.importorskip("torch")

CONTEXTS = generate_stateful(EVAL_SEEDS.start + 700_000, 12, 3)
GREEDY = {"strategy": "best_of_n", "n": 1, "temperature": 0.0, "max_tokens": 288}


def test_the_embedded_stateful_reasoner_writes_notes_that_make_questions_cheaper(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "sleep.db"))
    notes = [ttc.sleep(c.context, 288, store=store, seed=i) for i, c in enumerate(CONTEXTS)]
    assert {n.model for n in notes} == {f"local:{mini_model_path('stateful')}"}
    assert all(n.usage.generated_tokens <= 288 for n in notes)
    exact = sum(n.text == c.notes.strip() for n, c in zip(notes, CONTEXTS, strict=True))
    assert exact >= 1, f"greedy notes equal the reference on {exact} of {len(CONTEXTS)} contexts"  # 4 measured

    with_notes, alone = [], []
    for c, n in zip(CONTEXTS, notes, strict=True):
        with_notes += ttc.solve_batch(list(c.queries), 288, notes=n, store=store, seed=0, **GREEDY)
        alone += ttc.solve_batch(list(c.queries), 288, context=c.context, store=store, seed=0, **GREEDY)
    golds = [p.answer for c in CONTEXTS for p in c.problems]
    right_notes = sum(r.answer == g for r, g in zip(with_notes, golds, strict=True))
    right_alone = sum(r.answer == g for r, g in zip(alone, golds, strict=True))
    # 6 and 8 of 36 when measured: these 12 contexts are hard for it (the dev contexts: 47% from the context
    # alone); test_reads_a_count_back_by_name checks the reading back, the step every answer ends with.
    assert right_notes >= 3 and right_alone >= 4, (right_notes, right_alone)
    tokens_notes = statistics.mean(r.usage.generated_tokens for r in with_notes)
    tokens_alone = statistics.mean(r.usage.generated_tokens for r in alone)
    assert tokens_notes * 4 < tokens_alone, (tokens_notes, tokens_alone)

    trace = store.get_trace(with_notes[0].trace_id or "")
    assert trace.backend == notes[0].model
    assert trace.events[0].payload["context"]["notes_trace"] == notes[0].trace_id
    assert trace.nodes[0].text == f"{CONTEXTS[0].context}\n{notes[0].text}\n{CONTEXTS[0].queries[0]}\n"
    assert ttc.load_notes(notes[0].trace_id or "", store=store) == notes[0]
    store.close()


def test_reads_a_count_back_by_name() -> None:
    """Every person of 12 held-out contexts asked about alone, with the reference notes: a count is read back by
    the name asked, not guessed among the four (25%)."""
    right = asked = 0
    for context in CONTEXTS:
        people = context.each_person()
        notes = Notes(context.context, context.notes, Usage(), None, f"local:{mini_model_path('stateful')}")
        results = ttc.solve_batch([q for _, q, _ in people], 288, notes=notes, store=False, seed=0, **GREEDY)
        right += sum(r.answer == count for (_, _, count), r in zip(people, results, strict=True))
        asked += len(people)
    assert asked == 48 and right >= 24, f"{right} of {asked} counts read back"  # 37 measured; a guess gets 12


def test_consensus_of_drafts_is_kept_and_recorded(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "drafts.db"))
    context = CONTEXTS[1]
    notes = ttc.sleep(context.context, 8 * 288, store=store, seed=5)
    trace = store.get_trace(notes.trace_id or "")
    drafts = [n for n in trace.nodes if n.parent is not None]
    assert len(drafts) == 8 and trace.events[0].payload["options"]["temperature"] == 0.8
    select = next(e for e in trace.events if e.kind == "select")
    kept = next(n for n in drafts if n.status == "selected")
    scored = [a for a in select.payload["agreement"] if a is not None]
    assert kept.text.strip() == notes.text and kept.score == pytest.approx(max(scored), abs=1e-4)
    store.close()


def test_a_context_that_fills_the_models_window_is_named_not_the_budget() -> None:
    """A 506-token prompt leaves 6 of the mini model's 512 positions: the draft was cut there, and the error said
    to raise the sleep budget, which buys nothing."""
    story = ("Meg has 13 cups. Ted has 9 more cups than Meg. Eli has 8 fewer cups than Meg. Sam has 5 more cups "
             "than Ted.")
    context = " ".join([story] * 4) + " Meg has 13 cups. Ted has 9 more cups than Meg. Eli has 8 fewer cups than"
    with pytest.raises(ConfigError, match=r"leaves only 6 tokens of the model's window for notes.*shorten the context"):
        ttc.sleep(context, 5000, n=1, seed=0, store=False)
