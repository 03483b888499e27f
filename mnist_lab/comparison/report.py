"""`report`: the results tables the docs quote, written from MLflow runs, never typed.

- `configurations.md` / `.csv`: every configuration of finished train runs in the experiment
  (tuning trials left out), with n, the mean test accuracy, its std over the seeds and a 95 %
  interval over the seeds and the test digits, the cost (training and report seconds, shown
  only where every run had its cores to itself), the machine and the run ids.
- `benchmark.md`, `benchmark.csv`, `benchmark_significance.csv`: the newest `benchmark` run's
  models, ranked, with every pair's difference and test (as `compare` shows them).
- `robustness.md` / `.csv`: the configurations whose runs logged an end-of-run report, each
  with n, the clean test accuracy and, with intervals, accuracy per other source and per
  corruption and severity, and calibration (robustness_page.py).

Each file says which store, experiment and runs it came from; every row names its machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mnist_lab import names, tracking
from mnist_lab.comparison import robustness_page
from mnist_lab.comparison.compare import (
    ACCURACY_COLUMNS,
    DESCRIPTION,
    FORMATS,
    SIGNIFICANCE_FORMATS,
    Format,
    markdown_table,
    tables,
)
from mnist_lab.comparison.groups import Group, config_overrides, group_label, model_order
from mnist_lab.database import redact
from mnist_lab.engine.contention import ALONE_BELOW
from mnist_lab.tracking import RunRecord

TRAIN_TIME_STD = names.aggregate(names.TRAIN_TIME_S, "std")  # beside the mean training time
REPORT_FORMATS: dict[str, Format] = FORMATS | {
    TRAIN_TIME_STD: names.METRICS[names.TRAIN_TIME_S].fmt
}


def columns(rank: bool = False) -> list[str]:
    """A table's columns: test accuracy with its interval (and the benchmark's rank), then
    the mean over a row's runs of every metric names.METRICS marks `report`."""
    metrics = []
    for metric in names.metric_names("report"):
        metrics += [metric, TRAIN_TIME_STD] if metric == names.TRAIN_TIME_S else [metric]
    head = ["model", "n", *ACCURACY_COLUMNS, *(["rank"] if rank else [])]
    return [*head, *metrics, "alone", *DESCRIPTION]


@dataclass
class Report:
    files: list[Path]
    configurations: pd.DataFrame
    benchmark: pd.DataFrame | None
    robustness: pd.DataFrame


