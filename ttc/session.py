"""What the questions of one call share (backend, verifier, store), and one question's trace from start to end.

A question's trace is opened before its strategy spends anything and closed in one transaction with the whole tree
and the result; any failure marks it failed, with whatever nodes were recorded, before the error reaches the
caller. The single-question path (``ttc.api``) and the pooled batch (``ttc.pooled``) both go through
:class:`QuestionRun`, so neither can leave a trace that reads as running or complete when it is not.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.concurrency import in_thread, outlast_cancellation
from ttc.config import BackendSetup, default_backend, solution_scorer, with_helpers
from ttc.contexts import context_prompt_template, template_fields
from ttc.errors import ConfigError, RejectedData
from ttc.storage import TraceStore
from ttc.storage.convert import stored_meta
from ttc.storage.store import refused_finish_to_fail
from ttc.strategies.base import Context, StrategyResult
from ttc.strategies.lookahead import NO_DRAFT
from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE
from ttc.trace import TraceRecorder
from ttc.types import Budget, Notes, Problem, Result, TraceEvent, Usage, check_unicode, is_finite_number, is_int
from ttc.verifiers.base import OutcomeVerifier, ProcessVerifier

if TYPE_CHECKING:
    from ttc.backends.vllm import VLLMBackend

T = TypeVar("T")

VerifierArg = OutcomeVerifier | ProcessVerifier | None

StoreArg = TraceStore | str | os.PathLike[str] | Literal[False] | None


@dataclass
class Session:
    """Everything shared by the questions of one call: backend, verifier, prompt format, trace store."""

    setup: BackendSetup
    store: TraceStore | None
    run_id: str | None = None
    extra_events: Callable[[Problem, Result], Awaitable[Sequence[TraceEvent]]] | None = None
    plan: Mapping[str, object] = field(default_factory=dict)
    """Fields every question's plan event carries (the shared context and its notes)."""
    notes: dict[str, Notes] = field(default_factory=dict)
    """Notes written at sleep time, by the context they are about: a problem with that ``context`` is asked with
    them (an evaluation fills this from its sleep runs)."""
    context: str | None = None
    """The context every question of the session is about (``open_session``'s ``context`` or ``notes``): each
    question's trace records it as its problem's, so one question about two contexts is two problems."""
    _owned_store: bool = field(default=False, repr=False)

    async def aclose(self) -> None:
        """Close what the session opened. Shielded: a cancelled call (the usual way one ends early) left its
        store's writer thread and connections open, and a backend that failed to close skipped the store."""
        with anyio.CancelScope(shield=True):
            try:
                try:
                    await self.setup.aclose()
                finally:
                    for backend in _vllm_backends(self.setup):
                        await backend.release_loop()
            finally:
                if self._owned_store and self.store is not None:
                    await anyio.to_thread.run_sync(self.store.close)


def _vllm_backends(setup: BackendSetup) -> list[VLLMBackend]:
    """The vLLM backends ``setup`` asks (the caller's, left open, among them), whose connection pools on this event
    loop the session closes: each ``solve()`` runs on a loop of its own, and a lent backend's pool from every call
    stayed open until garbage collection. Those the setup opened are closed already, which leaves nothing to do."""
    if "ttc.backends.vllm" not in sys.modules:
        return []  # no vLLM backend was ever made: importing the client (and httpx) here would only cost time
    from ttc.backends.vllm import VLLMBackend
    from ttc.verifiers.prm import CachedPRM

    asked = [setup.backend, setup.draft, setup.synthesizer]
    asked += [v.backend for v in (setup.prm, setup.verifier) if isinstance(v, CachedPRM)]
    found: list[VLLMBackend] = []
    for backend in asked:
        if isinstance(backend, VLLMBackend) and all(backend is not seen for seen in found):
            found.append(backend)
    return found


