"""How much compute a question gets, and through which strategy.

The rule for ``strategy="auto"`` (documented, deliberately simple until a learned controller replaces it):

- with a verifier configured, ``best_of_n`` ranked by score-weighted vote;
- without one, ``self_consistency``, which stops early on easy questions and saves budget;
- the number of samples is what the token budget affords at the strategy's ``max_tokens`` per sample
  (at least 1, at most 64); the default ``min_samples`` and ``round_size`` (4) never exceed ``max_samples``.

Explicit strategy names pass through with the caller's options untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from ttc.errors import ConfigError
from ttc.types import Budget, is_int

AUTO_MAX_SAMPLES = 64
DEFAULT_MAX_TOKENS = 512


def plan_strategy(strategy: str, budget: Budget, *, has_verifier: bool,
                  options: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """Return the strategy name and options to run for one question."""
    if not isinstance(strategy, str) or not strategy:
        raise ConfigError("strategy must be a non-empty name such as 'auto', 'best_of_n' or 'self_consistency'")
    if strategy != "auto":
        return strategy, dict(options)
    opts = dict(options)
    max_tokens = _positive_int(opts, "max_tokens", DEFAULT_MAX_TOKENS)
    affordable = AUTO_MAX_SAMPLES if budget.tokens is None else max(1, budget.tokens // max_tokens)
    samples = min(AUTO_MAX_SAMPLES, affordable)
    if has_verifier:
        opts.setdefault("n", samples)
        return "best_of_n", opts
    # The round defaults never exceed the caller's own max_samples: a min_samples above it would keep the early
    # stop on vote share from ever firing.
    max_samples = _positive_int(opts, "max_samples", samples)
    opts["max_samples"] = max_samples
    opts.setdefault("min_samples", min(4, max_samples))
    opts.setdefault("round_size", min(4, max_samples))
    return "self_consistency", opts


def _positive_int(opts: Mapping[str, object], name: str, default: int) -> int:
    """The option ``name`` (``default`` when absent), refused unless it is an int >= 1 (a bool is not one)."""
    value = opts.get(name, default)
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


__all__ = ["AUTO_MAX_SAMPLES", "DEFAULT_MAX_TOKENS", "plan_strategy"]
