"""lookahead on the bundled mini reasoner (target) and mini draft, each on its own local engine."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ttc import solve, solve_batch
from ttc.backends.local import LocalBackend
from ttc.bench.datasets import load_dataset
from ttc.bench.synthetic import generate
from ttc.config import default_backend
from ttc.errors import ConfigError
from ttc.models import mini_model_path, mini_prompt
from ttc.storage import TraceStore
from ttc.types import Result

pytest.importorskip("torch")

QUESTION = "Eve has 5 bags of 9 stamps. Eve sells 4. Eve loses 1. How many stamps now?"
TEMPLATE = mini_prompt("{question}")


def test_lookahead_writes_the_reasoners_greedy_solution_and_accepts_draft_steps(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=8, seed=41_000)
    questions = [p.question for p in problems]
    greedy = solve_batch(questions, 400, strategy="best_of_n", n=1, temperature=0.0, store=False, seed=3)
    store = TraceStore(str(tmp_path / "t.db"))
    ahead = solve_batch(questions, 2000, strategy="lookahead", gamma=3, store=store, seed=3)
    assert [r.text for r in ahead] == [r.text for r in greedy]
    accepted = proposed = 0
    for result in ahead:
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
        assert record.status == "done"
        [summary] = [e.payload for e in record.events if e.kind == "lookahead_summary"]
        accepted += summary["accepted"]
        proposed += summary["proposed"]
        assert summary["draft_tokens"] + summary["target_tokens"] == result.usage.generated_tokens
        # Every accepted draft step saved the target one sequential step.
        assert summary["target_passes"] < summary["target_tokens"] or summary["accepted"] == 0
    store.close()
    # The draft writes the reasoner's own next step on 64% of steps (the model card); proposals after a rejected
    # one are never accepted, so fewer of all proposals are (37% on these problems).
    assert accepted / proposed > 0.25


def test_the_embedded_draft_loads_only_for_lookahead_and_closes_with_the_setup() -> None:
    import anyio

    from ttc.errors import BackendError
    from ttc.session import Session
    from ttc.types import Sampling

    question = load_dataset("synthetic", limit=1, seed=41_100)[0].question
    setup = default_backend()
    try:
        assert setup.draft is None  # nothing has asked for it yet
        draft = Session(setup=setup, store=None).setup.draft_backend()
        assert draft is not None and draft in setup.closers
    finally:
        anyio.run(setup.aclose)
    with pytest.raises(BackendError, match="closed"):
        anyio.run(draft.complete, [1, 5, 6], 1, Sampling(max_tokens=2, temperature=0.0))
    result = solve(question, 1500, strategy="lookahead", store=False, seed=1)
    assert result.answer is not None


def test_a_draft_folder_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttc.models import mini_model_path

    question = load_dataset("synthetic", limit=1, seed=41_200)[0].question
    monkeypatch.setenv("TTC_DRAFT_MODEL", str(mini_model_path("draft")))
    assert solve(question, 1500, strategy="lookahead", store=False, seed=1).answer is not None
    monkeypatch.setenv("TTC_DRAFT_MODEL", "/no/such/folder")
    from ttc.errors import ConfigError

    with pytest.raises(ConfigError, match="TTC_DRAFT_MODEL must name a folder"):
        solve(question, 1500, strategy="lookahead", store=False, seed=1)


@pytest.fixture(scope="module")
def reasoner() -> Iterator[LocalBackend]:
    backend = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    yield backend
    backend.close()


def greedy(reasoner: LocalBackend, question: str) -> Result:
    """The reasoner's own greedy solution: what lookahead must write, whatever the draft."""
    return solve(question, 4000, strategy="best_of_n", n=1, temperature=0.0, max_tokens=400, backend=reasoner,
                 store=False, prompt_template=TEMPLATE)


