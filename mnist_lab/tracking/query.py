"""Reading runs back from the tracking store: what compare and register see."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mnist_lab import names
from mnist_lab.errors import LabError
from mnist_lab.tracking.store import open_store, store_client


class NoRunsError(LabError):
    """Nothing in the experiment to compare or register."""


@dataclass
class RunRecord:
    """One run as compare and register see it."""

    run_id: str
    model: str
    status: str
    start_time: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def precision(self) -> str | None:
        """What the run trained in (bf16, fp32): its param, else (runs logged before the
        param) its tag; None where it has neither."""
        return self.params.get(names.PARAM_PRECISION) or self.tags.get(names.TAG_PRECISION)


# Params that change no result: a run's configuration is its model and its other params.
NOT_CONFIGURATION = frozenset({"seed", "data_dir", "checkpoint", "eval_batch_size", "config_file"})


def configuration(run: RunRecord) -> tuple:
    """What a run trained, apart from its seed: its model, its precision (bf16 and fp32 runs of
    one config are two configurations) and its params but NOT_CONFIGURATION. A run without a
    `seed` param (not a train run of this lab) is a configuration of its own."""
    if "seed" not in run.params:
        return ("run", run.run_id)
    precision = {names.PARAM_PRECISION: run.precision} if run.precision else {}
    given = {**precision, **run.params}
    params = sorted((k, v) for k, v in given.items() if k not in NOT_CONFIGURATION)
    return run.model, tuple(params)


def by_configuration(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """`runs` (newest first) grouped by configuration, the group of the newest run first; in
    each group one run per seed, the newest (a run repeated at one seed is not a new sample of
    the seeds' noise)."""
    groups: dict[tuple, dict[str | None, RunRecord]] = {}
    for run in runs:
        groups.setdefault(configuration(run), {}).setdefault(run.params.get("seed"), run)
    return [list(seeds.values()) for seeds in groups.values()]


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def experiment_name() -> str:
    """The experiment the environment chose (`MLFLOW_EXPERIMENT_NAME`/`_ID`), else `mnist-lab`."""
    if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return name
    if experiment_id := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        experiment = store_client().get_experiment(experiment_id)
        return experiment.name
    return names.DEFAULT_EXPERIMENT


def search_runs(experiment: str, filter_string: str = "") -> list[RunRecord]:
    """Every run of `experiment` matching `filter_string`, newest first; [] if it does not exist."""
    found = store_client().get_experiment_by_name(experiment)
    if found is None:
        return []
    frame = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [_record(run) for run in frame]


def job_run(job_id: str) -> str | None:
    """The newest run torchrun job `job_id` (TORCHELASTIC_RUN_ID) started, or None."""
    quoted = job_id.replace("'", "")
    found = search_runs(experiment_name(), f"tags.{names.TAG_ELASTIC_JOB} = '{quoted}'")
    return found[0].run_id if found else None


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        model=run.data.tags.get(names.TAG_MODEL, run.data.params.get("model", "?")),
        status=run.info.status,
        start_time=run.info.start_time or 0,
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
    )


def get_run(run_id: str) -> RunRecord:
    try:
        return _record(store_client().get_run(run_id))
    except MlflowException:
        raise LabError(
            f"run {run_id!r} is not in the tracking store {mlflow.get_tracking_uri()}"
        ) from None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in `run_id`, by step; [] when the run never logged it."""
    history = store_client().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def _download(run_id: str, path: str) -> str | None:
    """The run's artifact at `path` as a local file, None without it; without MLflow's progress
    bar, which would draw one per small file a comparison reads."""
    open_store()
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    except Exception:  # missing artifact: MLflow raises different types per store
        return None
    finally:
        if quiet:
            del os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"]


def logged_model_folder(run_id: str) -> str | None:
    """The local folder of the model `run_id` logged as `names.MODEL_ARTIFACT` (its pyfunc
    folder: MLmodel, data/ with spec.json and the weights), None where it logged none."""
    # Without experiment ids MLflow searches only the active experiment, not the run's.
    experiment = store_client().get_run(run_id).info.experiment_id
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND name = '{names.MODEL_ARTIFACT}'",
        output_format="list",
    )
    if not logged:
        return None
    return mlflow.artifacts.download_artifacts(artifact_uri=logged[0].model_uri)


def read_json_artifact(run_id: str, path: str) -> dict[str, Any] | None:
    """The run's JSON artifact at `path` (e.g. `reports/calibration.json`), or None without it."""
    local = _download(run_id, path)
    if local is None:
        return None
    with open(local) as f:
        return json.load(f)


def read_predictions(run_id: str, split: str) -> pd.DataFrame | None:
    """The run's `predictions/<split>.parquet` (analysis/predictions.py), or None when it has
    none (runs logged before per-digit predictions, runs that stopped before evaluating)."""
    local = _download(run_id, names.predictions_artifact(split))
    return None if local is None else pd.read_parquet(local)


def classification_report(run_id: str) -> dict[str, Any] | None:
    """The run's `reports/classification_report.json`, or None when it has none."""
    return read_json_artifact(run_id, names.REPORT_CLASSIFICATION)
