"""Digits from image files, IDX files or folders → a logged model → digit and confidence.

The files are read and made MNIST-like by `mnist_lab.data.images.collect`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnist_lab.analysis.explanations import (
    METHOD_TITLES,
    explanations_figure,
    heatmaps,
    method_name,
)
from mnist_lab.data.cleaning import clean
from mnist_lab.inference import DIGIT, MAX_BATCH, PROB_COLUMNS


@dataclass
class Prediction:
    source: str  # the file, or "file[i]" for the i-th image of an IDX file
    digit: int
    confidence: float
    probabilities: list[float]

    def as_dict(self) -> dict:
        return {
            "input": self.source,
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        }


def predict(
    model, sources: list[str], images: np.ndarray, batch_size: int = MAX_BATCH
) -> list[Prediction]:
    """`model`: a loaded pyfunc (`tracking.load_model`); `sources`, `images` [N, 28, 28] as
    `collect` returns them. One Prediction per image."""
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        frame = model.predict(images[start : start + batch_size])
        for source, row in zip(sources[start:], frame.itertuples(index=False), strict=False):
            probs = [float(getattr(row, c)) for c in PROB_COLUMNS]
            digit = int(getattr(row, DIGIT))
            out.append(Prediction(source, digit, probs[digit], probs))
    return out


MAX_EXPLAINED = 32


def explain(
    model, sources: list[str], images: np.ndarray, predictions: list[Prediction], path: Path
) -> int:
    """Heat maps of what the model looked at for (up to MAX_EXPLAINED of) the user's digits,
    drawn as the runs' `plots/explanations.png` is and saved to `path` (PNG). `model`: the
    loaded pyfunc; `images`: [N, 28, 28] in [0, 1]. Returns the number of digits drawn."""
    module = model.get_raw_model()
    device = next(module.parameters()).device
    k = min(len(images), MAX_EXPLAINED)
    x = clean(torch.from_numpy(images[:k]).float().unsqueeze(1).to(device))  # what it read
    digits = torch.tensor([p.digit for p in predictions[:k]])
    maps = heatmaps(module, x, digits.to(device))
    figure = explanations_figure(
        x.cpu(),
        None,
        digits,
        torch.tensor([p.confidence for p in predictions[:k]]),
        maps,
        title=f"{METHOD_TITLES[method_name(module)]}: what the model looked at",
        sources=[Path(s).name for s in sources[:k]],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return k
