"""The comparison's figures: one row per compared run, labels given by the caller.

Built without pyplot (like `plots`), so no backend or display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def accuracy_bars_figure(
    labels: Sequence[str], accuracy: Sequence[float | None], f1: Sequence[float | None]
) -> Figure:
    """Grouped bars of test accuracy and macro F1 (in %) per model; missing values left out."""
    acc, f1s = _finite(accuracy) * 100, _finite(f1) * 100
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6, 1.2 * len(labels) + 2), 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for offset, values, name in ((-0.2, acc, "test accuracy"), (0.2, f1s, "test F1 (macro)")):
        bars = ax.bar(x + offset, np.nan_to_num(values), width=0.4, label=name)
        for bar, value in zip(bars, values, strict=True):
            if not math.isnan(value):
                ax.annotate(
                    f"{value:.2f}",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    finite = np.concatenate([acc[~np.isnan(acc)], f1s[~np.isnan(f1s)]])
    low = float(finite.min()) if finite.size else 0.0
    # Zoom in on the top when every model is good (where the differences are), else show all.
    ax.set_ylim(low - 5 if low > 80 else 0.0, 101)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_title("Test accuracy and macro F1 per model")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    return fig


def accuracy_vs_time_figure(
    labels: Sequence[str], train_time_s: Sequence[float | None], accuracy: Sequence[float | None]
) -> Figure:
    """Test accuracy (%) against training time (s, log axis), one labelled point per model."""
    times, acc = _finite(train_time_s), _finite(accuracy) * 100
    fig = Figure(figsize=(7, 5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for label, t, a in zip(labels, times, acc, strict=True):
        if math.isnan(t) or math.isnan(a) or t <= 0:
            continue
        ax.scatter([t], [a], s=40)
        ax.annotate(label, (t, a), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs training time")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def learning_curves_figure(
    labels: Sequence[str], histories: Sequence[Sequence[tuple[int, float]]]
) -> Figure:
    """Validation accuracy (%) per epoch, every model overlaid; histories are (epoch, value)."""
    fig = Figure(figsize=(7, 5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for label, history in zip(labels, histories, strict=True):
        if history:
            steps, values = zip(*history, strict=True)
            ax.plot(steps, [v * 100 for v in values], marker="o", markersize=3, label=label)
    last = max((step for history in histories for step, _ in history), default=1)
    ax.set_xlim(0.5, last + 0.5)  # whole epochs, also when every run has just one
    if last <= 20:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning curves (validation accuracy)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    return fig


def confusion_grid_figure(labels: Sequence[str], matrices: Sequence[np.ndarray | None]) -> Figure:
    """The test confusion matrices ([10, 10] counts, rows = true) side by side, row-normalised."""
    n = max(1, len(labels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 4 * rows), dpi=DPI, layout="constrained")
    for i, (label, cm) in enumerate(zip(labels, matrices, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if cm is None:
            ax.text(0.5, 0.5, "no classification report", ha="center", va="center")
            ax.set_axis_off()
            ax.set_title(label)
            continue
        cm = np.asarray(cm)
        sums = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, sums, out=np.zeros(cm.shape, dtype=float), where=sums > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for r in range(cm.shape[0]):
            for c in range(cm.shape[1]):
                if cm[r, c] and r != c:  # errors only: the diagonal is the colour
                    ax.text(c, r, str(int(cm[r, c])), ha="center", va="center", fontsize=6)
        ax.set_xticks(range(cm.shape[1]))
        ax.set_yticks(range(cm.shape[0]))
        ax.tick_params(labelsize=7)
        accuracy = np.trace(cm) / cm.sum() if cm.sum() else 0.0
        ax.set_title(f"{label}\n{accuracy:.2%}", fontsize=10)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    return fig
