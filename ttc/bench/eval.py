"""Batch evaluation: run a strategy over a dataset, grade every answer, write every trace, resume after a crash.

A run is a row in the store; each problem is a trace carrying a ``grade`` event. Resuming a run marks traces a
dead process left ``running`` as failed and solves exactly the problems that have no ``done`` trace yet, so an
interrupted evaluation ends with one done trace per problem: none missing, none twice. A run that a live process
on this machine still evaluates is not resumed (``TraceStore.claim_run``), this one included (``_EVALUATING``), nor
one started with other settings.

Problems about a shared context (``Problem.context``: the ``synthetic-stateful`` questions) are asked with it.
With a sleep budget, each context is first thought about once (``ttc.sleeptime``; a sleep trace in the same run)
and its questions are asked with those notes, so the notes' cost is shared by every question about the context.
A resumed run reuses the notes it wrote; the questions of a context whose sleep run failed are left undone (never
asked without the notes the run was started to use), to be solved when the run is resumed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from textwrap import shorten

from ttc.api import (
    BudgetScope,
    Session,
    bounded_gather,
    check_budget_scope,
    check_concurrency,
    check_seed,
    plan_runner,
    solve_problem,
)
from ttc.backends.base import Backend
from ttc.bench.datasets import same_dataset
from ttc.config import BackendSetup, solution_scorer
from ttc.controller.batch import UnaffordableBatch
from ttc.errors import ConfigError, NotFound, RejectedData, StorageError, TTCError
from ttc.pooled import check_pooled, solve_pooled
from ttc.session import SEED_LIMIT, check_template_reads, question_prompt
from ttc.sleeptime import SLEEP, SleepOptions, load_notes, sleep_in_session, sleep_options
from ttc.storage import TraceStore, TraceSummary
from ttc.storage.convert import problem_id
from ttc.types import BUDGET_LIMIT, CONTEXT_ROW, Budget, Problem, Result, TraceEvent, is_int
from ttc.verifiers.answer import agrade_result, gold_key
from ttc.verifiers.base import StepwiseOutcome, unscorable
from ttc.verifiers.prm import CachedPRM

SLEEP_SEED_OFFSET = 1 << 30
"""A context's sleep run draws from ``seed + SLEEP_SEED_OFFSET + i``, ``i`` the dataset row of its first question
(:func:`context_row`): apart from every question's ``seed + index``, and the same on a resumed run or a slice."""

Progress = Callable[[Problem, Result | None], None]


