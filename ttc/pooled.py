"""A batch of questions answered under one shared budget (``solve_batch(..., budget_scope="batch")``).

Where ``auto`` would search a question's steps, or a tree search is named, the batch is a batch of searches
(``ttc.pooled_search``). Otherwise each question runs self-consistency, but the rounds are granted by the batch
controller (``ttc.controller.batch``) rather than by a budget of its own: what an easy question does not spend
(its vote settles in the first round) is spent on the questions whose votes are still split. Every question keeps
its own trace, seed and usage; the trace's budget is the batch's, its ``plan`` event says it shared it (with
``question_cap``, the most tokens the question alone could be granted) and each ``grant`` event records a round
the controller gave it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ttc.concurrency import bounded_gather
from ttc.controller.batch import (
    Pool,
    Standing,
    check_affordable,
    check_affordable_search,
    check_bought,
    first_wave,
    next_wave,
    pooled_options,
)
from ttc.controller.per_question import plan_strategy
from ttc.errors import ConfigError
from ttc.pooled_search import Planner, solve_searches
from ttc.session import QuestionRun, Session, check_prompt, fail_batch, guarded
from ttc.strategies.base import make_strategy, strategy_class, strategy_names
from ttc.strategies.beam import BeamOptions
from ttc.strategies.rebase import RebaseOptions
from ttc.strategies.sampling import check_selection, resolve_selection
from ttc.strategies.self_consistency import SelfConsistencyOptions
from ttc.strategies.tree import NO_PROCESS_VERIFIER, TreeSearch
from ttc.strategies.vote_rounds import VoteRounds
from ttc.types import BUDGET_LIMIT, Budget, Problem, Result

STRATEGY = "self_consistency"


class _Question:
    """One member of the batch: its trace, its vote so far, and whether it could still use a round."""

    def __init__(self, index: int, run: QuestionRun, rounds: VoteRounds, options: SelfConsistencyOptions) -> None:
        self.index = index
        self.run = run
        self.rounds = rounds
        self.options = options
        self.open = True
        self.finished = False

    async def draw(self, samples: int, wave: int) -> None:
        self.run.recorder.event("grant", {"wave": wave, "samples": samples})
        came = await self.rounds.extend(self.run.meter, samples)
        opts = self.options
        if not came:
            self._stop("budget")
        elif self.rounds.decided(min_samples=opts.min_samples, stop_share=opts.stop_share,
                                 max_samples=opts.max_samples):
            self._stop("decided", share=self.rounds.share)
        elif self.rounds.drawn >= opts.max_samples:
            self._stop("max_samples")

    def standing(self) -> Standing:
        return Standing(index=self.index, drawn=self.rounds.drawn, cap=self.options.max_samples, open=self.open,
                        margin=self.rounds.margin())

    def close_unfinished(self) -> None:
        """The batch's budget ran out while this question could still have used more."""
        if self.open:
            self._stop("batch_budget")

    def _stop(self, reason: str, **extra: Any) -> None:
        self.open = False
        self.run.recorder.event("stop", {"reason": reason, "samples": self.rounds.drawn, **extra})


def check_pooled(budget: Budget, questions: int, *, strategy: str, options: Mapping[str, object],
                 session: Session | None = None) -> None:
    """Refuse (ConfigError) what cannot share a batch budget before any question runs: a strategy that can neither
    grow a vote nor search, an invalid option, or a budget too small to give each question a start.

    Without a ``session`` (before one is opened) ``auto`` may still go either way, so its options are checked
    against both kinds and the budget is left to the check with a session, which knows the setup.
    """
    if session is not None:
        if plan_pooled(strategy, budget, questions, session, options) is None:
            sampling_options(budget, questions, strategy=strategy, options=options,
                             has_verifier=session.setup.verifier is not None)
        return
    if strategy in search_names():
        check_affordable_search(budget, questions, make_strategy(strategy, options).options.max_step_tokens)
    elif strategy == "auto" and set(options) <= SEARCH_OPTIONS and not set(options) <= SAMPLING_OPTIONS:
        return
    elif strategy == "auto":
        _voting(strategy, options, has_verifier=False)
    else:
        sampling_options(budget, questions, strategy=strategy, options=options)


