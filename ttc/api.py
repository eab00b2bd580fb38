"""The public entry points: ``solve``, ``asolve`` and ``solve_batch``, around one async core.

One question's life: validate input -> pick a strategy and its options (the controller) -> open a trace ->
run the strategy under a Meter -> write the whole tree and the result in one transaction. Any failure marks the
trace failed, with whatever nodes were recorded, before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.config import BackendSetup, default_backend
from ttc.controller import plan_strategy
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.strategies.base import Context, Strategy, make_strategy
from ttc.trace import TraceRecorder
from ttc.types import Budget, Problem, Result, TraceEvent, is_int
from ttc.verifiers.base import OutcomeVerifier, ProcessVerifier, StepwiseOutcome

VerifierArg = OutcomeVerifier | ProcessVerifier | None

StoreArg = TraceStore | str | Literal[False] | None
T = TypeVar("T")


@dataclass
class Session:
    """Everything shared by the questions of one call: backend, verifier, prompt format, trace store."""

    setup: BackendSetup
    store: TraceStore | None
    run_id: str | None = None
    extra_events: Callable[[Problem, Result], Awaitable[Sequence[TraceEvent]]] | None = None
    _owned_store: bool = field(default=False, repr=False)

    async def aclose(self) -> None:
        await self.setup.aclose()
        if self._owned_store and self.store is not None:
            await anyio.to_thread.run_sync(self.store.close)


def open_session(*, backend: Backend | None, store: StoreArg, verifier: VerifierArg,
                 prompt_template: str | None, model: str | Path | None = None, url: str | None = None) -> Session:
    """Resolve backend and store once for a batch; the session closes what it opened itself.

    The prompt template is checked before anything is opened, so a refused one leaves no backend loaded.
    """
    if prompt_template is not None and "{question}" not in prompt_template:
        raise ConfigError("prompt_template must contain the placeholder {question}")
    setup = BackendSetup(backend=backend, owned=False) if backend is not None else default_backend(url=url,
                                                                                                 model=model)
    if isinstance(verifier, ProcessVerifier):
        setup.prm = verifier
        setup.verifier = StepwiseOutcome(verifier)
    elif verifier is not None:
        setup.verifier = verifier
    if prompt_template is not None:
        setup.prompt_template = prompt_template
    owned = not isinstance(store, TraceStore) and store is not False
    trace_store = store if isinstance(store, TraceStore) else None if store is False else TraceStore(store)
    return Session(setup=setup, store=trace_store, _owned_store=owned)


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ConfigError("prompt is empty: pass the question text to solve")
    return prompt


def check_seed(seed: object) -> int | None:
    """``None`` (draw one) or an int >= 0: ``random.Random(-s)`` draws what ``Random(s)`` does, so a negative seed
    would replay another one (and batch members ``seed + i`` would repeat each other)."""
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ConfigError(f"seed must be an int >= 0 or None (a fresh one each run), got {seed!r}")
    return seed


async def solve_problem(problem: Problem, budget: Budget, session: Session, *, strategy: str,
                        seed: int | None, options: Mapping[str, object]) -> Result:
    """The core: run one problem end to end and record its trace."""
    check_prompt(problem.question)
    name, opts = plan_strategy(strategy, budget, has_verifier=session.setup.verifier is not None,
                               options=options)
    runner: Strategy[Any] = make_strategy(name, opts)
    checked = check_seed(seed)
    seed = secrets.randbits(31) if checked is None else checked
    recorder = TraceRecorder()
    backend = session.setup.backend
    trace_id = None
    if session.store is not None:
        trace_id = await _start_trace(session.store, recorder, problem=problem, strategy=name, budget=budget,
                                      backend=backend.name, seed=seed, run_id=session.run_id)
    recorder.event("plan", {"strategy": name, "options": dict(opts), "seed": seed,
                            "budget": {"tokens": budget.tokens, "wall_s": budget.wall_s, "calls": budget.calls}})
    ctx = Context(backend=backend, recorder=recorder, rng=random.Random(seed), verifier=session.setup.verifier,
                  prm=session.setup.prm, prompt_template=session.setup.prompt_template)
    meter = Meter(budget)
    try:
        found = await runner.run(problem, meter, ctx)
        result = Result(answer=found.answer, text=found.text, score=found.score, strategy=name,
                        usage=meter.usage(), trace_id=trace_id, candidates=found.candidates)
        if session.store is not None and trace_id is not None:
            extra = await session.extra_events(problem, result) if session.extra_events else ()
            await session.store.afinish_trace(trace_id, result=result, nodes=recorder.nodes(),
                                              events=[*recorder.events(), *extra])
        return result
    except BaseException as exc:
        if session.store is not None and trace_id is not None:
            await _mark_failed(session.store, trace_id, exc, recorder)
        raise


async def _start_trace(store: TraceStore, recorder: TraceRecorder, **fields: Any) -> str:
    """Start a trace; a cancellation while its row is being written marks that row failed, never 'running'.

    The store keeps a start write it was handed even when the caller is cancelled, so the id is waited for
    (shielded) and the trace failed before the cancellation goes on.
    """
    start = asyncio.ensure_future(store.astart_trace(**fields))
    try:
        return await asyncio.shield(start)
    except asyncio.CancelledError as exc:
        with anyio.CancelScope(shield=True):
            await asyncio.wait([start])
        if not start.cancelled() and start.exception() is None:
            await _mark_failed(store, start.result(), exc, recorder)
        raise


async def _mark_failed(store: TraceStore, trace_id: str, exc: BaseException, recorder: TraceRecorder) -> None:
    message = "cancelled" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) else \
        f"{type(exc).__name__}: {exc}"
    with anyio.CancelScope(shield=True):
        await store.afail_trace(trace_id, error=message, nodes=recorder.nodes(), events=recorder.events())


async def asolve(prompt: str, budget: int | Budget, *, strategy: str = "auto", backend: Backend | None = None,
                 store: StoreArg = None, seed: int | None = None, verifier: VerifierArg = None,
                 prompt_template: str | None = None, **options: object) -> Result:
    """Answer one question within ``budget`` (an int is a number of generated tokens).

    ``store=None`` writes the trace to the default store (``TTC_DB`` or the user data directory); ``False``
    writes none. Extra keyword arguments are the strategy's options; unknown ones raise ConfigError.
    """
    question = check_prompt(prompt)
    limits = Budget.of(budget)
    check_seed(seed)
    session = open_session(backend=backend, store=store, verifier=verifier, prompt_template=prompt_template)
    try:
        return await solve_problem(Problem(question=question), limits, session, strategy=strategy, seed=seed,
                                   options=options)
    finally:
        await session.aclose()


async def asolve_batch(prompts: Sequence[str], budget: int | Budget, *, strategy: str = "auto",
                       backend: Backend | None = None, store: StoreArg = None, seed: int | None = None,
                       verifier: VerifierArg = None, prompt_template: str | None = None,
                       concurrency: int = 8, **options: object) -> list[Result]:
    """Answer many questions concurrently, at most ``concurrency`` at a time, sharing one backend and store.

    Question ``i`` is seeded with ``seed + i``, so a batch is reproducible and its members independent.
    """
    questions = [check_prompt(p) for p in prompts]
    limits = Budget.of(budget)
    check_concurrency(concurrency)
    checked = check_seed(seed)
    base_seed = secrets.randbits(30) if checked is None else checked
    session = open_session(backend=backend, store=store, verifier=verifier, prompt_template=prompt_template)
    jobs = [
        lambda i=i, q=q: solve_problem(Problem(question=q, index=i), limits, session, strategy=strategy,
                                       seed=base_seed + i, options=options)
        for i, q in enumerate(questions)
    ]
    try:
        return await bounded_gather(jobs, concurrency)
    finally:
        await session.aclose()


async def bounded_gather(jobs: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Run coroutine factories with at most ``concurrency`` in flight; results in input order.

    Only ``concurrency`` tasks exist at once (a fixed pool of workers pulls from the list), so a batch of ten
    thousand questions does not create ten thousand tasks. The first failure cancels the rest and is raised as
    itself (a ``TTCError`` stays one), not wrapped in the task group's ``ExceptionGroup``.
    """
    check_concurrency(concurrency)
    results: list[T | None] = [None] * len(jobs)
    next_index = 0
    failures: list[Exception] = []

    async def worker(scope: anyio.CancelScope) -> None:
        nonlocal next_index
        while next_index < len(jobs):
            i = next_index
            next_index += 1
            try:
                results[i] = await jobs[i]()
            except Exception as exc:
                failures.append(exc)
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(jobs))):
            tg.start_soon(worker, tg.cancel_scope)
    if failures:
        raise failures[0]
    return results  # type: ignore[return-value]


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")