@dataclass(frozen=True)
class EvalReport:
    run_id: str
    total: int
    done: int
    failed: int
    correct: int
    mean_tokens: float
    wall_s: float
    trace_ids: tuple[str, ...] = field(default_factory=tuple)
    errors: tuple[str, ...] = field(default_factory=tuple)
    lasting: int = 0
    """Of this attempt's ``errors``, those a resume with the same settings would meet again (a ConfigError: the
    input's, such as a question longer than the model's context)."""
    contexts: int = 0
    """Contexts thought about at sleep time (each once, whatever number of questions it has)."""
    sleep_tokens: int = 0
    """Generated tokens of those sleep runs (the done ones: a failed run's notes reached no question), all
    together; ``mean_tokens`` counts the questions' own only."""
    unanswered: int = 0
    """Done questions whose result states no answer, counted wrong: no solution finished within the budget (a
    tree search's every path cut short) or stated one. Many of them say the budget is too small for the questions,
    not that the strategy chose badly."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.done if self.done else 0.0

    @property
    def mean_total_tokens(self) -> float:
        """Tokens per done question with the sleep runs' shared out over them (over every done question, those
        without a context too): what a question cost in all."""
        return self.mean_tokens + (self.sleep_tokens / self.done if self.done else 0.0)


async def evaluate(problems: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                   options: Mapping[str, object], seed: int, concurrency: int = 8,
                   config: Mapping[str, object] | None = None, resume: str | None = None,
                   progress: Progress | None = None, budget_scope: BudgetScope = "question",
                   sleep: Budget | None = None, sleep_opts: Mapping[str, object] | None = None,
                   opened: Callable[[str], object] | None = None) -> EvalReport:
    """Solve and grade ``problems``; with ``resume`` set, continue that run instead of starting a new one.
    ``opened`` is told the run's id once the run is open (a caller interrupted later can name it for ``--resume``).

    ``budget`` is each problem's. With ``budget_scope="batch"`` the problems still to solve share ``budget`` times
    their number (``ttc.pooled``), so a run spends the same on average and the controller decides where; a resumed
    run shares what its remaining problems would have had. A wall-time limit then applies to the batch as a whole.

    ``sleep`` is each context's budget for thinking before its questions (``sleep_opts``: the options of
    ``ttc.sleep``); the session must then be contextual (``open_session(contextual=True)``), like any session
    asking questions about contexts. Questions about a context are asked through the setup's context template
    (``session.notes`` adds the notes a caller has for a context, and a sleep budget is not spent on those); a
    run's own notes are not kept on the session.

    The store failing (locked past its busy timeout, a full disk) stops the whole run rather than failing one
    question after another: the questions in flight are cancelled as by Ctrl-C, the run is marked 'interrupted'
    where the store takes that write, and ``EvaluationStopped`` (a StorageError) is raised with the report of what
    was done, so that ``resume`` can finish the rest once the store is usable.
    """
    store = session.store
    if store is None:
        raise ConfigError("evaluation writes every trace: it needs a trace store (do not pass store=False)")
    if not problems:
        raise ConfigError("no problems to evaluate: the dataset is empty, or its offset and limit leave none")
    if any(p.gold is None or not p.gold.strip() for p in problems):
        raise ConfigError("every problem of an evaluation needs a gold answer (a non-empty one)")
    for problem in problems:
        try:
            gold_key(problem.gold or "")  # one grading cannot read fails here, before the run opens
        except ConfigError as exc:
            raise ConfigError(f"problem {problem.index}: {exc}") from None
    thinking = check_sleep(problems, sleep, sleep_opts)
    indices = [p.index for p in problems]
    if None in indices or len(set(indices)) != len(indices):
        # A problem's index is how a run knows it is done, and seeds it: two alike would count as one.
        raise ConfigError("every problem of an evaluation needs its own index (its position in the dataset): "
                          "load them with ttc.bench.datasets.load_dataset, or set Problem(index=i) for each")
    for problem in problems:
        question_prompt(problem, session)  # a context this session cannot ask about is refused before the run opens
    check_concurrency(concurrency)
    check_run_seeds(problems, seed, sleeps=sleep is not None)
    helpers: dict[str, object] = {}
    if check_budget_scope(budget_scope) == "batch":
        try:  # the budget is each question's here (the batch's is that times the problems): said so
            check_pooled(budget, 1, strategy=strategy, options=options, session=session)
        except UnaffordableBatch as short:
            raise ConfigError(short.per_question("the budget")) from None
    else:
        _, _, runner = plan_runner(strategy, budget, session, options)  # a bad option fails here, not per problem
        # The models beside the target that this strategy's answers also depend on: a resume with another one
        # would mix two setups in one run.
        if runner.uses_synthesizer:
            synthesizer = await session.setup.load_synthesizer()
            helpers["synthesizer"] = "target" if synthesizer is None else await model_identity(synthesizer)
        if runner.uses_draft and (draft := await session.setup.load_draft()) is not None:
            helpers["draft"] = await model_identity(draft)
    # Any strategy's answers may rest on the verifier (its scores, the choice among samples, a search's steps) and
    # do on the prompt the model reads: a resume with another of either would mix two setups too.
    verifier = await verifier_identity(session.setup)
    settings = {"model": await model_identity(session.setup.backend), **helpers, "verifier": verifier,
                "prompt_template": session.setup.prompt_template, **_context_settings(problems, session, sleep),
                "strategy": strategy, "options": dict(options), "seed": seed, "budget_scope": budget_scope,
                PROBLEM_COUNT: len(problems),
                "budget": [budget.tokens, budget.wall_s, budget.calls],
                "sleep": None if sleep is None else [sleep.tokens, sleep.wall_s, sleep.calls],
                "sleep_options": dict(sleep_opts or {})}
    await check_template_reads(problems[0], session)
    with _open_run(store, resume, {**(config or {}), RUN_SETTINGS: settings}, problems) as run_id:
        if opened is not None:
            opened(run_id)
        done_before = store.done_problem_indices(run_id)
        todo = [p for p in problems if p.index not in done_before]
        given_run, given_events, given_notes, given_plan = (session.run_id, session.extra_events, session.notes,
                                                            session.plan)
        session.run_id = run_id
        session.extra_events = _grade_event
        started = time.monotonic()
        errors: list[str] = []
        lasting: list[str] = []  # those of errors a resume with these settings would meet again
        before = await cache_snapshot(session.setup.backend)
        session.notes = dict(given_notes)  # this run's sleep runs add to a copy: a later run on the session starts over
        report_now = partial(summarize, store, run_id, total=len(problems), errors=errors, lasting=lasting,
                             indices={p.index for p in problems},
                             contexts={p.context for p in problems if p.context is not None} if sleep else None)
        try:
            if sleep is not None and thinking is not None:
                unthought = await think_first(problems, todo, sleep, thinking, session, seed=seed,
                                              concurrency=concurrency, errors=errors, lasting=lasting)
                for problem in todo:
                    if problem.context in unthought and progress is not None:
                        progress(problem, None)
                todo = [p for p in todo if p.context not in unthought]
            session.plan = {**given_plan, "verifier": verifier}  # each question's trace says what scored it
            await _solve_all(todo, budget, session, strategy=strategy, options=options, seed=seed,
                             concurrency=concurrency, budget_scope=budget_scope, errors=errors, lasting=lasting,
                             progress=progress)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Ctrl-C or SIGTERM: the run says so (its traces read 'cancelled'), and --resume finishes it.
            store.finish_run(run_id, status="interrupted", summary={})
            raise
        except StorageError as exc:  # the store itself failed (store_failed): the questions in flight were cancelled
            _mark_interrupted(store, run_id, exc)
            raise _stopped(exc, run_id, partial(report_now, wall_s=time.monotonic() - started)) from exc
        except Exception as exc:  # an error that is no question's own (a bug, a broken backend double)
            store.finish_run(run_id, status="failed", summary={"error": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            # The session is left as it was found: a later solve on it belongs to no run and is graded by no one.
            session.run_id, session.extra_events, session.notes, session.plan = given_run, given_events, given_notes, \
                given_plan

        hit_rate = await cache_hit_rate(session.setup.backend, before)
        report = report_now(wall_s=time.monotonic() - started)
        summary: dict[str, object] = {"accuracy": report.accuracy, "done": report.done, "failed": report.failed,
                                      "correct": report.correct, "unanswered": report.unanswered,
                                      "mean_tokens": report.mean_tokens,
                                      "prefix_cache_hit_rate": hit_rate}
        if sleep is not None:
            summary |= {"contexts": report.contexts, "sleep_tokens": report.sleep_tokens,
                        "mean_total_tokens": report.mean_total_tokens}
        try:
            store.finish_run(run_id, status="done" if not errors else "failed", summary=summary)
        except StorageError as exc:  # every problem was dealt with: only the run's own status is lost
            exc.add_note(f"run {run_id} could not be marked finished, so it reads 'running' until a solve or eval on "
                         "this machine opens the store after this process has ended (then 'interrupted': --resume "
                         f"{run_id} finishes it)")
            raise EvaluationStopped(exc, run_id, report) from exc
        return report


class EvaluationStopped(StorageError):
    """The trace store failed during an evaluation, which therefore stopped: no further trace could be kept, and
    going on would only spend the model on answers that are lost. ``report`` is what the run had done by then
    (None where the store could not be read back either), so that the caller can show it before the error."""

    def __init__(self, cause: StorageError, run_id: str, report: EvalReport | None) -> None:
        super().__init__(str(cause))
        self.run_id = run_id
        self.report = report
        for note in getattr(cause, "__notes__", ()):
            self.add_note(note)

    def __reduce__(self) -> tuple[object, ...]:
        # An exception pickles as its class called with its args (the message alone here), which this __init__
        # does not take: it is rebuilt from its parts, its notes with them, to cross a process pool.
        return (EvaluationStopped, (StorageError(str(self)), self.run_id, self.report), self.__dict__)


def store_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is the store failing (locked, unwritable, unreachable, damaged), which every later question
    would meet too, rather than a refusal of one write's data or an id it lacks: that question's own failure,
    which a resume would meet again, so stopping there would leave the rest unsolved for good."""
    return isinstance(exc, StorageError) and not isinstance(exc, NotFound | RejectedData)


