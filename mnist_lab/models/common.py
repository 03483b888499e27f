"""Input adapters shared by the classifiers.

Every classifier takes raw digits, x: [B, 1, 28, 28] float in [0, 1], and returns logits
[B, 10]. Normalisation (and, for the 224-px transfer modes, resizing and channel repetition)
happens inside the model, so a logged model needs no preprocessing from its caller.
"""

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_READ_PRETRAINED = contextvars.ContextVar("read_pretrained", default=True)


@contextlib.contextmanager
def skip_pretrained_weights() -> Iterator[None]:
    """Build models as configured, the structure pretrained weights imply included (frozen
    BatchNorm, ...), without reading ImageNet or weight files: the caller loads a complete
    state dict next (rebuilding a logged model)."""
    token = _READ_PRETRAINED.set(False)
    try:
        yield
    finally:
        _READ_PRETRAINED.reset(token)


def reads_pretrained_weights() -> bool:
    return _READ_PRETRAINED.get()


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """torch.nn.init's functions leave their tensor as it is: building a module whose every
    tensor is loaded next skips the random initialisation (1.2 s of VGG16's 1.2 s load).
    Process-wide while it lasts, as Hugging Face's `no_init_weights`."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in saved:
            setattr(nn.init, name, _untouched)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def _untouched(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TOPHAT_SIZE = 7  # wider than MNIST strokes (2-4 px), narrower than the digit


class InputNorm(nn.Module):
    """[B, 1, H, W] in [0, 1] → [B, 1, H, W] in [0, 1], each image rescaled on its own.

    The `input_norm` option of every classifier, the first thing its forward does. No
    parameters, so any setting loads any checkpoint's weights. "minmax" stretches each image to
    [0, 1], undoing a brightness lift or lost contrast; "tophat" first subtracts a 7×7 grey-scale
    opening (the background under strokes thinner than 7 px: fog, brightness, wide stripes), then
    stretches; "none" passes the image through.
    """

    def __init__(self, mode: str = "none") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        if self.mode == "tophat":
            pad = TOPHAT_SIZE // 2
            eroded = -F.max_pool2d(-x, TOPHAT_SIZE, stride=1, padding=pad)
            x = x - F.max_pool2d(eroded, TOPHAT_SIZE, stride=1, padding=pad)
        low = x.amin((1, 2, 3), keepdim=True)
        high = x.amax((1, 2, 3), keepdim=True)
        return (x - low) / (high - low).clamp(min=1e-3)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class MnistNormalize(nn.Module):
    """[B, 1, H, W] in [0, 1] → standardised with MNIST's mean and std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - MNIST_MEAN) / MNIST_STD


class ImageNetAdapter(nn.Module):
    """[B, 1, 28, 28] in [0, 1] → [B, 3, size, size] normalised as ImageNet models expect.

    Resizing is one batched `F.interpolate` on the input's device, never a per-image PIL call.
    """

    def __init__(self, size: int = 224) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std


class TemperatureScaled(nn.Module):
    """A classifier whose logits are divided by a temperature fitted after training.

    forward(x: [B, 1, 28, 28]) → `classifier(x) / temperature`, [B, 10]. The argmax, so the
    accuracy, is the classifier's; softmax of the result is calibrated (Guo et al. 2017).
    """

    def __init__(self, classifier: nn.Module, temperature: float) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x) / self.temperature
