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
from PIL import Image, ImageOps

from mnist_lab.analysis.statistics import wilson_interval
from mnist_lab.data.cleaning import clean
from mnist_lab.data.font_digits import RealDigitsError, find_fonts, render
from mnist_lab.data.handwriting import SOURCES, handwriting_set
from mnist_lab.data.images import mnist_style

FONTS = "fonts"
# The figure's mosaic: pixels a digit's cell, the gap between cells (room for its answer).
CELL = 56
CELL_GAP = 16
GAP_RGB = (255, 255, 255)


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
    the 28x28 digit the model saw (after `clean`), and what it read (red: wrong). Drawn as one
    mosaic image with the answers written over it (a grid of ~100 axes cost a run a second)."""
    rows = 2 * len(sets)
    step = CELL + CELL_GAP
    mosaic = np.full((rows * step, per_source * step, 3), GAP_RGB, dtype=np.uint8)
    figure = Figure(figsize=(1.0 * per_source + 1.2, 2.1 * len(sets) + 0.5))
    ax = figure.subplots()
    for row, (name, found) in enumerate(sets.items()):
        picks = [int(np.flatnonzero(found.labels == d)[0]) for d in range(per_source)]
        seen = clean(torch.from_numpy(found.digits[picks]).unsqueeze(1))[:, 0].numpy()
        for col, k in enumerate(picks):
            given = ImageOps.pad(found.photos[k].convert("RGB"), (CELL, CELL), color=GAP_RGB)
            shown = Image.fromarray((255 * seen[col]).astype(np.uint8)).resize((CELL, CELL))
            for r, image in ((2 * row, given), (2 * row + 1, shown.convert("RGB"))):
                top, left = r * step + CELL_GAP // 2, col * step + CELL_GAP // 2
                mosaic[top : top + CELL, left : left + CELL] = np.asarray(image)
            read = int(scores[name].predicted[k])
            right = read == int(found.labels[k])
            ax.text(
                col * step + step / 2,
                (2 * row + 1) * step + 1,
                f"read {read}" + ("" if right else " ✗"),
                ha="center",
                va="bottom",
                fontsize=8,
                color="black" if right else "red",
            )
    ax.imshow(mosaic, interpolation="nearest")
    labels = []
    for name, score in ((n, scores[n]) for n in sets):
        labels += [name.replace("_", " "), f"{100 * score.accuracy:.1f} %\n(n {score.total})"]
    ax.set_yticks(step * np.arange(rows) + step / 2, labels, fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    figure.suptitle("Digits from other sources: as given, as the model saw them, what it read")
    figure.tight_layout()
    return figure
