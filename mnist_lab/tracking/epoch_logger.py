"""Per-epoch metrics and checkpoints of a training run, and fetching a checkpoint back."""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import torch

from mnist_lab import names
from mnist_lab.engine.checkpoint import save_checkpoint
from mnist_lab.engine.loop import TrainState
from mnist_lab.errors import LabError
from mnist_lab.tracking.liveness import process_tags
from mnist_lab.tracking.runs import active_run_id, log_metrics, log_run_artifact
from mnist_lab.tracking.store import store_client


class EpochLogger:
    """Engine listener: per-epoch metrics (step = epoch) and `checkpoints/last.pt`.

    The state is copied to host memory on the training thread; writing and uploading run on a
    background thread so the next epoch does not wait for them. The file is written atomically
    and `wait()` (called before the run ends, also on Ctrl-C) lets the upload finish, so the run's
    checkpoint is always a whole one. On a tracking server both go through the run's spool
    (runs.py), so an away server delays neither. Time spent here is kept to report tracking
    overhead.
    """

    def __init__(self, checkpoint: bool = True) -> None:
        self.checkpoint = checkpoint
        self.seconds = 0.0
        self._dir = Path(tempfile.mkdtemp(prefix="mnist-lab-ckpt-"))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None
        # MLflow's active run is thread-local: the upload thread must name the run.
        self._run_id = active_run_id()

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        start = time.perf_counter()
        log_metrics(metrics, step=state.epoch)
        if self.checkpoint:
            self.wait()  # one upload in flight at a time: epochs land in order
            snapshot = _to_host(state.state_dict())
            self._pending = self._pool.submit(self._write_and_upload, snapshot)
        self.seconds += time.perf_counter() - start

    def _write_and_upload(self, snapshot: dict[str, Any]) -> None:
        path = self._dir / Path(names.CHECKPOINT_LAST).name
        save_checkpoint(snapshot, path)
        log_run_artifact(self._run_id, path, names.CHECKPOINT_DIR, move=True)

    def wait(self) -> None:
        """Block until the last checkpoint is uploaded; re-raise its error, if any."""
        start = time.perf_counter()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        """`wait`, then remove the local checkpoint folder (a checkpoint can be hundreds of MB:
        one left behind a run would fill the temporary folder over a study)."""
        try:
            self.wait()
        finally:
            self._pool.shutdown()
            shutil.rmtree(self._dir, ignore_errors=True)


def _to_host(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples of tensors with every tensor in host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


def has_checkpoint(run_id: str) -> bool:
    """Whether run `run_id` has a `checkpoints/last.pt` to resume from (listed, not fetched)."""
    folder = names.CHECKPOINT_LAST.rpartition("/")[0]
    return any(
        f.path == names.CHECKPOINT_LAST for f in store_client().list_artifacts(run_id, folder)
    )


def download_checkpoint(run_id: str) -> Path:
    """Fetch `checkpoints/last.pt` of `run_id`; a clear error if the run or file is missing."""
    client = store_client()
    try:
        run_info = client.get_run(run_id).info
    except mlflow.exceptions.MlflowException:
        raise LabError(
            f"--resume {run_id}: no such run in the tracking store {mlflow.get_tracking_uri()}"
        ) from None
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=names.CHECKPOINT_LAST
        )
    except Exception:
        raise LabError(
            f"--resume {run_id}: the run ({run_info.status}) has no {names.CHECKPOINT_LAST} "
            "to resume from; it stopped before its first epoch ended"
        ) from None
    return Path(path)


def reopen_for_resume(run_id: str) -> None:
    """A finished/failed/killed run goes back to RUNNING before training continues in it,
    naming this process first, so no other process's stale-run sweep takes it for dead."""
    client = store_client()
    for key, value in process_tags().items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")
