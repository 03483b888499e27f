"""The architecture table: model name → its builder, its options and its files (not MLflow's
model registry, which is tracking/model_registry.py).

Each entry says how to build the model, every option it takes (default, choices, help), how its
options are checked, its task, whether `benchmark` trains it, and its run config
`experiments/<run_config>.yaml` and search space `tuning/<search_space>.yaml`. The CLI, the run
config, the tuner and `benchmark` read this table, and nothing else lists the architectures.

Importing it imports no torch (`--help` reads it): builders and checks are named as
"module:function" and imported when a model is built (models/build.py) or checked. A builder
takes the options as keyword-only arguments, with no defaults of its own, and returns a module
that maps raw digits [B, 1, 28, 28] in [0, 1] to logits [B, 10]. `timm:<name>` builds any timm
model by name (the `TIMM` entry). A user's own architecture joins with `register_architecture`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mnist_lab.errors import ConfigError

TIMM_PREFIX = "timm:"
Task = Literal["classifier", "detector"]


@dataclass(frozen=True)
class Option:
    """One option of a builder: its default, what it means (for `train --help`), and its
    choices where only some values are valid (checked before the architecture's own check)."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Architecture:
    """One row of the table.

    builder: "module:function" or the function itself, called `builder(**options)` with every
    option (the `TIMM` entry's: `builder(arch, **options)`). check: the same for a function
    `check(name, **options)` that raises a ConfigError naming the first option broken, without
    building; None when the options' choices are all there is to check. task: "detector" for
    a model trained on scenes (engine/detection.py), else "classifier". benchmark: whether
    `benchmark` trains it by default. run_config / search_space: the stems of
    `experiments/<run_config>.yaml` and `tuning/<search_space>.yaml` (default: the name).
    """

    name: str
    builder: str | Callable[..., Any]
    options: dict[str, Option] = field(default_factory=dict)
    check: str | Callable[..., None] | None = None
    task: Task = "classifier"
    benchmark: bool = True
    run_config: str = ""
    search_space: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_config", self.run_config or self.name)
        object.__setattr__(self, "search_space", self.search_space or self.name)

    def defaults(self) -> dict[str, Any]:
        """Option name → default."""
        return {name: option.default for name, option in self.options.items()}

    def build_function(self) -> Callable[..., Any]:
        return _resolve(self.builder)

    def check_function(self) -> Callable[..., None] | None:
        return None if self.check is None else _resolve(self.check)


def _resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A "module:function" reference imported (the heavy imports happen here), or the callable."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# Options several architectures share, stated once.
INPUT_NORM = Option(
    "none", "per-image rescaling before MNIST normalisation", ("none", "minmax", "tophat")
)
DROP_PATH = Option(0.0, "stochastic depth of the last block")


def _convnet(name: str, dropout: float) -> Architecture:
    return Architecture(
        name,
        f"mnist_lab.models.torchvision_nets:build_{name}",
        {
            "weights": Option(
                "none", "pretrained weights: none, imagenet or the path of a state-dict file"
            ),
            "input_size": Option(
                32, "32 (native small-image adaptation) or 224 (ImageNet transfer)", (32, 224)
            ),
            "freeze_features": Option(False, "train only the new classifier (linear probing)"),
            "dropout": Option(dropout, "dropout in the classifier"),
            "input_norm": INPUT_NORM,
        },
        check="mnist_lab.models.torchvision_nets:check_convnet",
    )


def _vit(name: str, builder: str, benchmark: bool) -> Architecture:
    return Architecture(
        name,
        builder,
        {
            "patch_size": Option(7, "pixels a patch side (must divide 28)", (4, 7, 14)),
            "dim": Option(64, "embedding width; a multiple of heads"),
            "depth": Option(6, "transformer blocks"),
            "heads": Option(4, "attention heads"),
            "mlp_ratio": Option(2.0, "MLP width over dim"),
            "dropout": Option(0.0, "dropout in the transformer"),
            "input_norm": INPUT_NORM,
            "drop_path": DROP_PATH,
        },
        check="mnist_lab.models.vit:check_vit",
        benchmark=benchmark,
    )


ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture(
        "cnn",
        "mnist_lab.models.cnn:build_cnn",
        {
            "depth": Option(3, "conv blocks, 1-4"),
            "width": Option(24, "channels of the first conv block"),
            "dropout": Option(0.1, "dropout before the head"),
            "input_norm": INPUT_NORM,
            "pool": Option("flatten", "how the last map reaches the head", ("flatten", "avg")),
            "convs": Option(1, "convolutions a conv block, 1-4"),
        },
        check="mnist_lab.models.cnn:check_cnn",
    ),
    "vgg16": _convnet("vgg16", dropout=0.5),
    "alexnet": _convnet("alexnet", dropout=0.5),
    "vit": _vit("vit", "mnist_lab.models.vit:build_vit", benchmark=True),
    "timm_vit": _vit("timm_vit", "mnist_lab.models.vit:build_timm_vit", benchmark=False),
    "faster_rcnn": Architecture(
        "faster_rcnn",
        "mnist_lab.models.faster_rcnn:build_faster_rcnn",
        {
            "backbone": Option(
                "small", "the detector's backbone", ("small", "mobilenet_v3", "resnet50")
            ),
            "weights_backbone": Option(
                "none", "backbone weights: none, imagenet or the path of a state-dict file"
            ),
            "trainable_backbone_layers": Option(
                3, "backbone stages that train (the rest stay frozen)"
            ),
            "canvas_size": Option(64, "pixels a scene side"),
            "min_scale": Option(0.8, "smallest digit scale in a scene"),
            "max_scale": Option(1.4, "largest digit scale in a scene"),
            "max_digits": Option(4, "digits a training scene holds at most"),
            "image_size": Option(0, "the detector's internal resize (0: the canvas size)"),
        },
        check="mnist_lab.models.faster_rcnn:check_faster_rcnn",
        task="detector",
    ),
}

