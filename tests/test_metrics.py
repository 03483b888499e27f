"""classification_summary on hand-built predictions."""

import json

import numpy as np
import pytest

from mnist_lab.analysis.metrics import classification_summary

KEYS = {"precision", "recall", "f1", "support"}


def test_known_metrics() -> None:
    # Every class twice; two mistakes: a 3 read as 5 and a 7 read as 1.
    y_true = np.repeat(np.arange(10), 2)
    y_pred = y_true.copy()
    y_pred[6], y_pred[14] = 5, 1
    s = classification_summary(y_true, y_pred)

    assert s["num_samples"] == 20
    assert s["accuracy"] == pytest.approx(18 / 20)
    cm = np.array(s["confusion_matrix"])
    assert cm.shape == (10, 10)
    assert cm.sum() == 20 and np.trace(cm) == 18
    assert cm[3, 5] == 1 and cm[7, 1] == 1  # rows = true, columns = predicted
    assert cm[5, 3] == 0 and cm[1, 7] == 0

    assert set(s["per_class"]) == {str(c) for c in range(10)}
    assert s["per_class"]["3"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert s["per_class"]["5"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert s["per_class"]["0"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    # Classes 1, 3, 5, 7 have F1 0.8, 2/3, 0.8, 2/3; the other six 1.0.
    f1_macro = (6 + 2 * 0.8 + 2 * 2 / 3) / 10
    assert s["f1_macro"] == pytest.approx(f1_macro)
    assert set(s["macro_avg"]) == KEYS and set(s["weighted_avg"]) == KEYS
    assert s["macro_avg"]["f1"] == pytest.approx(f1_macro)
    assert s["macro_avg"]["support"] == s["weighted_avg"]["support"] == 20


def test_perfect_and_all_wrong() -> None:
    y = np.arange(10)
    perfect = classification_summary(y, y)
    assert perfect["accuracy"] == perfect["f1_macro"] == 1.0
    assert np.array_equal(perfect["confusion_matrix"], np.eye(10, dtype=int))
    wrong = classification_summary(y, (y + 1) % 10)
    assert wrong["accuracy"] == wrong["f1_macro"] == 0.0
    assert np.trace(np.array(wrong["confusion_matrix"])) == 0


def test_subset_missing_classes() -> None:
    y_true = np.array([0, 0, 1, 2])
    y_pred = np.array([0, 1, 1, 2])
    s = classification_summary(y_true, y_pred)
    assert s["accuracy"] == pytest.approx(0.75)
    assert len(s["per_class"]) == 10 and len(s["confusion_matrix"]) == 10
    assert s["per_class"]["9"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # f1_macro averages over present classes (0, 1, 2); macro_avg over all ten.
    present = [s["per_class"][c]["f1"] for c in "012"]
    assert s["f1_macro"] == pytest.approx(np.mean(present))
    assert s["macro_avg"]["f1"] == pytest.approx(sum(present) / 10)
    # A single class, and a smaller num_classes.
    assert classification_summary(np.full(5, 7), np.full(5, 7))["accuracy"] == 1.0
    assert len(classification_summary([0, 1], [1, 1], num_classes=2)["confusion_matrix"]) == 2


def test_json_round_trip() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 200).astype(np.int64)
    y_pred = np.where(rng.random(200) < 0.8, y_true, rng.integers(0, 10, 200)).astype(np.uint8)
    s = classification_summary(y_true, y_pred)
    assert json.loads(json.dumps(s)) == s
    assert type(s["accuracy"]) is float and type(s["num_samples"]) is int
    assert type(s["per_class"]["0"]["support"]) is int
    assert all(type(v) is int for row in s["confusion_matrix"] for v in row)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        classification_summary(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        classification_summary(np.array([], dtype=int), np.array([], dtype=int))
