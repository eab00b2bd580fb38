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

Drafting changes only the speed, never the solution, so neither model's limits may cut it short. A step that
stops at ``max_step_tokens`` with context left is not the end: the next round continues it (prompts are token
ids, so the pieces concatenate into the step the target would write whole). Each proposal is at most as long as
the target has room for, and the target is sent no head past its context. Once the chain outgrows the draft's
context, the rest of the solution is plain target steps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from ttc.backends.base import Backend, context_window
from ttc.budget import Meter
from ttc.concurrency import run_concurrently, run_to_end
from ttc.errors import ConfigError, ContextLengthError
from ttc.strategies.base import Context, Strategy, StrategyOptions, StrategyResult, register
from ttc.strategies.tree import ends_solution
from ttc.types import Candidate, Completion, Problem, Sampling
from ttc.verifiers.answer import stopped_answer

NO_DRAFT = ("the lookahead strategy needs a draft model and this setup has none: pass draft=<Backend> to solve, or "
            "set TTC_DRAFT_MODEL (a model folder) or TTC_DRAFT_URL (a vLLM server) to a model with the target's "
            "tokenizer")

TOKENIZER_PROBES = ("0123456789", "+-*/=().,:?", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                    "The answer is 42.\nStep 1: ")
"""Texts both models must read as the same token ids, besides the prompt: a prompt need not hold the digits,
operators and letters that steps are written in, and a draft whose vocabulary numbers those differently (``+`` and
``=`` swapped, or ``A`` and ``M``) reads the prompt alike, then passes every check while its steps read as other
text. A piece the target cannot read whole is compared a character at a time (:func:`reads_alike`), so that a
character a small vocabulary lacks leaves the rest of its piece checked."""

StepState = Literal["unfinished", "ended", "done"]


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
    depth: int = 0  # steps begun: one cut at max_step_tokens and continued is one step, however many pieces
    unfinished: bool = False  # the last step stopped at max_step_tokens with room left: the next round goes on
    open_text: str = ""  # what the unfinished step says so far, since only the whole step can end the solution
    drafting: bool = True  # False once the chain outgrew the draft's context: plain target steps from then on
    continued: bool = False  # some step was written in pieces: its text is decoded whole at the end


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


