"""The calibration measure of analysis/statistics.py, small: the lab's intervals and tests hold
their error rates on simulated configurations with a known truth, and the check that says so
fails when a method ignores the seed noise."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnist_lab.analysis import statistics as st
from mnist_lab.measure import error_rates


@pytest.fixture(scope="module")
def table():
    return error_rates.simulate(reps=200, promotion_reps=100, seed=1)


def test_every_method_holds_its_error_rate_in_both_regimes(table):
    assert error_rates.check(table) == []
    regimes = set(table["regime"])
    assert regimes == {r.name for r in error_rates.REGIMES}
    groups = table[table["comparison"].str.startswith("two groups")]
    assert set(groups["seeds"]) == {f"{n} vs {n}" for n in error_rates.SEEDS}


def test_selection_on_validation_inflates_false_promotions_and_the_test_split_does_not(table):
    promotions = table[table["comparison"].str.startswith("promotion")].set_index(
        ["comparison", "seeds"]
    )["false_positive"]
    on_val = promotions.xs("promotion tested on the validation digits it chose by")
    on_test = promotions.xs("promotion tested on the test digits (register)")
    widest = "10 configuration(s) × 3 seed(s) × 5 epoch(s)"
    assert on_val[widest] > 0.15 and on_test[widest] <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 100)


def test_the_check_fails_a_test_that_ignores_seed_noise(monkeypatch):
    compare = st.compare_groups

    def digits_only(a, b, paired=True):  # McNemar on each group's first run, as if n = 1
        return compare(np.asarray(a)[:1], np.asarray(b)[:1], paired)

    monkeypatch.setattr(st, "compare_groups", digits_only)
    vit = error_rates.REGIMES[0]
    broken = error_rates.simulate_comparisons(vit, reps=100, seed=2)
    failures = error_rates.check(pd.DataFrame([cell.row() for cell in broken]))
    assert any("two groups" in f and "false positives" in f for f in failures)


def test_the_true_accuracies_are_the_quadrature_of_the_model():
    regime = error_rates.REGIMES[0]
    rng = np.random.default_rng(0)
    theta = rng.normal(regime.difficulty_mean, regime.difficulty_sd, 400_000)
    u = rng.normal(0, regime.seed_sd, 400_000)
    monte_carlo = float(np.mean(1 / (1 + np.exp(-(theta + u)))))
    assert error_rates.configuration_accuracy(regime) == pytest.approx(monte_carlo, abs=2e-3)


def test_the_half_width_table_in_results_is_the_csvs():
    root = Path(__file__).resolve().parents[1]
    table = pd.read_csv(root / "results" / "statistics.csv", dtype={"seeds": str})
    assert error_rates.check(table) == [], "results/statistics.csv fails its own acceptance"
    assert error_rates.half_width_table(table) in (root / "results" / "statistics.md").read_text()
