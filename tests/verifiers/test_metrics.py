"""Step AUROC: the figure the mini-model benchmark and training report for every step verifier."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import mannwhitneyu

from ttc.errors import ConfigError
from ttc.verifiers.metrics import auroc


def test_perfect_reversed_and_tied_scores() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5


def test_a_tie_counts_half() -> None:
    # right 0.7 beats 0.2 and ties 0.7; right 0.4 beats 0.2 only: (1 + 0.5 + 1) / 4
    assert auroc([0.7, 0.4, 0.7, 0.2], [True, True, False, False]) == pytest.approx(0.625)


def test_agrees_with_the_mann_whitney_statistic() -> None:
    rng = random.Random(7)
    labels = [rng.random() < 0.3 for _ in range(500)]
    scores = [round(rng.random() + (0.3 if y else 0.0), 2) for y in labels]  # rounded: many ties
    right = [s for s, y in zip(scores, labels, strict=True) if y]
    wrong = [s for s, y in zip(scores, labels, strict=True) if not y]
    expected = mannwhitneyu(right, wrong).statistic / (len(right) * len(wrong))
    assert auroc(scores, labels) == pytest.approx(expected)


def test_one_class_is_nan_not_chance() -> None:
    assert math.isnan(auroc([0.1, 0.9], [True, True]))
    assert math.isnan(auroc([], []))


def test_bad_input_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="one label per score"):
        auroc([0.1, 0.2], [True])
    with pytest.raises(ConfigError, match="NaN"):
        auroc([math.nan, 0.2], [True, False])


def test_labels_that_are_not_true_or_false_are_refused() -> None:
    """np.asarray(..., dtype=bool) read a soft label of 0.1 as a right step: AUROC 1.0 for [.9, .5, .1]."""
    for labels in ([0.9, 0.1, 0.0], ["yes", "no", "no"], [2, 0, 0], [True, None, False]):  # None read as wrong
        with pytest.raises(ConfigError, match="labels must be True/False"):
            auroc([0.9, 0.5, 0.1], labels)  # type: ignore[arg-type]
    assert auroc([0.9, 0.5, 0.1], [1, 0, 0]) == auroc([0.9, 0.5, 0.1], [True, False, False]) == 1.0
