"""`report`'s robustness page: how each configuration reads digits from other sources, shifted
and corrupted digits, from the metrics every classifier run's end-of-run report logs
(engine/classification.py's `test_report`).

Per configuration whose runs logged a report (`report`'s rows: the same settings apart from the
seed), n seeds, the clean test accuracy as configurations.md gives it, and for every figure the
mean over the seeds with a 95 % interval: t over the seeds for n ≥ 2 (the runs log accuracies,
not which digits each got right, and share their digits: it measures seed noise on these
digits), Wilson's over the digits for n = 1 (seed noise unmeasured). The figures:

- `source_accuracy_<source>`: fonts and handwriting scanned at 8-32 px, read as `predict` reads
  photos; `test_ece` and `test_ece_calibrated` (one run: no interval, ECE is no proportion).
- `robust_accuracy_<corruption>` (MNIST-C's severity 3) and the graded
  `robust_accuracy_<corruption>_severity_<k>` (MNIST-C's mean, the large shifts).

`robustness.csv` holds a row per configuration, figure and severity; `robustness.md` a section per
configuration: a table of the sources and calibration, one of the corruptions with the
severities as columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mnist_lab import names
from mnist_lab.analysis.corruptions import corruption_names
from mnist_lab.analysis.statistics import (
    T_OVER_SEEDS,
    Summary,
    summarize_accuracies,
    t_interval,
)
from mnist_lab.comparison.compare import markdown_table
from mnist_lab.comparison.groups import Group
from mnist_lab.comparison.significance import group_accuracy
from mnist_lab.data.handwriting import SOURCES
from mnist_lab.engine.classification import SOURCE_SHARE

NAME = "robustness"
CLEAN, SOURCE, CALIBRATION, CORRUPTION = "clean", "source", "calibration", "corruption"
MEAN = "mean"  # robust_accuracy_mean: the mean over MNIST-C's 15 corruptions
SEVERITY = "_severity_"
SAMPLES_PARAM = "robustness_samples"
NO_INTERVAL = "one run: no interval (seed noise unmeasured)"
NO_DIGITS = f"{NO_INTERVAL}; its digits not logged"
COLUMNS = [
    "configuration", "kind", "figure", "severity", "n", "mean", "ci95_low", "ci95_high",
    "minus_clean", "digits", "interval", "clean_test_accuracy", "machine", "precision",
    "run_ids",
]  # fmt: skip

TITLE = (
    "# Robustness of each configuration: other sources, corruptions by severity, calibration"
    "\n\nEvery configuration of finished train runs whose end-of-run report "
    "measured robustness (rows as in [configurations.md](configurations.md): the same settings "
    "apart from the seed), with n seeds, its machine and precision, and the clean test "
    "accuracy beside: accuracy on digits from other sources (fonts; handwriting scanned at "
    "8-32 px, read as `predict` reads photos), calibration (ECE before and after temperature "
    "scaling), and accuracy under each corruption (MNIST-C's 15 and their mean; the large "
    "shifts `shift` and `border_cut`) at each severity the runs logged. Each figure is the "
    "mean over the seeds with a 95 % interval: t over the seeds for n ≥ 2 (the runs log "
    "accuracies, not per-digit answers, and share their digits, so it measures seed noise on "
    "these digits), Wilson's over the digits for n = 1 (seed noise unmeasured). `− clean` is a "
    "figure minus the clean test accuracy, in points: a shift read within 1 point of clean "
    "shows -1.00 or more. The clean accuracy is over the test split, the corrupted ones over "
    "its first `robustness_samples` digits. Runs log each MNIST-C corruption at MNIST-C's "
    "severity (3) only, its other severities in their `reports/robustness.json`. "
    "[docs/how-models-fail.md](../docs/how-models-fail.md) says what each corruption is. "
    "All figures in %."
)


def reported(groups: Sequence[Group]) -> list[Group]:
    """Each group's runs that logged a robustness report; groups with none left out."""
    kept = [
        Group(g.label, [r for r in g.runs if names.ROBUST_ACCURACY_MEAN in r.metrics])
        for g in groups
    ]
    return [g for g in kept if g.runs]


