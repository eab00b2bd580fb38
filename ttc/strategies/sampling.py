"""Shared steps of sampling strategies: draw within budget, record candidates, score them, pick one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field

from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.concurrency import run_to_end
from ttc.errors import ConfigError, ContextLengthError, TTCError, VerifierError
from ttc.strategies.base import TEMPERATURE, TOP_P, Context, StrategyOptions
from ttc.types import Candidate, Completion, Sampling
from ttc.verifiers.answer import normalize_answer, stopped_answer
from ttc.verifiers.arithmetic import computes_right
from ttc.verifiers.base import score_outcome_costed, unscorable
from ttc.verifiers.operands import operands_sourced
from ttc.verifiers.prm import spent_before
from ttc.verifiers.vote import VoteResult, majority_vote, vote_weights

Selection = Literal["auto", "score", "vote", "weighted_vote"]
CHECK_ARITHMETIC = ("samples that write a wrong result for an equation (17 + 8 = 24) take no part in the choice, "
                    "unless all do")
CHECK_OPERANDS = ("samples that compute with a number neither the question nor an earlier line gives take no part "
                  "in the choice, unless all do; only for problems that state all their data")


async def draw(ctx: Context, meter: Meter, prompt: Sequence[int], n: int, max_tokens: int,
               temperature: float, top_p: float, *, distinct: bool = False, reserve: int = 0,
               backend: Backend | None = None) -> list[Completion]:
    """Up to ``n`` samples of up to ``max_tokens`` each, trimmed to what the budget still allows once ``reserve``
    tokens are kept back; ``distinct`` draws them without replacement (different texts, fewer where the
    distribution has fewer). ``backend`` is the model to ask (default: the target, ``ctx.backend``)."""
    model = backend or ctx.backend
    k, cap = meter.plan(n, max_tokens, reserve=reserve)
    if k == 0:
        return []
    sampling = Sampling(max_tokens=cap, temperature=temperature, top_p=top_p, seed=ctx.next_seed(),
                        distinct=distinct)
    completions = await model.complete(prompt, k, sampling)
    meter.charge(completions)
    meter.note_kv(model.stats().live_kv_tokens or len(prompt) + sum(len(c.token_ids) for c in completions))
    # Complete samples are never extended: let the engine free their private KV now (the shared prompt stays
    # cached for the next round).
    await release_all(model, [[*prompt, *c.token_ids] for c in completions])
    return completions


async def release_all(model: Backend, sequences: Sequence[Sequence[int]]) -> None:
    """Release every sequence, also where the caller is cancelled meanwhile (then re-raised once all are): a
    cancellation between two releases left the rest held in the caller's backend, and every later run on it
    counted them in its peak KV."""
    async def release_each() -> None:
        for ids in sequences:
            await model.release(ids)

    await run_to_end(release_each())


def record(ctx: Context, root: int, completions: Sequence[Completion]) -> list[Candidate]:
    """Add each completion as a finished child of ``root`` and return it as an unscored candidate."""
    out = []
    for c in completions:
        # A sample cut off by its token limit has no final line: its last number is an intermediate value.
        answer = stopped_answer(c.text, cut=c.finish_reason == "length", ended=True)
        node = ctx.recorder.add_node(parent=root, text=c.text, token_count=len(c.token_ids), status="finished",
                                     logprob=c.cumulative_logprob, answer=answer)
        out.append(Candidate(text=c.text, answer=answer, score=None, token_count=len(c.token_ids), node_id=node))
    return out


async def score(ctx: Context, meter: Meter, question: str, candidates: Sequence[Candidate],
                refusals: list[TTCError] | None = None) -> list[Candidate]:
    """Attach the verifier's score to each candidate (unchanged when no verifier is configured).

    Two kinds keep ``score=None``, and ``choose`` leaves them out of a choice by score: those the wall time leaves
    no time to score, and those the verifier cannot judge on their own account, too long for its context or
    holding text it cannot read (each kind named in an ``unscored`` event). Where no candidate can be judged, the
    verifier cannot judge this question at all and its error is raised; a caller that scores a question's samples
    a round at a time passes ``refusals`` instead, which collects each refusal, and decides once every round is in
    (:class:`ttc.strategies.vote_rounds.VoteRounds`).
    """
    if ctx.verifier is None:
        return list(candidates)
    out: list[Candidate] = []
    refused: dict[str, list[tuple[Candidate, TTCError]]] = {}  # by unscorable's reason
    for index, cand in enumerate(candidates):
        if meter.time_left() == 0.0:  # no verifier call starts after the wall time is spent, as no backend call does
            ctx.recorder.event("unscored", {"reason": "wall_time",
                                            "scored": index - sum(map(len, refused.values())),
                                            "unscored": len(candidates) - index})
            out.extend(candidates[index:])
            break
        try:
            value, tokens, calls = await score_outcome_costed(ctx.verifier, question, cand.text)
        except (VerifierError, ContextLengthError) as exc:
            refused.setdefault(charge_refusal(meter, exc), []).append((cand, exc))
            out.append(cand)
            continue
        meter.charge_verifier(tokens, calls=calls)
        if cand.node_id is not None:
            ctx.recorder.update(cand.node_id, score=value)
        out.append(Candidate(text=cand.text, answer=cand.answer, score=value, token_count=cand.token_count,
                             node_id=cand.node_id))
    every = [exc for group in refused.values() for _, exc in group]
    if refusals is not None:
        refusals.extend(every)
    elif every and len(every) == len(candidates):
        raise every[0]
    for reason, group in refused.items():
        ctx.recorder.event("unscored", {"reason": reason, "unscored": len(group),
                                        "node_ids": [c.node_id for c, _ in group], "error": str(group[0][1])})
    return out


def charge_refusal(meter: Meter, exc: VerifierError | ContextLengthError) -> str:
    """Charge what a scoring that raised ``exc`` spent before it failed (a judge asks step by step), and raise it
    again unless it refused this one solution on its own account (too long for the verifier's context, or text it
    cannot read), which the caller leaves unscored; ``unscorable``'s reason for it."""
    spent = spent_before(exc)
    meter.charge_verifier(spent.scored_tokens, calls=spent.calls)
    reason = unscorable(exc)
    if reason is None:
        raise exc
    return reason


