"""Writing runs: a run's lifecycle, its params, metrics, tags and artifacts, and the runs of
tuning trials.

Where runs land follows MLflow's own rules: `MLFLOW_TRACKING_URI` if set, else MLflow's default
(`sqlite:///mlflow.db`, artifacts in `./mlruns/`); `MLFLOW_EXPERIMENT_NAME`/`_ID` if set, else the
experiment `mnist-lab`; an active `MLFLOW_RUN_ID` (set by `mlflow run`) is joined, not duplicated.
A run that raises is ended FAILED (KILLED on Ctrl-C) with a `failure_reason` tag: never left
RUNNING.

On a tracking server, a run's params, tags, metrics, artifacts and logged models go through its
spool (spool.py): recorded at once, sent in order, kept while the server is away. What the spool
does not hold (a run's datasets, tables) waits for the server (`await_store`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib.figure
import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from filelock import Timeout
from mlflow.entities import RunStatus

from mnist_lab import names
from mnist_lab.config import PROJECT_ROOT, TrainConfig
from mnist_lab.data.mnist import SplitRecord
from mnist_lab.engine.device import machine_name, precision
from mnist_lab.errors import LabError, StoreUnreachable
from mnist_lab.names import IMAGE_SIZE
from mnist_lab.tracking import spool
from mnist_lab.tracking.liveness import Heartbeat, process_tags, sweep_stale_runs
from mnist_lab.tracking.spool import (
    RETRY_S,
    STORE_WAIT_ENV,
    Spool,
    SpoolWriter,
    fail_fast,
    is_remote,
    send_pending,
    spool_root,
    store_wait_s,
)
from mnist_lab.tracking.store import open_store, store_client

log = logging.getLogger(__name__)
MAX_TAG_LENGTH = 4000
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The spool writer of each open run on a tracking server, by run id.
_writers: dict[str, SpoolWriter] = {}
# MLflow's system tags, as its docs name them (https://mlflow.org/docs/latest/ml/tracking/
# tracking-api/#system-tags): a run's name and the parent of a nested run.
RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
# The shape of a name MLflow makes up for an unnamed run: adjective-noun-number (0 to 1000).
GENERATED_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,4}")


def use_default_experiment() -> None:
    """Select `mnist-lab` unless the environment or an active `mlflow run` chose one."""
    chosen = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    if not any(os.environ.get(var) for var in chosen):
        mlflow.set_experiment(names.DEFAULT_EXPERIMENT)


def run_tags(config: TrainConfig, device: torch.device) -> dict[str, str]:
    """Tags every training run carries: what it trained, where, with what code."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    config_name = {names.TAG_CONFIG: Path(config.config_file).name} if config.config_file else {}
    return {
        names.TAG_MODEL: config.model,
        **config_name,
        names.TAG_KIND: "train",
        names.TAG_DEVICE: device_name,
        names.TAG_MACHINE: machine_name(device),
        names.TAG_PRECISION: precision(device, config.amp),
        names.TAG_TORCH_VERSION: torch.__version__,
        names.TAG_GIT_COMMIT: git_commit(),
    }


