"""How well a verifier's scores separate right steps from wrong ones.

Training and benchmarks of step verifiers report the same figure, so it lives here once, with its tie rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ttc.errors import ConfigError


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The probability that a random right step outscores a random wrong one; a tie counts half.

    NaN when one of the two classes is empty: there is then nothing to separate, and 0.5 would read as a
    verifier no better than chance.
    """
    if len(scores) != len(labels):
        raise ConfigError(f"auroc needs one label per score, got {len(scores)} scores and {len(labels)} labels")
    for label in labels:  # a loop, not next(..., None): a None label would pass as "none found" and read as wrong
        if not (isinstance(label, bool | np.bool_) or (label is not None and label in (0, 1))):
            # Soft labels (a Math-Shepherd estimate of 0.1) would all read as right: threshold them first.
            raise ConfigError(f"auroc labels must be True/False (or 0/1), got {label!r}: threshold soft labels first")
    values = np.asarray(scores, dtype=np.float64)
    right = np.asarray(labels, dtype=bool)
    if np.isnan(values).any():
        raise ConfigError("auroc got a NaN score: score every step before measuring the verifier")
    positives, negatives = values[right], np.sort(values[~right])
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (positives.size * negatives.size))


__all__ = ["auroc"]