def open_session(*, backend: Backend | None, store: StoreArg, verifier: VerifierArg,
                 prompt_template: str | None, model: str | Path | None = None, url: str | None = None,
                 draft: Backend | None = None, context: str | None = None, notes: Notes | None = None,
                 contextual: bool = False, synthesizer: Backend | None = None) -> Session:
    """Resolve backend and store once for a batch; the session closes what it opened itself.

    ``draft`` (the caller's, left open) wins over ``TTC_DRAFT_URL`` / ``TTC_DRAFT_MODEL`` and the embedded mini
    draft, which are loaded only when a strategy asks for a draft; ``synthesizer`` likewise over
    ``TTC_SYNTHESIZER_URL`` / ``TTC_SYNTHESIZER_MODEL`` and the mini synthesizer, and is asked through the generic
    synthesis templates (parallel thinking's ``synthesis_template=`` and ``path_template=`` options override them).

    With a ``context`` (and optionally the ``notes`` written about it at sleep time) every question is asked
    through the setup's context template, or through ``prompt_template``, which must then hold ``{context}``.
    A context, or ``contextual`` (a sleep run), makes the embedded default its model for contexts.

    The prompt template is checked before anything is opened, so a refused one leaves no backend loaded.
    """
    for name, given in (("backend", backend), ("draft", draft), ("synthesizer", synthesizer)):
        if given is not None and not isinstance(given, Backend):
            raise ConfigError(f"{name} must be a Backend (e.g. LocalBackend.from_pretrained(DIR)), got "
                              f"{type(given).__name__}")
    if verifier is not None and not isinstance(verifier, OutcomeVerifier | ProcessVerifier):
        raise ConfigError(f"verifier must be an OutcomeVerifier or a ProcessVerifier (e.g. load_prm("
                          f"backend, 'mini-checker') from ttc.verifiers.prm), got {type(verifier).__name__}")
    # Made before anything opens: it checks the verifier's preferred aggregation.
    stepwise = solution_scorer(verifier) if isinstance(verifier, ProcessVerifier) else None
    check_store(store)
    context, notes = check_context(context, notes)
    if prompt_template is not None and context is None:
        template_fields(prompt_template, name="prompt_template", required={"question"}, allowed={"question"})
    notes_text = None if notes is None else notes.text
    # A caller's template is filled (and so checked) before the backend loads.
    filled = None if context is None or prompt_template is None else \
        context_prompt_template(prompt_template, context, notes_text, name="prompt_template")
    # The store first: a bad path is refused before any model loads (loaded engines were left unclosed), and a
    # backend that fails to load closes the store this call opened.
    owned = not isinstance(store, TraceStore) and store is not False
    trace_store = store if isinstance(store, TraceStore) else None if store is False else TraceStore(store)
    try:
        setup = with_helpers(BackendSetup(backend=backend, owned=False)) if backend is not None else \
            default_backend(url=url, model=model, contextual=contextual or context is not None)
    except BaseException:
        if owned and trace_store is not None:
            trace_store.close()
        raise
    if draft is not None:
        setup.draft, setup.draft_loader = draft, None
    if synthesizer is not None:
        setup.synthesizer, setup.synthesizer_loader = synthesizer, None
        setup.synthesis_template, setup.path_template = SYNTHESIS_TEMPLATE, PATH_TEMPLATE
    if isinstance(verifier, ProcessVerifier):
        setup.prm, setup.verifier = verifier, stepwise
    elif verifier is not None:
        setup.verifier = verifier
    plan: dict[str, object] = {}
    if context is not None:
        setup.prompt_template = filled if filled is not None else \
            context_prompt_template(setup.context_template, context, notes_text)
        plan["context"] = context_plan(context, notes)
    elif prompt_template is not None:
        setup.prompt_template = prompt_template
    return Session(setup=setup, store=trace_store, plan=plan, context=context, _owned_store=owned)


async def open_off_loop(opener: Callable[[], Session]) -> Session:
    """The session ``opener`` opens (an ``open_session`` call), opened on a thread of its own: loading a model and
    opening a store take up to seconds, and every other task of the caller's event loop stalled for as long. A
    caller that goes away meanwhile (cancelled, interrupted, its loop shut down) leaves the thread to close what it
    opened once it has, so no engine thread or store is left open."""
    return await in_thread(opener, _close_session)


def _close_session(session: Session) -> None:
    anyio.run(session.aclose)  # on a thread of its own, which runs no event loop


