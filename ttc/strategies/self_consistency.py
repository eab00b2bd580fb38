"""Self-consistency with early stopping: sample in rounds, vote after each, stop once the vote is decided.

"Decided" means either the leader's share of the (weighted) vote has reached ``stop_share`` after at least
``min_samples`` samples, or the leader is ahead by more than the remaining samples could overturn. Easy questions
stop after one round and leave budget unspent; hard ones use all of ``max_samples``.
"""

from __future__ import annotations

from pydantic import Field

from ttc.budget import Meter
from ttc.strategies.base import Context, Strategy, StrategyResult, register
from ttc.strategies.sampling import (
    Choice,
    SampledOptions,
    choose,
    draw,
    mark_selected,
    record,
    resolve_selection,
    score,
)
from ttc.types import Candidate, Problem


class SelfConsistencyOptions(SampledOptions):
    max_samples: int = Field(16, ge=1, le=4096)
    round_size: int = Field(4, ge=1, le=4096)
    min_samples: int = Field(4, ge=1)
    stop_share: float = Field(0.75, gt=0.0, le=1.0, description="leader's vote share that ends sampling")


@register
class SelfConsistency(Strategy[SelfConsistencyOptions]):
    name = "self_consistency"
    Options = SelfConsistencyOptions

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        opts = self.options
        how = resolve_selection(opts.select, ctx)
        prompt_text = ctx.render(problem.question)
        prompt = await ctx.backend.tokenize(prompt_text, add_special_tokens=True)
        root = ctx.recorder.add_node(parent=None, text=prompt_text, token_count=len(prompt))
        candidates: list[Candidate] = []
        while len(candidates) < opts.max_samples:
            want = min(opts.round_size, opts.max_samples - len(candidates))
            completions = await draw(ctx, meter, prompt, want, opts.max_tokens, opts.temperature, opts.top_p)
            if not completions:
                ctx.recorder.event("stop", {"reason": "budget", "samples": len(candidates)})
                break
            candidates += await score(ctx, meter, problem.question, record(ctx, root, completions))
            choice = choose(ctx, candidates, how, opts.checks, problem.question)
            vote = choice.vote
            share = vote.share if vote is not None else 0.0
            ctx.recorder.event("round", {"samples": len(candidates), "leader": vote.key if vote else None,
                                         "share": share, "tally": dict(vote.tally) if vote else {}})
            if self._decided(choice, len(candidates), how, share):
                ctx.recorder.event("stop", {"reason": "decided", "samples": len(candidates), "share": share})
                break
        choice = choose(ctx, candidates, how, opts.checks, problem.question)
        mark_selected(ctx, choice)
        best = choice.candidate
        return StrategyResult(answer=best.answer if best else None, text=best.text if best else "",
                              score=best.score if best else None, candidates=tuple(candidates))

    def _decided(self, choice: Choice, drawn: int, how: str, share: float) -> bool:
        """Only the samples that vote count: those the checks left out neither reach ``min_samples`` nor lead.

        Where every sample so far failed a check, all vote, but the first one to pass would replace them all, so
        nothing is decided yet.
        """
        opts = self.options
        if choice.vote is None or not choice.passing:
            return False
        if choice.passing >= opts.min_samples and share >= opts.stop_share:
            return True
        if how != "vote":
            # A verifier's score is a number that ranks solutions, with no upper bound: a weighted lead can
            # always be overturned.
            return False
        ranked = sorted(choice.vote.tally.values(), reverse=True)
        if not ranked:
            return False
        runner_up = ranked[1] if len(ranked) > 1 else 0.0
        # Each sample still to come adds one vote, so a larger lead cannot be overturned.
        return ranked[0] - runner_up > opts.max_samples - drawn
