"""``ttc eval --sleep-budget`` end to end on the embedded default: the mini stateful reasoner thinks about each
held-out context once, and its questions, asked with those notes, cost a fraction of answering from the context."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttc.models import mini_model_path
from ttc.sleeptime import SLEEP
from ttc.storage import TraceStore

pytest.importorskip("torch")

GREEDY = ("--strategy", "best_of_n", "-o", "n=1", "-o", "temperature=0", "-o", "max_tokens=288", "--budget", "288")


def evaluate(db: Path, *extra: str) -> str:
    """The run id of one ``ttc eval`` of 12 questions about 4 held-out contexts."""
    proc = subprocess.run([sys.executable, "-m", "ttc", "eval", "--dataset", "synthetic-stateful", "--limit", "12",
                           "--seed", "2", *GREEDY, *extra], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TTC_DB": str(db), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"--run (\S+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def test_eval_thinks_about_each_context_once_and_its_questions_cost_less(tmp_path: Path) -> None:
    db = tmp_path / "eval.db"
    alone = evaluate(db)
    slept = evaluate(db, "--sleep-budget", "288")
    with TraceStore(str(db)) as store:
        without, with_notes = store.get_run(alone).summary, store.get_run(slept).summary
        assert (without["done"], with_notes["done"], with_notes["contexts"]) == (12, 12, 4)
        # Measured: 227.8 tokens per question from the context alone, 35.7 with notes, 100.0 with the notes' 193
        # tokens per context shared over its three questions (6 and 5 of 12 right).
        assert with_notes["mean_tokens"] * 4 < without["mean_tokens"], (with_notes, without)
        assert with_notes["mean_total_tokens"] < without["mean_tokens"], (with_notes, without)

        traces = store.list_traces(run_id=slept, limit=None)
        sleeps = {t.question: store.get_trace(t.id) for t in traces if t.strategy == SLEEP}
        assert len(sleeps) == 4 and {r.backend for r in sleeps.values()} == {f"local:{mini_model_path('stateful')}"}
        for summary in traces:
            if summary.strategy == SLEEP:
                continue
            record = store.get_trace(summary.id)
            notes = sleeps[record.problem.context or ""]
            # The stateful reasoner's context template: the context, the notes, the question.
            assert record.nodes[0].text == f"{record.problem.context}\n{notes.text}\n{record.problem.question}\n"
            assert record.events[0].payload["context"]["notes_trace"] == notes.id
