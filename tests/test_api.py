"""The public API end to end on the scripted backend and a real SQLite trace store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

import ttc
from ttc import Budget, ConfigError, asolve, solve, solve_batch
from ttc.errors import BackendError
from ttc.storage import TraceStore
from ttc.testing import ScriptedBackend, guessing_responder

EXPECTED_API = {"solve", "asolve", "solve_batch", "Budget", "Usage", "Result", "grade", "extract_answer"}


def test_public_api_is_exported() -> None:
    assert set(ttc.__all__) >= EXPECTED_API
    for name in ttc.__all__:
        assert hasattr(ttc, name), name


def test_import_prints_api_in_fresh_interpreter() -> None:
    out = subprocess.run([sys.executable, "-c", "import ttc; print(ttc.__all__)"], capture_output=True,
                         text=True, check=True)
    assert "'solve'" in out.stdout and "'solve_batch'" in out.stdout


def test_solve_writes_a_done_trace(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    backend = ScriptedBackend(["6 * 7 = 42\nThe answer is 42."])
    result = solve("What is 6 * 7?", 500, backend=backend, store=store, seed=3, strategy="best_of_n", n=4)
    assert result.answer == "42"
    assert result.strategy == "best_of_n"
    assert result.usage.generated_tokens == 4 * len("6 * 7 = 42\nThe answer is 42.")
    record = store.get_trace(result.trace_id or "")
    assert record.status == "done"
    assert record.seed == 3
    assert len(record.nodes) == 5  # the prompt and four samples
    assert sum(n.status == "selected" for n in record.nodes) == 1
    assert [e.kind for e in record.events][:1] == ["plan"]
    store.close()


def test_default_store_from_env(_isolated_store: Path) -> None:
    result = solve("2+2?", 200, backend=ScriptedBackend(["The answer is 4."]), seed=1)
    with TraceStore() as store:
        assert store.get_trace(result.trace_id or "").status == "done"
    assert _isolated_store.exists()


def test_store_false_writes_nothing(_isolated_store: Path) -> None:
    result = solve("2+2?", 200, backend=ScriptedBackend(["The answer is 4."]), store=False)
    assert result.trace_id is None
    assert not _isolated_store.exists()


def test_auto_strategy_rule() -> None:
    result = solve("2+2?", 2048, backend=ScriptedBackend(["The answer is 4."]), store=False, max_tokens=128)
    assert result.strategy == "self_consistency"


@pytest.mark.parametrize("max_tokens", [True, False, 1.5, "64", 0, -3])
def test_auto_refuses_a_max_tokens_that_is_not_a_positive_int(max_tokens: object) -> None:
    """max_tokens=True passed an isinstance(int) check and ran 16 samples of 1 token each."""
    with pytest.raises(ConfigError, match="max_tokens must be a positive int"):
        solve("2+2?", 2048, backend=ScriptedBackend(["The answer is 4."]), store=False, max_tokens=max_tokens)


def test_auto_keeps_its_round_defaults_within_the_callers_max_samples() -> None:
    """max_samples=2 left min_samples and round_size at 4, so the vote-share early stop could never fire."""
    from ttc.controller import plan_strategy

    name, opts = plan_strategy("auto", Budget(tokens=100_000), has_verifier=False, options={"max_samples": 2})
    assert name == "self_consistency"
    assert opts == {"max_samples": 2, "min_samples": 2, "round_size": 2}
    with pytest.raises(ConfigError, match="max_samples must be a positive int"):
        plan_strategy("auto", Budget(tokens=100_000), has_verifier=False, options={"max_samples": True})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "", "budget": 10}, "prompt is empty"),
        ({"prompt": "   ", "budget": 10}, "prompt is empty"),
        ({"prompt": "q", "budget": 0}, "positive"),
        ({"prompt": "q", "budget": -5}, "positive"),
        ({"prompt": "q", "budget": 10, "strategy": "nope"}, "unknown strategy 'nope'"),
        ({"prompt": "q", "budget": 10, "strategy": "best_of_n", "nn": 3}, "unknown option 'nn'"),
        ({"prompt": "q", "budget": 10, "strategy": "best_of_n", "n": 0}, "invalid options"),
    ],
)
def test_bad_input_raises_config_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        solve(backend=ScriptedBackend(["The answer is 1."]), store=False, **kwargs)  # type: ignore[arg-type]


def test_a_bad_prompt_template_is_refused_before_the_default_backend_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The template was checked after default_backend() had loaded the local models, which were never closed."""
    import ttc.session

    opened: list[object] = []

    def default_backend(**kwargs: object) -> object:
        opened.append(kwargs)
        raise AssertionError("the default backend was opened for a prompt_template that is refused")

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    with pytest.raises(ConfigError, match=r"prompt_template must contain the placeholder\(s\) \{question\}"):
        solve("2+2?", 200, store=False, prompt_template="no placeholder here")
    assert opened == []


