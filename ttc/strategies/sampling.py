"""Shared steps of sampling strategies: draw within budget, record candidates, score them, pick one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ttc.budget import Meter
from ttc.strategies.base import Context
from ttc.types import Candidate, Completion, Sampling
from ttc.verifiers.answer import extract_answer, normalize_answer
from ttc.verifiers.arithmetic import computes_right
from ttc.verifiers.base import score_outcome_costed
from ttc.verifiers.vote import VoteResult, majority_vote

Selection = Literal["auto", "score", "vote", "weighted_vote"]
CHECK_ARITHMETIC = ("samples that write a wrong result for an equation (17 + 8 = 24) take no part in the choice, "
                    "unless all do")


async def draw(ctx: Context, meter: Meter, prompt: Sequence[int], n: int, max_tokens: int,
               temperature: float, top_p: float) -> list[Completion]:
    """Up to ``n`` samples of up to ``max_tokens`` each, trimmed to what the budget still allows."""
    k, cap = meter.plan(n, max_tokens)
    if k == 0:
        return []
    sampling = Sampling(max_tokens=cap, temperature=temperature, top_p=top_p, seed=ctx.next_seed())
    completions = await ctx.backend.complete(prompt, k, sampling)
    meter.charge(completions)
    meter.note_kv(ctx.backend.stats().live_kv_tokens or len(prompt) + sum(len(c.token_ids) for c in completions))
    # Complete samples are never extended: let the engine free their private KV now (the shared prompt stays
    # cached for the next round).
    for c in completions:
        await ctx.backend.release([*prompt, *c.token_ids])
    return completions


def record(ctx: Context, root: int, completions: Sequence[Completion]) -> list[Candidate]:
    """Add each completion as a finished child of ``root`` and return it as an unscored candidate."""
    out = []
    for c in completions:
        answer = extract_answer(c.text)
        node = ctx.recorder.add_node(parent=root, text=c.text, token_count=len(c.token_ids), status="finished",
                                     logprob=c.cumulative_logprob, answer=answer)
        out.append(Candidate(text=c.text, answer=answer, score=None, token_count=len(c.token_ids), node_id=node))
    return out


async def score(ctx: Context, meter: Meter, question: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Attach the verifier's score to each candidate (unchanged when no verifier is configured)."""
    if ctx.verifier is None:
        return list(candidates)
    scored = []
    for cand in candidates:
        value, tokens = await score_outcome_costed(ctx.verifier, question, cand.text)
        meter.charge_verifier(tokens)
        if cand.node_id is not None:
            ctx.recorder.update(cand.node_id, score=value)
        scored.append(Candidate(text=cand.text, answer=cand.answer, score=value, token_count=cand.token_count,
                                node_id=cand.node_id))
    return scored


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None
    how: str
    vote: VoteResult | None
    slipped: int = 0  # candidates left out of the choice for wrong arithmetic (``check_arithmetic``)


def resolve_selection(selection: Selection, ctx: Context) -> str:
    if selection == "auto":
        return "weighted_vote" if ctx.verifier is not None else "vote"
    return selection


def choose(ctx: Context, candidates: Sequence[Candidate], how: str, check_arithmetic: bool = False) -> Choice:
    """Pick the final candidate: by highest score, by plain majority, or by score-weighted majority.

    Within the winning answer class, the best-scored (then shortest, then first) member is returned, so the
    reported text actually contains the reported answer. With ``check_arithmetic``, candidates that write a wrong
    result for an equation (``ttc.verifiers.arithmetic``) take no part, unless every candidate does: then all do,
    so a question is never left unanswered for it.
    """
    slipped = 0
    if check_arithmetic:
        right = [c for c in candidates if computes_right(c.text)]
        if right:
            slipped = len(candidates) - len(right)
            candidates = right
    if not candidates:
        return Choice(None, how, None)
    if how == "score":
        best = max(candidates, key=lambda c: (c.score if c.score is not None else float("-inf"), -c.token_count))
        return Choice(best, how, None, slipped)
    weights = [max(c.score, 0.0) if how == "weighted_vote" and c.score is not None else 1.0 for c in candidates]
    result = majority_vote([c.answer for c in candidates], weights, rng=ctx.rng)
    if result.key is None:
        return Choice(candidates[0], how, result, slipped)
    members = [c for c in candidates if c.answer is not None and normalize_answer(c.answer) == result.key]
    best = max(members, key=lambda c: (c.score if c.score is not None else 0.0, -c.token_count))
    return Choice(best, how, result, slipped)


def mark_selected(ctx: Context, choice: Choice) -> None:
    cand = choice.candidate
    if cand is not None and cand.node_id is not None:
        ctx.recorder.update(cand.node_id, status="selected")
    tally = dict(choice.vote.tally) if choice.vote is not None else {}
    ctx.recorder.event("select", {"how": choice.how, "answer": cand.answer if cand else None,
                                  "score": cand.score if cand else None, "tally": tally,
                                  "arithmetic_slips": choice.slipped},
                       node_id=cand.node_id if cand else None)
