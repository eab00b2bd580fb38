"""A batch of questions answered by tree searches under one shared budget (``budget_scope="batch"``).

Where ``auto`` would search a question's steps (a process verifier is configured), or a tree search is named, the
batch controller grants searches rather than samples (``ttc.controller.batch.search_wave``). Every question first
gets one search sized for an even share of the batch. A search spends what its solutions need, often far less
than its grant (REBASE with different children spends a third to a half of it on the mini models), and the rest
stays in the pool. A question whose complete solutions all give one answer is then decided; the others, least
settled first, get another search, grown from the same prompt node with seeds of their own, while the pool affords
its whole grant, or what the pool has left where that is at least its even share (a fresh search:
growing the first one's tree again from the leaves it dropped solved fewer; docs/mini_models.md). Under ``auto``
each further search has twice the grant of the one before and is what ``auto`` runs with that budget (a wider
REBASE on the embedded default, where a wider search found more than another of the same width;
docs/mini_models.md). A named search keeps its options and its grant. A question's answer is the verifier-weighted
vote over the complete solutions of all its searches. Waves are barriers and a grant depends only
on what the searches found, so a seeded batch spends the same way at any concurrency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from ttc.concurrency import bounded_gather
from ttc.controller.batch import Grant, Pool, SearchStanding, check_bought, search_wave
from ttc.session import QuestionRun, Session, fail_batch, guarded
from ttc.strategies.tree import SearchTree, StepNode, TreeSearch, TreeSelection, choose_leaves
from ttc.types import BUDGET_LIMIT, Budget, Problem, Result
from ttc.verifiers.answer import normalize_answer
from ttc.verifiers.vote import majority_vote, vote_weights

MAX_SEARCHES = 4
"""The most searches one question of a pooled batch gets: under ``auto`` its grants are then 1, 2, 4 and 8 even
shares."""

Planner = Callable[[int | None], TreeSearch[Any]]
"""The search a grant of tokens buys (``None``: the batch has no token limit)."""


class _Searcher:
    """One member of the batch: its trace, the complete solutions of its searches so far, and whether it could
    still use another search."""

    def __init__(self, index: int, run: QuestionRun, planner: Planner, first_tokens: int | None,
                 growth: int) -> None:
        self.index = index
        self.run = run
        self.planner = planner
        self.first_tokens = first_tokens  # its even share: the least grant a further search may take
        self.next_tokens = first_tokens
        self.growth = growth
        self.searches = 0
        self.root: StepNode | None = None
        self.finished: list[StepNode] = []
        self.leftover: list[StepNode] = []
        self.rounds = 0
        self.open = True
        self.done = False

    async def search(self, grant: Grant, wave: int) -> None:
        run = self.run
        runner = self.planner(grant.tokens)
        run.recorder.event("grant", {"wave": wave, "tokens": grant.tokens, "calls": grant.calls,
                                     "options": runner.options.model_dump()})
        before = run.meter.usage().generated_tokens
        run.meter.allow(tokens=grant.tokens, calls=grant.calls)
        tree = await SearchTree.open(run.problem, run.meter, run.ctx, runner.options, root=self.root,
                                     earlier=self.finished)
        self.root = tree.root
        tree.rounds = self.rounds
        self.leftover += await runner.grow(tree)
        self.finished += tree.finished
        self.rounds = tree.rounds
        self.searches += 1
        if self.next_tokens is not None:
            self.next_tokens *= self.growth
        if self.unanimous():
            self._stop("decided")
        elif self.searches >= MAX_SEARCHES:
            self._stop("max_searches")
        elif run.meter.usage().generated_tokens == before:
            self._stop("budget")

    def unanimous(self) -> bool:
        """Whether every complete solution that states an answer states the same one (at least one does). Not the
        weighted margin: a solution its verifier scores 0 weighs nothing there, yet gives another answer."""
        return len({key for n in self.finished if n.answer is not None and (key := normalize_answer(n.answer))}) == 1

    def margin(self) -> float:
        """The weighted vote's leader's lead over the runner-up, as a share of the vote (1.0: all agree)."""
        answers = [n.answer for n in self.finished]
        return majority_vote(answers, vote_weights([n.known_score for n in self.finished], answers)).margin

    def standing(self) -> SearchStanding:
        return SearchStanding(index=self.index, searches=self.searches, cap=MAX_SEARCHES, open=self.open,
                              margin=self.margin() if self.finished else 0.0, next_tokens=self.next_tokens,
                              least_tokens=self.first_tokens)

    async def finish(self, select: TreeSelection) -> Result:
        if self.open:
            self._stop("batch_budget")
        prompt_tokens = 0 if self.root is None else len(self.root.prefix)
        found = choose_leaves(self.run.ctx, prompt_tokens, self.finished, self.leftover, select)
        result = await self.run.finish(found)
        self.done = True
        return result

    def _stop(self, reason: str) -> None:
        self.open = False
        self.run.recorder.event("stop", {"reason": reason, "searches": self.searches,
                                         "solutions": len(self.finished)})


async def solve_searches(problems: Sequence[Problem], budget: Budget, session: Session, *, strategy: str,
                         planner: Planner, share: int | None, growth: int, seeds: Sequence[int],
                         plan: Mapping[str, object], concurrency: int) -> list[Result]:
    """Answer ``problems`` with the searches ``planner`` sizes, spending at most ``budget`` for all of them together;
    results in input order. A question's first grant is ``share`` tokens (the batch's even share), and each further
    one ``growth`` times the one before."""
    first = planner(share)
    pool = Pool(budget)
    # The most a question's searches may be granted together; its trace records the batch's budget, the only one
    # its caller set (each grant then sets what its meter lets through).
    cap = None if share is None else min(BUDGET_LIMIT, share * sum(growth**k for k in range(MAX_SEARCHES)))
    members: list[_Searcher] = []
    try:
        for index, (problem, seed) in enumerate(zip(problems, seeds, strict=True)):
            run = await QuestionRun.start(problem, budget, session, strategy=strategy,
                                          options=first.options.model_dump(), seed=seed,
                                          plan={**plan, "max_searches": MAX_SEARCHES, "growth": growth,
                                                "question_cap": cap},
                                          started=pool.started)
            run.meter.allow(tokens=cap, calls=budget.calls)
            members.append(_Searcher(index, run, planner, share, growth))
        wave = 0
        while grants := search_wave([m.standing() for m in members], pool):
            await bounded_gather([partial(guarded, members[i].run, partial(members[i].search, g, wave))
                                  for i, g in grants.items()], concurrency)
            pool.settle(m.run.meter.usage() for m in members)
            wave += 1
        check_bought(pool, (m.run.meter.usage() for m in members))
        return [await m.finish(first.options.select) for m in members]
    except BaseException as exc:
        await fail_batch([m.run for m in members if not m.done], exc)
        raise


__all__ = ["MAX_SEARCHES", "Planner", "solve_searches"]