def run_params(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Params every training run logs: its settings and the precision it trains in on this
    device (what `amp` means depends on the hardware, so runs in bf16 and in fp32 are two
    configurations, not one)."""
    return {**config.to_params(), names.PARAM_PRECISION: precision(device, config.amp)}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


@contextlib.contextmanager
def run(
    *,
    run_id: str | None = None,
    nested: bool = False,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with `run_id` or `MLFLOW_RUN_ID`, re-open) a run and always end it.

    `run_name` names a new run, and a joined `mlflow run` run that has MLflow's random
    adjective-animal name; a name the user gave is kept.

    Exit by exception ends the run FAILED with a `failure_reason` tag; Ctrl-C ends it KILLED.
    Either way the exception propagates. While open, the run names its process and beats
    (liveness.py); a top-level run first ends the store's stale runs KILLED.
    """
    open_store()
    use_default_experiment()
    joined = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not nested:
        sweep_stale_runs(keep=joined)
    if joined and run_name and not _generated_name(store_client().get_run(joined).info.run_name):
        run_name = None  # a run resumed or started by `mlflow run --run-name` keeps its name
    active = mlflow.start_run(
        run_id=run_id,
        nested=nested,
        run_name=run_name,
        tags=tags,
        log_system_metrics=system_metrics and _can_monitor(),  # a thread; end_run stops it
    )
    mark_model_development(active.info.experiment_id)
    run_id = active.info.run_id
    uri = mlflow.get_tracking_uri()
    try:
        if is_remote(uri):
            _writers[run_id] = SpoolWriter(Spool.create(spool_root(), run_id, uri), store_client())
        set_tags(process_tags())
        with Heartbeat(run_id):
            yield active
    except KeyboardInterrupt:
        _end(run_id, RunStatus.KILLED, "interrupted by the user (Ctrl-C)", failing=True)
        raise
    except BaseException as err:
        # A run that already waited for its server and gave up does not wait again.
        wait = 0.0 if isinstance(err, StoreUnreachable) else None
        _end(run_id, RunStatus.FAILED, f"{type(err).__name__}: {err}", failing=True, wait=wait)
        raise
    else:
        _end(run_id, RunStatus.FINISHED)


@functools.cache
def _can_monitor() -> bool:
    """Whether MLflow's system metrics can run here: it raises without psutil (a pinned
    dependency, so missing only from an environment installed by hand)."""
    if importlib.util.find_spec("psutil") is None:
        log.warning("no system metrics: psutil is not installed (pip install psutil)")
        return False
    return True


def _generated_name(name: str | None) -> bool:
    """Whether `name` is one MLflow made up (`bright-owl-123`: two lowercase words and a
    number), not one a user chose. The lab names its own runs `<model>-<n>ep…`, with a digit
    in the second part, so they never look made up; a user's name of that shape would."""
    return not name or GENERATED_NAME.fullmatch(name) is not None


def mark_model_development(experiment_id: str) -> None:
    """Tag the experiment as model development (once), so MLflow 3's UI opens it in the
    model-training view rather than the GenAI one."""
    client = store_client()
    if EXPERIMENT_KIND_TAG in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException:
        # Another process (a second machine's `tune`) tagged it between our read and write;
        # a tracking server on PostgreSQL refuses the second INSERT. Anything else: say so.
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
            raise


def _end(
    run_id: str,
    status: int,
    reason: str | None = None,
    failing: bool = False,
    wait: float | None = None,
) -> None:
    """End the active run with `status`, even when the error came from MLflow itself.

    A spooled run's end is its last record; the run waits up to `wait` s (default
    `store_wait_s()`) for an away server to take the spool. If it does not, the spool stays for
    `mnist-lab runs --sync`, and a run that was `failing` anyway keeps its own error (and does
    not wait for a server known to be away); any other raises StoreUnreachable.
    """
    name = RunStatus.to_string(status)
    writer = _writers.pop(run_id, None)
    if writer is not None and failing and writer.away_since is not None:
        wait = 0.0  # a failing or interrupted run does not wait for an away server
    if writer is not None:
        try:
            if reason:
                writer.add("tags", {"values": {names.TAG_FAILURE_REASON: reason[:MAX_TAG_LENGTH]}})
            writer.add("end", {"status": name, "end_time": int(time.time() * 1000)})
            sent = writer.close(store_wait_s() if wait is None else wait)
        except Exception as err:  # the server refused a record: end the run directly
            with contextlib.suppress(Exception):
                writer.close(0)
            reason = reason or f"{type(err).__name__}: {err}"
            name = RunStatus.to_string(RunStatus.FAILED)
        else:
            if not sent:
                with fail_fast(), contextlib.suppress(Exception):
                    mlflow.end_run(name)  # the process's active run only; the spool ends it later
                message = unreachable_message(writer.spool, "ended")
                if failing:
                    log.error("%s", message)
                    return
                raise StoreUnreachable(message)
            mlflow.end_run(name)  # the server has the end already: this one only closes it here
            return
    if reason:
        with contextlib.suppress(Exception):
            store_client().set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
    mlflow.end_run(name)


def unreachable_message(spool: Spool, what: str) -> str:
    return (
        f"the tracking server {spool.tracking_uri} did not answer for {store_wait_s():.0f} s "
        f"({STORE_WAIT_ENV} sets how long a run waits): run {spool.run_id} {what} with "
        f"{len(spool.pending())} "
        f"record(s) not yet on the server, kept in {spool.folder}; once the server answers, "
        "send them with `mnist-lab runs --sync`"
    )


def await_store() -> None:
    """Before a record the spool cannot hold (a logged model, datasets, a table): wait until
    the active run's server has every spooled record, up to `store_wait_s()`; else a
    StoreUnreachable naming the spool. Immediate for a local store or a server that answers."""
    run = mlflow.active_run()
    writer = _writers.get(run.info.run_id) if run else None
    if writer is not None and not writer.wait_sent(store_wait_s()):
        raise StoreUnreachable(unreachable_message(writer.spool, "could not go on"))


def server_answers() -> bool:
    """Whether the tracking store can be written now: always for a local store."""
    uri = mlflow.get_tracking_uri()
    return not is_remote(uri) or spool.answers(uri)


def await_server(what: str, wait: float | None = None) -> None:
    """Before `what` writes to a tracking server directly (a trial's run, which the server
    makes and names; a trial's state): wait while the server does not answer, up to `wait` s
    (default `store_wait_s()`), saying once why; else a StoreUnreachable. Immediate for a
    local store or a server that answers."""
    if server_answers():
        return
    uri = mlflow.get_tracking_uri()
    wait = store_wait_s() if wait is None else wait
    if wait > 0:
        log.warning(
            "tracking server %s did not answer: %s waits for it, up to %.0f s (%s)",
            uri,
            what,
            wait,
            STORE_WAIT_ENV,
        )
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(RETRY_S, left))
        if spool.answers(uri):
            log.warning("tracking server %s is back: %s goes on", uri, what)
            return
    raise StoreUnreachable(
        f"the tracking server {uri} did not answer for {wait:.0f} s ({STORE_WAIT_ENV} sets how "
        f"long to wait): {what} could not go on; once the server answers, send what runs "
        "spooled with `mnist-lab runs --sync`, and run the same command again to go on"
    )


