"""Faster R-CNN (torchvision) that detects digits on a canvas and, given 28-px digits, classifies.

`build_faster_rcnn` returns a `DetectorClassifier`: its `detector` is a torchvision `FasterRCNN`
(labels 1..10 for digits 0..9, 0 is background) trained on scenes (`mnist_lab.scenes`); its
`forward` keeps the architecture table's contract, digits [B, 1, 28, 28] in [0, 1] → logits
[B, 10], by pasting each digit in the middle of a canvas and reading the top-scoring box.

Backbones: `small`, an in-project 4-stage CNN + FPN sized for 64-px canvases (the fast default);
`mobilenet_v3` (torchvision's mobilenet_v3_large FPN) and `resnet50` (resnet50 FPN v2), which
take `weights_backbone=imagenet|none|<path>` like VGG16/AlexNet. Anchors and the transform's
min/max size follow the canvas: no 800-px resize of a 64-px image.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops

from mnist_lab.data.scenes import paste
from mnist_lab.errors import ConfigError, WeightsError
from mnist_lab.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    reads_pretrained_weights,
)
from mnist_lab.models.torchvision_nets import (
    _file_state_dict,
    _imagenet_state_dict,
    describe_mismatch,
)
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES

# The ImageNet backbones see the canvas upscaled: mobilenet_v3's first FPN level has stride 16.
UPSCALE = {"small": 1, "mobilenet_v3": 4, "resnet50": 2}
MAX_TRAINABLE = {"small": 0, "mobilenet_v3": 6, "resnet50": 5}
ASPECT_RATIOS = (1.0, 2.0, 4.0)  # height / width: digits are upright, a "1" is ~4x taller
MAX_DIGITS = 4
SMALL_HEAD = 256  # width of the small backbone's box head


def check_faster_rcnn(
    name: str,
    *,
    backbone: str,
    weights_backbone: str,
    trainable_backbone_layers: int,
    canvas_size: int,
    min_scale: float,
    max_scale: float,
    max_digits: int,
    image_size: int,
) -> None:
    """Reject options no detector could use beyond the options' choices, naming the parameter
    (ConfigError)."""

    def check(ok: bool, option: str, value: object, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{name}: {option}={value!r} {rule}")

    check(
        not (backbone == "small" and weights_backbone == "imagenet"),
        "weights_backbone",
        weights_backbone,
        "has no ImageNet weights for backbone 'small'; use 'none', a state-dict path, or "
        "backbone mobilenet_v3 / resnet50",
    )
    top = MAX_TRAINABLE[backbone]
    check(
        backbone == "small" or 0 <= trainable_backbone_layers <= top,
        "trainable_backbone_layers",
        trainable_backbone_layers,
        f"must be in [0, {top}] for backbone {backbone!r}",
    )
    check(
        0 < min_scale <= max_scale, "min_scale", min_scale, f"must be in (0, max_scale={max_scale}]"
    )
    check(max_scale <= 8, "max_scale", max_scale, "must be <= 8")
    tile = math.ceil(IMAGE_SIZE * max_scale)
    check(
        32 <= canvas_size <= 512 and canvas_size >= tile,
        "canvas_size",
        canvas_size,
        f"is too small for the digit scale range: a digit at max_scale={max_scale} is {tile} px; "
        f"use canvas_size >= {max(tile, 32)} (and <= 512) or a smaller max_scale",
    )
    check(1 <= max_digits <= MAX_DIGITS, "max_digits", max_digits, f"must be in [1, {MAX_DIGITS}]")
    check(
        image_size == 0 or canvas_size <= image_size <= 1024,
        "image_size",
        image_size,
        f"must be 0 (automatic) or in [canvas_size={canvas_size}, 1024]",
    )


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Sequential):
    """[B, 1, H, W] MNIST-normalised → four stages at strides 2, 4, 8, 16 (32..128 channels)."""

    channels = (32, 64, 128, 128)

    def __init__(self) -> None:
        c = self.channels
        super().__init__(
            OrderedDict(
                layer1=nn.Sequential(conv_bn(1, c[0], 2), conv_bn(c[0], c[0])),
                layer2=nn.Sequential(conv_bn(c[0], c[1], 2), conv_bn(c[1], c[1])),
                layer3=nn.Sequential(conv_bn(c[1], c[2], 2), conv_bn(c[2], c[2])),
                layer4=nn.Sequential(conv_bn(c[2], c[3], 2), conv_bn(c[3], c[3])),
            )
        )


class GreyToImageNet(nn.Module):
    """Runs a 3-channel ImageNet backbone on grey images: [B, 1, H, W] in [0, 1] → its output."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body((x.expand(-1, 3, -1, -1) - self.mean) / self.std)


