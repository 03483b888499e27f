"""Models from the architecture table (models/__init__.py): `build_model` builds one by name,
`ModelSpec` rebuilds a trained one for its weights. `timm:<name>` builds any timm model by name,
1-channel and 10-class, behind MNIST normalisation.
"""

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.models import TIMM_PREFIX, architecture, resolved_options
from mnist_lab.models.common import (
    MnistNormalize,
    TemperatureScaled,
    skip_pretrained_weights,
    skipped_init,
)


def build_model(name: str, **options: Any) -> nn.Module:
    """A fresh classifier `name` built with `options` (the rest keep the table's defaults)."""
    full = resolved_options(name, options)
    build = architecture(name).build_function()
    if name.startswith(TIMM_PREFIX):
        return build(name.removeprefix(TIMM_PREFIX), **full)
    return build(**full)


def build_timm(arch: str, *, drop_path: float) -> nn.Module:
    """timm.create_model(arch), 1-channel and 10-class, untrained, behind MnistNormalize;
    `drop_path` > 0 passes timm's `drop_path_rate` (stochastic depth)."""
    import timm  # imported on demand: it is slow to import and only `timm:` needs it here

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
