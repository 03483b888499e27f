"""One training run: config → data → model → engine → evaluation → MLflow.

`train()` is what the CLI, `mlflow run`, the tuner and the benchmark all call.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mnist_lab import names, tracking
from mnist_lab.analysis.metrics import classification_summary, prediction_metrics
from mnist_lab.analysis.predictions import predictions_frame
from mnist_lab.analysis.run_figures import (
    confusion_matrix_figure,
    learning_curves_figure,
    sample_predictions_figure,
)
from mnist_lab.analysis.statistics import wilson_interval
from mnist_lab.config import TrainConfig, build_config
from mnist_lab.data.mnist import (
    SPLIT_NAMES,
    Splits,
    load_mnist,
    make_splits,
    resolve_data_dir,
    split_records,
)
from mnist_lab.engine import contention, distributed
from mnist_lab.engine.checkpoint import load_checkpoint
from mnist_lab.engine.classification import ClassificationTask
from mnist_lab.engine.detection import DetectionTask
from mnist_lab.engine.device import place_model, resolve_device, usable_cpus
from mnist_lab.engine.distributed import rank_device
from mnist_lab.engine.flops import train_flops_per_sample
from mnist_lab.engine.interrupt import deferred_interrupts, raise_if_interrupted
from mnist_lab.engine.loop import Listener, TrainState, fit, make_optimizer, make_scheduler
from mnist_lab.engine.tasks import Evaluation, Loader, Task, TestReport
from mnist_lab.errors import LabError
from mnist_lab.models import is_detector
from mnist_lab.models.build import ModelSpec, build_model
from mnist_lab.models.common import TemperatureScaled

log = logging.getLogger(__name__)

# The settings that choose which images a run sees, logged with its datasets.
SUBSET_SETTINGS = ("seed", "split_seed", "val_size", "max_train_samples", "max_test_samples")


@dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]
    best_val_accuracy: float
    epochs: int  # completed; fewer than config.epochs after early stopping
    # The per-digit predictions the run logged, by split ("val"; "test" after a test pass).
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)


class ConsoleReporter:
    """Engine listener: one line per epoch, so logs and CI show progress without a TTY."""

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  %.1fs",
            state.epoch,
            state.config.epochs,
            metrics[names.TRAIN_LOSS],
            metrics[names.TRAIN_ACCURACY],
            metrics[names.VAL_LOSS],
            metrics[names.VAL_ACCURACY],
            metrics[names.EPOCH_TIME_S],
        )


def start(
    config: TrainConfig | None, resume_run_id: str | None = None, run_name: str | None = None
) -> TrainResult:
    """Where a run begins, decided here alone: continue `resume_run_id` (or, in a torchrun job
    restarted after a rank died, the run its first attempt started, once it has a checkpoint),
    else train `config` afresh."""
    resume_run_id = resume_run_id or _restarted_jobs_run()
    if resume_run_id:
        return resume(resume_run_id)
    if config is None:
        raise LabError("nothing to train: give a config, or the run id to resume")
    return train(config, run_name=run_name)


def _restarted_jobs_run() -> str | None:
    """In a torchrun job restarted after a rank died (`--max-restarts`), the run its first
    attempt started, if it has a checkpoint to go on from: the job resumes it."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    run_id = tracking.job_run(job)
    if run_id is None:
        return None
    if not tracking.has_checkpoint(run_id):  # died before its first epoch ended: start again
        log.warning("torchrun job %s restarted; its run %s has no checkpoint yet", job, run_id)
        return None
    log.info("torchrun job %s restarted: resuming its run %s", job, run_id)
    return run_id


def resume(run_id: str) -> TrainResult:
    """Continue run `run_id` from its `checkpoints/last.pt`, in that same MLflow run.

    The checkpoint restores config, model, optimizer, scheduler, RNG state and history; the
    data order of the remaining epochs is the one the uninterrupted run would have had.
    """
    checkpoint = load_checkpoint(tracking.download_checkpoint(run_id))
    config = build_config(dict(checkpoint["config"]), source=f"checkpoint of run {run_id}")
    return train(config, resume_run_id=run_id, checkpoint=checkpoint)


