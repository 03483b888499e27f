"""Calibration: ECE, Brier score, temperature scaling and the reliability diagrams.

The data are ten Gaussian classes with identity covariance: for x ~ N(mu_y, I) with
equal priors, the Bayes posterior is softmax(x·mu_k - |mu_k|²/2), a linear classifier whose
probabilities are calibrated by construction. Scaling its logits by 10 makes it over-confident
with a known best temperature of 10; scaling by 0.3 makes it under-confident (T = 0.3).
"""

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from mnist_lab.analysis.calibration import (
    _bin_stats,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_axes,
    reliability_bins,
)

K = 10
DIM = 16


def bayes_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [n, K] of the Bayes classifier on fresh Gaussian samples, and their targets [n]."""
    g = torch.Generator().manual_seed(0)
    means = (
        torch.randn(K, DIM, generator=g) * 0.7
    )  # ~83 % accurate; the same classes for every seed
    g.manual_seed(seed)
    targets = torch.randint(0, K, (n,), generator=g)
    x = means[targets] + torch.randn(n, DIM, generator=g)
    return x @ means.T - 0.5 * means.pow(2).sum(1), targets


@pytest.fixture(scope="module")
def val_split() -> tuple[torch.Tensor, torch.Tensor]:
    return bayes_logits(20_000, seed=1)


@pytest.fixture(scope="module")
def test_split() -> tuple[torch.Tensor, torch.Tensor]:
    return bayes_logits(20_000, seed=2)


def test_bayes_classifier_is_calibrated_and_not_trivial(test_split) -> None:
    logits, targets = test_split
    probs = logits.softmax(1)
    accuracy = (probs.argmax(1) == targets).float().mean()
    assert 0.6 < accuracy < 0.95  # confidences spread over many bins
    assert expected_calibration_error(probs, targets) < 0.015


def test_perfectly_calibrated_synthetic_has_ece_near_zero() -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.distributions.Dirichlet(torch.full((K,), 0.3)).sample((50_000,))
    targets = torch.multinomial(probs, 1, generator=g).squeeze(1)  # y ~ p: calibrated exactly
    assert expected_calibration_error(probs, targets) < 0.01


def test_brier_score_known_values() -> None:
    targets = torch.tensor([0, 3, 9, 3])
    onehot = torch.nn.functional.one_hot(targets, K).float()
    assert brier_score(onehot, targets) == 0.0
    assert brier_score(onehot.roll(1, dims=1), targets) == pytest.approx(2.0)  # all wrong
    assert brier_score(torch.full((4, K), 1 / K), targets) == pytest.approx(0.9)  # 1 - 2/K + 1/K


def test_overconfident_model_gets_t_above_one_and_much_lower_ece(val_split, test_split) -> None:
    (val_logits, val_targets), (test_logits, test_targets) = val_split, test_split
    temperature = fit_temperature(10 * val_logits, val_targets)
    assert temperature == pytest.approx(10, rel=0.1)
    before = (10 * test_logits).softmax(1)
    after = (10 * test_logits / temperature).softmax(1)
    ece_before = expected_calibration_error(before, test_targets)
    ece_after = expected_calibration_error(after, test_targets)
    assert ece_before > 0.1
    assert ece_after < 0.02
    assert ece_after < ece_before / 5
    assert brier_score(after, test_targets) < brier_score(before, test_targets)
    assert torch.equal(before.argmax(1), after.argmax(1))  # accuracy unchanged


def test_underconfident_model_gets_t_below_one(val_split, test_split) -> None:
    (val_logits, val_targets), (test_logits, test_targets) = val_split, test_split
    temperature = fit_temperature(0.3 * val_logits, val_targets)
    assert temperature == pytest.approx(0.3, rel=0.1)
    before = (0.3 * test_logits).softmax(1)
    after = (0.3 * test_logits / temperature).softmax(1)
    assert expected_calibration_error(after, test_targets) < expected_calibration_error(
        before, test_targets
    )
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_fit_temperature_under_no_grad_leaves_inputs_alone(val_split) -> None:
    logits, targets = val_split
    logits = (10 * logits).requires_grad_()
    with torch.no_grad():
        temperature = fit_temperature(logits, targets)
    assert temperature > 1
    assert logits.grad is None


def test_diagram_bins_add_up_to_the_torchmetrics_ece(test_split) -> None:
    logits, targets = test_split
    probs = (3 * logits).softmax(1)
    count, accuracy, confidence = _bin_stats(probs, targets, n_bins=15)
    assert count.sum() == len(targets)
    drawn_ece = float((count / count.sum() * (accuracy - confidence).abs()).sum())
    assert drawn_ece == pytest.approx(expected_calibration_error(probs, targets), abs=1e-4)


def test_summary_fits_on_validation_and_calibrates_the_test_split(val_split, test_split) -> None:
    """An over-confident model (logits x 10): T > 1 from validation lowers the test ECE a lot,
    and the bins the figure draws are the ones the report stores."""
    summary = calibration_summary(
        10 * val_split[0], val_split[1], 10 * test_split[0], test_split[1]
    )
    assert summary.temperature > 5
    assert summary.ece > 0.1 and summary.ece_calibrated < summary.ece / 4
    metrics = summary.metrics()
    assert set(metrics) == {"test_ece", "test_ece_calibrated", "test_brier", "temperature"}
    assert summary.to_report()["calibrated_bins"]["ece"] == summary.ece_calibrated
    assert sum(summary.bins["count"]) == len(test_split[1])


def test_figures_build_and_save(tmp_path: Path, val_split, test_split) -> None:
    summary = calibration_summary(
        10 * val_split[0], val_split[1], 10 * test_split[0], test_split[1]
    )
    fig = summary.figure()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 10_000

    logits, targets = test_split
    side_by_side = Figure(figsize=(9, 4.5))
    for ax, (probs, label) in zip(
        side_by_side.subplots(1, 2),
        [((10 * logits).softmax(1), "a"), (logits.softmax(1), "b")],
        strict=True,
    ):
        reliability_axes(ax, reliability_bins(probs, targets), label)
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert any(entry.startswith(f"{label}: accuracy (ECE ") for entry in legend)
    side_by_side.savefig(tmp_path / "side_by_side.png")
