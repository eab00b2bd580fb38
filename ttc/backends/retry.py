"""Exponential backoff with seeded jitter, shared by the HTTP backends.

Jitter spreads the retries of many concurrent requests that failed together (a restarting server) so they do not
return in lockstep; seeding it keeps a run's timing reproducible.
"""

from __future__ import annotations

import random

from ttc.errors import ConfigError


class Backoff:
    """Delay before retry ``attempt`` (0-based): ``base_s * 2**attempt``, times a jitter factor in [0.5, 1.5)."""

    def __init__(self, base_s: float = 0.25, max_s: float = 8.0, seed: int = 0) -> None:
        if base_s < 0 or max_s < 0:
            raise ConfigError(f"backoff delays must be >= 0, got base_s={base_s}, max_s={max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self._rng = random.Random(seed)

    def delay(self, attempt: int) -> float:
        raw = min(self.max_s, self.base_s * (2.0 ** min(max(0, attempt), 64)))  # 2.0**1024 overflows
        return raw * (0.5 + self._rng.random())


__all__ = ["Backoff"]