def send_left_spool(run_id: str, wait: float | None = None) -> None:
    """Send what run `run_id` left in its spool when it ended while its server was away (a run
    that fails or is pruned does not wait at its end), waiting for the server up to `wait` s
    (default `store_wait_s()`); else a StoreUnreachable naming the spool. Immediate when the
    run left nothing."""
    folder = spool_root() / run_id
    if not (folder / "run.json").is_file():
        return
    left = Spool(folder)
    wait = store_wait_s() if wait is None else wait
    deadline, said = time.monotonic() + wait, False
    try:
        lock = left.lock().acquire(timeout=10)  # its run's sending thread lets go in seconds
    except Timeout:
        raise StoreUnreachable(unreachable_message(left, "ended")) from None
    with lock:
        while left.pending():
            if spool.answers(left.tracking_uri):
                try:
                    send_pending(store_client(), left)
                    continue
                except Exception as err:
                    if spool.permanent(err):
                        raise
            if time.monotonic() >= deadline:
                raise StoreUnreachable(unreachable_message(left, "ended"))
            if not said:
                log.warning(
                    "tracking server %s did not answer: run %s's spooled records wait for it, "
                    "up to %.0f s (%s)",
                    left.tracking_uri,
                    run_id,
                    wait,
                    STORE_WAIT_ENV,
                )
                said = True
            time.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
    left.remove()