def robustness_table(groups: Sequence[Group], machines: Sequence[str]) -> pd.DataFrame:
    """The CSV's rows (COLUMNS) of `groups` (already `reported`), run on `machines` (one
    "a; b" text per group)."""
    rows = [row for g, m in zip(groups, machines, strict=True) for row in _rows(g, m)]
    return pd.DataFrame(rows, columns=COLUMNS)


def write(out: Path, table: pd.DataFrame, source: str) -> Path:
    """robustness.csv and robustness.md in `out`: the page's title, `source` (where the runs
    came from) and a section per configuration. Returns the Markdown's path."""
    table.to_csv(out / f"{NAME}.csv", index=False)
    sections = [_section(rows) for _, rows in table.groupby("configuration", sort=False)]
    if not sections:
        sections = [
            "No configuration has a robustness report: a classifier's train run with "
            "`robustness_samples` above 0 logs one."
        ]
    path = out / f"{NAME}.md"
    path.write_text("\n\n".join([TITLE, source, *sections]) + "\n")
    return path


def _rows(group: Group, machine: str) -> list[dict]:
    """A configuration's figures: its clean test accuracy (as `compare` reads it: over seeds ×
    digits from the runs' predictions), each source, calibration, each corruption × severity."""
    clean = group_accuracy(group)
    logged = _samples(group)
    samples = None if logged is None else min(logged, clean.digits)
    per_source = None if samples is None else 10 * max(1, samples // SOURCE_SHARE)
    common = {
        "configuration": group.label,
        "clean_test_accuracy": clean.summary.mean,
        "machine": machine,
        "precision": group.newest.precision or "",
        "run_ids": ",".join(group.run_ids),
    }
    keys = {key for run in group.runs for key in run.metrics}
    found = [(CLEAN, names.TEST_ACCURACY, math.nan, clean.summary, clean.digits)]
    for source in _sources(keys):
        values = _values(group, names.source_accuracy(source))
        found.append((SOURCE, source, math.nan, _accuracy(values, per_source), per_source))
    for metric in (names.TEST_ECE, names.TEST_ECE_CALIBRATED):
        if metric in keys:
            found.append((CALIBRATION, metric, math.nan, _spread(_values(group, metric)), None))
    for (corruption, severity), key in _corruptions(keys).items():
        summary = _accuracy(_values(group, key), samples)
        found.append((CORRUPTION, corruption, severity, summary, samples))
    rows = []
    for kind, figure, severity, summary, digits in found:
        accuracy = kind in (SOURCE, CORRUPTION)
        rows.append({
            "kind": kind,
            "figure": figure,
            "severity": severity,
            "n": summary.n,
            "mean": summary.mean,
            "ci95_low": summary.low,
            "ci95_high": summary.high,
            "minus_clean": summary.mean - clean.summary.mean if accuracy else math.nan,
            "digits": math.nan if digits is None else digits,
            "interval": summary.method,
            **common,
        })  # fmt: skip
    return rows


def _samples(group: Group) -> int | None:
    """The test digits the report corrupted (the `robustness_samples` param), None if unknown."""
    try:
        return int(group.newest.params[SAMPLES_PARAM])
    except (KeyError, ValueError):
        return None


def _values(group: Group, metric: str) -> list[float]:
    return [run.metrics[metric] for run in group.by_seed() if metric in run.metrics]


def _accuracy(values: Sequence[float], digits: int | None) -> Summary:
    """An accuracy over the seeds: t over them for several, Wilson's over `digits` for one
    (no interval where the run did not log how many digits it scored)."""
    if len(values) == 1 and digits is None:
        return Summary(1, values[0], math.nan, math.nan, math.nan, NO_DIGITS, seed_noise=False)
    return summarize_accuracies(values, digits or 0)


def _spread(values: Sequence[float]) -> Summary:
    """A figure that is no proportion (ECE): t over the seeds, no interval for one run."""
    series = pd.Series(values, dtype=float)
    std = float(series.std(ddof=1)) if len(values) > 1 else math.nan
    low, high = t_interval(values)
    method = T_OVER_SEEDS if len(values) > 1 else NO_INTERVAL
    return Summary(len(values), float(series.mean()), std, low, high, method, len(values) > 1)


def _sources(keys: set[str]) -> list[str]:
    """The sources the runs logged: fonts, then the handwriting resolutions, then any other."""
    found = {k.removeprefix(names.SOURCE_ACCURACY_PREFIX) for k in keys}
    found = {s for s in found if names.source_accuracy(s) in keys}
    order = ["fonts", *SOURCES]
    return [s for s in order if s in found] + sorted(found - set(order))


def _corruptions(keys: set[str]) -> dict[tuple[str, int], str]:
    """(corruption, severity) → its metric, in the suite's order with MNIST-C's mean first:
    `robust_accuracy_<c>` is severity 3, `robust_accuracy_<c>_severity_<k>` severity k."""
    found: dict[tuple[str, int], str] = {}
    for key in sorted(keys):
        if not key.startswith(names.ROBUST_ACCURACY_PREFIX):
            continue
        rest = key.removeprefix(names.ROBUST_ACCURACY_PREFIX)
        corruption, graded, level = rest.rpartition(SEVERITY)
        if graded and level.isdigit():
            found[corruption, int(level)] = key
        else:
            found.setdefault((rest, names.DEFAULT_SEVERITY), key)
    order = [MEAN, *corruption_names()]
    rank = {c: i for i, c in enumerate(order)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0][0], len(order)), kv[0])))


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def _points(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:+.2f}"


