"""The figures every run logs: confusion matrix, learning curves and sample predictions.

Each function returns a `matplotlib.figure.Figure` built without pyplot, so no backend or display
is needed; the tracking module saves it with `mlflow.log_figure(fig, names.PLOT_...)`.
`mosaic_figure` lays digits out as one image with captions (the sample predictions here, the
explanations in analysis/explanations.py).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from mnist_lab import names

DPI = 100
WRONG_COLOUR = "#d62728"
TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#ff7f0e"

# A grid of digits is one mosaic image on one axes, its captions written over it (as
# analysis/sources.py draws its figure): as grids of axes, the sample predictions (36) and the
# explanations (16) took 0.95 s of every run to draw and save, as mosaics 0.26 s (AMD EPYC).
TILE = 28  # px: a digit
TILE_GAP = 8  # px between two digits side by side
CAPTION_ROOM = 16  # px above each digit: two caption lines at 8 pt
PX_PER_INCH = 28  # a digit is drawn an inch wide


def confusion_matrix_figure(cm: np.ndarray, title: str = "Confusion matrix") -> Figure:
    """Heat map of a confusion matrix, coloured by row (recall) and annotated with counts.

    cm: [K, K] counts, rows = true class, columns = predicted class (K is usually 10).
    Zero cells are left blank so the errors stand out.
    """
    cm = np.asarray(cm)
    k = cm.shape[0]
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    total = int(cm.sum())
    accuracy = np.trace(cm) / total if total else 0.0

    fig = Figure(figsize=(7, 6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of true class")
    fontsize = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                colour = "white" if norm[i, j] > 0.5 else "black"
                text = str(int(cm[i, j]))
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"{title}\naccuracy {accuracy:.2%} on {total:,} samples")
    return fig


def _series(
    history: Sequence[dict[str, float]], key: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric, skipping epochs where it is missing or None."""
    points = [
        (row.get("epoch", i + 1), row[key] * scale)
        for i, row in enumerate(history)
        if row.get(key) is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def learning_curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Loss and accuracy (%) per epoch, train against validation, side by side.

    history: one dict per epoch with ``"epoch"`` (1-based; defaults to its position) and any of
    names.TRAIN_LOSS, names.VAL_LOSS, names.TRAIN_ACCURACY, names.VAL_ACCURACY (accuracy as a
    fraction in [0, 1]). Missing metrics are skipped; a single epoch shows as markers.
    """
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = [
        (loss_ax, "Loss", "loss", 1.0, names.TRAIN_LOSS, names.VAL_LOSS),
        (acc_ax, "Accuracy", "accuracy (%)", 100.0, names.TRAIN_ACCURACY, names.VAL_ACCURACY),
    ]
    for ax, title, label, scale, train_key, val_key in panels:
        seen: set[float] = set()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for key, name, colour in ((train_key, "train", TRAIN_COLOUR), (val_key, "val", VAL_COLOUR)):
            epochs, values = _series(history, key, scale)
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=4, color=colour, label=name)
                seen.update(epochs)
        if len(seen) == 1:  # one point: keep the x axis at whole epochs, not 0.95..1.05
            (only,) = seen
            ax.set_xlim(only - 1, only + 1)
            ax.set_xticks([only])
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    best = _series(history, names.VAL_ACCURACY, 100.0)[1]
    suffix = f" (best val accuracy {max(best):.2f}%)" if best else ""
    plural = "" if len(history) == 1 else "s"
    fig.suptitle(f"Learning curves, {len(history)} epoch{plural}{suffix}")
    return fig


@dataclass
class Mosaic:
    """Digits laid out `cols` to a row on one axes (1 unit = 1 px of a digit), each under
    `caption_room` px for its caption."""

    ax: Axes
    count: int
    cols: int
    caption_room: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) px of the whole mosaic."""
        return mosaic_shape(self.count, self.cols, self.caption_room)

    def origin(self, i: int) -> tuple[int, int]:
        """(x, y) of digit i's top-left corner."""
        row, col = divmod(i, self.cols)
        x = col * (TILE + TILE_GAP) + TILE_GAP // 2
        y = row * (TILE + self.caption_room) + self.caption_room
        return x, y

    def layer(self, tiles: np.ndarray, **imshow: object) -> None:
        """tiles [K, 28, 28], each drawn in its place; between them the layer is transparent."""
        canvas = np.ma.array(np.zeros(self.shape), mask=True)
        for i, tile in enumerate(tiles):
            x, y = self.origin(i)
            canvas[y : y + TILE, x : x + TILE] = tile
        height, width = canvas.shape
        self.ax.imshow(
            canvas, extent=(0, width, height, 0), interpolation="nearest", aspect="auto", **imshow
        )

    def caption(self, i: int, text: str, wrong: bool = False) -> None:
        """`text` centred just above digit i; a wrong answer's in WRONG_COLOUR, the digit framed
        in it (3 pt, not clipped: the last row ends at the axes' edge)."""
        x, y = self.origin(i)
        colour = WRONG_COLOUR if wrong else "black"
        self.ax.text(x + TILE / 2, y - 1, text, ha="center", va="bottom", fontsize=8, color=colour)
        if wrong:
            frame = Rectangle((x, y), TILE, TILE, fill=False, edgecolor=colour, lw=3, clip_on=False)
            self.ax.add_patch(frame)


def mosaic_shape(count: int, cols: int, caption_room: int) -> tuple[int, int]:
    """(height, width) px of a mosaic of `count` digits, `cols` to a row."""
    rows = max(math.ceil(count / cols), 1)
    return rows * (TILE + caption_room), cols * (TILE + TILE_GAP)


def mosaic_figure(
    count: int, cols: int, title_lines: int, caption_room: int = CAPTION_ROOM, right: float = 0.1
) -> tuple[Figure, Mosaic]:
    """A figure sized for `count` digits `cols` to a row under a title of `title_lines` lines,
    with `right` inches spare on the right (a colour bar's); its empty mosaic."""
    height_px, width_px = mosaic_shape(count, cols, caption_room)
    grid_w, grid_h = width_px / PX_PER_INCH, height_px / PX_PER_INCH
    margin, top = 0.1, 0.15 + 0.2 * title_lines
    width, height = grid_w + 2 * margin + right, grid_h + top + margin
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((margin / width, margin / height, grid_w / width, grid_h / height))
    ax.set_xlim(0, width_px)
    ax.set_ylim(height_px, 0)
    ax.set_axis_off()
    return fig, Mosaic(ax, count, cols, caption_room)


def _pick(correct: np.ndarray, count: int) -> np.ndarray:
    """Indices to show: misclassified first (up to half, more if correct ones run out)."""
    wrong_idx = np.flatnonzero(~correct)
    right_idx = np.flatnonzero(correct)
    n_wrong = min(len(wrong_idx), max(count // 2, count - len(right_idx)))
    return np.concatenate([wrong_idx[:n_wrong], right_idx[: count - n_wrong]])


def sample_predictions_figure(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray | None = None,
    max_images: int = 36,
) -> Figure:
    """Grid of digits titled with prediction (confidence) and truth; mistakes in red.

    images: [N, 28, 28] (or [N, 1, 28, 28]) uint8 in [0, 255] or float (any range).
    y_true, y_pred: [N] integer labels. probs: [N, C] class probabilities, or None.
    Shows up to ``max_images``: misclassified ones first (up to half the grid), then correct ones.
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    correct = y_true == y_pred
    chosen = _pick(correct, min(max_images, len(y_true)))

    n = max(len(chosen), 1)
    cols = math.ceil(math.sqrt(n))
    fig, mosaic = mosaic_figure(len(chosen), cols, title_lines=2)
    if images.dtype == np.uint8:
        mosaic.layer(images[chosen], cmap="gray", vmin=0, vmax=255)
    else:  # any range: each digit stretched to its own min-max, as imshow scales one image
        tiles = images[chosen].astype(np.float64)
        low = tiles.min(axis=(1, 2), keepdims=True)
        span = tiles.max(axis=(1, 2), keepdims=True) - low
        mosaic.layer(
            np.divide(tiles - low, span, where=span > 0, out=np.zeros_like(tiles)), cmap="gray"
        )
    for place, i in enumerate(chosen):
        conf = f" ({probs[i, y_pred[i]]:.0%})" if probs is not None else ""
        mosaic.caption(place, f"pred {y_pred[i]}{conf}\ntrue {y_true[i]}", wrong=not correct[i])
    errors = int((~correct).sum())
    shown = f"{int((~correct[chosen]).sum())} of {len(chosen)} shown misclassified (red)"
    fig.suptitle(
        f"Sample predictions: {shown if errors else f'all {len(chosen)} shown correct'}\n"
        f"{errors:,} errors in {len(y_true):,} samples",
        fontsize=10,
    )
    return fig


def detections_figure(
    canvases: np.ndarray,
    true_boxes: Sequence[np.ndarray],
    true_digits: Sequence[np.ndarray],
    pred_boxes: Sequence[np.ndarray],
    pred_digits: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    min_score: float = 0.5,
    zoom: int = 4,
) -> Figure:
    """Detection scenes with true boxes (green) and predicted boxes (red, "digit score").

    canvases: [N, C, C] float in [0, 1]. Per scene i: true_boxes[i] [n, 4] and pred_boxes[i]
    [m, 4] (x1, y1, x2, y2) px, digits [n] / [m] in 0..9, pred_scores[i] [m]. Predictions below
    `min_score` are not drawn. Boxes are drawn with torchvision's `draw_bounding_boxes` on the
    canvas enlarged `zoom` times, so the labels stay legible.
    """
    import torch
    from torchvision.utils import draw_bounding_boxes

    n = max(len(canvases), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, 3 * rows + 0.5), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= len(canvases):
            continue
        grey = torch.from_numpy(np.asarray(canvases[i])).mul(255).round().to(torch.uint8)
        image = grey.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1).expand(3, -1, -1)
        keep = np.asarray(pred_scores[i]) >= min_score
        boxes = np.concatenate([true_boxes[i], np.asarray(pred_boxes[i])[keep]]) * zoom
        labels = [f"{d}" for d in true_digits[i]] + [
            f"{d} {s:.2f}" for d, s in zip(pred_digits[i][keep], pred_scores[i][keep], strict=True)
        ]
        colours = ["#2ca02c"] * len(true_boxes[i]) + [WRONG_COLOUR] * int(keep.sum())
        drawn = draw_bounding_boxes(
            image.contiguous(),
            torch.as_tensor(boxes, dtype=torch.float).reshape(-1, 4),
            labels=labels,
            colors=colours,
            width=2,
        )
        ax.imshow(drawn.permute(1, 2, 0).numpy())
    fig.suptitle(
        f"Detections on test scenes: true boxes green, predicted red (score >= {min_score})",
        fontsize=10,
    )
    return fig