def sampling_options(budget: Budget, questions: int, *, strategy: str, options: Mapping[str, object],
                     has_verifier: bool | None = None) -> SelfConsistencyOptions:
    """The self-consistency options every question of a batch that pools samples runs with, refused (ConfigError)
    when the strategy cannot grow a vote, an option is invalid, the budget cannot give each question one sample,
    or the choice needs a verifier the setup lacks (``has_verifier=None``: the setup is not known yet)."""
    opts = _voting(strategy, options, has_verifier=bool(has_verifier))
    if has_verifier is not None:
        check_selection(opts.select, has_verifier=has_verifier)
    check_affordable(budget, questions, opts.max_tokens)
    return opts


def _voting(strategy: str, options: Mapping[str, object], *, has_verifier: bool) -> SelfConsistencyOptions:
    """The self-consistency options of a batch that pools samples. Under ``auto`` a refusal says that auto runs
    as self-consistency here: it named only 'self_consistency', a strategy the caller never chose."""
    try:
        opts: SelfConsistencyOptions = make_strategy(
            STRATEGY, pooled_options(strategy, options, has_verifier=has_verifier)).options
    except ConfigError as exc:
        if strategy != "auto":
            raise
        raise ConfigError(f"strategy 'auto' with budget_scope='batch' runs each question as a self-consistency vote "
                          f"grown round by round with these options, which refuses them: {exc}{_instead(options)}"
                          ) from None
    return opts


def _instead(options: Mapping[str, object]) -> str:
    """What to pass in place of the options auto's pooled votes do not take."""
    hints = []
    if "n" in options:
        hints.append("max_samples=N in place of n (the most samples one question may draw; the batch's budget "
                     "decides how many it does)")
    searching = sorted(set(options) & SEARCH_OPTIONS - SAMPLING_OPTIONS)
    if searching:
        hints.append(f"tree search options ({', '.join(searching)}) only with a process verifier (verifier=prm), "
                     "where auto searches each question's steps, and without sampling options")
    return f"; use {'; '.join(hints)}" if hints else ""


def search_names() -> list[str]:
    """The registered strategies that search a question's steps, each of which can share a batch budget."""
    return [n for n in strategy_names() if issubclass(strategy_class(n), TreeSearch)]


SEARCH_OPTIONS = frozenset(RebaseOptions.model_fields) | frozenset(BeamOptions.model_fields)
SAMPLING_OPTIONS = frozenset(SelfConsistencyOptions.model_fields)


@dataclass(frozen=True)
class SearchPlan:
    """How a pooled batch searches: the strategy, the search a grant buys, the first grant, and each next one's
    multiple of the one before."""

    strategy: str
    planner: Planner
    share: int | None
    growth: int


def plan_pooled(strategy: str, budget: Budget, questions: int, session: Session,
                options: Mapping[str, object]) -> SearchPlan | None:
    """How a pooled batch searches, where it does: a tree search named (its options at every grant, the batch's
    even share each), or ``auto`` on a setup where it would search (``ttc.controller.plan_strategy`` sizes each
    search for its grant, which doubles from the even share). ``None`` where the batch pools samples."""
    share = None if budget.tokens is None else budget.tokens // questions
    setup = session.setup

    def auto(tokens: int | None) -> tuple[str, dict[str, object]]:
        name, opts = plan_strategy("auto", budget if tokens is None else Budget(tokens=max(1, tokens)),
                                   has_verifier=setup.verifier is not None, options=options,
                                   has_prm=setup.prm is not None, solution_tokens=setup.solution_tokens,
                                   step_tokens=setup.step_tokens, distinct_children=setup.distinct_children)
        if name == "rebase" and "narrow_to_finish" not in options:
            # A search narrowed to one path it can finish looks decided (its solutions agree), so the pool would
            # give that question nothing more; the pool's next, larger search is the way to finish it (narrowed
            # searches solved 60.9% and 72.4% of 192 held-out problems at 256 and 512 tokens, against 62.0% and
            # 75.0%; docs/mini_models.md).
            opts["narrow_to_finish"] = False
        return name, opts

    if strategy == "auto":
        name, opts = auto(share)
        if name not in search_names():
            return None
        make_strategy(name, opts)  # refused here, before any trace opens, when an option is invalid

        def planner(tokens: int | None) -> TreeSearch[Any]:
            return _search(*auto(tokens))

        growth = 2
    elif strategy in search_names():
        if setup.prm is None:
            raise ConfigError(NO_PROCESS_VERIFIER)  # before any question's trace opens
        name, runner = strategy, _search(strategy, options)

        def planner(tokens: int | None) -> TreeSearch[Any]:
            return runner

        growth = 1
    else:
        return None
    first = planner(share)
    check_affordable_search(budget, questions, first.options.max_step_tokens)
    first.check_setup(setup.backend)  # such as an ETS embedder that cannot load, before any trace opens
    return SearchPlan(name, planner, share, growth)


