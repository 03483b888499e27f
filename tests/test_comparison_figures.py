"""comparison_figures with long labels: text stays inside the figure, axes keep their size."""

from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from mnist_lab.analysis.corruptions import CORRUPTIONS
from mnist_lab.comparison import comparison_figures as compare_plots
from mnist_lab.comparison.comparison_figures import wrap_label
from mnist_lab.comparison.significance import COLUMNS

AUGMENT = "augment=offcentre:8,shift:2,rotate:15,scale:0.25,blur:2,noise:0.15"
LONG = [  # what `compare` makes of configurations that change many values (up to ~120 chars)
    f"cnn (cnn.yaml: {AUGMENT})",
    "cnn (cnn.yaml: augment=shift:2,rotate:15,scale:0.25,blur:2,noise:0.15)",
    f"cnn (cnn.yaml: {AUGMENT},elastic:1, lr=0.003, epochs=12, batch_size=256)",
    "vit (vit.yaml: depth=6,dim=128,heads=4, augment=shift:2,rotate:15,scale:0.25)",
    f"resnet (resnet.yaml: {AUGMENT},cutout:4,mixup:0.2)",
]
SHORT = ["cnn", "vit", "cnn_fast", "resnet", "mlp"]


def significance_pairs(labels: list[str], accuracy: list[float]) -> pd.DataFrame:
    rows = []
    for k, (i, j) in enumerate(combinations(range(len(labels)), 2)):
        d, p = accuracy[i] - accuracy[j], 0.001 * (k + 1)
        verdict = f"{labels[i]} better" if k % 2 else "tie"
        rows.append([labels[i], labels[j], d, d - 1e-3, d + 1e-3, "t", p, 3 * p, verdict, k % 3])
    return pd.DataFrame(rows, columns=COLUMNS)


def figures(labels: list[str]) -> dict[str, Figure]:
    """Every comparison figure, drawn from fake data for `labels`."""
    rng = np.random.default_rng(0)
    n = len(labels)
    accuracy = list(0.99 + 0.004 * rng.random(n))
    conf = np.linspace(0.1, 0.97, 15)
    calibration = {
        "bins": {"count": [100] * 15, "accuracy": list(conf + 0.02), "confidence": list(conf),
                 "ece": 0.0998},
        "test_ece_calibrated": 0.0017,
        "temperature": 0.43,
    }  # fmt: skip
    matrix = np.diag(rng.integers(950, 1100, 10)) + rng.integers(0, 3, (10, 10))
    return {
        "accuracy_f1": compare_plots.accuracy_bars_figure(
            labels, accuracy, [a - 1e-3 for a in accuracy], [(a - 1e-3, a + 1e-3) for a in accuracy]
        ),
        "significance": compare_plots.significance_figure(
            significance_pairs(labels, accuracy), 0.05, labels
        ),
        "accuracy_vs_time": compare_plots.accuracy_vs_time_figure(
            labels, list(100 + 400 * rng.random(n)), accuracy
        ),
        "learning_curves": compare_plots.learning_curves_figure(
            labels, [[(e, 0.97 + 0.004 * e + 1e-3 * k) for e in range(1, 6)] for k in range(n)]
        ),
        "confusion_matrices": compare_plots.confusion_grid_figure(labels, [matrix] * n),
        "robustness": compare_plots.robustness_figure(
            labels, [{c: 0.7 + 0.3 * rng.random() for c in CORRUPTIONS} for _ in labels]
        ),
        "reliability_diagrams": compare_plots.reliability_grid_figure(labels, [calibration] * n),
    }


