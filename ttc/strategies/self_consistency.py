"""Self-consistency with early stopping: sample in rounds, vote after each, stop once the vote is decided.

"Decided" means either the leader's share of the (weighted) vote has reached ``stop_share`` after at least
``min_samples`` samples, or the leader is ahead by more than the remaining samples could overturn. Easy questions
stop after one round and leave budget unspent; hard ones use all of ``max_samples``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ttc.budget import Meter
from ttc.strategies.base import Context, Strategy, StrategyResult, register
from ttc.strategies.sampling import SampledOptions, resolve_selection
from ttc.strategies.vote_rounds import VoteRounds
from ttc.types import Problem, is_int

DEFAULT_MIN_SAMPLES = 4


class SelfConsistencyOptions(SampledOptions):
    max_samples: int = Field(16, ge=1, le=4096)
    round_size: int = Field(4, ge=1, le=4096)
    min_samples: int = Field(DEFAULT_MIN_SAMPLES, ge=1)
    stop_share: float = Field(0.75, gt=0.0, le=1.0, description="leader's vote share that ends sampling")

    @model_validator(mode="before")
    @classmethod
    def _default_min_within_max(cls, data: object) -> object:
        """The default ``min_samples`` (4) shrinks to a smaller ``max_samples``; one the caller gives does not."""
        if isinstance(data, dict) and "min_samples" not in data:
            cap = data.get("max_samples", 16)
            if is_int(cap) and 1 <= cap < DEFAULT_MIN_SAMPLES:
                return {**data, "min_samples": cap}
        return data

    @model_validator(mode="after")
    def _min_within_max(self) -> SelfConsistencyOptions:
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples ({self.min_samples}) is above max_samples ({self.max_samples}), so the "
                             "vote could never stop early: lower min_samples or raise max_samples")
        return self


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
        else:  # every sample drawn and the vote still split: the trace says so, as a pooled batch's does
            ctx.recorder.event("stop", {"reason": "max_samples", "samples": rounds.drawn})
        return rounds.finish()