def _search(name: str, options: Mapping[str, object]) -> TreeSearch[Any]:
    runner = make_strategy(name, options)
    assert isinstance(runner, TreeSearch)  # only search names reach here
    return runner


async def solve_pooled(problems: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                       seeds: Sequence[int], options: Mapping[str, object], concurrency: int) -> list[Result]:
    """Answer ``problems`` spending at most ``budget`` for all of them together; results in input order."""
    for problem in problems:
        check_prompt(problem.question)
    if not problems:
        return []
    plan = {"budget_scope": "batch", "batch_size": len(problems),
            "batch_budget": {"tokens": budget.tokens, "wall_s": budget.wall_s, "calls": budget.calls}}
    search = plan_pooled(strategy, budget, len(problems), session, options)
    if search is not None:
        return await solve_searches(problems, budget, session, strategy=search.strategy, planner=search.planner,
                                    share=search.share, growth=search.growth, seeds=seeds, plan=plan,
                                    concurrency=concurrency)
    opts = sampling_options(budget, len(problems), strategy=strategy, options=options,
                            has_verifier=session.setup.verifier is not None)
    pool = Pool(budget)
    # Each question's meter also holds the batch's wall limit, counted from the batch's start (not from when its
    # trace opened), so a wave stops drawing once the batch is out of time, not only the next wave. Its trace
    # records the batch's budget, the only one its caller set; the meter stops it at its own cap of samples.
    cap = min(BUDGET_LIMIT, opts.max_samples * opts.max_tokens)
    questions: list[_Question] = []
    try:
        for index, (problem, seed) in enumerate(zip(problems, seeds, strict=True)):
            run = await QuestionRun.start(problem, budget, session, strategy=STRATEGY, options=opts.model_dump(),
                                          seed=seed, plan={**plan, "question_cap": cap}, started=pool.started)
            run.meter.allow(tokens=cap, calls=None)
            try:
                rounds = VoteRounds(problem, run.ctx, opts, resolve_selection(opts.select, run.ctx))
            except BaseException as exc:  # its trace is open and not yet in `questions`: fail it here
                await fail_batch([run], exc)
                raise
            questions.append(_Question(index, run, rounds, opts))
        await bounded_gather([partial(guarded, q.run, q.rounds.open) for q in questions], concurrency)
        samples = first_wave(pool, len(questions), round_size=opts.round_size, cap=opts.max_samples,
                             max_tokens=opts.max_tokens)
        # Opening many traces can take the batch's whole wall time: then no wave starts at all.
        grants = {} if pool.out_of_time() else {q.index: samples for q in questions}
        wave = 0
        while grants:
            await bounded_gather([partial(guarded, questions[i].run, partial(questions[i].draw, k, wave))
                                  for i, k in grants.items()], concurrency)
            pool.settle(q.run.meter.usage() for q in questions)
            wave += 1
            grants = next_wave([q.standing() for q in questions], pool, round_size=opts.round_size,
                               max_tokens=opts.max_tokens)
        check_bought(pool, (q.run.meter.usage() for q in questions))
        results = []
        for q in questions:
            q.close_unfinished()
            results.append(await q.run.finish(q.rounds.finish()))
            q.finished = True
        return results
    except BaseException as exc:
        await fail_batch([q.run for q in questions if not q.finished], exc)
        raise


__all__ = ["SearchPlan", "check_pooled", "plan_pooled", "sampling_options", "search_names", "solve_pooled"]
