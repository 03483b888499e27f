"""Helpers shared by the compare/register/predict tests: module-wide stores and fake runs."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from mnist_lab import names

MLFLOW_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def sqlite_store(folder: Path) -> Iterator[str]:
    """A fresh SQLite store in `folder` (artifacts in folder/mlruns), for a whole test module."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for var in MLFLOW_ENV:
            mp.delenv(var, raising=False)
        mp.chdir(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)


def fake_run(
    experiment: str,
    model: str,
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
    start_time: int | None = None,
    status: str = "FINISHED",
) -> str:
    """A `train`-tagged run with just these metrics (no artifacts), ended with `status`."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    all_tags = {names.TAG_KIND: "train", names.TAG_MODEL: model, **(tags or {})}
    run = client.create_run(experiment_id, start_time=start_time, tags=all_tags)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for `mlflow` subprocesses: this venv's bin first on PATH (what
    `--env-manager local` runs `python` from), no inherited run/experiment."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env
