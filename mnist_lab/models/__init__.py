"""The architecture table: model name → builder (not MLflow's model registry, which is
tracking/model_registry.py).

Each builder takes keyword-only options, every one with a default, and returns a classifier that
maps raw digits [B, 1, 28, 28] in [0, 1] to logits [B, 10]. `timm:<name>` builds any timm model
by name, 1-channel and 10-class, behind MNIST normalisation.
"""

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.models.cnn import build_cnn, check_cnn
from mnist_lab.models.common import (
    MnistNormalize,
    TemperatureScaled,
    skip_pretrained_weights,
    skipped_init,
)
from mnist_lab.models.faster_rcnn import build_faster_rcnn
from mnist_lab.models.faster_rcnn import check_options as check_faster_rcnn
from mnist_lab.models.torchvision_nets import build_alexnet, build_vgg16, check_convnet
from mnist_lab.models.vit import build_timm_vit, build_vit, check_drop_path, check_vit

TIMM_PREFIX = "timm:"

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "vgg16": build_vgg16,
    "alexnet": build_alexnet,
    "vit": build_vit,
    "timm_vit": build_timm_vit,
    "faster_rcnn": build_faster_rcnn,
}

__all__ = [
    "MODELS",
    "TIMM_PREFIX",
    "ModelSpec",
    "build_model",
    "check_options",
    "model_names",
    "model_options",
]


def model_names() -> list[str]:
    """The registered names, then the hint 'timm:<name>' for any timm model."""
    return [*MODELS, f"{TIMM_PREFIX}<name>"]


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid models: {', '.join(model_names())}"
        ) from None


# The options every `timm:<name>` model takes: stochastic depth, which most timm architectures
# (ResNets, ViTs, ConvNeXts, EfficientNets, ...) accept as `drop_path_rate`.
TIMM_OPTIONS: dict[str, Any] = {"drop_path": 0.0}


def model_options(name: str) -> dict[str, Any]:
    """Option name → default for model `name`; TIMM_OPTIONS for 'timm:<name>'."""
    if name.startswith(TIMM_PREFIX):
        return dict(TIMM_OPTIONS)
    params = inspect.signature(_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_options(name: str, options: dict[str, Any]) -> None:
    """Model `name`'s options (its builder's defaults under `options`) by the builder's own
    rules, without building it: a ConfigError naming the first option broken."""
    full = {**_known_options(name, options), **options}
    if name.startswith(TIMM_PREFIX):
        check_drop_path(name, full["drop_path"])
    elif name in ("vit", "timm_vit"):
        check_vit(name, **full)
    elif name in ("vgg16", "alexnet"):
        check_convnet(name, **full)
    elif name == "cnn":
        check_cnn(**full)
    elif name == "faster_rcnn":
        check_faster_rcnn(**full)
    for key in ("weights", "weights_backbone"):  # read when the model is built, not checked there
        value = full.get(key)
        if value not in (None, "imagenet", "none") and not Path(value).is_file():
            raise ConfigError(
                f"{key}={value!r}: no such file; give 'imagenet', 'none' or the path of a "
                "state-dict file"
            )


def _known_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model `name`'s options with their defaults; a ConfigError for one it does not take."""
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    return valid


def build_model(name: str, **options: Any) -> nn.Module:
    """A fresh classifier `name` built with `options` (the rest keep their defaults)."""
    _known_options(name, options)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name.removeprefix(TIMM_PREFIX), **options)
    return _builder(name)(**options)


def _build_timm(arch: str, drop_path: float = 0.0) -> nn.Module:
    """timm.create_model(arch), 1-channel and 10-class, untrained, behind MnistNormalize;
    `drop_path` > 0 passes timm's `drop_path_rate` (stochastic depth)."""
    import timm  # imported on demand: it is slow to import and only `timm:` needs it here

    check_drop_path(f"{TIMM_PREFIX}{arch}", drop_path)
    extra = {"drop_path_rate": drop_path} if drop_path else {}
    if not arch or not timm.is_model(arch):
        raise ConfigError(
            f"unknown timm model {arch!r} in '{TIMM_PREFIX}{arch}'; list the names with "
            f'`python -c "import timm; print(timm.list_models())"` (e.g. {TIMM_PREFIX}resnet18)'
        )
    try:
        net = timm.create_model(arch, pretrained=False, in_chans=1, num_classes=10, **extra)
    except TypeError as e:
        if extra and "drop_path_rate" in str(e):
            raise ConfigError(
                f"timm model {arch!r} has no stochastic depth (drop_path_rate): leave "
                f"drop_path at 0 (got {drop_path})"
            ) from e
        raise ConfigError(f"timm model {arch!r} cannot be built for MNIST: {e}") from e
    except Exception as e:  # an architecture that cannot take 1 channel or 10 classes
        raise ConfigError(f"timm model {arch!r} cannot be built for MNIST: {e}") from e
    return nn.Sequential(MnistNormalize(), net)


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a trained module from this package's code alone, so a logged model is
    weights plus this spec and loading it runs no pickled code.

    model/options: the architecture's name and builder options the run trained with; part: ""
    for the classifier, or the attribute holding a sub-module (faster_rcnn's "detector");
    temperature_scaled: the module is `TemperatureScaled(...)` (its temperature is a weight).
    """

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    part: str = ""
    temperature_scaled: bool = False

    def build(self, init: bool = True) -> nn.Module:
        """The module, ready for `load_state_dict` of the trained weights; `init=False` skips
        the random initialisation (the weights are then whatever memory held: load them)."""
        with skip_pretrained_weights(), skipped_init() if not init else contextlib.nullcontext():
            module = build_model(self.model, **self.options)
        if self.part:
            module = getattr(module, self.part)
        return TemperatureScaled(module, 1.0) if self.temperature_scaled else module

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
