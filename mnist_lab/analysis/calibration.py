"""Calibration of a classifier's probabilities: ECE, Brier score, temperature scaling, diagrams.

A classifier is calibrated when, among the digits it labels with confidence p, a fraction p is
right. `expected_calibration_error` measures the top-label gap (torchmetrics, equal-width bins),
`brier_score` the squared error of the whole probability vector, and `fit_temperature` finds the
one scalar T that makes softmax(logits / T) best calibrated on held-out data (Guo et al. 2017,
"On Calibration of Modern Neural Networks"). Dividing logits by T > 0 never changes the argmax,
so accuracy is untouched. The reliability diagrams draw accuracy against confidence per bin.

Everything takes tensors: probabilities [N, K] (rows sum to 1), logits [N, K], integer targets
[N]. Figures are `matplotlib.figure.Figure` built without pyplot.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lab import names

DPI = 100
ACCURACY_COLOUR = "#1f77b4"
GAP_COLOUR = "#d62728"
LBFGS_MAX_ITER = 100


def expected_calibration_error(probabilities: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Top-label ECE: the sample-weighted mean |accuracy - confidence| over equal-width bins.

    probabilities: [N, K] softmax outputs; targets: [N] class indices. Returns a value in [0, 1].
    """
    # Imported here: torchmetrics pulls in torchvision and torch._dynamo, 3 s of every process's
    # start that imports the engine, which most (tune workers, DDP ranks, --help paths) never use.
    from torchmetrics.functional.classification import multiclass_calibration_error

    ece = multiclass_calibration_error(
        probabilities, targets, num_classes=probabilities.shape[1], n_bins=n_bins, norm="l1"
    )
    return float(ece)


def brier_score(probabilities: Tensor, targets: Tensor) -> float:
    """Mean over samples of sum_k (p_k - onehot_k)²: 0 is perfect, 2 is the worst possible.

    probabilities: [N, K]; targets: [N] class indices.
    """
    onehot = F.one_hot(targets.long(), probabilities.shape[1]).to(probabilities.dtype)
    return float((probabilities - onehot).pow(2).sum(dim=1).mean())


def fit_temperature(logits: Tensor, targets: Tensor) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T), fitted with L-BFGS.

    logits: [N, K] on held-out data (not the training set, where the model is over-confident by
    construction); targets: [N]. T > 1 softens an over-confident model, T < 1 sharpens an
    under-confident one. log T is optimised so T stays positive without a constraint. On data
    the logits separate perfectly the NLL keeps falling as T → 0; the fit then stops after
    LBFGS_MAX_ITER iterations with a small T.
    """
    logits = logits.detach().cpu().double()  # tiny: float64 on the CPU keeps L-BFGS exact
    targets = targets.detach().cpu().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=LBFGS_MAX_ITER, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers often evaluate under torch.no_grad()
        optimiser.step(closure)
    return float(log_t.detach().exp())


def _bin_stats(
    probabilities: Tensor, targets: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin: (sample count, accuracy, mean confidence), each [n_bins].

    Empty bins have count 0 and accuracy = confidence = 0.
    """
    confidence, predicted = probabilities.detach().float().cpu().max(dim=1)
    correct = predicted.eq(targets.detach().cpu()).float()
    # Bin i holds [i / n, (i + 1) / n); a confidence of exactly 1 joins the last bin.
    index = (confidence * n_bins).long().clamp(max=n_bins - 1)
    count = torch.zeros(n_bins).index_add_(0, index, torch.ones_like(confidence))
    hits = torch.zeros(n_bins).index_add_(0, index, correct)
    confidence_sum = torch.zeros(n_bins).index_add_(0, index, confidence)
    safe = count.clamp(min=1)
    return count, hits / safe, confidence_sum / safe


