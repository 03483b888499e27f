"""analysis/statistics.py against cases whose answer is known: worked by hand, statsmodels and
scipy (Welch, the paired t, Clopper–Pearson), and the duality of every interval with its test."""

import math

import numpy as np
import pytest
from scipy import stats

from mnist_lab import names
from mnist_lab.analysis import statistics as st
from mnist_lab.analysis.predictions import correct_matrix, predictions_frame, same_digits


def runs(*accuracies: float, digits: int = 2000, seed: int = 0) -> np.ndarray:
    """bool [runs, digits]: run r right on a random `accuracies[r]` share of the digits."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(digits) < a for a in accuracies])


def test_wilson_interval_is_newcombes_published_example():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", 81/263.
    low, high = st.wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_by_its_formula_at_mnist_scale():
    n, p, z = 10_000, 0.995, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert st.wilson_interval(9950, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert half == pytest.approx(0.0014, abs=1e-4)  # the "about ±0.14 points"


def test_exact_mcnemar_by_hand():
    # 10 digits only a gets right, 3 only b: p = 2 · P(X <= 3), X ~ Bin(13, 1/2)
    #   = 2 · (1 + 13 + 78 + 286) / 2^13 = 756 / 8192.
    a = np.array([True] * 10 + [False] * 3 + [True] * 50 + [False] * 7)
    b = np.array([False] * 10 + [True] * 3 + [True] * 50 + [False] * 7)
    assert st.mcnemar_exact(a, b) == (10, 3, pytest.approx(756 / 8192))
    assert st.mcnemar_exact(a, a)[2] == 1.0


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 → 0.02, 0.03, 0.06, 0.04 → monotone 0.06.
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert len(st.holm([])) == 0


def test_t_interval_by_hand():
    # mean 2, s = 1, t(0.975, 2) = 4.302653: 2 ± 4.302653 / sqrt(3).
    half = 4.302652729911275 / math.sqrt(3)
    assert st.t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in st.t_interval([0.5]))


def test_one_sided_promotion_test_by_hand():
    # 10 digits only the challenger gets right, 3 only the champion: P(X >= 10), X ~ Bin(13, ½)
    # = (286 + 78 + 13 + 1) / 8192 < 0.05; 9 against 3: (220 + 66 + 12 + 1) / 4096 > 0.05.
    wins = np.array([True] * 10 + [False] * 3 + [True] * 20)
    losses = np.array([False] * 10 + [True] * 3 + [True] * 20)
    assert st.promotion_test(wins, losses) == (10, 3, pytest.approx(378 / 8192))
    assert st.promotion_test(wins[1:], losses[1:]) == (9, 3, pytest.approx(299 / 4096))
    assert st.promotion_test(losses, wins)[2] > 0.9  # the champion is the better one
    assert st.promotion_test(wins, wins) == (0, 0, 1.0)


def test_one_run_interval_is_wilsons_over_its_digits_and_says_so():
    one = runs(0.99, digits=10_000)
    summary = st.summarize(one)
    assert summary.method == st.WILSON and summary.n == 1 and math.isnan(summary.std)
    assert "seed noise unmeasured" in summary.method and not summary.seed_noise
    assert (summary.low, summary.high) == st.wilson_interval(int(one.sum()), 10_000)


def test_two_way_mean_squares_are_the_anova_of_an_additive_model():
    # statsmodels' OLS of correct ~ run + digit: its residual mean square is the interaction's.
    import pandas as pd
    import statsmodels.formula.api as smf

    correct = runs(0.7, 0.8, 0.75, 0.9, digits=60, seed=3)
    group = st.two_way(correct)
    frame = pd.DataFrame(
        [(r, d, float(correct[r, d])) for r in range(4) for d in range(60)],
        columns=["run", "digit", "y"],
    )
    fit = smf.ols("y ~ C(run) + C(digit)", frame).fit()
    assert group.residual == pytest.approx(fit.mse_resid)
    assert group.run_variance == pytest.approx(np.var(correct.mean(axis=1), ddof=1))
    assert group.digit_means == pytest.approx(correct.mean(axis=0))


def balanced(accuracies: list[float], digits: int = 600, seed: int = 0) -> np.ndarray:
    """Runs with these accuracies whose every digit is right in the same number of runs: the
    digits explain nothing, so only the seed part of the variance is left."""
    rng = np.random.default_rng(seed)
    counts = np.round(np.asarray(accuracies) * digits).astype(int)
    order = np.repeat(np.arange(len(counts)), counts)  # run r, counts[r] times
    per_digit = len(order) // digits
    assert per_digit * digits == len(order), "accuracies must sum to a whole number of digits"
    correct = np.zeros((len(counts), digits), dtype=bool)
    for slot, run in enumerate(order):  # digit slot % digits gets one of its right runs
        correct[run, slot % digits] = True
    return correct[:, rng.permutation(digits)]


def test_a_group_whose_digits_explain_nothing_gets_students_t_over_its_seeds():
    group = balanced([0.6, 0.7, 0.7])  # each digit right in exactly 2 of the 3 runs
    assert np.ptp(group.mean(axis=0)) == 0
    summary = st.summarize(group)
    assert summary.method == st.T_SEEDS_DIGITS and summary.seed_noise
    assert (summary.low, summary.high) == pytest.approx(st.t_interval(group.mean(axis=1)))


def test_two_groups_whose_digits_explain_nothing_get_welchs_test_exactly():
    a, b = balanced([0.5, 0.9, 0.6]), balanced([0.3, 0.5, 0.4, 0.8], seed=1)
    result = st.compare_groups(a, b)
    welch = stats.ttest_ind(a.mean(axis=1), b.mean(axis=1), equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert result.p_value == pytest.approx(welch.pvalue, rel=1e-6)
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert result.seed_noise and result.test == st.T_SEEDS_DIGITS


def test_groups_without_seed_spread_get_the_paired_t_over_digits():
    # Every run of a group identical: no seed noise, the per-digit differences are all there is.
    a = np.repeat(runs(0.9, digits=3000, seed=1), 3, axis=0)
    b = np.repeat(runs(0.88, digits=3000, seed=2), 2, axis=0)
    result = st.compare_groups(a, b)
    paired = stats.ttest_rel(a[0].astype(float), b[0].astype(float))
    interval = paired.confidence_interval(0.95)
    assert result.p_value == pytest.approx(paired.pvalue, rel=1e-6)
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_one_run_against_a_group_takes_the_groups_seed_spread():
    # The prediction interval of a new draw: (x - mean) / (s * sqrt(1 + 1/R)) ~ t(R - 1).
    group = balanced([0.5, 0.9, 0.6])
    single = np.ones((1, 600), dtype=bool)  # right everywhere: its digits add no variance
    result = st.compare_groups(single, group)
    accuracies = group.mean(axis=1)
    t = (single.mean() - accuracies.mean()) / (accuracies.std(ddof=1) * math.sqrt(1 + 1 / 3))
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), 2), rel=1e-6)
    assert result.seed_noise and st.BORROWED in result.test


def test_identical_groups_differ_by_nothing():
    group = runs(0.9, 0.92, 0.95)
    result = st.compare_groups(group, group)
    assert result.difference == 0 and result.p_value == 1.0 and result.low <= 0 <= result.high


def test_two_single_runs_get_exact_mcnemar_and_the_interval_it_inverts():
    a = np.array([True] * 10 + [False] * 3 + [True] * 50 + [False] * 7)
    b = np.array([False] * 10 + [True] * 3 + [True] * 50 + [False] * 7)
    result = st.compare_groups(a, b)
    assert result.test == st.MCNEMAR and result.paired and not result.seed_noise
    assert result.p_value == pytest.approx(756 / 8192)
    # Clopper–Pearson of 10 of the 13 discordant digits (scipy's exact binomial interval).
    share = stats.binomtest(10, 13).proportion_ci(0.95, method="exact")
    expected = (13 * (2 * share.low - 1) / 70, 13 * (2 * share.high - 1) / 70)
    assert (result.low, result.high) == pytest.approx(expected)
    nothing = st.compare_groups(a, a)  # no discordant digit: not a zero-width interval
    assert nothing.p_value == 1.0 and nothing.low < 0 < nothing.high


@pytest.mark.parametrize("seed", range(40))
def test_every_interval_excludes_zero_exactly_when_its_test_rejects(seed):
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(1, 5, 2)
    base = rng.uniform(0.8, 0.99)
    digits = int(rng.choice([50, 400]))
    a = runs(*(base + rng.normal(0, 0.02, n_a)).clip(0, 1), digits=digits, seed=seed)
    b = runs(*(base + 0.03 + rng.normal(0, 0.02, n_b)).clip(0, 1), digits=digits, seed=seed + 99)
    for result in (
        st.compare_groups(a, b),
        st.compare_groups(a, runs(0.9, digits=digits // 2, seed=seed), paired=False),
        st.compare_accuracies(a.mean(axis=1), b.mean(axis=1), digits, digits),
    ):
        assert (result.low > 0 or result.high < 0) == (result.p_value < st.ALPHA), result


def test_p_values_are_analytic_so_holm_over_many_pairs_can_reject():
    # The bootstrap's floor 2/2001 times 55 pairs could never reject; an analytic p can.
    better = runs(*np.linspace(0.988, 0.992, 8), seed=1)
    worse = runs(*np.linspace(0.948, 0.952, 8), seed=2)
    result = st.compare_groups(better, worse)
    assert 0 < result.p_value < 1e-4
    assert st.holm([result.p_value] + [0.5] * 54)[0] < st.ALPHA


def test_repeats_on_different_digits_are_compared_unpaired():
    better = runs(0.99, 0.985, 0.99, seed=1)
    unpaired = st.compare_groups(better, runs(0.95, 0.96, digits=1000), paired=False)
    assert unpaired.test.startswith(f"{st.T_SEEDS_DIGITS}, unpaired") and not unpaired.paired
    with pytest.raises(ValueError, match="share their digits"):
        st.compare_groups(better, runs(0.95, digits=1000))


def test_runs_without_predictions_are_compared_unpaired():
    single = st.compare_accuracies([0.99], [0.98], 10_000, 10_000)
    assert single.test == st.TWO_PROPORTIONS and single.p_value < 0.001 and single.low > 0
    assert not single.seed_noise
    repeats = st.compare_accuracies([0.99, 0.991, 0.989], [0.985, 0.986, 0.984], 10_000, 10_000)
    welch = stats.ttest_ind([0.99, 0.991, 0.989], [0.985, 0.986, 0.984], equal_var=False)
    assert repeats.test == st.WELCH and repeats.p_value == pytest.approx(welch.pvalue, rel=1e-6)


def test_ranks_never_put_a_row_beside_one_it_beats():
    # C beats A, A beats B, C and B tie: A and B must not share a rank (A beats B).
    a, b, c = 0, 1, 2
    assert st.significance_ranks(3, [(c, a), (a, b)]) == [2, 3, 1]
    assert st.significance_ranks(2, [(1, 0)]) == [2, 1]
    assert st.significance_ranks(3, []) == [1, 1, 1]
    assert math.isnan(st.significance_ranks(2, [], ranked=[True, False])[1])


@pytest.mark.parametrize("seed", range(20))
def test_ranks_order_every_beaten_row_below_its_winner(seed):
    rng = np.random.default_rng(seed)
    means = rng.random(8)
    beats = [(i, j) for i in range(8) for j in range(8) if means[i] > means[j] + 0.2]
    beats = [pair for pair in beats if rng.random() < 0.7]
    ranks = st.significance_ranks(8, beats)
    assert all(ranks[winner] < ranks[loser] for winner, loser in beats)


def test_aggregates_of_seed_runs_carry_the_lab_names():
    correct = runs(0.97, 0.98, 0.99)
    per_run = [
        {names.TEST_ACCURACY: float(c.mean()), names.TEST_ECE: e}
        for c, e in zip(correct, (0.02, 0.03, 0.04), strict=True)
    ]
    out = st.aggregate_runs(per_run, (names.TEST_ACCURACY, names.TEST_ECE, "absent"), correct)
    assert out[names.N_SEEDS] == 3
    assert out["test_accuracy_mean"] == pytest.approx(correct.mean())
    assert (out["test_accuracy_ci95_low"], out["test_accuracy_ci95_high"]) == pytest.approx(
        (st.summarize(correct).low, st.summarize(correct).high)
    )
    assert out["test_ece_mean"] == pytest.approx(0.03) and out["test_ece_std"] == pytest.approx(
        0.01
    )
    assert out["test_ece_ci95_low"] < 0.02 and not any(k.startswith("absent") for k in out)


def test_predictions_frames_align_by_mnist_index():
    probabilities = np.eye(10)[[3, 1, 2]]
    a = predictions_frame(
        np.array([7, 2, 5]), np.array([3, 1, 0]), np.array([3, 1, 2]), probabilities
    )
    assert list(a.columns[:3]) == ["index", "label", "prediction"] and a.shape == (3, 13)
    b = a.iloc[[2, 0, 1]]  # the same digits in another order
    assert same_digits([a, b])
    assert correct_matrix([a, b]).tolist() == [[True, False, True]] * 2  # by index: 2, 5, 7
    assert not same_digits([a, a.iloc[:2]])
    with pytest.raises(ValueError, match="not scored on the same digits"):
        correct_matrix([a, a.iloc[:2]])


def test_an_accuracy_known_by_its_runs_keeps_its_interval_inside_zero_and_one():
    near_one = st.summarize_accuracies([0.97, 1.0, 1.0], digits=100)
    near_zero = st.summarize_accuracies([0.03, 0.0, 0.0], digits=100)
    assert 0.97 < near_one.mean < near_one.high == 1.0
    assert near_zero.low == 0.0 < near_zero.mean


def test_welch_on_any_figure_is_scipys_welch_t():
    slower, faster = [10.0, 10.4, 10.2, 10.9], [9.0, 9.3, 9.1]
    result = st.welch(slower, faster)
    welch = stats.ttest_ind(slower, faster, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert result.difference == pytest.approx(np.mean(slower) - np.mean(faster))
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high), rel=1e-6)
    assert result.p_value == pytest.approx(welch.pvalue, rel=1e-6) and result.test == st.WELCH_T
    with pytest.raises(ValueError, match="two values"):
        st.welch([1.0], [2.0])
