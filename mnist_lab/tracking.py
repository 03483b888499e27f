"""The only module that writes runs to MLflow (`store` reads them back; `mlflow_model` is the
logged model's own flavor).

Where runs land follows MLflow's own rules: `MLFLOW_TRACKING_URI` if set, else MLflow's default
(`sqlite:///mlflow.db`, artifacts in `./mlruns/`); `MLFLOW_EXPERIMENT_NAME`/`_ID` if set, else the
experiment `mnist-lab`; an active `MLFLOW_RUN_ID` (set by `mlflow run`) is joined, not duplicated.
A run that raises is ended FAILED (KILLED on Ctrl-C) with a `failure_reason` tag: never left
RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.figure
import mlflow
import numpy as np
import torch
from mlflow.entities import RunStatus
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from torch import nn

from mnist_lab import names
from mnist_lab.checkpoint import save_checkpoint
from mnist_lab.config import PROJECT_ROOT, TrainConfig
from mnist_lab.engine import TrainState, amp_dtype
from mnist_lab.errors import LabError

MAX_TAG_LENGTH = 4000


def use_default_experiment() -> None:
    """Select `mnist-lab` unless the environment or an active `mlflow run` chose one."""
    chosen = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    if not any(os.environ.get(var) for var in chosen):
        mlflow.set_experiment(names.DEFAULT_EXPERIMENT)


def run_tags(config: TrainConfig, device: torch.device) -> dict[str, str]:
    """Tags every training run carries: what it trained, where, with what code."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        names.TAG_MODEL: config.model,
        names.TAG_KIND: "train",
        names.TAG_DEVICE: device_name,
        names.TAG_PRECISION: "bf16" if amp_dtype(device, config.amp) else "fp32",
        names.TAG_TORCH_VERSION: torch.__version__,
        names.TAG_GIT_COMMIT: git_commit(),
    }


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
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with `run_id` or `MLFLOW_RUN_ID`, re-open) a run and always end it.

    Exit by exception ends the run FAILED with a `failure_reason` tag; Ctrl-C ends it KILLED.
    Either way the exception propagates.
    """
    use_default_experiment()
    active = mlflow.start_run(run_id=run_id, nested=nested, run_name=run_name, tags=tags)
    try:
        yield active
    except KeyboardInterrupt:
        _end(active.info.run_id, RunStatus.KILLED, "interrupted by the user (Ctrl-C)")
        raise
    except BaseException as err:
        _end(active.info.run_id, RunStatus.FAILED, f"{type(err).__name__}: {err}")
        raise
    else:
        mlflow.flush_async_logging()
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _end(run_id: str, status: int, reason: str) -> None:
    """End the active run with `status`, even when the error came from MLflow itself."""
    with contextlib.suppress(Exception):
        mlflow.flush_async_logging()
    with contextlib.suppress(Exception):
        MlflowClient().set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
    mlflow.end_run(RunStatus.to_string(status))


def fail_launcher_run(reason: str, killed: bool = False) -> None:
    """End the run `mlflow run` created (`MLFLOW_RUN_ID`) if our code failed before joining it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    with contextlib.suppress(Exception):
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
    mlflow.log_params(fresh)


def _same_param(logged: str, value: Any) -> bool:
    if logged == str(value) or (value is None and logged.lower() in ("", "none", "null")):
        return True
    if isinstance(value, bool):
        return logged.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    try:
        return float(logged) == float(value)
    except (TypeError, ValueError):
        return False


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Queued and sent by MLflow's background thread; `run()` flushes before ending."""
    mlflow.log_metrics(metrics, step=step, synchronous=False)


