"""Lookahead reasoning: a small draft model proposes the next few steps, the target checks them all at once.

Each round the draft writes up to ``gamma`` steps one after another. The target then writes its own next step
after every prefix of that proposal (the chain so far, then the chain plus the first draft step, and so on), all
in one concurrent wave, which a batching engine decodes as one batch. A draft step is accepted when the target
wrote exactly the same tokens after the same prefix; the round keeps the accepted steps and the target's own step
after the last of them, so every round adds at least one step and a right draft adds several for the price of
one target step. Decoding is greedy, so the solution is the target's own greedy solution: only its latency
changes, and only where the draft guesses the target's steps and is cheaper per token than the target.

One budget covers both models: the draft's tokens and the target's (accepted or not) are generated tokens. A
round plans its worst case, ``gamma`` draft steps and ``gamma + 1`` target steps of ``max_step_tokens``, and
proposes fewer steps when the budget cannot cover it, down to a plain target step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from pydantic import Field

from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.concurrency import run_concurrently
from ttc.errors import ConfigError
from ttc.strategies.base import Context, Strategy, StrategyOptions, StrategyResult, register
from ttc.strategies.tree import ends_solution
from ttc.types import Candidate, Completion, Problem, Sampling
from ttc.verifiers.answer import stopped_answer

NO_DRAFT = ("the lookahead strategy needs a draft model: pass draft=<Backend> to solve, or set TTC_DRAFT_MODEL to "
            "a model folder with the target's tokenizer (the embedded default brings the mini draft)")


class LookaheadOptions(StrategyOptions):
    gamma: int = Field(3, ge=1, le=16, description="steps the draft proposes per round")
    max_depth: int = Field(24, ge=1, le=1024, description="steps per solution at most")
    max_step_tokens: int = Field(64, ge=1, description="generated tokens per step at most")


@dataclass
class Chain:
    """The solution so far: its token ids (prompt included), its last trace node and its steps."""

    prefix: tuple[int, ...]
    node: int
    steps: list[Completion] = field(default_factory=list)
    complete: bool = False
    cut: bool = False
    ended: bool = False  # the target ended the solution (rather than max_depth)


@dataclass
class Tally:
    """What the rounds did, for the trace's summary event."""

    rounds: int = 0
    proposed: int = 0
    unchecked: int = 0  # proposed, then left when the budget ran out before the target's wave
    accepted: int = 0
    draft_tokens: int = 0
    target_tokens: int = 0
    target_passes: int = 0


def steps_to_propose(meter: Meter, gamma: int, max_tokens: int) -> int | None:
    """How many draft steps this round can afford at worst case (``k`` draft and ``k + 1`` target steps of
    ``max_tokens``, as many calls); 0 means a plain target step only, None that nothing more may be generated."""
    if meter.exhausted():
        return None
    tokens, calls = meter.tokens_left(), meter.calls_left()
    k = gamma
    while k > 0 and ((tokens is not None and (2 * k + 1) * max_tokens > tokens)
                     or (calls is not None and 2 * k + 1 > calls)):
        k -= 1
    return k


def accepted_prefix(drafts: Sequence[Completion], checks: Sequence[Completion]) -> int:
    """How many leading draft steps the target wrote the same way: ``checks[i]`` is the target's step after the
    first ``i`` draft steps."""
    count = 0
    for proposal, check in zip(drafts, checks, strict=False):
        if proposal.token_ids != check.token_ids:
            break
        count += 1
    return count


