"""Lookahead and parallel thinking on the bundled mini models where a helper model or its templates matter:
questions about a context on the embedded default, the mini reasoner as a caller's backend, and a draft that
numbers capitals otherwise."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttc import solve
from ttc.backends.local import LocalBackend
from ttc.bench.datasets import load_dataset
from ttc.errors import ConfigError
from ttc.models import MINI_PATH_TEMPLATE, MINI_SYNTHESIS_TEMPLATE, mini_model_path, mini_prompt
from ttc.storage import TraceStore

pytest.importorskip("torch")

PROBLEM = load_dataset("synthetic-stateful", limit=1, seed=5)[0]
TEMPLATE = mini_prompt("{question}")


@pytest.fixture(scope="module")
def reasoner() -> Iterator[LocalBackend]:
    backend = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    yield backend
    backend.close()


def test_lookahead_about_a_context_has_the_mini_draft(tmp_path: Path) -> None:
    """The context setup had no draft, and the refusal said the embedded default brought one."""
    with TraceStore(str(tmp_path / "t.db")) as store:
        result = solve(PROBLEM.question, 3000, strategy="lookahead", context=PROBLEM.context, store=store, seed=1)
        record = store.get_trace(result.trace_id or "")
    assert record.backend == f"local:{mini_model_path('stateful')}"
    [summary] = [e.payload for e in record.events if e.kind == "lookahead_summary"]
    assert summary["draft"] == f"local:{mini_model_path('draft')}" and summary["proposed"] != 0
    assert result.answer == PROBLEM.gold


def test_parallel_thinking_about_a_context_synthesizes_through_the_mini_templates(tmp_path: Path) -> None:
    """The context setup kept the generic synthesis template, which the mini vocabulary cannot spell: a tokenizer
    error that blamed the question."""
    with TraceStore(str(tmp_path / "t.db")) as store:
        result = solve(PROBLEM.question, 3000, strategy="parallel_thinking", context=PROBLEM.context, store=store,
                       seed=1)
        record = store.get_trace(result.trace_id or "")
    [synthesis] = [e.payload for e in record.events if e.kind == "synthesis"]
    assert synthesis["synthesizer"] == "target" and synthesis["model"] == f"local:{mini_model_path('stateful')}"
    [_, prompt] = [n for n in record.nodes if n.parent is None]
    assert prompt.text == f"{PROBLEM.context}\n{PROBLEM.question}\nso:\n"  # MINI_SYNTHESIS_TEMPLATE, no path
    # 512 positions leave no path room beside synthesis_max_tokens: the paths' majority answers, and says so.
    assert (synthesis["paths"], synthesis["shown"]) == (8, 0)
    assert [e.payload for e in record.events if e.kind == "fallback"] == [{"to": "vote", "reason": "no_path_fits"}]
    assert result.answer == PROBLEM.gold


def test_a_mini_target_asked_through_the_generic_templates_is_told_to_change_them(reasoner: LocalBackend) -> None:
    """The tokenizer's error quoted the prompt, which opens with the question, and blamed the question."""
    question = load_dataset("synthetic", limit=1, seed=5)[0].question
    with pytest.raises(ConfigError, match=r"synthesis_template holds 'Q', 'C', \"'\", 'N'\): pass "
                                          r"synthesis_template= and path_template= .*MINI_SYNTHESIS_TEMPLATE"):
        solve(question, 3000, strategy="parallel_thinking", backend=reasoner, prompt_template=TEMPLATE, store=False,
              seed=1)
    result = solve(question, 3000, strategy="parallel_thinking", backend=reasoner, prompt_template=TEMPLATE,
                   store=False, seed=1, synthesis_template=MINI_SYNTHESIS_TEMPLATE, path_template=MINI_PATH_TEMPLATE)
    assert result.answer is not None


def test_a_draft_that_numbers_a_and_m_the_other_way_round_is_refused(tmp_path: Path, reasoner: LocalBackend) -> None:
    """The probes held no capitals, and a probe of all of them would pass unread (the vocabulary has no C): the
    draft was taken."""
    folder = tmp_path / "draft"
    shutil.copytree(mini_model_path("draft"), folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["A"], vocab["M"] = vocab["M"], vocab["A"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    draft = LocalBackend.from_pretrained(folder, threads=1)
    try:
        with pytest.raises(ConfigError, match=f"draft model {draft.name} tokenizes 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' "
                                              "differently"):
            solve("Ted has 16 eggs. Kai gives Ted 6. How many eggs now?", 3000, strategy="lookahead",
                  backend=reasoner, draft=draft, prompt_template=TEMPLATE, store=False, seed=1)
    finally:
        draft.close()