def fail_spooled_run(run_id: str, reason: str, tags: dict[str, Any]) -> bool:
    """End FAILED, with `reason` and `tags`, a run that ended with records still in its spool
    (its server was away): these records go after the others, by `runs --sync`. Whether the
    run has such a spool."""
    folder = spool_root() / run_id
    if not (folder / "run.json").is_file():
        return False
    values = {
        k: str(v)[:MAX_TAG_LENGTH] for k, v in {**tags, names.TAG_FAILURE_REASON: reason}.items()
    }
    left = Spool(folder)
    left.add("tags", {"values": values})
    left.add("end", {"status": "FAILED", "end_time": int(time.time() * 1000)})
    return True


def _writer(run_id: str | None = None) -> SpoolWriter | None:
    """The spool writer of `run_id` (default: the active run), or None: write directly."""
    if run_id is None:
        run = mlflow.active_run()
        run_id = run.info.run_id if run else None
    return _writers.get(run_id) if run_id else None


def _spool_file(writer: SpoolWriter, path: Path, artifact_dir: str | None) -> None:
    """Hand the file at `path` (moved: a temporary one) to the spool as an artifact."""
    writer.add("artifact", {"name": path.name, "dir": artifact_dir}, file=path)


@contextlib.contextmanager
def _artifact_file(artifact_file: str) -> Iterator[Path]:
    """A temporary file named as `artifact_file`'s last part, gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="mnist-lab-artifact-") as folder:
        yield Path(folder) / Path(artifact_file).name


def _parent(artifact_file: str) -> str | None:
    parent = Path(artifact_file).parent.as_posix()
    return None if parent == "." else parent


def fail_launcher_run(reason: str, killed: bool = False) -> None:
    """End the run `mlflow run` created (`MLFLOW_RUN_ID`) if our code failed before joining it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    with contextlib.suppress(Exception):  # the store itself may be what failed
        client = store_client()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
            status = RunStatus.KILLED if killed else RunStatus.FAILED
            client.set_terminated(run_id, RunStatus.to_string(status))


def log_params(params: dict[str, Any]) -> None:
    """Log `params`, skipping those the launcher (`mlflow run -P`) already logged equivalently.

    `mlflow run` logs its -P values as typed ("1e-3", "true") before our code starts, and MLflow
    forbids changing a param; an equivalent value ("0.001", "True") is the same setting.
    """
    existing = mlflow.get_run(active_run_id()).data.params
    fresh = {}
    for key, value in params.items():
        if key not in existing:
            fresh[key] = "None" if value is None else value
        elif not _same_param(existing[key], value):
            raise LabError(
                f"parameter {key}: the run already has {key}={existing[key]!r} but the resolved "
                f"config says {value!r}; start a new run rather than reusing this one"
            )
    writer = _writer()
    if writer is None:
        mlflow.log_params(fresh)
    elif fresh:
        writer.add("params", {"values": {k: str(v) for k, v in fresh.items()}})


