"""register: best run by validation accuracy → mnist-<model>; champion moves only when beaten.

Runs here are fakes with a tiny logged model (no training); the same scenario runs on a SQLite
store and against a real `mlflow server` on 127.0.0.1.
"""

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from lab_helpers import free_port, venv_env
from mlflow.tracking import MlflowClient
from torch import nn

from mnist_lab import names, tracking
from mnist_lab.cli import main


def logged_run(experiment: str, val_accuracy: float, test_accuracy: float, monkeypatch) -> str:
    """A finished cnn `train` run with these metrics and a real (untrained) logged model."""
    import mlflow

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)  # what `register` reads
    mlflow.set_experiment(experiment)  # an earlier test's active experiment must not win
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with tracking.run(tags={names.TAG_KIND: "train", names.TAG_MODEL: "cnn"}) as active:
        tracking.log_metrics(
            {names.BEST_VAL_ACCURACY: val_accuracy, names.TEST_ACCURACY: test_accuracy}
        )
        tracking.log_model(tiny, torch.rand(2, 28, 28).numpy())
    return active.info.run_id


def register(capsys, *extra) -> str:
    assert main(["register", "--model", "cnn", *extra]) == 0
    return capsys.readouterr().out


def champion_run() -> str:
    return MlflowClient().get_model_version_by_alias("mnist-cnn", "champion").run_id


def check_champion_logic(monkeypatch, capsys) -> None:
    """The whole story, on whatever store MLFLOW_TRACKING_URI points at."""
    a = logged_run("week1", 0.90, 0.91, monkeypatch)
    out = register(capsys)
    assert f"registered run {a}" in out and "mnist-cnn version 1" in out
    assert "is now @champion: there was no champion yet" in out
    assert champion_run() == a
    version = MlflowClient().get_model_version("mnist-cnn", "1")
    assert version.tags["run_id"] == a
    assert float(version.tags[names.BEST_VAL_ACCURACY]) == pytest.approx(0.90)
    assert float(version.tags[names.TEST_ACCURACY]) == pytest.approx(0.91)

    # A better run, picked by validation accuracy although its test accuracy is lower.
    b = logged_run("week1", 0.95, 0.80, monkeypatch)
    logged_run("week1", 0.93, 0.99, monkeypatch)
    out = register(capsys)
    assert f"registered run {b}" in out and "version 2" in out and "it beats version 1" in out
    assert champion_run() == b

    # The champion's run again: nothing new.
    out = register(capsys)
    assert "already is the champion; nothing registered" in out
    assert len(MlflowClient().search_model_versions("name = 'mnist-cnn'")) == 2

    # Another experiment's best is worse than the champion: registered, champion stays.
    c = logged_run("week2", 0.94, 0.95, monkeypatch)
    out = register(capsys)
    assert f"registered run {c}" in out and "version 3" in out
    assert "is not @champion: it does not beat version 2" in out and "--force" in out
    assert champion_run() == b

    out = register(capsys, "--force")
    assert "version 4" in out and "is now @champion: --force given" in out
    assert champion_run() == c


def test_champion_logic_on_sqlite(mlflow_store, monkeypatch, capsys):
    check_champion_logic(monkeypatch, capsys)


@contextlib.contextmanager
def tracking_server(folder: Path, backend_uri: str, monkeypatch) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri` (proxied artifacts), stopped after."""
    import mlflow

    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--backend-store-uri", backend_uri]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, cwd=folder, env=venv_env(), stdout=log, stderr=log)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.5)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.chdir(folder)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_champion_logic_on_a_tracking_server(tmp_path, monkeypatch, capsys):
    with tracking_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}", monkeypatch):
        check_champion_logic(monkeypatch, capsys)
    # The artifacts went through the server, not to the local disk.
    assert not (tmp_path / "mlruns").exists()
    assert any((tmp_path / "artifacts").rglob("MLmodel"))


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped after."""
    url = os.environ.get("MNIST_LAB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MNIST_LAB_TEST_POSTGRES_URL is not set: no PostgreSQL server to test on")
    import psycopg2

    name = f"mnist_lab_register_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        # The psycopg2 driver named explicitly: it is the one installed.
        server_url = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
        yield f"{server_url}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_champion_logic_on_a_tracking_server_backed_by_postgres(
    tmp_path, monkeypatch, capsys, postgres_database
):
    with tracking_server(tmp_path, postgres_database, monkeypatch):
        check_champion_logic(monkeypatch, capsys)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("resnet", "unknown model 'resnet'; valid models: cnn"),
        ("vit", "no finished vit train run with a validation accuracy in experiment 'mnist-lab'"),
    ],
)
def test_bad_register_input_exits_2(mlflow_store, capsys, model, message):
    assert main(["register", "--model", model]) == 2
    assert message in capsys.readouterr().err
