"""Each figure renders to PNG for typical and edge-case input."""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from mnist_lab import names
from mnist_lab.analysis import run_figures as plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png(fig: Figure) -> bytes:
    assert isinstance(fig, Figure)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(PNG_MAGIC)
    return data


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            names.TRAIN_LOSS: 1.0 / e,
            names.VAL_LOSS: 1.1 / e,
            names.TRAIN_ACCURACY: 1 - 0.2 / e,
            names.VAL_ACCURACY: 1 - 0.25 / e,
            names.LR: 0.01,
        }
        for e in range(1, epochs + 1)
    ]


def test_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(900, 1100, 10)) + rng.integers(0, 3, (10, 10))
    fig = plots.confusion_matrix_figure(cm, title="CNN test set")
    assert "CNN test set" in fig.axes[0].get_title()
    assert fig.dpi == 100 and max(fig.get_size_inches()) <= 10
    png(fig)
    png(plots.confusion_matrix_figure(np.zeros((10, 10), dtype=int)))  # empty rows


def lines(fig: Figure) -> list[list[str]]:
    return [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]


def test_learning_curves() -> None:
    fig = plots.learning_curves_figure(history(5))
    assert lines(fig) == [["train", "val"], ["train", "val"]]
    acc = fig.axes[1].get_lines()[1].get_ydata()
    assert acc[-1] == pytest.approx(95.0)  # accuracy shown as %
    png(fig)


def test_learning_curves_one_epoch_and_missing_keys() -> None:
    one = plots.learning_curves_figure(history(1))
    assert all(line.get_marker() == "o" for ax in one.axes for line in ax.get_lines())
    png(one)
    partial = [{k: v for k, v in row.items() if k != names.VAL_LOSS} for row in history(3)]
    partial[1].pop(names.TRAIN_ACCURACY)
    fig = plots.learning_curves_figure(partial)
    assert lines(fig) == [["train"], ["train", "val"]]
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 2
    png(fig)
    png(plots.learning_curves_figure([]))
    png(plots.learning_curves_figure([{names.TRAIN_LOSS: 0.5}]))  # no "epoch" key


def sample(n: int, dtype: type = np.uint8):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28)).astype(dtype)
    y_true = rng.integers(0, 10, n)
    probs = rng.dirichlet(np.ones(10), n)
    return images, y_true, probs


def captions(fig: Figure) -> list:
    """The digits' captions, in grid order (text artists: get_text, get_color)."""
    return list(fig.axes[0].texts)


def test_sample_predictions_mixes_mistakes_first() -> None:
    images, y_true, probs = sample(100)
    y_pred = y_true.copy()
    y_pred[::4] = (y_true[::4] + 1) % 10  # 25 mistakes
    fig = plots.sample_predictions_figure(images, y_true, y_pred, probs, max_images=16)
    shown = captions(fig)
    assert len(shown) == 16
    red = [i for i, text in enumerate(shown) if text.get_color() == plots.WRONG_COLOUR]
    assert red == list(range(8))
    assert len(fig.axes[0].patches) == 8  # a red frame round each mistake
    assert "%" in shown[0].get_text() and shown[0].get_text().startswith("pred ")
    png(fig)


@pytest.mark.parametrize("case", ["all_correct", "all_wrong", "float_no_probs", "few"])
def test_sample_predictions_edge_cases(case: str) -> None:
    n = {"few": 3}.get(case, 50)
    images, y_true, probs = sample(n, np.float32 if case == "float_no_probs" else np.uint8)
    y_pred = (y_true + 1) % 10 if case == "all_wrong" else y_true.copy()
    fig = plots.sample_predictions_figure(
        images / 255 if case == "float_no_probs" else images,
        y_true,
        y_pred,
        None if case == "float_no_probs" else probs,
    )
    assert len(captions(fig)) == min(n, 36)
    wrong = sum(text.get_color() == plots.WRONG_COLOUR for text in captions(fig))
    assert wrong == (min(n, 36) if case == "all_wrong" else 0)
    png(fig)


def test_sample_predictions_channel_dim_and_empty() -> None:
    images, y_true, probs = sample(4)
    png(plots.sample_predictions_figure(images[:, None], y_true, y_true, probs))
    png(plots.sample_predictions_figure(images[:0], y_true[:0], y_true[:0]))
