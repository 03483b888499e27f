"""Classification metrics for a set of predictions: the JSON-ready summary every run logs, and
the final metrics computed from a run's test predictions (FROM_PREDICTIONS).

Knows nothing of MLflow or torch: it takes arrays and returns plain Python types, so the
tracking module can log the result with `mlflow.log_dict(summary, names.REPORT_CLASSIFICATION)`.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from mnist_lab import names


def _scores(row: dict[str, float]) -> dict[str, float | int]:
    """One sklearn report row with plain types and `f1-score` renamed to `f1`."""
    return {
        "precision": float(row["precision"]),
        "recall": float(row["recall"]),
        "f1": float(row["f1-score"]),
        "support": int(row["support"]),
    }


def classification_summary(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = names.NUM_CLASSES
) -> dict[str, Any]:
    """Accuracy, F1, per-class scores and the confusion matrix of integer predictions.

    y_true, y_pred: [N] integer class ids in ``range(num_classes)``.

    Returns a JSON-serialisable dict (plain floats/ints):
    ``accuracy``, ``f1_macro``, ``num_samples``,
    ``per_class`` ({"0": {"precision", "recall", "f1", "support"}, ...}, one entry per class in
    ``range(num_classes)``, zeros for classes absent from both arrays),
    ``macro_avg`` and ``weighted_avg`` (same keys, averaged over all ``num_classes`` classes),
    ``confusion_matrix`` ([num_classes][num_classes] ints, rows = true, columns = predicted).

    ``f1_macro`` averages over the classes that occur in ``y_true`` or ``y_pred`` (sklearn's
    default), so a small subset missing some classes is not penalised for them; on a full test
    set it equals ``macro_avg["f1"]``. A prediction of -1 means "no prediction" (the detector
    found no box): it counts as wrong, is left out of the confusion matrix and adds no class.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot summarise an empty set of predictions")
    labels = list(range(num_classes))
    # -1 is "no prediction" (a detector that found no box): wrong, but not an eleventh class.
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()) - {-1})
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)),
        "per_class": {str(c): _scores(report[str(c)]) for c in labels},
        "macro_avg": _scores(report["macro avg"]),
        "weighted_avg": _scores(report["weighted avg"]),
        "confusion_matrix": cm.astype(int).tolist(),
        "num_samples": int(y_true.size),
    }


# Final metrics computed from a run's test predictions, by name: each function takes the
# probabilities [N, 10] and the labels [N] and returns a float. Every run (classifier and
# detector) logs them; names.METRICS says their direction, format and who reads them.
FROM_PREDICTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}


def prediction_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """FROM_PREDICTIONS's metrics of one split. probabilities: [N, 10]; labels: [N]."""
    unlisted = sorted(set(FROM_PREDICTIONS) - set(names.METRICS))
    if unlisted:
        raise ValueError(
            f"metrics {', '.join(unlisted)} are computed (analysis/metrics.py FROM_PREDICTIONS) "
            "but have no entry in names.METRICS: add one (direction, label, format, flags)"
        )
    return {name: float(f(probabilities, labels)) for name, f in FROM_PREDICTIONS.items()}
