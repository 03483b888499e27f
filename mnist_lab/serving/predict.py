"""Digits from image files, IDX files or folders → a logged model → digit and confidence.

The files are read and made MNIST-like by `mnist_lab.data.images.collect`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnist_lab.tracking.pyfunc import DIGIT, PROB_COLUMNS


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
    model, sources: list[str], images: np.ndarray, batch_size: int = 1000
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
