"""How much compute a question gets, and through which strategy.

The rule for ``strategy="auto"`` (documented, deliberately simple until a learned controller replaces it):

- with a verifier configured, ``best_of_n`` ranked by score-weighted vote;
- without one, ``self_consistency``, which stops early on easy questions and saves budget;
- the number of samples is what the token budget affords at the strategy's ``max_tokens`` per sample
  (at least 1, at most 64).

Explicit strategy names pass through with the caller's options untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from ttc.errors import ConfigError
from ttc.types import Budget

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
    max_tokens = opts.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive int, got {max_tokens!r}")
    affordable = AUTO_MAX_SAMPLES if budget.tokens is None else max(1, budget.tokens // max_tokens)
    samples = min(AUTO_MAX_SAMPLES, affordable)
    if has_verifier:
        opts.setdefault("n", samples)
        return "best_of_n", opts
    opts.setdefault("max_samples", samples)
    opts.setdefault("min_samples", min(4, samples))
    opts.setdefault("round_size", min(4, samples))
    return "self_consistency", opts


__all__ = ["plan_strategy"]