@dataclass(frozen=True)
class Checks:
    """Model-free checks a sample must pass to take part in the choice (``check_*`` options of the strategies)."""

    arithmetic: bool = False  # every lone ``a op b = c`` states the right c (ttc.verifiers.arithmetic)
    operands: bool = False  # every operand was given by the question or an earlier line (ttc.verifiers.operands)

    def enabled(self) -> list[str]:
        """The names of the checks that are on, in the order ``failed`` reports them."""
        return [name for name, on in (("arithmetic", self.arithmetic), ("operands", self.operands)) if on]

    def failed(self, question: str, text: str) -> list[str]:
        """The names of the checks ``text`` fails, in a fixed order."""
        failed = []
        if self.arithmetic and not computes_right(text):
            failed.append("arithmetic")
        if self.operands and not operands_sourced(question, text):
            failed.append("operands")
        return failed


class SampledOptions(StrategyOptions):
    """What every sample-then-choose strategy is asked: how to draw its samples and how to choose among them."""

    max_tokens: int = Field(512, ge=1, description="generated tokens per sample at most")
    temperature: float = Field(TEMPERATURE, ge=0.0)
    top_p: float = Field(TOP_P, gt=0.0, le=1.0)
    select: Selection = "auto"
    check_arithmetic: bool = Field(False, description=CHECK_ARITHMETIC)
    check_operands: bool = Field(False, description=CHECK_OPERANDS)

    @property
    def checks(self) -> Checks:
        return Checks(arithmetic=self.check_arithmetic, operands=self.check_operands)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None
    how: str
    vote: VoteResult | None
    left_out: int = 0  # candidates that failed a check and took no part in the choice
    failed: tuple[tuple[str, int], ...] = ()  # (check, candidates failing it) for each check that is on
    passing: int = 0  # candidates that passed every check that is on (all of them when none is on)
    voters: int = 0  # candidates that passed every check and state an answer: the votes a decision rests on
    unscored: int = 0  # candidates the verifier had no time to score, which took no part in a choice by score


def resolve_selection(selection: Selection, ctx: Context) -> str:
    return check_selection(selection, has_verifier=ctx.verifier is not None)


