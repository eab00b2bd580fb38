"""The search tree shared by step-level searches (beam, DVTS, REBASE, ETS): grow, score, prune, account, choose.

A node is one reasoning step: a continuation sampled up to and including the step delimiter. It keeps the token
ids it was generated with, and a child's prompt is its parent's exact prompt ids plus its own, so nothing is ever
re-tokenized and every backend sees the tree's sharing. A search only decides *which* nodes to expand, with how
many children, and which to drop; this module does the rest the same way for all of them:

- expansion within budget: every expansion of a round is planned up front (highest priority first, trimmed as
  ``Meter.plan`` trims), then the round's backend calls run concurrently, so a batching engine sees them together;
- PRM scoring of each new step against its whole path (``score_steps``), kept on the node with its aggregate;
  a path too long for the verifier's context is not grown while a judged one is open;
- KV hygiene: a node that will never be extended again (pruned, finished, or already expanded, since its
  children now hold its prefix) is released at once, so the local engine frees its private blocks;
- live-KV accounting: the engine's own figure when it reports one, else the tree's unique live tokens (prompt
  plus every node on a live path, shared ancestors once), noted after generation (the round's peak) and after
  pruning;
- the final choice among complete leaves, by aggregated PRM score or PRM-weighted vote.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import Field, model_validator

from ttc.budget import Meter
from ttc.concurrency import clean_up, run_concurrently, run_to_end
from ttc.errors import ConfigError, ContextLengthError, TTCError, VerifierError
from ttc.strategies.base import (
    DISTINCT,
    TEMPERATURE,
    TOP_P,
    Context,
    Strategy,
    StrategyOptions,
    StrategyResult,
    check_distinct,
)
from ttc.strategies.sampling import charge_refusal, choose, mark_selected
from ttc.types import Candidate, Completion, Problem, Sampling
from ttc.verifiers.answer import extract_stated_answer, normalize_answer, stopped_answer
from ttc.verifiers.base import Aggregation, ProcessVerifier, aggregate, score_steps_costed

TreeSelection = Literal["score", "weighted_vote"]

NO_PROCESS_VERIFIER = ("tree searches score every step with a process verifier: pass one, e.g. solve(..., "
                       "verifier=prm) with a ProcessVerifier (score_steps); on the command line only the embedded "
                       "default has one (leave out --model and --url), so search another model from Python")
TOO_LONG = "longer than the verifier's context"
UNREADABLE = "unreadable by the verifier"
SET_ASIDE = {"verifier_context": TOO_LONG, "verifier_unreadable": UNREADABLE}  # unscorable's reason -> prune reason


class TreeSearchOptions(StrategyOptions):
    """Options every step-level search shares."""

    max_depth: int = Field(24, ge=1, le=1024, description="steps per solution at most; a step at this depth ends it")
    max_step_tokens: int = Field(256, ge=1, description="generated tokens per step at most")
    temperature: float = Field(TEMPERATURE, ge=0.0)
    top_p: float = Field(TOP_P, gt=0.0, le=1.0)
    # Unset: the verifier's own ``preferred_aggregate``, else "last", which suits PRMs trained to judge the whole
    # prefix at each step. A verifier that judges each step on its own (likelihood) prefers "min": it scores a
    # consistent sequel to a wrong step high, so a path is only as good as its weakest step.
    aggregate: Aggregation | None = Field(None, description="how step scores rank a path: min, last, prod or mean")
    select: TreeSelection = Field("weighted_vote", description="final pick: best score, or PRM-weighted vote")
    distinct: bool = Field(False, description=f"a node's children: {DISTINCT}")

    @model_validator(mode="after")
    def _distinct_needs_temperature(self) -> TreeSearchOptions:
        check_distinct(self.distinct, self.temperature)
        return self


@dataclass(eq=False)
class StepNode:
    """One step of the tree. The root is the prompt (``token_ids`` = prompt ids, depth 0)."""

    id: int
    parent: StepNode | None
    prefix: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    depth: int
    step_scores: tuple[float, ...] = ()
    score: float = 0.0
    scored: bool = False  # False where the wall time ran out before the verifier saw it, blank lines, or refused
    refused: str | None = None  # TOO_LONG or UNREADABLE: the verifier refused its path (so every child's too)
    complete: bool = False
    cut: bool = False  # the step ran out of tokens (finish reason "length")
    ended: bool = False  # the model ended the solution here (rather than max_depth)
    answer: str | None = None
    held: bool = True
    expanded: bool = False
    pruned: bool = False
    children: list[StepNode] = field(default_factory=list)

    def path(self) -> list[StepNode]:
        """The steps from the first one down to this node (the root excluded)."""
        steps: list[StepNode] = []
        node: StepNode | None = self
        while node is not None and node.parent is not None:
            steps.append(node)
            node = node.parent
        return steps[::-1]

    def solution(self) -> str:
        return "".join(step.text for step in self.path())

    @property
    def known_score(self) -> float | None:
        """The path's score, or None where it was never scored: unknown, not low."""
        return self.score if self.scored else None

    @property
    def open(self) -> bool:
        """On the frontier: may still be expanded."""
        return not (self.complete or self.expanded or self.pruned)