def test_a_bad_store_is_refused_before_the_default_backend_opens(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The store opened after the embedded models had loaded, and a refused one left them unclosed."""
    import ttc.session
    from ttc.errors import StorageError

    def default_backend(**kwargs: object) -> object:
        raise AssertionError("the default backend was opened for a store that is refused")

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        solve("2+2?", 200, store=str(blocker / "t.db"))


def test_a_backend_that_fails_to_load_closes_the_store_the_call_opened(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import threading

    import ttc.session

    def default_backend(**kwargs: object) -> object:
        raise ConfigError("no model here")

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ConfigError, match="no model here"):
        solve("2+2?", 200, store=str(tmp_path / "t.db"))
    assert [t.name for t in threading.enumerate() if t.ident not in before and t.name == "ttc-trace-writer"] == []


class _ThreadNotingStore(TraceStore):
    """Notes the thread it was opened on."""

    opened_on: ClassVar[list[int]] = []

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        self.opened_on.append(threading.get_ident())
        super().__init__(url, **kwargs)


def test_asolve_loads_its_backend_and_opens_its_store_off_the_event_loop(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """Both ran on the event loop's thread: every other task of the caller stalled for the whole load (0.4-0.7 s a
    call for a 200 MB model), and asyncio.wait_for(asolve(...), 0.05) returned only after it."""
    import ttc.session
    from ttc.config import BackendSetup

    loaded_on: list[int] = []

    def default_backend(**kwargs: object) -> BackendSetup:
        loaded_on.append(threading.get_ident())
        return BackendSetup(backend=ScriptedBackend(["The answer is 4."]))

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    monkeypatch.setattr(ttc.session, "TraceStore", _ThreadNotingStore)
    monkeypatch.setattr(_ThreadNotingStore, "opened_on", [])

    async def main() -> int:
        await asolve("2+2?", 200, store=str(tmp_path / "t.db"), seed=0, strategy="best_of_n", n=2)
        await ttc.asolve_batch(["2+2?", "3+3?"], 200, store=str(tmp_path / "t.db"), seed=0, strategy="best_of_n",
                               n=2)
        await ttc.asleep("Ann has 3 pens.", 200, store=str(tmp_path / "t.db"), seed=0)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(loaded_on) == len(_ThreadNotingStore.opened_on) == 3
    assert loop_thread not in loaded_on + _ThreadNotingStore.opened_on


def test_a_draft_and_a_synthesizer_load_off_the_event_loop_and_once_for_a_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loaded on the event loop's thread on a question's first use: the caller's other tasks stalled for it."""
    import ttc.session
    from ttc.config import BackendSetup

    loads: list[tuple[str, int]] = []

    def loader(kind: str) -> Callable[[], ScriptedBackend]:
        def load() -> ScriptedBackend:
            loads.append((kind, threading.get_ident()))
            time.sleep(0.05)  # long enough for every question of the batch to ask for it meanwhile
            return ScriptedBackend(["1 + 1 = 2\nThe answer is 2."])
        return load

    def default_backend(**kwargs: object) -> BackendSetup:
        return BackendSetup(backend=ScriptedBackend(["1 + 1 = 2\nThe answer is 2."]), draft_loader=loader("draft"),
                            synthesizer_loader=loader("synthesizer"))

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)

    async def main() -> int:
        await ttc.asolve_batch(["1+1?"] * 4, 400, store=False, seed=0, strategy="lookahead", concurrency=4)
        await ttc.asolve_batch(["1+1?"] * 4, 2000, store=False, seed=0, strategy="parallel_thinking", paths=2,
                               concurrency=4)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert [kind for kind, _ in loads] == ["draft", "synthesizer"]  # once each, for the four questions
    assert loop_thread not in [thread for _, thread in loads]


class Closing(ScriptedBackend):
    """Counts its closes."""

    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def wait_until_closed(model: Closing, before: set[int | None]) -> None:
    """Wait (10 s at most) for ``model`` to close and for every thread the open started since ``before`` to end:
    a caller that went away leaves the closing to the opening thread."""
    deadline = time.monotonic() + 10
    while (model.closed == 0 or [t for t in threading.enumerate() if t.ident not in before and
                                 t.name in ("ttc-trace-writer", "ttc-open", "ttc-undo")]) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.closed == 1
    assert [t.name for t in threading.enumerate() if t.ident not in before and t.name == "ttc-trace-writer"] == []