def _mark_interrupted(store: TraceStore, run_id: str, failure: StorageError) -> None:
    """Mark the run 'interrupted', as Ctrl-C leaves it, if the store takes the write now; if it does not, the
    next open on this machine does so (the run's lease outlives this process), and ``failure`` says that."""
    try:
        store.finish_run(run_id, status="interrupted", summary={})
    except StorageError as cleanup:  # its first sentence: the advice is the failure's own, already given
        failure.add_note(f"run {run_id} could not be marked interrupted either ({str(cleanup).split('. ')[0]}), "
                         "so it reads 'running' until a solve or eval on this machine opens the store after this "
                         "process has ended")


def _stopped(failure: StorageError, run_id: str, report_now: Callable[[], EvalReport]) -> EvaluationStopped:
    """``failure`` as the error that stops the evaluation, with the report of what was done (read back while the
    store may still be failing: where that fails too, the error says so and carries no report)."""
    failure.add_note(f"the evaluation stopped there; once the store is usable again, --resume {run_id} solves "
                     "the problems it left")
    try:
        report: EvalReport | None = report_now()
    except StorageError as unread:
        failure.add_note(f"its report could not be read back either: {unread}")
        report = None
    return EvaluationStopped(failure, run_id, report)


async def _solve_all(todo: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                     options: Mapping[str, object], seed: int, concurrency: int, budget_scope: BudgetScope,
                     errors: list[str], lasting: list[str], progress: Progress | None) -> None:
    """Solve ``todo`` one problem at a time each (problem ``i`` seeded ``seed + i``), or as one pooled batch;
    each failure is added to ``errors``, and every problem is reported to ``progress``. A StorageError is raised
    instead: the store failing is no question's own failure, and every question after it would fail the same way
    (each after waiting out the busy timeout), so it cancels the questions in flight and starts no more."""

    async def one(problem: Problem) -> None:
        problem_seed = seed + (problem.index or 0)
        try:
            result = await solve_problem(problem, budget, session, strategy=strategy, seed=problem_seed,
                                         options=options)
        except TTCError as exc:
            if store_failed(exc):  # no question's own failure: the store's, which stops the whole evaluation
                raise
            note_failure(errors, lasting, f"problem {problem.index}", exc)
            result = None
        if progress is not None:
            progress(problem, result)

    async def pooled() -> None:
        # Each question's share, times the questions, within the largest limit a budget takes.
        shared = Budget(tokens=None if budget.tokens is None else min(BUDGET_LIMIT, budget.tokens * len(todo)),
                        wall_s=budget.wall_s,
                        calls=None if budget.calls is None else min(BUDGET_LIMIT, budget.calls * len(todo)))
        try:
            results: Sequence[Result | None] = await solve_pooled(
                todo, shared, session, strategy=strategy, options=options, concurrency=concurrency,
                seeds=[seed + (p.index or 0) for p in todo])
        except TTCError as exc:
            if store_failed(exc):
                raise
            note_failure(errors, lasting, f"the batch of {len(todo)} problems sharing one budget", exc)
            results = [None] * len(todo)
        for problem, result in zip(todo, results, strict=True):
            if progress is not None:
                progress(problem, result)

    if budget_scope == "batch" and todo:
        await pooled()
    else:
        await bounded_gather([partial(one, p) for p in todo], concurrency)


