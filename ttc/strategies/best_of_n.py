"""Best-of-N: draw N solutions in one call, independent or without replacement (``distinct``), then pick one.

The pick is by verifier score (``select="score"``), by score-weighted majority (the default when a verifier is
configured), or by plain majority over extracted answers (the default without one).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ttc.budget import Meter
from ttc.strategies.base import DISTINCT, Context, Strategy, StrategyResult, check_distinct, register
from ttc.strategies.sampling import SampledOptions, choose, draw, mark_selected, record, resolve_selection, score
from ttc.types import Problem


class BestOfNOptions(SampledOptions):
    n: int = Field(8, ge=1, le=4096, description="samples to draw")
    distinct: bool = Field(False, description=DISTINCT)

    @model_validator(mode="after")
    def _distinct_needs_temperature(self) -> BestOfNOptions:
        check_distinct(self.distinct, self.temperature)
        return self


@register
class BestOfN(Strategy[BestOfNOptions]):
    name = "best_of_n"
    Options = BestOfNOptions

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        opts = self.options
        _, prompt, root = await ctx.open_question(problem.question)
        completions = await draw(ctx, meter, prompt, opts.n, opts.max_tokens, opts.temperature, opts.top_p,
                                 distinct=opts.distinct)
        ctx.recorder.event("sample", {"requested": opts.n, "drawn": len(completions), "distinct": opts.distinct})
        candidates = await score(ctx, meter, ctx.question_text(problem.question), record(ctx, root, completions))
        choice = choose(ctx, candidates, resolve_selection(opts.select, ctx), opts.checks,
                        ctx.question_text(problem.question))
        mark_selected(ctx, choice)
        best = choice.candidate
        return StrategyResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=best.score if best else None,
            candidates=tuple(candidates),
        )
