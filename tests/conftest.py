"""Shared fixtures: an isolated MLflow store per test and the real-MNIST location."""

import os
from pathlib import Path

import pytest

# CI exports MNIST_DATA_DIR relative to the project root; tests change directory, so pin it.
if os.environ.get("MNIST_DATA_DIR"):
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())

MLFLOW_ENV = (
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_TRACKING_URI",
)


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST folder (holding MNIST/raw/), or a skip that says what is missing."""
    value = os.environ.get("MNIST_DATA_DIR")
    if not value or not (Path(value) / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST_DATA_DIR is not set to a folder holding MNIST/raw/: real-MNIST test")
    return Path(value)


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store in tmp_path, artifacts in tmp_path/mlruns (MLflow's layout)."""
    import mlflow

    for var in MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
