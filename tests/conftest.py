"""Shared fixtures: an isolated MLflow store per test, the real-MNIST location and a fresh
PostgreSQL database.

The fixtures import lab_helpers (MLflow, torch, the lab) when they run, not at the top: `make
test`'s pytest-xdist controller loads this file too and runs no test, and without those imports
it starts its workers about 4 s sooner."""

import multiprocessing.process
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

# A job started in the background (`nohup make test &`, a script's `make test > log &`) inherits
# SIGINT as ignored, and the product rightly leaves an ignored signal alone. The Ctrl-C tests need
# Python's own handler, so install it here: the test process gets it, and the children it starts
# get SIGINT back at its default on exec (a handled signal is reset; only an ignored one stays).
signal.signal(signal.SIGINT, signal.default_int_handler)

# Nothing else the suite was started with may steer it: MLflow/Optuna settings of the user's shell
# or of an `mlflow run` (a run id, an experiment, a tracking server), an odd umask (artifact and
# checkpoint files must come out readable), or a locale without UTF-8 (children print "°", "×").
for _var in [v for v in os.environ if v.startswith(("MLFLOW_", "OPTUNA_"))]:
    del os.environ[_var]
os.umask(0o022)
os.environ["LC_ALL"] = os.environ["LANG"] = "C.UTF-8"
os.environ["PYTHONIOENCODING"] = "utf-8"

# `make test` runs the suite on pytest-xdist workers, one a core: each worker, and every process
# it starts (they inherit the affinity), keeps to its own cores, so two tests that train never
# fight over the same two cores with two threads each (oversubscribed, both run many times slower).
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and hasattr(os, "sched_setaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _share = _cpus[int(_worker.removeprefix("gw")) % _count :: _count] or _cpus
    os.sched_setaffinity(0, _share)
    os.environ["OMP_NUM_THREADS"] = str(len(_share))
    import torch

    torch.set_num_threads(len(_share))

# CI exports MNIST_DATA_DIR relative to the project root; tests change directory, so pin it.
if os.environ.get("MNIST_DATA_DIR"):
    os.environ["MNIST_DATA_DIR"] = str(Path(os.environ["MNIST_DATA_DIR"]).resolve())


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test works in its own folder with its own default MLflow store, so a test that
    names no store, or a relative path, never touches the repo's mlflow.db, mlruns/ or
    comparison/, whatever the directory the suite was started from. A module-wide store
    (lab_helpers.sqlite_store; the environment's MLflow variables were cleared above, so a
    tracking URI here is a fixture's) is left as it is."""
    import mlflow

    # A test that loads a model with mlflow.pyfunc gets the model's code/ first on sys.path;
    # processes a later test spawns would then import that partial copy of mnist_lab.
    monkeypatch.setattr(sys, "path", list(sys.path))
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)  # mlflow.set_experiment of an earlier test sets one
    # A run on a tracking server spools beside the test's folder, never in the user's home.
    monkeypatch.setenv("MNIST_LAB_SPOOL_DIR", str(tmp_path.with_name(f"{tmp_path.name}-spool")))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    monkeypatch.chdir(tmp_path)
    from lab_helpers import new_sqlite_store

    # Beside the test's folder, not in it: tests that list their folder find only their files.
    database = tmp_path.with_name(f"{tmp_path.name}-mlflow") / "mlflow.db"
    database.parent.mkdir()
    uri = new_sqlite_store(database, artifacts=tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


# Programs an in-process test may still run: quick system tools the product asks about the machine.
SYSTEM_TOOLS = {"git", "lscpu", "nvidia-smi", "uname", "ldconfig", "sysctl"}


@pytest.fixture(autouse=True)
def in_process_unless_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """`make test-fast` runs the tests not marked `slow`, and promises they stay in this process.
    So a test that starts a process (the CLI, `mlflow`, torchrun, a server, a spawned worker)
    without the mark fails, naming what it started: the tiers cannot drift apart."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    started: list[str] = []
    popen_init = subprocess.Popen.__init__
    process_start = multiprocessing.process.BaseProcess.start

    def popen(self, args, *more, **options):
        words = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        if Path(os.fsdecode(words[0]).split()[0]).name not in SYSTEM_TOOLS:
            started.append(" ".join(os.fsdecode(w) for w in words)[:200])
        popen_init(self, args, *more, **options)

    def start(self):
        started.append(f"a {type(self).__name__} ({self.name})")
        process_start(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    yield
    if started:
        pytest.fail(
            f"{request.node.nodeid} starts a process ({started[0]}): mark it @pytest.mark.slow, "
            "or keep it in this process (make test-fast runs only in-process tests)",
            pytrace=False,
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
    from lab_helpers import mlflow_at, new_sqlite_store

    with mlflow_at(new_sqlite_store(tmp_path / "mlflow.db"), tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture
def unmade_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite tracking store in tmp_path that does not exist yet: for tests of its making."""
    from lab_helpers import mlflow_at

    with mlflow_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture
def postgres_db():
    """A fresh database on the test PostgreSQL server, dropped afterwards; yields a factory."""
    url = os.environ.get("MNIST_LAB_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MNIST_LAB_TEST_POSTGRES_URL is not set: no PostgreSQL server to test on")
    import psycopg

    created: list[str] = []
    admin = psycopg.connect(url, autocommit=True)

    def make() -> str:
        name = f"mnist_lab_test_{uuid.uuid4().hex[:12]}"
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{url.rsplit('/', 1)[0]}/{name}"  # a plain URL: psycopg 3, SQLAlchemy's default

    yield make
    with admin.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def space(tmp_path: Path) -> Path:
    """A tiny CNN search space (tuning_helpers.TINY_SPACE) in a file: the tuning tests' space."""
    from tuning_helpers import TINY_SPACE

    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture
def mlflow_server(postgres_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store; stopped afterwards."""
    from lab_helpers import tracking_server

    with tracking_server(tmp_path, postgres_db(), monkeypatch) as uri:
        yield uri


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most process-starting (slow) tests first: `make test` hands whole
    files to its workers in this order, so the long ones start at once and the many short
    in-process ones fill the gaps at the end, rather than one long file running alone last."""
    slow: dict[str, int] = {}
    for item in items:
        file = item.nodeid.split("::")[0]
        slow[file] = slow.get(file, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])
