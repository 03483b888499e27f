"""The comparison's figures: one row per compared run, labels given by the caller.

Built without pyplot (like `analysis.run_figures`), so no backend or display is needed.
A label can be long (`cnn (cnn.yaml: augment=offcentre:8,shift:2,...)`): titles and legends
wrap it, and where it would sit on a tick or next to a point a key letter stands for it and a
legend under the axes spells it out; the figure grows by what the wrapping adds, so the axes
keep their size.
"""

from __future__ import annotations

import math
import re
import string
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mnist_lab.analysis.calibration import reliability_axes
from mnist_lab.analysis.corruptions import DEFAULT_SEVERITY
from mnist_lab.comparison.significance import p_text

DPI = 100
KEY_ABOVE = 30  # characters: longer labels are drawn as keys (A, B, ...) on ticks and points
CHAR_EM = 0.56  # a label's mean character width in DejaVu Sans, in ems (measured: 0.52)
LINE_EM = 1.2  # matplotlib's line spacing, in ems


class _LabelWrapper(textwrap.TextWrapper):
    """Breaks at spaces and after commas: an `augment=` list has no spaces."""

    wordsep_simple_re = re.compile(r"(\s+|(?<=,))")


def wrap_label(text: str, inches: float, fontsize: float = 10, indent: str = "") -> str:
    """`text` in lines that fit `inches` at `fontsize` points; continuation lines get `indent`."""
    width = max(8, int(inches * 72 / (CHAR_EM * fontsize)))
    wrapper = _LabelWrapper(width, subsequent_indent=indent, break_on_hyphens=False)
    return "\n".join(wrapper.wrap(text))


def _keys(labels: Sequence[str]) -> list[str] | None:
    """A key letter per label when any is too long for a tick, else None (labels drawn as are)."""
    if max(map(len, labels), default=0) <= KEY_ABOVE:
        return None
    return [string.ascii_uppercase[k] if k < 26 else str(k + 1) for k in range(len(labels))]


def _grow(fig: Figure, inches: float) -> None:
    """Make `fig` taller by `inches`: what its wrapped texts or a legend add, so the axes keep
    their size under the constrained layout."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + inches)


def _extra_title_lines(titles: Sequence[str], cols: int, base: int = 1) -> int:
    """The lines a grid's titles take beyond `base` each, summed over its rows (the tallest
    title in a row sets that row's height)."""
    lines = [t.count("\n") + 1 - base for t in titles]
    return sum(max(lines[r : r + cols]) for r in range(0, len(lines), cols))


def _legend_below(
    fig: Figure, texts: Sequence[str], handles: Sequence[Artist] | None = None, fontsize: float = 9
) -> Legend:
    """A one-column legend under the axes, each text wrapped to the figure's width; the figure
    grows by the legend's height. Without `handles`, a key: the texts alone."""
    bare = handles is None
    if handles is None:
        handles = [Line2D([], [], linestyle="none") for _ in texts]
    wrapped = [wrap_label(t, fig.get_figwidth() - 0.6, fontsize, indent="      ") for t in texts]
    legend = fig.legend(
        handles, wrapped, loc="outside lower center", ncol=1, fontsize=fontsize,
        **({"handlelength": 0, "handletextpad": 0} if bare else {}),
    )  # fmt: skip
    renderer = FigureCanvasAgg(fig).get_renderer()
    _grow(fig, legend.get_window_extent(renderer).height / fig.dpi)
    return legend


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def accuracy_bars_figure(
    labels: Sequence[str],
    accuracy: Sequence[float | None],
    f1: Sequence[float | None],
    intervals: Sequence[tuple[float, float]] | None = None,
) -> Figure:
    """Grouped bars of test accuracy and macro F1 (in %) per model; missing values left out.
    `intervals`: each model's 95 % interval of its accuracy (fractions), drawn as error bars.
    Long labels: key letters on the ticks, spelled out in a legend below."""
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
    keys = _keys(labels)
    if keys:
        ax.set_xticks(x, keys)
    else:
        ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_title("Test accuracy and macro F1 per model")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 if keys is None else -0.08), ncol=3)
    if keys:
        _legend_below(fig, [f"{key}: {label}" for key, label in zip(keys, labels, strict=True)])
    return fig


