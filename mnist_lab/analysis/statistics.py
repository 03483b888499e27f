"""Intervals and tests for accuracies: one run, a configuration repeated over seeds, and pairs.

Everything here takes `correct` arrays, bool [runs, digits]: row r says which digits run r got
right. The runs of one group are one configuration trained with different seeds and scored on
the same digits, so a group's mean accuracy varies with two crossed samples: the seeds
(initialisation, data order) and the digits. Its variance is that of a two-way crossed
random-effects mean (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat., section 2):

    Var(mean) = σ²_seed / R + σ²_digit / D + σ²_residual / (R·D)

estimated without bias from the ANOVA mean squares: the per-run accuracies' variance s²_run
(R − 1 degrees of freedom) estimates σ²_seed + σ²_residual / D; the per-digit means' variance
s²_digit estimates σ²_digit + σ²_residual / R; the interaction mean square MS_residual
estimates σ²_residual. So

    V = s²_run / R  +  max(0, s²_digit − MS_residual / R) / D
        (seed part)    (digit part)

and the two parts keep their own degrees of freedom: the interval's half-width is
√(t²_seed · seed part + t²_digit · digit part), each part's Student t quantile (R − 1 for the
seed part, D − 1 for the digits), and the test's p-value is the α at which that half-width
reaches the estimate, so the interval excludes 0 exactly when p < α. Where seed noise
dominates (a 2-epoch ViT) this is Student's t over the seeds, where digit noise does (one group
of a trained CNN) the normal interval over the digits, and never narrower than either.
Satterthwaite's single pooled degrees of freedom for the two parts, estimated from the same two
or three seeds, undercovers (0.86 at 2 seeds in the ViT simulation). The truncation at 0 errs
wide.

A difference of two groups scored on the same digits is paired on them: its digit part is the
variance of the per-digit differences less both groups' residuals, over D; its seed part is
Welch's (1947): each group's s²_run / R, not pooled, with Satterthwaite's degrees of freedom
between the two (parts of like size and degrees of freedom, where that approximation holds).
One run against a group takes the group's seed part for the single run too (the same
configuration-level noise, assumed equal; R − 1 degrees of freedom). Assumes: seeds
exchangeable within a group, digits exchangeable, the mean close to normal.
`python -m mnist_lab.measure calibration` measures the false-positive rate, coverage and power
of every method here by simulation (results/statistics.md).

Where one side has no seed spread to measure and the other has none to lend (two single runs),
only digit noise can be tested: the exact McNemar test on the digits exactly one run gets
right, with the exact conditional (Clopper–Pearson) interval it inverts. Its verdict is about
these two runs, not their configurations (`Difference.seed_noise` is False); one run alone gets
Wilson's interval over its digits. P-values are analytic: no resample count floors them. Many
pairs: Holm's step-down adjustment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, special, stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
)

from mnist_lab import names

ALPHA = 0.05
P_BELOW = 1e-30  # t_test returns 0 for a p below this (t quantiles lose precision past it)

DIGITS_ONLY = "digits only; seed noise unmeasured"
WILSON = f"Wilson ({DIGITS_ONLY})"
T_SEEDS_DIGITS = "t over seeds × digits"
T_OVER_SEEDS = "t over seeds"
MCNEMAR = f"McNemar exact ({DIGITS_ONLY})"
TWO_PROPORTIONS = f"Newcombe two-proportion, unpaired ({DIGITS_ONLY})"
WELCH = "Welch t over seeds (no per-digit predictions)"
WELCH_T = "Welch t"
BORROWED = "the single run's seed noise from the group's spread"


@dataclass(frozen=True)
class Summary:
    """A group's accuracy: n runs, their mean, the std over seeds (NaN for one run) and a 95 %
    interval made by `method`; `seed_noise` says whether the interval includes seed noise."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    method: str
    seed_noise: bool = True


@dataclass(frozen=True)
class Difference:
    """Accuracy of group a minus group b, its 95 % interval (the inversion of `test`) and the
    test's p-value of "no difference". `seed_noise` False: a digits-only verdict about two
    single runs, which says nothing of their configurations."""

    difference: float
    low: float
    high: float
    test: str
    p_value: float
    paired: bool
    seed_noise: bool = True


