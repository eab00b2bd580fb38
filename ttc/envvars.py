"""Reading ttc's ``TTC_*`` environment variables, by one rule for all of them.

A value is trimmed and a blank one is unset, so ``export TTC_DB=" /data/t.db"`` names ``/data/t.db`` and an
emptied variable means the default rather than an error. Seconds are read here too, so every such variable refuses
a bad value the same way: naming itself, the range it takes, and what to do (``ttc.config`` lists the variables).
"""

from __future__ import annotations

import math
import os

from ttc.errors import ConfigError


def env_text(name: str) -> str | None:
    """The variable's value, trimmed; ``None`` where it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_seconds(name: str, *, default: float, most: float = math.inf, zero: bool = True) -> float:
    """A number of seconds from ``name``: ``default`` where unset; at most ``most``; 0 allowed where ``zero``.

    ``nan``, ``inf`` and negative values are refused, not passed on: each reader's own check would see them only
    as a parameter it was given, and name that instead of the variable the user set."""
    raw = env_text(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds) and (seconds >= 0 if zero else seconds > 0) and seconds <= most:
        return seconds
    if math.isfinite(most):
        top = f"{most:.0f}" if float(most).is_integer() else repr(most)  # :g wrote 2147483 as 2.14748e+06
        span = f"from 0 to {top}" if zero else f"above 0 and at most {top}"
    else:
        span = "0 or more" if zero else "above 0"
    raise ConfigError(f"{name} must be a number of seconds {span}, got {raw!r}: set it so, or unset it for the "
                      f"default ({default:g} s)")