@register
class Lookahead(Strategy[LookaheadOptions]):
    name = "lookahead"
    Options = LookaheadOptions
    uses_draft = True

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        prompt_text = ctx.render(problem.question)
        draft = await self._draft_backend(ctx, prompt_text)
        prompt = tuple(await ctx.backend.tokenize(prompt_text, add_special_tokens=True))
        chain = Chain(prefix=prompt, node=ctx.recorder.add_node(parent=None, text=prompt_text,
                                                                token_count=len(prompt)))
        tally = Tally()
        while not chain.complete:
            # A proposal never runs past max_depth: the target's step after it would be the last one.
            room = self.options.max_depth - len(chain.steps) - 1
            k = steps_to_propose(meter, min(self.options.gamma, room), self.options.max_step_tokens)
            if k is None:
                break
            held: dict[Backend, list[tuple[int, ...]]] = {draft: [], ctx.backend: []}
            try:
                await self._round(ctx, draft, meter, chain, k, tally, held)
            finally:
                # Nothing extends a round's sequences in place: the next round's prompts are new, and the
                # engine's prefix cache still finds the chain in what was released.
                with anyio.CancelScope(shield=True):
                    for backend, sequences in held.items():
                        for ids in sequences:
                            await backend.release(ids)
        return self._result(ctx, chain, tally, prompt)

    async def _draft_backend(self, ctx: Context, prompt_text: str) -> Backend:
        """The draft model; refused unless it reads the prompt as the same token ids as the target, since steps
        are compared and passed between the two as token ids."""
        if ctx.draft is None:
            raise ConfigError(NO_DRAFT)
        ours = await ctx.backend.tokenize(prompt_text, add_special_tokens=True)
        theirs = await ctx.draft.tokenize(prompt_text, add_special_tokens=True)
        if list(ours) != list(theirs):
            raise ConfigError(f"the draft model {ctx.draft.name} tokenizes the prompt differently from the target "
                              f"{ctx.backend.name}: lookahead passes steps between them as token ids, so the draft "
                              "must share the target's tokenizer")
        return ctx.draft

    async def _round(self, ctx: Context, draft: Backend, meter: Meter, chain: Chain, k: int, tally: Tally,
                     held: dict[Backend, list[tuple[int, ...]]]) -> None:
        cap = self.options.max_step_tokens
        proposals: list[Completion] = []
        prefix = chain.prefix
        for _ in range(k):
            if meter.exhausted():  # the wall time can run out within a round: no call starts after it
                break
            step = (await draft.complete(prefix, 1, self._sampling(ctx, cap)))[0]
            meter.charge([step])
            tally.draft_tokens += len(step.token_ids)
            proposals.append(step)
            prefix += step.token_ids
            held[draft].append(prefix)
            if ends_solution(step, ctx.step_delimiter):
                break
        # The target's step after each prefix of the proposal; none after a proposal that ends the solution.
        heads = [chain.prefix, *held[draft]]  # the draft's sequences are the chain plus 1, 2, ... proposals
        if proposals and ends_solution(proposals[-1], ctx.step_delimiter):
            heads.pop()
        if meter.exhausted():  # the drafts were paid for: the trace and the summary count them all the same
            tally.rounds += 1
            tally.proposed += len(proposals)
            tally.unchecked += len(proposals)
            self._unaccepted(ctx, chain, proposals, "draft step not checked: the budget ran out after drafting")
            return
        # A round without proposals is one plain target step, trimmed to what is left (never to nothing: the
        # budget was not exhausted when the round was planned).
        checks = await self._check(ctx, meter, heads, cap if k > 0 else meter.plan(1, cap)[1])
        tally.target_tokens += sum(len(c.token_ids) for c in checks)
        # The wave decodes together, so the target's sequential decode steps are those of its longest step.
        tally.target_passes += max((len(c.token_ids) for c in checks), default=0)
        held[ctx.backend] += [head + c.token_ids for head, c in zip(heads, checks, strict=True)]
        # The target's live KV at the wave's end: the engine's figure, else the wave's unique tokens (the longest
        # head holds every shorter one as its prefix).
        live = ctx.backend.stats().live_kv_tokens
        meter.note_kv(live if live > 0 else len(heads[-1]) + sum(len(c.token_ids) for c in checks))
        accepted = accepted_prefix(proposals, checks)
        tally.rounds += 1
        tally.proposed += len(proposals)
        tally.accepted += accepted
        for step in proposals[:accepted]:
            self._extend(ctx, chain, step, source="draft")
            if chain.complete:
                break
        if not chain.complete:
            self._unaccepted(ctx, chain, proposals[accepted:], "draft step rejected: the target wrote another step")
        if not chain.complete and accepted < len(checks) and len(chain.steps) < self.options.max_depth:
            self._extend(ctx, chain, checks[accepted], source="target")
        ctx.recorder.event("lookahead", {"proposed": len(proposals), "accepted": accepted,
                                         "steps": len(chain.steps)}, node_id=chain.node)

    def _unaccepted(self, ctx: Context, chain: Chain, proposals: Sequence[Completion], reason: str) -> None:
        """Record draft steps the chain does not take as a pruned branch under its last node: the first with
        ``reason``, each later one as following it, so that the tree holds every step the summary counts."""
        parent = chain.node
        for index, step in enumerate(proposals):
            parent = ctx.recorder.add_node(parent=parent, text=step.text, token_count=len(step.token_ids),
                                           status="pruned")
            ctx.recorder.update(parent, reason=reason if index == 0 else "draft step after one not taken")

    async def _check(self, ctx: Context, meter: Meter, heads: Sequence[tuple[int, ...]],
                     cap: int) -> list[Completion]:
        """The target's next step after each head, all requests in flight together."""
        found: list[Completion | None] = [None] * len(heads)

        async def one(index: int) -> None:
            found[index] = (await ctx.backend.complete(heads[index], 1, self._sampling(ctx, cap)))[0]

        await run_concurrently([functools.partial(one, i) for i in range(len(heads))])
        checks = [c for c in found if c is not None]
        for check in checks:
            meter.charge([check])
        return checks

    def _sampling(self, ctx: Context, cap: int) -> Sampling:
        # Greedy: exact agreement between the models is what makes an accepted step the target's own.
        return Sampling(max_tokens=cap, temperature=0.0, stop=(ctx.step_delimiter,))

    def _extend(self, ctx: Context, chain: Chain, step: Completion, *, source: str) -> None:
        chain.node = ctx.recorder.add_node(parent=chain.node, text=step.text, token_count=len(step.token_ids),
                                           logprob=step.cumulative_logprob)
        ctx.recorder.update(chain.node, reason=f"written by the {source}")
        chain.prefix += step.token_ids
        chain.steps.append(step)
        chain.cut = step.finish_reason == "length"
        chain.ended = ends_solution(step, ctx.step_delimiter)
        chain.complete = chain.ended or len(chain.steps) >= self.options.max_depth

    def _result(self, ctx: Context, chain: Chain, tally: Tally, prompt: tuple[int, ...]) -> StrategyResult:
        text = "".join(step.text for step in chain.steps)
        # Stopped mid-line, by max_depth or by the budget: only an answer the chain states counts.
        answer = stopped_answer(text, cut=chain.cut, ended=chain.ended)
        if chain.steps:
            ctx.recorder.update(chain.node, status="selected", answer=answer)
        ctx.recorder.event("lookahead_summary", {
            "draft": ctx.draft.name if ctx.draft is not None else None,  # the trace's backend names the target
            "rounds": tally.rounds, "proposed": tally.proposed, "unchecked": tally.unchecked,
            "accepted": tally.accepted,
            # Of the proposals the target checked: one left unchecked was neither accepted nor rejected.
            "acceptance": round(tally.accepted / checked, 4) if (checked := tally.proposed - tally.unchecked)
            else None,
            "draft_tokens": tally.draft_tokens, "target_tokens": tally.target_tokens,
            "target_passes": tally.target_passes,
        })
        candidate = Candidate(text=text, answer=answer, score=None, token_count=len(chain.prefix) - len(prompt),
                              node_id=chain.node)
        return StrategyResult(answer=answer, text=text, score=None, candidates=(candidate,))


__all__ = ["Lookahead", "LookaheadOptions", "accepted_prefix", "steps_to_propose"]
