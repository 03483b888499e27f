"""How sure a comparison is: each group's test accuracy with its interval, and every pair's
difference with its test, read from the runs' per-digit predictions (analysis/statistics.py).

Groups whose runs all logged `predictions/test.parquet` are compared digit by digit (paired when
they were scored on the same digits); runs without predictions by their accuracies alone
(unpaired, less powerful). Each table row says which test it used and its verdict; a verdict
between two single runs is about those runs on these digits (seed noise unmeasured) and never
ranks their configurations.
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
    P_BELOW,
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
COLUMNS = [
    "model_a", "model_b", "difference", "ci95_low", "ci95_high", "test", "p_value", "p_holm",
    "verdict", "seed_noise",
]  # fmt: skip
P_SHOWN = 1e-20  # smaller p-values print as "< 1e-20" (see p_text)


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
    its p-value, Holm-adjusted over all pairs, and the verdict at α on the adjusted p. Groups
    without a test accuracy are left out."""
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
             result.p_value, np.nan, "", result.seed_noise]
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    # a p under P_BELOW was returned as 0: adjust its bound, never a made-up 0
    table["p_holm"] = holm([max(p, P_BELOW) for p in table["p_value"]])
    table["verdict"] = [verdict(row) for row in table.itertuples()]
    return table


def verdict(row) -> str:
    """A pair's reading in words: who is better beyond noise (Holm-adjusted), or a tie."""
    if not row.p_holm < ALPHA:
        return "tie"
    winner = row.model_a if row.difference > 0 else row.model_b
    if row.seed_noise:
        return f"{winner} better"
    return f"{winner}'s run better on these digits; seed noise unmeasured, so not its configuration"


def p_text(p_value: float) -> str:
    """A p-value as printed: three digits, or "< 1e-20" below that (a bound, not a value)."""
    return f"< {P_SHOWN:g}" if p_value < P_SHOWN else f"{p_value:.3g}"


def ranks(labels: Sequence[str], groups: Sequence[GroupAccuracy], pairs: pd.DataFrame) -> list:
    """Each group's rank (statistics.significance_ranks): 1 + the longest chain of groups above
    it, each beating the next beyond noise (Holm-adjusted p < α) in a configuration-level test.
    NaN for a group without a test accuracy or without any configuration-level comparison
    (single runs compared only with single runs: their seed noise is unmeasured)."""
    position = {label: k for k, label in enumerate(labels)}
    beats, ranked = [], [False] * len(groups)
    for row in pairs.itertuples():
        a, b = position[row.model_a], position[row.model_b]
        if not row.seed_noise:
            continue
        ranked[a] = ranked[b] = True
        if row.p_holm < ALPHA and row.difference != 0:
            beats.append((a, b) if row.difference > 0 else (b, a))
    ranked = [r and g.summary.n > 0 for r, g in zip(ranked, groups, strict=True)]
    return significance_ranks(len(groups), beats, ranked)
