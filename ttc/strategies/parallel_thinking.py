"""Parallel thinking: several reasoning paths at once, then one synthesis that reads them all (ParaThinker).

The paths are one batched call (the local engine decodes them as one batch over the shared prompt). The synthesis
is a second, greedy call whose prompt is the question and the paths (``ttc.strategies.synthesis``), and its
solution is the answer: where a vote can only count the paths' answers, the synthesizer can read their steps
against the question, keep a right path that few wrote, or write its own.

The synthesizer is the setup's synthesis model when it has one (the embedded default brings the mini synthesizer,
trained on this prompt), else the target model itself, with the setup's synthesis template; the prompt is text,
so a synthesizer with another tokenizer than the target's works as well. One budget covers both calls: the paths
are planned with the synthesis's ``synthesis_max_tokens`` (and its call) kept back, so the synthesis always runs
within a token or call budget, and each path keeps its whole ``max_tokens``: a budget short of ``paths`` of them
draws as many as it affords (the ``sample`` event's ``planned``), not more paths cut short. One that affords none
(fewer than ``synthesis_max_tokens + max_tokens`` tokens, or fewer than two calls) draws no path, and the
synthesizer answers alone after a ``fallback`` event ``{"to": "synthesis", "reason": "no_budget_for_paths"}``
whose ``limit`` names what ran short.
Where all the paths make the synthesis prompt longer than ``synthesis_max_prompt_tokens``, or than the synthesizer's
context leaves once ``synthesis_max_tokens`` are kept for the synthesis (where the backend says its context), the
different paths are taken most common first, each only if the prompt still fits, and the trace's ``synthesis``
event says how many it showed and left out; a limit the prompt exceeds with no path at all is a ConfigError before
any path is drawn.
The paths' majority answers instead (a ``fallback`` event naming why, then a ``select`` event with ``how: vote``;
the synthesis node, if any, is kept and not selected) where the wall time runs out before the synthesis, where no
path fits its prompt, or where the synthesis states no answer while paths do.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from ttc.backends.base import Backend, context_window, unreadable_characters
from ttc.budget import Meter
from ttc.errors import ConfigError
from ttc.strategies.base import (
    DISTINCT,
    TEMPERATURE,
    TOP_P,
    Context,
    Strategy,
    StrategyOptions,
    StrategyResult,
    register,
)
from ttc.strategies.sampling import choose, draw, has_answer, mark_selected, record
from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE, check_templates, merge_paths, render_synthesis
from ttc.types import Candidate, Completion, Problem


class ParallelThinkingOptions(StrategyOptions):
    paths: int = Field(8, ge=1, le=64, description="reasoning paths sampled at once")
    max_tokens: int = Field(256, ge=1, description="generated tokens per path at most")
    temperature: float = Field(TEMPERATURE, gt=0.0, description="the paths' temperature")
    top_p: float = Field(TOP_P, gt=0.0, le=1.0)
    distinct: bool = Field(False, description=DISTINCT)
    synthesis_max_tokens: int = Field(256, ge=1, description="generated tokens of the synthesis at most")
    synthesis_max_prompt_tokens: int = Field(
        1280, ge=1, description="the synthesis prompt's length at most: paths are shown most common first while "
                                "they fit (a synthesizer whose context is shorter than this plus "
                                "synthesis_max_tokens holds it to its context minus synthesis_max_tokens)")
    synthesis_template: str | None = Field(None, description="the synthesis prompt, with {question}, {paths} and "
                                                             "optionally {total}; default: the setup's")
    path_template: str | None = Field(None, description="one distinct path, with {text} and optionally {index}, "
                                                        "{count}, {total}; default: the setup's")

    @model_validator(mode="after")
    def _check(self) -> ParallelThinkingOptions:
        if self.synthesis_template is not None or self.path_template is not None:
            try:
                check_templates(self.synthesis_template or SYNTHESIS_TEMPLATE, self.path_template or PATH_TEMPLATE)
            except ConfigError as exc:  # raised as ValueError, so the options' ConfigError carries its message
                raise ValueError(str(exc)) from None
        return self


@register
class ParallelThinking(Strategy[ParallelThinkingOptions]):
    name = "parallel_thinking"
    Options = ParallelThinkingOptions
    uses_synthesizer = True

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        opts = self.options
        _, prompt, root = await ctx.open_question(problem.question)
        synthesizer = ctx.synthesizer or ctx.backend
        await self._check_room(ctx, synthesizer, ctx.question_text(problem.question))
        planned = self._planned(meter)
        paths = await self._paths(ctx, meter, prompt, planned)
        ctx.recorder.event("sample", {"requested": opts.paths, "planned": planned, "drawn": len(paths),
                                      "distinct": opts.distinct})
        candidates = record(ctx, root, paths)
        text, shown, tokens = await self._synthesis_prompt(ctx, synthesizer, ctx.question_text(problem.question),
                                                            paths)
        node = ctx.recorder.add_node(parent=None, text=text, token_count=len(tokens))
        ctx.recorder.event("synthesis", {"synthesizer": "setup" if ctx.synthesizer else "target",
                                         "model": synthesizer.name, "paths": len(paths), "shown": shown,
                                         "left_out": len(paths) - shown, "prompt_tokens": len(tokens)}, node_id=node)
        # Where no path fits the prompt, a synthesis would answer unaided after every path was paid for.
        final = await self._synthesize(ctx, synthesizer, meter, tokens, node) if shown or not paths else None
        # "States an answer" as a vote counts one: a synthesis answering `\,`, or nested past reading, does not.
        answered = any(has_answer(c) for c in candidates)
        if final is not None and (has_answer(final) or not answered):
            if final.node_id is not None:  # record gives every candidate its node
                ctx.recorder.update(final.node_id, status="selected")
            ctx.recorder.event("select", {"how": "synthesis", "answer": final.answer}, node_id=final.node_id)
            return StrategyResult(answer=final.answer, text=final.text, score=None,
                                  candidates=(*candidates, final))
        if not candidates:
            return StrategyResult(answer=None, text="", score=None, candidates=())
        # The paths' own majority answers, recorded as such, rather than no answer at all: the wall time ran out
        # before the synthesis (tokens and a call are kept back for it, time cannot be), no path fitted its prompt,
        # or the synthesis stated no answer (cut by synthesis_max_tokens) where paths did.
        why = "no_path_fits" if not shown else "wall_time" if final is None else "synthesis_unanswered"
        ctx.recorder.event("fallback", {"to": "vote", "reason": why})
        choice = choose(ctx, candidates, "vote")
        mark_selected(ctx, choice)
        best = choice.candidate
        return StrategyResult(answer=best.answer if best else None, text=best.text if best else "", score=None,
                              candidates=(*candidates, *([final] if final else [])))

    def _planned(self, meter: Meter) -> int:
        """How many paths the budget affords at their whole ``max_tokens`` once the synthesis's call and
        ``synthesis_max_tokens`` are kept back. Fewer paths rather than shorter ones: paths cut to a share of what
        is left stop a few tokens into their work (``4 * 3``), and the mini synthesizer, shown eight such, answered
        worse than shown none (2 right of 16 where it alone had 7)."""
        opts = self.options
        calls, tokens = meter.calls_left(), meter.tokens_left()
        if meter.exhausted() or (calls is not None and calls < 2):
            return 0
        if tokens is None:
            return opts.paths
        return min(opts.paths, max(0, tokens - opts.synthesis_max_tokens) // opts.max_tokens)

    async def _paths(self, ctx: Context, meter: Meter, prompt: Sequence[int], planned: int) -> list[Completion]:
        """The ``planned`` paths (:meth:`_planned`), each with its whole ``max_tokens``."""
        opts = self.options
        paths = await draw(ctx, meter, prompt, planned, opts.max_tokens, opts.temperature, opts.top_p,
                           distinct=opts.distinct, reserve=opts.synthesis_max_tokens) if planned else []
        if not paths:
            calls = meter.calls_left()
            _no_paths(ctx, meter, short_of_calls=calls is not None and calls < 2)
        return paths

    async def _synthesis_prompt(self, ctx: Context, synthesizer: Backend, question: str,
                                paths: Sequence[Completion]) -> tuple[str, int, list[int]]:
        """The synthesis prompt, its token ids and how many of the paths it shows. Where all of them make it longer
        than :meth:`_prompt_limit`, the different paths are taken most common first (the earliest first among
        equals), each kept only if the prompt still fits: a long common path that does not fit leaves room for the
        shorter ones after it, where dropping the least common first left every path out."""
        opts = self.options
        template = opts.synthesis_template or ctx.synthesis_template
        path_template = opts.path_template or ctx.path_template
        texts = [c.text for c in paths]
        limit = self._prompt_limit(synthesizer)

        async def rendered(kept: set[str]) -> tuple[str, int, list[int]]:
            shown = [t for t in texts if t.strip() in kept]
            text = render_synthesis(question, shown, template, path_template)
            return text, len(shown), await _tokenize(synthesizer, text, template, path_template)

        order = merge_paths([t.strip() for t in texts])
        best = await rendered({p.text for p in order})
        if len(best[2]) <= limit:
            return best
        kept: set[str] = set()
        best = await rendered(kept)
        for path in order:
            trial = await rendered(kept | {path.text})
            if len(trial[2]) <= limit:
                kept.add(path.text)
                best = trial
        return best

    async def _check_room(self, ctx: Context, synthesizer: Backend, question: str) -> None:
        """Refuse, before any path is drawn, a prompt limit (:meth:`_prompt_limit`) that the question's synthesis
        prompt exceeds with no path in it: every path would be left out, and the synthesizer would answer unaided
        (or, past its context, fail) after all of them were paid for."""
        opts = self.options
        template = opts.synthesis_template or ctx.synthesis_template
        path_template = opts.path_template or ctx.path_template
        bare = render_synthesis(question, [], template, path_template)
        # Tokenized first: a server learns its context when first asked.
        needed = len(await _tokenize(synthesizer, bare, template, path_template))
        limit = self._prompt_limit(synthesizer)
        if needed < limit:
            return
        window = context_window(synthesizer)
        if window is not None and limit < opts.synthesis_max_prompt_tokens:
            raise ConfigError(f"the synthesis prompt takes {needed} tokens before any path is shown, and the "
                              f"synthesizer {synthesizer.name} holds {window} positions, which leaves "
                              f"{max(limit, 0)} for the prompt once synthesis_max_tokens ({opts.synthesis_max_tokens})"
                              " are kept for the synthesis: lower synthesis_max_tokens, use a synthesizer with a "
                              "longer context, or ask a shorter question")
        raise ConfigError(f"the synthesis prompt takes {needed} tokens before any path is shown, and "
                          f"synthesis_max_prompt_tokens is {opts.synthesis_max_prompt_tokens}: raise it (up to "
                          "the synthesizer's context minus synthesis_max_tokens), or ask a shorter question")

    def _prompt_limit(self, synthesizer: Backend) -> int:
        """The synthesis prompt's length at most: ``synthesis_max_prompt_tokens``, and no more than the
        synthesizer's context leaves once the whole ``synthesis_max_tokens`` are kept for the synthesis, where the
        backend says its context. The whole of them, not just room for a token: a prompt past the context is
        refused outright, and a backend cuts a synthesis to the room left, so one cut before its answer line would
        leave the answer to the paths' vote though a shorter prompt, with fewer paths, let it write one."""
        limit = self.options.synthesis_max_prompt_tokens
        window = context_window(synthesizer)
        return limit if window is None else min(limit, window - self.options.synthesis_max_tokens)

    async def _synthesize(self, ctx: Context, synthesizer: Backend, meter: Meter, prompt: Sequence[int],
                          node: int) -> Candidate | None:
        completions = await draw(ctx, meter, prompt, 1, self.options.synthesis_max_tokens, 0.0, 1.0,
                                 backend=synthesizer)
        if not completions:
            ctx.recorder.event("stop", {"reason": "budget", "at": "synthesis"})
            return None
        (final,) = record(ctx, node, completions)
        return final