@dataclass(frozen=True)
class TwoWay:
    """A group [runs, digits] in the figures its variance needs: its mean, the per-run
    accuracies' variance and the interaction mean square (NaN for one run), and the per-digit
    mean accuracy [digits]."""

    runs: int
    digits: int
    mean: float
    run_variance: float
    residual: float
    digit_means: np.ndarray


def two_way(correct: np.ndarray) -> TwoWay:
    """The ANOVA figures of a group of runs scored on the same digits."""
    correct = _as_runs(correct)
    runs, digits = correct.shape
    values = correct.astype(np.float64)
    run_means, digit_means = values.mean(axis=1), values.mean(axis=0)
    mean = float(run_means.mean())
    if runs == 1:
        return TwoWay(1, digits, mean, math.nan, math.nan, digit_means)
    total = float(((values - mean) ** 2).sum())
    between_runs = digits * float(((run_means - mean) ** 2).sum())
    between_digits = runs * float(((digit_means - mean) ** 2).sum())
    residual = max(0.0, total - between_runs - between_digits) / ((runs - 1) * (digits - 1))
    return TwoWay(runs, digits, mean, float(run_means.var(ddof=1)), residual, digit_means)


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


def satterthwaite(components: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(variance, degrees of freedom) of a sum of independent variance estimates, each
    (estimate, its degrees of freedom): Satterthwaite's (1946) approximation."""
    variance = sum(v for v, _ in components)
    spread = sum(v * v / df for v, df in components if v > 0)
    return variance, (variance * variance / spread if spread > 0 else math.inf)


def half_width(parts: Sequence[tuple[float, float]], alpha: float = ALPHA) -> float:
    """Half-width of the 1 − alpha interval of an estimate whose variance is a sum of
    independent parts, each (variance, its degrees of freedom), each scaled by its own Student
    t quantile: √(Σ t²_df(1 − alpha/2) · variance)."""
    return math.sqrt(sum(special.stdtrit(df, alpha / 2) ** 2 * v for v, df in parts if v > 0))


def t_test(
    estimate: float, components: Sequence[tuple[float, float]], alpha: float = ALPHA
) -> tuple[float, float, float]:
    """(low, high, two-sided p) of "the true value is 0" for `estimate` with variance parts
    `components` (`half_width`): p is the α whose half-width reaches |estimate|, so the
    interval excludes 0 exactly when p < alpha."""
    half = half_width(components, alpha)
    low, high = estimate - half, estimate + half
    smallest, largest = math.log(P_BELOW), math.log(1 - 1e-12)

    def reach(log_alpha: float) -> float:
        return half_width(components, math.exp(log_alpha)) - abs(estimate)

    if reach(largest) >= 0:  # 0 within even the narrowest interval (estimate 0, or rounding)
        return low, high, 1.0
    if reach(smallest) < 0:
        return low, high, 0.0  # p < P_BELOW: shown as such, never as a number
    return low, high, math.exp(optimize.brentq(reach, smallest, largest, xtol=1e-10))


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _digit_part(spread: float, residuals: float, digits: int) -> tuple[float, float]:
    """The digits' part of a variance: the per-digit means' (or paired differences') variance
    `spread` less the runs' residual noise in it, over the digits."""
    return max(0.0, spread - residuals) / digits, digits - 1


def summarize(correct: np.ndarray) -> Summary:
    """Mean accuracy of a group [runs, digits] with its 95 % interval: Wilson's over the digits
    for one run (seed noise unmeasured), the t interval over seeds × digits for several."""
    group = two_way(correct)
    if group.runs == 1:
        right = round(group.mean * group.digits)
        low, high = wilson_interval(right, group.digits)
        return Summary(1, group.mean, math.nan, low, high, WILSON, seed_noise=False)
    parts = [
        (group.run_variance / group.runs, group.runs - 1),
        _digit_part(
            float(group.digit_means.var(ddof=1)), group.residual / group.runs, group.digits
        ),
    ]
    half = half_width(parts)  # an interval alone: no p-value to solve for
    low, high = max(0.0, group.mean - half), min(1.0, group.mean + half)
    return Summary(group.runs, group.mean, math.sqrt(group.run_variance), low, high, T_SEEDS_DIGITS)


def summarize_accuracies(accuracies: Sequence[float], digits: int) -> Summary:
    """A group known only by its runs' accuracies on `digits` digits (runs that logged no
    predictions): Wilson for one run, t over the seeds for several (cut to [0, 1]: an accuracy
    is a share)."""
    values = np.asarray(accuracies, dtype=float)
    mean = float(values.mean())
    if len(values) == 1:
        low, high = wilson_interval(round(mean * digits), digits)
        return Summary(1, mean, math.nan, low, high, WILSON, seed_noise=False)
    low, high = t_interval(values)
    return Summary(len(values), mean, _std(values), max(low, 0.0), min(high, 1.0), T_OVER_SEEDS)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(digits only a gets right, digits only b gets right, exact two-sided p-value)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    table = [[int(np.sum(a & b)), only_a], [only_b, int(np.sum(~a & ~b))]]
    return only_a, only_b, float(mcnemar(table, exact=True).pvalue)


def mcnemar_interval(
    only_a: int, only_b: int, digits: int, alpha: float = ALPHA
) -> tuple[float, float]:
    """Exact conditional interval of the paired difference in accuracy, the one the exact
    McNemar test inverts: Clopper–Pearson's interval of the share of the n discordant digits
    that a gets right, as a difference, (n·(2π − 1)) / digits. No discordant digit: the
    difference is at most the discordance rate, whose one-sided Clopper–Pearson bound is
    1 − (α/2)^(1/digits)."""
    discordant = only_a + only_b
    if discordant == 0:
        bound = 1 - (alpha / 2) ** (1 / digits)
        return -bound, bound
    low, high = proportion_confint(only_a, discordant, alpha=alpha, method="beta")
    return (
        discordant * (2 * float(low) - 1) / digits,
        discordant * (2 * float(high) - 1) / digits,
    )


def compare_groups(a: np.ndarray, b: np.ndarray, paired: bool = True) -> Difference:
    """Accuracy of group a minus group b ([runs, digits] each) with its 95 % interval and test:
    the t over seeds × digits (paired on the digits when `paired`) when at least one side has
    several seeds; two single runs: digits only (exact McNemar paired, the two-proportion score
    test unpaired), flagged `seed_noise=False`."""
    a, b = _as_runs(a), _as_runs(b)
    if paired and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"paired groups must share their digits; got sizes {a.shape[1]} and {b.shape[1]}"
        )
    difference = float(a.mean(axis=1).mean() - b.mean(axis=1).mean())
    if len(a) == len(b) == 1:
        return _single_runs(a[0], b[0], difference, paired)
    ga, gb = two_way(a), two_way(b)
    seeds = satterthwaite(_seed_components((ga.runs, ga.run_variance), (gb.runs, gb.run_variance)))
    residual_a = ga.residual if ga.runs > 1 else gb.residual  # a single run borrows
    residual_b = gb.residual if gb.runs > 1 else ga.residual
    if paired:
        spread = float((ga.digit_means - gb.digit_means).var(ddof=1))
        residuals = residual_a / ga.runs + residual_b / gb.runs
        digits = _digit_part(spread, residuals, ga.digits)
    else:
        digits = satterthwaite([
            _digit_part(float(g.digit_means.var(ddof=1)), residual / g.runs, g.digits)
            for g, residual in ((ga, residual_a), (gb, residual_b))
        ])  # fmt: skip
    low, high, p_value = t_test(difference, [seeds, digits])
    test = T_SEEDS_DIGITS if paired else f"{T_SEEDS_DIGITS}, unpaired"
    if 1 in (ga.runs, gb.runs):
        test += f"; {BORROWED}"
    return Difference(difference, low, high, test, p_value, paired)


