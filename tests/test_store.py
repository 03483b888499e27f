"""Opening the tracking store: processes opening one fresh SQLite store together all succeed,
and leave a store every later process can open."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from filelock import FileLock
from mlflow.tracking import MlflowClient

from mnist_lab import database, tracking
from mnist_lab.config import PROJECT_ROOT
from mnist_lab.errors import LabError
from mnist_lab.tracking import store
from mnist_lab.tracking.store import sqlite_file

OPEN = [sys.executable, "-m", "mnist_lab", "runs", "--stale"]  # a command that reads the store


def test_sqlite_file_is_the_database_of_a_sqlite_uri_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///mlflow.db") == tmp_path / "mlflow.db"
    assert sqlite_file(f"sqlite:///{tmp_path}/a/b.db") == tmp_path / "a" / "b.db"
    assert sqlite_file("sqlite+pysqlite:///x.db") == sqlite_file("SQLITE:///x.db")
    assert sqlite_file("sqlite+pysqlite:///x.db") == tmp_path / "x.db"
    for other in ("sqlite://", "sqlite:///:memory:", "postgresql://u@h/db", "http://h:5000"):
        assert sqlite_file(other) is None, other


def open_together(uri: str, processes: int, folder: Path) -> None:
    """`processes` processes open the store at `uri` at once; each must succeed."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(PROJECT_ROOT)}
    logs = [folder / f"open-{i}.log" for i in range(processes)]
    started = [
        subprocess.Popen(OPEN, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        for log in logs
    ]
    codes = [p.wait(timeout=300) for p in started]
    assert codes == [0] * processes, "\n".join(log.read_text()[-2000:] for log in logs)
    assert MlflowClient(uri).get_experiment("0").name == "Default"  # a later process opens it


@pytest.mark.slow
def test_processes_opening_one_fresh_sqlite_store_together_all_succeed(tmp_path):
    """Unlocked, MLflow's migrations collide here every time: all but one fail, and the file
    can be left unusable (a `_alembic_tmp_*` table)."""
    open_together(f"sqlite:///{tmp_path / 'mlflow.db'}", 2, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_opening_one_fresh_postgresql_store_together_all_succeed(postgres_db, tmp_path):
    """Without opening again, the loser of the race to create the tables fails here every time
    (a unique violation on `pg_type`)."""
    open_together(postgres_db(), 2, tmp_path)


def test_a_lost_race_to_create_tables_is_opened_again_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(database.time, "sleep", lambda _: None)
    calls = []

    def opens_on_try(n: int, error: Exception):
        def open_database() -> str:
            calls.append(1)
            if len(calls) < n:
                raise error
            return "open"

        return open_database

    collision = sqlalchemy.exc.IntegrityError("CREATE TABLE runs", {}, Exception("duplicate"))
    assert database.open_retrying_collisions(opens_on_try(2, collision)) == "open"
    assert len(calls) == 2
    calls.clear()
    exists = sqlalchemy.exc.OperationalError("CREATE", {}, Exception("table runs already exists"))
    with pytest.raises(sqlalchemy.exc.OperationalError):  # every attempt collided: said
        database.open_retrying_collisions(opens_on_try(99, exists))
    assert len(calls) == database.ATTEMPTS
    calls.clear()
    locked = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))
    with pytest.raises(sqlalchemy.exc.OperationalError):
        database.open_retrying_collisions(opens_on_try(2, locked))
    assert len(calls) == 1  # not a collision: raised at once


def test_a_store_held_too_long_by_another_process_is_a_clear_error(
    unmade_mlflow_store, monkeypatch
):
    database = sqlite_file(unmade_mlflow_store)
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.2)
    with FileLock(database.with_name("mlflow.db-lock")), pytest.raises(LabError) as err:
        tracking.open_store()
    assert str(database) in str(err.value) and "mlflow.db-lock" in str(err.value)
    assert not database.exists()  # nothing made while another process held it


def test_a_store_in_a_new_folder_is_made_there_under_its_lock(tmp_path, monkeypatch):
    database: Path = tmp_path / "new" / "folder" / "mlflow.db"
    monkeypatch.setattr(store.mlflow, "get_tracking_uri", lambda: f"sqlite:///{database}")
    tracking.open_store()
    assert database.is_file() and database.with_name("mlflow.db-lock").is_file()


def test_an_unlockable_folder_opens_the_store_unlocked_and_says_so(
    unmade_mlflow_store, monkeypatch, caplog
):
    def refused(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(store.FileLock, "acquire", refused)
    tracking.open_store()
    assert sqlite_file(unmade_mlflow_store).is_file()
    assert "without its lock" in caplog.text


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path, monkeypatch):
    database = tmp_path / "broken.db"
    database.write_bytes(b"not a SQLite database, e.g. one a crash cut short" * 100)
    monkeypatch.setattr(store.mlflow, "get_tracking_uri", lambda: f"sqlite:///{database}")
    with pytest.raises(LabError, match="cannot open the MLflow tracking store") as err:
        tracking.open_store()
    assert str(database) in str(err.value) and "delete it" in str(err.value)