def check_context(context: object, notes: object) -> tuple[str | None, Notes | None]:
    """The context questions are asked about: ``context``, or the one ``notes`` were written about."""
    if notes is not None and not isinstance(notes, Notes):
        raise ConfigError(f"notes must be the Notes that ttc.sleep returned (or ttc.load_notes(trace_id)), got "
                          f"{type(notes).__name__}")
    if notes is not None:
        check_notes(notes)
    if context is not None:
        if not isinstance(context, str) or not context.strip():
            raise ConfigError("context must be a non-empty string: the text the questions are about")
        check_unicode(context, "context")
        if notes is not None and notes.context != context:
            raise ConfigError(f"{ANOTHER_CONTEXT}: pass notes alone (their context comes with them), or the context "
                              "they were written about")
    return (notes.context if notes is not None else context), notes


ANOTHER_CONTEXT = "these notes were written about another context"


def check_notes(notes: Notes) -> None:
    """Notes built or edited by hand hold what ttc.sleep's do: a context, a text, a Usage of counts, a trace id and
    a model name. Each question's plan event carries them, so anything else failed the trace's write after the
    question was solved, or stored nonsense as the sleep cost to share out."""
    if not isinstance(notes.context, str) or not notes.context.strip():
        raise ConfigError("notes.context must be the non-empty text the notes were written about")
    check_unicode(notes.context, "notes.context")
    if not isinstance(notes.text, str):
        raise ConfigError(f"notes.text must be a string, got {type(notes.text).__name__}")
    check_unicode(notes.text, "notes.text")
    _check_origin(notes)
    _check_usage(notes.usage)


def _check_origin(notes: Notes) -> None:
    """The sleep trace and model the notes name, as each question's trace names them: strings the store writes."""
    if notes.trace_id is not None:
        if not isinstance(notes.trace_id, str):
            raise ConfigError(f"notes.trace_id must be the sleep trace's id (a string) or None, got "
                              f"{type(notes.trace_id).__name__}")
        check_unicode(notes.trace_id, "notes.trace_id")
    if not isinstance(notes.model, str):
        raise ConfigError(f"notes.model must be the name of the backend that wrote them (a string), got "
                          f"{type(notes.model).__name__}")
    check_unicode(notes.model, "notes.model")


def _check_usage(usage: object) -> None:
    """A notes' Usage holds counts: the sleep tokens of a question's plan are shared out over questions."""
    if not isinstance(usage, Usage):
        raise ConfigError(f"notes.usage must be a ttc.Usage, got {type(usage).__name__}")
    for name in (f.name for f in fields(usage) if f.name != "wall_s"):
        value = getattr(usage, name)
        if not is_int(value) or value < 0:
            raise ConfigError(f"notes.usage.{name} must be an int >= 0 (a count of what the sleep run spent), "
                              f"got {value!r}: pass the Usage that ttc.sleep returned, or leave it Usage()")
    if not is_finite_number(usage.wall_s) or usage.wall_s < 0:
        raise ConfigError(f"notes.usage.wall_s must be a finite number of seconds >= 0, got {usage.wall_s!r}")


def context_plan(context: str, notes: Notes | None) -> dict[str, object]:
    """What a question's plan event says of the context it was asked about, and of the notes it was given."""
    return {"text": context, "notes": None if notes is None else notes.text,
            "notes_trace": None if notes is None else notes.trace_id,
            "notes_model": None if notes is None else notes.model,
            "sleep_tokens": 0 if notes is None else notes.usage.generated_tokens}


def about_text(plan: Mapping[str, object]) -> str | None:
    """The context a plan's ``context`` field names, with its notes after it: what the question is about."""
    fields = plan.get("context")
    if not isinstance(fields, Mapping):
        return None
    notes = fields.get("notes")
    return f"{fields['text']}\n{notes}" if notes else str(fields["text"])