def _seed_components(a: tuple[int, float], b: tuple[int, float]) -> list[tuple[float, float]]:
    """The seed parts of a difference, given each side's (runs, seed variance): variance / runs
    with runs − 1 degrees of freedom each; a single run borrows the other side's variance, one
    estimate counted once."""
    (runs_a, variance_a), (runs_b, variance_b) = a, b
    if runs_a > 1 and runs_b > 1:
        return [(variance_a / runs_a, runs_a - 1), (variance_b / runs_b, runs_b - 1)]
    runs, variance, single = (
        (runs_a, variance_a, runs_b) if runs_a > 1 else (runs_b, variance_b, runs_a)
    )
    return [(variance * (1 / runs + 1 / single), runs - 1)]


def _single_runs(a: np.ndarray, b: np.ndarray, difference: float, paired: bool) -> Difference:
    if paired:
        only_a, only_b, p_value = mcnemar_exact(a, b)
        low, high = mcnemar_interval(only_a, only_b, len(a))
        return Difference(difference, low, high, MCNEMAR, p_value, True, seed_noise=False)
    low, high, p_value = _two_proportions(int(a.sum()), len(a), int(b.sum()), len(b))
    return Difference(difference, low, high, TWO_PROPORTIONS, p_value, False, seed_noise=False)


