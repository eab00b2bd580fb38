"""Best-of-N: draw N independent solutions in one call, then pick one.

The pick is by verifier score (``select="score"``), by score-weighted majority (the default when a verifier is
configured), or by plain majority over extracted answers (the default without one).
"""

from __future__ import annotations

from pydantic import Field

from ttc.budget import Meter
from ttc.strategies.base import TEMPERATURE, TOP_P, Context, Strategy, StrategyOptions, StrategyResult, register
from ttc.strategies.sampling import (
    CHECK_ARITHMETIC,
    CHECK_OPERANDS,
    Checks,
    Selection,
    choose,
    draw,
    mark_selected,
    record,
    resolve_selection,
    score,
)
from ttc.types import Problem


class BestOfNOptions(StrategyOptions):
    n: int = Field(8, ge=1, le=4096, description="samples to draw")
    max_tokens: int = Field(512, ge=1, description="generated tokens per sample at most")
    temperature: float = Field(TEMPERATURE, ge=0.0)
    top_p: float = Field(TOP_P, gt=0.0, le=1.0)
    select: Selection = "auto"
    check_arithmetic: bool = Field(False, description=CHECK_ARITHMETIC)
    check_operands: bool = Field(False, description=CHECK_OPERANDS)


@register
class BestOfN(Strategy[BestOfNOptions]):
    name = "best_of_n"
    Options = BestOfNOptions

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        opts = self.options
        prompt_text = ctx.render(problem.question)
        prompt = await ctx.backend.tokenize(prompt_text, add_special_tokens=True)
        root = ctx.recorder.add_node(parent=None, text=prompt_text, token_count=len(prompt))
        completions = await draw(ctx, meter, prompt, opts.n, opts.max_tokens, opts.temperature, opts.top_p)
        ctx.recorder.event("sample", {"requested": opts.n, "drawn": len(completions)})
        candidates = await score(ctx, meter, problem.question, record(ctx, root, completions))
        checks = Checks(arithmetic=opts.check_arithmetic, operands=opts.check_operands)
        choice = choose(ctx, candidates, resolve_selection(opts.select, ctx), checks, problem.question)
        mark_selected(ctx, choice)
        best = choice.candidate
        return StrategyResult(
            answer=best.answer if best else None,
            text=best.text if best else "",
            score=best.score if best else None,
            candidates=tuple(candidates),
        )
