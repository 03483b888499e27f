"""Helpers shared by the compare/register/predict tests: module-wide stores and fake runs."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import predictions_frame
from mnist_lab.measure.serving import answers, free_port

# What `mlflow run` or a user's shell may have set; a test's store must not inherit any of it.
MLFLOW_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def mlflow_at(uri: str, folder: Path, mp: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow (environment and client) pointed at `uri`, working in `folder`; runs left active
    are ended and the client reset after."""
    for var in MLFLOW_ENV:
        mp.delenv(var, raising=False)
    mp.chdir(folder)
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # An experiment an earlier test selected (set_experiment) lives in another store; MLflow
    # would still prefer it over MLFLOW_EXPERIMENT_NAME.
    mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


@functools.cache
def _empty_store() -> Path:
    """This process's empty, migrated SQLite store, made once."""
    database = Path(tempfile.mkdtemp(prefix="mnist-lab-store-")) / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


def new_sqlite_store(database: Path, artifacts: Path | str | None = None) -> str:
    """The URI of a new, empty SQLite tracking store at `database`, the Default experiment's
    artifacts in `artifacts`/0 (default: mlruns/ beside the database; a URI such as
    `SERVED_ARTIFACTS` for a server's store): a copy of one made once a process. MLflow's table
    migrations take seconds a store; a copy takes milliseconds, and is the same database."""
    shutil.copyfile(_empty_store(), database)
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        root = artifacts or database.parent / "mlruns"
        location = f"{root.rstrip('/')}/0" if isinstance(root, str) else str(root / "0")
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [location]
        )
    return f"sqlite:///{database}"


# Where `mlflow server --artifacts-destination` keeps the experiments it creates: a store made
# for a server gives its Default experiment this root, as the server itself would.
SERVED_ARTIFACTS = "mlflow-artifacts:"


def new_server_store(database: Path) -> str:
    """`new_sqlite_store` for an `mlflow server`'s backend: migrated already, so the server
    starts in about half the time, its Default experiment's artifacts served by the server."""
    return new_sqlite_store(database, SERVED_ARTIFACTS)


@contextlib.contextmanager
def sqlite_store(folder: Path) -> Iterator[str]:
    """A fresh SQLite store in `folder` (artifacts in folder/mlruns), for a whole test module."""
    with (
        pytest.MonkeyPatch.context() as mp,
        mlflow_at(new_sqlite_store(folder / "mlflow.db"), folder, mp) as uri,
    ):
        yield uri


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


def scored_run(
    model: str,
    right: np.ndarray,
    seed: int = 0,
    experiment: str = names.DEFAULT_EXPERIMENT,
    tags: dict[str, str] | None = None,
    **params: str,
) -> str:
    """A finished train run of `model` at `seed` whose test predictions are right exactly where
    `right` (bool [digits]) says, logged as a real run logs them."""
    index = np.arange(len(right)) * 3  # positions in the MNIST test file
    labels = np.arange(len(right)) % 10
    guesses = np.where(right, labels, (labels + 1) % 10)
    frame = predictions_frame(index, labels, guesses, np.eye(10)[guesses])
    metrics = {names.TEST_ACCURACY: float(right.mean()), names.BEST_VAL_ACCURACY: 0.9}
    run_id = fake_run(experiment, model, metrics, tags)
    client = MlflowClient()
    for key, value in {"seed": str(seed), "lr": "0.003", **params}.items():
        client.log_param(run_id, key, value)
    with mlflow.start_run(run_id=run_id):
        tracking.log_predictions({"test": frame})
    return run_id


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for `mlflow` subprocesses: this venv's bin first on PATH (what
    `--env-manager local` runs `python` from), no inherited run/experiment."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


@contextlib.contextmanager
def server_process(
    command: list[str], ready_url: str, log_path: Path, timeout: float = 120.0, **popen
) -> Iterator[subprocess.Popen]:
    """Start a server, wait until `ready_url` answers 200, yield the process; stop it after.

    Fails the test with the tail of the server's log if it exits or is not up in `timeout` s.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + timeout
            while not answers(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if process.poll() is not None else f"not up in {timeout} s"
                    pytest.fail(f"{' '.join(command[:3])} {state}: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def tracking_server(folder: Path, backend_uri: str, monkeypatch) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri` (artifacts proxied into
    folder/artifacts), with MLFLOW_TRACKING_URI pointing at it; stopped after."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--backend-store-uri", backend_uri]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    # Without the GenAI job runner (a huey consumer of 5 workers): nothing here queues jobs, and
    # its processes would take the test's core for the whole test.
    env = venv_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with (
        server_process(command, f"{uri}/health", folder / "server.log", cwd=folder, env=env),
        mlflow_at(uri, folder, monkeypatch),
    ):
        yield uri