def check_selection(selection: Selection, *, has_verifier: bool) -> str:
    """The rule ``selection`` stands for on a setup with or without a verifier; ConfigError where it needs one and
    there is none. Callers check it before a trace opens: best-of-N chooses only after its samples are drawn."""
    if selection == "auto":
        return "weighted_vote" if has_verifier else "vote"
    if selection in ("score", "weighted_vote") and not has_verifier:
        raise ConfigError(f"select={selection!r} ranks samples by a verifier's score and none is configured: pass "
                          "verifier=... (or a PRM), or use select='vote'")
    return selection


def choose(ctx: Context, candidates: Sequence[Candidate], how: str, checks: Checks = Checks(),
           question: str = "") -> Choice:
    """Pick the final candidate: by highest score, by plain majority, or by score-weighted majority.

    Within the winning answer class, the best-scored (then shortest, then first) member is returned, so the
    reported text actually contains the reported answer; by score, the best-scored candidate that states an
    answer (any candidate only where none does). Candidates that fail one of ``checks`` (read against
    ``question``) take no part, unless no candidate that passes them states an answer: then all do, so a question
    is never left unanswered for them. In a choice by score (``score``, ``weighted_vote``), candidates the verifier
    had no time to score take no part either, on the same terms: an unscored sample would weigh 1 in a vote of
    probabilities, and its score is unknown, not low.
    """
    scored = [c for c in candidates if c.score is not None]
    unscored = len(candidates) - len(scored) if how != "vote" else 0
    if not unscored or not any(has_answer(c) for c in scored):
        return _choose_among(ctx, candidates, how, checks, question)
    return replace(_choose_among(ctx, scored, how, checks, question), unscored=unscored)


def _choose_among(ctx: Context, candidates: Sequence[Candidate], how: str, checks: Checks,
                  question: str) -> Choice:
    failures = [checks.failed(question, c.text) for c in candidates]
    failed = tuple((name, sum(name in f for f in failures)) for name in checks.enabled())
    passing = [c for c, f in zip(candidates, failures, strict=True) if not f]
    left_out = 0
    # A sample that states no answer passes every check (it has nothing to check), so the passing ones alone
    # choose only where one of them answers.
    if any(has_answer(c) for c in passing):
        left_out = len(candidates) - len(passing)
        candidates = passing
    if not candidates:
        return Choice(None, how, None)
    n_passing = len(passing)
    if how == "score":  # the best-scored candidate that answers: one cut off before its answer answers nothing
        ranked = [c for c in candidates if has_answer(c)] or list(candidates)
        best = max(ranked, key=lambda c: (c.score if c.score is not None else float("-inf"), -c.token_count))
        return Choice(best, how, None, left_out, failed, n_passing)
    weights = (vote_weights([c.score for c in candidates], [c.answer for c in candidates])
               if how == "weighted_vote" else None)
    result = majority_vote([c.answer for c in candidates], weights, rng=ctx.rng)
    if result.key is None:  # no answer to vote on: the best-scored candidate (the first when none is scored)
        fallback = max(candidates, key=lambda c: c.score if c.score is not None else float("-inf"))
        return Choice(fallback, how, result, left_out, failed, n_passing)
    members = [c for c in candidates if c.answer is not None and normalize_answer(c.answer) == result.key]
    best = max(members, key=lambda c: (c.score if c.score is not None else 0.0, -c.token_count))
    return Choice(best, how, result, left_out, failed, n_passing, sum(has_answer(c) for c in passing))


def has_answer(candidate: Candidate) -> bool:
    """Whether the candidate states an answer a vote can count."""
    return candidate.answer is not None and bool(normalize_answer(candidate.answer))


def mark_selected(ctx: Context, choice: Choice) -> None:
    cand = choice.candidate
    if cand is not None and cand.node_id is not None:
        ctx.recorder.update(cand.node_id, status="selected")
    tally = dict(choice.vote.tally) if choice.vote is not None else {}
    ctx.recorder.event("select", {"how": choice.how, "answer": cand.answer if cand else None,
                                  "score": cand.score if cand else None, "tally": tally,
                                  "left_out": choice.left_out, "failed": dict(choice.failed),
                                  "unscored": choice.unscored},
                       node_id=cand.node_id if cand else None)