def _two_proportions(
    count_a: int, digits_a: int, count_b: int, digits_b: int
) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval (1998, method 10) of a difference of two independent
    proportions, and the test it inverts: p is the α at which the 1 − α interval's nearer end
    reaches 0, so the interval excludes 0 exactly when p < α."""

    def interval(alpha: float) -> tuple[float, float]:
        low, high = confint_proportions_2indep(
            count_a, digits_a, count_b, digits_b, method="newcomb", compare="diff", alpha=alpha
        )
        return float(low), float(high)

    low, high = interval(ALPHA)
    estimate = count_a / digits_a - count_b / digits_b
    if estimate == 0:
        return low, high, 1.0
    end = 0 if estimate > 0 else 1

    def reach(log_alpha: float) -> float:
        return interval(math.exp(log_alpha))[end]

    smallest = math.log(1e-300)
    if (reach(smallest) > 0) == (estimate > 0):
        return low, high, 0.0  # beyond any α a float can hold
    return low, high, math.exp(optimize.brentq(reach, smallest, math.log(1 - 1e-12)))


def compare_accuracies(
    a: Sequence[float], b: Sequence[float], digits_a: int, digits_b: int
) -> Difference:
    """Two groups known only by their runs' accuracies (no per-digit predictions), so
    unpaired: Welch's t over the seeds (a single run takes the other group's spread); two
    single runs, the two-proportion score test (digits only)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean())
    if len(a) == len(b) == 1:
        count_a, count_b = round(a[0] * digits_a), round(b[0] * digits_b)
        low, high, p = _two_proportions(count_a, digits_a, count_b, digits_b)
        return Difference(difference, low, high, TWO_PROPORTIONS, p, False, seed_noise=False)
    result = welch(a, b)
    test = WELCH if min(len(a), len(b)) > 1 else f"{WELCH}; {BORROWED}"
    return replace(result, test=test)


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Mean of `a` minus mean of `b`, two independent samples of any figure (seconds, or
    accuracies without per-digit predictions), with Welch's (1947) 95 % interval and two-sided
    t test: each side's variance / n, not pooled, Satterthwaite's degrees of freedom. A side of
    one value takes the other side's spread (the same noise, assumed equal)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if max(len(a), len(b)) < 2:
        raise ValueError("Welch's t needs at least two values on one side")
    difference = float(a.mean() - b.mean())
    spread = _seed_components((len(a), _std(a) ** 2), (len(b), _std(b) ** 2))
    low, high, p_value = t_test(difference, [satterthwaite(spread)])
    return Difference(difference, low, high, WELCH_T, p_value, False)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error at α over all the pairs)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def significance_ranks(
    groups: int, beats: Sequence[tuple[int, int]], ranked: Sequence[bool] | None = None
) -> list[float]:
    """Each group's rank: 1 + the length of the longest chain of groups above it, each beating
    the next beyond noise, where `beats` holds (winner, loser) pairs. A group never shares a
    rank with, or ranks above, a group that beats it; groups of one rank never beat each other.
    Groups not in `ranked` (no configuration-level comparison) get NaN."""
    above: list[list[int]] = [[] for _ in range(groups)]
    for winner, loser in beats:
        above[loser].append(winner)
    depth: dict[int, int] = {}

    def rank(k: int, path: frozenset[int]) -> int:
        if k in path:
            raise ValueError(f"'beats' has a cycle through group {k}")
        if k not in depth:
            depth[k] = 1 + max((rank(w, path | {k}) for w in above[k]), default=0)
        return depth[k]

    ranked = [True] * groups if ranked is None else ranked
    return [float(rank(k, frozenset())) if ranked[k] else math.nan for k in range(groups)]


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
    digits]) gives test accuracy's interval over seeds × digits; other metrics get a t
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