def _with_interval(row: pd.Series) -> str:
    if math.isnan(row["ci95_low"]):
        return _percent(row["mean"])
    return f"{_percent(row['mean'])} [{_percent(row['ci95_low'])}, {_percent(row['ci95_high'])}]"


def _section(rows: pd.DataFrame) -> str:
    """One configuration: what its runs are, its sources and calibration, its corruptions."""
    first = rows.iloc[0]
    clean = rows[rows["kind"] == CLEAN].iloc[0]
    corrupted = rows[rows["kind"] == CORRUPTION]
    seeds = int(clean["n"])
    lines = [
        f"## {first['configuration']}",
        "",
        f"n = {seeds} seed{'s' * (seeds != 1)} on {first['machine']}, precision "
        f"{first['precision'] or 'not logged'}; runs {_short(first['run_ids'])}.",
        "",
        _figures_table(rows[rows["kind"].isin([CLEAN, SOURCE, CALIBRATION])]),
    ]
    if len(corrupted):
        digits = corrupted["digits"].iloc[0]
        where = "its test digits" if math.isnan(digits) else f"its first {digits:.0f} test digits"
        lines += [
            f"Accuracy under each corruption of {where}, by severity (MNIST-C's is "
            f"{names.DEFAULT_SEVERITY}), 95 % interval {corrupted['interval'].iloc[0]}; "
            "`worst − clean`: the lowest severity's mean minus the clean test accuracy.",
            "",
            _corruptions_table(corrupted),
        ]
    return "\n".join(lines)


def _figures_table(rows: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "figure": [_label(r) for _, r in rows.iterrows()],
        "n": rows["n"].astype(int).astype(str),
        "mean [95 % interval]": [_with_interval(r) for _, r in rows.iterrows()],
        "− clean (points)": [_points(v) for v in rows["minus_clean"]],
        "digits": ["–" if math.isnan(d) else f"{d:.0f}" for d in rows["digits"]],
        "interval": rows["interval"],
    })  # fmt: skip
    return markdown_table(shown, {})


def _label(row: pd.Series) -> str:
    if row["kind"] == CLEAN:
        return "clean test accuracy"
    if row["kind"] == SOURCE:
        return f"source: {row['figure']}"
    return row["figure"]


def _corruptions_table(rows: pd.DataFrame) -> str:
    severities = sorted(int(s) for s in rows["severity"].unique())
    grid = []
    for corruption, found in rows.groupby("figure", sort=False):
        by_severity = {int(r["severity"]): r for _, r in found.iterrows()}
        cells = {
            _severity_column(s): _with_interval(by_severity[s]) if s in by_severity else "–"
            for s in severities
        }
        worst = found["minus_clean"].min()
        name = "MNIST-C mean" if corruption == MEAN else corruption
        grid.append({"corruption": name, **cells, "worst − clean (points)": _points(worst)})
    return markdown_table(pd.DataFrame(grid), {})


def _severity_column(severity: int) -> str:
    mnist_c = " (MNIST-C)" if severity == names.DEFAULT_SEVERITY else ""
    return f"severity {severity}{mnist_c}"


def _short(run_ids: str) -> str:
    return " ".join(run_id[:8] for run_id in str(run_ids).split(","))
