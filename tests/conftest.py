"""Shared fixtures: an isolated MLflow store per test, the real-MNIST location and a fresh
PostgreSQL database."""

import os
import signal
import uuid
from pathlib import Path

import pytest
from lab_helpers import mlflow_at

# A job started in the background (`nohup make test &`, a script's `make test > log &`) inherits
# SIGINT as ignored, and the product rightly leaves an ignored signal alone. The Ctrl-C tests need
# Python's own handler, so install it here: the test process gets it, and the children it starts
# get SIGINT back at its default on exec (a handled signal is reset; only an ignored one stays).
signal.signal(signal.SIGINT, signal.default_int_handler)

# CI exports MNIST_DATA_DIR relative to the project root; tests change directory, so pin it.
if os.environ.get("MNIST_DATA_DIR"):
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())


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
    with mlflow_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture
def postgres_db():
    """A fresh database on the test PostgreSQL server, dropped afterwards; yields a factory."""
    url = os.environ.get("MNIST_LAB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MNIST_LAB_TEST_POSTGRES_URL is not set: no PostgreSQL server to test on")
    import psycopg2

    created: list[str] = []
    admin = psycopg2.connect(url)
    admin.autocommit = True

    def make() -> str:
        name = f"mnist_lab_test_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        # psycopg2 is the driver installed; SQLAlchemy 2.1's default for postgresql:// is 3.
        base = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        return f"{base}/{name}"

    yield make
    with admin.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