def step_state(step: Completion, before: str, end: int, *, max_tokens: int, window: int | None,
               delimiter: str) -> StepState:
    """How ``step`` leaves the solution: ``unfinished`` when it stopped at ``max_tokens`` with context left, since a
    step's length limit is no reason for the solution to stop; ``ended`` when the whole step (``before`` is what
    the unfinished step it continues said) ends the solution as :func:`ends_solution` says; else ``done``.

    ``end`` is the sequence's length after the step and ``window`` the target's context: a step that filled the
    context ended the solution, whatever its length. Where the window is unknown, a step at the limit goes on."""
    if step.finish_reason == "length" and len(step.token_ids) >= max_tokens and (window is None or end < window):
        return "unfinished"
    whole = dataclasses.replace(step, text=before + step.text)
    return "ended" if ends_solution(whole, delimiter) else "done"


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
            k = steps_to_propose(meter, self._proposals_allowed(ctx, draft, chain), self.options.max_step_tokens)
            if k is None:
                break
            held: dict[Backend, list[tuple[int, ...]]] = {draft: [], ctx.backend: []}
            try:
                await self._round(ctx, draft, meter, chain, k, tally, held)
            finally:
                # Nothing extends a round's sequences in place: the next round's prompts are new, and the
                # engine's prefix cache still finds the chain in what was released. To the end, through any
                # cancellation: an anyio shield does not stop asyncio's task.cancel(), and one between two
                # releases left the rest held in the caller's backend.
                await run_to_end(_release(held))
        return await self._result(ctx, chain, tally, prompt)

    def _proposals_allowed(self, ctx: Context, draft: Backend, chain: Chain) -> int:
        """How many draft steps this round may propose before the budget has its say.

        A proposal never runs past max_depth: the target's step after it would be the last one (a first proposal
        that continues an unfinished step begins none). 0 once the chain has outgrown the draft's context."""
        window = context_window(draft)
        if chain.drafting and window is not None and len(chain.prefix) >= window:
            self._stop_drafting(ctx, chain, f"the chain fills the draft's {window}-position context")
        if not chain.drafting:
            return 0
        room = self.options.max_depth - chain.depth - 1 + int(chain.unfinished)
        return max(0, min(self.options.gamma, room))

    def _stop_drafting(self, ctx: Context, chain: Chain, reason: str) -> None:
        """Go on with plain target steps: the draft's limits must not end a solution the target can finish."""
        chain.drafting = False
        ctx.recorder.event("draft_stopped", {"reason": reason, "steps": len(chain.steps),
                                             "tokens": len(chain.prefix)}, node_id=chain.node)

    async def _draft_backend(self, ctx: Context, prompt_text: str) -> Backend:
        """The draft model; refused unless it reads the prompt, and the probes steps are written in, as the same
        token ids as the target and ends sequences with the same token, since steps are compared and passed
        between the two as token ids."""
        if ctx.draft is None:
            raise ConfigError(NO_DRAFT)
        draft, target = ctx.draft, ctx.backend
        ours = await target.tokenize(prompt_text, add_special_tokens=True)
        theirs = await draft.tokenize(prompt_text, add_special_tokens=True)
        if list(ours) != list(theirs):
            raise other_tokenizer(draft, f"tokenizes the prompt differently from the target {target.name}")
        for probe in TOKENIZER_PROBES:
            if not await reads_alike(target, draft, probe):
                raise other_tokenizer(draft, f"tokenizes {probe!r} differently from the target {target.name}")
        eos = (target.eos_token_id, draft.eos_token_id)
        if None not in eos and eos[0] != eos[1]:
            raise other_tokenizer(draft, f"ends sequences with token {eos[1]} where the target {target.name} "
                                         f"uses {eos[0]}")
        return draft

    async def _round(self, ctx: Context, draft: Backend, meter: Meter, chain: Chain, k: int, tally: Tally,
                     held: dict[Backend, list[tuple[int, ...]]]) -> None:
        proposals: list[Completion] = []
        checks: list[Completion | None] = []
        try:
            await self._round_steps(ctx, draft, meter, chain, k, tally, held, proposals, checks)
        except BaseException:
            # What returned was charged: the failed trace's tree holds it, as a tree search's does.
            self._unaccepted(ctx, chain, proposals, "draft step not taken: the round stopped (the trace's error)")
            for check in (c for c in checks if c is not None):
                node = ctx.recorder.add_node(parent=chain.node, text=check.text, token_count=len(check.token_ids),
                                             status="pruned")
                ctx.recorder.update(node, reason="target step not taken: the round stopped (the trace's error)")
            raise

    async def _round_steps(self, ctx: Context, draft: Backend, meter: Meter, chain: Chain, k: int, tally: Tally,
                           held: dict[Backend, list[tuple[int, ...]]], proposals: list[Completion],
                           found: list[Completion | None]) -> None:
        """One round: ``proposals`` and ``found`` (the target's checks) fill as their calls return, so that a
        round that fails can record what it paid for."""
        cap = self.options.max_step_tokens
        heads = await self._propose(ctx, draft, meter, chain, k, tally, held, proposals)
        if meter.exhausted():  # the drafts were paid for: the trace and the summary count them all the same
            tally.rounds += 1
            tally.proposed += len(proposals)
            tally.unchecked += len(proposals)
            self._unaccepted(ctx, chain, proposals, "draft step not checked: the budget ran out after drafting")
            proposals.clear()  # recorded
            return
        # A round without proposals is one plain target step, trimmed to what is left (never to nothing: the
        # budget was not exhausted when the round was planned).
        checks = await self._check(ctx, meter, heads, cap if k > 0 else meter.plan(1, cap)[1], held[ctx.backend],
                                   found)
        drafted = proposals[:]
        proposals.clear()  # recorded below, by the round itself: a failure from here on must not record them again
        found.clear()
        tally.target_tokens += sum(len(c.token_ids) for c in checks)
        # The wave decodes together, so the target's sequential decode steps are those of its longest step.
        tally.target_passes += max((len(c.token_ids) for c in checks), default=0)
        # The target's live KV at the wave's end: the engine's figure, else the wave's unique tokens (the longest
        # head holds every shorter one as its prefix).
        live = ctx.backend.stats().live_kv_tokens
        meter.note_kv(live if live > 0 else len(heads[-1]) + sum(len(c.token_ids) for c in checks))
        accepted = accepted_prefix(drafted, checks)
        tally.rounds += 1
        tally.proposed += len(drafted)
        tally.accepted += accepted
        # An accepted step is the target's own completion of the same ids: its text and logprob are the
        # target's, whatever the draft's tokenizer made of them.
        for check in checks[:accepted]:
            self._extend(ctx, chain, check, source="draft")
            if chain.complete:
                break
        if not chain.complete:
            self._unaccepted(ctx, chain, drafted[accepted:], "draft step rejected: the target wrote another step")
        if not chain.complete and accepted < len(checks):
            self._extend(ctx, chain, checks[accepted], source="target")
        ctx.recorder.event("lookahead", {"proposed": len(drafted), "accepted": accepted,
                                         "steps": len(chain.steps)}, node_id=chain.node)

    async def _propose(self, ctx: Context, draft: Backend, meter: Meter, chain: Chain, k: int, tally: Tally,
                       held: dict[Backend, list[tuple[int, ...]]], proposals: list[Completion]
                       ) -> list[tuple[int, ...]]:
        """Up to ``k`` draft steps one after another, and the heads the target writes its own step after: the
        chain, then the chain plus each proposal that the solution goes on after and the target has room to
        extend (a head past the target's context would be refused, and one after the end has nothing to add)."""
        window = context_window(ctx.backend)
        heads = [chain.prefix]
        prefix, before = chain.prefix, chain.open_text
        for _ in range(k):
            if meter.exhausted():  # the wall time can run out within a round: no call starts after it
                break
            step = await self._draft_step(ctx, draft, chain, prefix, window)
            if step is None:
                break
            meter.charge([step])
            tally.draft_tokens += len(step.token_ids)
            proposals.append(step)
            prefix += step.token_ids
            held[draft].append(prefix)
            state = step_state(step, before, len(prefix), max_tokens=self.options.max_step_tokens, window=window,
                               delimiter=ctx.step_delimiter)
            if state == "ended" or (window is not None and len(prefix) >= window):
                break
            before = before + step.text if state == "unfinished" else ""
            heads.append(prefix)
        return heads

    async def _draft_step(self, ctx: Context, draft: Backend, chain: Chain, prefix: tuple[int, ...],
                          window: int | None) -> Completion | None:
        """The draft's next step after ``prefix``, no longer than the target has room for there (a longer one
        could never be the target's); None where the draft has no room for one. Where that is the chain itself,
        drafting stops for the rest of the solution."""
        cap = self.options.max_step_tokens if window is None else min(self.options.max_step_tokens,
                                                                      window - len(prefix))
        draft_window = context_window(draft)
        try:
            if draft_window is not None and len(prefix) >= draft_window:
                raise ContextLengthError(f"the chain fills the draft's {draft_window}-position context")
            return (await draft.complete(prefix, 1, self._sampling(ctx, cap)))[0]
        except ContextLengthError as exc:  # also from a server that learns its window only when asked
            if prefix == chain.prefix:  # not one proposal more: drafting is over
                self._stop_drafting(ctx, chain, str(exc))
            return None

    def _unaccepted(self, ctx: Context, chain: Chain, proposals: Sequence[Completion], reason: str) -> None:
        """Record draft steps the chain does not take as a pruned branch under its last node: the first with
        ``reason``, each later one as following it, so that the tree holds every step the summary counts."""
        parent = chain.node
        for index, step in enumerate(proposals):
            parent = ctx.recorder.add_node(parent=parent, text=step.text, token_count=len(step.token_ids),
                                           status="pruned")
            ctx.recorder.update(parent, reason=reason if index == 0 else "draft step after one not taken")

    async def _check(self, ctx: Context, meter: Meter, heads: Sequence[tuple[int, ...]], cap: int,
                     held: list[tuple[int, ...]], found: list[Completion | None]) -> list[Completion]:
        """The target's next step after each head, all requests in flight together, in the heads' order.

        Each step is charged, and its sequence added to ``held`` (the round releases it), as soon as it returns:
        where another request of the wave fails, those that returned were still paid for and still hold KV (and
        are in ``found``, in the heads' order)."""
        found[:] = [None] * len(heads)

        async def one(index: int) -> None:
            check = (await ctx.backend.complete(heads[index], 1, self._sampling(ctx, cap)))[0]
            meter.charge([check])
            held.append(heads[index] + check.token_ids)
            found[index] = check

        await run_concurrently([functools.partial(one, i) for i in range(len(heads))])
        return [c for c in found if c is not None]

    def _sampling(self, ctx: Context, cap: int) -> Sampling:
        # Greedy: exact agreement between the models is what makes an accepted step the target's own.
        return Sampling(max_tokens=cap, temperature=0.0, stop=(ctx.step_delimiter,))

    def _extend(self, ctx: Context, chain: Chain, step: Completion, *, source: str) -> None:
        """Add the target's ``step`` to the chain; one cut at max_step_tokens is a piece the next round goes on
        from, and begins no new step."""
        state = step_state(step, chain.open_text, len(chain.prefix) + len(step.token_ids),
                           max_tokens=self.options.max_step_tokens, window=context_window(ctx.backend),
                           delimiter=ctx.step_delimiter)
        chain.node = ctx.recorder.add_node(parent=chain.node, text=step.text, token_count=len(step.token_ids),
                                           logprob=step.cumulative_logprob)
        goes_on = "; it reached max_step_tokens and the next node goes on with it" if state == "unfinished" else ""
        ctx.recorder.update(chain.node, reason=f"written by the {source}{goes_on}")
        if chain.unfinished:
            chain.continued = True
        else:
            chain.depth += 1
        chain.prefix += step.token_ids
        chain.steps.append(step)
        chain.cut = step.finish_reason == "length"
        chain.unfinished = state == "unfinished"
        chain.open_text = chain.open_text + step.text if chain.unfinished else ""
        chain.ended = state == "ended"
        chain.complete = chain.ended or (state == "done" and chain.depth >= self.options.max_depth)

    async def _result(self, ctx: Context, chain: Chain, tally: Tally, prompt: tuple[int, ...]) -> StrategyResult:
        text = "".join(step.text for step in chain.steps)
        if chain.continued:
            # A piece decoded alone can read otherwise than inside its step (a SentencePiece word's leading space is
            # dropped, a byte-level character cut in two is two replacement characters): the ids are the target's
            # own, so their text is too when decoded together.
            # Less the end-of-sequence token: a server's ids hold it, its texts do not (nor does its /detokenize
            # leave it out).
            eos = ctx.backend.eos_token_id
            text = await ctx.backend.detokenize([i for i in chain.prefix[len(prompt):] if i != eos])
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