def _run_sync(func: Callable[[], Awaitable[T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(func)
    raise ConfigError("solve() was called inside a running event loop: use `await asolve(...)` there instead")


def solve(prompt: str, budget: int | Budget, *, strategy: str = "auto", backend: Backend | None = None,
          store: StoreArg = None, seed: int | None = None, verifier: VerifierArg = None,
          prompt_template: str | None = None, **options: object) -> Result:
    """Blocking form of :func:`asolve`."""
    return _run_sync(lambda: asolve(prompt, budget, strategy=strategy, backend=backend, store=store, seed=seed,
                                    verifier=verifier, prompt_template=prompt_template, **options))


def solve_batch(prompts: Sequence[str], budget: int | Budget, *, strategy: str = "auto",
                backend: Backend | None = None, store: StoreArg = None, seed: int | None = None,
                verifier: VerifierArg = None, prompt_template: str | None = None,
                concurrency: int = 8, **options: object) -> list[Result]:
    """Blocking form of :func:`asolve_batch`."""
    return _run_sync(lambda: asolve_batch(prompts, budget, strategy=strategy, backend=backend, store=store,
                                          seed=seed, verifier=verifier, prompt_template=prompt_template,
                                          concurrency=concurrency, **options))


__all__ = ["Session", "asolve", "asolve_batch", "bounded_gather", "check_concurrency", "check_seed", "open_session",
           "solve", "solve_batch", "solve_problem"]