def report(output_dir: str | Path = "results", tags: dict[str, str] | None = None) -> Report:
    """Write the results tables of the experiment's finished train runs to `output_dir`."""
    experiment = tracking.experiment_name()
    query = [f"tags.{names.TAG_KIND} = 'train'", "attributes.status = 'FINISHED'"]
    query += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    runs = [
        r
        for r in tracking.search_runs(experiment, " and ".join(query))
        if names.TAG_STUDY_NAME not in r.tags
    ]
    if not runs:
        raise tracking.NoRunsError(
            f"no finished train runs to report in experiment {experiment!r} (tracking store "
            f"{tracking.tracking_uri()}); train some first, e.g. `python -m mnist_lab train "
            "--config experiments/cnn_fast.yaml --seeds 5`"
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = _source(experiment)
    groups = sorted(_labelled(tracking.by_configuration(runs)), key=_model_order)
    configurations = _with_costs(tables(groups)[0], groups)[columns()]
    files = [_write(out / "configurations", configurations, CONFIGURATIONS_TITLE, source)]
    reported = robustness_page.reported(groups)
    machines = ["; ".join(_machines(g)) for g in reported]
    robustness = robustness_page.robustness_table(reported, machines)
    files.append(robustness_page.write(out, robustness, source))
    benchmark = _newest_benchmark(experiment)
    table = None
    if benchmark is not None:
        parent, members = benchmark
        groups = sorted(_by_model(tracking.by_configuration(members)), key=_model_order)
        table, significance = tables(groups)
        table = _with_costs(table, groups)[columns(rank=True)]
        title = BENCHMARK_TITLE.format(run=parent.run_id, params=_benchmark_params(parent))
        page = _write(out / "benchmark", table, title, source)
        with page.open("a") as f:
            f.write("\n" + markdown_table(significance, SIGNIFICANCE_FORMATS))
        significance.to_csv(out / "benchmark_significance.csv", index=False)
        files += [page, out / "benchmark_significance.csv"]
    return Report(files, configurations, table, robustness)


CONFIGURATIONS_TITLE = (
    "# Configurations\n\nEvery configuration of finished train runs (the same settings apart "
    "from the seed), with n seeds: test accuracy's mean, std over the seeds and 95 % interval "
    "(t over seeds × test digits; one run: Wilson's over its digits, seed noise unmeasured), "
    "the mean training and report seconds, the machine, the precision it trained in (bf16 and "
    "fp32 runs are two configurations) and the runs. Seconds are shown only where `alone` is "
    "yes: every run of the row logged that other processes used under "
    f"{ALONE_BELOW:.0%} of its CPUs' time while it trained (tag `{names.TAG_OTHER_CPU_SHARE}`); "
    "elsewhere they measure the machine's load, not the recipe's cost. "
    "[docs/comparisons.md](../docs/comparisons.md) says what each number means and assumes."
)
BENCHMARK_TITLE = (
    "# Benchmark\n\nThe newest `benchmark` run ({run}; {params}): its models ranked (1 + the "
    "longest chain of models above one, each beating the next beyond noise, Holm-adjusted "
    "p < 0.05), then every pair's difference in test accuracy, the 95 % interval of its test "
    "(t over seeds × digits), the p-values and the verdict. Seconds are shown only for models "
    "whose every run had its cores to itself (`alone`). "
    "[docs/comparisons.md](../docs/comparisons.md) says what each number means and assumes."
)


def _labelled(configurations: list[list[RunRecord]]) -> list[Group]:
    """Rows named by model, config file and the settings that differ from the file's
    (`cnn (cnn.yaml + epochs=2, max_train_samples=5000)`); runs without a config file here by
    the params their rows differ in; told apart by run id where two rows still share a name."""
    labels = [_label(runs, configurations) for runs in configurations]
    return [
        Group(label if labels.count(label) == 1 else f"{label} ({runs[0].run_id[:8]})", runs)
        for label, runs in zip(labels, configurations, strict=True)
    ]


def _label(runs: list[RunRecord], configurations: list[list[RunRecord]]) -> str:
    overrides = config_overrides(runs[0])
    if overrides is None:
        return group_label(runs, configurations, always_config=True)
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return f"{runs[0].model} ({runs[0].tags[names.TAG_CONFIG]}{' + ' * bool(changed)}{changed})"


def _by_model(configurations: list[list[RunRecord]]) -> list[Group]:
    """A benchmark's rows, one a model, named by it (the title gives the shared settings)."""
    return [Group(runs[0].model, runs) for runs in configurations]


def _model_order(group: Group) -> tuple[int, str]:
    return (model_order(group.model), group.label)


def _with_costs(table: pd.DataFrame, groups: Sequence[Group]) -> pd.DataFrame:
    """`compare`'s table with the report's metrics it lacks, the spread of the training time,
    every machine a row ran on and whether its runs were alone (seconds blanked where not)."""
    table = table.copy()
    for metric in names.metric_names("report"):
        if metric not in table:
            table[metric] = [g.mean(metric) for g in groups]
    table[TRAIN_TIME_STD] = [_std(g, names.TRAIN_TIME_S) for g in groups]
    table["machine"] = ["; ".join(_machines(g)) for g in groups]
    table["alone"] = [_alone(g) for g in groups]
    seconds = [c for c in table.columns if c.endswith("_s") or c == TRAIN_TIME_STD]
    table.loc[table["alone"] != "yes", seconds] = math.nan
    return table


def _alone(group: Group) -> str:
    """`yes` when every run logged that others used under ALONE_BELOW of its CPUs' time while
    it trained, `no` when one logged more, `unknown` when one did not log it."""
    shares = [r.tags.get(names.TAG_OTHER_CPU_SHARE) for r in group.runs]
    if any(s is not None and float(s) >= ALONE_BELOW for s in shares):
        return "no"
    return "unknown" if None in shares else "yes"


def _std(group: Group, metric: str) -> float:
    values = [r.metrics[metric] for r in group.runs if metric in r.metrics]
    if len(values) < 2:
        return math.nan
    return float(pd.Series(values).std(ddof=1))


def _machines(group: Group) -> list[str]:
    found = [r.tags.get(names.TAG_MACHINE) or r.tags.get(names.TAG_DEVICE, "?") for r in group.runs]
    return list(dict.fromkeys(found))


def _newest_benchmark(experiment: str) -> tuple[RunRecord, list[RunRecord]] | None:
    """The newest finished benchmark run and the train runs it made."""
    parents = tracking.search_runs(
        experiment, f"tags.{names.TAG_KIND} = 'benchmark' and attributes.status = 'FINISHED'"
    )
    for parent in parents:
        members = tracking.search_runs(
            experiment,
            f"tags.{names.TAG_KIND} = 'train' and tags.benchmark_run = '{parent.run_id}' "
            "and attributes.status = 'FINISHED'",
        )
        if members:
            return parent, members
    return None


def _benchmark_params(parent: RunRecord) -> str:
    given = {k.removeprefix("benchmark_"): v for k, v in sorted(parent.params.items())}
    return ", ".join(f"{k} {v}" for k, v in given.items() if v not in ("", "None")) or "defaults"


def _source(experiment: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    store = redact(tracking.tracking_uri())
    if store.startswith("sqlite:///"):  # a local file: its name, not this machine's path
        store = f"sqlite:///{Path(store.removeprefix('sqlite:///')).name}"
    return (
        f"Written by `python -m mnist_lab report` on {now} from experiment `{experiment}` of "
        f"the tracking store `{store}`."
    )


def _write(stem: Path, table: pd.DataFrame, title: str, source: str) -> Path:
    table.to_csv(stem.with_suffix(".csv"), index=False)
    shown = table.copy()
    shown["run_ids"] = [_short(ids) for ids in table["run_ids"]]
    path = stem.with_suffix(".md")
    path.write_text(f"{title}\n\n{source}\n\n{markdown_table(shown, REPORT_FORMATS)}")
    return path


def _short(run_ids: str) -> str:
    return " ".join(run_id[:8] for run_id in str(run_ids).split(","))
