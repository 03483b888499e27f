"""Side-by-side table and plots of finished training runs, read from MLflow (never retrained).

Which runs: by default the latest finished `train` run per architecture of the experiment
(tuning trials, tagged `study_name`, left out); `best_by` picks each architecture's best run by a
metric instead; `tags` / `run_ids` narrow the choice; `include_tuning` adds each study's winner
(best validation accuracy). The table goes to the terminal and to `comparison.md`,
`comparison.csv` and a self-contained `comparison.html` (plots embedded), all logged to a new
run tagged `kind=comparison`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mnist_lab import names, tracking
from mnist_lab.analysis.corruptions import CORRUPTIONS
from mnist_lab.comparison import plots as compare_plots
from mnist_lab.errors import ConfigError
from mnist_lab.tracking import RunRecord

MISSING = "–"
# The lab's architectures in table order; any other model follows, alphabetically.
LAB_MODELS = ("cnn", "vgg16", "alexnet", "vit", "faster_rcnn")
COLUMNS = [
    "model",
    names.TEST_ACCURACY,
    names.TEST_F1_MACRO,
    names.TEST_LOSS,
    names.ROBUST_ACCURACY_MEAN,
    names.TEST_ECE,
    names.TEST_ECE_CALIBRATED,
    names.TRAIN_TIME_S,
    "epochs",
    names.NUM_PARAMS,
    names.INFERENCE_MS_PER_IMAGE,
    names.THROUGHPUT_IMG_PER_S,
    "device",
    "run_id",
]
FORMATS = {
    names.TEST_ACCURACY: "{:.4f}",
    names.TEST_F1_MACRO: "{:.4f}",
    names.TEST_LOSS: "{:.4f}",
    names.ROBUST_ACCURACY_MEAN: "{:.4f}",
    names.TEST_ECE: "{:.4f}",
    names.TEST_ECE_CALIBRATED: "{:.4f}",
    names.TRAIN_TIME_S: "{:.1f}",
    "epochs": "{:.0f}",
    names.NUM_PARAMS: "{:,.0f}",
    names.INFERENCE_MS_PER_IMAGE: "{:.3f}",
    names.THROUGHPUT_IMG_PER_S: "{:,.0f}",
}
# Metrics a run can be chosen by; for these, lower is better.
SELECTABLE_METRICS = (*names.EPOCH_METRICS, *names.FINAL_METRICS, names.BEST_VAL_ACCURACY)
LOWER_IS_BETTER = {
    names.TRAIN_LOSS,
    names.VAL_LOSS,
    names.TEST_LOSS,
    names.TRAIN_TIME_S,
    names.EPOCH_TIME_S,
    names.NUM_PARAMS,
    names.INFERENCE_MS_PER_IMAGE,
    names.PEAK_MEMORY_MB,
}
PLOTS = {
    "accuracy_f1": "plots/accuracy_f1.png",
    "accuracy_vs_time": "plots/accuracy_vs_train_time.png",
    "learning_curves": "plots/learning_curves.png",
    "confusion_matrices": "plots/confusion_matrices.png",
    "robustness": "plots/robustness.png",
    "reliability_diagrams": "plots/reliability_diagrams.png",
}
FILES = ("comparison.md", "comparison.csv", "comparison.html")


@dataclass
class Failure:
    """A model the benchmark could not train: shown as a failed row."""

    model: str
    reason: str
    run_id: str | None = None


@dataclass
class Comparison:
    table: pd.DataFrame  # COLUMNS (+ "status" when a row failed); NaN where a value is missing
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None


def check_metric(metric: str) -> str:
    if metric not in SELECTABLE_METRICS:
        raise ConfigError(
            f"unknown metric {metric!r}; choose one of: {', '.join(SELECTABLE_METRICS)}"
        )
    return metric


def parse_tags(tags: Sequence[str]) -> dict[str, str]:
    """["key=value", ...] → {key: value}; a clear error for anything else."""
    parsed = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key or "'" in item or "`" in item:
            raise ConfigError(f"tag filter {item!r}: write it as key=value (no quotes)")
        parsed[key.strip()] = value.strip()
    return parsed


def select_runs(
    experiment: str,
    *,
    best_by: str | None = None,
    tags: dict[str, str] | None = None,
    run_ids: Sequence[str] = (),
    include_tuning: bool = False,
) -> list[tuple[str, RunRecord]]:
    """(row label, run) pairs to compare: the lab's models in LAB_MODELS order, then others."""
    if run_ids:
        return _label([tracking.get_run(run_id) for run_id in run_ids])
    query = [f"tags.{names.TAG_KIND} = 'train'", "attributes.status = 'FINISHED'"]
    query += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    runs = tracking.search_runs(experiment, " and ".join(query))
    plain = [r for r in runs if names.TAG_STUDY_NAME not in r.tags]
    chosen = [_pick(group, best_by) for group in _groups(plain, lambda r: r.model)]
    chosen.sort(key=_table_order)
    labelled = _label(chosen)
    if include_tuning:
        trials = [r for r in runs if names.TAG_STUDY_NAME in r.tags]
        for group in _groups(trials, lambda r: r.tags[names.TAG_STUDY_NAME]):
            winner = _pick(group, best_by or names.BEST_VAL_ACCURACY)
            labelled.append(
                (f"{winner.model} (tuned: {winner.tags[names.TAG_STUDY_NAME]})", winner)
            )
    return labelled


