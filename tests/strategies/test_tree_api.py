"""The tree searches through the public API: registered, PRM passed through, traces stored and read back."""

from __future__ import annotations

import pytest
from tree_doubles import HashPRM, random_responder

import ttc
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.strategies.base import strategy_names
from ttc.testing import ScriptedBackend

SEARCHES = ["beam", "dvts", "rebase", "ets"]


def test_all_four_are_registered() -> None:
    assert set(SEARCHES) <= set(strategy_names())


@pytest.mark.parametrize("name", SEARCHES)
def test_solve_end_to_end(name: str) -> None:
    backend = ScriptedBackend(random_responder)
    result = ttc.solve("What is 2 + 2?", 3000, strategy=name, backend=backend, verifier=HashPRM(), store=False,
                       seed=3)
    assert result.strategy == name
    assert result.answer is not None and result.candidates
    assert result.usage.generated_tokens <= 3000
    assert result.usage.peak_kv_tokens > 0
    assert result.usage.verifier_calls > 0
    assert result.usage.backend_calls == len(backend.calls)


def test_without_a_process_verifier_solve_says_what_to_pass() -> None:
    with pytest.raises(ConfigError, match="verifier=prm"):
        ttc.solve("q", 100, strategy="beam", backend=ScriptedBackend(["a\n"]), store=False)


def test_trace_is_stored_with_rounds(tmp_path: object) -> None:
    store = TraceStore(f"sqlite:///{tmp_path}/t.db")
    try:
        result = ttc.solve("What is 2 + 2?", 3000, strategy="ets", backend=ScriptedBackend(random_responder),
                           verifier=HashPRM(), store=store, seed=1, width=4)
        assert result.trace_id is not None
        record = store.export_trace(result.trace_id)
    finally:
        store.close()
    text = repr(record)
    assert "'round'" in text and "objective" in text and "selected" in text
