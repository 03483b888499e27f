"""Intervals and tests for accuracies: one run, a configuration repeated over seeds, and pairs.

Everything here takes `correct` arrays, bool [runs, digits]: row r says which digits run r got
right. The runs of one group are one configuration trained with different seeds and scored on
the same digits (the same `index` column in their `predictions/<split>.parquet`), so a group's
accuracy varies with two things a reviewer cares about: the seed (initialisation, data order)
and the sample of digits it was scored on. The intervals account for both:

- one run: Wilson's interval for a binomial proportion (the digits are the only sample);
- repeats: the pigeonhole bootstrap (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.):
  seeds and digits are two crossed factors, each resampled with replacement, independently;
  the percentile interval of the resampled mean accuracy. Owen shows it is mildly
  conservative for crossed designs; with fewer than ~5 seeds the seed part is rough.

Pairs of groups scored on the same digits are paired on the digits (the same digit resample
for both), and resampled over their own seeds:

- two single runs: the exact McNemar test (Dietterich 1998): the two-sided binomial test on the
  digits exactly one of the two gets right;
- otherwise: the pigeonhole bootstrap's test of "no difference" (the p-value at which the
  percentile interval of the difference would just reach 0);
- many pairs: Holm's step-down adjustment of the p-values.

Textbook statistics come from statsmodels and scipy; only the two-factor resampling, which no
library offers, is written here (`pigeonhole_resample`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)

from mnist_lab import names

ALPHA = 0.05
RESAMPLES = 2000  # p-values resolve to 1/2001: enough for Holm over 10 pairs at α = 0.05
BOOTSTRAP_SEED = 0  # the same data always gives the same interval
CHUNK = 200  # resamples drawn at a time: [CHUNK, digits] counts stay small

WILSON = "Wilson (digits)"
PIGEONHOLE = "bootstrap (seeds × digits)"
T_OVER_SEEDS = "t over seeds"
MCNEMAR = "McNemar exact"
TWO_PROPORTIONS = "two-proportion (unpaired)"
WELCH = "Welch t over seeds (unpaired)"


@dataclass(frozen=True)
class Summary:
    """A group's accuracy: n runs, their mean, the std over seeds (NaN for one run) and a 95 %
    interval made by `method`."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class Difference:
    """Accuracy of group a minus group b, its 95 % interval, and the test of "no difference"."""

    difference: float
    low: float
    high: float
    test: str
    p_value: float
    paired: bool


def wilson_interval(correct: int, total: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of the proportion `correct` / `total`."""
    low, high = proportion_confint(correct, total, alpha=alpha, method="wilson")
    return float(low), float(high)


def t_interval(values: Sequence[float], alpha: float = ALPHA) -> tuple[float, float]:
    """Student's t interval of the mean of `values` (per-seed figures without per-digit data,
    such as ECE or robust accuracy); NaNs for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    low, high = stats.t.interval(
        1 - alpha, len(values) - 1, loc=values.mean(), scale=stats.sem(values)
    )
    return float(low), float(high)


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def summarize(correct: np.ndarray, resamples: int = RESAMPLES) -> Summary:
    """Mean accuracy of a group [runs, digits] with its 95 % interval: Wilson for one run, the
    pigeonhole bootstrap over seeds and digits for several."""
    correct = _as_runs(correct)
    per_run = correct.mean(axis=1)
    mean = float(per_run.mean())
    if len(correct) == 1:
        low, high = wilson_interval(int(correct.sum()), correct.shape[1])
        return Summary(1, mean, math.nan, low, high, WILSON)
    (means,) = pigeonhole_resample([correct], resamples=resamples)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return Summary(len(correct), mean, _std(per_run), float(low), float(high), PIGEONHOLE)


def summarize_accuracies(accuracies: Sequence[float], digits: int) -> Summary:
    """A group known only by its runs' accuracies on `digits` digits (runs that logged no
    predictions): Wilson for one run, t over the seeds for several."""
    values = np.asarray(accuracies, dtype=float)
    mean = float(values.mean())
    if len(values) == 1:
        low, high = wilson_interval(round(mean * digits), digits)
        return Summary(1, mean, math.nan, low, high, WILSON)
    low, high = t_interval(values)
    return Summary(len(values), mean, _std(values), low, high, T_OVER_SEEDS)


