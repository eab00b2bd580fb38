"""parallel_thinking on the embedded default: the mini reasoner's paths, read by the mini synthesizer."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from ttc import solve, solve_batch
from ttc.backends.local import LocalBackend
from ttc.bench.datasets import load_dataset
from ttc.config import default_backend
from ttc.errors import BackendError
from ttc.models import MINI_PATH_TEMPLATE, MINI_SYNTHESIS_TEMPLATE, mini_model_path, mini_prompt
from ttc.session import Session
from ttc.storage import TraceStore
from ttc.strategies.synthesis import render_synthesis
from ttc.types import Sampling
from ttc.verifiers.answer import extract_answer

pytest.importorskip("torch")

SOLUTION = re.compile(r"(?:[\d.]+ [-+*/] [\d.]+ = [\d.]+\n)*The answer is [\d.]+\.")


def test_the_synthesizer_reads_the_paths_and_writes_a_solution_in_the_reasoners_format(tmp_path: Path) -> None:
    problems = load_dataset("synthetic", limit=24, seed=43_000, levels=range(1, 5))
    store = TraceStore(str(tmp_path / "t.db"))
    results = solve_batch([p.question for p in problems], 2600, strategy="parallel_thinking", store=store, seed=5)
    unanimous = agreed = 0
    for problem, result in zip(problems, results, strict=True):
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
        assert record.status == "done" and record.strategy == "parallel_thinking"
        paths = [n for n in record.nodes if n.parent == 0]
        assert len(paths) == 8 and all(n.status == "finished" for n in paths)
        [prompt_node] = [n for n in record.nodes if n.parent is None and n.id != 0]
        # The synthesizer was shown exactly the paths, in the template it was trained on.
        assert prompt_node.text == render_synthesis(problem.question, [n.text for n in paths],
                                                    MINI_SYNTHESIS_TEMPLATE, MINI_PATH_TEMPLATE)
        [event] = [e.payload for e in record.events if e.kind == "synthesis"]
        assert event["synthesizer"] == "setup" and event["shown"] == 8 and event["left_out"] == 0
        assert str(event["model"]).endswith("mini/synthesizer")
        [final] = [n for n in record.nodes if n.parent == prompt_node.id]
        assert final.status == "selected" and final.text == result.text
        assert SOLUTION.fullmatch(result.text.strip()), result.text
        assert result.usage.generated_tokens == sum(n.token_count for n in paths) + final.token_count
        answers = {extract_answer(n.text) for n in paths}
        if len(answers) == 1:
            unanimous += 1
            agreed += result.answer == answers.pop()
    store.close()
    # Where all eight paths give one answer, the synthesis keeps it (7 of these 24 problems).
    assert unanimous >= 5 and agreed == unanimous


def test_the_embedded_synthesizer_loads_only_for_parallel_thinking_and_closes_with_the_setup() -> None:
    question = load_dataset("synthetic", limit=1, seed=43_100)[0].question
    setup = default_backend()
    try:
        assert setup.synthesizer is None  # nothing has asked for it yet
        synthesizer = Session(setup=setup, store=None).setup.synthesizer_backend()
        assert synthesizer is not None and synthesizer in setup.closers
    finally:
        anyio.run(setup.aclose)
    with pytest.raises(BackendError, match="closed"):
        anyio.run(synthesizer.complete, [1, 5, 6], 1, Sampling(max_tokens=2, temperature=0.0))
    result = solve(question, 2600, strategy="parallel_thinking", store=False, seed=1)
    assert result.answer is not None and len(result.candidates) == 9


def test_the_reasoner_synthesizing_in_its_own_context_leaves_out_paths_rather_than_failing(tmp_path: Path) -> None:
    """The reasoner (a 512-position context) as its own synthesizer: six long paths made a synthesis prompt of
    about 700 tokens against the default 1280-token limit, and the solve failed once every path was paid for."""
    question = load_dataset("synthetic", limit=1, seed=41, levels=(6,))[0].question
    reasoner = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        result = solve(question, 1200, strategy="parallel_thinking", backend=reasoner, store=store, seed=0,
                       prompt_template=mini_prompt("{question}"), paths=6, max_tokens=120, synthesis_max_tokens=120,
                       synthesis_template=MINI_SYNTHESIS_TEMPLATE, path_template=MINI_PATH_TEMPLATE)
        assert result.trace_id is not None
        record = store.get_trace(result.trace_id)
    finally:
        store.close()
        reasoner.close()
    assert record.status == "done"
    [event] = [e.payload for e in record.events if e.kind == "synthesis"]
    assert event["synthesizer"] == "target" and event["paths"] == 6
    assert 0 < event["shown"] < 6 and event["prompt_tokens"] <= 512 - 120  # type: ignore[operator]
    assert result.usage.backend_calls == 2