def _same_param(logged: str, value: Any) -> bool:
    if logged == str(value) or (value is None and logged.lower() in ("", "none", "null")):
        return True
    if isinstance(value, bool):
        return logged.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    try:
        return float(logged) == float(value)
    except (TypeError, ValueError):
        return False


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def log_datasets(records: list[SplitRecord], source: Path, tags: dict[str, Any]) -> None:
    """Each split as a run input, so MLflow's Datasets column tells runs on other data apart:
    named `mnist-<split>`, the digest of its bytes, the IDX folder as source; its size and
    `tags` (the subset options) as input tags."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types import Schema, TensorSpec

    await_store()
    schema = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, IMAGE_SIZE, IMAGE_SIZE), "image"),
            TensorSpec(np.dtype(np.int64), (-1,), "label"),
        ]
    )
    datasets = [
        MetaDataset(LocalArtifactDatasetSource(str(source)), f"mnist-{r.split}", r.digest, schema)
        for r in records
    ]
    mlflow.log_inputs(
        datasets,
        contexts=[SPLIT_CONTEXTS[r.split] for r in records],
        tags_list=[{"size": str(r.size), **{k: str(v) for k, v in tags.items()}} for r in records],
    )


def set_tags(tags: dict[str, Any]) -> None:
    values = {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}
    writer = _writer()
    if writer is None:
        mlflow.set_tags(values)
    else:
        writer.add("tags", {"values": values})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Sent at once to a local store. Runs log a few times an epoch, a write of milliseconds;
    MLflow's async queue would cost a second at every run's end (its thread polls in one-second
    waits). A tracking server gets them through the run's spool, with their time and step."""
    writer = _writer()
    if writer is None:
        mlflow.log_metrics(metrics, step=step)
        return
    values = {k: float(v) for k, v in metrics.items()}
    writer.add(
        "metrics", {"values": values, "timestamp": int(time.time() * 1000), "step": step or 0}
    )


def log_figure(figure: matplotlib.figure.Figure, artifact_file: str) -> None:
    writer = _writer()
    if writer is None:
        mlflow.log_figure(figure, artifact_file)
        return
    with _artifact_file(artifact_file) as path:
        figure.savefig(path)
        _spool_file(writer, path, _parent(artifact_file))


def log_dict(data: dict[str, Any], artifact_file: str) -> None:
    """Written as MLflow's `log_dict` writes it: YAML for .yml/.yaml, else JSON."""
    writer = _writer()
    if writer is None:
        mlflow.log_dict(data, artifact_file)
        return
    with _artifact_file(artifact_file) as path:
        with path.open("w") as f:
            if path.suffix in (".yml", ".yaml"):
                yaml.dump(data, f, indent=2, default_flow_style=False)
            else:
                json.dump(data, f, indent=2, default=str)
        _spool_file(writer, path, _parent(artifact_file))


