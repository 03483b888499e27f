"""What the loop needs from a model kind: its loaders, the loss of a batch, how a split is
evaluated, and what its test report adds. `ClassificationTask` (digits) and `DetectionTask`
(scenes) implement it; `train()` reads the same for both."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_lab import names
from mnist_lab.analysis.calibration import calibration_summary
from mnist_lab.data.mnist import Splits
from mnist_lab.models.common import TemperatureScaled

Batch = tuple[torch.Tensor, torch.Tensor]


class Loader(Protocol):
    """A re-iterable source of batches whose order for an epoch depends only on (seed, epoch)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...
    def rank_part(self, rank: int, world_size: int) -> Loader:
        """An evaluation loader over rank `rank`'s contiguous part of the split."""
        ...


@dataclass
class Evaluation:
    """One pass over a split. `predictions`/`targets`: [N] int64; `probabilities`: [N, 10];
    `logits`: [N, 10] fp32 where the model has them (classifiers), else None."""

    loss: float
    accuracy: float
    predictions: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray
    seconds: float  # forward passes only, after one warm-up batch
    logits: np.ndarray | None = None


@dataclass
class TestReport:
    """What a task adds to a run after the test evaluation: metrics, figures (artifact path →
    Figure), JSON reports (artifact path → dict) and sub-modules of the model to log as models
    of their own (artifact name → attribute of the model, e.g. "detector")."""

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    # What the run logs as its `model` when not the trained module as it is (e.g. the classifier
    # with its fitted temperature, so served probabilities are calibrated).
    served_model: nn.Module | None = None
    # The validation and test splits as the served model answers them ("val", "test"): what
    # the run logs as its per-digit predictions.
    predictions: dict[str, Evaluation] = field(default_factory=dict)


class Task(Protocol):
    config: Any  # the run's TrainConfig

    def loaders(self, splits: Splits) -> tuple[Loader, Loader, Loader]:
        """Train (shuffled, augmented), validation and test loaders over `splits`."""
        ...

    def step_module(self, model: nn.Module) -> nn.Module:
        """The part of `model` a training step calls (what DistributedDataParallel wraps)."""
        ...

    def train_step(self, module: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss to backpropagate, number of correct predictions (a tensor), batch size;
        `module` is `step_module(model)`, possibly wrapped (DDP, torch.compile)."""
        ...

    def evaluate(self, model: nn.Module, loader: Loader, amp: bool) -> Evaluation:
        """Loss, accuracy and per-example predictions over one split; no gradients."""
        ...

    def test_report(self, model: nn.Module, splits: Splits, test: Evaluation) -> TestReport:
        """What this kind of model adds to the run once `test` is known."""
        ...


def calibration_report(
    task: Task, model: nn.Module, splits: Splits, test: Evaluation
) -> TestReport:
    """Temperature fitted on the validation split's logits, ECE/Brier and the reliability diagram
    on the test split's (`test`: its fp32 pass), in fp32 as the logged model serves; the served
    model divides its logits by that temperature."""
    _, val_loader, _ = task.loaders(splits)
    val = task.evaluate(model, val_loader, amp=False)
    assert val.logits is not None and test.logits is not None
    calibration = calibration_summary(
        torch.from_numpy(val.logits),
        torch.from_numpy(val.targets),
        torch.from_numpy(test.logits),
        torch.from_numpy(test.targets),
    )
    return TestReport(
        metrics=calibration.metrics(),
        figures={names.PLOT_RELIABILITY: calibration.figure()},
        reports={names.REPORT_CALIBRATION: calibration.to_report()},
        served_model=TemperatureScaled(model, calibration.temperature),
        predictions={
            "val": with_temperature(val, calibration.temperature),
            "test": with_temperature(test, calibration.temperature),
        },
    )


def with_temperature(evaluation: Evaluation, temperature: float) -> Evaluation:
    """`evaluation` as a model dividing its logits by `temperature` answers it: the same
    predictions, probabilities softmax(logits / temperature)."""
    assert evaluation.logits is not None
    logits = torch.from_numpy(evaluation.logits) / temperature
    return dataclasses.replace(evaluation, probabilities=logits.softmax(1).numpy())
