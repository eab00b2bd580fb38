"""The controller: how much compute a question gets, alone (``per_question``) or sharing a batch's budget (``batch``).

It is the only place that decides how much a question may spend; strategies take a budget and spend it.
"""

from ttc.controller.batch import (
    POOLED_STRATEGIES,
    Pool,
    Standing,
    check_affordable,
    first_wave,
    next_wave,
    pooled_options,
)
from ttc.controller.per_question import AUTO_MAX_SAMPLES, DEFAULT_MAX_TOKENS, plan_strategy

__all__ = ["AUTO_MAX_SAMPLES", "DEFAULT_MAX_TOKENS", "POOLED_STRATEGIES", "Pool", "Standing", "check_affordable",
           "first_wave", "next_wave", "plan_strategy", "pooled_options"]