async def _tokenize(synthesizer: Backend, text: str, template: str, path_template: str) -> list[int]:
    """The synthesis prompt ``text``'s token ids. Where the synthesizer has no token for characters of the templates'
    own words (the generic template's ``Q`` and ``'`` in a mini vocabulary), the ConfigError names the templates
    and the options that replace them: the backend's own error quotes the prompt, which opens with the question,
    and sent the caller to rewrite a question that was never at fault."""
    try:
        return await synthesizer.tokenize(text, add_special_tokens=True)
    except ConfigError as exc:
        words = {"synthesis_template": template.format(question="", paths="", total=1),
                 "path_template": path_template.format(index=1, count=1, total=1, text="")}
        unread = {name: await unreadable_characters(synthesizer, own) for name, own in words.items()}
        if not any(unread.values()):
            raise
        which = "; ".join(f"{name} holds {', '.join(map(repr, chars))}" for name, chars in unread.items() if chars)
        raise ConfigError(f"the synthesizer {synthesizer.name} has no token for characters of the synthesis "
                          f"prompt's own words ({which}): pass synthesis_template= and path_template= written in "
                          "characters its vocabulary holds (ttc.models.MINI_SYNTHESIS_TEMPLATE and "
                          "MINI_PATH_TEMPLATE for a mini model), or a synthesizer= that reads them") from exc


def _no_paths(ctx: Context, meter: Meter, *, short_of_calls: bool) -> None:
    """Say in the trace why the synthesizer answers with no path to read: a budget that leaves the paths nothing
    once the synthesis's call and ``synthesis_max_tokens`` are kept back otherwise reads as a model that wrote
    none. ``limit`` names the budget's field that ran short."""
    limit = "calls" if short_of_calls else "wall_s" if meter.time_left() == 0.0 else "tokens"
    ctx.recorder.event("fallback", {"to": "synthesis", "reason": "no_budget_for_paths", "limit": limit})