def other_tokenizer(draft: Backend, how: str) -> ConfigError:
    return ConfigError(f"the draft model {draft.name} {how}: lookahead passes steps between the two as token ids, "
                       "so the draft must share the target's tokenizer; pass draft= (or set TTC_DRAFT_MODEL to) a "
                       "model trained with the target's tokenizer")


async def _release(held: Mapping[Backend, Sequence[tuple[int, ...]]]) -> None:
    for backend, sequences in held.items():
        for ids in sequences:
            await backend.release(ids)


async def reads_alike(target: Backend, draft: Backend, text: str) -> bool:
    """Whether both models read ``text`` as the same token ids. A character the target has no token for tells
    nothing about the draft (the target never writes it), so it passes; one only the draft cannot read fails. A text
    the target cannot read whole is compared a character at a time: passed whole, the capitals of a vocabulary
    short of ``C`` went unchecked, and a draft with ``A`` and ``M`` swapped was taken."""
    try:
        ours = await target.tokenize(text)
    except ConfigError:
        if len(text) < 2:
            return True
        for char in dict.fromkeys(text):
            if not await reads_alike(target, draft, char):
                return False
        return True
    try:
        theirs = await draft.tokenize(text)
    except ConfigError:
        return False
    return list(ours) == list(theirs)


__all__ = ["TOKENIZER_PROBES", "Lookahead", "LookaheadOptions", "accepted_prefix", "reads_alike",
           "step_state", "steps_to_propose"]
