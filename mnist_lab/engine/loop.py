"""The one training loop. It imports neither mlflow nor optuna: it reports each finished epoch to
listeners (the MLflow tracker, an Optuna pruning callback, the console) and they act on it.

A `Task` supplies what differs between model kinds: loaders, the loss of a batch, how to
evaluate. The classifiers use `ClassificationTask`; the detector brings its own task
(`DetectionTask`), not a second loop.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mnist_lab import names
from mnist_lab.config import CUDA_GRAPH_MODES, TrainConfig
from mnist_lab.engine.device import autocast
from mnist_lab.engine.distributed import all_reduce_sum, broadcast_buffers, shard
from mnist_lab.engine.interrupt import StopRequest, deferred_interrupts
from mnist_lab.engine.tasks import Loader, Task
from mnist_lab.errors import ConfigError, LabError

log = logging.getLogger(__name__)


class NonFiniteLossError(LabError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainState:
    """What a checkpoint holds. `epoch` is the last completed epoch (0 before training)."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf  # the best epoch's; breaks ties of validation accuracy
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    train_seconds: float = 0.0  # wall time of the training loop, summed over resumed sessions
    step_seconds: float = 0.0  # of which the training steps (no validation, no listeners)
    samples_trained: int = 0  # images (scenes for the detector) the steps trained on
    # When validation first reached config.target_val_accuracy: training wall time, and epochs
    # (fractional where a mid-epoch check reached it). None: no target, or not reached.
    time_to_target_s: float | None = None
    epochs_to_target: float | None = None

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "history": self.history,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "train_seconds": self.train_seconds,
            "step_seconds": self.step_seconds,
            "samples_trained": self.samples_trained,
            "time_to_target_s": self.time_to_target_s,
            "epochs_to_target": self.epochs_to_target,
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.best_val_accuracy = state["best_val_accuracy"]
        self.best_epoch = state["best_epoch"]
        self.best_val_loss = state["best_val_loss"]
        self.best_model = state["best_model"]
        self.train_seconds = state["train_seconds"]
        self.step_seconds = state["step_seconds"]
        self.samples_trained = state["samples_trained"]
        self.time_to_target_s = state["time_to_target_s"]
        self.epochs_to_target = state["epochs_to_target"]
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


