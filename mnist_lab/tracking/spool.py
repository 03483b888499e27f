"""A run's records while its tracking server is away: a durable spool, sent in order.

A run on a tracking server (an `http(s)://` URI) hands every param, tag, metric, artifact and
logged model it records to a `SpoolWriter`. The writer appends the record to the run's spool and
returns at once; a background thread sends the spool's records to the server in order. While the
server is unreachable the records stay in the spool and the thread asks the server's health check
every `RETRY_S` seconds, so training never waits for the server; when it answers again the
records go in the order they were made, metrics with the timestamps and steps they were made
with, so the run on the server ends as it would have without the outage. A local store
(SQLite, PostgreSQL, a folder) is written directly: it does not go away while the process runs.

A spool is the folder `<spool root>/<run id>/` (root: `MNIST_LAB_SPOOL_DIR`, else
`~/.mnist-lab/spool`):

- `run.json`: the run id and the tracking URI its records go to;
- `records.jsonl`: one record a line, append-only, flushed to disk (fsync) before `add`
  returns, so `kill -9` loses nothing that was added;
- `sent.jsonl`: the sequence number of each record the server has; a record is sent once;
- `files/<seq>/<name>`: an artifact's file, or a model's folder (saved by its flavor's
  `save_model`, logged from there: saved_model.py), until the server has it;
- `lock`: held by the one process writing or replaying the spool.

A spool whose records were all sent is deleted. One left behind (the server had not come back
when the run ended, or the process was killed) is sent by `replay_all` (`mnist-lab runs
--sync`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from filelock import FileLock, Timeout
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_lab.errors import LabError
from mnist_lab.tracking.saved_model import log_saved_model

log = logging.getLogger(__name__)

SPOOL_DIR_ENV = "MNIST_LAB_SPOOL_DIR"
STORE_WAIT_ENV = "MNIST_LAB_STORE_WAIT_S"
DEFAULT_STORE_WAIT_S = 900.0  # what a run's end waits for an away server: a restart, an upgrade
RETRY_S = 2.0
BATCH = 100  # MLflow's log_batch takes at most 100 params or tags a call
KINDS = ("params", "tags", "metrics", "artifact", "model", "end")
MODEL_ID_FILE = "model_id"  # beside a spooled model's folder: the logged model made of it


class Client(Protocol):
    """What replaying needs of MlflowClient."""

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None: ...
    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None): ...
    def set_terminated(self, run_id: str, status: str, end_time: int | None = None) -> None: ...
    # A logged model (saved_model.py).
    def get_run(self, run_id: str): ...
    def get_metric_history(self, run_id: str, key: str): ...
    def create_logged_model(self, experiment_id: str, name=None, source_run_id=None, **kw): ...
    def get_logged_model(self, model_id: str): ...
    def log_outputs(self, run_id: str, models: list) -> None: ...
    def log_model_artifacts(self, model_id: str, local_dir: str) -> None: ...
    def finalize_logged_model(self, model_id: str, status): ...


def spool_root() -> Path:
    return Path(os.environ.get(SPOOL_DIR_ENV) or Path.home() / ".mnist-lab" / "spool")


def store_wait_s() -> float:
    """How long a run's end waits for an away tracking server before giving up on it."""
    value = os.environ.get(STORE_WAIT_ENV, "")
    try:
        return float(value) if value else DEFAULT_STORE_WAIT_S
    except ValueError:
        raise ValueError(f"{STORE_WAIT_ENV}={value!r}: give seconds, e.g. 900") from None


def is_remote(uri: str) -> bool:
    """Whether records for `uri` go through a spool: a tracking server, which can go away."""
    return uri.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str  # one of KINDS
    data: dict[str, Any]


