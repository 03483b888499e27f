"""Reading the tracking store and writing the model registry: what compare and register need.

`tracking` logs runs; this module reads them back (runs, metric histories, reports) and manages
registered models and their `champion` alias. Nothing here trains or logs metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.errors import LabError

CHAMPION = "champion"


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


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def experiment_name() -> str:
    """The experiment the environment chose (`MLFLOW_EXPERIMENT_NAME`/`_ID`), else `mnist-lab`."""
    if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return name
    if experiment_id := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        experiment = MlflowClient().get_experiment(experiment_id)
        return experiment.name
    return names.DEFAULT_EXPERIMENT


def search_runs(experiment: str, filter_string: str = "") -> list[RunRecord]:
    """Every run of `experiment` matching `filter_string`, newest first; [] if it does not exist."""
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        return []
    frame = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [_record(run) for run in frame]


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
        return _record(MlflowClient().get_run(run_id))
    except MlflowException:
        raise LabError(
            f"run {run_id!r} is not in the tracking store {mlflow.get_tracking_uri()}"
        ) from None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in `run_id`, by step; [] when the run never logged it."""
    history = MlflowClient().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def classification_report(run_id: str) -> dict[str, Any] | None:
    """The run's `reports/classification_report.json`, or None when it has none."""
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=names.REPORT_CLASSIFICATION
        )
    except Exception:  # missing artifact: MLflow raises different types per store
        return None
    with open(path) as f:
        return json.load(f)


# The model registry.


def registered_model_name(model: str) -> str:
    return f"mnist-{model}"


@dataclass
class Version:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


def champion(name: str) -> Version | None:
    """The version the alias `champion` of registered model `name` points to, if any."""
    client = MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return Version(found.name, str(found.version), found.run_id, dict(found.tags))


def register(run_id: str, name: str, tags: dict[str, str]) -> Version:
    """Register the run's `model` as a new version of `name` (created if new), with `tags`."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="MNIST digit classifier (mnist-lab)")
    version = mlflow.register_model(model_source(run_id), name, tags=tags)
    return Version(name, str(version.version), run_id, tags)


def model_source(run_id: str) -> str:
    """`models:/<id>` of the run's logged `model` (MLflow 3 keeps it outside the run's
    artifacts); `runs:/<run>/model` for runs logged before LoggedModels existed."""
    client = MlflowClient()
    outputs = client.get_run(run_id).outputs
    for output in outputs.model_outputs if outputs else ():
        if client.get_logged_model(output.model_id).name == names.MODEL_ARTIFACT:
            return f"models:/{output.model_id}"
    return f"runs:/{run_id}/{names.MODEL_ARTIFACT}"


def set_champion(name: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)


def load_model(uri: str) -> Any:
    """The pyfunc at `uri` (`models:/mnist-cnn@champion`, `runs:/<id>/model`, a path)."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except Exception as err:  # MlflowException, OSError, ...: all mean "cannot load that"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabError(
            f"model URI {uri!r} does not resolve in the tracking store {tracking_uri()}: "
            f"{first}; use e.g. models:/mnist-cnn@champion (after `register`) or runs:/<id>/model"
        ) from None
