"""Opening the tracking store: a fresh SQLite store's tables are created one process at a time.

The first process to open a SQLite store creates and migrates MLflow's tables, which takes
seconds. MLflow 3.17's tracking store does that without a lock, so two processes opening one
fresh store together (two `make train` on a fresh clone, a test polling the store its child is
creating) both run the migrations: each fails, and a half-done migration can leave a
`_alembic_tmp_*` table behind that makes every later open of the file fail. A file lock beside
the database (`<file>-lock`, an empty file left in place) makes the first open one at a time;
a process that waited finds the tables made and only checks them. On PostgreSQL the loser's
DDL is rolled back and it opens the store again (database.py); an MLflow server makes its own.

Every reader and writer here gets its client from `store_client()` (or calls `open_store()`
before MLflow's own functions), so the store is opened this way by whatever touches it first,
and only by what touches it.
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

from mnist_lab.database import open_retrying_collisions, redact
from mnist_lab.errors import LabError

LOCK_WAIT_S = 300  # creating the tables takes seconds; this long means a stuck process
_opened: set[str] = set()
log = logging.getLogger(__name__)


def store_client() -> MlflowClient:
    """A client of the tracking store (`mlflow.get_tracking_uri()`), opened first."""
    open_store()
    return MlflowClient()


def open_store() -> None:
    """Open this process's tracking store, creating a fresh SQLite store's tables under its
    lock; a LabError naming the store when it cannot be opened. Cheap after the first call."""
    uri = mlflow.get_tracking_uri()
    database = sqlite_file(uri)
    key = str(database or uri)
    if key in _opened:
        return
    try:
        with _creation_lock(database):
            if database:
                MlflowClient(uri)  # constructing the client creates and migrates the tables
            elif uri.lower().startswith(("http://", "https://")):
                # A server's client connects lazily: ask once, so an unreachable one is a
                # LabError here rather than a traceback from the first write.
                MlflowClient(uri).search_experiments(max_results=1)
            else:  # PostgreSQL: the loser of a race to create the tables opens again
                open_retrying_collisions(lambda: MlflowClient(uri))
    except LabError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        fix = (
            f"a store whose creation or upgrade was interrupted stays broken: if {database} "
            "holds no runs yet, delete it and run again, else restore it from a backup"
            if database
            else "check that its server is reachable and the URL is right"
        )
        raise LabError(
            f"cannot open the MLflow tracking store {redact(uri)}: {reason}; {fix}"
        ) from None
    _opened.add(key)


@contextlib.contextmanager
def _creation_lock(database: Path | None) -> Iterator[None]:
    """Held while the block runs, where `database` is a SQLite file in a writable folder."""
    if database is None:
        yield  # not SQLite: nothing to lock here
        return
    lock = FileLock(database.with_name(f"{database.name}-lock"), timeout=LOCK_WAIT_S)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for a new store
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for %s: another process is creating the store", lock.lock_file)
            lock.acquire()
    except Timeout:
        raise LabError(
            f"waited {LOCK_WAIT_S} s for another process to finish creating the MLflow tables "
            f"in {database} (it holds {lock.lock_file}); let it finish or stop it, then run "
            "this again"
        ) from None
    except OSError as err:  # Timeout is an OSError too, caught above
        log.warning("opening %s without its lock (%s): keep other processes off it", database, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI (`sqlite:///…`, `sqlite+pysqlite:///…`;
    relative to the working directory as SQLite resolves it); None for any other store and
    for an in-memory database."""
    if not uri.lower().startswith("sqlite"):
        return None
    try:
        url = sqlalchemy.engine.make_url(uri)
    except sqlalchemy.exc.ArgumentError:
        return None
    database = url.database
    if url.get_backend_name().lower() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None  # a SQLite URI filename: left to MLflow
    return Path(database).absolute()