def note_failure(errors: list[str], lasting: list[str], where: str, exc: TTCError) -> None:
    """Add ``exc``'s message to ``errors``, and to ``lasting`` where a resume with the same settings would meet it
    again: a ConfigError is the input's (a question longer than the model's context, a character the model has
    no token for), not the moment's, unlike a server gone away; so is a question the verifier's context cannot
    hold."""
    message = f"{where}: {exc}"
    errors.append(message)
    if isinstance(exc, ConfigError) or unscorable(exc) is not None:  # a resume with these models meets it again
        lasting.append(message)


def check_run_seeds(problems: Sequence[Problem], seed: int, *, sleeps: bool) -> None:
    """Refuse a seed that some problem's run (or, with ``sleeps``, its context's sleep run) would take past what the
    trace store keeps; ``ttc eval`` asks before it makes a store or loads a model."""
    check_seed(seed)
    last = max((p.index or 0 for p in problems), default=0)
    highest = seed + last + (SLEEP_SEED_OFFSET if sleeps else 0)  # a context's sleep run: see the offset
    if highest >= SEED_LIMIT:
        raise ConfigError(f"problem i is seeded seed + i{' (its context at seed + 2**30 + i)' if sleeps else ''}, "
                          f"and seed {seed} reaches 2**63 at index {last} (the last), which the trace store cannot "
                          "keep: use a smaller seed")