def _groups(runs: list[RunRecord], key) -> list[list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return list(groups.values())


def _table_order(run: RunRecord) -> tuple[int, str]:
    in_lab = run.model in LAB_MODELS
    return (LAB_MODELS.index(run.model) if in_lab else len(LAB_MODELS), run.model)


def _pick(runs: list[RunRecord], metric: str | None) -> RunRecord:
    """The newest run (runs come newest first), or the best by `metric` among those having it."""
    if metric is None:
        return runs[0]
    having = [r for r in runs if metric in r.metrics] or runs
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(having, key=lambda r: sign * r.metrics.get(metric, -math.inf))


def _label(runs: list[RunRecord]) -> list[tuple[str, RunRecord]]:
    """Label rows by model; a model shown twice gets its run id's first 8 characters too."""
    counts = pd.Series([r.model for r in runs]).value_counts()
    return [(r.model if counts[r.model] == 1 else f"{r.model} ({r.run_id[:8]})", r) for r in runs]


def build_table(
    rows: list[tuple[str, RunRecord]], histories: list[list[tuple[int, float]]]
) -> pd.DataFrame:
    """The comparison table: one row per run, NaN where a run lacks a value."""
    records = []
    for (label, run), history in zip(rows, histories, strict=True):
        epochs = len(history) if history else _float(run.params.get("epochs"))
        records.append(
            {
                "model": label,
                **{c: run.metrics.get(c, np.nan) for c in COLUMNS if c in FORMATS},
                "epochs": epochs,
                "device": run.tags.get(names.TAG_DEVICE, np.nan),
                "run_id": run.run_id,
                "status": run.status.lower(),
            }
        )
    return pd.DataFrame(records, columns=[*COLUMNS, "status"])


def _float(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def add_failures(table: pd.DataFrame, failures: Sequence[Failure]) -> pd.DataFrame:
    rows = [
        {"model": f.model, "run_id": f.run_id or np.nan, "status": f"failed: {f.reason}"}
        for f in failures
    ]
    return pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every value as text, missing ones "–"; the `status` column only when a run failed."""
    shown = table.copy().astype(object)
    for column in shown.columns:
        fmt = FORMATS.get(column, "{}")
        shown[column] = [MISSING if _missing(v) else fmt.format(v) for v in table[column]]
    if (table["status"] == "finished").all():
        shown = shown.drop(columns="status")
    return shown


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def markdown(table: pd.DataFrame) -> str:
    shown = display_table(table)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@dataclass
class RunPlotData:
    """What the plots draw of one compared run beyond its table row."""

    history: list[tuple[int, float]]  # (epoch, validation accuracy)
    matrix: np.ndarray | None  # [10, 10] test confusion counts, rows = true
    robustness: dict[str, float] | None  # {corruption: accuracy}
    calibration: dict | None  # reports/calibration.json


def robustness_of(run: RunRecord) -> dict[str, float] | None:
    """The run's accuracy per MNIST-C corruption ({name: accuracy}), None when it has none."""
    metrics = {c: run.metrics.get(names.robust_accuracy(c)) for c in CORRUPTIONS}
    return {c: value for c, value in metrics.items() if value is not None} or None


def plot_data(run: RunRecord) -> RunPlotData:
    """Read back what the plots need of `run`: its curve, reports and robustness metrics."""
    report = tracking.classification_report(run.run_id)
    return RunPlotData(
        history=tracking.metric_history(run.run_id, names.VAL_ACCURACY),
        matrix=np.array(report["confusion_matrix"]) if report else None,
        robustness=robustness_of(run),
        calibration=tracking.read_json_artifact(run.run_id, names.REPORT_CALIBRATION),
    )


def figures(table: pd.DataFrame, data: list[RunPlotData]) -> dict[str, Figure]:
    """The comparison plots, keyed like PLOTS; only finished runs are drawn.

    The first len(data) rows of `table` are the runs `data` belongs to.
    """
    finished = (table["status"] == "finished").to_numpy()
    keep = [i for i in range(len(data)) if finished[i]]
    done, kept = table.iloc[keep], [data[i] for i in keep]
    labels = list(done["model"])
    return {
        "accuracy_f1": compare_plots.accuracy_bars_figure(
            labels, list(done[names.TEST_ACCURACY]), list(done[names.TEST_F1_MACRO])
        ),
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


def html_page(table: pd.DataFrame, pngs: dict[str, bytes], experiment: str) -> str:
    """One self-contained page: the table and every plot inlined as base64 PNG."""
    shown = display_table(table)
    # Long headers may wrap after an underscore, so the wide table fits a laptop screen.
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
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
        f"{html.escape(experiment)}</h1><table><tr>{head}</tr>{body}</table>{images}</body></html>"
    )


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
    """Select runs, write the table and plots to `output_dir`, log them to a `comparison` run."""
    if best_by is not None:
        check_metric(best_by)
    experiment = tracking.experiment_name()
    rows = select_runs(
        experiment, best_by=best_by, tags=tags, run_ids=run_ids, include_tuning=include_tuning
    )
    if not rows and not failures:
        raise tracking.NoRunsError(
            f"no finished train runs to compare in experiment {experiment!r} "
            f"(tracking store {tracking.tracking_uri()}); create some with "
            "`mlflow run . -e train -P model=cnn --env-manager local` or "
            "`python -m mnist_lab benchmark`, or point MLFLOW_TRACKING_URI / "
            "MLFLOW_EXPERIMENT_NAME at the store and experiment that hold them"
        )
    data = [plot_data(run) for _, run in rows]
    table = add_failures(build_table(rows, [d.history for d in data]), failures)

    out = Path(output_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    pngs = {key: _png(fig) for key, fig in figures(table, data).items()}
    files = {}
    for key, png in pngs.items():
        files[key] = out / PLOTS[key]
        files[key].write_bytes(png)
    files["comparison.md"] = out / "comparison.md"
    files["comparison.md"].write_text(markdown(table))
    files["comparison.csv"] = out / "comparison.csv"
    table.to_csv(files["comparison.csv"], index=False)
    files["comparison.html"] = out / "comparison.html"
    files["comparison.html"].write_text(html_page(table, pngs, experiment))

    compared = ",".join(table["run_id"].dropna())
    run_tags = {names.TAG_KIND: "comparison", "compared_runs": compared}
    with tracking.run(nested=nested, run_name="comparison", tags=run_tags) as active:
        tracking.set_tags(run_tags)
        for key, path in files.items():
            tracking.log_artifact(path, str(Path(PLOTS[key]).parent) if key in PLOTS else None)
    return Comparison(table, files, active.info.run_id)
