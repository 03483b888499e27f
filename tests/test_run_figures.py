"""Each figure renders to PNG for typical and edge-case input."""

import io
import math

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

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


def captions(fig: Figure) -> list[Text]:
    """The digits' captions, in grid order."""
    return list(fig.axes[0].texts)


def framed(fig: Figure, count: int) -> set[int]:
    """The places (in grid order) of the digits framed in WRONG_COLOUR, in a grid of `count`."""
    mosaic = plots.Mosaic(fig.axes[0], count, math.ceil(math.sqrt(count)), plots.CAPTION_ROOM)
    corners = {mosaic.origin(i): i for i in range(count)}
    frames = fig.axes[0].patches
    assert all(to_hex(p.get_edgecolor()) == plots.WRONG_COLOUR for p in frames)
    return {corners[tuple(int(v) for v in p.get_xy())] for p in frames}


def tile(fig: Figure, count: int, place: int) -> np.ndarray:
    """The [28, 28] pixels drawn at `place` of a grid of `count`."""
    mosaic = plots.Mosaic(fig.axes[0], count, math.ceil(math.sqrt(count)), plots.CAPTION_ROOM)
    x, y = mosaic.origin(place)
    return np.asarray(fig.axes[0].images[0].get_array()[y : y + 28, x : x + 28])


def test_sample_predictions_mixes_mistakes_first() -> None:
    images, y_true, probs = sample(100)
    y_pred = y_true.copy()
    y_pred[::4] = (y_true[::4] + 1) % 10  # 25 mistakes
    fig = plots.sample_predictions_figure(images, y_true, y_pred, probs, max_images=16)
    shown = captions(fig)
    assert len(shown) == 16
    red = [i for i, text in enumerate(shown) if text.get_color() == plots.WRONG_COLOUR]
    assert red == list(range(8))
    assert framed(fig, 16) == set(range(8))  # a red frame round each mistake
    assert "%" in shown[0].get_text() and shown[0].get_text().startswith("pred ")
    # Each place shows its digit: the mistakes first (every fourth), then the right ones.
    np.testing.assert_array_equal(tile(fig, 16, 1), images[4])
    np.testing.assert_array_equal(tile(fig, 16, 8), images[1])
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
    assert len(framed(fig, min(n, 36))) == wrong
    png(fig)


def test_float_digits_are_each_stretched_to_their_own_range() -> None:
    images, y_true, _ = sample(3, np.float32)
    images = images.astype(np.float32) * 7 / 255 - 3  # in [-3, 4]
    images[2] = 0.5  # a blank digit stays black
    fig = plots.sample_predictions_figure(images, y_true, y_true)
    for place in range(2):
        expected = (images[place] - images[place].min()) / np.ptp(images[place])
        np.testing.assert_allclose(tile(fig, 3, place), expected, rtol=1e-6)
    assert not tile(fig, 3, 2).any()


def test_sample_predictions_channel_dim_and_empty() -> None:
    images, y_true, probs = sample(4)
    png(plots.sample_predictions_figure(images[:, None], y_true, y_true, probs))
    png(plots.sample_predictions_figure(images[:0], y_true[:0], y_true[:0]))