def _context_settings(problems: Sequence[Problem], session: Session, sleep: Budget | None) -> dict[str, object]:
    """What else the questions about contexts read: the context template (not the prompt template), the sleep
    template where a sleep budget writes notes, and the notes the caller gave for their contexts. A resume with
    another of any would ask one context's questions two ways in one run."""
    contexts = {p.context for p in problems if p.context is not None}
    if not contexts:
        return {}
    settings: dict[str, object] = {
        "context_template": session.setup.context_template,
        "notes": {context: notes.text for context, notes in sorted(session.notes.items()) if context in contexts}}
    if sleep is not None:
        settings["sleep_template"] = session.setup.sleep_template
    return settings


def check_sleep(problems: Sequence[Problem], sleep: Budget | None,
                options: Mapping[str, object] | None) -> SleepOptions | None:
    """The sleep options of an evaluation, checked before anything loads: a sleep budget needs questions about
    contexts, and sleep options need a sleep budget."""
    if sleep is None:
        if options:
            raise ConfigError("sleep options need a sleep budget: give one, or leave the sleep options out")
        return None
    if not any(p.context is not None for p in problems):
        raise ConfigError("a sleep budget thinks about each context before its questions, and these problems have "
                          "none: use a dataset of questions about contexts (synthetic-stateful, or JSONL rows with "
                          "a 'context' field), or leave the sleep budget out")
    return sleep_options(dict(options or {}))


def context_row(problem: Problem) -> int:
    """The dataset row of the first question about ``problem``'s context (:data:`CONTEXT_ROW`); for problems made
    without it, the problem's own index (the first of them about the context counts)."""
    row = problem.meta.get(CONTEXT_ROW)
    return row if is_int(row) and 0 <= row <= (problem.index or 0) else problem.index or 0


async def think_first(problems: Sequence[Problem], todo: Sequence[Problem], budget: Budget, options: SleepOptions,
                      session: Session, *, seed: int, concurrency: int, errors: list[str],
                      lasting: list[str]) -> set[str]:
    """Notes about every context the questions in ``todo`` are about, into ``session.notes``: the caller's where it
    gave some (no budget is spent on those contexts), the ones this run already wrote (a resumed run) read back,
    the others from a sleep run each. Returns the contexts whose sleep run failed (each failure is added to
    ``errors``)."""
    store = session.store
    assert store is not None and session.run_id is not None
    first: dict[str, int] = {}  # each context's first question in the dataset: a resume or a slice seeds it alike
    for problem in problems:
        if problem.context is not None:
            first.setdefault(problem.context, context_row(problem))
    needed = dict.fromkeys(p.context for p in todo if p.context is not None and p.context not in session.notes)
    written: dict[str, str] = {}
    for trace in store.list_traces(run_id=session.run_id, status="done", limit=None):  # newest first
        if trace.strategy == SLEEP:
            written.setdefault(trace.question, trace.id)
    failed: set[str] = set()

    async def one(context: str) -> None:
        if context in written:
            session.notes[context] = load_notes(written[context], store=store)
            return
        try:
            session.notes[context] = await sleep_in_session(
                context, budget, session, seed=seed + SLEEP_SEED_OFFSET + first[context], sleep_template=None,
                options=options)
        except TTCError as exc:
            if store_failed(exc):
                raise
            note_failure(errors, lasting, f"sleep run on the context of problem {first[context]}", exc)
            failed.add(context)

    await bounded_gather([partial(one, context) for context in needed], concurrency)
    return failed