def log_table(rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A table artifact (MLflow's JSON table format, shown as a table in the UI): one row per
    dict, the first row's keys as the columns."""
    columns = list(rows[0]) if rows else []
    await_store()
    mlflow.log_table({c: [row.get(c) for row in rows] for c in columns}, artifact_file)


def log_flavor_model(flavor: ModuleType, name: str, **options: Any) -> str:
    """Log a model as the active run's `name` with MLflow `flavor` (mlflow.pyfunc, mlflow.onnx),
    `options` being its `save_model`'s; returns the model's URI. A local store gets it at once
    (`flavor.log_model`). On a tracking server it is saved into the run's spool
    (`flavor.save_model`) and logged from there in order with the run's other records
    (saved_model.py), so a server away at the run's end costs it neither time nor its model."""
    writer = _writer()
    if writer is None:
        return flavor.log_model(name=name, **options).model_uri
    with tempfile.TemporaryDirectory(prefix="mnist-lab-model-") as folder:
        saved = Path(folder) / name
        flavor.save_model(path=str(saved), **options)
        writer.add("model", {"name": name}, file=saved)
    if config := options.get("model_config"):  # what `log_model` logs as the run's params
        writer.add("params", {"values": {k: str(v) for k, v in config.items()}})
    return f"runs:/{active_run_id()}/{name}"


def log_run_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Metrics for a run other than the active one: one that has ended (a trial's
    measurements after training), or a parent still open here (a study's confirmation after
    its retrain), which records them through its spool."""
    if writer := _writer(run_id):
        values = {k: float(v) for k, v in metrics.items()}
        writer.add("metrics", {"values": values, "timestamp": int(time.time() * 1000), "step": 0})
        return
    store_client().log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
            for k, v in metrics.items()
        ],
    )


def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    log_run_artifact(None, path, artifact_dir)


def log_run_artifact(
    run_id: str | None, path: Path, artifact_dir: str | None = None, move: bool = False
) -> None:
    """The file at `path` as an artifact of `run_id` (default: the active run), from any
    thread; `move` hands over a temporary file rather than copying it into a run's spool."""
    writer = _writer(run_id)
    if writer is None:
        if run_id is None:
            mlflow.log_artifact(str(path), artifact_dir)
        else:
            store_client().log_artifact(run_id, str(path), artifact_dir)
        return
    if move:
        _spool_file(writer, path, artifact_dir)
        return
    with _artifact_file(path.name) as copy:
        shutil.copyfile(path, copy)
        _spool_file(writer, copy, artifact_dir)


def log_predictions(frames: dict[str, pd.DataFrame]) -> None:
    """Each split's per-digit predictions (analysis/predictions.py) as
    `predictions/<split>.parquet` of the active run."""
    with tempfile.TemporaryDirectory() as folder:
        for split, frame in frames.items():
            path = Path(folder) / names.predictions_artifact(split)
            path.parent.mkdir(exist_ok=True)
            frame.to_parquet(path, index=False)
            log_run_artifact(None, path, str(Path(names.predictions_artifact(split)).parent), True)


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.run_id


# --- Tuning: a parent run per `tune` invocation, a nested run per trial ---------------------


def active_experiment_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.experiment_id


def child_run_tags(parent_run_id: str, run_name: str | None = None) -> dict[str, str]:
    """Tags that nest a run under `parent_run_id` (and name it), also from a worker process
    with no active run (MLflow's active run is per thread and process: `nested=True` cannot)."""
    tags = {PARENT_RUN_ID_TAG: parent_run_id}
    if run_name:
        tags[RUN_NAME_TAG] = run_name
    return tags


def find_run(experiment_id: str, tags: dict[str, str]) -> str | None:
    """The newest run of `experiment_id` carrying all `tags`, or None."""
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = store_client().search_runs(
        [experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    """Tags of a run other than the active one; a run still open here (a study's parent)
    records them through its spool."""
    if writer := _writer(run_id):
        writer.add("tags", {"values": {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}})
        return
    client = store_client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:MAX_TAG_LENGTH])


# A failed trial's run that is still to be marked FAILED: RUNNING (its process died) or
# FINISHED (training ended, what the tuner measured afterwards failed).
ENDABLE = ("RUNNING", "FINISHED")


def mark_trial_run(
    run_id: str, state: str, reason: str | None = None, wait: float | None = None
) -> None:
    """Tag a trial's run with its Optuna state once the trial has ended.

    A pruned trial leaves `train()` by an exception, so `run()` ended its run FAILED with a
    `failure_reason`; pruning is the tuner working as intended, so it becomes FINISHED. What
    the run left in its spool goes first (`send_left_spool`, waiting up to `wait` s).
    """
    send_left_spool(run_id, wait)
    await_server(f"the state of trial run {run_id}", wait)
    client = store_client()
    client.set_tag(run_id, names.TAG_TRIAL_STATE, state)
    if state == "PRUNED":
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_tag(run_id, names.TAG_FAILURE_REASON)
        if reason:
            client.set_tag(run_id, "pruned_reason", reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    elif state == "FAIL" and reason and client.get_run(run_id).info.status in ENDABLE:
        client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def log_failed_run(
    experiment_id: str, tags: dict[str, str], params: dict[str, Any], reason: str
) -> str:
    """A FAILED run for a trial that failed before `train()` could start one (a bad combination
    of parameters), so every trial has its run."""
    client = store_client()
    run = client.create_run(experiment_id, tags={**tags, names.TAG_TRIAL_STATE: "FAIL"})
    run_id = run.info.run_id
    client.log_batch(
        run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()]
    )
    client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return run_id


def kill_orphaned_run(run_id: str, reason: str) -> None:
    """End a run whose process died (a killed tuning worker) KILLED, if still RUNNING."""
    client = store_client()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
