"""Side-by-side table, significance and plots of finished training runs, read from MLflow
(never retrained).

Runs are grouped by configuration: runs of one model whose params agree apart from the seed
(and settings that change no result, NOT_CONFIGURATION) are one row, its n runs the seeds. By
default each architecture's newest configuration is shown (tuning trials, tagged `study_name`,
left out); `best_by` picks each architecture's configuration with the best mean of a metric
instead; `tags` / `run_ids` narrow the choice; `include_tuning` adds each study's winner.

Every row shows n, the mean test accuracy, its std over the seeds and a 95 % interval that
counts the seeds and the test digits; every pair of rows gets the difference in test accuracy
with its interval, the test the interval inverts, Holm-adjusted p-values and a verdict; the
rank is 1 + the longest chain of rows above it, each beating the next beyond noise
(analysis/statistics.py, comparison/significance.py). The table goes to the terminal and to
`comparison.md`, `comparison.csv`, `significance.csv` and a self-contained `comparison.html`
(plots embedded), all logged to a new run tagged `kind=comparison`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mnist_lab import names, tracking
from mnist_lab.analysis.corruptions import CORRUPTIONS
from mnist_lab.analysis.statistics import ALPHA
from mnist_lab.comparison import comparison_figures as compare_plots
from mnist_lab.comparison.groups import Group, check_metric, select_groups
from mnist_lab.comparison.significance import (
    GroupAccuracy,
    group_accuracy,
    p_text,
    pairwise,
    ranks,
)
from mnist_lab.errors import ConfigError

MISSING = "–"
Format = str | Callable[[float], str]  # a column's format string, or a function of its value
CI_LOW = names.TEST_ACCURACY_CI95_LOW
CI_HIGH = names.TEST_ACCURACY_CI95_HIGH
ACCURACY_STD = names.aggregate(names.TEST_ACCURACY, "std")
ACCURACY_COLUMNS = [names.TEST_ACCURACY, ACCURACY_STD, CI_LOW, CI_HIGH]
DESCRIPTION = ["machine", "precision", "run_ids"]  # what a row's runs are
# The formats of the columns that are not names.METRICS's; a metric's column prints as its
# entry says.
FORMATS: dict[str, Format] = {
    "n": "{:.0f}",
    ACCURACY_STD: "{:.4f}",
    CI_LOW: "{:.4f}",
    CI_HIGH: "{:.4f}",
    "rank": "{:.0f}",
    "epochs": "{:.0f}",
}
SIGNIFICANCE_FORMATS: dict[str, Format] = {
    "difference": "{:+.4f}",
    "ci95_low": "{:+.4f}",
    "ci95_high": "{:+.4f}",
    "p_value": p_text,
    "p_holm": p_text,
}
PLOTS = {
    "accuracy_f1": "plots/accuracy_f1.png",
    "significance": "plots/significance.png",
    "accuracy_vs_time": "plots/accuracy_vs_train_time.png",
    "learning_curves": "plots/learning_curves.png",
    "confusion_matrices": "plots/confusion_matrices.png",
    "robustness": "plots/robustness.png",
    "reliability_diagrams": "plots/reliability_diagrams.png",
}
SIGNIFICANCE_TITLE = (
    "Differences in test accuracy (model_a minus model_b) with the 95 % interval of the test "
    "beside it (it excludes 0 exactly when p < 0.05): t over seeds × digits where a side has "
    "several seeds, exact McNemar on the digits for two single runs (seed noise unmeasured: a "
    "verdict on those runs, not their configurations); p_holm adjusted over the {pairs} "
    "pair(s), and the verdict read on it."
)
FILES = ("comparison.md", "comparison.csv", "significance.csv", "comparison.html")
HOW_TO_READ = (
    f"n: runs of the configuration (seeds). test_accuracy: their mean; ci95: a 95 % interval over "
    f"the seeds and the test digits (one run: Wilson's over its digits only, seed noise "
    f"unmeasured). rank: 1 + the longest chain of rows above this one, each beating the next "
    f"beyond noise (Holm-adjusted p < {ALPHA}); a row never shares a rank with one it beats, and "
    f"the pairs table says which rows differ. No rank: compared only by digits-only tests "
    f"(single runs), train --seeds 2 or more to rank. Other metrics: means over the runs; their "
    f"intervals (report) are t over the seeds."
)


@dataclass
class Failure:
    """A model the benchmark could not train: shown as a failed row."""

    model: str
    reason: str
    run_id: str | None = None


@dataclass
class Comparison:
    table: pd.DataFrame  # columns() and "status"; NaN where a value is missing
    significance: pd.DataFrame  # significance.COLUMNS: one row per pair of finished rows
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None


def parse_tags(tags: Sequence[str]) -> dict[str, str]:
    """["key=value", ...] → {key: value}; a clear error for anything else."""
    parsed = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key or "'" in item or "`" in item:
            raise ConfigError(f"tag filter {item!r}: write it as key=value (no quotes)")
        parsed[key.strip()] = value.strip()
    return parsed


def columns() -> list[str]:
    """The table's columns: test accuracy with its interval and rank, then the mean over a
    row's runs of every metric names.METRICS marks `compare`, in the table's order."""
    metrics = names.metric_names("compare")
    return ["model", "n", *ACCURACY_COLUMNS, "rank", *metrics, "epochs", *DESCRIPTION]


def build_table(
    groups: list[Group], accuracies: list[GroupAccuracy], histories: list[list[tuple[int, float]]]
) -> pd.DataFrame:
    """The comparison table: one row per group, NaN where its runs lack a value."""
    records = []
    for group, accuracy, history in zip(groups, accuracies, histories, strict=True):
        run = group.newest
        summary = accuracy.summary
        epochs = len(history) if history else _float(run.params.get("epochs"))
        records.append(
            {
                "model": group.label,
                "n": len(group.runs),
                names.TEST_ACCURACY: summary.mean,
                ACCURACY_STD: summary.std,
                CI_LOW: summary.low,
                CI_HIGH: summary.high,
                **{c: group.mean(c) for c in names.metric_names("compare")},
                "epochs": epochs,
                "machine": run.tags.get(names.TAG_MACHINE, run.tags.get(names.TAG_DEVICE, np.nan)),
                "precision": run.precision or np.nan,
                "run_ids": ",".join(group.run_ids),
                "status": run.status.lower(),
            }
        )
    return pd.DataFrame(records, columns=[*columns(), "status"])


def tables(
    groups: list[Group], histories: list[list[tuple[int, float]]] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table of `groups` (ranked) and its significance table, read from their
    runs' predictions. `histories`: each group's validation curve, for its epoch count."""
    accuracies = [group_accuracy(group) for group in groups]
    labels = [group.label for group in groups]
    significance = pairwise(labels, accuracies)
    table = build_table(groups, accuracies, histories or [[] for _ in groups])
    table["rank"] = ranks(labels, accuracies, significance)
    return table, significance


