"""The Pareto front of a multi-objective study, drawn: every finished trial, the front, the
defaults and the picked trial, and the pick rule's budgets. Pure: values in, a Figure out.

Two objectives: one panel, the second objective across, the first up, the front joined by a
staircase (everything beyond a step is dominated). Three: one panel per pair, the trials on
the three-way front highlighted in each (a pair's projection of it need not be a staircase).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from mnist_lab.analysis.selection import Constraint, direction, label
from mnist_lab.names import MAXIMIZE

DPI = 100
FRONT_COLOUR = "#d62728"
OTHER_COLOUR = "#9e9e9e"
DEFAULTS_COLOUR = "#1f77b4"
PICKED_COLOUR = "#2ca02c"
ACCURACIES = ("val_accuracy", "val_robust_accuracy", "best_val_accuracy")
LOG_RANGE = 20.0  # an axis whose values span more than this factor is drawn on a log scale


def pareto_front(points: Sequence[Sequence[float]], objectives: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (at least as good in every objective,
    better in one), each objective in its own direction. Equal points are all kept."""
    signs = np.array([1.0 if direction(o) == MAXIMIZE else -1.0 for o in objectives])
    values = np.asarray(points, dtype=float) * signs
    front = []
    for i, p in enumerate(values):
        dominated = np.any(np.all(values >= p, axis=1) & np.any(values > p, axis=1))
        if not dominated:
            front.append(i)
    return front


def pareto_figure(
    points: Sequence[Sequence[float]],
    objectives: Sequence[str],
    front: Sequence[int],
    labels: Sequence[str],
    *,
    defaults: int | None = None,
    picked: int | None = None,
    constraints: Sequence[Constraint] = (),
    title: str = "Pareto front",
    intervals: Sequence[Sequence[tuple[float, float] | None]] | None = None,
    beyond_noise: Sequence[bool] | None = None,
) -> Figure:
    """`points` [N, 2 or 3] (one row per finished trial, in `objectives`' order), `front` the
    indices on the Pareto front, `labels` each point's name (its trial number): those on the
    front are written beside them. `defaults`/`picked`: indices of the defaults' trial and of
    the trial a rule picked. Budgets on a plotted objective are drawn as dashed lines.
    `intervals` [N][objectives]: each trial's (low, high) noise on each axis (None: none
    measured), drawn as error bars; `beyond_noise` [N]: trials that beat the defaults beyond
    noise, ringed. Accuracy axes stop at 100 %."""
    with matplotlib.style.context("default"):  # not the style another plot set (ggplot)
        return _figure(
            points, objectives, front, labels, defaults, picked, constraints, title,
            intervals, beyond_noise,
        )  # fmt: skip


def _figure(
    points, objectives, front, labels, defaults, picked, constraints, title, intervals, beyond
) -> Figure:
    values = np.asarray(points, dtype=float).reshape(len(points), len(objectives))
    # (x, y): the earlier objective up, as the first (usually an accuracy) reads best there.
    pairs = [(1, 0)] if len(objectives) == 2 else [(1, 0), (2, 0), (2, 1)]
    width = 8 if len(pairs) == 1 else 6 * len(pairs)
    figure = Figure(figsize=(width, 6), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, len(pairs), squeeze=False)[0]
    on_front = np.zeros(len(values), dtype=bool)
    on_front[list(front)] = True
    for ax, (x, y) in zip(axes, pairs, strict=True):
        _panel(ax, values, objectives, x, y, on_front, labels, constraints)
        if intervals is not None:
            _error_bars(ax, values, intervals, x, y, on_front)
        if beyond is not None and any(beyond):
            ringed = np.flatnonzero(beyond)
            ax.scatter(
                values[ringed, x], values[ringed, y], s=150, facecolors="none",
                edgecolors="black", linewidths=1.2, zorder=5,
                label="beats the defaults beyond noise (one seed each: digit noise only)",
            )  # fmt: skip
        if len(objectives) == 2:
            _staircase(ax, values[on_front][:, [x, y]], objectives[x])
        for index, colour, marker, text in (
            (defaults, DEFAULTS_COLOUR, "*", "defaults (experiments yaml)"),
            (picked, PICKED_COLOUR, "o", "picked by the rule"),
        ):
            if index is not None:
                ax.scatter(
                    values[index, x],
                    values[index, y],
                    s=320 if marker == "*" else 260,
                    marker=marker,
                    facecolors=colour if marker == "*" else "none",
                    edgecolors=colour,
                    linewidths=2,
                    zorder=4,
                    label=f"{text}: trial {labels[index]}",
                )
        for index, get, set_ in ((x, ax.get_xlim, ax.set_xlim), (y, ax.get_ylim, ax.set_ylim)):
            if objectives[index] in ACCURACIES:
                low, high = get()
                set_(low, min(high, 1.0))  # an accuracy stops at 100 %
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    n_front = int(on_front.sum())
    bars = (
        "\nbars: each trial's 95 % interval (accuracy) or timed range (latency)"
        if intervals
        else ""
    )
    figure.suptitle(
        f"{title}\n{len(values)} finished trials, {n_front} Pareto-optimal (red, numbered){bars}",
        fontsize=11,
    )
    return figure