@deferred_interrupts()  # Ctrl-C ends the run KILLED between steps, see interrupt.py
def train(
    config: TrainConfig,
    *,
    listeners: tuple[Listener, ...] = (),
    nested: bool = False,
    tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    evaluate_test: bool = True,
    run_name: str | None = None,
) -> TrainResult:
    """Train `config.model`, evaluate it on the test set once, and log everything to one run.

    `listeners` get every epoch's metrics (the tuner's pruning callback is one); `nested` makes
    the run a child of the active run. `evaluate_test=False` (tuning trials) stops after
    training: no test set, reports or model, so selection can only see validation.
    `run_name` defaults to one derived from the config (`config.run_name()`).
    Use `resume()` rather than `resume_run_id`/`checkpoint`.

    Started by torchrun (WORLD_SIZE > 1), every rank trains its share of each batch under
    DistributedDataParallel (engine/distributed.py); only rank 0 logs, tests and returns the
    run's metrics (the other ranks return an empty `run_id`).
    """
    device = rank_device(resolve_device(config.device))
    rank = distributed.join(device, config.dist_backend, config.sync_bn)
    try:
        return _train(
            config,
            device,
            rank,
            listeners=listeners,
            nested=nested,
            tags=tags,
            resume_run_id=resume_run_id,
            checkpoint=checkpoint,
            evaluate_test=evaluate_test,
            run_name=run_name,
        )
    finally:
        if rank is not None:
            distributed.leave()


@dataclass
class Session:
    """What one run trains: its splits (on the device), model, task, loaders and state."""

    config: TrainConfig
    device: torch.device
    splits: Splits
    model: nn.Module
    task: Task
    loaders: tuple[Loader, Loader, Loader]  # train, val, test
    state: TrainState


def _train(
    config: TrainConfig,
    device: torch.device,
    rank: distributed.Rank | None,
    *,
    listeners: tuple[Listener, ...],
    nested: bool,
    tags: dict[str, str] | None,
    resume_run_id: str | None,
    checkpoint: dict[str, Any] | None,
    evaluate_test: bool,
    run_name: str | None,
) -> TrainResult:
    session = _prepare(config, device, rank, checkpoint, resume_run_id)
    state, model = session.state, session.model
    if rank is not None and not rank.is_main:  # train in step with rank 0; it does the rest
        fit(state, session.task, *session.loaders[:2], device)
        return TrainResult("", {}, state.best_val_accuracy, state.epoch)
    flops = train_flops_per_sample(session.task, model, next(iter(session.loaders[0])))
    name = run_name or config.run_name()
    run_tags = _run_tags(config, device, rank, tags)
    with tracking.run(
        run_id=resume_run_id,
        nested=nested,
        run_name=name,
        tags=run_tags,
        system_metrics=config.system_metrics,
    ):
        if checkpoint is None:
            _log_inputs(config, device, session.splits, evaluate_test)
        clock = contention.read_clock()
        tracking_seconds = _fit_logged(session, listeners)
        share = contention.others_share(clock, contention.read_clock(), usable_cpus())
        tracking.set_tags({names.TAG_OTHER_CPU_SHARE: f"{share:.2f}"})
        if state.best_model is not None:
            model.load_state_dict(state.best_model)
        if not evaluate_test:  # a tuning trial: validation only
            val = session.task.evaluate(model, session.loaders[1], amp=False)
            metrics = _training_metrics(state, model, flops)
            return _finish(state, metrics, _predictions({"val": val}, session.splits))
        report = end_of_run_report(session, flops, tracking_seconds)
        _log_report(session, report)
        metrics = report.metrics
        log.info(
            "test_accuracy %.4f [%.4f, %.4f]  test_f1_macro %.4f  train_time_s %.1f  run %s",
            metrics[names.TEST_ACCURACY],
            metrics[names.TEST_ACCURACY_CI95_LOW],
            metrics[names.TEST_ACCURACY_CI95_HIGH],
            metrics[names.TEST_F1_MACRO],
            metrics[names.TRAIN_TIME_S],
            tracking.active_run_id(),
        )
        return _finish(state, metrics, _predictions(report.predictions, session.splits))


