"""Per-digit predictions as data: the table every evaluated split logs, and reading it back.

A run logs `predictions/<split>.parquet` (names.predictions_artifact) with the columns
`index` (the digit's position in its MNIST file), `label`, `prediction` (-1: the detector found
no box) and `prob_0` … `prob_9` (the probabilities its logged model serves). Two runs scored on
the same digits have the same `index` column, so any comparison can be paired digit by digit
and recomputed from the store, without the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mnist_lab.names import NUM_CLASSES

INDEX, LABEL, PREDICTION = "index", "label", "prediction"
PROB_COLUMNS = [f"prob_{k}" for k in range(NUM_CLASSES)]
COLUMNS = [INDEX, LABEL, PREDICTION, *PROB_COLUMNS]


def predictions_frame(
    index: np.ndarray, labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray
) -> pd.DataFrame:
    """The predictions table of one split: index, label, prediction [N] ints; probabilities
    [N, 10] (stored as float32)."""
    index, labels, predictions = (np.asarray(a).reshape(-1) for a in (index, labels, predictions))
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if not len(index) == len(labels) == len(predictions) == len(probabilities):
        raise ValueError(
            f"predictions of one split must align: {len(index)} indices, {len(labels)} labels, "
            f"{len(predictions)} predictions, {len(probabilities)} probability rows"
        )
    frame = pd.DataFrame(probabilities.reshape(len(index), NUM_CLASSES), columns=PROB_COLUMNS)
    frame.insert(0, PREDICTION, predictions.astype(np.int64))
    frame.insert(0, LABEL, labels.astype(np.int64))
    frame.insert(0, INDEX, index.astype(np.int64))
    return frame


def correct(frame: pd.DataFrame) -> np.ndarray:
    """bool [N]: which digits the run got right, in the frame's order."""
    return (frame[PREDICTION].to_numpy() == frame[LABEL].to_numpy()).astype(bool)


def same_digits(frames: Sequence[pd.DataFrame]) -> bool:
    """Whether every frame scored the same digits (the same set of MNIST indices)."""
    indices = [np.sort(f[INDEX].to_numpy()) for f in frames]
    return all(len(i) == len(indices[0]) and np.array_equal(i, indices[0]) for i in indices)


def correct_matrix(frames: Sequence[pd.DataFrame]) -> np.ndarray:
    """bool [runs, digits] of runs scored on the same digits, columns aligned by `index`;
    ValueError when they were scored on different digits."""
    if not frames or not same_digits(frames):
        raise ValueError("these runs were not scored on the same digits; compare them unpaired")
    return np.stack([correct(f.sort_values(INDEX, kind="stable")) for f in frames])