def ends_solution(completion: Completion, delimiter: str) -> bool:
    """A step ends the solution when it states the answer, or when generation stopped for anything but the step
    delimiter. The delimiter is the only stop string, so a stop with the delimiter in the text ended a step and one
    without it was the end of sequence; a token limit ends it too. (A subword token can finish the delimiter and go
    on, "\n\nThe": the text ends at the delimiter, on both backends, while the step's token ids hold the whole token,
    so a solution's text can lack what such a token held past it, mostly whitespace.)"""
    if extract_stated_answer(completion.text) is not None:
        return True
    return completion.finish_reason != "stop" or delimiter not in completion.text


def plan_round(meter: Meter, wants: Sequence[int], max_tokens: int) -> list[tuple[int, int]]:
    """(children, max_tokens) for each expansion in order, as ``Meter.plan`` would grant them one after another.

    Each grant reserves its worst case (children x max_tokens, one call) before the next is planned, so running
    the whole round concurrently can never generate more than the budget allows; the last expansions are the
    ones trimmed: first their number of children; a step length is trimmed only for the first grant, since
    later ones see only tokens reserved (not yet spent) ahead of them and wait for the next wave instead.
    """
    if meter.exhausted():
        return [(0, 0)] * len(wants)
    tokens, calls = meter.tokens_left(), meter.calls_left()
    grants: list[tuple[int, int]] = []
    for n in wants:
        if n < 1 or max_tokens < 1 or tokens == 0 or calls == 0:
            grants.append((0, 0))
            continue
        if tokens is None or tokens >= n * max_tokens:
            grant = (n, max_tokens)
        elif tokens >= max_tokens:
            grant = (tokens // max_tokens, max_tokens)
        elif any(k for k, _ in grants):
            # Only reserved, not spent, by the grants ahead: the next wave replans from what they really used,
            # rather than cutting this step short now.
            grants.append((0, 0))
            continue
        else:
            grant = (1, tokens)
        grants.append(grant)
        if tokens is not None:
            tokens -= grant[0] * grant[1]
        if calls is not None:
            calls -= 1
    return grants


def by_rank(node: StepNode) -> tuple[float, bool, int]:
    """Sort key: best score first, a judged step before an unscored one of the same score, then creation order
    (so ties break the same way every run)."""
    return (-node.score, not node.scored, node.id)


class SearchTree:
    """A live search over one problem. Create it with :meth:`open`."""

    def __init__(self, problem: Problem, meter: Meter, ctx: Context, prm: ProcessVerifier,
                 options: TreeSearchOptions, root: StepNode) -> None:
        self.problem = problem
        self.meter = meter
        self.ctx = ctx
        self.prm = prm
        self.options = options
        self.root = root
        self.nodes: list[StepNode] = [root]
        self.finished: list[StepNode] = []
        self.earlier: tuple[StepNode, ...] = ()  # solutions of earlier searches of the question (see open)
        self.rounds = 0

    @classmethod
    async def open(cls, problem: Problem, meter: Meter, ctx: Context, options: TreeSearchOptions, *,
                   root: StepNode | None = None, earlier: Sequence[StepNode] = ()) -> SearchTree:
        """A new search over ``problem``; from ``root``, the root of an earlier search of the same question, it
        grows new children under that recorded prompt node instead of opening another (a pooled batch's next
        search for a question: one tree per question in its trace). ``earlier`` are the solutions those searches
        finished: where they were judged, the question can be answered whatever this search's paths are."""
        if ctx.prm is None:
            raise ConfigError(NO_PROCESS_VERIFIER)
        if not ctx.step_delimiter:
            raise ConfigError("the step delimiter is empty: set Context.step_delimiter, e.g. '\\n'")
        if root is None:
            text, ids, node_id = await ctx.open_question(problem.question)
            prompt = tuple(ids)
            root = StepNode(id=node_id, parent=None, prefix=prompt, token_ids=prompt, text=text, depth=0)
        else:
            root = StepNode(id=root.id, parent=None, prefix=root.prefix, token_ids=root.token_ids, text=root.text,
                            depth=0)
        tree = cls(problem, meter, ctx, ctx.prm, options, root)
        tree.earlier = tuple(earlier)
        tree.note_kv()
        return tree

    @property
    def aggregation(self) -> Aggregation:
        """How step scores rank a path: the option when set, else what the verifier prefers, else ``last``."""
        preferred: Aggregation = getattr(self.prm, "preferred_aggregate", "last")
        return self.options.aggregate or preferred

    # -- reading -------------------------------------------------------------------------------------------------
    def frontier(self) -> list[StepNode]:
        """Nodes that may still be expanded, best first."""
        return sorted((n for n in self.nodes if n.open), key=by_rank)

    def live_tokens(self) -> int:
        """KV tokens the tree needs now: every held node and its ancestors, each counted once."""
        seen: set[int] = set()
        total = 0
        for node in self.nodes:
            walk: StepNode | None = node if node.held else None
            while walk is not None and walk.id not in seen:
                seen.add(walk.id)
                total += len(walk.token_ids)
                walk = walk.parent
        return total

    def note_kv(self) -> None:
        live = self.ctx.backend.stats().live_kv_tokens
        self.meter.note_kv(live if live > 0 else self.live_tokens())

    # -- growing -------------------------------------------------------------------------------------------------
    async def expand(self, requests: Sequence[tuple[StepNode, int]]) -> list[StepNode]:
        """Give each node (in priority order) up to its number of children within budget; return the new nodes.

        Expansions run in waves: a wave plans what the budget grants at worst case and runs it concurrently;
        when that trimmed some, the next wave plans again from what was actually spent. With budget to spare
        there is one wave and one backend call per node. Nodes the budget cannot reach stay on the frontier.
        """
        for node, _ in requests:
            if not node.open:
                raise ConfigError(f"node {node.id} cannot be expanded: it is complete, expanded or pruned")
        wants = [max(0, k) for _, k in requests]
        created: list[StepNode] = []
        expanded: list[StepNode] = []
        while any(wants):
            grants = plan_round(self.meter, wants, self.options.max_step_tokens)
            jobs = [(i, k, cap) for i, (k, cap) in enumerate(grants) if k > 0]
            if not jobs:
                break
            spent = self.meter.usage().generated_tokens
            wave = await self._wave([(requests[i][0], k, cap) for i, k, cap in jobs])
            for i, k, _ in jobs:
                wants[i] -= k
                if not requests[i][0].expanded:
                    requests[i][0].expanded = True
                    expanded.append(requests[i][0])
            created += wave
            # Stop where the wave generated nothing; one whose children all repeated earlier ones (drawn without
            # replacement, then not kept) generated them, and the nodes' other children are still owed.
            if self.meter.usage().generated_tokens == spent:
                break
        self.note_kv()
        await self._score(created)
        for child in created:
            if child.complete:
                await self._finish(child)
        await self._set_aside_unjudgeable()
        for node in expanded:
            await self._release(node)
        return created

    async def _wave(self, jobs: Sequence[tuple[StepNode, int, int]]) -> list[StepNode]:
        """One concurrent backend call per (node, children, max_tokens); the children, in job order.

        Each call is charged as it returns: where another call of the wave fails, the calls that returned were
        still paid for, and the failed trace's usage says so. Their children join the tree before the failure goes
        on, so the trace holds what was spent and the search's close releases their sequences."""
        seeded = [(node, k, cap, self.ctx.next_seed()) for node, k, cap in jobs]
        drawn: list[list[Completion] | None] = [None for _ in seeded]

        async def run(index: int, node: StepNode, k: int, cap: int, seed: int) -> None:
            sampling = Sampling(max_tokens=cap, temperature=self.options.temperature, top_p=self.options.top_p,
                                stop=(self.ctx.step_delimiter,), seed=seed, distinct=self.options.distinct)
            completions = await self.ctx.backend.complete(node.prefix, k, sampling)
            self.meter.charge(completions)
            drawn[index] = completions
            live = self.ctx.backend.stats().live_kv_tokens
            if live > 0:
                self.meter.note_kv(live)

        try:
            await run_concurrently([functools.partial(run, index, *job) for index, job in enumerate(seeded)])
        except BaseException:
            await clean_up(self._keep(seeded, drawn))
            raise
        # To its end: children not yet added when a cancellation lands would hold their KV past the search's close.
        return await run_to_end(self._keep(seeded, drawn))

    async def _keep(self, seeded: Sequence[tuple[StepNode, int, int, int]],
                    drawn: Sequence[list[Completion] | None]) -> list[StepNode]:
        """The children of the calls that returned, added to the tree in job order, so node ids do not depend on
        which call returned first."""
        children: list[StepNode] = []
        for (node, _, _, _), completions in zip(seeded, drawn, strict=True):
            if completions is None:
                continue
            if self.options.distinct:
                # A node whose children the budget split over several waves was drawn without replacement
                # within each wave only: a later wave's repeat of an earlier child is spent but not kept.
                known = {child.token_ids for child in node.children}
                repeats = [c for c in completions if tuple(c.token_ids) in known]
                for c in repeats:
                    await self.ctx.backend.release(node.prefix + tuple(c.token_ids))
                if repeats:
                    self.ctx.recorder.event("repeats", {"count": len(repeats),
                                                        "tokens": sum(len(c.token_ids) for c in repeats)},
                                            node_id=node.id)
                completions = [c for c in completions if tuple(c.token_ids) not in known]
            children += [self._add_child(node, c) for c in completions]
        return children

    def _add_child(self, parent: StepNode, completion: Completion) -> StepNode:
        ids = tuple(completion.token_ids)
        depth = parent.depth + 1
        node_id = self.ctx.recorder.add_node(parent=parent.id, text=completion.text, token_count=len(ids),
                                             logprob=completion.cumulative_logprob)
        ended = ends_solution(completion, self.ctx.step_delimiter)
        child = StepNode(id=node_id, parent=parent, prefix=parent.prefix + ids, token_ids=ids,
                         text=completion.text, depth=depth, cut=completion.finish_reason == "length", ended=ended,
                         complete=ended or depth >= self.options.max_depth)
        parent.children.append(child)
        self.nodes.append(child)
        return child

    async def _score(self, nodes: Sequence[StepNode]) -> None:
        """PRM scores for each node's path, concurrently; an empty step inherits its parent's scores.

        Three kinds of node stay unscored (``scored`` False, no score in the trace), and a choice by score leaves
        them out: those the wall time leaves no time to score (no verifier call starts after it, as no backend call
        does), a path of blank lines only, which gives a verifier nothing to judge, and a path longer than the
        verifier's context or holding text it cannot read. The last two still have to rank among their siblings:
        each takes the lowest score of the steps judged with it (0.0 where none was), so that it never outranks a
        judged step, whatever scale the verifier scores on. Where not even the first steps can be judged, the
        verifier cannot guide this search, and its error is raised."""
        results: dict[int, list[float]] = {}
        set_aside: dict[int, tuple[str, TTCError]] = {}  # node id -> why (unscorable) and the refusal
        blank = [node for node in nodes if not any(step.text.strip() for step in node.path())]
        blank_ids = {node.id for node in blank}

        async def one(node: StepNode) -> None:
            if node.id in blank_ids:
                return
            if not node.text.strip():
                parent = node.parent  # a step before it is not blank: the parent is a step, scored, late or refused
                if parent is not None and parent.scored:
                    results[node.id] = list(parent.step_scores)
                if parent is None or parent.refused is None:
                    return  # under a refused path, asked again: the verifier's refusal names it as one
            if self.meter.time_left() == 0.0:
                return
            steps = [s for s in (step.text.strip() for step in node.path()) if s]
            try:
                scored = await score_steps_costed(self.prm, self.ctx.question_text(self.problem.question), steps)
            except (VerifierError, ContextLengthError) as exc:
                set_aside[node.id] = (charge_refusal(self.meter, exc), exc)
                return
            scores = scored.scores
            self.meter.charge_verifier(scored.scored_tokens, calls=scored.calls)
            if len(scores) != len(steps):
                raise VerifierError(f"the process verifier returned {len(scores)} scores for {len(steps)} steps: "
                                    "score_steps must return one score per step")
            results[node.id] = [float(s) for s in scores]

        await run_concurrently([functools.partial(one, node) for node in nodes])
        late = [node.id for node in nodes if node.id not in results and node.id not in blank_ids
                and node.id not in set_aside]
        if late:
            self.ctx.recorder.event("unscored", {"reason": "wall_time", "scored": len(results),
                                                 "unscored": len(late), "node_ids": late})
        for node in nodes:
            if node.id not in results:
                continue
            node.step_scores = tuple(results[node.id])
            node.score = aggregate(node.step_scores, self.aggregation) if node.step_scores else 0.0
            node.scored = True
            if not math.isfinite(node.score):  # each step's score is finite, but a product of them can overflow
                raise VerifierError(f"the path of node {node.id} scores {node.score!r} under aggregate="
                                    f"{self.aggregation!r} of its step scores {list(node.step_scores)}: path scores "
                                    "must be finite; use aggregate='min' or 'last', or a verifier scoring in [0, 1]")
            self.ctx.recorder.update(node.id, step_scores=node.step_scores, score=node.score)
        floor = min((node.score for node in nodes if node.scored), default=0.0)
        if blank:
            for node in blank:
                node.score = floor
            self.ctx.recorder.event("unscored", {"reason": "blank_steps", "scored": len(results),
                                                 "unscored": len(blank), "node_ids": [n.id for n in blank],
                                                 "ranked_as": floor})
        if set_aside and not results and not any(node.scored for node in (*self.earlier, *self.nodes)):
            # Not even the first steps can be judged: every path only grows, so the search would go on blind.
            raise next(iter(set_aside.values()))[1]
        for node in nodes:  # ranked as a blank path is: never above a judged step, and left out of a choice by score
            if node.id in set_aside:
                node.score, node.refused = floor, SET_ASIDE[set_aside[node.id][0]]
        for reason in dict.fromkeys(why for why, _ in set_aside.values()):
            refused = {node_id: exc for node_id, (why, exc) in set_aside.items() if why == reason}
            self.ctx.recorder.event("unscored", {"reason": reason, "scored": len(results), "unscored": len(refused),
                                                 "node_ids": list(refused), "ranked_as": floor,
                                                 "error": str(next(iter(refused.values())))})

    async def _set_aside_unjudgeable(self) -> None:
        """Drop the open paths the verifier refused (too long for it, or unreadable) while a judged one is open:
        every step only extends a path, so nothing grown under one can be scored, ranked against a judged path or
        chosen by score, and the budget it would take goes to judged paths instead. Where no judged path is open
        they are grown on blind, so that the search can still end with an answer, unless a judged solution already
        states one: a choice by score would leave out anything grown under them."""
        unjudgeable = [node for node in self.nodes if node.open and node.refused is not None]
        if not unjudgeable:
            return
        suffix = ""
        if not any(node.open and node.scored for node in self.nodes):
            if not any(node.scored and node.answer is not None and normalize_answer(node.answer)
                       for node in (*self.earlier, *self.finished)):
                return
            suffix = ", and a judged solution states an answer"
        for why in dict.fromkeys(node.refused for node in unjudgeable):
            await self.prune([node for node in unjudgeable if node.refused == why], f"{why}{suffix}")

    async def _finish(self, node: StepNode) -> None:
        # A path whose last step ran out of tokens stops mid-line, and one stopped by max_depth mid-solution.
        node.answer = stopped_answer(node.solution(), cut=node.cut, ended=node.ended)
        self.finished.append(node)
        self.ctx.recorder.update(node.id, status="finished", answer=node.answer)
        await self._release(node)

    async def _release(self, node: StepNode) -> None:
        if node.held:
            node.held = False
            await self.ctx.backend.release(node.prefix)

    async def prune(self, nodes: Sequence[StepNode], reason: str | Mapping[int, str]) -> None:
        """Drop frontier nodes: marked pruned with the reason (one for all, or per node id), KV released."""
        for node in nodes:
            why = reason if isinstance(reason, str) else reason[node.id]
            node.pruned = True
            self.ctx.recorder.update(node.id, status="pruned", reason=why)
            await self._release(node)
        if nodes:
            self.note_kv()

    def round_event(self, kept: Sequence[StepNode], pruned: Sequence[StepNode], **extra: object) -> None:
        """Record one round's selection: who was kept, who was pruned, and every frontier score."""
        everyone = sorted([*kept, *pruned], key=lambda n: n.id)
        payload: dict[str, object] = {
            "round": self.rounds,
            "kept": [n.id for n in kept],
            "pruned": [n.id for n in pruned],
            "scores": {str(n.id): n.score for n in everyone},
            "finished": len(self.finished),
            "generated_tokens": self.meter.usage().generated_tokens,
        }
        payload.update(extra)
        self.ctx.recorder.event("round", payload)
        self.rounds += 1

    async def close(self) -> list[StepNode]:
        """End the search: whatever is still open is dropped and released; returns those partial leaves."""
        leftover = self.frontier()
        reason = "search ended: budget spent" if self.meter.exhausted() else "search ended"
        await self.prune(leftover, reason)
        for node in self.nodes:
            await self._release(node)
        return leftover

    def result(self, leftover: Sequence[StepNode]) -> StrategyResult:
        """The chosen solution among complete leaves; partial ones (answer None) too when none completed with an
    answer."""
        return choose_leaves(self.ctx, len(self.root.prefix), self.finished, leftover, self.options.select)


def choose_leaves(ctx: Context, prompt_tokens: int, finished: Sequence[StepNode], leftover: Sequence[StepNode],
                  select: TreeSelection) -> StrategyResult:
    """The chosen solution among the complete leaves of one question's searches (several in a pooled batch, all
    grown from one prompt of ``prompt_tokens``), marked in the trace; partial leaves (answer None) too when none
    completed with an answer."""
    # A leaf the budget cut mid-step ends the search "finished" without an answer: where no finished leaf answers,
    # the partial leaves compete with those on their scores (a fragment once beat a better-scored path).
    answering = any(n.answer is not None for n in finished)
    leaves = list(finished) if answering else [*finished, *sorted(leftover, key=by_rank)]
    candidates = [Candidate(text=n.solution(), answer=n.answer, score=n.known_score,
                            token_count=len(n.prefix) - prompt_tokens, node_id=n.id) for n in leaves]
    choice = choose(ctx, candidates, select)
    mark_selected(ctx, choice)
    best = choice.candidate
    return StrategyResult(answer=best.answer if best else None, text=best.text if best else "",
                          score=best.score if best else None, candidates=tuple(candidates[: len(finished)]))


TreeOptionsT = TypeVar("TreeOptionsT", bound=TreeSearchOptions)


class TreeSearch(Strategy[TreeOptionsT]):
    """Base of the step-level searches: subclasses implement :meth:`search` on a :class:`SearchTree`."""

    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        tree = await SearchTree.open(problem, meter, ctx, self.options)
        return tree.result(await self.grow(tree))

    async def grow(self, tree: SearchTree) -> list[StepNode]:
        """Search ``tree`` and close it, returning its partial leaves; a failed search still releases its KV."""
        try:
            await self.search(tree)
        except BaseException:
            await clean_up(tree.close())  # a second cancellation cut an anyio-shielded close off after one release
            raise
        return await run_to_end(tree.close())

    @abstractmethod
    async def search(self, tree: SearchTree) -> None:
        """Grow and prune ``tree`` until the budget or the search is done."""


__all__ = ["NO_PROCESS_VERIFIER", "TOO_LONG", "UNREADABLE", "SearchTree", "StepNode", "TreeSearch", "TreeSearchOptions",
           "TreeSelection", "by_rank", "choose_leaves", "ends_solution", "plan_round"]