def _float(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def add_failures(table: pd.DataFrame, failures: Sequence[Failure]) -> pd.DataFrame:
    rows = [
        {"model": f.model, "run_ids": f.run_id or np.nan, "status": f"failed: {f.reason}"}
        for f in failures
    ]
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


def display_table(table: pd.DataFrame, formats: dict[str, Format] = FORMATS) -> pd.DataFrame:
    """Every value as text (`formats`: a format string or a function; a metric's column as
    names.METRICS says), missing ones "–"; the `status` column only when a run failed."""
    shown = table.copy().astype(object)
    for column in shown.columns:
        fmt = formats.get(column) or column_format(column)
        text = fmt if callable(fmt) else fmt.format
        shown[column] = [MISSING if _missing(v) else text(v) for v in table[column]]
    if "status" in table and (table["status"] == "finished").all():
        shown = shown.drop(columns="status")
    return shown


def column_format(column: str) -> str:
    """A metric's format (names.METRICS), "{}" for any other column."""
    metric = names.METRICS.get(column)
    return metric.fmt if metric else "{}"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def markdown_table(table: pd.DataFrame, formats: dict[str, Format] = FORMATS) -> str:
    """`table` as a Markdown table, values shown as `display_table` shows them."""
    shown = display_table(table, formats)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def markdown(table: pd.DataFrame, significance: pd.DataFrame | None = None) -> str:
    """The table; with `significance`, how to read it and every pair's difference and test."""
    text = markdown_table(table)
    if significance is not None and len(significance):
        text += f"\n{HOW_TO_READ}\n\n{SIGNIFICANCE_TITLE.format(pairs=len(significance))}\n\n"
        text += markdown_table(significance, SIGNIFICANCE_FORMATS)
    return text


@dataclass
class RunPlotData:
    """What the plots draw of one compared row beyond its table row (from its newest run)."""

    history: list[tuple[int, float]]  # (epoch, validation accuracy)
    matrix: np.ndarray | None  # [10, 10] test confusion counts, rows = true
    robustness: dict[str, float] | None  # {corruption: accuracy}
    calibration: dict | None  # reports/calibration.json


def robustness_of(run: tracking.RunRecord) -> dict[str, float] | None:
    """The run's accuracy per MNIST-C corruption ({name: accuracy}), None when it has none."""
    metrics = {c: run.metrics.get(names.robust_accuracy(c)) for c in CORRUPTIONS}
    return {c: value for c, value in metrics.items() if value is not None} or None


def plot_data(run: tracking.RunRecord) -> RunPlotData:
    """Read back what the plots need of `run`: its curve, reports and robustness metrics."""
    report = tracking.classification_report(run.run_id)
    return RunPlotData(
        history=tracking.metric_history(run.run_id, names.VAL_ACCURACY),
        matrix=np.array(report["confusion_matrix"]) if report else None,
        robustness=robustness_of(run),
        calibration=tracking.read_json_artifact(run.run_id, names.REPORT_CALIBRATION),
    )


def figures(
    table: pd.DataFrame, data: list[RunPlotData], significance: pd.DataFrame
) -> dict[str, Figure]:
    """The comparison plots, keyed like PLOTS; only finished rows are drawn.

    The first len(data) rows of `table` are the groups `data` belongs to.
    """
    finished = (table["status"] == "finished").to_numpy()
    keep = [i for i in range(len(data)) if finished[i]]
    done, kept = table.iloc[keep], [data[i] for i in keep]
    labels = list(done["model"])
    intervals = list(zip(done[CI_LOW], done[CI_HIGH], strict=True))
    return {
        "accuracy_f1": compare_plots.accuracy_bars_figure(
            labels, list(done[names.TEST_ACCURACY]), list(done[names.TEST_F1_MACRO]), intervals
        ),
        "significance": compare_plots.significance_figure(significance, ALPHA, labels),
        "accuracy_vs_time": compare_plots.accuracy_vs_time_figure(
            labels, list(done[names.TRAIN_TIME_S]), list(done[names.TEST_ACCURACY])
        ),
        "learning_curves": compare_plots.learning_curves_figure(labels, [d.history for d in kept]),
        "confusion_matrices": compare_plots.confusion_grid_figure(labels, [d.matrix for d in kept]),
        "robustness": compare_plots.robustness_figure(labels, [d.robustness for d in kept]),
        "reliability_diagrams": compare_plots.reliability_grid_figure(
            labels, [d.calibration for d in kept]
        ),
    }


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def html_page(
    table: pd.DataFrame, significance: pd.DataFrame, pngs: dict[str, bytes], experiment: str
) -> str:
    """One self-contained page: the tables and every plot inlined as base64 PNG."""
    tables = _html_table(display_table(table))
    if len(significance):
        tables += f"<p>{html.escape(HOW_TO_READ)}</p>"
        title = SIGNIFICANCE_TITLE.format(pairs=len(significance))
        tables += f"<h2>significance</h2><p>{html.escape(title)}</p>"
        tables += _html_table(display_table(significance, SIGNIFICANCE_FORMATS))
    images = "".join(
        f"<h2>{html.escape(key.replace('_', ' '))}</h2>"
        f'<img alt="{key}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for key, png in pngs.items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mnist-lab comparison</title>"
        f"<style>{style}</style></head><body><h1>mnist-lab comparison — experiment "
        f"{html.escape(experiment)}</h1>{tables}{images}</body></html>"
    )


def _html_table(shown: pd.DataFrame) -> str:
    # Long headers may wrap after an underscore, so the wide table fits a laptop screen.
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def compare(
    *,
    best_by: str | None = None,
    tags: dict[str, str] | None = None,
    run_ids: Sequence[str] = (),
    include_tuning: bool = False,
    failures: Sequence[Failure] = (),
    output_dir: str | Path = "comparison",
    nested: bool = False,
) -> Comparison:
    """Select and group runs, write the tables and plots to `output_dir`, log them to a
    `comparison` run."""
    if best_by is not None:
        check_metric(best_by)
    experiment = tracking.experiment_name()
    groups = select_groups(
        experiment, best_by=best_by, tags=tags, run_ids=run_ids, include_tuning=include_tuning
    )
    if not groups and not failures:
        raise tracking.NoRunsError(
            f"no finished train runs to compare in experiment {experiment!r} "
            f"(tracking store {tracking.tracking_uri()}); create some with "
            "`mlflow run . -e train -P model=cnn --env-manager local` or "
            "`python -m mnist_lab benchmark`, or point MLFLOW_TRACKING_URI / "
            "MLFLOW_EXPERIMENT_NAME at the store and experiment that hold them"
        )
    data = [plot_data(group.newest) for group in groups]
    table, significance = tables(groups, [d.history for d in data])
    table = add_failures(table, failures)

    out = Path(output_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    pngs = {key: _png(fig) for key, fig in figures(table, data, significance).items()}
    files = {}
    for key, png in pngs.items():
        files[key] = out / PLOTS[key]
        files[key].write_bytes(png)
    files["comparison.md"] = out / "comparison.md"
    files["comparison.md"].write_text(markdown(table, significance))
    files["comparison.csv"] = out / "comparison.csv"
    table.to_csv(files["comparison.csv"], index=False)
    files["significance.csv"] = out / "significance.csv"
    significance.to_csv(files["significance.csv"], index=False)
    files["comparison.html"] = out / "comparison.html"
    files["comparison.html"].write_text(html_page(table, significance, pngs, experiment))

    compared = [run_id for group in groups for run_id in group.run_ids]
    compared += [f.run_id for f in failures if f.run_id]
    run_tags = {names.TAG_KIND: "comparison", "compared_runs": ",".join(compared)}
    with tracking.run(nested=nested, run_name="comparison", tags=run_tags) as active:
        tracking.set_tags(run_tags)
        for key, path in files.items():
            tracking.log_artifact(path, str(Path(PLOTS[key]).parent) if key in PLOTS else None)
    return Comparison(table, significance, files, active.info.run_id)