class Listener(Protocol):
    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """Called after each epoch with that epoch's metrics (names.EPOCH_METRICS)."""
        ...


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on weight matrices and kernels only, not on biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"model {config.model!r} has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per batch, over the whole run, so `epochs` sets the schedule's length.
    A run of under three steps keeps its lr constant."""
    total = config.epochs * steps_per_epoch
    if config.scheduler == "onecycle" and total >= 3:
        # Warm up over a quarter of the steps, and at least two: OneCycleLR divides by zero
        # when a phase is under two steps long (a tiny subset).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=max(0.25, 2 / total)
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def fit(
    state: TrainState,
    task: Task,
    train_loader: Loader,
    val_loader: Loader,
    device: torch.device,
    listeners: Iterable[Listener] = (),
    nan_check_every: int = 50,
) -> TrainState:
    """Train from `state.epoch + 1` to `config.epochs`, or until early stopping, or until
    validation reaches `config.target_val_accuracy` (checked `val_checks_per_epoch` times an
    epoch; the epoch ends at the check that reaches it). With `config.stop_at_target` false the
    time to the target is noted and training goes on to the end of its schedule.

    After each epoch: evaluate on validation, keep the best weights (selection by validation
    only: accuracy, ties broken by loss), and call every listener. A NaN/inf loss raises
    `NonFiniteLossError` before the epoch's listeners run, so the last checkpoint stays the last
    good one. Ctrl-C raises KeyboardInterrupt at the next step boundary, never inside a listener.
    """
    config, model = state.config, state.model
    step_model = training_module(task, model, config, device)
    listeners = list(listeners)
    target = config.target_val_accuracy
    if target is not None and state.time_to_target_s is not None and config.stop_at_target:
        return state  # resumed after reaching its target: training is over
    with deferred_interrupts() as stop:  # Ctrl-C lands between steps, see interrupt.py
        for epoch in range(state.epoch + 1, config.epochs + 1):
            start = time.perf_counter()
            lr = state.optimizer.param_groups[0]["lr"]  # at the epoch's first step
            epoch_run = _train_epoch(
                state,
                task,
                step_model,
                train_loader,
                val_loader,
                device,
                epoch,
                stop,
                nan_check_every,
            )
            loss_sum, hits, seen = epoch_run.totals
            state.step_seconds += time.perf_counter() - start - epoch_run.check_seconds
            state.samples_trained += int(seen)
            val_loss, val_accuracy = epoch_run.val or validate(
                task, model, val_loader, config.amp, device
            )
            metrics = {
                names.TRAIN_LOSS: loss_sum / seen,
                names.TRAIN_ACCURACY: hits / seen,
                names.VAL_LOSS: val_loss,
                names.VAL_ACCURACY: val_accuracy,
                names.LR: lr,
                names.EPOCH_TIME_S: time.perf_counter() - start,
            }
            state.epoch = epoch
            state.history.append({"epoch": epoch, **metrics})
            if improves(val_accuracy, val_loss, state):
                state.best_val_accuracy = val_accuracy
                state.best_val_loss = val_loss
                state.best_epoch = epoch
                state.best_model = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            if target is not None and state.time_to_target_s is None:
                _note_target(state, epoch_run, epoch, val_accuracy >= target)
            state.train_seconds += metrics[names.EPOCH_TIME_S]
            listeners_start = time.perf_counter()
            for listener in listeners:
                listener.on_epoch_end(state, metrics)
            state.train_seconds += time.perf_counter() - listeners_start
            stop.check()
            patience = config.early_stopping_patience
            reached = state.time_to_target_s is not None and config.stop_at_target
            if reached or (patience and epochs_without_gain(state.history) >= patience):
                break
    return state


def _note_target(
    state: TrainState, epoch_run: EpochRun, epoch: int, epoch_end_reached: bool
) -> None:
    """Note when validation first reached the target in this epoch: at a mid-epoch check
    (`epoch_run.reached_at`), else at the epoch's end. `state.train_seconds` is still the time
    before this epoch."""
    if epoch_run.reached_at is not None:
        seconds, fraction = epoch_run.reached_at
    elif epoch_end_reached:
        seconds, fraction = state.history[-1][names.EPOCH_TIME_S], epoch_run.fraction
    else:
        return
    state.time_to_target_s = state.train_seconds + seconds
    state.epochs_to_target = epoch - 1 + fraction


def improves(val_accuracy: float, val_loss: float, state: TrainState) -> bool:
    """Whether an epoch's validation beats the best so far: higher accuracy, or the same
    accuracy at a lower loss (a NaN loss counts as infinite). Accuracy on a few thousand images
    moves in coarse steps, so ties are common; the loss tells the tied epochs apart."""
    best = (state.best_val_accuracy, -_nan_as_inf(state.best_val_loss))
    return (val_accuracy, -_nan_as_inf(val_loss)) > best


def epochs_without_gain(history: list[dict[str, float]]) -> int:
    """Epochs since validation accuracy last rose: early stopping's count. A tie won on the
    loss moves the best epoch but does not reset it, so a plateau still stops."""
    accuracies = [h[names.VAL_ACCURACY] for h in history]
    if not accuracies:
        return 0
    return len(accuracies) - 1 - accuracies.index(max(accuracies))


def _nan_as_inf(loss: float) -> float:
    return math.inf if math.isnan(loss) else loss


def training_module(
    task: Task, model: nn.Module, config: TrainConfig, device: torch.device
) -> nn.Module:
    """What a training step calls: the task's module, under DistributedDataParallel in a
    torchrun job (gradients averaged across the ranks after backward), compiled if asked."""
    module = task.step_module(model)
    if shard()[1] > 1:
        module = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        module = torch.compile(module, mode=config.compile_mode)
    return module


def validate(
    task: Task, model: nn.Module, loader: Loader, amp: bool, device: torch.device
) -> tuple[float, float]:
    """(loss, accuracy) over the whole split behind `loader`. In a distributed job each rank
    evaluates its contiguous part and the sums are all-reduced, so every rank gets the figures
    a one-process run computes, in about 1 / world_size of the time (docs/distributed.md)."""
    rank, world_size = shard()
    if world_size == 1:
        val = task.evaluate(model, loader, amp)
        return val.loss, val.accuracy
    # DDP hands rank 0's buffers (BatchNorm statistics) to the others before each forward,
    # and each rank then moves its own: evaluate every part with rank 0's, the model it saves.
    broadcast_buffers(model)
    part = loader.rank_part(rank, world_size)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    if len(part):  # a split smaller than the world leaves some ranks without images
        val = task.evaluate(model, part, amp)
        count = len(val.targets)
        correct = float((val.predictions == val.targets).sum())
        totals += totals.new_tensor([val.loss * count, correct, count])
    loss_sum, correct, count = all_reduce_sum(totals).tolist()
    return loss_sum / count, correct / count


def check_steps(steps: int, checks_per_epoch: int) -> set[int]:
    """The steps of a `steps`-step epoch after which it validates early: `checks_per_epoch` - 1
    evenly spaced ones (the epoch's end always validates)."""
    n = checks_per_epoch
    return {(steps * i + n // 2) // n for i in range(1, n)} - {0, steps}  # rounded half up


@dataclass
class EpochRun:
    """What one pass of `_train_epoch` did. `totals`: (sum of loss x batch size, correct
    predictions, images seen) over all ranks; `val`: (loss, accuracy) of the mid-epoch check that
    reached the target, which ended the epoch there (None: the epoch ran to its end);
    `fraction`: the share of the epoch's steps taken; `check_seconds`: time in mid-epoch checks;
    `reached_at`: (seconds into the epoch, share of its steps) at the end of the mid-epoch check
    that first reached the target, None where none did."""

    totals: tuple[float, float, float]
    val: tuple[float, float] | None
    fraction: float
    check_seconds: float
    reached_at: tuple[float, float] | None = None


def _train_epoch(
    state: TrainState,
    task: Task,
    step_model: nn.Module,
    loader: Loader,
    val_loader: Loader,
    device: torch.device,
    epoch: int,
    stop: StopRequest,
    nan_check_every: int,
) -> EpochRun:
    """One pass over `loader`, validating at `config.val_checks_per_epoch` points while a
    `target_val_accuracy` is set and not yet reached, and ending the epoch at the first check
    that reaches it (unless `config.stop_at_target` is false)."""
    config, model = state.config, state.model
    start = time.perf_counter()
    loader.set_epoch(epoch)
    model.train()
    checks = check_steps(len(loader), config.val_checks_per_epoch)
    if config.target_val_accuracy is None or state.time_to_target_s is not None:
        checks = set()  # the checks serve the target only
    val, reached_at, check_seconds, step = None, None, 0.0, 0
    totals = torch.zeros(3, device=device)  # loss sum, correct, count: summed on the device
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{config.epochs}",
        leave=False,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    for step, batch in enumerate(bar, start=1):
        loss, correct, count = optimisation_step(state, task, step_model, batch, device)
        stop.check()
        totals += torch.stack(
            [loss.detach().float() * count, correct.float(), totals.new_tensor(count)]
        )
        if step % nan_check_every == 0 or step == len(loader):
            loss_sum, hits, seen = totals.tolist()
            _check_finite(loss_sum, config, f"at epoch {epoch}, step {step}")
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.4f}")
        if step in checks:
            check_start = time.perf_counter()
            check = validate(task, model, val_loader, config.amp, device)
            model.train()
            check_seconds += time.perf_counter() - check_start
            if shard()[0] == 0:  # the console is rank 0's, as ConsoleReporter's lines are
                log.info(
                    "epoch %d, step %d/%d: val_acc %.4f (target %.4f)",
                    epoch,
                    step,
                    len(loader),
                    check[1],
                    config.target_val_accuracy,
                )
            if check[1] >= config.target_val_accuracy:
                reached_at = (time.perf_counter() - start, step / len(loader))
                if config.stop_at_target:
                    val = check
                    break
                checks = set()
    bar.close()
    totals = tuple(all_reduce_sum(totals).tolist())
    _check_finite(totals[0], config, f"in epoch {epoch}")  # steps since the last check, any rank
    return EpochRun(totals, val, step / max(len(loader), 1), check_seconds, reached_at)


def optimisation_step(
    state: TrainState, task: Task, step_model: nn.Module, batch: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One step on `batch`: the task's loss under autocast, backward, gradient clipping, the
    optimizer and the schedule. Returns the task's (loss, correct predictions, images or
    scenes). Under a CUDA-graph compile mode the next call overwrites the returned tensors:
    read them before it."""
    config = state.config
    if config.compile and config.compile_mode in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()  # the graphs may reuse the last step's outputs
    with autocast(device, config.amp):
        loss, correct, count = task.train_step(step_model, batch)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    return loss, correct, count


def _check_finite(loss_sum: float, config: TrainConfig, where: str) -> None:
    """NonFiniteLossError naming `where` and the settings to change if `loss_sum` is NaN/inf."""
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"training loss became {loss_sum} {where}; try a lower lr (now {config.lr}) "
            f"or a grad_clip > 0 (now {config.grad_clip})"
        )