# Any timm model by name, `timm:<name>`: stochastic depth is the one option most timm
# architectures (ResNets, ViTs, ConvNeXts, EfficientNets, ...) take, as `drop_path_rate`.
TIMM = Architecture(
    f"{TIMM_PREFIX}<name>",
    "mnist_lab.models.build:build_timm",
    {"drop_path": DROP_PATH},
    check="mnist_lab.models.vit:check_drop_path",
    benchmark=False,
    run_config="timm",
    search_space="timm",
)


def register_architecture(entry: Architecture) -> Architecture:
    """Add `entry` to the table: from then on it trains, tunes, compares and has its flags
    like the lab's own. A ConfigError if its name is taken or is a timm name, or if its builder
    (given as a function) does not take exactly its options, keyword-only."""
    if entry.name in ARCHITECTURES or entry.name.startswith(TIMM_PREFIX):
        raise ConfigError(
            f"architecture {entry.name!r} is already in the table (or is a timm: name); "
            "pick another name"
        )
    if callable(entry.builder):
        params = inspect.signature(entry.builder).parameters.values()
        taken = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        if sorted(taken) != sorted(entry.options):
            raise ConfigError(
                f"architecture {entry.name!r}: its builder takes {', '.join(taken) or 'nothing'} "
                f"keyword-only, its options are {', '.join(entry.options) or 'none'}; make "
                "them the same (def build(*, option, ...))"
            )
    ARCHITECTURES[entry.name] = entry
    return entry


def architecture(name: str) -> Architecture:
    """The table's entry for model `name` (`TIMM` for 'timm:<name>'); a ConfigError listing
    the valid names else."""
    if name.startswith(TIMM_PREFIX):
        return TIMM
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid models: {', '.join(model_names())}"
        ) from None


def table_modules() -> list[str]:
    """The modules the table names for builders and checks: imported only when a model is built,
    so a logged model's code (tracking/pyfunc.py) carries them beside what its loader imports."""
    refs = [ref for e in [*ARCHITECTURES.values(), TIMM] for ref in (e.builder, e.check)]
    return sorted({ref.partition(":")[0] for ref in refs if isinstance(ref, str)})


def model_names() -> list[str]:
    """The table's names, then the hint 'timm:<name>' for any timm model."""
    return [*ARCHITECTURES, TIMM.name]


def benchmark_models() -> list[str]:
    """The architectures `benchmark` trains by default, in table order."""
    return [name for name, entry in ARCHITECTURES.items() if entry.benchmark]


def is_detector(name: str) -> bool:
    """Whether model `name` trains on scenes (a detector) rather than on digits."""
    return architecture(name).task == "detector"


def model_options(name: str) -> dict[str, Any]:
    """Option name → default for model `name`."""
    return architecture(name).defaults()


def options_by_name() -> dict[str, dict[str, Option]]:
    """Option name → {model: its Option}: what a shared flag such as --depth means per model."""
    found: dict[str, dict[str, Option]] = {}
    for model, entry in ARCHITECTURES.items():
        for option, spec in entry.options.items():
            found.setdefault(option, {})[model] = spec
    return found


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model `name`'s options: its defaults under `options`, checked against the choices and the
    architecture's check (which imports its module); a ConfigError naming the first option
    broken, or one the model does not take."""
    entry = architecture(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(entry.options) or 'none'}"
        )
    full = {**entry.defaults(), **options}
    for option, spec in entry.options.items():
        if spec.choices is not None and full[option] not in spec.choices:
            raise ConfigError(
                f"{name}: {option} must be one of {', '.join(map(str, spec.choices))} "
                f"({spec.help}), got {full[option]!r}"
            )
    check = entry.check_function()
    if check is not None:
        check(name, **full)
    return full


def check_options(name: str, options: dict[str, Any]) -> None:
    """`resolved_options`' checks, and that a weights file an option names exists (read when the
    model is built, which a run config's check does not do)."""
    full = resolved_options(name, options)
    for key in ("weights", "weights_backbone"):
        value = full.get(key)
        if value not in (None, "imagenet", "none") and not Path(value).is_file():
            raise ConfigError(
                f"{key}={value!r}: no such file; give 'imagenet', 'none' or the path of a "
                "state-dict file"
            )
