"""``ttc demo`` says when an arm's questions failed: accuracy counts only the questions an arm finished."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import ttc.cli as cli
from ttc.api import Session, open_session
from ttc.bench.datasets import load_dataset
from ttc.errors import BackendError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend
from ttc.types import Completion, Sampling

PROBLEMS = load_dataset("synthetic", limit=4, seed=10_000)  # the demo's own first problems (seed 0)


def right_answer(prompt_text: str, index: int, seed: int | None) -> str:
    problem = next(p for p in PROBLEMS if p.question in prompt_text)
    return f"The answer is {problem.gold}."


class FailsEveryOtherQuestion(ScriptedBackend):
    async def complete(self, prompt: Sequence[int], n: int, sampling: Sampling) -> list[Completion]:
        text = await self.detokenize(prompt)
        if any(p.question in text for p in PROBLEMS[::2]):
            raise BackendError("the server timed out", kind="complete", url="http://vllm:8000", retryable=False)
        return await super().complete(prompt, n, sampling)


def _demo_exit_code(monkeypatch: pytest.MonkeyPatch, backend: ScriptedBackend, db: Path, samples: int) -> int:
    """``ttc demo`` on 4 problems with ``samples``, every arm on ``backend`` with no verifier: its exit code."""
    def make_session(*args: object, **kwargs: object) -> Session:
        session = open_session(backend=backend, store=str(db), verifier=None, prompt_template=None)
        session.setup.owned = True
        return session

    monkeypatch.setattr(cli, "make_session", make_session)
    monkeypatch.setattr(sys, "argv", ["ttc", "demo", "--problems", "4", "--samples", str(samples)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    code = exited.value.code
    assert isinstance(code, int)
    return code


def test_an_arm_whose_questions_failed_says_so_and_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every arm read 'accuracy 1.000' over the half it finished, with no failed count or error, and exit 0."""
    assert _demo_exit_code(monkeypatch, FailsEveryOtherQuestion(right_answer), tmp_path / "d.db", 2) == 1
    out, err = capsys.readouterr()
    assert "failed" in out
    assert "greedy: 2 of 4 problems failed; its accuracy counts the 2 it finished" in " ".join(err.split())
    assert "the server timed out" in err


def test_samples_an_arm_cannot_take_are_refused_before_any_arm_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--samples 5000 was refused only after the greedy arm had run (minutes on the default problems), its result
    never shown, in a message naming the strategy's option n rather than --samples."""
    db = tmp_path / "d.db"
    assert _demo_exit_code(monkeypatch, ScriptedBackend(right_answer), db, 5000) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the majority@5000 arm cannot run with samples=5000" in err and "--samples" in err
    with TraceStore(str(db)) as store:
        assert store.list_runs() == []  # no arm ran
