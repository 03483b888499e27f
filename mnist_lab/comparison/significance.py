"""How sure a comparison is: each group's test accuracy with its interval, and every pair's
difference with its test, read from the runs' per-digit predictions (analysis/statistics.py).

Groups whose runs all logged `predictions/test.parquet` are compared digit by digit (paired when
they were scored on the same digits); runs logged before that, by their accuracies alone
(unpaired, less powerful). Each table row says which test it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import INDEX, correct_matrix, same_digits
from mnist_lab.analysis.statistics import (
    ALPHA,
    Summary,
    compare_accuracies,
    compare_groups,
    holm,
    significance_ranks,
    summarize,
    summarize_accuracies,
)
from mnist_lab.comparison.groups import Group

TEST_DIGITS = 10_000  # MNIST's test split: runs without predictions and no subset scored these
COLUMNS = ["model_a", "model_b", "difference", "ci95_low", "ci95_high", "test", "p_value", "p_holm"]


@dataclass
class GroupAccuracy:
    """A group's test accuracy: its summary, and, when every run logged its predictions, which
    test digits each run got right (bool [runs, digits], columns in `index` order)."""

    summary: Summary
    accuracies: list[float]
    digits: int
    correct: np.ndarray | None = None
    index: np.ndarray | None = None


def group_accuracy(group: Group) -> GroupAccuracy:
    """Read the group's test predictions back; fall back to its runs' test_accuracy metrics."""
    runs = [r for r in group.by_seed() if names.TEST_ACCURACY in r.metrics]
    frames = [tracking.read_predictions(run.run_id, "test") for run in group.by_seed()]
    if all(f is not None for f in frames) and same_digits(frames):
        correct = correct_matrix(frames)
        index = np.sort(frames[0][INDEX].to_numpy())
        accuracies = list(correct.mean(axis=1))
        return GroupAccuracy(summarize(correct), accuracies, correct.shape[1], correct, index)
    if not runs:
        return GroupAccuracy(Summary(0, *[np.nan] * 4, "no test accuracy"), [], 0)
    accuracies = [r.metrics[names.TEST_ACCURACY] for r in runs]
    digits = _test_digits(runs[0])
    return GroupAccuracy(summarize_accuracies(accuracies, digits), accuracies, digits)


def _test_digits(run: tracking.RunRecord) -> int:
    subset = run.params.get("max_test_samples")
    try:
        return int(subset) if subset not in (None, "", "None") else TEST_DIGITS
    except ValueError:
        return TEST_DIGITS


def pairwise(labels: Sequence[str], groups: Sequence[GroupAccuracy]) -> pd.DataFrame:
    """One row per pair (COLUMNS): a minus b in test accuracy, its 95 % interval, the test and
    its p-value, Holm-adjusted over all pairs. Groups without a test accuracy are left out."""
    rows = []
    shown = [i for i, g in enumerate(groups) if g.summary.n > 0]
    for i, j in combinations(shown, 2):
        a, b = groups[i], groups[j]
        if a.correct is not None and b.correct is not None:
            paired = a.index is not None and np.array_equal(a.index, b.index)
            result = compare_groups(a.correct, b.correct, paired=paired)
        else:
            result = compare_accuracies(a.accuracies, b.accuracies, a.digits, b.digits)
        rows.append(
            [labels[i], labels[j], result.difference, result.low, result.high, result.test,
             result.p_value, np.nan]
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["p_holm"] = holm(table["p_value"].to_list())
    return table


def ranks(labels: Sequence[str], groups: Sequence[GroupAccuracy], pairs: pd.DataFrame) -> list:
    """Each group's rank: 1 + the groups that beat it beyond noise (Holm-adjusted p < α); NaN
    for a group without a test accuracy."""
    position = {label: k for k, label in enumerate(labels)}
    found = [
        (position[row.model_a], position[row.model_b], row.difference, row.p_holm)
        for row in pairs.itertuples()
    ]
    means = [g.summary.mean for g in groups]
    ranked = significance_ranks(means, found, ALPHA)
    return [r if g.summary.n > 0 else np.nan for r, g in zip(ranked, groups, strict=True)]