@pytest.mark.parametrize("cancels", [1, 2])
def test_asolve_cancelled_while_its_backend_loads_closes_what_the_load_opened(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path, cancels: int) -> None:
    """The load cannot be stopped: the call is cancelled at once, however many times, and the thread closes the
    backend and the store it opened once it has, so no engine or writer thread is left."""
    import ttc.session
    from ttc.config import BackendSetup

    loading, finish = threading.Event(), threading.Event()
    backend = Closing(["The answer is 4."])

    def default_backend(**kwargs: object) -> BackendSetup:
        loading.set()
        assert finish.wait(10), "the event loop never got to cancel the call"
        return BackendSetup(backend=backend)

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    before = {t.ident for t in threading.enumerate()}

    async def main() -> None:
        task = asyncio.ensure_future(asolve("2+2?", 200, store=str(tmp_path / "t.db"), strategy="best_of_n"))
        while not loading.is_set():
            await asyncio.sleep(0.001)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.01)
        assert task.done()  # cancelled while the load goes on
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert backend.closed == 0
    finish.set()
    wait_until_closed(backend, before)
    with TraceStore(str(tmp_path / "t.db"), read_only=True) as store:
        assert store.list_traces() == []  # cancelled before any question began


def test_a_draft_loading_when_its_solve_is_cancelled_is_closed_with_the_setup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The load went on in an abandoned worker thread: the setup closed before the draft joined it, and the draft
    stayed loaded."""
    import ttc.session
    from ttc.config import BackendSetup

    loading, finish = threading.Event(), threading.Event()
    draft = Closing(["1 + 1 = 2\nThe answer is 2."])

    def load_draft() -> Closing:
        loading.set()
        assert finish.wait(10), "the event loop never got to cancel the call"
        return draft

    monkeypatch.setattr(ttc.session, "default_backend", lambda **kwargs: BackendSetup(
        backend=Closing(["1 + 1 = 2\nThe answer is 2."]), draft_loader=load_draft))

    async def main() -> None:
        task = asyncio.ensure_future(asolve("1+1?", 400, store=False, strategy="lookahead"))
        while not loading.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.sleep(0.01)
        finish.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert draft.closed == 1


def test_a_session_opening_when_its_event_loop_shuts_down_is_closed_once_open(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    """asyncio.run cancels what its main coroutine left running; that cancelled the wait for the opening thread,
    and what it opened (a store's writer thread, a model) stayed open."""
    import ttc.session
    from ttc.config import BackendSetup

    loading, finish = threading.Event(), threading.Event()
    model = Closing(["The answer is 4."])

    def default_backend(**kwargs: object) -> BackendSetup:
        loading.set()
        assert finish.wait(10), "the event loop never shut down"
        return BackendSetup(backend=model)

    monkeypatch.setattr(ttc.session, "default_backend", default_backend)
    before = {t.ident for t in threading.enumerate()}

    async def main() -> None:
        left = asyncio.ensure_future(asolve("2+2?", 200, store=str(tmp_path / "t.db"), strategy="best_of_n"))
        while not loading.is_set():
            await asyncio.sleep(0.001)
        assert not left.done()

    asyncio.run(main())
    finish.set()
    wait_until_closed(model, before)


def test_nothing_configured_runs_the_embedded_mini_models(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.delenv("TTC_VLLM_URL", raising=False)
    monkeypatch.delenv("TTC_MODEL", raising=False)
    result = solve("Ann has 12 pens. She buys 7 more. How many pens now?", 400, store=False,
                   strategy="best_of_n", n=2, max_tokens=120, seed=0)
    assert result.usage.generated_tokens > 0
    assert result.answer is not None  # the mini reasoner writes "The answer is N."


def test_no_backend_and_no_mini_models_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ttc.models

    monkeypatch.delenv("TTC_VLLM_URL", raising=False)
    monkeypatch.delenv("TTC_MODEL", raising=False)
    monkeypatch.setattr(ttc.models, "_MINI_DIR", tmp_path)
    with pytest.raises(ConfigError, match="TTC_VLLM_URL"):
        solve("q", 10, store=False)


def test_backend_failure_leaves_failed_trace(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    backend = ScriptedBackend(["The answer is 1."], fail_after=1)
    with pytest.raises(BackendError, match="refused"):
        solve("q", 10_000, backend=backend, store=store, strategy="self_consistency", max_samples=8,
              round_size=2, stop_share=1.0)
    [trace] = store.list_traces()
    assert trace.status == "failed"
    record = store.get_trace(trace.id)
    assert "BackendError" in (record.error or "")
    assert len(record.nodes) == 3  # the prompt and the first round's two samples were kept
    store.close()


def test_a_failed_trace_records_what_its_run_spent(tmp_path: Path) -> None:
    """Its usage read None, though the calls before the failure had been charged to the run."""
    store = TraceStore(str(tmp_path / "t.db"))
    backend = ScriptedBackend(["The answer is 1.", "The answer is 2."], fail_after=2)  # a split vote: no stop
    with pytest.raises(BackendError, match="refused"):
        solve("q", 10_000, backend=backend, store=store, strategy="self_consistency", max_samples=8,
              round_size=2, stop_share=1.0)
    [trace] = store.list_traces()
    usage = store.get_trace(trace.id).usage
    assert usage is not None and trace.status == "failed"
    assert (usage.generated_tokens, usage.backend_calls) == (backend.stats().generated_tokens, 2)
    assert usage.generated_tokens == 4 * len("The answer is 1.") == trace.generated_tokens
    store.close()


def test_solve_batch_many_questions_concurrently(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    questions = [f"What is {i} + {i}?" for i in range(40)]
    results = solve_batch(questions, 400, backend=ScriptedBackend(guessing_responder), store=store, seed=5,
                          strategy="best_of_n", n=3, concurrency=6)
    assert len(results) == 40
    assert all(r.trace_id for r in results)
    traces = store.list_traces(limit=100)
    assert len(traces) == 40 and {t.status for t in traces} == {"done"}
    again = solve_batch(questions, 400, backend=ScriptedBackend(guessing_responder), store=False, seed=5,
                        strategy="best_of_n", n=3, concurrency=2)
    assert [r.answer for r in results] == [r.answer for r in again]
    store.close()


def test_solve_batch_raises_the_typed_error_itself(tmp_path: Path) -> None:
    """A failed batch raises its first TTCError, so `except ttc.TTCError` catches it (not an ExceptionGroup)."""
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        solve_batch(["What is 2+3?", "What is 4+4?"], 256, strategy="nope",
                    backend=ScriptedBackend(guessing_responder), store=False)
    with pytest.raises(ConfigError, match="concurrency must be an int >= 1"):
        solve_batch(["What is 2+3?"], 256, backend=ScriptedBackend(guessing_responder), store=False,
                    concurrency=0)


@pytest.mark.parametrize("scope", ["question", "batch"])
def test_a_batch_question_the_model_cannot_read_fails_the_batch_before_any_is_answered(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scope: str) -> None:
    """It failed at its turn, after the questions before it had spent their compute (and written done traces whose
    results the caller never got), and its error quoted the start of a text that did not show which question."""
    pytest.importorskip("torch")
    from ttc.backends.local import LocalBackend
    from ttc.errors import ContextLengthError
    from ttc.models import mini_model_path

    backend = LocalBackend.from_pretrained(mini_model_path("reasoner"), threads=1)
    good = ["Ann has 12 pens. She buys 7 more. How many pens does she have?"] * 2
    store = TraceStore(str(tmp_path / "t.db"))
    try:
        for bad, error, message in [
            ("Ann has 12 pens. She buys 7 more. How many pens does she have? ки", ConfigError,
             r"question 2 of the batch: .*has no token for 'и', 'к'"),
            ("Ann has 12 pens. " * 60, ContextLengthError,
             r"question 2 of the batch: its prompt of \d+ tokens leaves no room in the model's 512-position context"),
        ]:
            with pytest.raises(error, match=message):
                solve_batch([*good, bad], 4000, backend=backend, store=store, strategy="self_consistency",
                            max_samples=2, concurrency=1, budget_scope=scope, seed=0, prompt_template="{question}\n")
        assert store.list_traces() == [] and backend.stats().generated_tokens == 0
        with pytest.raises(ConfigError, match=r"every question would fail on the prompt template's own words, so "
                                              r"the run is not started: .*has no token for 'Q'"):
            solve_batch(good, 4000, backend=backend, store=store, strategy="self_consistency", max_samples=2,
                        budget_scope=scope, seed=0, prompt_template="{question}\nQ:")
    finally:
        store.close()
        anyio.run(backend.aclose)


def test_an_explicit_model_comes_before_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ttc.config import default_backend

    monkeypatch.setenv("TTC_VLLM_URL", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"model folder .*missing.* does not exist"):
        default_backend(model=tmp_path / "missing")


def test_options_are_recorded_as_read_so_the_trace_can_be_written(tmp_path: Path) -> None:
    """numpy's float32 passed validation, the question was solved, and then the trace's write failed on it."""
    np = pytest.importorskip("numpy")
    with TraceStore(str(tmp_path / "t.db")) as store:
        for temperature in (np.float32(0.5), Fraction(1, 2), Decimal("0.5")):
            result = solve("What is 1 + 1?", 64, backend=ScriptedBackend(["The answer is 2."]), store=store,
                           strategy="best_of_n", n=2, temperature=temperature)
            assert result.trace_id is not None and result.answer == "2"
            [plan] = [e for e in store.get_trace(result.trace_id).events if e.kind == "plan"]
            assert plan.payload["options"] == {"n": 2, "temperature": 0.5}


def test_problem_meta_keys_must_be_text() -> None:
    """An int key beside a str one failed the store's sort_keys after the question had been solved."""
    from ttc.types import Problem

    with pytest.raises(ConfigError, match=r"Problem\.meta must be a mapping with str keys"):
        Problem("q", meta={1: "a", "b": 2})  # type: ignore[dict-item]
    assert Problem("q", meta={"level": 3}).meta == {"level": 3}


def test_budget_type_errors() -> None:
    for limits in ({"wall_s": "5"}, {"calls": "3"}, {"calls": 2.5}, {"wall_s": True}, {"wall_s": float("inf")}):
        with pytest.raises(ConfigError, match="must be a positive"):
            Budget(**limits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a positive number"):
        Budget(wall_s=float("nan"))
    for limits in ({"tokens": 10**400}, {"wall_s": 10**400}, {"calls": 2**1024}, {"wall_s": 1e300}):
        with pytest.raises(ConfigError, match=r"must be at most 2\*\*63 - 1, got a \d+-digit number"):
            Budget(**limits)  # an OverflowError from isfinite, where it was an int past float range
    assert Budget(tokens=2**63 - 1).tokens == 2**63 - 1
    with pytest.raises(ConfigError):
        Budget()
    with pytest.raises(ConfigError):
        Budget(tokens=1.5)  # type: ignore[arg-type]
    assert Budget.of(100) == Budget(tokens=100)


def test_200_concurrent_solves_lose_no_row(tmp_path: Path) -> None:
    store = TraceStore(str(tmp_path / "t.db"))
    questions = [f"What is {i} * 3?" for i in range(200)]
    results = solve_batch(questions, 300, backend=ScriptedBackend(guessing_responder), store=store, seed=0,
                          strategy="best_of_n", n=2, concurrency=200)
    traces = store.list_traces(limit=1000)
    assert len(traces) == 200 and {t.status for t in traces} == {"done"}
    assert {r.trace_id for r in results} == {t.id for t in traces}
    assert sum(len(store.get_trace(t.id).nodes) for t in traces) == 200 * 3
    store.close()


class _SlowStartStore(TraceStore):
    """A store whose start write lands at once but is reported done late (a busy writer, a locked file)."""

    queued = False  # a start write was asked for: the call waits on it

    def queue_start_trace(self, **fields: Any) -> tuple[str, Future[None]]:
        trace_id, written = super().queue_start_trace(**fields)
        self.queued = True
        late: Future[None] = Future()
        threading.Timer(1.0, lambda: late.set_result(written.result())).start()
        return trace_id, late


def test_cancelled_while_starting_the_trace_leaves_no_running_trace(tmp_path: Path) -> None:
    store = _SlowStartStore(str(tmp_path / "t.db"))

    async def main() -> None:
        with pytest.raises(TimeoutError):  # well after the session opens, well before the start is reported
            await asyncio.wait_for(asolve("2+2?", 200, backend=ScriptedBackend(["The answer is 4."]), store=store,
                                          seed=1), 0.3)
        assert store.queued

    asyncio.run(main())
    [trace] = store.list_traces()
    assert trace.status == "failed"
    assert store.get_trace(trace.id).error == "cancelled"
    store.close()


def test_cancelled_twice_while_starting_the_trace_leaves_no_running_trace(tmp_path: Path) -> None:
    """A second task.cancel() (which an anyio shield does not stop) broke the wait for the trace's id, and the
    trace read 'running' for good."""
    store = _SlowStartStore(str(tmp_path / "t.db"))

    async def main() -> None:
        task = asyncio.ensure_future(asolve("2+2?", 200, backend=ScriptedBackend(["The answer is 4."]),
                                            store=store, seed=1))
        while not store.queued:  # the call is inside the trace's start write
            await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [trace] = store.list_traces()
    assert (trace.status, store.get_trace(trace.id).error) == ("failed", "cancelled")
    store.close()


def test_a_pooled_batch_cancelled_twice_fails_every_trace(tmp_path: Path) -> None:
    """The second cancel stopped the batch's loop of fail writes after the first: three traces read 'running'."""
    from ttc import asolve_batch

    store = TraceStore(str(tmp_path / "t.db"))

    async def main() -> None:
        task = asyncio.ensure_future(asolve_batch(
            [f"What is {j} + {j}?" for j in range(4)], 8000, strategy="self_consistency", budget_scope="batch",
            backend=ScriptedBackend(guessing_responder, delay_s=0.05), store=store, seed=1, concurrency=4))
        await asyncio.sleep(0.1)  # every trace is open and a wave's calls are out
        for _ in range(20):  # one of them lands while the traces' failures are being written
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    traces = store.list_traces()
    assert len(traces) == 4 and {(t.status, t.error) for t in traces} == {("failed", "cancelled")}
    store.close()


def test_a_cancelled_solve_closes_the_store_it_opened(tmp_path: Path) -> None:
    """Session.aclose was cancelled with the call: each cancelled solve left a writer thread and its connections."""
    import threading

    import anyio

    async def main() -> None:
        with anyio.move_on_after(0.5):  # once the store has opened (off the event loop), while the call is out
            await asolve("What is 2 + 3?", 200, strategy="best_of_n",
                         backend=ScriptedBackend(["The answer is 5."], delay_s=10), store=str(tmp_path / "t.db"))

    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        anyio.run(main)
    assert [t.name for t in threading.enumerate() if t.ident not in before and t.name == "ttc-trace-writer"] == []
    with TraceStore(str(tmp_path / "t.db"), read_only=True) as store:
        assert {t.status for t in store.list_traces()} == {"failed"}


@pytest.mark.parametrize("seed", [-1, -2, "7", 1.5, True])
def test_seed_must_be_a_non_negative_int(seed: object) -> None:
    """random.Random(-s) draws what Random(s) does: seed=-2 gave batch members 1 and 3 the same samples."""
    with pytest.raises(ConfigError, match="seed must be an int >= 0"):
        solve("What is 3 + 3?", 400, backend=ScriptedBackend(guessing_responder), store=False, seed=seed,  # type: ignore[arg-type]
              strategy="best_of_n", n=2)
    with pytest.raises(ConfigError, match="seed must be an int >= 0"):
        solve_batch(["What is 3 + 3?"] * 4, 400, backend=ScriptedBackend(guessing_responder), store=False,
                    seed=seed, strategy="best_of_n", n=3)  # type: ignore[arg-type]


class _ClosingBackend(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__(["The answer is 1."])
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("in_event_loop", [False, True])
def test_embedded_setup_closes_the_reasoner_when_the_checker_fails(monkeypatch: pytest.MonkeyPatch,
                                                                    in_event_loop: bool) -> None:
    """A checker that failed to load left the reasoner's engine open (asolve opens it inside an event loop)."""
    from ttc.backends.local import LocalBackend
    from ttc.config import embedded_setup

    reasoner = _ClosingBackend()
    loaded: list[Path] = []

    def from_pretrained(path: Path, **kwargs: object) -> ScriptedBackend:
        loaded.append(path)
        if len(loaded) == 2:
            raise ConfigError("the checker's weights are unreadable")
        return reasoner

    monkeypatch.setattr(LocalBackend, "from_pretrained", from_pretrained)

    async def in_loop() -> None:
        embedded_setup()

    with pytest.raises(ConfigError, match="checker's weights are unreadable"):
        asyncio.run(in_loop()) if in_event_loop else embedded_setup()
    assert len(loaded) == 2
    assert reasoner.closed == 1


def test_embedded_setup_keeps_the_checkers_error_when_closing_the_reasoner_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ttc.backends.local import LocalBackend
    from ttc.config import embedded_setup

    class FailingClose(ScriptedBackend):
        def close(self) -> None:
            raise BackendError("engine thread is stuck", kind="local")

    backends = iter([FailingClose(["The answer is 1."])])

    def from_pretrained(path: Path, **kwargs: object) -> ScriptedBackend:
        for backend in backends:
            return backend
        raise ConfigError("the checker's weights are unreadable")

    monkeypatch.setattr(LocalBackend, "from_pretrained", from_pretrained)
    with pytest.raises(ConfigError, match="checker's weights are unreadable") as caught:
        embedded_setup()
    assert any("engine thread is stuck" in note for note in caught.value.__notes__)


@pytest.mark.parametrize("threads", ["abc", "0", "-2", "\u00b2"])
def test_a_bad_ttc_threads_is_reported_not_taken_for_no_backend(monkeypatch: pytest.MonkeyPatch,
                                                                threads: str) -> None:
    """With only the embedded mini models to run, a wrong TTC_THREADS said "no backend is configured"."""
    pytest.importorskip("torch")
    from ttc.config import default_backend

    monkeypatch.setenv("TTC_THREADS", threads)
    with pytest.raises(ConfigError, match=r"TTC_THREADS must be an integer in \[1, 1024\]"):
        default_backend()


@pytest.mark.parametrize("missing", ["torch", "tokenizers", "safetensors"])
@pytest.mark.parametrize("contextual", [False, True])
def test_without_the_local_extra_the_bundled_models_ask_for_it(monkeypatch: pytest.MonkeyPatch, contextual: bool,
                                                              missing: str) -> None:
    """A base install ships the mini models but not the local extra's packages: what it lacks is that extra, which
    the advice for a user with no model at all mentioned only as a need of TTC_MODEL; and where torch alone was
    installed, loading a model raised the tokenizers' ImportError as a traceback."""
    from ttc.config import default_backend

    for name in ("TTC_VLLM_URL", "TTC_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ConfigError, match=rf"the bundled mini models need {missing} to run in process: "
                                          r"`pip install 'ttc-engine\[local\]'`"):
        default_backend(contextual=contextual)


@pytest.mark.parametrize("missing", ["tokenizers", "safetensors.torch"])
def test_a_model_folder_without_the_local_extras_packages_asks_for_it(monkeypatch: pytest.MonkeyPatch,
                                                                       missing: str) -> None:
    pytest.importorskip("torch")
    from ttc.config import default_backend
    from ttc.models import mini_model_path

    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ConfigError, match=r"the local engine needs the local extra: `pip install "
                                          r"'ttc-engine\[local\]'`"):
        default_backend(model=mini_model_path("reasoner"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: solve_batch("abc", 64, backend=b, store=False), "prompts must be a list of question strings"),
        (lambda b: solve_batch(None, 64, backend=b, store=False), "prompts must be a list of question strings"),
        (lambda b: solve_batch(["2+3?"], 64, backend=b, store=False, concurrency="2"),
         "concurrency must be an int >= 1"),
        (lambda b: solve_batch(["2+3?"], 64, backend=b, store=False, concurrency=1.5),
         "concurrency must be an int >= 1"),
        (lambda b: solve_batch(["2+3?"], 64, backend=b, store=False, concurrency=True),
         "concurrency must be an int >= 1"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, prompt_template="Q: {question} {foo}"),
         r"unknown placeholder\(s\) \{foo\}"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, prompt_template='{"q": "{question}"}'),
         "unknown placeholder"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, prompt_template="{question} {0}"),
         r"unknown placeholder\(s\) \{0\}"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, prompt_template=5),
         "prompt_template must be a string"),
        (lambda b: solve("2+3?", 64, backend=b, store=True), "store must be a path or database URL"),
        (lambda b: solve("2+3?", 64, backend="local", store=False), "backend must be a Backend"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, verifier="mini-checker"),
         "verifier must be an OutcomeVerifier or a ProcessVerifier"),
        (lambda b: solve("2+3? \ud800", 64, backend=b, store=False), "prompt is not valid Unicode text"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, strategy="best_of_n", n=True),
         "n: Input should be a valid integer"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, strategy="best_of_n", n="3"),
         "n: Input should be a valid integer"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, strategy="best_of_n", distinct="yes"),
         "distinct: Input should be a valid boolean"),
        (lambda b: solve("2+3?", 64, backend=b, store=False, strategy="self_consistency", min_samples=10,
                         max_samples=4), r"min_samples \(10\) is above max_samples \(4\)"),
        (lambda b: ttc.load_notes(None), "trace_id must be the sleep trace's id"),  # type: ignore[arg-type]
        (lambda b: ttc.load_notes("abcdef", store=False), "load_notes reads the notes from a trace store"),  # type: ignore[arg-type]
    ],
)
def test_arguments_of_the_wrong_kind_get_a_config_error(call: Any, message: str) -> None:
    """Each of these failed deep inside (a TypeError, a KeyError) or ran with a silently wrong reading (a string
    as one question per letter, ``n=True`` as one sample)."""
    backend = ScriptedBackend(guessing_responder)
    with pytest.raises(ConfigError, match=message):
        call(backend)
    assert backend.calls == []


