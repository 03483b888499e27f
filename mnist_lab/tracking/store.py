"""Opening the tracking store: a fresh SQLite store's tables are created one process at a time.

The first process to open a SQLite store creates and migrates MLflow's tables, which takes
seconds. MLflow 3.17's tracking store does that without a lock, so two processes opening one
fresh store together (two `make train` on a fresh clone, a test polling the store its child is
creating) both run the migrations: each fails, and a half-done migration can leave a
`_alembic_tmp_*` table behind that makes every later open of the file fail. A file lock beside
the database (`<file>-lock`, an empty file left in place) makes the first open one at a time;
a process that waited finds the tables made and only checks them. On PostgreSQL the loser's
DDL is rolled back and it opens the store again (dbschema.py); an MLflow server makes its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import mlflow
import sqlalchemy
from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient

from mnist_lab.dbschema import open_retrying_collisions
from mnist_lab.errors import LabError

LOCK_WAIT_S = 300  # creating the tables takes seconds; this long means a stuck process
_opened: set[str] = set()
log = logging.getLogger(__name__)


def open_store() -> None:
    """Open this process's tracking store (`mlflow.get_tracking_uri()`), creating a fresh
    SQLite store's tables under its lock. Cheap after the first call for a store."""
    uri = mlflow.get_tracking_uri()
    database = sqlite_file(uri)
    key = str(database or uri)
    if key in _opened:
        return
    with _creation_lock(database):
        # Constructing the client creates and migrates the tables. On a server database
        # (PostgreSQL) a process that lost the race to create them opens it again.
        open_retrying_collisions(lambda: MlflowClient(uri))
    _opened.add(key)


@contextlib.contextmanager
def _creation_lock(database: Path | None) -> Iterator[None]:
    """Held while the block runs, where `database` is a SQLite file in a writable folder."""
    if database is None:
        yield  # not SQLite: MLflow opens the store as it does
        return
    lock = FileLock(database.with_name(f"{database.name}-lock"), timeout=LOCK_WAIT_S)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for a new store
        lock.acquire()
    except Timeout:
        raise LabError(
            f"waited {LOCK_WAIT_S} s for another process to finish creating the MLflow tables "
            f"in {database} (it holds {lock.lock_file}); let it finish or stop it, then run "
            "this again"
        ) from None
    except OSError as err:  # a read-only folder: MLflow reads the store, or says why not
        log.debug("no lock beside %s (%s): opening it unlocked", database, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///…` tracking URI (relative to the working directory
    as SQLite resolves it); None for any other store and for an in-memory database."""
    if not uri.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()
