"""The one run configuration: defaults from `experiments/<model>.yaml`, overrides from flags.

Precedence, lowest first: the dataclass defaults and the architecture table's defaults, the model's
YAML file, a chosen run config (`--config experiments/cnn_fast.yaml`: a preset that lists what
it changes), then explicit overrides (CLI flags, `mlflow run -P`, a tuning trial). Everything is
validated here, before any data is read or any MLflow run is touched.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnist_lab.errors import ConfigError
from mnist_lab.models import architecture, check_options, is_detector, model_options
from mnist_lab.settings import is_unset, parse_bool, parse_number, setting

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The run configs and search spaces the package ships (the checkout's experiments/ and tuning/
# are links to them). A user's own experiments/ or tuning/ in the working folder comes first.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
EXPERIMENTS_DIR = SHIPPED_DIR / "experiments"

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("onecycle", "cosine", "none")
# torch.compile modes; those that replay CUDA graphs need each step's start marked (engine/loop.py).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
DEVICES = ("auto", "cpu", "cuda", "mps")
DIST_BACKENDS = ("auto", "gloo", "nccl")


# Model options that name a run (`run_name`), with their short prefixes.
RUN_NAME_OPTIONS = {"patch_size": "p", "dim": "d"}


@dataclass
class TrainConfig:
    """Everything a training run depends on. Logged whole as the run's params."""

    model: str = "cnn"
    # The YAML file the settings came from (a chosen config, else experiments/<model>.yaml),
    # relative to the project when inside it. Not a flag of its own: `--config` sets it.
    config_file: str | None = None
    # Optimisation.
    epochs: int = setting(3, "passes over the training split")
    batch_size: int = setting(128, "images a training step")
    lr: float = setting(3e-3, "learning rate (OneCycle's peak)")
    optimizer: str = setting("adamw", "optimizer", OPTIMIZERS)
    weight_decay: float = setting(5e-4, "weight decay of weight matrices and kernels")
    momentum: float = setting(0.9, "SGD's momentum (Nesterov)")
    scheduler: str = setting("onecycle", "learning-rate schedule, stepped each batch", SCHEDULERS)
    label_smoothing: float = setting(0.1, "label smoothing of the training loss")
    grad_clip: float = setting(1.0, "max gradient norm; 0 turns clipping off")
    early_stopping_patience: int = setting(
        0, "stop after this many epochs without a validation gain; 0 turns it off"
    )
    # Time to accuracy (`python -m mnist_lab.measure time-to-accuracy`).
    target_val_accuracy: float | None = setting(
        None,
        "note the training time until validation accuracy reaches this fraction, and stop "
        "there unless stop_at_target is false (unset: every epoch, no target)",
    )
    val_checks_per_epoch: int = setting(
        1, "validation checks an epoch while a target_val_accuracy is set"
    )
    stop_at_target: bool = setting(
        True,
        "end training at the check that reaches target_val_accuracy; false: note the time to "
        "it and train the whole schedule (accuracy at the same settings, as a comparison needs)",
    )
    augment: bool | str = setting(
        False,
        "training-time augmentation: false, true (shift ±2 px, rotate ±10°), a preset "
        "(robust) or op[:magnitude],... (mnist_lab/data/loader.py)",
    )
    clean_final_epochs: int = setting(
        0, "the last N epochs train on clean images (0: augment every epoch)"
    )
    # Data.
    data_dir: str | None = setting(None, "the folder holding MNIST/raw/ (unset: $MNIST_DATA_DIR)")
    val_size: int = setting(5000, "validation images held out of the 60 000 training images")
    max_train_samples: int | None = setting(None, "train on a stratified subset (unset: all)")
    max_test_samples: int | None = setting(None, "test on a stratified subset (unset: all)")
    # Kept apart, runs of different seeds are scored on the same digits and can be compared
    # digit by digit (analysis/statistics.py).
    seed: int = setting(0, "draws the initial weights, the batches and the augmentation")
    split_seed: int = setting(0, "draws the validation split and the subsets")
    # Runtime.
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda[:k] or mps")
    compile: bool = setting(False, "torch.compile the training step")
    compile_mode: str = setting(
        "default",
        "torch.compile's mode (needs compile); reduce-overhead replays CUDA graphs",
        COMPILE_MODES,
    )
    amp: bool = setting(True, "bf16 autocast on CUDA and on AMX CPUs (ignored elsewhere)")
    eval_batch_size: int = setting(
        256, "images an evaluation batch (a CPU evaluates fastest in batches that stay in cache)"
    )
    checkpoint: bool = setting(True, "log checkpoints/last.pt each epoch (what --resume needs)")
    dist_backend: str = setting(
        "auto", "torchrun's c10d backend (auto: NCCL on GPUs, Gloo on CPUs)", DIST_BACKENDS
    )
    sync_bn: bool = setting(False, "synchronise BatchNorm statistics across ranks (CUDA only)")
    system_metrics: bool = setting(
        True,
        "log CPU, memory, disk and network use (and GPU, with nvidia-ml-py) over the run as "
        "system/* metrics, every 10 s (MLflow's system metrics)",
    )
    robustness_samples: int = setting(
        2000, "test digits per MNIST-C corruption in the end-of-run report; 0: none"
    )
    # Architecture options, checked against the architecture table's entry for `model`.
    model_options: dict[str, Any] = field(default_factory=dict)

    def resolved_model_options(self) -> dict[str, Any]:
        """The table's defaults overlaid with this config's options: what the model gets."""
        return {**model_options(self.model), **self.model_options}

    def to_params(self) -> dict[str, Any]:
        """Flat name → value of every setting, model options included, as MLflow params."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del params["model_options"]
        return {**params, **self.resolved_model_options()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_name(self) -> str:
        """A readable run name derived from the settings: `cnn-5ep`, `vit-p7-d64-10ep`,
        `cnn-5ep-n10000` (a 10 000-image training subset)."""
        options = self.resolved_model_options()
        parts = [self.model.replace(":", "-")]
        parts += [f"{short}{options[k]}" for k, short in RUN_NAME_OPTIONS.items() if k in options]
        parts.append(f"{self.epochs}ep")
        if self.max_train_samples is not None:
            parts.append(f"n{self.max_train_samples}")
        return "-".join(parts)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)


TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "model_options"}
# The fields a flag, an `mlflow run -P` or a search space may set (`model` and the config file
# are chosen with --model and --config).
SETTINGS = set(TRAIN_FIELDS) - {"model", "config_file"}


def experiment_file(model: str) -> Path:
    """The model's run config, `experiments/<its run_config>.yaml` (the architecture table's
    entry; `timm:<name>` models share `experiments/timm.yaml`)."""
    return shipped_or_own("experiments", f"{architecture(model).run_config}.yaml")


def shipped_or_own(kind: str, name: str) -> Path:
    """`<kind>/<name>` (kind: experiments or tuning) of the working folder where the user has
    one, else the one the package ships."""
    own = Path.cwd() / kind / name
    return own if own.is_file() else SHIPPED_DIR / kind / name


def load_config(
    model: str | None,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> TrainConfig:
    """Build and validate a config: `experiments/<model>.yaml`, then the run config
    `config_file` if given, then non-None `overrides`.

    `model` may be None when `config_file` names one (its `model:` key); else it is "cnn".
    Keys of the YAML files and of `overrides` may be `TrainConfig` fields or options of the
    model (e.g. `patch_size` for `vit`); anything else is an error naming the key
    and the file.
    """
    chosen: dict[str, Any] = {}
    chosen_path = None
    if config_file is not None:
        chosen_path = resolve_config_file(config_file)
        chosen = _read_yaml(chosen_path)
        named = chosen.get("model")
        if model and named and named != model:
            raise ConfigError(
                f"--model {model} but {chosen_path} is a config for model {named!r}; "
                f"drop --model, or choose a config for {model}"
            )
        model = model or named
    model = model or TrainConfig.model
    architecture(model)  # a ConfigError naming the valid models for an unknown one
    values: dict[str, Any] = {}
    path = experiment_file(model)
    if path.exists():
        values.update(_read_yaml(path))
    if chosen_path is not None:
        build_config({**values, **chosen, "model": model}, source=str(chosen_path))
        values.update(chosen)
        path = chosen_path
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["model"] = model
    values["config_file"] = _shown_path(path) if path.exists() else None
    return build_config(values, source=str(path) if path.exists() else "overrides")


def resolve_config_file(name: str | Path) -> Path:
    """The run config `name`: a path as given, else a shipped one (`experiments/cnn_fast.yaml`
    or `cnn_fast.yaml` works from any folder); a ConfigError listing the shipped configs if
    neither is a file."""
    path = Path(name).expanduser()
    shipped = EXPERIMENTS_DIR / path.name
    if not path.is_file() and path.parent in (Path(), Path("experiments")) and shipped.is_file():
        path = shipped
    if not path.is_file():
        shipped = ", ".join(_shown_path(p) for p in sorted(EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(
            f"--config {name}: no such file; give the path of a YAML run config "
            f"(shipped: {shipped})"
        )
    return path.resolve()


def _shown_path(path: Path) -> str:
    """`experiments/<name>` for a shipped config, else `path` relative to the project when
    inside it, else absolute."""
    path = path.resolve()
    for root in (SHIPPED_DIR, PROJECT_ROOT):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def build_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Split flat `values` into run fields and model options, coerce types, validate."""
    values = dict(values)
    model = values.get("model", TrainConfig.model)
    options = dict(values.pop("model_options", None) or {})
    model_defaults = model_options(model)
    run_values: dict[str, Any] = {}
    for key, value in values.items():
        if key == "augment":
            run_values[key] = _coerce_augment(value, source)
        elif key in TRAIN_FIELDS:
            run_values[key] = _coerce(key, value, TRAIN_FIELDS[key].type, source)
        elif key in model_defaults:
            options[key] = value
        else:
            valid = sorted(TRAIN_FIELDS) + sorted(model_defaults)
            raise ConfigError(
                f"{source}: {key!r} is not a setting of model {model!r}; "
                f"valid settings: {', '.join(valid)}"
            )
    for key, value in list(options.items()):
        default = model_defaults.get(key)
        if default is not None and value is not None:
            options[key] = _coerce(key, value, type(default).__name__, source)
    config = TrainConfig(**run_values, model_options=options)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Reject values no run could use, naming the parameter and the allowed range."""
    c = config
    _check(c.epochs >= 1, "epochs", c.epochs, "must be >= 1")
    _check(c.batch_size >= 1, "batch_size", c.batch_size, "must be >= 1")
    _check(c.eval_batch_size >= 1, "eval_batch_size", c.eval_batch_size, "must be >= 1")
    _check(math.isfinite(c.lr) and c.lr > 0, "lr", c.lr, "must be > 0")
    _check(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be >= 0")
    _check(0 <= c.momentum < 1, "momentum", c.momentum, "must be in [0, 1)")
    _check(0 <= c.label_smoothing < 1, "label_smoothing", c.label_smoothing, "must be in [0, 1)")
    _check(c.grad_clip >= 0, "grad_clip", c.grad_clip, "must be >= 0 (0 turns clipping off)")
    _check(
        c.early_stopping_patience >= 0,
        "early_stopping_patience",
        c.early_stopping_patience,
        "must be >= 0 (0 turns early stopping off)",
    )
    _check(
        c.target_val_accuracy is None or 0 < c.target_val_accuracy <= 1,
        "target_val_accuracy",
        c.target_val_accuracy,
        "must be a fraction in (0, 1], e.g. 0.9876 (or unset to train every epoch)",
    )
    _check(
        c.val_checks_per_epoch >= 1,
        "val_checks_per_epoch",
        c.val_checks_per_epoch,
        "must be >= 1 (1: validate at the end of each epoch only)",
    )
    _check(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, f"must be one of {OPTIMIZERS}")
    _check(
        c.compile_mode in COMPILE_MODES,
        "compile_mode",
        c.compile_mode,
        f"must be one of {COMPILE_MODES}",
    )
    _check(
        c.compile or c.compile_mode == "default",
        "compile_mode",
        c.compile_mode,
        "needs compile: true (add --compile)",
    )
    _check(c.scheduler in SCHEDULERS, "scheduler", c.scheduler, f"must be one of {SCHEDULERS}")
    _check(
        c.dist_backend in DIST_BACKENDS,
        "dist_backend",
        c.dist_backend,
        f"must be one of {DIST_BACKENDS}",
    )
    _check(
        c.device in DEVICES or c.device.startswith("cuda:"),
        "device",
        c.device,
        f"must be one of {DEVICES} or cuda:<index>",
    )
    _check(
        0 <= c.clean_final_epochs <= c.epochs,
        "clean_final_epochs",
        c.clean_final_epochs,
        f"must be in [0, epochs={c.epochs}]",
    )
    if is_detector(c.model):  # scenes already place and scale digits at random
        for name, off in (("augment", False), ("clean_final_epochs", 0)):
            _check(
                getattr(c, name) == off,
                name,
                getattr(c, name),
                f"must be {off} for {c.model} (its scenes are made, not augmented)",
            )
    _check(10 <= c.val_size <= 50_000, "val_size", c.val_size, "must be in [10, 50000]")
    for name in ("seed", "split_seed"):
        _check(getattr(c, name) >= 0, name, getattr(c, name), "must be >= 0")
    _check(
        c.robustness_samples >= 0,
        "robustness_samples",
        c.robustness_samples,
        "must be >= 0 (0 turns the corruption suite off)",
    )
    for name in ("max_train_samples", "max_test_samples"):
        value = getattr(c, name)
        _check(value is None or value >= 10, name, value, "must be >= 10 (or unset for all)")
    check_options(c.model, c.model_options)  # imports the model's module (and torch)


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} {rule}")


def _coerce(key: str, value: Any, type_name: str | type, source: str) -> Any:
    """Turn strings from flags/YAML/MLflow params into the field's type; unset stays None."""
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if is_unset(value):
        return None if "None" in type_name else value
    kind = type_name.split(" |")[0]
    try:
        if kind == "bool":
            return parse_bool(value, key)
        if kind in ("int", "float"):
            return parse_number(value, key, int if kind == "int" else float)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return value


def _coerce_augment(value: Any, source: str) -> bool | str:
    """`augment` in its canonical form: False, True or "op:magnitude,..."; ConfigError naming
    the setting and its valid values for anything else."""
    if isinstance(value, int) and value in (0, 1):
        value = bool(value)  # YAML's 0 / 1 read as false / true
    from mnist_lab.data.loader import augment_spec  # data/ imports torch

    if value is None or isinstance(value, bool | str):
        try:
            return augment_spec(value or False)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    raise ConfigError(
        f"{source}: augment={value!r} is not valid; give true, false, a preset or "
        "a comma-separated list of op[:magnitude] (see mnist_lab/data/loader.py)"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of setting: value, got {type(data).__name__}"
        )
    return data