def test_a_pooled_batch_caps_its_weighted_minimum_at_the_callers_max_samples() -> None:
    from ttc.controller.batch import pooled_options

    assert pooled_options("auto", {"max_samples": 4}, has_verifier=True)["min_samples"] == 4
    assert pooled_options("auto", {}, has_verifier=True)["min_samples"] == 8


def test_a_store_given_as_a_path_object_is_used(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    result = solve("What is 2+3?", 64, backend=ScriptedBackend(["The answer is 5."]), store=db,
                   strategy="best_of_n", n=1)
    with TraceStore(db, read_only=True) as store:
        assert store.get_trace(result.trace_id or "").status == "done"


def test_a_question_about_a_context_records_the_context_as_its_problems(tmp_path: Path) -> None:
    """solve and solve_batch with context= or notes= stored the bare question: `ttc traces show` showed no context,
    and one question about two contexts was one problem."""
    import sqlite3

    from ttc import Notes, Usage

    db = tmp_path / "t.db"
    first, second = "Ann has 3 pens.", "Ann has 5 pens."
    notes = Notes(context=second, text="Ann: 5", usage=Usage(), trace_id=None, model="scripted")
    question = "How many pens does Ann have?"
    answer = ScriptedBackend(["The answer is 3."])
    with TraceStore(str(db)) as store:
        ids = [solve(question, 64, backend=answer, store=store, seed=0, strategy="best_of_n", n=1,
                     context=first).trace_id,
               solve(question, 64, backend=answer, store=store, seed=0, strategy="best_of_n", n=1,
                     notes=notes).trace_id]
        for scope in ("question", "batch"):
            ids += [r.trace_id for r in solve_batch([question], 600, backend=answer, store=store, seed=0,
                                                    strategy="self_consistency", context=first,
                                                    budget_scope=scope)]  # type: ignore[arg-type]
        contexts = [store.get_trace(trace_id or "").problem.context for trace_id in ids]
        assert contexts == [first, second, first, first]
        assert store.get_trace(ids[0] or "").events[0].payload["context"]["text"] == first  # the plan, as before
    with sqlite3.connect(db) as conn:
        problems = [conn.execute("SELECT problem_id FROM traces WHERE id = ?", (i,)).fetchone()[0] for i in ids]
    assert problems[0] != problems[1]  # one question about two contexts is two problems
    assert problems[2] == problems[3] != problems[0]  # a batch's question has its index


def _failing() -> ScriptedBackend:
    return ScriptedBackend(["The answer is 1."], fail_after=0)


@pytest.mark.parametrize(("call", "error"), [
    (lambda: solve("q", 500, backend=_failing(), store=False, strategy="best_of_n", n=2), BackendError),
    (lambda: solve_batch(["q", "r"], 500, backend=_failing(), store=False, strategy="best_of_n", n=2), BackendError),
    (lambda: ttc.sleep("Meg has 3 cups.", 500, backend=_failing(), store=False, n=2, max_tokens=50), BackendError),
    (lambda: solve("q", 500, backend=_failing(), store=False, strategy="nope"), ConfigError),
])
def test_an_error_from_a_blocking_call_does_not_chain_the_event_loop_probe(call: Any, error: type[Exception]) -> None:
    """Every error out of solve, solve_batch and sleep carried "RuntimeError: no running event loop" as its context,
    and its traceback read "During handling of the above exception, another exception occurred"."""
    with pytest.raises(error) as caught:
        call()
    chained: BaseException | None = caught.value
    while chained is not None:
        assert not isinstance(chained, RuntimeError), chained
        chained = chained.__context__
    assert "no running event loop" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.anyio
@pytest.mark.parametrize("call", [
    lambda: solve("q", 100, backend=ScriptedBackend(["The answer is 1."]), store=False),
    lambda: solve_batch(["q"], 100, backend=ScriptedBackend(["The answer is 1."]), store=False),
    lambda: ttc.sleep("Meg has 3 cups.", 100, backend=ScriptedBackend(["The answer is 1."]), store=False),
])
async def test_a_blocking_call_inside_an_event_loop_says_what_to_await(call: Any) -> None:
    with pytest.raises(ConfigError, match=r"cannot run inside a running event loop: await asolve\(\.\.\.\), "
                                          r"asolve_batch\(\.\.\.\) or asleep\(\.\.\.\)") as caught:
        call()
    assert caught.value.__context__ is None