def _load_backbone(
    net: nn.Module,
    weights: str,
    backbone: str,
    imagenet: torchvision.models.WeightsEnum | None = None,
) -> None:
    """Fill `net` (the backbone's classification network) from 'imagenet' or a state-dict file;
    a file for another network is a WeightsError naming `weights_backbone`."""
    if weights == "none" or not reads_pretrained_weights():
        return
    sd = _imagenet_state_dict(imagenet) if weights == "imagenet" else _file_state_dict(weights)
    mismatch = describe_mismatch(net.state_dict(), sd)
    if mismatch:
        raise WeightsError(
            f"weights_backbone={weights!r} does not fit backbone {backbone!r} "
            f"({type(net).__name__}): {mismatch}. Give a state dict of that network, 'imagenet' or "
            "'none', or choose the backbone the file was saved from"
        )
    net.load_state_dict(sd, strict=False)


def _backbone(name: str, weights: str, trainable_layers: int) -> tuple[nn.Module, int]:
    """The FPN backbone (input [B, 1, H, W] as the transform leaves it) and its level count."""
    pretrained = weights != "none"
    if name == "small":
        body = SmallBackbone()
        _load_backbone(body, weights, name)
        layers = {"layer2": "0", "layer3": "1", "layer4": "2"}  # strides 4, 8, 16 (+ pool 32)
        fpn = BackboneWithFPN(body, layers, list(SmallBackbone.channels[1:]), out_channels=64)
        return fpn, 4
    if name == "mobilenet_v3":
        norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        net = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
        _load_backbone(
            net, weights, name, torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
        )
        layers = trainable_layers if pretrained else MAX_TRAINABLE[name]
        fpn = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=norm,
            trainable_layers=layers,
        )
        features = {k.removeprefix("features."): v for k, v in net.state_dict().items()}
        fpn.body.load_state_dict(features, strict=False)  # the classifier head is not in it
        return GreyToImageNet(fpn), 3
    net = torchvision.models.resnet50(weights=None)
    _load_backbone(net, weights, name, torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    layers = trainable_layers if pretrained else MAX_TRAINABLE[name]
    freeze_all_but(net, RESNET_STAGES[:layers])
    fpn = BackboneWithFPN(
        net,
        {f"layer{k}": str(k - 1) for k in range(1, 5)},  # strides 4-32 (+ pool 64)
        [256, 512, 1024, 2048],
        out_channels=256,
        norm_layer=nn.BatchNorm2d,
    )
    return GreyToImageNet(fpn), 5


# ResNet-50's stages from the head down: `trainable_backbone_layers` k trains the first k.
RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_all_but(net: nn.Module, stages: tuple[str, ...]) -> None:
    """Stop the gradients of every parameter of `net` outside `stages` (name prefixes); the
    stem's BatchNorm trains with the stem (torchvision's rule)."""
    if "conv1" in stages:
        stages = (*stages, "bn1")
    for name, parameter in net.named_parameters():
        if not name.startswith(stages):
            parameter.requires_grad_(False)


def anchor_sizes(levels: int, low: float, high: float) -> tuple[tuple[int, ...], ...]:
    """One anchor size per FPN level, geometric from `low` to `high` px."""
    ratio = (high / low) ** (1 / max(levels - 1, 1))
    return tuple((round(low * ratio**i),) for i in range(levels))


class DetectorClassifier(nn.Module):
    """A Faster R-CNN `detector` on canvas_size-px scenes that also classifies 28-px digits.

    forward(x: [B, 1, 28, 28] in [0, 1]) → logits [B, 10]: each digit is pasted in the middle of
    a canvas at the middle of the training scale range; softmax gives probability `score` to the
    top box's digit and shares 1 - score among the others; no box gives the uniform distribution.
    The detector runs in eval mode here; train it through `detector(images, targets)`.
    """

    # It classifies through box detection, which neither a CAM nor attention rollout follows
    # (analysis/explanations.py reads this rather than importing this module and torchvision).
    explainable = False

    def __init__(self, detector: FasterRCNN, canvas_size: int, scale: float) -> None:
        super().__init__()
        self.detector = detector
        self.canvas_size = canvas_size
        self.scale = scale

    def canvases(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 28, 28] → [B, 1, C, C], each digit centred at `self.scale`."""
        b = x.shape[0]
        scale = x.new_full((b,), self.scale)
        origin = x.new_full((b, 2), (self.canvas_size - IMAGE_SIZE * self.scale) / 2)
        return paste(x.float(), scale, origin, self.canvas_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detector.training:
            raise RuntimeError("DetectorClassifier.forward needs eval mode; call .eval() first")
        detections = self.detector(list(self.canvases(x)))
        probs, _ = top_box_probabilities(detections)
        return probs.clamp_min(1e-8).log()  # softmax(log p) = p


def top_box_probabilities(
    detections: list[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [B, 10] and predicted digits [B] (-1: no box) from torchvision's
    detections, one {"boxes", "labels", "scores"} per image, labels 1..10."""
    probs, predicted = [], []
    for d in detections:
        scores = d["scores"]
        if len(scores) == 0:
            probs.append(scores.new_full((NUM_CLASSES,), 1 / NUM_CLASSES))
            predicted.append(-1)
            continue
        top = int(scores.argmax())
        digit, score = int(d["labels"][top]) - 1, scores[top].float()
        p = ((1 - score) / (NUM_CLASSES - 1)).expand(NUM_CLASSES).clone()
        p[digit] = score
        probs.append(p)
        predicted.append(digit)
    device = detections[0]["scores"].device if detections else None
    return torch.stack(probs), torch.tensor(predicted, dtype=torch.long, device=device)


def build_faster_rcnn(
    *,
    backbone: str,
    weights_backbone: str,
    trainable_backbone_layers: int,
    canvas_size: int,
    min_scale: float,
    max_scale: float,
    max_digits: int,
    image_size: int,
) -> DetectorClassifier:
    """The `faster_rcnn` model.

    backbone: small | mobilenet_v3 | resnet50. weights_backbone: 'none' | 'imagenet' | path to
    a state dict of the backbone's network (SmallBackbone, torchvision mobilenet_v3_large or
    resnet50). trainable_backbone_layers: with pretrained weights, how many of the last stages
    train (torchvision's meaning); without, all train. Digits are pasted at 28·scale px,
    scale in [min_scale, max_scale], on canvas_size-px canvases, up to max_digits per training
    and multi-digit test scene. image_size: what the detector's transform resizes the canvas
    to; 0 = canvas_size × 1 (small), × 2 (resnet50), × 4 (mobilenet_v3).
    """
    size = image_size or canvas_size * UPSCALE[backbone]
    body, levels = _backbone(backbone, weights_backbone, trainable_backbone_layers)
    r = size / canvas_size
    # Ink boxes run from a thin "1" (~0.2 of a tile wide) to a whole 20-px-ink digit at max_scale.
    sizes = anchor_sizes(levels, 0.4 * IMAGE_SIZE * min_scale * r, IMAGE_SIZE * max_scale * r)
    anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * levels)
    small = backbone == "small"
    extra = {}
    if small:  # a 256-wide box head: torchvision's 1024 would be 4 M of the model's 5 M weights
        # sampling_ratio 1: RoIAlign's backward dominates a CPU step; digits need no finer grid.
        extra["box_roi_pool"] = MultiScaleRoIAlign(["0", "1", "2"], 7, sampling_ratio=1)
        extra["box_head"] = TwoMLPHead(body.out_channels * 7 * 7, SMALL_HEAD)
        extra["box_predictor"] = FastRCNNPredictor(SMALL_HEAD, NUM_CLASSES + 1)
    if backbone == "resnet50":  # the v2 heads, as torchvision's fasterrcnn_resnet50_fpn_v2
        extra["rpn_head"] = RPNHead(body.out_channels, len(ASPECT_RATIOS), conv_depth=2)
        extra["box_head"] = FastRCNNConvFCHead(
            (body.out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d
        )
    detector = FasterRCNN(
        body,
        num_classes=None if small else NUM_CLASSES + 1,  # small brings its own predictor
        min_size=size,
        max_size=size,
        image_mean=[MNIST_MEAN] if small else [0.0],  # ImageNet backbones normalise themselves
        image_std=[MNIST_STD] if small else [1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=300,  # at most 4 digits a scene: 300 proposals are plenty
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64,  # RoIs per scene for the box head; 25 % positives
        box_score_thresh=0.01,  # a weak box beats no box for classification and mAP
        box_detections_per_img=20,
        **extra,
    )
    return DetectorClassifier(detector, canvas_size, (min_scale + max_scale) / 2)
