"""Faster R-CNN in the one training loop: scene loaders, the engine `Task`, detection metrics.

Training scenes hold 1..max_digits digits of the train split; validation and the test
classification use one-digit scenes of the val split and of the MNIST test set (predicted class:
the label of the top-scoring box; no box counts as wrong); mAP uses multi-digit test scenes.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_lab import names
from mnist_lab.analysis.run_figures import detections_figure
from mnist_lab.config import TrainConfig
from mnist_lab.data.mnist import Splits
from mnist_lab.data.scenes import SceneLoader, Scenes
from mnist_lab.engine.device import autocast, synchronize
from mnist_lab.engine.distributed import shard
from mnist_lab.engine.tasks import Evaluation, TestReport, calibration_report
from mnist_lab.errors import LabError

FIGURE_SCENES = 12


def scene_loader(
    config: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    train: bool = False,
    multi: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> SceneLoader:
    """Scenes of one split, shaped by the config's model options: shuffled multi-digit batches
    of `batch_size` for training, fixed batches of `eval_batch_size` otherwise."""
    options = config.resolved_model_options()
    return SceneLoader(
        images,
        labels,
        config.batch_size if train else config.eval_batch_size,
        canvas_size=options["canvas_size"],
        min_scale=options["min_scale"],
        max_scale=options["max_scale"],
        max_digits=options["max_digits"] if train or multi else 1,
        shuffle=train,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
    )


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def loss_mode(detector: nn.Module) -> Iterator[None]:
    """torchvision's detectors return losses only in train mode: switch to it with the norm
    layers kept in eval mode, so measuring a loss does not move the BatchNorm statistics."""
    detector.train()
    for m in detector.modules():
        if isinstance(m, BATCH_NORMS):
            m.eval()
    try:
        yield
    finally:
        detector.eval()


class DetectionTask:
    """The engine `Task` for `DetectorClassifier` models on `Scenes` batches.

    The training loss is torchvision's summed Faster R-CNN loss (RPN objectness + RPN box +
    classification + box regression). Training accuracy would need a second, inference pass,
    so it is reported as NaN (not measured).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def loaders(self, splits: Splits) -> tuple[SceneLoader, SceneLoader, SceneLoader]:
        """Train (multi-digit, train split), val and test (one digit a scene) loaders."""
        config = self.config
        rank, world_size = shard()
        return (
            scene_loader(
                config, splits.train_x, splits.train_y, train=True, rank=rank, world_size=world_size
            ),
            scene_loader(config, splits.val_x, splits.val_y),
            scene_loader(config, splits.test_x, splits.test_y),
        )

    def step_module(self, model: nn.Module) -> nn.Module:
        """What a training step calls: the torchvision detector (images, targets → losses)."""
        return model.detector

    def train_step(
        self, detector: nn.Module, batch: Scenes
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        losses = detector(list(batch.images), batch.targets())
        loss = sum(losses.values())
        return loss, loss.new_tensor(float("nan")), len(batch)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: SceneLoader, amp: bool) -> Evaluation:
        """Classification through detection on one-digit scenes, and the summed detector loss
        per scene. `seconds` times the detection passes only, after one warm-up batch."""
        detector = model.detector
        detector.eval()
        batches = iter(loader)
        first = next(batches, None)
        if first is None:
            raise LabError("cannot evaluate on an empty split")
        device = first.images.device
        with autocast(device, amp):
            detector(list(first.images[:1]))
        # Here, not at the top: every run imports this module; only a detector's needs torchvision.
        from mnist_lab.models.faster_rcnn import top_box_probabilities

        synchronize(device)
        loss_sum, probs, predicted, targets, seconds = 0.0, [], [], [], 0.0
        for scenes in itertools.chain([first], batches):
            start = time.perf_counter()
            with autocast(device, amp):
                detections = detector(list(scenes.images))
            synchronize(device)
            seconds += time.perf_counter() - start
            with loss_mode(detector), autocast(device, amp):
                losses = detector(list(scenes.images), scenes.targets())
            loss_sum += float(sum(losses.values())) * len(scenes)
            p, digit = top_box_probabilities(detections)
            probs.append(p.float())
            predicted.append(digit)
            targets.append(scenes.labels[:, 0] - 1)
        target = torch.cat(targets).cpu().numpy()
        prediction = torch.cat(predicted).cpu().numpy()
        probabilities = torch.cat(probs)
        return Evaluation(
            loss=loss_sum / len(target),
            accuracy=float((prediction == target).mean()),
            predictions=prediction,
            targets=target,
            probabilities=probabilities.cpu().numpy(),
            seconds=seconds,
            logits=probabilities.clamp_min(1e-8).log().cpu().numpy(),  # DetectorClassifier's
        )

    def test_report(self, model: nn.Module, splits: Splits, test: Evaluation) -> TestReport:
        """Detection metrics and figure; calibration of the digit probabilities (see
        `calibration_report`: the logged classifier serves them calibrated); and the raw
        torchvision detector as its own model. No heat maps: CAM methods explain a classifier's
        logits, and a detection's score comes out of box selection and NMS."""
        report = calibration_report(self, model, splits, test)
        metrics, figure = detection_report(model, self.config, splits, test)
        report.metrics |= metrics
        report.figures[names.PLOT_DETECTIONS] = figure
        report.modules[names.DETECTOR_ARTIFACT] = "detector"
        return report


@torch.inference_mode()
def detection_report(
    model: nn.Module, config: TrainConfig, splits: Splits, test: Evaluation
) -> tuple[dict[str, float], Figure]:
    """test_no_detection_rate, test_map_50 and test_map (COCO mAP@[.5:.95], torchmetrics) on
    multi-digit scenes of the test set, and the figure of some of those scenes."""
    from torchmetrics.detection import MeanAveragePrecision  # slow import, only needed here

    detector = model.detector.eval()
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    shown: tuple[Scenes, list[dict[str, torch.Tensor]]] | None = None
    for scenes in scene_loader(config, splits.test_x, splits.test_y, multi=True):
        detections = detector(list(scenes.images))
        detections = [
            {k: v.float() if k != "labels" else v for k, v in d.items()} for d in detections
        ]
        metric.update(detections, scenes.targets())
        if shown is None:
            shown = (scenes, detections)
    result = metric.compute()
    metrics = {
        names.TEST_NO_DETECTION_RATE: float((test.predictions < 0).mean()),
        names.TEST_MAP_50: float(result["map_50"]),
        names.TEST_MAP: float(result["map"]),
    }
    scenes, detections = shown
    n = min(FIGURE_SCENES, len(scenes))
    figure = detections_figure(
        scenes.images[:n, 0].cpu().numpy(),
        [t["boxes"].cpu().numpy() for t in scenes.targets()[:n]],
        [t["labels"].cpu().numpy() - 1 for t in scenes.targets()[:n]],
        [d["boxes"].cpu().numpy() for d in detections[:n]],
        [d["labels"].cpu().numpy() - 1 for d in detections[:n]],
        [d["scores"].cpu().numpy() for d in detections[:n]],
    )
    return metrics, figure
