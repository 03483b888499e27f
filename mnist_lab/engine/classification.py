"""The classifiers' task: cross-entropy on digits, batched from device-resident tensors."""

from __future__ import annotations

import itertools
import logging
import time

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from mnist_lab import names
from mnist_lab.analysis.corruptions import DEFAULT_SEVERITY, SEVERITIES, corruption_names
from mnist_lab.analysis.explanations import (
    METHOD_TITLES,
    explanation_examples,
    explanations_figure,
    heatmaps,
    method_name,
)
from mnist_lab.analysis.robustness import (
    corruptions_figure,
    evaluate_robustness,
    model_predict,
    robustness_figure,
)
from mnist_lab.analysis.sources import evaluate_sources, source_sets, sources_figure
from mnist_lab.config import TrainConfig
from mnist_lab.data.loader import BatchLoader
from mnist_lab.data.mnist import Splits
from mnist_lab.engine.device import autocast, synchronize
from mnist_lab.engine.distributed import shard
from mnist_lab.engine.tasks import Batch, Evaluation, Loader, TestReport, calibration_report
from mnist_lab.errors import LabError

log = logging.getLogger(__name__)
# The corrupted test digits are the same for every run, whatever its training seed, and the
# same as the `robustness` command's default: runs and models compare image for image.
CORRUPTION_SEED = 0
# Digits per class of each other source (fonts, handwriting) in the report: robustness_samples
# over this (20 a class, 200 a source, at the default 2 000).
SOURCE_SHARE = 100


class ClassificationTask:
    """Cross-entropy on logits [B, 10] for digits [B, 1, 28, 28]; the training loss carries the
    config's label smoothing, evaluation losses are plain cross-entropy."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def loaders(self, splits: Splits) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
        config = self.config
        rank, world_size = shard()
        train = BatchLoader(
            splits.train_x,
            splits.train_y,
            batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            augment=config.augment,
            augment_epochs=config.epochs - config.clean_final_epochs,
            drop_last=False,
            rank=rank,
            world_size=world_size,
        )
        return (
            train,
            BatchLoader(splits.val_x, splits.val_y, batch_size=config.eval_batch_size),
            BatchLoader(splits.test_x, splits.test_y, batch_size=config.eval_batch_size),
        )

    def step_module(self, model: nn.Module) -> nn.Module:
        return model

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
        losses, scores, targets = [], [], []
        seconds = 0.0
        for x, y in itertools.chain([first], batches):
            start = time.perf_counter()
            with autocast(device, amp):
                logits = model(x).float()
            synchronize(device)
            seconds += time.perf_counter() - start
            losses.append(F.cross_entropy(logits, y, reduction="sum"))
            scores.append(logits)
            targets.append(y)
        logits = torch.cat(scores)
        probabilities = logits.softmax(1).cpu().numpy()
        target = torch.cat(targets).cpu().numpy()
        predictions = probabilities.argmax(1)
        return Evaluation(
            loss=float(torch.stack(losses).sum()) / len(target),
            accuracy=float((predictions == target).mean()),
            predictions=predictions,
            targets=target,
            probabilities=probabilities,
            seconds=seconds,
            logits=logits.cpu().numpy(),
        )

    def test_report(self, model: nn.Module, splits: Splits, test: Evaluation) -> TestReport:
        """How the model fails: calibration (temperature fitted on validation, so the logged
        model serves calibrated probabilities), the MNIST-C corruptions and large shifts of the
        first `robustness_samples` test digits at every severity, and heat maps of what it looks
        at. All in fp32, as the logged model serves; corruptions seeded with CORRUPTION_SEED, as
        `robustness` is. The per-corruption metrics are MNIST-C's severity's. Then digits from
        other sources (fonts, handwriting scanned at 8-32 px) read as `predict` reads photos,
        each source's accuracy with its Wilson interval (`reports/sources.json`)."""
        config = self.config
        report = calibration_report(self, model, splits, test)
        try:
            report.figures[names.PLOT_EXPLANATIONS] = explain_test_examples(model, splits, test)
        except LabError as err:  # a model no method can explain: the run and its model stand
            log.warning("no %s: %s", names.PLOT_EXPLANATIONS, err)
        samples = min(config.robustness_samples, len(splits.test_y))
        if samples:
            images = splits.test_x[:samples].unsqueeze(1).float().div(255)
            result = evaluate_robustness(
                model_predict(model),
                images,
                splits.test_y[:samples],
                corruptions=corruption_names(),
                severities=SEVERITIES,
                seed=CORRUPTION_SEED,
                batch_size=config.eval_batch_size,
            )
            report.metrics |= {
                **result.metrics(DEFAULT_SEVERITY),
                **result.graded_metrics(),
                names.ROBUSTNESS_EVAL_S: result.seconds,
            }
            report.figures[names.PLOT_CORRUPTIONS] = corruptions_figure(images[0], SEVERITIES)
            report.figures[names.PLOT_ROBUSTNESS] = robustness_figure(result)
            report.reports[names.REPORT_ROBUSTNESS] = result.to_report()
            start = time.perf_counter()
            sets = source_sets(per_class=max(1, samples // SOURCE_SHARE), seed=CORRUPTION_SEED)
            scores = evaluate_sources(model_predict(model), sets, images.device)
            report.metrics |= {names.source_accuracy(s): v.accuracy for s, v in scores.items()}
            report.metrics[names.SOURCES_EVAL_S] = time.perf_counter() - start
            report.figures[names.PLOT_SOURCES] = sources_figure(sets, scores)
            report.reports[names.REPORT_SOURCES] = {s: v.to_report() for s, v in scores.items()}
        return report


def explain_test_examples(model: nn.Module, splits: Splits, test: Evaluation) -> Figure:
    """Heat maps of one test digit per class and the most confident mistakes."""
    labels = torch.from_numpy(test.targets)
    predictions = torch.from_numpy(test.predictions)
    confidences = torch.from_numpy(test.probabilities.max(1))
    index = explanation_examples(labels, predictions, confidences)
    images = splits.test_x[index.to(splits.test_x.device)].unsqueeze(1).float().div(255)
    maps = heatmaps(model, images, predictions[index].to(images.device))
    return explanations_figure(
        images.cpu(),
        labels[index],
        predictions[index],
        confidences[index],
        maps,
        title=f"{METHOD_TITLES[method_name(model)]}: what the model looks at "
        "(heat: relevance to its answer)",
    )