def _panel(ax, values, objectives, x, y, on_front, labels, constraints) -> None:
    ax.scatter(
        values[~on_front, x],
        values[~on_front, y],
        s=28,
        color=OTHER_COLOUR,
        alpha=0.8,
        label="dominated trial",
        zorder=2,
    )
    ax.scatter(
        values[on_front, x],
        values[on_front, y],
        s=46,
        color=FRONT_COLOUR,
        label="Pareto-optimal trial",
        zorder=3,
    )
    for i in np.flatnonzero(on_front):
        ax.annotate(
            str(labels[i]),
            (values[i, x], values[i, y]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
            color=FRONT_COLOUR,
        )
    for axis, index, line in ((ax.xaxis, x, ax.axvline), (ax.yaxis, y, ax.axhline)):
        objective = objectives[index]
        column = values[:, index]
        better = "higher" if direction(objective) == MAXIMIZE else "lower"
        text = f"{label(objective)}, {better} is better"
        if objective in ACCURACIES:
            axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
            text = text.replace("accuracy", "accuracy (%)", 1)
        elif column.min() > 0 and column.max() / column.min() > LOG_RANGE:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
        axis.set_label_text(text)
        for constraint in constraints:
            if constraint.metric == objective:
                line(
                    constraint.bound,
                    color=PICKED_COLOUR,
                    linestyle="--",
                    linewidth=1.2,
                    label=f"budget {constraint}",
                )
    ax.grid(True, alpha=0.3)


def _error_bars(ax, values, intervals, x, y, on_front) -> None:
    """Each trial's interval on both axes where it has one, in its point's colour."""
    for i, spans in enumerate(intervals):
        errors = []
        for axis in (x, y):
            span = spans[axis]
            if span is None:
                errors.append(None)
            else:
                low, high = span
                errors.append(
                    [[max(0.0, values[i, axis] - low)], [max(0.0, high - values[i, axis])]]
                )
        if errors[0] is None and errors[1] is None:
            continue
        ax.errorbar(
            values[i, x], values[i, y], xerr=errors[0], yerr=errors[1], fmt="none",
            ecolor=FRONT_COLOUR if on_front[i] else OTHER_COLOUR, elinewidth=0.8, alpha=0.7,
            zorder=1,
        )  # fmt: skip


def _staircase(ax, front: np.ndarray, x_name: str) -> None:
    """Join the front's points by steps, from the best x to the worst: along a front, each
    point is worse in x than the one before and better in y, so everything beyond the steps
    is dominated."""
    if len(front) < 2:
        return
    reverse = direction(x_name) == MAXIMIZE
    order = sorted(range(len(front)), key=lambda i: front[i, 0], reverse=reverse)
    xs, ys = [], []
    for i in order:
        if xs:
            xs.append(front[i, 0])
            ys.append(ys[-1])
        xs.append(front[i, 0])
        ys.append(front[i, 1])
    ax.plot(xs, ys, color=FRONT_COLOUR, linewidth=1, alpha=0.6, zorder=1)