async def cache_snapshot(backend: Backend) -> object | None:
    """The server's prefix-cache counters, for backends that publish them (vLLM); None otherwise."""
    from ttc.backends.vllm import VLLMBackend

    if not isinstance(backend, VLLMBackend):
        return None
    try:
        return await backend.prefix_cache_snapshot()
    except TTCError:
        return None


async def cache_hit_rate(backend: Backend, before: object | None) -> float | None:
    """Share of prompt tokens the server's prefix cache served since ``before`` (None when unknown)."""
    from ttc.backends.vllm_metrics import PrefixCacheSnapshot, prefix_cache_hit_rate

    after = await cache_snapshot(backend)
    if not isinstance(before, PrefixCacheSnapshot) or not isinstance(after, PrefixCacheSnapshot):
        return None
    return prefix_cache_hit_rate(before, after)


RUN_SETTINGS = "evaluate"
"""The config key under which :func:`evaluate` keeps what decides a run's figures, so a resume is checked
against them whatever its caller stored besides."""

PROBLEM_COUNT = "problems"
"""The key of :data:`RUN_SETTINGS` under which a run keeps how many problems it was started with."""


async def model_identity(backend: Backend) -> str:
    """Which model answers: a vLLM server's served model (not its address, which may change between a run and
    its resume), else the backend's name (a local engine's model folder)."""
    from ttc.backends.vllm import VLLMBackend

    if isinstance(backend, VLLMBackend):
        return f"vllm:{(await backend.connect()).model}"
    return backend.name


async def verifier_identity(setup: BackendSetup) -> str | None:
    """Which verifier scores, as ``model_identity`` names a model: a PRM of ``load_prm`` by its preset and the
    model that serves it, another verifier by its class. None where the setup has none."""
    prm = None if setup.prm is None else await _scorer_identity(setup.prm)
    outcome = None if setup.verifier is None else await _scorer_identity(setup.verifier)
    if prm is None or outcome is None or prm == outcome:  # a PRM passed alone also scores whole solutions
        return prm or outcome
    return f"{prm} (steps), {outcome} (solutions)"


async def _scorer_identity(verifier: object) -> str:
    if isinstance(verifier, StepwiseOutcome):
        inner = await _scorer_identity(verifier.prm)
        try:
            plain = solution_scorer(verifier.prm)  # as open_session wraps a PRM passed alone
        except ConfigError:  # a preference the caller's own wrapper never reads
            plain = None
        if plain is not None and (verifier.how, verifier.delimiter) == (plain.how, plain.delimiter):
            return inner
        return f"{inner}, {verifier.how} over steps split at {verifier.delimiter!r}"
    if isinstance(verifier, CachedPRM):
        return f"PRM preset {verifier.preset.name!r} on {await model_identity(verifier.backend)}"
    kind = type(verifier)
    return f"{kind.__module__}.{kind.__qualname__}"


_EVALUATING: set[str] = set()
"""The runs this process is evaluating: one ``evaluate`` call's each, until it returns or raises. The store's lease
names this process alike for a run it evaluates now and one whose evaluation here has ended, so ``claim_run`` lets
this process take either over; a second call resuming a run the first still evaluates would fail its traces."""
_EVALUATING_LOCK = threading.Lock()


