"""One question's samples and their vote, grown a round at a time.

Self-consistency grows one of these until its vote is decided. The batch controller grows many at once and decides
which of them gets the next round, so the rule for "decided" and the record of each round are written once, here.
"""

from __future__ import annotations

from ttc.budget import Meter
from ttc.errors import TTCError
from ttc.strategies.base import Context, StrategyResult
from ttc.strategies.sampling import Choice, SampledOptions, choose, draw, mark_selected, record, score
from ttc.types import Candidate, Problem


class VoteRounds:
    """Samples of one question drawn in rounds, with the choice among them after each round."""

    def __init__(self, problem: Problem, ctx: Context, options: SampledOptions, how: str) -> None:
        self.problem = problem
        self.ctx = ctx
        self.options = options
        self.how = how
        self.candidates: list[Candidate] = []
        self.choice: Choice | None = None
        self._prompt: list[int] | None = None
        self._root = -1
        self._refusals: list[TTCError] = []  # one for each sample too long for the verifier's context

    async def open(self) -> None:
        """Tokenize the prompt and record it as the root of the question's tree."""
        _, self._prompt, self._root = await self.ctx.open_question(self.problem.question)

    @property
    def drawn(self) -> int:
        return len(self.candidates)

    @property
    def share(self) -> float:
        """The leader's share of the vote so far (0.0 before any answer)."""
        vote = self.choice.vote if self.choice is not None else None
        return vote.share if vote is not None else 0.0

    def margin(self) -> float:
        """How far the leader is ahead of the runner-up, as a share of the whole vote (1.0 when unopposed).

        The batch controller gives its last rounds to the questions with the smallest margin: those are the ones
        a few more samples are most likely to change.
        """
        vote = self.choice.vote if self.choice is not None else None
        return vote.margin if vote is not None else 0.0

    def _top_two(self) -> tuple[float, float, float]:
        """The leader's and the runner-up's votes, and all votes (zeros before any answer)."""
        vote = self.choice.vote if self.choice is not None else None
        ranked = sorted(vote.tally.values(), reverse=True) if vote is not None else []
        if not ranked:
            return 0.0, 0.0, 0.0
        return ranked[0], ranked[1] if len(ranked) > 1 else 0.0, sum(ranked)

    async def extend(self, meter: Meter, k: int) -> int:
        """Draw up to ``k`` more samples within ``meter``, score them and vote again; returns how many came."""
        if self._prompt is None:
            raise RuntimeError("VoteRounds.open() must run before extend()")
        opts = self.options
        completions = await draw(self.ctx, meter, self._prompt, k, opts.max_tokens, opts.temperature, opts.top_p)
        if not completions:
            return 0
        self.candidates += await score(self.ctx, meter, self.ctx.question_text(self.problem.question),
                                       record(self.ctx, self._root, completions), self._refusals)
        self.choice = choose(self.ctx, self.candidates, self.how, opts.checks,
                             self.ctx.question_text(self.problem.question))
        vote = self.choice.vote
        self.ctx.recorder.event("round", {"samples": self.drawn, "leader": vote.key if vote else None,
                                          "share": self.share, "tally": dict(vote.tally) if vote else {}})
        return len(completions)

    def decided(self, *, min_samples: int, stop_share: float, max_samples: int) -> bool:
        """Whether more samples can no longer change the answer enough to be worth drawing.

        Either the leader's share has reached ``stop_share`` after at least ``min_samples`` voting samples, or
        (plain vote only) the leader is ahead by more than the samples still to come up to ``max_samples`` could
        overturn. Only the samples that vote count: those the checks left out, and those that state no answer,
        neither reach ``min_samples`` nor lead. Where no sample so far both passed every check and answered,
        all vote, but the first one to do so would replace them all, so nothing is decided yet.
        """
        choice = self.choice
        if choice is None or choice.vote is None or not choice.voters:
            return False
        if choice.voters >= min_samples and self.share >= stop_share:
            return True
        if self.how != "vote":
            # A verifier's score is a number that ranks solutions, with no upper bound: a weighted lead can
            # always be overturned.
            return False
        leader, runner_up, total = self._top_two()
        # Each sample still to come adds one vote, so a larger lead cannot be overturned.
        return total > 0 and leader - runner_up > max_samples - self.drawn

    def finish(self) -> StrategyResult:
        """Choose among every sample drawn, mark the chosen node and return it.

        The last round's choice already covers every sample, and is the leader its ``round`` event recorded: a
        second vote would break a tie with a second draw of the rng and could answer another leader. Where every
        sample of every round was too long for the verifier's context, its error is raised, as best-of-N raises it.
        """
        if self._refusals and len(self._refusals) == len(self.candidates):
            raise self._refusals[0]  # not one sample of any round fits the verifier: it cannot judge this question
        choice = self.choice
        if choice is None:
            choice = choose(self.ctx, self.candidates, self.how, self.options.checks,
                            self.ctx.question_text(self.problem.question))
        mark_selected(self.ctx, choice)
        best = choice.candidate
        return StrategyResult(answer=best.answer if best else None, text=best.text if best else "",
                              score=best.score if best else None, candidates=tuple(self.candidates))


__all__ = ["VoteRounds"]