def significance_figure(
    pairs: pd.DataFrame, alpha: float, labels: Sequence[str] | None = None
) -> Figure:
    """Each pair's difference in test accuracy (percentage points, model_a minus model_b) with
    the 95 % interval of its test, coloured by that same unadjusted test (the interval excludes
    0 exactly when p < `alpha`), grey where it does not; each pair is labelled with its
    Holm-adjusted p and verdict, the table's reading. Digits-only pairs (two single runs) are
    drawn hollow. `pairs`: comparison.significance's table. `labels`: the models in the order
    of the other figures (default: as they first appear in `pairs`), whose key letters stand for
    long labels on the ticks and in the verdicts, spelled out in a legend below."""
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
    models = list(dict.fromkeys([*(labels or []), *pairs["model_a"], *pairs["model_b"]]))
    keys = dict(zip(models, _keys(models) or models, strict=True))
    y = np.arange(len(pairs))[::-1]
    for k, row in enumerate(pairs.itertuples()):
        colour = ("C2" if row.difference > 0 else "C3") if row.p_value < alpha else "0.55"
        below, above = row.difference - row.ci95_low, row.ci95_high - row.difference
        ax.errorbar(
            100 * row.difference, y[k], xerr=[[100 * below], [100 * above]], fmt="o",
            color=colour, capsize=4, markerfacecolor=colour if row.seed_noise else "white",
        )  # fmt: skip
        winner = next((m for m in (row.model_a, row.model_b) if row.verdict.startswith(m)), "")
        verdict = keys[winner] + row.verdict[len(winner) :] if winner else row.verdict
        label = f"p_holm {p_text(row.p_holm)}: {verdict}"[:70]
        ax.annotate(label, (100 * row.ci95_high, y[k]), xytext=(6, -3),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"{keys[row.model_a]} − {keys[row.model_b]}" for row in pairs.itertuples()])
    ax.set_xlabel("difference in test accuracy (percentage points)")
    ax.margins(x=0.35)
    ax.grid(True, axis="x", alpha=0.3)
    shown = [m for m in models if m in set(pairs["model_a"]) | set(pairs["model_b"])]
    if any(keys[m] != m for m in shown):
        _legend_below(fig, [f"{keys[m]}: {m}" for m in shown])
    return fig