class Spool:
    """The spool folder of one run (see the module's docstring). Thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        info = json.loads((folder / "run.json").read_text())
        self.run_id: str = info["run_id"]
        self.tracking_uri: str = info["tracking_uri"]
        self._mutex = threading.Lock()
        self._records = _read_lines(folder / "records.jsonl")
        self._sent = {line["seq"] for line in _read_lines(folder / "sent.jsonl")}

    @classmethod
    def create(cls, root: Path, run_id: str, tracking_uri: str) -> Spool:
        """The run's spool, made if new (a resumed run appends to the one it left)."""
        folder = root / run_id
        try:
            (folder / "files").mkdir(parents=True, exist_ok=True)
            if not (folder / "run.json").exists():
                info = {"run_id": run_id, "tracking_uri": tracking_uri}
                _write_synced(folder / "run.json", info)
        except OSError as err:
            raise LabError(
                f"cannot make the spool of run {run_id} in {folder} ({err.strerror}): set "
                f"{SPOOL_DIR_ENV} to a writable folder on a local disk"
            ) from None
        return cls(folder)

    def lock(self) -> FileLock:
        # Taken by a run's main thread, given back by its sending thread.
        return FileLock(self.folder / "lock", thread_local=False)

    def add(self, kind: str, data: dict[str, Any], file: Path | None = None) -> Record:
        """Append a record, durably; `file` (an artifact's file, a model's folder) is moved
        into the spool first."""
        if kind not in KINDS:
            raise ValueError(f"unknown spool record kind {kind!r}")
        with self._mutex:
            seq = self._records[-1]["seq"] + 1 if self._records else 0
            if file is not None:
                target = self.folder / "files" / str(seq) / file.name
                shutil.rmtree(target.parent, ignore_errors=True)  # a kill's half-moved file
                target.parent.mkdir(parents=True)
                shutil.move(file, target)
                _fsync_tree(target)
            line = {"seq": seq, "kind": kind, "data": data}
            _append_synced(self.folder / "records.jsonl", line)
            self._records.append(line)
        return Record(seq, kind, data)

    def pending(self) -> list[Record]:
        with self._mutex:
            return [
                Record(r["seq"], r["kind"], r["data"])
                for r in self._records
                if r["seq"] not in self._sent
            ]

    def mark_sent(self, record: Record) -> None:
        with self._mutex:
            _append_synced(self.folder / "sent.jsonl", {"seq": record.seq})
            self._sent.add(record.seq)
        shutil.rmtree(self.folder / "files" / str(record.seq), ignore_errors=True)

    def file_of(self, record: Record) -> Path:
        return self.folder / "files" / str(record.seq) / record.data["name"]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def send(client: Client, run_id: str, spool: Spool, record: Record) -> None:
    """Send one record to the store; the same call whether it is sent at once or replayed."""
    data = record.data
    if record.kind == "metrics":
        metrics = [Metric(k, v, data["timestamp"], data["step"]) for k, v in data["values"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif record.kind in ("params", "tags"):
        kind = Param if record.kind == "params" else RunTag
        items = [kind(k, v) for k, v in data["values"].items()]
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            client.log_batch(run_id, **{record.kind: chunk})
    elif record.kind == "artifact":
        client.log_artifact(run_id, str(spool.file_of(record)), data["dir"])
    elif record.kind == "model":
        made = spool.file_of(record).with_name(MODEL_ID_FILE)
        log_saved_model(client, run_id, spool.file_of(record), data["name"], made)
    else:  # "end"
        client.set_terminated(run_id, data["status"], data["end_time"])


def permanent(err: Exception) -> bool:
    """Whether the server refused a record (a bad value, a deleted run): sending it again will
    not help. Anything else (no answer, a timeout, a 5xx) is an outage, and is retried."""
    return isinstance(err, MlflowException) and 400 <= err.get_http_status_code() < 500


def send_pending(client: Client, spool: Spool) -> int:
    """Send the spool's unsent records in order, each once; the number sent. Stops at the
    first failure, raising it, with the failed record and those after it still pending."""
    count = 0
    for record in spool.pending():
        send(client, spool.run_id, spool, record)
        spool.mark_sent(record)
        count += 1
    return count


class SpoolWriter:
    """Where a run on a tracking server records everything: `add` spools and returns at once;
    a daemon thread sends in order and retries while the server is away."""

    def __init__(
        self,
        spool: Spool,
        client: Client,
        retry_s: float = RETRY_S,
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        self.spool, self.client, self.retry_s = spool, client, retry_s
        self.probe = probe or answers
        self.away_since: float | None = None
        self.error: Exception | None = None  # a record the server refused
        self._lock = spool.lock()
        self._lock.acquire(timeout=0)  # a second writer of one run would send twice
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mlflow-spool", daemon=True)
        self._thread.start()

    def add(self, kind: str, data: dict[str, Any], file: Path | None = None) -> None:
        if self.error is not None:
            raise self.error
        self.spool.add(kind, data, file)
        self._wake.set()

    def wait_sent(self, timeout: float) -> bool:
        """Wait up to `timeout` s until the server has every record; whether it has."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.spool.pending() and self.error is None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 1.0))
        if self.error is not None:
            raise self.error
        return not self.spool.pending()

    def close(self, timeout: float) -> bool:
        """Send what is left (waiting up to `timeout` s), stop the thread and let go of the
        spool; deleted if everything was sent. Whether everything was sent."""
        try:
            sent = self.wait_sent(timeout)
        finally:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=1.0)
        if sent and not self._thread.is_alive():  # its exit let go of the spool
            self.spool.remove()
        return sent

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(self.retry_s if self.away_since is not None else None)
                self._wake.clear()
                if self._stop.is_set():
                    break
                self._flush()
        finally:  # also where a call outlived `close`: the spool is free once it returns
            self._lock.release()

    def _flush(self) -> None:
        if self.away_since is not None and not self.probe(self.spool.tracking_uri):
            return  # a cheap probe: MLflow's own call would spend its retries (minutes) failing
        try:
            count = send_pending(self.client, self.spool)
        except Exception as err:
            if permanent(err):
                self.error = err
                self._stop.set()
            elif self.away_since is None:
                self.away_since = time.monotonic()
                log.warning(
                    "tracking server %s did not answer (%s): run %s records to %s until it does; "
                    "training goes on",
                    self.spool.tracking_uri,
                    _short(err),
                    self.spool.run_id,
                    self.spool.folder,
                )
        else:
            if self.away_since is not None:
                log.warning(
                    "tracking server %s is back after %.0f s: sent %d spooled record(s) of run %s",
                    self.spool.tracking_uri,
                    time.monotonic() - self.away_since,
                    count,
                    self.spool.run_id,
                )
                self.away_since = None
        with self._idle:
            self._idle.notify_all()


@dataclass(frozen=True)
class Replayed:
    run_id: str
    tracking_uri: str
    sent: int
    error: str | None  # why it is still pending, or None when all was sent


def spools(root: Path | None = None) -> list[Spool]:
    """Every spool under `root` (default: `spool_root()`), oldest first."""
    root = root or spool_root()
    folders = [f for f in root.iterdir() if (f / "run.json").is_file()] if root.is_dir() else []
    return [Spool(f) for f in sorted(folders, key=lambda f: f.stat().st_mtime)]


def replay_all(make_client=MlflowClient, root: Path | None = None) -> list[Replayed]:
    """Send every spool's pending records to its own tracking server (`make_client(uri)`), in
    order and once each; a spool all sent is deleted. A spool another process holds (a run
    still going) is left to it."""
    results = []
    for spool in spools(root):
        lock = spool.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            results.append(Replayed(spool.run_id, spool.tracking_uri, 0, "a live process holds it"))
            continue
        try:
            sent, error = 0, None
            try:
                for record in spool.pending():
                    send(make_client(spool.tracking_uri), spool.run_id, spool, record)
                    spool.mark_sent(record)
                    sent += 1
            except Exception as err:
                error = _short(err)
            results.append(Replayed(spool.run_id, spool.tracking_uri, sent, error))
        finally:
            lock.release()
        if error is None:
            spool.remove()
    return results


@contextlib.contextmanager
def fail_fast(timeout_s: int = 5) -> Iterator[None]:
    """MLflow HTTP calls in this block try once, for at most `timeout_s` s (MLflow's documented
    `MLFLOW_HTTP_REQUEST_MAX_RETRIES` / `_TIMEOUT`; process-wide while it lasts)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def answers(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    """Whether the tracking server answers its health check within `timeout_s`."""
    try:
        return requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a JSON-lines file; a torn last line (a kill mid-write) is cut off."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        with path.open("r+b") as f:
            f.truncate(len(whole))
    return [json.loads(line) for line in whole.decode().splitlines() if line.strip()]


def _append_synced(path: Path, line: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(line, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_synced(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    _fsync(tmp)
    tmp.replace(path)


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_tree(path: Path) -> None:
    """fsync a file, or a folder with everything in it."""
    for item in [path, *path.rglob("*")]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
