"""Digits from other sources than MNIST: font-rendered photos and handwriting scanned at several
resolutions, read as `predict` reads a user's photos, with each source's accuracy and interval.

`source_sets(per_class, seed)` makes the sets (data/font_digits.py, data/handwriting.py), each
photo cleaned by `mnist_lab.data.images.mnist_style` ([N, 28, 28] floats, what the model is
given). `evaluate_sources` scores a `Predict` on them: accuracy and its Wilson interval per
source. `sources_figure` shows, per source, digits as given, as the model saw them, and what it
read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from mnist_lab.analysis.statistics import wilson_interval
from mnist_lab.data.cleaning import clean
from mnist_lab.data.font_digits import RealDigitsError, find_fonts, render
from mnist_lab.data.handwriting import SOURCES, handwriting_set
from mnist_lab.data.images import mnist_style

FONTS = "fonts"


@dataclass
class SourceSet:
    """One source's digits: the photos as given, the 28x28 digits `predict` makes of them."""

    photos: list[Image.Image]
    digits: np.ndarray  # float32 [N, 28, 28] in [0, 1]
    labels: np.ndarray  # int64 [N]


def font_set(per_class: int, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """`per_class` font-rendered photos of each digit (fonts in turn), as `real-digits` draws
    them: (photos, labels). RealDigitsError when no font draws digits."""
    fonts = find_fonts()
    photos, labels = [], []
    for digit in range(10):
        for i in range(per_class):
            rng = np.random.default_rng([seed, digit, i])
            photos.append(render(fonts[(i + digit) % len(fonts)], digit, rng))
            labels.append(digit)
    return photos, np.array(labels, dtype=np.int64)


def source_sets(per_class: int, seed: int = 0) -> dict[str, SourceSet]:
    """Every source's set: fonts (when any are installed) and each handwriting resolution."""
    made: dict[str, tuple[list[Image.Image], np.ndarray]] = {}
    with contextlib.suppress(RealDigitsError):  # no fonts installed: handwriting only
        made[FONTS] = font_set(per_class, seed)
    for source in SOURCES:
        made[source] = handwriting_set(source, per_class, seed)
    return {
        name: SourceSet(photos, np.stack([mnist_style(p) for p in photos]), labels)
        for name, (photos, labels) in made.items()
    }


@dataclass
class SourceScore:
    """Accuracy on one source with its 95 % Wilson interval, and what was read."""

    correct: int
    total: int
    low: float
    high: float
    predicted: np.ndarray  # int64 [N]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def to_report(self) -> dict:
        return {"accuracy": self.accuracy, "interval": [self.low, self.high], "n": self.total}


def evaluate_sources(
    predict, sets: dict[str, SourceSet], device: torch.device | str = "cpu"
) -> dict[str, SourceScore]:
    """`predict` ([B, 1, 28, 28] in [0, 1] → scores [B, 10]) on every source's digits."""
    scores = {}
    for name, found in sets.items():
        x = torch.from_numpy(found.digits).unsqueeze(1).to(device)
        predicted = torch.cat(
            [predict(x[i : i + 500]).argmax(1).cpu() for i in range(0, len(x), 500)]
        )
        predicted = predicted.numpy()
        correct = int((predicted == found.labels).sum())
        low, high = wilson_interval(correct, len(found.labels))
        scores[name] = SourceScore(correct, len(found.labels), low, high, predicted)
    return scores


def sources_figure(
    sets: dict[str, SourceSet], scores: dict[str, SourceScore], per_source: int = 10
) -> Figure:
    """Per source, `per_source` digits (one per class, the first of each): the photo as given,
    the 28x28 digit the model saw (after `clean`), and what it read (red: wrong)."""
    figure = Figure(figsize=(1.0 * per_source + 1.2, 2.1 * len(sets) + 0.5))
    axes = figure.subplots(2 * len(sets), per_source, squeeze=False)
    for row, (name, found) in enumerate(sets.items()):
        picks = [int(np.flatnonzero(found.labels == d)[0]) for d in range(per_source)]
        seen = clean(torch.from_numpy(found.digits[picks]).unsqueeze(1))[:, 0].numpy()
        for col, k in enumerate(picks):
            given, shown = axes[2 * row, col], axes[2 * row + 1, col]
            given.imshow(np.asarray(found.photos[k]))
            shown.imshow(seen[col], cmap="gray", vmin=0, vmax=1)
            read = int(scores[name].predicted[k])
            right = read == int(found.labels[k])
            shown.set_title(
                f"read {read}" + ("" if right else " ✗"),
                fontsize=8,
                color="black" if right else "red",
            )
            for ax in (given, shown):
                ax.set_xticks([])
                ax.set_yticks([])
        score = scores[name]
        axes[2 * row, 0].set_ylabel(name.replace("_", " "), fontsize=8)
        axes[2 * row + 1, 0].set_ylabel(
            f"{100 * score.accuracy:.1f} %\n(n {score.total})", fontsize=8
        )
    figure.suptitle("Digits from other sources: as given, as the model saw them, what it read")
    figure.tight_layout()
    return figure
