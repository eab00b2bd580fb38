"""Self-consistency with early stopping: sample in rounds, vote after each, stop once the vote is decided.

"Decided" means either the leader's share of the (weighted) vote has reached ``stop_share`` after at least
``min_samples`` samples, or the leader is ahead by more than the remaining samples could overturn. Easy questions
stop after one round and leave budget unspent; hard ones use all of ``max_samples``.
"""

from __future__ import annotations

from pydantic import Field

from ttc.budget import Meter
from ttc.strategies.base import Context, Strategy, StrategyResult, register
from ttc.strategies.sampling import SampledOptions, resolve_selection
from ttc.strategies.vote_rounds import VoteRounds
from ttc.types import Problem


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
        rounds = VoteRounds(problem, ctx, opts, resolve_selection(opts.select, ctx))
        await rounds.open()
        while rounds.drawn < opts.max_samples:
            if not await rounds.extend(meter, min(opts.round_size, opts.max_samples - rounds.drawn)):
                ctx.recorder.event("stop", {"reason": "budget", "samples": rounds.drawn})
                break
            if rounds.decided(min_samples=opts.min_samples, stop_share=opts.stop_share,
                              max_samples=opts.max_samples):
                ctx.recorder.event("stop", {"reason": "decided", "samples": rounds.drawn, "share": rounds.share})
                break
        return rounds.finish()