def drawn(fig: Figure):
    """`fig` laid out and drawn by Agg; its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def outside(fig: Figure) -> list[str]:
    """The texts (tick labels: each axis as a whole) that reach outside the figure."""
    renderer = drawn(fig)
    inside = fig.bbox.padded(1)  # a pixel of rounding
    ticks = {
        label
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
        for tick in axis.get_major_ticks() + axis.get_minor_ticks()
        for label in (tick.label1, tick.label2)
    }
    found = []
    for text in fig.findobj(Text):
        if text in ticks or not (text.get_visible() and text.get_text()):
            continue
        box = text.get_window_extent(renderer)
        if not (inside.contains(*box.min) and inside.contains(*box.max)):
            found.append(repr(text.get_text()))
    for ax in (ax for ax in fig.axes if ax.axison):  # an axes turned off says "no data"
        for axis in (ax.xaxis, ax.yaxis):
            box = axis.get_tightbbox(renderer)
            if box is not None and not (inside.contains(*box.min) and inside.contains(*box.max)):
                found.append(f"{axis.axis_name} axis of {ax.get_title()!r}")
    return found


def axes_inches(fig: Figure) -> list[tuple[float, float]]:
    """Each axes' (width, height) in inches once laid out."""
    drawn(fig)
    width, height = fig.get_size_inches()
    return [(ax.get_position().width * width, ax.get_position().height * height) for ax in fig.axes]


@pytest.mark.parametrize("labels", [SHORT, LONG, LONG[2:3], ["cnn"], ["cnn", LONG[4]]])
def test_every_text_stays_inside_the_figure(labels):
    for name, fig in figures(labels).items():
        assert outside(fig) == [], name


@pytest.mark.parametrize(("short", "long"), [(SHORT, LONG), (["cnn"], LONG[2:3])])
def test_long_labels_leave_every_axes_its_size(short, long):
    for (name, fig), long_fig in zip(figures(short).items(), figures(long).values(), strict=True):
        before, after = axes_inches(fig), axes_inches(long_fig)
        assert len(before) == len(after), name
        for (w0, h0), (w1, h1) in zip(before, after, strict=True):
            assert w1 > 0.9 * w0 and h1 > 0.9 * h0, (name, (w0, h0), (w1, h1))


def test_long_labels_become_keys_on_ticks_and_points_and_are_spelled_out_below():
    long, short = figures(LONG), figures(SHORT)
    ticks = [t.get_text() for t in long["accuracy_f1"].axes[0].get_xticklabels()]
    assert ticks == list("ABCDE")
    assert [t.get_text() for t in short["accuracy_f1"].axes[0].get_xticklabels()] == SHORT
    key = "".join(t.get_text() for t in long["accuracy_f1"].legends[0].get_texts())
    assert key.replace("\n", "").replace("      ", "").startswith(f"A: {LONG[0]}")
    pairs = [t.get_text() for t in long["significance"].axes[0].get_yticklabels()]
    assert pairs[0] == "A − B"  # the first pair
    verdicts = [t.get_text() for t in long["significance"].axes[0].texts]
    assert "p_holm 0.006: A better" in verdicts  # the verdict names the winner by its key
    points = [t.get_text() for t in long["accuracy_vs_time"].axes[0].texts]
    assert points == list("ABCDE")
    assert [t.get_text() for t in short["accuracy_vs_time"].axes[0].texts] == SHORT


def test_reliability_legends_leave_the_label_to_the_title():
    for ax, label in zip(figures(LONG)["reliability_diagrams"].axes, LONG, strict=True):
        assert ax.get_title().replace("\n", "").replace(" ", "").startswith(label.replace(" ", ""))
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[1] == "accuracy (ECE 9.98%)" and not any("yaml" in t for t in legend)


def test_wrap_label_breaks_after_commas_and_spaces_within_its_width():
    text = LONG[2]
    wrapped = wrap_label(text, 3.0, 10, indent="  ")
    lines = wrapped.split("\n")
    width = int(3.0 * 72 / (compare_plots.CHAR_EM * 10))
    assert len(lines) > 2 and all(len(line) <= width for line in lines)
    assert all(line.startswith("  ") for line in lines[1:])
    at = 0
    for line in (line.removeprefix("  ") for line in lines):
        assert text.startswith(line, at)
        at += len(line)
        if at < len(text):  # a break after a comma, else at a space
            assert text[at - 1] == "," or text[at] == " ", line
            at += text[at] == " "
    assert at == len(text)
    assert wrap_label("cnn", 3.0) == "cnn"