def log_figure(figure: matplotlib.figure.Figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_dict(data: dict[str, Any], artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_dir)


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.run_id


class EpochLogger:
    """Engine listener: per-epoch metrics (step = epoch) and `checkpoints/last.pt`.

    The state is copied to host memory on the training thread; writing and uploading run on a
    background thread so the next epoch does not wait for them. The file is written atomically
    and `wait()` (called before the run ends, also on Ctrl-C) lets the upload finish, so the run's
    checkpoint is always a whole one. Time spent here is kept to report tracking overhead.
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
        MlflowClient().log_artifact(self._run_id, str(path), names.CHECKPOINT_DIR)

    def wait(self) -> None:
        """Block until the last checkpoint is uploaded; re-raise its error, if any."""
        start = time.perf_counter()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        self.seconds += time.perf_counter() - start


def _to_host(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples of tensors with every tensor in host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


def download_checkpoint(run_id: str) -> Path:
    """Fetch `checkpoints/last.pt` of `run_id`; a clear error if the run or file is missing."""
    client = MlflowClient()
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
    """A finished/failed/killed run goes back to RUNNING before training continues in it."""
    MlflowClient().update_run(run_id, status="RUNNING")


def log_model(model: nn.Module, example: np.ndarray) -> str:
    """Log `model` ([B, 1, 28, 28] float in [0, 1] → [B, 10] logits) as the run's `model`.

    One MLflow model, two flavors (see `mnist_lab.mlflow_model`): `mlflow.pytorch.load_model`
    gives the module back; `mlflow.pyfunc.load_model` and `mlflow models serve` take a batch of
    28×28 digits (`example`: [B, 28, 28] float32 in [0, 1]; 0–255 values are scaled) and answer
    `digit` and `prob_0` … `prob_9`. The package source travels with the model (`code_paths`),
    so it loads wherever mlflow and torch are installed. Returns the model URI.
    """
    from mnist_lab import mlflow_model

    model = model.eval()
    output = mlflow_model.DigitClassifier(model, _device_of(model)).predict(example)
    with warnings.catch_warnings():  # "integer column cannot hold missing values": `digit` never
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(example, output)
    info = mlflow.models.Model.log(
        artifact_path=None,
        name=names.MODEL_ARTIFACT,
        flavor=mlflow_model,
        pytorch_model=model,
        signature=signature,
        input_example=example,
        code_paths=[str(PROJECT_ROOT / "mnist_lab")],
        pip_requirements=_model_requirements(),
    )
    return info.model_uri


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def _model_requirements() -> list[str]:
    import timm
    import torchvision

    torch_version = torch.__version__.split("+")[0]
    vision_version = torchvision.__version__.split("+")[0]
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch_version}",
        f"torchvision=={vision_version}",
        f"timm=={timm.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_torch_model(module: nn.Module, name: str = names.DETECTOR_ARTIFACT) -> str:
    """Log `module` as it is, pickled, with no signature (e.g. a torchvision detector, which
    takes a list of images), so `mlflow.pytorch.load_model` returns it. Returns the model URI."""
    info = mlflow.pytorch.log_model(
        module.eval(),
        name=name,
        serialization_format="pickle",  # "pt2" traces one input shape; a detector has none
        code_paths=[str(PROJECT_ROOT / "mnist_lab")],
        pip_requirements=_model_requirements(),
    )
    return info.model_uri


# --- Tuning: a parent run per `tune` invocation, a nested run per trial ---------------------


def active_experiment_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.experiment_id


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def child_run_tags(parent_run_id: str, run_name: str | None = None) -> dict[str, str]:
    """Tags that nest a run under `parent_run_id` (and name it), also from a worker process
    with no active run (MLflow's active run is per thread and process: `nested=True` cannot)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id}
    if run_name:
        tags[MLFLOW_RUN_NAME] = run_name
    return tags


def find_run(experiment_id: str, tags: dict[str, str]) -> str | None:
    """The newest run of `experiment_id` carrying all `tags`, or None."""
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:MAX_TAG_LENGTH])


def mark_trial_run(run_id: str, state: str, reason: str | None = None) -> None:
    """Tag a trial's run with its Optuna state once the trial has ended.

    A pruned trial leaves `train()` by an exception, so `run()` ended its run FAILED with a
    `failure_reason`; pruning is the tuner working as intended, so it becomes FINISHED.
    """
    client = MlflowClient()
    client.set_tag(run_id, names.TAG_TRIAL_STATE, state)
    if state == "PRUNED":
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.delete_tag(run_id, names.TAG_FAILURE_REASON)
        if reason:
            client.set_tag(run_id, "pruned_reason", reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    elif state == "FAIL" and reason and client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def log_failed_run(
    experiment_id: str, tags: dict[str, str], params: dict[str, Any], reason: str
) -> str:
    """A FAILED run for a trial that failed before `train()` could start one (a bad combination
    of parameters), so every trial has its run."""
    client = MlflowClient()
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
    client = MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, names.TAG_FAILURE_REASON, reason[:MAX_TAG_LENGTH])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
