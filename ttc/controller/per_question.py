"""How much compute a question gets, and through which strategy.

The rule for ``strategy="auto"`` (documented, deliberately simple until a learned controller replaces it):

- with a process verifier configured (one that scores steps), a step-level tree search against it, ranked by
  score-weighted vote. Where the setup draws a node's children without replacement (``distinct_children``: the
  embedded default), ``rebase`` with different children: ``budget / solution_tokens`` solutions in flight (1 to
  ``AUTO_MAX_WIDTH``), but twice that below ``AUTO_FULL_WIDTH`` (8), each round's children shared out over them by
  score and drawn as different next steps, and while none has finished only as many as the budget can finish
  (``narrow_to_finish``: at 256 and 512 tokens it left 19 and 2 of 192 held-out problems unanswered, against 54
  and 31, and solved 58.9% and 71.9% against 56.8% and 70.3%). On the mini models it solves 79.2-82.3% of two
  draws of 96 problems from 1024 tokens up (a third draw: 66.7-71.9% at 1024-2048), spending 320-1430 tokens,
  where beam search reaches 71.9-74.0% at 4096 tokens and best-of-N 58.3-67.7% at 4096-8192
  (``benchmarks/search_vs_sampling.py``; docs/mini_models.md). Elsewhere (a vLLM server cannot draw without
  replacement) step-level ``beam`` search: with the bundled mini models it is ahead of best-of-N from 1024
  tokens up and within about two points of it below; best-of-N needs 2.1x to 6.5x the tokens for its accuracy at
  1024 and 2048. Searching the steps is the better way to spend there for easy and hard questions alike. The beam
  keeps ``budget / (4 * solution_tokens)`` nodes (at least 1, at most 16) with 4 children each, steps of
  ``step_tokens``; both sizes come with the backend setup (a mini solution is about 100 tokens, a step under 24).
  Beam options (``beam_width``, ``expand``) keep ``auto`` on beam search, whose children are then drawn without
  replacement, where the setup can, while the beam is at most ``AUTO_DISTINCT_MAX_BEAM`` nodes wide. Options that
  only sampling strategies take (``n``, ``max_tokens``, ...) keep the question on ``best_of_n``, as before;
- with an outcome verifier only, ``best_of_n`` ranked by score-weighted vote (options only self-consistency takes,
  such as ``max_samples`` or ``round_size``, take it to ``self_consistency`` with the weighted vote);
- without one, ``self_consistency``, which stops early on easy questions and saves budget;
- the number of samples is what the token budget affords at the strategy's ``max_tokens`` per sample
  (at least 1, at most 64); the default ``min_samples`` and ``round_size`` (4) never exceed ``max_samples``.

Explicit strategy names pass through with the caller's options untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from ttc.budget import Meter
from ttc.errors import BudgetExhausted, ConfigError
from ttc.strategies.beam import BeamOptions
from ttc.strategies.best_of_n import BestOfNOptions
from ttc.strategies.rebase import RebaseOptions
from ttc.strategies.self_consistency import SelfConsistencyOptions
from ttc.strategies.tree import TreeSelection
from ttc.types import Budget, is_int

AUTO_MAX_SAMPLES = 64
DEFAULT_MAX_TOKENS = 512
AUTO_MAX_BEAM = 16
BEAM_EXPAND = 4
AUTO_MAX_WIDTH = AUTO_MAX_BEAM * BEAM_EXPAND
"""The most solutions ``auto``'s REBASE keeps in flight: as many as its widest beam expands."""
AUTO_FULL_WIDTH = 8
"""Up to this many solutions in flight, ``auto``'s REBASE keeps two per solution's worth of budget. Different
children share their prefixes and drop repeats, so a narrow search spends about half a solution per path (a
width-8 REBASE spends 283 tokens on average on the mini models): at 256 and 512 tokens twice the width solved 58.3%
and 71.4% of 192 held-out problems against 50.5% and 65.6%, and 63.5% and 75.0% of 96 others against 51.0% and
67.7% (each result's text graded, before ``grade_result``; with narrowing and graded by it, 58.9% and 71.9% of the
192 against 50.0% and 65.6%). Wider than ``budget / solution_tokens`` from 1024 tokens up is no better (width 16
at 1024 tokens 74.0% against width 8's 74.5%; width 32 71.4%): the budget then cuts the hard questions' searches
short."""
AUTO_DISTINCT_MAX_BEAM = 2
"""The widest beam whose children ``auto`` draws without replacement, where the setup allows it and the caller's
beam options keep ``auto`` on beam search (without them such a setup gets REBASE with different children). On the mini
models different children lift a beam of 1 node by 14.6 to 16.6 points at 512 tokens and one of 2 by 14.6, -1.1
and 2.1 at 1024 (three draws); wider beams do as well or better with independent children (-1.0 to -5.2 points
with different ones, +2.1 once)."""


