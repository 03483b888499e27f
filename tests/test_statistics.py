"""analysis/statistics.py against textbook cases worked by hand, and the bootstrap's behaviour."""

import math

import numpy as np
import pytest

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


def test_one_run_interval_is_wilsons_and_its_bootstrap_spread_is_binomial():
    one = runs(0.99, digits=10_000)
    summary = st.summarize(one)
    assert summary.method == st.WILSON and summary.n == 1 and math.isnan(summary.std)
    assert (summary.low, summary.high) == st.wilson_interval(int(one.sum()), 10_000)
    (resampled,) = st.pigeonhole_resample([one])
    p = one.mean()
    assert resampled.std() == pytest.approx(math.sqrt(p * (1 - p) / 10_000), rel=0.1)


def test_seed_spread_widens_the_interval_beyond_the_digits_alone():
    steady = runs(0.97, 0.97, 0.97, 0.97, 0.97, digits=5000)
    spread = runs(0.95, 0.96, 0.97, 0.98, 0.99, digits=5000)
    a, b = st.summarize(steady), st.summarize(spread)
    assert a.method == b.method == st.PIGEONHOLE and a.n == b.n == 5
    assert b.std > 5 * a.std
    assert (b.high - b.low) > 2 * (a.high - a.low)
    assert b.low < b.mean < b.high
    assert st.summarize(spread) == b  # seeded: the same data, the same interval


def test_identical_groups_differ_by_nothing():
    group = runs(0.9, 0.92, 0.95)
    result = st.compare_groups(group, group)
    assert result.difference == 0 and result.p_value == 1.0 and result.low <= 0 <= result.high


def test_two_single_runs_are_tested_by_exact_mcnemar():
    a, b = runs(0.99, seed=1), runs(0.95, seed=2)
    result = st.compare_groups(a, b)
    assert result.test == st.MCNEMAR and result.paired
    assert result.p_value == pytest.approx(st.mcnemar_exact(a[0], b[0])[2])
    assert result.difference == pytest.approx(a.mean() - b.mean())
    assert result.low < result.difference < result.high


def test_repeats_are_tested_over_seeds_and_digits():
    better, worse = runs(0.99, 0.985, 0.99, seed=1), runs(0.95, 0.955, 0.95, seed=2)
    result = st.compare_groups(better, worse)
    assert result.test == st.PIGEONHOLE and result.p_value < 0.01 and result.low > 0
    tie = st.compare_groups(runs(0.97, 0.96, 0.98, seed=3), runs(0.965, 0.975, 0.97, seed=4))
    assert tie.p_value > 0.05 and tie.low < 0 < tie.high
    unpaired = st.compare_groups(better, runs(0.95, 0.96, digits=1000), paired=False)
    assert unpaired.test.endswith("unpaired") and not unpaired.paired
    with pytest.raises(ValueError, match="share their digits"):
        st.compare_groups(better, runs(0.95, digits=1000))


def test_runs_without_predictions_are_compared_unpaired():
    single = st.compare_accuracies([0.99], [0.98], 10_000, 10_000)
    assert single.test == st.TWO_PROPORTIONS and single.p_value < 0.001 and single.low > 0
    repeats = st.compare_accuracies([0.99, 0.991, 0.989], [0.985, 0.986, 0.984], 10_000, 10_000)
    assert repeats.test == st.WELCH and repeats.p_value < 0.01


def test_ranks_count_who_beats_a_group_beyond_noise():
    # a beats c beyond noise; a-b and b-c are ties: a and b share rank 1, c is beaten once.
    pairs = [(0, 1, 0.01, 0.2), (0, 2, 0.02, 0.01), (1, 2, 0.01, 0.3)]
    assert st.significance_ranks([0.99, 0.98, 0.97], pairs) == [1, 1, 2]
    assert st.significance_ranks([0.9, 0.99], [(0, 1, -0.09, 0.001)]) == [2, 1]


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