def question_prompt(problem: Problem, session: Session) -> tuple[str, dict[str, object]]:
    """The prompt template ``problem`` is asked through, and the plan fields that say so.

    A problem with its own ``context`` is asked through the setup's context template (not through a caller's
    ``prompt_template``, which has no ``{context}``), with the session's notes about that context if it has them;
    a session opened about one context asks a problem about that context (every question of ``solve(...,
    context=...)`` records it) through the session's template, and takes no problem about another.
    """
    setup = session.setup
    stored_meta(problem)  # a meta key the store keeps the context under is refused before the trace opens
    if problem.context is None or problem.context == session.context:  # the session's template holds it
        return setup.prompt_template, {}
    context, _ = check_context(problem.context, None)
    if session.context is not None:
        raise ConfigError("this session asks every question about the context it was opened with: leave out "
                          "Problem.context (or give that context), or open the session without context= and notes=")
    assert context is not None
    notes = session_notes(session, context)
    template = context_prompt_template(setup.context_template, context, None if notes is None else notes.text)
    return template, {"context": context_plan(context, notes)}


async def check_template_reads(problem: Problem, session: Session) -> None:
    """Refuse, before the run opens, a prompt template whose own words the model's tokenizer has no tokens for:
    every question would fail on it alike, each after its trace opened, and a resume would fail the same way.

    ``problem``'s prompt is tokenized as its strategy will (a vLLM backend keeps the result, so that costs no
    request later); only where that fails is the template tried with its fields left empty, so that a question
    of its own unreadable text still fails alone, as it would in the run."""
    template, _ = question_prompt(problem, session)
    backend = session.setup.backend
    try:
        await backend.tokenize(template.format(question=problem.question), add_special_tokens=True)
        return
    except ConfigError as exc:
        failure = exc
    own_context = problem.context is not None and problem.context != session.context
    words = session.setup.context_template.format(context="", notes="", question="") if own_context else \
        session.setup.prompt_template.format(question="")
    try:
        await backend.tokenize(words, add_special_tokens=True)
    except ConfigError:
        fix = ("use a model trained on questions about contexts (the setup's context template asks them)"
               if own_context else "pass a prompt template in words the model reads (prompt_template=, or "
               "--prompt-template on the command line; --prompt-template mini for the bundled mini models)")
        raise ConfigError(f"every question would fail on the {'context' if own_context else 'prompt'} template's "
                          f"own words, so the run is not started: {failure}; {fix}") from None


def session_notes(session: Session, context: str) -> Notes | None:
    """The session's notes about ``context``, checked as a caller's are: they are set by hand too, and notes keyed
    under one context but written about another were asked with it silently."""
    notes = session.notes.get(context)
    if notes is None:
        return None
    check_context(None, notes)
    if notes.context != context:
        raise ConfigError(f"{ANOTHER_CONTEXT}: session.notes[context] must be the notes written about that context "
                          "(key each by its notes.context)")
    return notes


def asked(problem: Problem, session: Session) -> Problem:
    """``problem`` as its trace records it: with the session's context, where the session has one, so the store
    and ``ttc traces show`` say what the question was about."""
    return problem if session.context is None or problem.context is not None else \
        replace(problem, context=session.context)


def check_store(store: object) -> None:
    """A store argument's type: ``True`` or a number would otherwise fail deep inside URL parsing."""
    if store is None or store is False or isinstance(store, TraceStore | str | os.PathLike):
        return
    raise ConfigError(f"store must be a path or database URL, a TraceStore, None (the default store) or False (no "
                      f"traces), got {store!r}")


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ConfigError("prompt is empty: pass the question text to solve")
    check_unicode(prompt, "prompt")
    return prompt