def _prepare(
    config: TrainConfig,
    device: torch.device,
    rank: distributed.Rank | None,
    checkpoint: dict[str, Any] | None,
    resume_run_id: str | None,
) -> Session:
    """The splits, model, task, loaders and state of a run, from its checkpoint when resumed."""
    torch.manual_seed(config.seed)
    splits = load_splits(config).to(device)
    if rank is not None:
        distributed.check_world_size(rank.world_size, len(splits.train_y))
    model = build_model(config.model, **config.model_options)
    if config.sync_bn and rank is not None:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = place_model(model, device)
    task = make_task(config)
    loaders = task.loaders(splits)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(loaders[0]))
    state = TrainState(config, model, optimizer, scheduler)
    if checkpoint is not None:
        try:
            state.load_state_dict(checkpoint)
        except RuntimeError as err:  # load_state_dict's missing/unexpected/mismatched keys
            raise LabError(
                f"the checkpoint of run {resume_run_id} does not fit the {config.model!r} model "
                f"of this mnist-lab version (its layers changed since): {str(err).rstrip('. ')}. "
                "Start a new run instead of --resume."
            ) from err
        except KeyError as err:  # a field this version writes and the checkpoint lacks
            raise LabError(
                f"the checkpoint of run {resume_run_id} has no {err}: another mnist-lab version "
                "wrote it. Resume it with that version, or start a new run instead of --resume."
            ) from None
        if rank is None or rank.is_main:
            tracking.reopen_for_resume(resume_run_id)
    return Session(config, device, splits, model, task, loaders, state)


def _run_tags(
    config: TrainConfig,
    device: torch.device,
    rank: distributed.Rank | None,
    tags: dict[str, str] | None,
) -> dict[str, str]:
    run_tags = {**tracking.run_tags(config, device), **(tags or {})}
    if rank is not None:
        run_tags |= {
            names.TAG_WORLD_SIZE: str(rank.world_size),
            names.TAG_BACKEND: rank.backend,
            names.TAG_NNODES: str(rank.nnodes),
            names.TAG_ELASTIC_JOB: os.environ.get("TORCHELASTIC_RUN_ID", ""),
        }
    return run_tags


def _log_inputs(
    config: TrainConfig, device: torch.device, splits: Splits, evaluate_test: bool
) -> None:
    """A new run's params and the splits it sees (a trial never sees the test split)."""
    tracking.log_params(tracking.run_params(config, device))
    tracking.log_datasets(
        split_records(splits, SPLIT_NAMES if evaluate_test else ("train", "val")),
        resolve_data_dir(config.data_dir) / "MNIST" / "raw",
        {key: getattr(config, key) for key in SUBSET_SETTINGS},
    )


def _fit_logged(session: Session, listeners: tuple[Listener, ...]) -> float:
    """The training loop with its epochs logged and checkpointed; the seconds logging took."""
    epoch_logger = tracking.EpochLogger(checkpoint=session.config.checkpoint)
    try:
        fit(
            session.state,
            session.task,
            *session.loaders[:2],
            session.device,
            listeners=(epoch_logger, ConsoleReporter(), *listeners),
        )
    finally:
        epoch_logger.close()
    raise_if_interrupted()  # a Ctrl-C during the last epoch's logging: KILLED, not tested
    return epoch_logger.seconds


def end_of_run_report(session: Session, flops: float, tracking_seconds: float) -> TestReport:
    """Everything a run reports once trained, assembled here: the test pass and its metrics,
    the figures and reports every run has, then what its task adds (calibration, corruptions
    and explanations for a classifier; detection for the detector)."""
    state, model, splits = session.state, session.model, session.splits
    # In fp32, as the logged model serves: a bf16 pass's answers differ on a few borderline digits.
    test = session.task.evaluate(model, session.loaders[2], amp=False)
    summary = classification_summary(test.targets, test.predictions)
    # Before the task's report, so peak memory and the timings are the training's and test's.
    metrics = _final_metrics(state, test, summary, session.device, tracking_seconds)
    metrics |= _training_metrics(state, model, flops)
    start = time.perf_counter()
    report = session.task.test_report(model, splits, test)
    report.metrics = {**metrics, **report.metrics, names.TEST_REPORT_S: 0.0}
    report.reports = {names.REPORT_CLASSIFICATION: summary, **report.reports}
    report.figures = {
        names.PLOT_CONFUSION_MATRIX: confusion_matrix_figure(np.array(summary["confusion_matrix"])),
        names.PLOT_LEARNING_CURVES: learning_curves_figure(state.history),
        names.PLOT_SAMPLE_PREDICTIONS: sample_predictions_figure(
            splits.test_x.cpu().numpy(), test.targets, test.predictions, test.probabilities
        ),
        **report.figures,
    }
    report.predictions = report.predictions or {"test": test}
    report.metrics[names.TEST_REPORT_S] = time.perf_counter() - start
    if missing := [m for m in names.metric_names("final") if m not in report.metrics]:
        log.warning(
            "names.METRICS marks %s final, but this run computed no value for it; give it a "
            "function in analysis/metrics.py's FROM_PREDICTIONS",
            ", ".join(missing),
        )
    return report


