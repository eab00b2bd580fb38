"""A batch of questions answered under one shared budget (``solve_batch(..., budget_scope="batch")``).

Each question runs self-consistency, but the rounds are granted by the batch controller
(``ttc.controller.batch``) rather than by a budget of its own: what an easy question does not spend (its vote
settles in the first round) is spent on the questions whose votes are still split. Every question keeps its own
trace, seed and usage; the trace's ``plan`` event says it shared a batch budget and each ``grant`` event records a
round the controller gave it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from ttc.concurrency import bounded_gather
from ttc.controller.batch import Pool, Standing, check_affordable, first_wave, next_wave, pooled_options
from ttc.session import QuestionRun, Session, check_prompt
from ttc.strategies.base import make_strategy
from ttc.strategies.sampling import resolve_selection
from ttc.strategies.self_consistency import SelfConsistencyOptions
from ttc.strategies.vote_rounds import VoteRounds
from ttc.types import Budget, Problem, Result

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
                 has_verifier: bool = False) -> SelfConsistencyOptions:
    """The options every question runs with, refused (ConfigError) before anything is opened when the strategy
    cannot share a budget, an option is invalid, or the budget cannot give each question one sample."""
    opts: SelfConsistencyOptions = make_strategy(
        STRATEGY, pooled_options(strategy, options, has_verifier=has_verifier)).options
    check_affordable(budget, questions, opts.max_tokens)
    return opts


async def solve_pooled(problems: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                       seeds: Sequence[int], options: Mapping[str, object], concurrency: int) -> list[Result]:
    """Answer ``problems`` spending at most ``budget`` for all of them together; results in input order."""
    for problem in problems:
        check_prompt(problem.question)
    opts = check_pooled(budget, len(problems), strategy=strategy, options=options,
                        has_verifier=session.setup.verifier is not None)
    if not problems:
        return []
    pool = Pool(budget)
    plan = {"budget_scope": "batch", "batch_size": len(problems),
            "batch_budget": {"tokens": budget.tokens, "wall_s": budget.wall_s, "calls": budget.calls}}
    own_budget = Budget(tokens=opts.max_samples * opts.max_tokens)
    questions: list[_Question] = []
    try:
        for index, (problem, seed) in enumerate(zip(problems, seeds, strict=True)):
            run = await QuestionRun.start(problem, own_budget, session, strategy=STRATEGY,
                                          options=opts.model_dump(), seed=seed, plan=plan)
            rounds = VoteRounds(problem, run.ctx, opts, resolve_selection(opts.select, run.ctx))
            questions.append(_Question(index, run, rounds, opts))
        await bounded_gather([q.rounds.open for q in questions], concurrency)
        samples = first_wave(pool, len(questions), round_size=opts.round_size, cap=opts.max_samples,
                             max_tokens=opts.max_tokens)
        grants = {q.index: samples for q in questions}
        wave = 0
        while grants:
            await bounded_gather([partial(questions[i].draw, k, wave) for i, k in grants.items()], concurrency)
            usages = [q.run.meter.usage() for q in questions]
            pool.tokens_spent = sum(u.generated_tokens for u in usages)
            pool.calls_spent = sum(u.backend_calls for u in usages)
            wave += 1
            grants = next_wave([q.standing() for q in questions], pool, round_size=opts.round_size,
                               max_tokens=opts.max_tokens)
        results = []
        for q in questions:
            q.close_unfinished()
            results.append(await q.run.finish(q.rounds.finish()))
            q.finished = True
        return results
    except BaseException as exc:
        for q in questions:
            if not q.finished:
                await q.run.fail(exc)
        raise


__all__ = ["check_pooled", "solve_pooled"]