def check_prompts(prompts: object) -> list[str]:
    """A batch's questions: a list or tuple of strings (a lone string would be read as one question per letter)."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ConfigError(f"prompts must be a list of question strings, got {type(prompts).__name__}; use "
                          "ttc.solve for one question")
    return [check_prompt(p) for p in prompts]


SEED_LIMIT = 1 << 63
"""Seeds are stored as SQLite integers (signed 64-bit): every seed a run uses must be below this."""


def check_seed(seed: object, count: int = 1) -> int | None:
    """``None`` (draw one) or an int >= 0: ``random.Random(-s)`` draws what ``Random(s)`` does, so a negative seed
    would replay another one (and batch members ``seed + i`` would repeat each other). ``count`` questions are
    seeded ``seed`` to ``seed + count - 1``, and the last of them must fit the trace store too."""
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ConfigError(f"seed must be an int >= 0 or None (a fresh one each run), got {seed!r}")
    if seed is not None and seed + max(count, 1) - 1 >= SEED_LIMIT:
        which = f"question i is seeded seed + i, and seed {seed} + {count - 1}" if count > 1 else f"seed {seed}"
        raise ConfigError(f"{which} reaches 2**63, which the trace store cannot keep: use a smaller seed")
    return seed


@dataclass
class QuestionRun:
    """One question under way: the recorder, context and meter its strategy uses, and its trace id."""

    problem: Problem
    strategy: str
    session: Session
    recorder: TraceRecorder
    ctx: Context
    meter: Meter
    trace_id: str | None
    failure: BaseException | None = None
    """The error this question's own work raised, where a batch runs several questions' work together."""

    @classmethod
    async def start(cls, problem: Problem, budget: Budget, session: Session, *, strategy: str,
                    options: Mapping[str, object], seed: int,
                    plan: Mapping[str, object] | None = None, uses_draft: bool = False,
                    uses_synthesizer: bool = False, prompt_template: str | None = None,
                    started: float | None = None) -> QuestionRun:
        """Open the question's trace and record its plan; ``plan`` adds fields to the plan event.

        ``uses_draft`` and ``uses_synthesizer`` load the session's draft or synthesis model (if it has one) before
        the trace opens, so a model that fails to load leaves no trace. ``prompt_template`` replaces the one
        the problem would be asked through (a sleep run's). ``started`` (a ``time.monotonic()`` reading) is when
        the budget's wall time began, where it began before this question (its batch's start).
        """
        recorder = TraceRecorder()
        setup = session.setup
        problem = asked(problem, session)
        template, context_fields = question_prompt(problem, session)
        backend = setup.backend
        draft = await setup.load_draft() if uses_draft else None
        if uses_draft and draft is None:  # refused here, before a trace opens only to fail on it
            raise ConfigError(NO_DRAFT)
        synthesizer = await setup.load_synthesizer() if uses_synthesizer else None
        trace_id = None
        if session.store is not None:
            trace_id = await _start_trace(session.store, recorder, problem=problem, strategy=strategy,
                                          budget=budget, backend=backend.name, seed=seed, run_id=session.run_id)
        recorder.event("plan", {"strategy": strategy, "options": dict(options), "seed": seed,
                                "budget": {"tokens": budget.tokens, "wall_s": budget.wall_s, "calls": budget.calls},
                                **session.plan, **context_fields, **(plan or {})})
        ctx = Context(backend=backend, recorder=recorder, rng=random.Random(seed), verifier=setup.verifier,
                      prm=setup.prm, prompt_template=prompt_template or template, draft=draft,
                      synthesizer=synthesizer, about=about_text({**session.plan, **context_fields}),
                      synthesis_template=setup.synthesis_template, path_template=setup.path_template)
        return cls(problem=problem, strategy=strategy, session=session, recorder=recorder, ctx=ctx,
                   meter=Meter(budget, started=started), trace_id=trace_id)

    async def finish(self, found: StrategyResult) -> Result:
        """Write the whole tree and the result in one transaction, and return the result."""
        result = Result(answer=found.answer, text=found.text, score=found.score, strategy=self.strategy,
                        usage=self.meter.usage(), trace_id=self.trace_id, candidates=found.candidates)
        store = self.session.store
        if store is not None and self.trace_id is not None:
            extra = await self.session.extra_events(self.problem, result) if self.session.extra_events else ()
            for event in extra:  # recorded now, so that each carries the time it was made (a grade at the end)
                self.recorder.event(event.kind, event.payload, node_id=event.node_id)
            try:
                await store.afinish_trace(self.trace_id, result=result, nodes=self.recorder.nodes(),
                                          events=self.recorder.events())
            except RejectedData as refused:  # every caller fails the trace with it next (``fail``)
                told = refused_finish_to_fail(refused)
                if told is refused:
                    raise
                raise told from refused.__cause__
        return result

    async def fail(self, exc: BaseException) -> None:
        """Mark the trace failed with what was recorded so far (shielded: a cancellation cannot skip it).

        Where that write fails too (the disk is full, the database locked), ``exc`` stays the error the caller
        sees, with a note that the trace still reads 'running': the first failure is the one to fix.
        """
        await _fail_runs([(self, exc)])


async def guarded(run: QuestionRun, work: Callable[[], Awaitable[T]]) -> T:
    """One piece of ``run``'s work in a batch; an error it raises is remembered as that question's own."""
    try:
        return await work()
    except BaseException as exc:
        run.failure = exc
        raise


async def fail_batch(unfinished: Sequence[QuestionRun], exc: BaseException) -> None:
    """Fail the unfinished traces of a batch that stopped on ``exc``: the question whose work raised it gets the
    error and the others read 'cancelled', as in a batch of separate questions; an error of the batch itself (no
    question's own) goes to every one."""
    owner = next((run for run in unfinished if run.failure is exc), None)
    await _fail_runs([(run, exc if owner is None or run is owner else asyncio.CancelledError())
                      for run in unfinished])


async def _fail_runs(failures: Sequence[tuple[QuestionRun, BaseException]]) -> None:
    """Mark each run's trace failed with its error. Every write is queued before any is waited for, and the waits
    outlast further cancellations: a second ``task.cancel()`` (which an anyio shield does not stop) cut a batch's
    loop short and left the rest of its traces 'running'.

    Where a write fails too (the disk is full, the database locked), the run's error stays the one the caller
    sees, with a note that its trace still reads 'running': the first failure is the one to fix.
    """
    queued: list[tuple[QuestionRun, BaseException, Future[None]]] = []
    for run, exc in failures:
        store, trace_id = run.session.store, run.trace_id
        if store is None or trace_id is None:
            continue
        try:
            queued.append((run, exc, store.queue_fail_trace(trace_id, error=_failure_text(exc),
                                                            nodes=run.recorder.nodes(), events=run.recorder.events(),
                                                            usage=run.meter.usage())))
        except Exception as cleanup:
            _note_still_running(exc, trace_id, cleanup)
    for run, exc, future in queued:
        try:
            await outlast_cancellation(asyncio.wrap_future(future))
        except Exception as cleanup:
            _note_still_running(exc, run.trace_id, cleanup)


def _note_still_running(exc: BaseException, trace_id: str | None, cleanup: Exception) -> None:
    exc.add_note(f"trace {trace_id} could not be marked failed either, so it still reads 'running': {cleanup}")


def _failure_text(exc: BaseException) -> str:
    return "cancelled" if _interrupted(exc) else f"{type(exc).__name__}: {exc}"


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` only stopped the run (a cancellation or Ctrl-C), also where a task group wraps those:
    its 'unhandled errors in a TaskGroup' says nothing of what happened."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(inner) for inner in exc.exceptions)
    return isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)


async def _start_trace(store: TraceStore, recorder: TraceRecorder, **fields: Any) -> str:
    """Start a trace; a cancellation while its row is being written marks that row failed, never 'running'.

    The start is queued here, not in a task of its own: the id is known before anything can be cancelled (a loop
    torn down by an interrupt cancels every task, a start task too, and its id was then lost with the row written).
    On a cancellation the write is waited for (through further cancellations too) and the trace failed before the
    cancellation goes on.
    """
    trace_id, written = store.queue_start_trace(**fields)
    start = asyncio.wrap_future(written)
    try:
        await asyncio.shield(start)
        return trace_id
    except asyncio.CancelledError as exc:
        try:
            await outlast_cancellation(start)
        except Exception:
            raise exc from None  # the row was never written: there is nothing to fail
        try:
            await outlast_cancellation(asyncio.wrap_future(store.queue_fail_trace(
                trace_id, error=_failure_text(exc), nodes=recorder.nodes(), events=recorder.events())))
        except Exception as cleanup:
            _note_still_running(exc, trace_id, cleanup)
        raise


__all__ = [
    "SEED_LIMIT",
    "QuestionRun",
    "Session",
    "StoreArg",
    "VerifierArg",
    "check_context",
    "check_notes",
    "check_prompt",
    "check_prompts",
    "check_seed",
    "check_store",
    "check_template_reads",
    "check_unicode",
    "context_plan",
    "fail_batch",
    "guarded",
    "open_off_loop",
    "open_session",
    "question_prompt",
    "session_notes",
]
