"""Once-only claims among the processes (machines) sharing a study, with Optuna's public API.

Several `tune` processes may finish one study together; exactly one of them retrains it (and
exactly one enqueues the defaults as trial 0). Optuna's own `set_user_attr` is an upsert (the
last writer wins), so it cannot decide that. The claim lives beside the study instead:

- RDB storages (SQLite, PostgreSQL, MySQL): a row in `mnist_lab_claims`, a table of this
  project's own in the same database, made through SQLAlchemy. Its primary key is (study id,
  key), so of N processes inserting the same claim at once exactly one commits; the others get
  an IntegrityError and read the holder. Nothing of Optuna's schema is touched.
- Journal files: a file beside the journal, created with O_EXCL.

The winner also copies its claim into the study's user attrs, for the dashboard: a copy, never
the claim. The study id comes from `storage.get_study_id_from_name`, a public storage method.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, String, Table, Text, delete, insert, select

from mnist_lab.database import open_retrying_collisions
from mnist_lab.errors import LabError
from mnist_lab.tuning.study import JOURNAL_PREFIX

TABLE = "mnist_lab_claims"

CLAIMS = Table(
    TABLE,
    MetaData(),
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("key", String(255), primary_key=True),
    Column("study_name", String(512), nullable=False),
    Column("value_json", Text, nullable=False),
)


def claim(
    url: str,
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    key: str,
    value: dict[str, Any],
) -> dict[str, Any]:
    """Record `value` as the holder of claim `key` of `study` unless some process already
    has: atomically, so of N processes (N machines) claiming at once exactly one gets it.
    Returns the holder's value (== `value`: this process holds the claim)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    if url.startswith(JOURNAL_PREFIX):
        return _claim_file(url, study, study_id, key, value)
    row = {
        "study_id": study_id,
        "key": key,
        "study_name": study.study_name,
        "value_json": json.dumps(value, sort_keys=True),
    }
    with _engine(url) as engine:
        won = True
        try:
            with engine.begin() as connection:
                connection.execute(insert(CLAIMS).values(**row))
        except sqlalchemy.exc.IntegrityError:
            won = False  # another process holds it
        with engine.connect() as connection:
            holder = connection.execute(
                select(CLAIMS.c.value_json).where(
                    CLAIMS.c.study_id == study_id, CLAIMS.c.key == key
                )
            ).scalar_one()
    if won:
        study.set_user_attr(key, value)
    return json.loads(holder)


def release(
    url: str,
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    key: str,
    value: dict[str, Any],
) -> None:
    """Give up a claim this process holds (`value`), so another run can take it: the holder's
    work failed. A claim held by another process is left alone."""
    study_id = storage.get_study_id_from_name(study.study_name)
    if url.startswith(JOURNAL_PREFIX):
        path = _claim_path(url, study, study_id, key)
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if json.loads(path.read_text()) == value:
                path.unlink()
                study.set_user_attr(key, {"released_by": value})
        return
    with _engine(url) as engine, engine.begin() as connection:
        gone = connection.execute(
            delete(CLAIMS).where(
                CLAIMS.c.study_id == study_id,
                CLAIMS.c.key == key,
                CLAIMS.c.value_json == json.dumps(value, sort_keys=True),
            )
        ).rowcount
    if gone:
        study.set_user_attr(key, {"released_by": value})


@contextlib.contextmanager
def _engine(url: str):
    """A short-lived engine on the study's database, with the claims table made."""
    kwargs: dict[str, Any] = {"poolclass": sqlalchemy.pool.NullPool}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # wait for a writer rather than fail
    engine = sqlalchemy.create_engine(url, **kwargs)
    try:
        # Two processes making the table at once: the loser opens again and finds it.
        open_retrying_collisions(lambda: CLAIMS.create(engine, checkfirst=True))
        yield engine
    finally:
        engine.dispose()


def _claim_file(
    url: str, study: optuna.Study, study_id: int, key: str, value: dict[str, Any]
) -> dict[str, Any]:
    path = _claim_path(url, study, study_id, key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        for _ in range(50):  # the holder may be between its open and its write
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(path.read_text())
            time.sleep(0.1)
        raise LabError(f"{path}: unreadable claim file; delete it and run again") from None
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    study.set_user_attr(key, value)
    return value


def _claim_path(url: str, study: optuna.Study, study_id: int, key: str) -> Path:
    """Beside the journal, one per study (a journal holds many) and key."""
    journal = Path(url.removeprefix(JOURNAL_PREFIX).removeprefix("//"))
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{study.study_name}.{study_id}.{key}")
    return journal.with_name(f"{journal.name}.{name}.claim")
