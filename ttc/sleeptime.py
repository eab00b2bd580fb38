"""Sleep-time compute: think about a context before its questions arrive, so that each question costs less.

``sleep(context, budget)`` asks the model (through the setup's sleep template) to work out what follows from the
context, and keeps one set of notes; ``solve(question, budget, notes=notes)`` then asks each question with the
context and those notes. The sleep run is a trace of its own (strategy ``sleep``), written like any question's:
opened before anything is spent, finished in one transaction, failed on any error. ``load_notes`` reads finished
notes back from the store, so the thinking and the questions can happen in different processes.

With budget for several drafts of the notes, the kept one is the *consensus*: among the drafts that, with
``check_arithmetic``, get every lone ``a op b = c`` of their finished lines right (unless no draft does) and, of
those, ended on their own (not cut off by the token limit) where any did, the one that shares the most lines with
the others. Notes have no single answer to vote on; a fact several drafts derived alike is more likely right than
one a single draft wrote.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from ttc.api import _run_sync
from ttc.backends.base import Backend
from ttc.budget import Meter
from ttc.contexts import sleep_prompt_template
from ttc.controller.per_question import bought_nothing
from ttc.errors import BudgetExhausted, ConfigError, NotFound, OutputError, TTCError
from ttc.session import (
    QuestionRun,
    Session,
    StoreArg,
    check_context,
    check_seed,
    check_store,
    open_off_loop,
    open_session,
)
from ttc.storage import TraceStore
from ttc.strategies.base import TEMPERATURE, TOP_P, Context, StrategyOptions, StrategyResult, parse_options
from ttc.strategies.sampling import draw
from ttc.types import Budget, Candidate, Completion, Notes, Problem, Usage
from ttc.verifiers.arithmetic import computes_right

SLEEP = "sleep"
"""The strategy name of a sleep run's trace."""

MAX_DRAFTS = 8
"""The most drafts of the notes a budget buys unless ``n`` says otherwise."""


class SleepOptions(StrategyOptions):
    n: int | None = Field(None, ge=1, le=64, description="drafts of the notes; default: as many as the budget "
                          "affords at max_tokens each, up to 8")
    max_tokens: int | None = Field(None, ge=1, description="tokens per draft at most; default: the setup's solution "
                                   "length, or 1024 where it is unknown")
    temperature: float | None = Field(None, ge=0.0, description="default: greedy for one draft, 0.8 for several")
    top_p: float = Field(TOP_P, gt=0.0, le=1.0)
    check_arithmetic: bool = Field(True, description="drafts that miscompute a lone equation are not kept, "
                                   "unless all do")


def sleep_options(options: Mapping[str, object]) -> SleepOptions:
    return parse_options(SleepOptions, options, what="sleep options")