@contextmanager
def _open_run(store: TraceStore, resume: str | None, config: Mapping[str, object],
              problems: Sequence[Problem]) -> Iterator[str]:
    """The run to evaluate (a new one, or ``resume``), held as this process's while the body runs."""
    if resume is None:  # the run and its lease in one transaction: see create_run's claim
        run_id = store.create_run(kind="eval", config=config, claim=True)
        with _evaluating(run_id):
            yield run_id
        return
    run = store.get_run(resume)  # a unique prefix of the id names it too
    resume = run.id
    _check_same_settings(resume, run.config, config)
    _check_same_problems(resume, store.done_problem_ids(resume), problems)
    _check_same_count(resume, run.config.get(RUN_SETTINGS), problems)
    with _evaluating(resume):
        store.claim_run(resume)  # refused while the process that holds it still runs: its traces are not stale
        store.mark_stale_running(resume)
        yield resume


@contextmanager
def _evaluating(run_id: str) -> Iterator[None]:
    """Refuse a run this process is evaluating already (see ``_EVALUATING``), and mark it so until the body ends."""
    with _EVALUATING_LOCK:
        if run_id in _EVALUATING:
            raise ConfigError(f"run {run_id} is being evaluated by this process (an evaluate() call on it has not "
                              "returned yet): wait for it to finish or cancel it, then resume")
        _EVALUATING.add(run_id)
    try:
        yield
    finally:
        with _EVALUATING_LOCK:
            _EVALUATING.discard(run_id)


def _check_same_settings(run_id: str, stored: Mapping[str, object], given: Mapping[str, object]) -> None:
    """A resumed run must evaluate the same problems the same way, or its figures would mix two runs.

    Only where the backend lives may change (a restarted server on another port): its name is not compared.
    """
    given = _flat(json.loads(json.dumps(dict(given), default=str)))  # as the store keeps it: tuples become lists
    if RUN_SETTINGS not in stored:  # a run begun before evaluate kept its own settings: what it stored decides
        given = {key: value for key, value in given.items() if not key.startswith(f"{RUN_SETTINGS}.")}
    stored = _flat(stored)
    for flat in (stored, given):  # _check_same_count compares it, with a message of its own
        flat.pop(f"{RUN_SETTINGS}.{PROBLEM_COUNT}", None)
    for helper in (f"{RUN_SETTINGS}.{name}" for name in ("synthesizer", "draft", "verifier", "prompt_template",
                                                          "context_template", "sleep_template", "notes")):
        if helper not in stored:  # a run begun before these were recorded: its resume is not refused for them
            given.pop(helper, None)
    differ = sorted(key for key in (stored.keys() | given.keys()) - {"backend", "dataset"}
                    if stored.get(key) != given.get(key))
    if not same_dataset(stored.get("dataset"), given.get("dataset")):
        differ.insert(0, "dataset")
    if differ:
        changes = ", ".join(f"{key} {stored.get(key)!r} -> {given.get(key)!r}" for key in differ)
        raise ConfigError(f"run {run_id} was started with other settings ({changes}): resume it with the "
                          f"settings it was started with, or leave out --resume to start a new run")


def _check_same_problems(run_id: str, done: Mapping[int, str], problems: Sequence[Problem]) -> None:
    """A resume's problem at an index the run has done must be the problem done there: a done trace is matched to
    its problem by index, so another file at the same path, or an edited one, would count its answers for
    other questions. Every index the run has done must be among them too: the run's summary counts the problems
    given, so one whose rows were removed would drop its done problems from its figures without a word."""
    missing = sorted(done.keys() - {p.index for p in problems})
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        which = "index" if len(missing) == 1 else "indices"
        raise ConfigError(f"run {run_id} has done the problems at {which} {shown}, which the problems given lack: "
                          "the dataset lost rows since the run started; resume it with the rows it was started "
                          "with (the same file, --limit and --offset), or leave out --resume to start a new run")
    for problem in problems:
        if problem.index is not None and problem.index in done and done[problem.index] != problem_id(problem):
            raise ConfigError(f"run {run_id} solved another problem at index {problem.index} than this "
                              f"{problem.dataset or 'dataset'}'s ({shorten(problem.question, 60)!r}): the dataset "
                              "changed since the run started; resume it with the rows it was started with, or "
                              "leave out --resume to start a new run")


