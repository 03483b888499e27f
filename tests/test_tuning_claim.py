"""The once-only retrain claim (tuning/claim.py): public Optuna APIs only, a claim never
overwritten, exactly one winner among threads and processes, on files and on PostgreSQL."""

import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from tuning_helpers import (
    DATA_FLAGS,
    all_runs,
)

from mnist_lab import names
from mnist_lab.config import PROJECT_ROOT
from mnist_lab.tuning.claim import claim, release
from mnist_lab.tuning.space import load_space
from mnist_lab.tuning.study import open_storage, open_study


def _claim_race(url: str, space: Path, claimants: int = 8) -> list[tuple[int, dict]]:
    """`claimants` threads, each with its own storage (its own database connections or file
    handle), claim "retrain" at the same instant."""
    open_study(open_storage(url), "claimed", load_space("cnn", space), {})
    studies = []
    for _ in range(claimants):
        storage = open_storage(url)
        studies.append((storage, optuna.load_study(study_name="claimed", storage=storage)))
    barrier = threading.Barrier(claimants)

    def claimant(me: int) -> tuple[int, dict]:
        storage, study = studies[me]
        barrier.wait()
        return me, claim(url, storage, study, "retrain:full:2", {"pid": me})

    with ThreadPoolExecutor(claimants) as pool:
        return list(pool.map(claimant, range(claimants)))


def _exactly_one_holds(results: list[tuple[int, dict]]) -> None:
    winners = [me for me, holder in results if holder == {"pid": me}]
    assert len(winners) == 1, results
    assert all(holder == {"pid": winners[0]} for _, holder in results)  # everyone knows who


def _file_storage(kind: str, folder: Path) -> str:
    return {
        "sqlite": f"sqlite:///{folder / 'optuna.db'}",
        "journal": f"journal:{folder / 'j.log'}",
    }[kind]


def test_only_public_optuna_apis():
    """A minor Optuna release may change its private modules and attributes: none is used
    (`storage.get_study_id_from_name` is a public storage method; `study._study_id` is not)."""
    private = re.compile(r"optuna\.storages\._|_rdb\b|(?<![A-Za-z0-9])_(study|trial)_id\b")
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sorted((PROJECT_ROOT / "mnist_lab").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not found


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_claim_never_overwrites_the_holder(tmp_path, space, kind):
    """What makes it a claim and not Optuna's set_user_attr (an upsert: the last one wins)."""
    url = _file_storage(kind, tmp_path)
    storage = open_storage(url)
    study = open_study(storage, "claimed", load_space("cnn", space), {})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 1}) == {"pid": 1}
    assert claim(url, storage, study, "retrain:full:2", {"pid": 2}) == {"pid": 1}
    again = optuna.load_study(study_name="claimed", storage=open_storage(url))
    assert again.user_attrs["retrain:full:2"] == {"pid": 1}
    # A failed retrain gives its claim back (only its holder can), and the next one takes it.
    release(url, storage, study, "retrain:full:2", {"pid": 2})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 3}) == {"pid": 1}
    release(url, storage, study, "retrain:full:2", {"pid": 1})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 3}) == {"pid": 3}
    # Another study of the same storage (a journal holds many) has claims of its own.
    other = open_study(storage, "other", load_space("cnn", space), {})
    assert claim(url, storage, other, "retrain:full:2", {"pid": 4}) == {"pid": 4}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_exactly_one_process_wins_a_claim(tmp_path, space, kind):
    _exactly_one_holds(_claim_race(_file_storage(kind, tmp_path), space))


@pytest.mark.postgres
def test_exactly_one_process_wins_a_claim_on_postgresql(postgres_db, space):
    _exactly_one_holds(_claim_race(postgres_db(), space))


@pytest.mark.slow
@pytest.mark.postgres
def test_two_tune_processes_sharing_a_study_retrain_it_once(
    mnist_dir, postgres_db, mlflow_server, tmp_path, space
):
    """The README's multi-machine recipe on one machine: two `tune` on one PostgreSQL study and
    one `mlflow server`. Exactly one retrains; the other says which tune run holds it."""
    storage = postgres_db()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "mnist_lab", "tune", "--space", str(space), *DATA_FLAGS]
    command += ["--storage", storage, "--n-trials", "4", "--retrain", "subset"]
    command += ["--pruner", "none", "--study-name", "shared"]
    tunes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [t.communicate(timeout=600)[0] for t in tunes]
    assert [t.returncode for t in tunes] == [0, 0], "\n=====\n".join(outputs)[-6000:]
    retrains = [r for r in all_runs() if r.data.tags.get(names.TAG_TUNE_RUN_ID)]
    assert len(retrains) == 1, outputs
    said = "\n".join(outputs)
    assert said.count("retrained as run") == 1, said
    held = retrains[0].data.tags[names.TAG_TUNE_RUN_ID]
    assert said.count("not retrained here") == 1, said  # "held by tune run …" or "still running"
    assert held in said
    # Both started the study; one enqueued the defaults (the claim `defaults_trial`).
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [t.number for t in trials if t.user_attrs.get("defaults_trial")] == [0], said
