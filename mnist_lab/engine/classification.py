"""The classifiers' task: cross-entropy on digits, batched from device-resident tensors."""

from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.config import TrainConfig
from mnist_lab.data.loader import BatchLoader
from mnist_lab.data.mnist import Splits
from mnist_lab.engine.device import autocast, synchronize
from mnist_lab.engine.tasks import Batch, Evaluation, Loader, TestReport
from mnist_lab.errors import LabError


class ClassificationTask:
    """Cross-entropy on logits [B, 10] for digits [B, 1, 28, 28]; the training loss carries the
    config's label smoothing, evaluation losses are plain cross-entropy."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def loaders(self, splits: Splits) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
        config = self.config
        train = BatchLoader(
            splits.train_x,
            splits.train_y,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            augment=config.augment,
            drop_last=False,
        )
        return (
            train,
            BatchLoader(splits.val_x, splits.val_y, batch_size=config.eval_batch_size),
            BatchLoader(splits.test_x, splits.test_y, batch_size=config.eval_batch_size),
        )

    def train_step(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        return loss, (logits.argmax(1) == y).sum(), y.numel()

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Loader, amp: bool) -> Evaluation:
        model.eval()
        batches = iter(loader)
        first = next(batches, None)
        if first is None:
            raise LabError("cannot evaluate on an empty split")
        device = first[0].device
        with autocast(device, amp):
            model(first[0])  # warm-up, so the timing below measures steady state
        synchronize(device)
        losses, probs, targets = [], [], []
        seconds = 0.0
        for x, y in itertools.chain([first], batches):
            start = time.perf_counter()
            with autocast(device, amp):
                logits = model(x).float()
            synchronize(device)
            seconds += time.perf_counter() - start
            losses.append(F.cross_entropy(logits, y, reduction="sum"))
            probs.append(logits.softmax(1))
            targets.append(y)
        probabilities = torch.cat(probs).cpu().numpy()
        target = torch.cat(targets).cpu().numpy()
        predictions = probabilities.argmax(1)
        return Evaluation(
            loss=float(torch.stack(losses).sum()) / len(target),
            accuracy=float((predictions == target).mean()),
            predictions=predictions,
            targets=target,
            probabilities=probabilities,
            seconds=seconds,
        )

    def test_report(self, model: nn.Module, splits: Splits, test: Evaluation) -> TestReport:
        return TestReport()