def _check_same_count(run_id: str, settings: object, problems: Sequence[Problem]) -> None:
    """A resume must give as many problems as the run was started with: rows added to its file would make a
    finished run grow, and rows removed that it had not done yet would vanish from its figures. A run begun
    before its count was recorded is not refused for it."""
    started = settings.get(PROBLEM_COUNT) if isinstance(settings, Mapping) else None
    if isinstance(started, int) and started != len(problems):
        raise ConfigError(f"run {run_id} was started with {started} problems, and {len(problems)} are given: the "
                          "dataset gained or lost rows since the run started; resume it with the rows it was "
                          "started with (the same file, --limit and --offset), or leave out --resume to start a "
                          "new run")


def _flat(config: Mapping[str, object]) -> dict[str, object]:
    """``config`` with :data:`RUN_SETTINGS` spread into ``evaluate.<name>`` keys, so a refusal names what changed."""
    flat = {key: value for key, value in config.items() if key != RUN_SETTINGS}
    settings = config.get(RUN_SETTINGS)
    if isinstance(settings, Mapping):
        flat |= {f"{RUN_SETTINGS}.{key}": value for key, value in settings.items()}
    elif settings is not None:
        flat[RUN_SETTINGS] = settings
    return flat


async def _grade_event(problem: Problem, result: Result) -> Sequence[TraceEvent]:
    if problem.gold is None:
        return ()  # a sleep run's: notes about a context have no answer to grade
    verdict = await agrade_result(result, problem.gold)
    return [TraceEvent(kind="grade", payload={"correct": verdict.correct, "predicted": verdict.predicted,
                                              "gold": problem.gold, "reason": verdict.reason})]


def summarize(store: TraceStore, run_id: str, *, total: int, wall_s: float,
              errors: Sequence[str] = (), lasting: Sequence[str] = (), indices: Set[int | None] | None = None,
              contexts: Set[str] | None = None) -> EvalReport:
    """Accuracy and cost of a run, read back from the store (so resumed runs count their earlier traces).

    Each problem counts once, by its newest done trace; with ``indices``, only those problems count. With
    ``contexts``, the newest done sleep run about each of them counts its tokens once.
    """
    wanted = (lambda index: True) if indices is None else indices.__contains__
    done: dict[int | None, TraceSummary] = {}
    slept: dict[str, int] = {}
    for trace in store.list_traces(run_id=run_id, status="done", limit=None):  # newest first
        if trace.strategy == SLEEP:
            if contexts is not None and trace.question in contexts:
                slept.setdefault(trace.question, trace.generated_tokens or 0)
        elif wanted(trace.problem_index):
            done.setdefault(trace.problem_index, trace)
    failed_indices = {t.problem_index for t in store.list_traces(run_id=run_id, status="failed", limit=None)
                      if wanted(t.problem_index)}
    correct = 0
    tokens = 0
    for summary in done.values():
        record = store.get_trace(summary.id)
        tokens += 0 if record.usage is None else record.usage.generated_tokens
        correct += any(e.kind == "grade" and e.payload.get("correct") is True for e in record.events)
    return EvalReport(run_id=run_id, total=total, done=len(done), failed=len(failed_indices - done.keys()),
                      correct=correct, mean_tokens=tokens / len(done) if done else 0.0, wall_s=wall_s,
                      trace_ids=tuple(s.id for s in done.values()), errors=tuple(errors), lasting=len(lasting),
                      contexts=len(slept),
                      sleep_tokens=sum(slept.values()), unanswered=sum(s.answer is None for s in done.values()))


__all__ = ["RUN_SETTINGS", "SLEEP_SEED_OFFSET", "EvalReport", "EvaluationStopped", "check_run_seeds", "check_sleep",
           "evaluate", "model_identity", "summarize", "think_first", "verifier_identity"]
