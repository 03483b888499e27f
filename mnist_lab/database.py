"""Databases MLflow and Optuna share between processes: a URL safe to show, and opening one
whose tables another process may be creating at the same moment.

MLflow and Optuna create their tables the first time a process opens a fresh database. Two
processes doing that together (two machines starting `tune` on one new PostgreSQL database)
collide: one's CREATE wins, the other's fails with a unique violation or "already exists".
PostgreSQL rolls the loser's DDL back, so opening again finds the tables made. (SQLite has no
such rollback for MLflow's migrations; tracking/store.py locks instead.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy

ATTEMPTS = 3
T = TypeVar("T")


def redact(url: str) -> str:
    """`url` without user name and password: safe for tags, logs and error messages."""
    return re.sub(r"(://)[^/@]*@", r"\1", url)


def open_retrying_collisions(open_database: Callable[[], T]) -> T:
    """`open_database()`, called again (up to ATTEMPTS in all) while it fails because another
    process was creating the same tables; any other error is raised at once."""
    for attempt in range(1, ATTEMPTS):
        try:
            return open_database()
        except sqlalchemy.exc.DBAPIError as err:
            if not collided(err):
                raise
            time.sleep(attempt)
    return open_database()


def collided(err: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether `err` is another process's CREATE of the same table or type winning."""
    return isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in str(err)