def _draw_bins(
    ax: Axes, count: np.ndarray, accuracy: np.ndarray, confidence: np.ndarray, legend: str
) -> None:
    """Accuracy bars, the hatched gap up (or down) to the mean confidence, and each non-empty
    bin's share of the samples at its foot. All arrays [n_bins]; empty bins are not drawn."""
    n_bins = len(count)
    width = 1.0 / n_bins
    filled = count > 0
    x = ((np.arange(n_bins) + 0.5) * width)[filled]
    acc, conf, share = accuracy[filled], confidence[filled], count[filled] / count.sum()
    ax.bar(
        x, acc, width=width, color=ACCURACY_COLOUR, edgecolor="black", linewidth=0.5, label=legend
    )
    ax.bar(
        x,
        conf - acc,
        bottom=acc,
        width=width,
        color=GAP_COLOUR,
        alpha=0.3,
        hatch="//",
        edgecolor=GAP_COLOUR,
        linewidth=0.5,
        label="gap to mean confidence",
    )
    # Shares sit at the foot of each bar, inside it: above it they would collide with the
    # legend and the diagonal, and MNIST puts most samples in the highest-confidence bin.
    for xi, a, s in zip(x, acc, share, strict=True):
        text = f"{s:.0%}" if s >= 0.01 else "<1%"
        colour = "white" if a >= 0.15 else "black"
        ax.text(xi, 0.02, text, ha="center", va="bottom", fontsize=6, rotation=90, color=colour)


def reliability_bins(probabilities: Tensor, targets: Tensor, n_bins: int = 15) -> dict:
    """A reliability diagram as data: per bin `count`, `accuracy`, `confidence` (lists of
    `n_bins` floats) and the `ece`; what `reliability_axes` draws and a run's report stores."""
    count, accuracy, confidence = _bin_stats(probabilities, targets, n_bins)
    return {
        "count": count.tolist(),
        "accuracy": accuracy.tolist(),
        "confidence": confidence.tolist(),
        "ece": expected_calibration_error(probabilities, targets, n_bins),
    }


def reliability_axes(
    ax: Axes, bins: dict, label: str = "model", *, name_in_legend: bool = True
) -> None:
    """Draw one reliability diagram on `ax`: accuracy per confidence bin against the diagonal.

    `bins`: from `reliability_bins`. Blue bars are each bin's accuracy; the red hatched part
    is the gap to the bin's mean confidence (above the bar: over-confident, below: under-). The
    legend gives `label` (unless not `name_in_legend`: a title that names it) with its ECE; each
    bar is annotated with its share of the samples.
    """
    count, accuracy, confidence = (
        np.asarray(bins[key], dtype=float) for key in ("count", "accuracy", "confidence")
    )
    n_bins, samples = len(count), int(count.sum())
    legend = f"accuracy (ECE {bins['ece']:.2%})"
    if name_in_legend:
        legend = f"{label}: {legend}"
    _draw_bins(ax, count, accuracy, confidence, legend=legend)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"{label}: {samples:,} samples, {n_bins} bins\n(% in a bar: its share of samples)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


@dataclass
class CalibrationSummary:
    """A classifier's calibration on the test split, before and after temperature scaling."""

    temperature: float
    ece: float
    ece_calibrated: float
    brier: float
    bins: dict
    calibrated_bins: dict

    def metrics(self) -> dict[str, float]:
        return {
            names.TEST_ECE: self.ece,
            names.TEST_ECE_CALIBRATED: self.ece_calibrated,
            names.TEST_BRIER: self.brier,
            names.TEMPERATURE: self.temperature,
        }

    def to_report(self) -> dict:
        return {**self.metrics(), "bins": self.bins, "calibrated_bins": self.calibrated_bins}

    def figure(self, title: str = "Reliability on the test set") -> Figure:
        fig = Figure(figsize=(9.6, 5.0), dpi=DPI, layout="constrained")
        before, after = fig.subplots(1, 2)
        reliability_axes(before, self.bins, "uncalibrated")
        reliability_axes(after, self.calibrated_bins, f"temperature {self.temperature:.2f}")
        fig.suptitle(title)
        return fig


def calibration_summary(
    val_logits: Tensor, val_targets: Tensor, test_logits: Tensor, test_targets: Tensor
) -> CalibrationSummary:
    """Temperature fitted on validation logits [N, K], then ECE/Brier/bins on the test logits
    [M, K] before and after dividing by it."""
    temperature = fit_temperature(val_logits, val_targets)
    probs = test_logits.float().softmax(1)
    calibrated = (test_logits.float() / temperature).softmax(1)
    bins = reliability_bins(probs, test_targets)
    calibrated_bins = reliability_bins(calibrated, test_targets)
    return CalibrationSummary(
        temperature=temperature,
        ece=bins["ece"],
        ece_calibrated=calibrated_bins["ece"],
        brier=brier_score(probs, test_targets),
        bins=bins,
        calibrated_bins=calibrated_bins,
    )
