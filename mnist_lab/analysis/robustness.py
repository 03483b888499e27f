"""How a classifier holds up under the MNIST-C corruptions, and the figures that show it.

`evaluate_robustness` runs the model over the same test sample once clean and once per
(corruption, severity), each corrupted batch made on the model's device from a fixed seed, so
two runs (and two models) see exactly the same images. `robust_error_ratio` is ImageNet-C's mean
corruption error idea without its AlexNet baseline: mean corrupted error over clean error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_lab import names
from mnist_lab.analysis.corruptions import CORRUPTIONS, DEFAULT_SEVERITY, corrupt

Predict = Callable[[torch.Tensor], torch.Tensor]  # [B, 1, 28, 28] in [0, 1] → scores [B, 10]


@dataclass
class RobustnessResult:
    """Accuracy on `samples` test digits, clean and per corruption → severity."""

    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]
    samples: int
    seconds: float

    @property
    def severities(self) -> list[int]:
        return sorted(next(iter(self.accuracy.values())))

    def mean_accuracy(self, severity: int) -> float:
        return float(np.mean([by_level[severity] for by_level in self.accuracy.values()]))

    def metrics(self, severity: int) -> dict[str, float]:
        """`robust_accuracy_<corruption>`, `robust_accuracy_mean`, `robust_error_ratio` at one
        severity. The ratio is inf when the clean sample has no error at all."""
        mean = self.mean_accuracy(severity)
        clean_error = 1.0 - self.clean_accuracy
        return {
            **{names.robust_accuracy(c): acc[severity] for c, acc in self.accuracy.items()},
            names.ROBUST_ACCURACY_MEAN: mean,
            names.ROBUST_ERROR_RATIO: (1.0 - mean) / clean_error if clean_error else float("inf"),
        }

    def to_report(self) -> dict:
        return {
            "samples": self.samples,
            "clean_accuracy": self.clean_accuracy,
            "seconds": self.seconds,
            "severities": self.severities,
            "accuracy": {
                c: {str(s): a for s, a in acc.items()} for c, acc in self.accuracy.items()
            },
            "mean_accuracy": {str(s): self.mean_accuracy(s) for s in self.severities},
            "worst": self.worst(3, self.severities[0]),
        }

    def worst(self, k: int, severity: int) -> list[str]:
        """The `k` corruptions with the lowest accuracy at `severity`."""
        return sorted(self.accuracy, key=lambda c: self.accuracy[c][severity])[:k]


def model_predict(model: nn.Module) -> Predict:
    """`model` as a `Predict`: eval mode, no gradients, scores in fp32."""
    model.eval()

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    return predict


def _accuracy(predict: Predict, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    hits = sum(
        int((predict(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return hits / len(images)


def evaluate_robustness(
    predict: Predict,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (DEFAULT_SEVERITY,),
    seed: int = 0,
    batch_size: int = 1000,
) -> RobustnessResult:
    """Accuracy of `predict` on `images` [N, 1, 28, 28] in [0, 1] (labels [N]), clean and under
    every corruption at every severity. Corruptions are made in batches of `batch_size` on the
    images' device; batch k of a corruption uses seed `seed + k`, so the set is fixed."""
    start = time.perf_counter()
    clean = _accuracy(predict, images, labels, batch_size)
    accuracy: dict[str, dict[int, float]] = {}
    for name in corruptions:
        accuracy[name] = {}
        for severity in severities:
            hits = 0
            for k, i in enumerate(range(0, len(images), batch_size)):
                x = corrupt(images[i : i + batch_size], name, severity, seed=seed + k)
                hits += int((predict(x).argmax(1) == labels[i : i + batch_size]).sum())
            accuracy[name][severity] = hits / len(images)
    return RobustnessResult(clean, accuracy, len(images), time.perf_counter() - start)


def corruptions_figure(
    image: torch.Tensor, severities: Sequence[int] = (DEFAULT_SEVERITY,)
) -> Figure:
    """One digit [1, 28, 28] clean and under every corruption: a row per severity."""
    columns = ["clean", *CORRUPTIONS]
    figure = Figure(figsize=(1.1 * len(columns), 1.35 * len(severities) + 0.4))
    axes = figure.subplots(len(severities), len(columns), squeeze=False)
    x = image[None].float()
    for row, severity in enumerate(severities):
        for col, name in enumerate(columns):
            shown = x if name == "clean" else corrupt(x, name, severity, seed=0)
            ax = axes[row, col]
            ax.imshow(shown[0, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=8)
            if col == 0:
                ax.set_ylabel(f"severity {severity}", fontsize=8)
    figure.suptitle("One test digit under every corruption", fontsize=10)
    figure.tight_layout()
    return figure


def robustness_figure(result: RobustnessResult, title: str = "Accuracy per corruption") -> Figure:
    """Horizontal bars of accuracy per corruption (one bar group per severity), worst at the
    bottom, with the clean accuracy of the same sample as a line."""
    severities = result.severities
    order = sorted(result.accuracy, key=lambda c: -result.accuracy[c][severities[0]])
    figure = Figure(figsize=(7, 0.32 * len(order) * max(1, len(severities) ** 0.5) + 1.5))
    ax = figure.subplots()
    height = 0.8 / len(severities)
    y = np.arange(len(order))
    for k, severity in enumerate(severities):
        values = [100 * result.accuracy[c][severity] for c in order]
        label = f"severity {severity} (mean {100 * result.mean_accuracy(severity):.1f} %)"
        ax.barh(y + k * height, values, height, label=label)
    ax.axvline(100 * result.clean_accuracy, color="black", ls="--", lw=1, label="clean")
    ax.set_yticks(y + 0.4 - height / 2, [c.replace("_", " ") for c in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"accuracy (%) on {result.samples} test digits")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    figure.tight_layout()
    return figure