def accuracy_vs_time_figure(
    labels: Sequence[str], train_time_s: Sequence[float | None], accuracy: Sequence[float | None]
) -> Figure:
    """Test accuracy (%) against training time (s, log axis), one labelled point per model; long
    labels: a key letter at each point, spelled out in a legend below. A label to the right of
    the middle sits left of its point, inside the axes."""
    times, acc = _finite(train_time_s), _finite(accuracy) * 100
    fig = Figure(figsize=(7, 5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    keys = _keys(labels)
    drawn = [
        (k, t, a) for k, (t, a) in enumerate(zip(times, acc, strict=True))
        if not (math.isnan(t) or math.isnan(a) or t <= 0)
    ]  # fmt: skip
    middle = np.exp(np.mean(np.log([t for _, t, _ in drawn]))) if drawn else 0.0
    points = []
    for k, t, a in drawn:
        points.append(ax.scatter([t], [a], s=40, color=f"C{k % 10}"))
        right = len(drawn) > 1 and t > middle
        ax.annotate(
            keys[k] if keys else labels[k], (t, a), textcoords="offset points",
            xytext=(-5 if right else 5, 5), ha="right" if right else "left", fontsize=9,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 100))
    ax.set_title("Accuracy vs training time")
    ax.grid(True, which="both", alpha=0.3)
    if keys and drawn:
        _legend_below(fig, [f"{keys[k]}: {labels[k]}" for k, _, _ in drawn], points)
    return fig


def learning_curves_figure(
    labels: Sequence[str], histories: Sequence[Sequence[tuple[int, float]]]
) -> Figure:
    """Validation accuracy (%) per epoch, every model overlaid; histories are (epoch, value).
    Long labels: the legend goes under the axes, one wrapped label a line."""
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
    handles, texts = ax.get_legend_handles_labels()
    if handles and _keys(labels):
        _legend_below(fig, texts, handles)
    elif handles:
        ax.legend(loc="lower right")
    return fig


def confusion_grid_figure(labels: Sequence[str], matrices: Sequence[np.ndarray | None]) -> Figure:
    """The test confusion matrices ([10, 10] counts, rows = true) side by side, row-normalised;
    each title is the label, wrapped to its panel."""
    n = max(1, len(labels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    titles = [wrap_label(label, 3.3) for label in labels]
    fig = Figure(figsize=(4.2 * cols, 4 * rows), dpi=DPI, layout="constrained")
    _grow(fig, _extra_title_lines(titles, cols) * LINE_EM * 10 / 72)
    for i, (title, cm) in enumerate(zip(titles, matrices, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        if cm is None:
            ax.text(0.5, 0.5, "no classification report", ha="center", va="center")
            ax.set_axis_off()
            ax.set_title(title)
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
        ax.set_title(f"{title}\n{accuracy:.2%}", fontsize=10)
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
    without robustness metrics, which is left out. The legend gives each model's mean; long
    labels get one wrapped label a line.
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
    if _keys(labels):
        handles, texts = ax.get_legend_handles_labels()
        _legend_below(fig, texts, handles, fontsize=10)
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(len(shown), 5))
    return fig


def _reliability_title(label: str, calibration: dict) -> str:
    """Panel title: the label (wrapped to the panel), the ECE before and, when the report has
    it, after temperature scaling."""
    title = f"{wrap_label(label, 3.7, 9)}\nECE {calibration['bins']['ece']:.2%}"
    after, temperature = calibration.get("test_ece_calibrated"), calibration.get("temperature")
    if after is not None and temperature is not None:
        title += f" → {after:.2%} after temperature scaling (T = {temperature:.2f})"
    return title


def reliability_grid_figure(labels: Sequence[str], calibrations: Sequence[dict | None]) -> Figure:
    """One reliability diagram per model (before temperature scaling), up to 3 a row.

    `calibrations[i]`: model i's `reports/calibration.json` ({"bins": {count, accuracy,
    confidence: [n_bins] lists, ece}, "test_ece_calibrated", "temperature", ...}); None for a
    model without one, which is left out. Each title names the model (its legend does not) and
    gives the ECE before and after scaling.
    """
    shown = [(label, c) for label, c in zip(labels, calibrations, strict=True) if c]
    cols = min(max(1, len(shown)), 3)
    rows = math.ceil(max(1, len(shown)) / cols)
    titles = [_reliability_title(label, calibration) for label, calibration in shown]
    suptitle = wrap_label(
        "Reliability on the test set, before temperature scaling "
        "(% in a bar: its share of the samples)",
        4.6 * cols - 0.4,
        12,
    )
    fig = Figure(figsize=(4.6 * cols, 4.4 * rows + 0.6), dpi=DPI, layout="constrained")
    extra = _extra_title_lines(titles, cols, base=2) * 9 + suptitle.count("\n") * 12
    _grow(fig, extra * LINE_EM / 72)
    fig.suptitle(suptitle)
    if not shown:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no run has a calibration report", ha="center", va="center")
        ax.set_axis_off()
        return fig
    for k, ((label, calibration), title) in enumerate(zip(shown, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        reliability_axes(ax, calibration["bins"], label, name_in_legend=False)
        ax.set_title(title, fontsize=9)
    return fig