def edited_draft(tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> LocalBackend:
    """The mini draft from a copy of its folder with ``name`` (a JSON file) changed by ``edit``."""
    folder = tmp_path / "draft"
    shutil.copytree(mini_model_path("draft"), folder)
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))
    return LocalBackend.from_pretrained(folder, threads=1)


def test_a_draft_whose_vocabulary_numbers_signs_otherwise_is_refused(tmp_path: Path, reasoner: LocalBackend) -> None:
    """It read the prompt alike, and lookahead wrote '5 * 9 + 45' for the reasoner's '5 * 9 = 45'."""
    def swap_signs(tokenizer: dict[str, Any]) -> None:
        vocab = tokenizer["model"]["vocab"]
        vocab["+"], vocab["="] = vocab["="], vocab["+"]

    draft = edited_draft(tmp_path, "tokenizer.json", swap_signs)
    try:
        with pytest.raises(ConfigError, match=f"draft model {draft.name} tokenizes .* differently"):
            solve(QUESTION, 2000, strategy="lookahead", backend=reasoner, draft=draft, store=False,
                  prompt_template=TEMPLATE)
    finally:
        draft.close()


def with_positions(positions: int) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["max_position_embeddings"] = positions

    return edit


def test_a_draft_with_a_shorter_context_leaves_the_reasoner_to_finish(tmp_path: Path, reasoner: LocalBackend) -> None:
    """The chain outgrew the draft's 200 positions mid-solution and the solve failed on the draft's refusal."""
    question = generate(1_000_777, 1, levels=[8])[0].question
    draft = edited_draft(tmp_path, "config.json", with_positions(200))
    try:
        with TraceStore(str(tmp_path / "t.db")) as store:
            ahead = solve(question, 20_000, strategy="lookahead", backend=reasoner, draft=draft, store=store,
                          prompt_template=TEMPLATE, gamma=6, max_depth=1024)
            assert ahead.trace_id is not None
            events = store.get_trace(ahead.trace_id).events
    finally:
        draft.close()
    alone = greedy(reasoner, question)
    assert (ahead.text, ahead.answer) == (alone.text, alone.answer) and alone.answer is not None
    [stopped] = [e.payload for e in events if e.kind == "draft_stopped"]
    assert stopped["reason"] == "the chain fills the draft's 200-position context" and stopped["steps"] != 0


def test_a_draft_with_a_longer_context_sends_the_reasoner_nothing_past_its_own(tmp_path: Path,
                                                                               reasoner: LocalBackend) -> None:
    """Its proposals ran past the reasoner's 512 positions, and the reasoner was asked to go on after them."""
    question = " ".join([generate(1_000_999, 16, levels=[7, 8])[5].question] * 2)  # a 381-token prompt
    draft = edited_draft(tmp_path, "config.json", with_positions(1024))
    try:
        ahead = solve(question, 20_000, strategy="lookahead", backend=reasoner, draft=draft, store=False,
                      prompt_template=TEMPLATE, gamma=6, max_depth=1024)
    finally:
        draft.close()
    alone = greedy(reasoner, question)  # cut by the context's end: no answer
    assert (ahead.text, ahead.answer) == (alone.text, alone.answer)


@pytest.mark.parametrize("max_step_tokens", [8, 12])
def test_steps_longer_than_max_step_tokens_are_continued(reasoner: LocalBackend, max_step_tokens: int) -> None:
    """The first step to reach max_step_tokens ended the solution: '5 * 9 = ' and no answer, at 16 of 4000 tokens."""
    draft = LocalBackend.from_pretrained(mini_model_path("draft"), threads=1)
    try:
        ahead = solve(QUESTION, 4000, strategy="lookahead", backend=reasoner, draft=draft, store=False,
                      prompt_template=TEMPLATE, max_step_tokens=max_step_tokens)
    finally:
        draft.close()
    alone = greedy(reasoner, QUESTION)
    assert (ahead.text, ahead.answer) == (alone.text, alone.answer) == (alone.text, "40")
