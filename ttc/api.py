"""The public entry points: ``solve``, ``asolve`` and ``solve_batch``, around one async core.

One question's life: validate input -> pick a strategy and its options (the controller) -> open a trace ->
run the strategy under a Meter -> write the whole tree and the result in one transaction. Any failure marks the
trace failed, with whatever nodes were recorded, before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import anyio

from ttc.backends.base import Backend, context_window
from ttc.concurrency import bounded_gather, check_concurrency
from ttc.controller import plan_strategy
from ttc.controller.per_question import bought_nothing
from ttc.errors import BackendError, ConfigError, ContextLengthError
from ttc.pooled import check_pooled, solve_pooled
from ttc.session import (
    QuestionRun,
    Session,
    StoreArg,
    VerifierArg,
    asked,
    check_prompt,
    check_prompts,
    check_seed,
    check_template_reads,
    open_off_loop,
    open_session,
    question_prompt,
)
from ttc.strategies.base import Strategy, make_strategy
from ttc.strategies.sampling import SampledOptions, check_selection
from ttc.strategies.tree import NO_PROCESS_VERIFIER, TreeSearch
from ttc.types import Budget, Notes, Problem, Result

BudgetScope = Literal["question", "batch"]

T = TypeVar("T")


async def solve_problem(problem: Problem, budget: Budget, session: Session, *, strategy: str,
                        seed: int | None, options: Mapping[str, object]) -> Result:
    """The core: run one problem end to end and record its trace."""
    check_prompt(problem.question)
    name, opts, runner = plan_runner(strategy, budget, session, options)
    checked = check_seed(seed)
    run = await QuestionRun.start(problem, budget, session, strategy=name, options=opts,
                                  seed=secrets.randbits(31) if checked is None else checked,
                                  uses_draft=runner.uses_draft, uses_synthesizer=runner.uses_synthesizer)
    try:
        found = await runner.run(problem, run.meter, run.ctx)
        if (unbought := bought_nothing(run.meter, "no answer")) is not None:
            raise unbought
        return await run.finish(found)
    except BaseException as exc:
        await run.fail(exc)
        raise


def plan_runner(strategy: str, budget: Budget, session: Session,
                options: Mapping[str, object]) -> tuple[str, dict[str, object], Strategy[Any]]:
    """The strategy the controller picks for ``budget`` on this session's setup, its options, and the strategy
    built with them: an unknown name or a bad option raises ConfigError here, before anything is spent."""
    setup = session.setup
    name, opts = plan_strategy(strategy, budget, has_verifier=setup.verifier is not None, options=options,
                               has_prm=setup.prm is not None, solution_tokens=setup.solution_tokens,
                               step_tokens=setup.step_tokens, distinct_children=setup.distinct_children)
    try:
        runner = make_strategy(name, opts)
    except ConfigError as exc:
        if strategy != "auto":
            raise
        # The message names a strategy the caller never did: say that auto chose it.
        raise ConfigError(f"strategy 'auto' chose {name!r} for this setup and these options: {exc}") from None
    if isinstance(runner, TreeSearch) and setup.prm is None:
        raise ConfigError(NO_PROCESS_VERIFIER)  # here, before a question's trace opens to fail on it
    if isinstance(runner.options, SampledOptions):  # the same for a choice by score with no verifier
        check_selection(runner.options.select, has_verifier=setup.verifier is not None)
    runner.check_setup(setup.backend)
    # The trace records the options as they were read (numpy's float32(0.5) as 0.5), which the store can write:
    # the caller's own objects failed the trace's write after the whole question had been solved.
    return name, runner.options.model_dump(mode="json", include=set(opts)), runner


async def asolve(prompt: str, budget: int | Budget, *, strategy: str = "auto", backend: Backend | None = None,
                 store: StoreArg = None, seed: int | None = None, verifier: VerifierArg = None,
                 prompt_template: str | None = None, draft: Backend | None = None, context: str | None = None,
                 notes: Notes | None = None, synthesizer: Backend | None = None, **options: object) -> Result:
    """Answer one question within ``budget`` (an int is a number of generated tokens).

    ``store=None`` writes the trace to the default store (``TTC_DB`` or the user data directory); ``False``
    writes none. ``draft`` is the small model the lookahead strategy drafts with (it must share the target's
    tokenizer); ``synthesizer`` the model that reads parallel thinking's paths and writes the answer. ``context``
    is text the question is about; ``notes`` are what ``ttc.sleep`` wrote about a context before the question came
    (their context comes with them). Extra keyword arguments are the strategy's options; unknown ones raise
    ConfigError. The backend and the store open on a worker thread, so the caller's event loop runs on while a
    model loads.
    """
    question = check_prompt(prompt)
    limits = Budget.of(budget)
    check_seed(seed)
    session = await open_off_loop(lambda: open_session(
        backend=backend, store=store, verifier=verifier, prompt_template=prompt_template, draft=draft,
        context=context, notes=notes, synthesizer=synthesizer))
    try:
        return await solve_problem(Problem(question=question), limits, session, strategy=strategy, seed=seed,
                                   options=options)
    finally:
        await session.aclose()


async def asolve_batch(prompts: Sequence[str], budget: int | Budget, *, strategy: str = "auto",
                       backend: Backend | None = None, store: StoreArg = None, seed: int | None = None,
                       verifier: VerifierArg = None, prompt_template: str | None = None,
                       concurrency: int = 8, budget_scope: BudgetScope = "question",
                       draft: Backend | None = None, context: str | None = None, notes: Notes | None = None,
                       synthesizer: Backend | None = None, **options: object) -> list[Result]:
    """Answer many questions concurrently, at most ``concurrency`` at a time, sharing one backend and store.

    ``budget_scope="question"`` gives every question ``budget``; ``"batch"`` makes ``budget`` the whole batch's,
    shared by the controller (``ttc.controller.batch``): easy questions stop early and what they leave goes to the
    questions whose votes are still split, as more samples (``ttc.pooled``) or, where ``auto`` searches or a tree
    search is named, as further searches (``ttc.pooled_search``). Question ``i`` is seeded with ``seed + i``, so a
    batch is reproducible and its members independent. With ``context`` or ``notes`` every question is about that
    one context.
    """
    questions = check_prompts(prompts)
    limits = Budget.of(budget)
    check_concurrency(concurrency)
    if check_budget_scope(budget_scope) == "batch":
        check_pooled(limits, len(questions), strategy=strategy, options=options)
    checked = check_seed(seed, len(questions))
    base_seed = secrets.randbits(30) if checked is None else checked
    session = await open_off_loop(lambda: open_session(
        backend=backend, store=store, verifier=verifier, prompt_template=prompt_template, draft=draft,
        context=context, notes=notes, synthesizer=synthesizer))
    try:
        problems = [Problem(question=q, index=i) for i, q in enumerate(questions)]
        if budget_scope == "batch":
            await check_readable(problems, session, concurrency)
            return await solve_pooled(problems, limits, session, strategy=strategy, options=options,
                                      seeds=[base_seed + i for i in range(len(problems))], concurrency=concurrency)
        plan_runner(strategy, limits, session, options)  # a bad strategy or option fails once, before any trace
        await check_readable(problems, session, concurrency)
        jobs = [
            lambda p=p: solve_problem(p, limits, session, strategy=strategy, seed=base_seed + p.index,
                                      options=options)
            for p in problems
        ]
        return await bounded_gather(jobs, concurrency)
    finally:
        await session.aclose()


async def check_readable(problems: Sequence[Problem], session: Session, concurrency: int) -> None:
    """Every question's prompt is tokenized, and measured against the model's context, before any is answered.

    A question the model cannot read (a character its vocabulary lacks, a prompt past its context) would otherwise
    fail at its turn, after the questions before it had spent their compute, and take the whole batch's results
    with it; the error names the question, which a message quoting the start of its text may not."""
    backend = session.setup.backend
    if problems:  # a template the model cannot read fails every question: that is said, not question 0
        await check_template_reads(asked(problems[0], session), session)

    async def check(problem: Problem) -> None:
        template, _ = question_prompt(asked(problem, session), session)
        try:
            ids = await backend.tokenize(template.format(question=problem.question), add_special_tokens=True)
        except BackendError as exc:  # a server's refusal keeps its kind, URL and class
            exc.add_note(f"question {problem.index} of the batch")
            raise
        except ConfigError as exc:
            raise ConfigError(f"question {problem.index} of the batch: {exc}") from None
        limit = context_window(backend)  # read after the call: a server says it once it was asked
        if limit is not None and len(ids) >= limit:
            raise ContextLengthError(f"question {problem.index} of the batch: its prompt of {len(ids)} tokens leaves "
                                     f"no room in the model's {limit}-position context; shorten it")

    await bounded_gather([functools.partial(check, p) for p in problems], concurrency)


def check_budget_scope(scope: object) -> BudgetScope:
    if scope == "question":
        return "question"
    if scope == "batch":
        return "batch"
    raise ConfigError(f"budget_scope must be 'question' (each question gets the budget) or 'batch' (the questions "
                      f"share it), got {scope!r}")


def _run_sync(func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func`` on a new event loop. The loop runs after the probe's ``except`` has ended: run inside it, every
    error the call raised carried "RuntimeError: no running event loop" as its context, and tracebacks showed it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # One message for the three blocking calls: sleep() inside a loop was told to await asolve.
        raise ConfigError("solve(), solve_batch() and sleep() block, so they cannot run inside a running event loop: "
                          "await asolve(...), asolve_batch(...) or asleep(...) there instead")
    return anyio.run(func)


def solve(prompt: str, budget: int | Budget, *, strategy: str = "auto", backend: Backend | None = None,
          store: StoreArg = None, seed: int | None = None, verifier: VerifierArg = None,
          prompt_template: str | None = None, draft: Backend | None = None, context: str | None = None,
          notes: Notes | None = None, synthesizer: Backend | None = None, **options: object) -> Result:
    """Blocking form of :func:`asolve`."""
    return _run_sync(lambda: asolve(prompt, budget, strategy=strategy, backend=backend, store=store, seed=seed,
                                    verifier=verifier, prompt_template=prompt_template, draft=draft,
                                    context=context, notes=notes, synthesizer=synthesizer, **options))


def solve_batch(prompts: Sequence[str], budget: int | Budget, *, strategy: str = "auto",
                backend: Backend | None = None, store: StoreArg = None, seed: int | None = None,
                verifier: VerifierArg = None, prompt_template: str | None = None,
                concurrency: int = 8, budget_scope: BudgetScope = "question", draft: Backend | None = None,
                context: str | None = None, notes: Notes | None = None, synthesizer: Backend | None = None,
                **options: object) -> list[Result]:
    """Blocking form of :func:`asolve_batch`."""
    return _run_sync(lambda: asolve_batch(prompts, budget, strategy=strategy, backend=backend, store=store,
                                          seed=seed, verifier=verifier, prompt_template=prompt_template,
                                          concurrency=concurrency, budget_scope=budget_scope, draft=draft,
                                          context=context, notes=notes, synthesizer=synthesizer, **options))


__all__ = ["BudgetScope", "QuestionRun", "Session", "asolve", "asolve_batch", "bounded_gather", "check_budget_scope",
           "check_concurrency", "check_seed", "open_session", "plan_runner", "solve", "solve_batch", "solve_problem"]