def _log_report(session: Session, report: TestReport) -> None:
    """The report's reports and figures, and the served model (pyfunc and ONNX) with any
    sub-module the task logs as a model of its own."""
    for path, data in report.reports.items():
        tracking.log_dict(data, path)
    for path, figure in report.figures.items():
        tracking.log_figure(figure, path)
    model, config = session.model, session.config
    served = report.served_model or model  # e.g. with its fitted temperature
    options = config.resolved_model_options()
    scaled = isinstance(served, TemperatureScaled)
    spec = ModelSpec(config.model, options, temperature_scaled=scaled)
    tracking.log_model(served.cpu(), session.splits.test_x[:8].float().div(255).cpu().numpy(), spec)
    tracking.log_onnx_model(served, session.splits.test_x[:256].cpu().numpy(), spec)  # `onnx`
    for name, part in report.modules.items():
        module = getattr(model, part).cpu()
        tracking.log_torch_model(module, ModelSpec(config.model, options, part=part), name)


def _finish(
    state: TrainState, metrics: dict[str, float], predictions: dict[str, pd.DataFrame]
) -> TrainResult:
    """Log the run's final metrics and per-digit predictions; what `train()` returns."""
    tracking.log_metrics(metrics)
    tracking.log_predictions(predictions)
    run_id = tracking.active_run_id()
    return TrainResult(run_id, metrics, state.best_val_accuracy, state.epoch, predictions)


def _predictions(evaluations: dict[str, Evaluation], splits: Splits) -> dict[str, pd.DataFrame]:
    """The per-digit predictions table of each evaluated split ("val", "test")."""
    return {
        split: predictions_frame(
            getattr(splits, f"{split}_index").cpu().numpy(),
            evaluation.targets,
            evaluation.predictions,
            evaluation.probabilities,
        )
        for split, evaluation in evaluations.items()
    }


def load_splits(config: TrainConfig) -> Splits:
    """The train / val / test images a run with `config` sees, on the CPU."""
    return make_splits(
        load_mnist(config.data_dir),
        val_size=config.val_size,
        seed=config.split_seed,
        max_train_samples=config.max_train_samples,
        max_test_samples=config.max_test_samples,
    )


def make_task(config: TrainConfig) -> Task:
    """The detector trains on scenes; every other model is a digit classifier."""
    if is_detector(config.model):
        return DetectionTask(config)
    return ClassificationTask(config)


def _final_metrics(
    state: TrainState,
    test: Evaluation,
    summary: dict[str, Any],
    device: torch.device,
    tracking_s: float,
) -> dict[str, float]:
    """The test pass's metrics (FROM_PREDICTIONS's included) and the run's cost."""
    train_time = state.train_seconds
    low, high = wilson_interval(int(np.sum(test.predictions == test.targets)), len(test.targets))
    return {
        **prediction_metrics(test.probabilities, test.targets),
        names.TEST_ACCURACY: summary["accuracy"],
        names.TEST_ACCURACY_CI95_LOW: low,
        names.TEST_ACCURACY_CI95_HIGH: high,
        names.TEST_F1_MACRO: summary["f1_macro"],
        names.TEST_LOSS: test.loss,
        names.INFERENCE_MS_PER_IMAGE: 1000 * test.seconds / len(test.targets),
        names.THROUGHPUT_IMG_PER_S: len(test.targets) / test.seconds,
        names.PEAK_MEMORY_MB: peak_memory_mb(device),
        names.TRACKING_OVERHEAD: tracking_s / train_time if train_time > 0 else 0.0,
    }


def _training_metrics(
    state: TrainState, model: nn.Module, flops_per_sample: float
) -> dict[str, float]:
    """The final metrics of the training itself (all a tuning trial logs): its time, selection,
    size, and its arithmetic: FLOPs a sample and the TFLOP/s the training steps achieved."""
    achieved = flops_per_sample * state.samples_trained / max(state.step_seconds, 1e-9) / 1e12
    metrics = {
        names.TRAIN_TIME_S: state.train_seconds,
        names.BEST_VAL_ACCURACY: state.best_val_accuracy,
        names.BEST_EPOCH: float(state.best_epoch),
        names.NUM_PARAMS: float(sum(p.numel() for p in model.parameters())),
        names.TRAIN_FLOPS_PER_IMAGE: flops_per_sample,
        names.TRAIN_TFLOPS_PER_S: achieved,
    }
    if state.time_to_target_s is not None:
        metrics[names.TIME_TO_TARGET_S] = state.time_to_target_s
        metrics[names.EPOCHS_TO_TARGET] = state.epochs_to_target
    return metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; otherwise the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
