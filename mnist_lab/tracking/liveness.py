"""Which RUNNING runs have no process behind them any more, and ending them KILLED.

Every run our code starts or joins records the process that holds it (tags `process.host`,
`process.machine`, `process.pid`, `process.started`) and a heartbeat (`process.heartbeat`,
seconds since the epoch) that a thread refreshes every `HEARTBEAT_S` while the run is open.
A RUNNING run is stale when

- it was started on this machine (same boot and pid namespace: pids mean the same thing here)
  and its pid is gone, or now belongs to a process that started at another time (a reused pid);
- or, from any machine, its heartbeat is older than `STALE_AFTER_S` (a lost machine stops
  beating; a live one beats 15 times in that window, so a slow store or a busy CPU is not
  mistaken for death).

A run without these tags (one `mlflow run` created before our code joined it, or one logged
by an older version) is never judged: only a provably gone process ends a run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunStatus, ViewType
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.tracking.store import store_client

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0
STALE_AFTER_S = 15 * 60.0


@dataclass(frozen=True)
class Machine:
    """Where pids are comparable: one boot of one kernel, one pid namespace."""

    host: str
    key: str  # "<boot id>/<pid namespace>", or "" where /proc does not say (then: heartbeat only)


def this_machine() -> Machine:
    key = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        key = f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    return Machine(socket.gethostname(), key)


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), or None if there is none.

    Where /proc is missing the answer is "alive, start unknown" ("?") when the pid exists.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no such process, or /proc hides it (hidepid) or is absent: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def process_tags() -> dict[str, str]:
    """Tags naming this process as the holder of a run, with a fresh heartbeat."""
    machine, pid = this_machine(), os.getpid()
    return {
        names.TAG_PROCESS_HOST: machine.host,
        names.TAG_PROCESS_MACHINE: machine.key,
        names.TAG_PROCESS_PID: str(pid),
        names.TAG_PROCESS_STARTED: process_start(pid) or "?",
        names.TAG_PROCESS_HEARTBEAT: f"{time.time():.0f}",
    }


def last_heartbeat(tags: dict[str, str]) -> float | None:
    """A run's last heartbeat (seconds since the epoch), or None when it has none readable."""
    try:
        beat = float(tags.get(names.TAG_PROCESS_HEARTBEAT, ""))
    except ValueError:
        return None
    return beat if math.isfinite(beat) else None


def why_stale(tags: dict[str, str], now: float, here: Machine) -> str | None:
    """Why a RUNNING run with these tags has no live process, or None if it may have one."""
    pid, host = tags.get(names.TAG_PROCESS_PID), tags.get(names.TAG_PROCESS_HOST, "?")
    if not pid or not pid.isdigit():
        return None
    if here.key and tags.get(names.TAG_PROCESS_MACHINE) == here.key:
        started = process_start(int(pid))
        if started is None:
            return f"its process (pid {pid} on {host}) is gone"
        recorded = tags.get(names.TAG_PROCESS_STARTED, "?")
        if "?" not in (started, recorded) and started != recorded:
            return f"its process (pid {pid} on {host}) is gone; the pid now belongs to another"
        return None
    beat = last_heartbeat(tags)
    if beat is None:
        return None
    if now - beat > STALE_AFTER_S:
        return f"no heartbeat from pid {pid} on {host} for {(now - beat) / 60:.0f} min"
    return None


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    experiment_id: str
    run_name: str
    reason: str
    last_seen: float | None  # the last heartbeat, seconds since the epoch


def stale_runs(client: MlflowClient | None = None) -> list[StaleRun]:
    """Every RUNNING run of the store, in any active experiment, whose process is gone."""
    client = client or store_client()
    experiments = [e.experiment_id for e in client.search_experiments(ViewType.ACTIVE_ONLY)]
    here, now, found, token = this_machine(), time.time(), [], None
    while experiments:
        page = client.search_runs(
            experiments,
            "attributes.status = 'RUNNING'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            reason = why_stale(tags, now, here)
            if reason:
                info = run.info
                found.append(
                    StaleRun(
                        info.run_id, info.experiment_id, info.run_name, reason, last_heartbeat(tags)
                    )
                )
        token = page.token
        if not token:
            break
    return found


def end_stale(runs: list[StaleRun], client: MlflowClient | None = None) -> None:
    """End each run KILLED with a `failure_reason`, at its last heartbeat where known."""
    client = client or store_client()
    machine = this_machine()
    for run in runs:
        now = client.get_run(run.run_id)
        if now.info.status != "RUNNING" or not why_stale(now.data.tags, time.time(), machine):
            continue  # ended, or resumed by a live process, since it was listed
        reason = f"stale: {run.reason}; ended by pid {os.getpid()} on {machine.host}"
        client.set_tag(run.run_id, names.TAG_FAILURE_REASON, reason)
        end = int(run.last_seen * 1000) if run.last_seen else None
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED), end)


def sweep_stale_runs(keep: str | None = None) -> list[StaleRun]:
    """End every stale run of the store but `keep` (a run being resumed) KILLED: what every
    top-level run (train, tune, benchmark, ...) does first."""
    try:
        runs = [r for r in stale_runs() if r.run_id != keep]
        end_stale(runs)
    except Exception as err:  # housekeeping: a store that refuses (auth, a hiccup) stops nothing
        log.warning("could not check the store for stale runs: %s", err)
        return []
    if runs:
        log.warning(
            "ended %d stale run(s) KILLED (their process is gone): %s",
            len(runs),
            ", ".join(f"{r.run_id} ({r.reason})" for r in runs),
        )
    return runs


class Heartbeat:
    """A daemon thread that refreshes a run's heartbeat tag every `interval` seconds."""

    def __init__(self, run_id: str, interval: float = HEARTBEAT_S) -> None:
        self.run_id, self.interval = run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        client = store_client()
        while not self._stop.wait(self.interval):
            try:
                client.set_tag(self.run_id, names.TAG_PROCESS_HEARTBEAT, f"{time.time():.0f}")
            except Exception as err:  # a store hiccup must not end the run; the next beat retries
                log.debug("heartbeat of run %s failed: %s", self.run_id, err)