def plan_strategy(strategy: str, budget: Budget, *, has_verifier: bool, options: Mapping[str, object],
                  has_prm: bool = False, solution_tokens: int | None = None,
                  step_tokens: int | None = None, distinct_children: bool = False) -> tuple[str, dict[str, object]]:
    """Return the strategy name and options to run for one question.

    ``solution_tokens`` and ``step_tokens`` are the backend's typical solution and longest step lengths, where its
    setup knows them (else 512 tokens a solution, and the search's default step limit); ``distinct_children``
    says the setup's searches draw a node's children without replacement.
    """
    if not isinstance(strategy, str) or not strategy:
        raise ConfigError("strategy must be a non-empty name such as 'auto', 'best_of_n' or 'self_consistency'")
    if strategy != "auto":
        return strategy, dict(options)
    # ``select`` is an option of both families, with values of its own in each: "auto" (sampling's default) asks
    # for nothing a search does not do by default, and "vote" (a plain count) is sampling's alone.
    if options.get("select") == "auto":
        options = {k: v for k, v in options.items() if k != "select"}
    searchable = options.get("select", "weighted_vote") in get_args(TreeSelection)
    if has_prm and searchable and distinct_children and set(options) <= _REBASE_OPTIONS:
        return "rebase", _rebase_options(budget, options, solution_tokens or DEFAULT_MAX_TOKENS, step_tokens)
    if has_prm and searchable and set(options) <= _BEAM_OPTIONS:
        return "beam", _beam_options(budget, options, solution_tokens or DEFAULT_MAX_TOKENS, step_tokens,
                                     distinct_children)
    opts = dict(options)
    max_tokens = _positive_int(opts, "max_tokens", DEFAULT_MAX_TOKENS)
    affordable = AUTO_MAX_SAMPLES if budget.tokens is None else max(1, budget.tokens // max_tokens)
    samples = min(AUTO_MAX_SAMPLES, affordable)
    named = set(opts)
    # Options only one of the two takes choose it: passed to the other, they were refused as unknown options of a
    # strategy the caller never named (n to self-consistency without a verifier; max_samples, round_size and the
    # other vote-round options to best-of-N with one). Otherwise a verifier ranks best-of-N's samples.
    wants_rounds = bool(named - _BEST_OF_N_OPTIONS) and named <= _SELF_CONSISTENCY_OPTIONS
    if (has_verifier and not wants_rounds) or not named <= _SELF_CONSISTENCY_OPTIONS:
        opts.setdefault("n", samples)
        return "best_of_n", opts
    # The round defaults never exceed the caller's own max_samples: a min_samples above it would keep the early
    # stop on vote share from ever firing.
    max_samples = _positive_int(opts, "max_samples", samples)
    opts["max_samples"] = max_samples
    opts.setdefault("min_samples", min(4, max_samples))
    opts.setdefault("round_size", min(4, max_samples))
    return "self_consistency", opts


_BEAM_OPTIONS = frozenset(BeamOptions.model_fields)
_SELF_CONSISTENCY_OPTIONS = frozenset(SelfConsistencyOptions.model_fields)
_BEST_OF_N_OPTIONS = frozenset(BestOfNOptions.model_fields)
_REBASE_OPTIONS = frozenset(RebaseOptions.model_fields)


def _rebase_options(budget: Budget, options: Mapping[str, object], solution_tokens: int,
                    step_tokens: int | None) -> dict[str, object]:
    """REBASE sized to the budget: one solution in flight per solution's worth of tokens, two up to
    ``AUTO_FULL_WIDTH``, each round's children drawn without replacement (the setup can), narrowed to the paths
    the budget can finish while none has (``narrow_to_finish``); steps as long as the backend's model writes
    them."""
    if budget.tokens is None:
        paths = AUTO_MAX_WIDTH
    else:
        paths = max(budget.tokens // solution_tokens, min(AUTO_FULL_WIDTH, 2 * budget.tokens // solution_tokens))
    opts: dict[str, object] = {"width": min(AUTO_MAX_WIDTH, max(1, paths)), "select": "weighted_vote",
                               "distinct": True, "narrow_to_finish": True}
    if step_tokens is not None:
        opts["max_step_tokens"] = step_tokens
    opts.update(options)
    return opts


def _beam_options(budget: Budget, options: Mapping[str, object], solution_tokens: int,
                  step_tokens: int | None, distinct: bool) -> dict[str, object]:
    """Beam search sized to the budget: one beam node per ``BEAM_EXPAND`` solutions' worth of tokens; steps as
    long as the backend's model writes them, where the setup knows (else the search's own default); children drawn
    without replacement where the setup says so."""
    paths = AUTO_MAX_BEAM * BEAM_EXPAND if budget.tokens is None else budget.tokens // solution_tokens
    opts: dict[str, object] = {"beam_width": min(AUTO_MAX_BEAM, max(1, paths // BEAM_EXPAND)),
                               "expand": BEAM_EXPAND, "select": "weighted_vote"}
    if step_tokens is not None:
        opts["max_step_tokens"] = step_tokens
    opts.update(options)
    width = opts["beam_width"]
    if distinct and "distinct" not in options and is_int(width) and width <= AUTO_DISTINCT_MAX_BEAM:
        opts["distinct"] = True
    return opts


def spent_limit(meter: Meter) -> str | None:
    """The limit of the meter's budget that has run out (``wall_s``, ``tokens`` or ``calls``), or ``None`` while
    each has some left."""
    for axis, left in (("wall_s", meter.time_left()), ("tokens", meter.tokens_left()), ("calls", meter.calls_left())):
        if left is not None and not left:
            return axis
    return None


def bought_nothing(meter: Meter, what: str, *, budget_name: str = "the budget") -> BudgetExhausted | None:
    """The error for a run whose budget ran out before its first backend call (a wall time spent while its trace
    opened), or ``None`` where it made a call or each limit has some left. Without it such a run ended 'done'
    with no answer and nothing in its trace to say why; ``what`` is what the run would have bought."""
    axis = spent_limit(meter)
    if axis is None or meter.usage().backend_calls:
        return None
    return BudgetExhausted(f"{budget_name}'s {limit_text(meter.budget, axis)} ran out before the first backend "
                           f"call, so it bought {what}: raise Budget.{axis}")


def limit_text(budget: Budget, axis: str) -> str:
    """One limit of ``budget`` as an error names it: ``wall_s (0.5 s)``."""
    unit = {"wall_s": "s", "tokens": "tokens", "calls": "calls"}[axis]
    return f"{axis} ({getattr(budget, axis)} {unit})"


def _positive_int(opts: Mapping[str, object], name: str, default: int) -> int:
    """The option ``name`` (``default`` when absent), refused unless it is an int >= 1 (a bool is not one)."""
    value = opts.get(name, default)
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


__all__ = ["AUTO_DISTINCT_MAX_BEAM", "AUTO_FULL_WIDTH", "AUTO_MAX_BEAM", "AUTO_MAX_SAMPLES", "AUTO_MAX_WIDTH",
           "DEFAULT_MAX_TOKENS", "bought_nothing", "limit_text", "plan_strategy", "spent_limit"]
