"""A solution longer than the verifier's context: the mini synthesizer (1536 positions) samples, the mini PRM (512)
judges. One such sample is left unscored; it does not fail the question whose other samples it can judge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ttc import solve
from ttc.backends.local import LocalBackend
from ttc.errors import VerifierError
from ttc.models import mini_model_path
from ttc.storage import TraceStore
from ttc.verifiers.base import StepwiseOutcome
from ttc.verifiers.prm import load_prm

pytest.importorskip("torch")

SENTENCES = "Ann has 7 bags of 4 pens. Ann gives 5 to Bob. Bob gives 2 to Ann. Ann buys 9 more. Tom gives 3 to Ann. "


@pytest.fixture
def models() -> Iterator[tuple[LocalBackend, LocalBackend]]:
    policy = LocalBackend.from_pretrained(mini_model_path("synthesizer"), threads=1)
    judge = LocalBackend.from_pretrained(mini_model_path("prm"), threads=1)
    yield policy, judge
    policy.close()
    judge.close()


def test_a_sample_too_long_for_the_prm_is_left_unscored_and_the_others_choose(
        models: tuple[LocalBackend, LocalBackend], tmp_path: Path) -> None:
    policy, judge = models
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        result = solve(SENTENCES * 2 + "How many pens now?", 40_000, strategy="best_of_n", backend=policy,
                       verifier=StepwiseOutcome(load_prm(judge)), store=store, seed=4, prompt_template="{question}\n",
                       n=8, max_tokens=300, select="score")
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
    finally:
        store.close()
    assert record.status == "done"
    unscored = [c for c in result.candidates if c.score is None]
    judged = [c for c in result.candidates if c.score is not None]
    assert len(unscored) == 6 and len(judged) == 2  # on this seed: the six cut at 300 tokens do not fit
    assert result.score == max(c.score for c in judged if c.answer is not None)
    [event] = [e.payload for e in record.events if e.kind == "unscored"]
    assert event["reason"] == "verifier_context" and event["unscored"] == len(unscored)
    assert event["node_ids"] == [c.node_id for c in unscored] and "512-position context" in str(event["error"])
    assert all(record.nodes[c.node_id].score is None for c in unscored)  # type: ignore[index]
    [select] = [e.payload for e in record.events if e.kind == "select"]
    assert select["unscored"] == len(unscored)


def test_a_question_no_sample_of_which_fits_the_prm_still_fails_with_the_verifiers_error(
        models: tuple[LocalBackend, LocalBackend], tmp_path: Path) -> None:
    policy, judge = models
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        with pytest.raises(VerifierError, match="cannot score this solution"):
            solve(SENTENCES * 5 + "How many pens now?", 40_000, strategy="best_of_n", backend=policy,
                  verifier=StepwiseOutcome(load_prm(judge)), store=store, seed=3, prompt_template="{question}\n",
                  n=2, max_tokens=40, select="score")
        [trace] = store.list_traces()
    finally:
        store.close()
    assert trace.status == "failed"


def test_a_search_path_too_long_for_the_prm_ranks_below_every_judged_step(
        models: tuple[LocalBackend, LocalBackend], tmp_path: Path) -> None:
    policy, judge = models
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        result = solve(SENTENCES * 3 + "How many pens now?", 40_000, strategy="beam", backend=policy,
                       verifier=load_prm(judge), store=store, seed=0, prompt_template="{question}\n",
                       beam_width=2, expand=2, max_depth=20, max_step_tokens=60, temperature=1.3)
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
    finally:
        store.close()
    assert record.status == "done"
    events = [e.payload for e in record.events if e.kind == "unscored"]
    assert events and all(e["reason"] == "verifier_context" for e in events)
    nodes = {node.id: node for node in record.nodes}

    def depth(node_id: int) -> int:
        parent = nodes[node_id].parent
        return 0 if parent is None else 1 + depth(parent)

    for event in events:  # one a wave of the beam: the paths of one depth
        wave = event["node_ids"]
        assert isinstance(wave, list) and all(nodes[i].score is None for i in wave)
        [level] = {depth(i) for i in wave}
        judged = [n.score for n in nodes.values() if n.score is not None and depth(n.id) == level]
        assert event["ranked_as"] == min(judged, default=0.0)
    assert result.score is not None  # chosen among the judged paths


def test_a_search_whose_first_steps_do_not_fit_the_prm_fails_with_its_error(
        models: tuple[LocalBackend, LocalBackend], tmp_path: Path) -> None:
    """Every path only grows: a search none of whose first steps the PRM can read would go on blind."""
    policy, judge = models
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        with pytest.raises(VerifierError, match="cannot score this solution"):
            solve(SENTENCES * 5 + "How many pens now?", 40_000, strategy="beam", backend=policy,
                  verifier=load_prm(judge), store=store, seed=0, prompt_template="{question}\n",
                  beam_width=2, expand=2, max_depth=20, max_step_tokens=60)
        [trace] = store.list_traces()
    finally:
        store.close()
    assert trace.status == "failed"
