"""The comparison's figures: one row per compared run, labels given by the caller.

Built without pyplot (like `analysis.run_figures`), so no backend or display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_lab.analysis.calibration import reliability_axes
from mnist_lab.analysis.corruptions import DEFAULT_SEVERITY
from mnist_lab.comparison.significance import p_text

DPI = 100


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def accuracy_bars_figure(
    labels: Sequence[str],
    accuracy: Sequence[float | None],
    f1: Sequence[float | None],
    intervals: Sequence[tuple[float, float]] | None = None,
) -> Figure:
    """Grouped bars of test accuracy and macro F1 (in %) per model; missing values left out.
    `intervals`: each model's 95 % interval of its accuracy (fractions), drawn as error bars."""
    acc, f1s = _finite(accuracy) * 100, _finite(f1) * 100
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6, 1.2 * len(labels) + 2), 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    tops = {"test accuracy": acc, "test F1 (macro)": f1s}  # where each bar's label sits
    if intervals is not None:
        low, high = (_finite(bound) * 100 for bound in zip(*intervals, strict=True))
        tops["test accuracy"] = np.fmax(acc, high)  # above the error bar, not through it
        errors = np.nan_to_num(np.vstack([acc - low, high - acc]))
        ax.errorbar(
            x - 0.2, np.nan_to_num(acc), yerr=errors, fmt="none", ecolor="black", capsize=4,
            zorder=3, label="95 % interval (seeds × digits)",
        )  # fmt: skip
    for offset, values, name in ((-0.2, acc, "test accuracy"), (0.2, f1s, "test F1 (macro)")):
        bars = ax.bar(x + offset, np.nan_to_num(values), width=0.4, label=name)
        for bar, value, top in zip(bars, values, tops[name], strict=True):
            if not math.isnan(value):
                ax.annotate(
                    f"{value:.2f}",
                    (bar.get_x() + bar.get_width() / 2, top),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    finite = np.concatenate([acc[~np.isnan(acc)], f1s[~np.isnan(f1s)]])
    low = float(finite.min()) if finite.size else 0.0
    # Zoom in on the top when every model is good (where the differences are), else show all.
    ax.set_ylim(low - 5 if low > 80 else 0.0, 100)  # an accuracy stops at 100 %
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_title("Test accuracy and macro F1 per model")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    return fig


def significance_figure(pairs: pd.DataFrame, alpha: float) -> Figure:
    """Each pair's difference in test accuracy (percentage points, model_a minus model_b) with
    the 95 % interval of its test, coloured by that same unadjusted test (the interval excludes
    0 exactly when p < `alpha`), grey where it does not; each pair is labelled with its
    Holm-adjusted p and verdict, the table's reading. Digits-only pairs (two single runs) are
    drawn hollow. `pairs`: comparison.significance's table."""
    fig = Figure(figsize=(9, max(3.2, 1.5 + 0.45 * len(pairs))), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(
        "Differences in test accuracy with each test's 95 % interval\n"
        f"colour: unadjusted p < {alpha}; label: Holm-adjusted p and verdict; hollow: digits only",
        fontsize=10,
    )
    if not len(pairs):
        ax.text(0.5, 0.5, "fewer than two rows with a test accuracy", ha="center", va="center")
        ax.set_axis_off()
        return fig
    y = np.arange(len(pairs))[::-1]
    for k, row in enumerate(pairs.itertuples()):
        colour = ("C2" if row.difference > 0 else "C3") if row.p_value < alpha else "0.55"
        below, above = row.difference - row.ci95_low, row.ci95_high - row.difference
        ax.errorbar(
            100 * row.difference, y[k], xerr=[[100 * below], [100 * above]], fmt="o",
            color=colour, capsize=4, markerfacecolor=colour if row.seed_noise else "white",
        )  # fmt: skip
        label = f"p_holm {p_text(row.p_holm)}: {row.verdict}"[:70]
        ax.annotate(label, (100 * row.ci95_high, y[k]), xytext=(6, -3),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{row.model_a} − {row.model_b}" for row in pairs.itertuples()])
    ax.set_xlabel("difference in test accuracy (percentage points)")
    ax.margins(x=0.35)
    ax.grid(True, axis="x", alpha=0.3)
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
    ax.set_ylim(top=min(ax.get_ylim()[1], 100))
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
    ax.set_ylim(top=min(ax.get_ylim()[1], 100))
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


def _corruption_order(per_corruption: Sequence[dict[str, float]]) -> list[str]:
    """Every corruption any model has, hardest first (lowest mean accuracy over the models)."""
    seen = list(dict.fromkeys(c for accuracies in per_corruption for c in accuracies))
    mean = {c: np.mean([a[c] for a in per_corruption if c in a]) for c in seen}
    return sorted(seen, key=lambda c: mean[c])


def robustness_figure(
    labels: Sequence[str], per_corruption: Sequence[dict[str, float] | None]
) -> Figure:
    """Accuracy (%) per corruption, one bar group per corruption (hardest left), one bar per model.

    `per_corruption[i]`: model i's {corruption: accuracy in [0, 1]}, None (or {}) for a model
    without robustness metrics, which is left out. The legend gives each model's mean.
    """
    pairs = enumerate(zip(labels, per_corruption, strict=True))
    shown = [(i, label, acc) for i, (label, acc) in pairs if acc]
    fig = Figure(figsize=(14, 5.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"Accuracy under the MNIST-C corruptions (severity {DEFAULT_SEVERITY}) per model")
    if not shown:
        ax.text(0.5, 0.5, "no run has robustness metrics", ha="center", va="center")
        ax.set_axis_off()
        return fig
    order = _corruption_order([acc for _, _, acc in shown])
    x = np.arange(len(order))
    width = 0.8 / len(shown)
    lowest = 100.0
    for k, (i, label, acc) in enumerate(shown):
        values = np.array([100 * acc.get(c, np.nan) for c in order])
        lowest = min(lowest, float(np.nanmin(values)))
        legend = f"{label} (mean {np.nanmean(values):.1f} %)"
        offset = (k - (len(shown) - 1) / 2) * width
        ax.bar(x + offset, values, width, label=legend, color=f"C{i % 10}", edgecolor="white")
    # Zoom in on the top when every model resists every corruption, as accuracy_bars_figure.
    ax.set_ylim(lowest - 5 if lowest > 80 else 0.0, 100)
    ax.set_xticks(x, [c.replace("_", " ") for c in order], rotation=30, ha="right")
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(len(shown), 5))
    return fig


def _reliability_title(label: str, calibration: dict) -> str:
    """Panel title: the ECE before and, when the report has it, after temperature scaling."""
    title = f"{label}\nECE {calibration['bins']['ece']:.2%}"
    after, temperature = calibration.get("test_ece_calibrated"), calibration.get("temperature")
    if after is not None and temperature is not None:
        title += f" → {after:.2%} after temperature scaling (T = {temperature:.2f})"
    return title


def reliability_grid_figure(labels: Sequence[str], calibrations: Sequence[dict | None]) -> Figure:
    """One reliability diagram per model (before temperature scaling), up to 3 a row.

    `calibrations[i]`: model i's `reports/calibration.json` ({"bins": {count, accuracy,
    confidence: [n_bins] lists, ece}, "test_ece_calibrated", "temperature", ...}); None for a
    model without one, which is left out. Each title gives the ECE before and after scaling.
    """
    shown = [(label, c) for label, c in zip(labels, calibrations, strict=True) if c]
    cols = min(max(1, len(shown)), 3)
    rows = math.ceil(max(1, len(shown)) / cols)
    fig = Figure(figsize=(4.6 * cols, 4.4 * rows + 0.6), dpi=DPI, layout="constrained")
    fig.suptitle(
        "Reliability on the test set, before temperature scaling "
        "(% in a bar: its share of the samples)"
    )
    if not shown:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no run has a calibration report", ha="center", va="center")
        ax.set_axis_off()
        return fig
    for k, (label, calibration) in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        reliability_axes(ax, calibration["bins"], label)
        ax.set_title(_reliability_title(label, calibration), fontsize=9)
    return fig