def plan_drafts(opts: SleepOptions, budget: Budget, solution_tokens: int | None) -> dict[str, Any]:
    """The drafts, their length and temperature that ``opts`` and the budget give."""
    max_tokens = opts.max_tokens or solution_tokens or 1024
    n = opts.n or max(1, min(MAX_DRAFTS, (budget.tokens or MAX_DRAFTS * max_tokens) // max_tokens))
    temperature = opts.temperature if opts.temperature is not None else 0.0 if n == 1 else TEMPERATURE
    return {"n": n, "max_tokens": max_tokens, "temperature": temperature, "top_p": opts.top_p,
            "check_arithmetic": opts.check_arithmetic}


def agreement(lines: Sequence[frozenset[str]]) -> list[float]:
    """For each draft, the summed Jaccard overlap of its lines with every other draft's."""
    out = []
    for i, mine in enumerate(lines):
        total = 0.0
        for j, theirs in enumerate(lines):
            if i != j and (mine or theirs):
                total += len(mine & theirs) / len(mine | theirs)
        out.append(total)
    return out


def note_lines(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def finished_text(draft: Completion) -> str:
    """A draft's text up to its last finished line: one cut off by its token limit ends mid-line (``Ted: 2`` of
    ``Ted: 22``, ``22 + 5 = 2``), which neither agrees with other drafts nor computes, and is not a note."""
    return draft.text[: draft.text.rfind("\n") + 1] if draft.finish_reason == "length" else draft.text


async def think(context: str, meter: Meter, ctx: Context, plan: dict[str, Any]) -> StrategyResult:
    """Draw the drafts of the notes and keep the consensus; record each draft and the choice."""
    prompt_text = ctx.render(context)
    prompt = await ctx.backend.tokenize(prompt_text, add_special_tokens=True)
    root = ctx.recorder.add_node(parent=None, text=prompt_text, token_count=len(prompt))
    # What ``draw`` will let each draft write: a draft cut shorter than this was cut by the model's window.
    _, granted = meter.plan(plan["n"], plan["max_tokens"])
    completions = await draw(ctx, meter, prompt, plan["n"], plan["max_tokens"], plan["temperature"], plan["top_p"])
    ctx.recorder.event("sample", {"requested": plan["n"], "drawn": len(completions)})
    nodes = [ctx.recorder.add_node(parent=root, text=c.text, token_count=len(c.token_ids), status="finished",
                                   logprob=c.cumulative_logprob) for c in completions]
    if not completions:
        ctx.recorder.event("select", {"how": "consensus", "kept": None, "reason": "the budget bought no draft"})
        raise bought_nothing(meter, "no draft of the notes", budget_name="the sleep budget") or BudgetExhausted(
            f"the sleep budget bought no draft of the notes: raise it (a draft takes up to {plan['max_tokens']} "
            "tokens)")
    chosen = _eligible(completions, plan["check_arithmetic"])
    # Rounded: equal agreement summed in another order differs in its last bits, and the first draft wins a tie.
    scores = [round(score, 9) for score in agreement([note_lines(finished_text(completions[i]))
                                                      for i in chosen.drafts])]
    best = chosen.drafts[max(range(len(chosen.drafts)), key=lambda k: (scores[k], -k))]
    by_draft = dict(zip(chosen.drafts, scores, strict=True))
    candidates = tuple(Candidate(text=c.text.strip(), answer=None, score=by_draft.get(i), node_id=nodes[i],
                                 token_count=len(c.token_ids)) for i, c in enumerate(completions))
    for i, node in enumerate(nodes):
        if i in by_draft:
            ctx.recorder.update(node, score=by_draft[i])
    text = finished_text(completions[best])
    if not text.strip():
        ctx.recorder.event("select", {"how": "consensus", "kept": None, **chosen.event(),
                                      "reason": "no draft finished a line"})
        raise _no_line_error(completions, granted, plan["max_tokens"])
    ctx.recorder.update(nodes[best], status="selected")
    agreement_of = [None if by_draft.get(i) is None else round(by_draft[i], 4) for i in range(len(completions))]
    ctx.recorder.event("select", {"how": "consensus", "kept": best, "agreement": agreement_of, **chosen.event(),
                                  "unfinished_line_dropped": text != completions[best].text}, node_id=nodes[best])
    return StrategyResult(answer=None, text=text.strip(), score=by_draft[best], candidates=candidates)


def _no_line_error(completions: Sequence[Completion], granted: int, max_tokens: int) -> TTCError:
    """Why no draft finished a line, addressed to what can change it: the model (it ended its drafts itself,
    empty: more budget buys the same nothing), the context (the model's window cut the drafts shorter than the
    budget let them write: more budget buys nothing either), or the budget."""
    cut = [len(c.token_ids) for c in completions if c.finish_reason == "length"]
    if not cut:
        return OutputError("the model wrote empty notes about the context (its drafts ended without a line): use a "
                           "model that writes notes for this context template")
    longest = max(cut)
    if longest < granted:
        return ConfigError(f"the context leaves only {longest} tokens of the model's window for notes (the budget "
                           f"allowed {granted} a draft), and no draft finished a line in them: shorten the context, "
                           "or use a model with a longer window")
    return BudgetExhausted(f"no draft of the notes finished a line within {longest} tokens (max_tokens "
                           f"{max_tokens}): raise the sleep budget (or max_tokens)")


@dataclass(frozen=True)
class Eligible:
    """The drafts the choice may keep, and what the checks did, as the ``select`` event reports it."""

    drafts: list[int]
    left_out: dict[str, int]
    """How many drafts each check left out (0 for a check not applied)."""
    failed_all: list[str]
    """The checks no draft with notes passes (``empty``: no draft at all has notes)."""
    not_applied: list[str]
    """``failed_all``, and ``cut_off`` where only drafts that miscompute ended on their own."""

    def event(self) -> dict[str, object]:
        return {"left_out": self.left_out, "failed_all": self.failed_all, "not_applied": self.not_applied}


def _has_notes(draft: Completion) -> bool:
    return bool(finished_text(draft).strip())


def _eligible(completions: Sequence[Completion], check_arithmetic: bool) -> Eligible:
    """Each check in turn keeps the drafts still in the running that pass it, and is not applied where none do
    (some notes beat none). The order is the checks' weight: a draft with no finished line is not notes; a wrong
    sum is a wrong note, where a draft cut off is judged by its finished lines; so a draft that ended on its own is
    preferred only among those that compute right. Empty drafts are out before the others are judged, so a check
    that drafts with notes all fail is named in ``failed_all`` whatever an empty draft would pass."""
    checks: list[tuple[str, Callable[[Completion], bool]]] = [("empty", _has_notes)]
    if check_arithmetic:
        checks.append(("arithmetic", lambda c: computes_right(finished_text(c))))
    checks.append(("cut_off", lambda c: c.finish_reason != "length"))
    eligible = list(range(len(completions)))
    judged = [i for i in eligible if _has_notes(completions[i])] or eligible
    left_out: dict[str, int] = {}
    failed_all: list[str] = []
    not_applied: list[str] = []
    for name, keep in checks:
        passing = [i for i in eligible if keep(completions[i])]
        left_out[name] = len(eligible) - len(passing) if passing else 0
        if not passing:
            not_applied.append(name)
            if not any(keep(completions[i]) for i in judged):
                failed_all.append(name)
        eligible = passing or eligible
    return Eligible(drafts=eligible, left_out=left_out, failed_all=failed_all, not_applied=not_applied)


async def asleep(context: str, budget: int | Budget, *, backend: Backend | None = None, store: StoreArg = None,
                 seed: int | None = None, sleep_template: str | None = None, **options: object) -> Notes:
    """Think about ``context`` within ``budget`` before any question comes, and return the notes kept.

    ``sleep_template`` (with ``{context}``) overrides how the setup asks its model to think. Options: ``n``,
    ``max_tokens``, ``temperature``, ``top_p``, ``check_arithmetic`` (see :class:`SleepOptions`).
    """
    if context is None:  # check_context reads None as "no context", which a sleep run cannot be about
        raise ConfigError("context must be the text to think about, got None")
    check_context(context, None)
    limits = Budget.of(budget)
    check_seed(seed)
    opts = sleep_options(dict(options))
    if sleep_template is not None:
        sleep_prompt_template(sleep_template)
    session = await open_off_loop(lambda: open_session(backend=backend, store=store, verifier=None,
                                                       prompt_template=None, contextual=True))
    try:
        return await sleep_in_session(context, limits, session, seed=seed, sleep_template=sleep_template,
                                      options=opts)
    finally:
        await session.aclose()


async def sleep_in_session(context: str, budget: Budget, session: Session, *, seed: int | None,
                           sleep_template: str | None, options: SleepOptions) -> Notes:
    """The sleep run on a session opened with ``contextual=True`` (the caller closes it)."""
    checked = check_seed(seed)
    setup = session.setup
    template = sleep_prompt_template(sleep_template or setup.sleep_template)
    plan = plan_drafts(options, budget, setup.solution_tokens)
    run = await QuestionRun.start(Problem(question=context), budget, session, strategy=SLEEP, options=plan,
                                  seed=secrets.randbits(31) if checked is None else checked,
                                  prompt_template=template)
    try:
        result = await run.finish(await think(context, run.meter, run.ctx, plan))
    except BaseException as exc:
        await run.fail(exc)
        raise
    return Notes(context=context, text=result.text, usage=result.usage, trace_id=result.trace_id,
                 model=setup.backend.name)


def sleep(context: str, budget: int | Budget, *, backend: Backend | None = None, store: StoreArg = None,
          seed: int | None = None, sleep_template: str | None = None, **options: object) -> Notes:
    """Blocking form of :func:`asleep`."""
    return _run_sync(lambda: asleep(context, budget, backend=backend, store=store, seed=seed,
                                    sleep_template=sleep_template, **options))


def load_notes(trace_id: str, *, store: TraceStore | str | os.PathLike[str] | None = None) -> Notes:
    """The notes of a finished sleep run, read back from the trace store (an id or a unique prefix of one)."""
    if not isinstance(trace_id, str) or not trace_id.strip():
        raise ConfigError(f"trace_id must be the sleep trace's id (a string that ttc.sleep's Notes.trace_id or `ttc "
                          f"sleep` gave), got {trace_id!r}")
    check_store(store)
    if isinstance(store, bool):
        raise ConfigError("load_notes reads the notes from a trace store: pass its path or a TraceStore (or None "
                          "for the default store), not False")
    owned = not isinstance(store, TraceStore)
    trace_store = store if isinstance(store, TraceStore) else TraceStore(store, read_only=True)
    try:
        record = trace_store.get_trace(trace_id)
    finally:
        if owned:
            trace_store.close()
    if record.strategy != SLEEP:
        raise NotFound(f"trace {record.id} is a {record.strategy!r} run, not a sleep run: pass the trace id that "
                       "ttc.sleep (or `ttc sleep`) printed")
    if record.status == "running":
        raise NotFound(f"sleep trace {record.id} is still running, so it has no notes yet: wait for it to finish "
                       "(or, if its process died, sleep again)")
    if record.status != "done":
        raise NotFound(f"sleep trace {record.id} is {record.status!r}, so it has no notes to use: sleep again")
    return Notes(context=record.problem.question, text=record.text or "", usage=record.usage or Usage(),
                 trace_id=record.id, model=record.backend)


__all__ = ["SLEEP", "SleepOptions", "agreement", "asleep", "load_notes", "plan_drafts", "sleep", "sleep_in_session",
           "sleep_options", "think"]