def pigeonhole_resample(
    groups: Sequence[np.ndarray],
    paired: bool = True,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[np.ndarray]:
    """Resampled mean accuracies of each group, [resamples] each.

    Each resample draws the digits with replacement (one draw shared by all groups when
    `paired`: they were scored on the same digits; one per group otherwise) and, for each group
    independently, its runs (seeds) with replacement; a group's value is the mean over its drawn
    runs of their accuracy on the drawn digits.
    """
    groups = [_as_runs(g) for g in groups]
    digits = {g.shape[1] for g in groups}
    if paired and len(digits) > 1:
        raise ValueError(f"paired groups must share their digits; got sizes {sorted(digits)}")
    rng = np.random.default_rng(seed)
    out = [np.empty(resamples) for _ in groups]
    as_float = [g.astype(np.float32) for g in groups]
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        shared = _digit_counts(rng, size, groups[0].shape[1]) if paired else None
        for group, values in zip(as_float, out, strict=True):
            n_runs, n_digits = group.shape
            counts = shared if paired else _digit_counts(rng, size, n_digits)
            run_accuracy = (counts @ group.T).astype(np.float64) / n_digits  # [size, runs]
            runs = rng.integers(0, n_runs, (size, n_runs))
            values[start : start + size] = np.take_along_axis(run_accuracy, runs, 1).mean(1)
    return out


def _digit_counts(rng: np.random.Generator, size: int, digits: int) -> np.ndarray:
    """[size, digits] float32: how often each digit was drawn in each of `size` resamples of
    `digits` draws with replacement."""
    drawn = rng.integers(0, digits, (size, digits)) + np.arange(size)[:, None] * digits
    return (
        np.bincount(drawn.ravel(), minlength=size * digits).reshape(size, digits).astype(np.float32)
    )


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from resampled differences: twice the smaller share
    on either side of 0 (counting the observed data as one resample), capped at 1."""
    below = (np.sum(differences <= 0) + 1) / (len(differences) + 1)
    above = (np.sum(differences >= 0) + 1) / (len(differences) + 1)
    return float(min(1.0, 2 * min(below, above)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(digits only a gets right, digits only b gets right, exact two-sided p-value)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    table = [[int(np.sum(a & b)), only_a], [only_b, int(np.sum(~a & ~b))]]
    return only_a, only_b, float(mcnemar(table, exact=True).pvalue)


def compare_groups(
    a: np.ndarray, b: np.ndarray, paired: bool = True, resamples: int = RESAMPLES
) -> Difference:
    """Accuracy of group a minus group b ([runs, digits] each) with its 95 % interval (the
    pigeonhole bootstrap, paired on the digits when `paired`) and a test: exact McNemar for two
    paired single runs, the bootstrap's own test otherwise."""
    a, b = _as_runs(a), _as_runs(b)
    difference = float(a.mean(axis=1).mean() - b.mean(axis=1).mean())
    resampled_a, resampled_b = pigeonhole_resample([a, b], paired, resamples)
    resampled = resampled_a - resampled_b
    low, high = (float(q) for q in np.quantile(resampled, [ALPHA / 2, 1 - ALPHA / 2]))
    if paired and len(a) == len(b) == 1:
        _, _, p_value = mcnemar_exact(a[0], b[0])
        return Difference(difference, low, high, MCNEMAR, p_value, paired)
    test = PIGEONHOLE if paired else f"{PIGEONHOLE}, unpaired"
    return Difference(difference, low, high, test, bootstrap_p_value(resampled), paired)


def compare_accuracies(
    a: Sequence[float], b: Sequence[float], digits_a: int, digits_b: int
) -> Difference:
    """Two groups known only by their runs' accuracies (no per-digit predictions), so unpaired:
    single runs by the two-proportion test (Newcombe's interval), repeats by Welch's t-test
    over the seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean())
    if len(a) == 1 or len(b) == 1:
        count_a, count_b = round(a.mean() * digits_a), round(b.mean() * digits_b)
        low, high = confint_proportions_2indep(
            count_a, digits_a, count_b, digits_b, method="newcomb", compare="diff"
        )
        p_value = test_proportions_2indep(count_a, digits_a, count_b, digits_b).pvalue
        return Difference(
            difference, float(low), float(high), TWO_PROPORTIONS, float(p_value), False
        )
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(1 - ALPHA)
    return Difference(
        difference, float(interval.low), float(interval.high), WELCH, float(result.pvalue), False
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error at α over all the pairs)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def significance_ranks(
    means: Sequence[float], pairs: Sequence[tuple[int, int, float, float]], alpha: float = ALPHA
) -> list[int]:
    """Each group's rank: 1 + the number of groups that beat it beyond noise, where `pairs` are
    (i, j, difference of i minus j, Holm-adjusted p-value). Groups no one beats share rank 1;
    groups with the same rank cannot be told apart by who beats them."""
    beaten_by = [0] * len(means)
    for i, j, difference, p_holm in pairs:
        if p_holm < alpha and difference != 0:
            beaten_by[j if difference > 0 else i] += 1
    return [1 + count for count in beaten_by]


def promotion_test(challenger: np.ndarray, champion: np.ndarray) -> tuple[int, int, float]:
    """Does the challenger beat the champion on the same digits beyond noise? One-sided exact
    McNemar: (digits only the challenger gets right, only the champion, p-value of "the
    challenger is no better")."""
    challenger, champion = np.asarray(challenger, bool), np.asarray(champion, bool)
    wins, losses = int(np.sum(challenger & ~champion)), int(np.sum(~challenger & champion))
    if wins + losses == 0:
        return 0, 0, 1.0
    p_value = stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
    return wins, losses, float(p_value)


def unpaired_promotion_test(
    challenger_accuracy: float,
    challenger_digits: int,
    champion_accuracy: float,
    champion_digits: int,
) -> tuple[float, float, float]:
    """Runs scored on different digits: the difference's 95 % interval (Newcombe) and the
    one-sided p-value of "the challenger is no better" (two independent proportions)."""
    count_a = round(challenger_accuracy * challenger_digits)
    count_b = round(champion_accuracy * champion_digits)
    low, high = confint_proportions_2indep(
        count_a, challenger_digits, count_b, champion_digits, method="newcomb", compare="diff"
    )
    p_value = test_proportions_2indep(
        count_a, challenger_digits, count_b, champion_digits, alternative="larger"
    ).pvalue
    return float(low), float(high), float(p_value)


def _as_runs(correct: np.ndarray) -> np.ndarray:
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim == 1:
        correct = correct[None]
    if correct.ndim != 2 or correct.size == 0:
        raise ValueError(f"expected correctness [runs, digits], got shape {list(correct.shape)}")
    return correct


def aggregate_runs(
    runs: Sequence[dict[str, float]], metrics: Sequence[str], correct: np.ndarray | None = None
) -> dict[str, float]:
    """A group of seed runs in figures: `<metric>_mean`, `_std`, `_ci95_low` and `_ci95_high`
    for each of `metrics` that every run has, and `n_seeds`. `correct` (bool [runs, test
    digits]) gives test accuracy's interval over seeds and digits; other metrics get a t
    interval over the seeds."""
    out: dict[str, float] = {names.N_SEEDS: float(len(runs))}
    for metric in metrics:
        values = [run[metric] for run in runs if metric in run]
        if len(values) != len(runs) or not values:
            continue
        if metric == names.TEST_ACCURACY and correct is not None:
            summary = summarize(correct)
            mean, std, low, high = summary.mean, summary.std, summary.low, summary.high
        else:
            mean, std = float(np.mean(values)), _std(np.asarray(values, dtype=float))
            low, high = t_interval(values)
        figures = dict(zip(names.AGGREGATES, (mean, std, low, high), strict=True))
        out |= {names.aggregate(metric, key): value for key, value in figures.items()}
    return out
