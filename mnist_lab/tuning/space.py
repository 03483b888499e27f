"""Search spaces as data: `tuning/<model>.yaml` → Optuna suggestions → config overrides.

A space file has up to three sections:

    fixed:            # settings every trial uses (the epoch budget, checkpointing off, ...)
      epochs: 5
    params:           # one entry per tuned setting, in the order they are suggested
      lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
      depth: {type: int, low: 2, high: 4}
      width: {type: categorical, choices: [16, 24, 32]}
      freeze_features: {type: categorical, choices: [true, false], when: {weights: imagenet}}
      heads:          # a distribution per value of an earlier parameter
        depends_on: dim
        cases:
          64: {type: categorical, choices: [2, 4, 8]}
          96: {type: categorical, choices: [2, 3, 4, 6]}
    pruner:           # optional keyword arguments of each pruner kind
      median: {n_startup_trials: 5, n_warmup_steps: 1}

Every name must be a `TrainConfig` field or an option of the model. A conditional parameter is
suggested under its own Optuna name (`heads|dim=64`), because TPE cannot model one name whose
choices change from trial to trial; the config still gets `heads`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from mnist_lab.config import SETTINGS, SHIPPED_DIR, load_config, shipped_or_own
from mnist_lab.errors import ConfigError
from mnist_lab.models import architecture, model_options

TUNING_DIR = SHIPPED_DIR / "tuning"  # the shipped spaces; tuning/ of the working folder first
SECTIONS = ("fixed", "params", "pruner")
KINDS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
PRUNER_KINDS = ("hyperband", "median")
NOT_TRAINING = ("checkpoint",)  # fixed settings that change nothing a trial measures


@dataclass
class SearchSpace:
    """A validated space file. `params` keeps the file's order: conditions refer backwards."""

    model: str
    path: Path
    fixed: dict[str, Any]
    params: dict[str, dict[str, Any]]
    pruner: dict[str, dict[str, Any]] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask `trial` for every parameter whose condition holds; return config overrides."""
        values: dict[str, Any] = dict(self.fixed)
        chosen: dict[str, Any] = {}
        for name, spec in self.params.items():
            if "depends_on" in spec:
                if spec["depends_on"] not in values:
                    continue  # its parent was not suggested in this trial
                parent = values[spec["depends_on"]]
                spec = spec["cases"].get(_key(parent))
                if spec is None:
                    continue  # no case for this value: the setting keeps its default
                optuna_name = f"{name}|{self.params[name]['depends_on']}={parent}"
            else:
                optuna_name = name
            if not _holds(spec.get("when"), values):
                continue
            chosen[name] = values[name] = _suggest(trial, optuna_name, spec)
        return chosen

    def defaults_params(self, defaults: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Where `defaults` (experiments/<model>.yaml's values) lie in this space: the Optuna
        params of a trial that takes each default inside its distribution ({optuna name:
        value}, to enqueue), and the defaults outside it ({name: value}: the sampler chooses
        those, and whatever depends on them)."""
        values: dict[str, Any] = dict(self.fixed)
        inside: dict[str, Any] = {}
        outside: dict[str, Any] = {}
        for name, spec in self.params.items():
            optuna_name = name
            if "depends_on" in spec:
                parent = spec["depends_on"]
                if parent not in values:
                    continue
                spec = spec["cases"].get(_key(values[parent]))
                if spec is None:
                    continue
                optuna_name = f"{name}|{parent}={values[parent]}"
            if not _holds(spec.get("when"), values):
                continue
            value = defaults.get(name)
            if name in defaults and _contains(spec, value):
                inside[optuna_name] = values[name] = _as_kind(spec, value)
            else:
                outside[name] = value
        return inside, outside

    def fixed_over_defaults(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The space's `fixed` settings that differ from `defaults` (every trial, the defaults'
        one included, trains with these): {name: fixed value}."""
        return {
            k: v
            for k, v in self.fixed.items()
            if k in defaults and defaults[k] != v and k not in NOT_TRAINING
        }

    def fingerprint(self, objective: dict[str, Any]) -> str:
        """Hash of what makes trial values comparable: model, fixed settings, distributions and
        the data the objective sees (`objective`, e.g. max_train_samples)."""
        payload = {
            "model": self.model,
            "fixed": self.fixed,
            "params": self.params,
            "objective": objective,
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def space_file(model: str) -> Path:
    """The model's search space, `tuning/<its search_space>.yaml` (the architecture table's
    entry; every `timm:<name>` model shares `tuning/timm.yaml`)."""
    return shipped_or_own("tuning", f"{architecture(model).search_space}.yaml")


def load_space(model: str, path: Path | str | None = None) -> SearchSpace:
    """Read and validate the space of `model` (default `tuning/<model>.yaml`)."""
    path = Path(path) if path is not None else space_file(model)
    if not path.is_file():
        available = sorted(p.stem for p in TUNING_DIR.glob("*.yaml"))
        raise ConfigError(
            f"{path}: no search space file for model {model!r}; write one (see tuning/cnn.yaml) "
            f"or pick a model that has one: {', '.join(available) or 'none'}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    _require(isinstance(data, dict), path, "top level", "must be a mapping with 'params'")
    for key in data:
        _require(key in SECTIONS, path, key, f"unknown section; allowed: {', '.join(SECTIONS)}")
    fixed = data.get("fixed") or {}
    params = data.get("params") or {}
    pruner = data.get("pruner") or {}
    _require(isinstance(fixed, dict), path, "fixed", "must be a mapping of setting: value")
    _require(isinstance(params, dict) and params, path, "params", "must map settings to specs")
    _require(isinstance(pruner, dict), path, "pruner", "must map a pruner kind to its options")

    settings = SETTINGS | set(model_options(model))
    for name in [*fixed, *params]:
        _require(
            name in settings,
            path,
            name,
            f"not a setting of model {model!r}; valid: {', '.join(sorted(settings))}",
        )
    try:
        load_config(model, fixed)
    except ConfigError as err:
        raise ConfigError(f"{path}: fixed: {err}") from None

    seen = dict(fixed)
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in params.items():
        _require(isinstance(spec, dict), path, f"params.{name}", "must be a mapping")
        if "depends_on" in spec:
            checked[name] = _check_cases(path, name, spec, seen)
        else:
            checked[name] = _check_spec(path, f"params.{name}", spec, seen)
        seen[name] = True
    for kind, options in pruner.items():
        _require(kind in PRUNER_KINDS, path, f"pruner.{kind}", f"not one of {PRUNER_KINDS}")
        _require(isinstance(options, dict), path, f"pruner.{kind}", "must be a mapping")
    return SearchSpace(model, path, dict(fixed), checked, dict(pruner))


def _check_cases(path: Path, name: str, spec: dict, seen: dict) -> dict[str, Any]:
    where = f"params.{name}"
    extra = set(spec) - {"depends_on", "cases"}
    _require(not extra, path, where, f"unknown keys {sorted(extra)} beside depends_on/cases")
    parent = spec["depends_on"]
    _require(parent in seen, path, f"{where}.depends_on", f"{parent!r} is not an earlier parameter")
    cases = spec.get("cases")
    _require(isinstance(cases, dict) and cases, path, f"{where}.cases", "must map values to specs")
    return {
        "depends_on": parent,
        "cases": {
            _key(value): _check_spec(path, f"{where}.cases.{value}", case, seen)
            for value, case in cases.items()
        },
    }


def _check_spec(path: Path, where: str, spec: Any, seen: dict) -> dict[str, Any]:
    _require(isinstance(spec, dict), path, where, "must be a mapping with 'type'")
    kind = spec.get("type")
    _require(kind in KINDS, path, f"{where}.type", f"got {kind!r}; use one of {list(KINDS)}")
    extra = set(spec) - KINDS[kind]
    _require(
        not extra, path, where, f"unknown keys {sorted(extra)}; allowed: {sorted(KINDS[kind])}"
    )
    spec = dict(spec)
    when = spec.get("when")
    if when is not None:
        _require(isinstance(when, dict) and when, path, f"{where}.when", "must map name: value(s)")
        for other in when:
            _require(other in seen, path, f"{where}.when", f"{other!r} is not an earlier parameter")
    if kind == "categorical":
        choices = spec.get("choices")
        _require(isinstance(choices, list) and choices, path, f"{where}.choices", "must be a list")
        for choice in choices:
            _require(
                choice is None or isinstance(choice, (bool, int, float, str)),
                path,
                f"{where}.choices",
                f"{choice!r} is not a number, string, bool or null",
            )
        return spec
    number = float if kind == "float" else int
    for bound in ("low", "high"):
        _require(bound in spec, path, f"{where}.{bound}", "is missing")
        try:  # PyYAML reads 1e-3 (no dot) as a string: accept it
            spec[bound] = number(float(spec[bound]) if kind == "int" else spec[bound])
        except (TypeError, ValueError):
            _require(False, path, f"{where}.{bound}", f"{spec[bound]!r} is not a {kind}")
    _require(spec["low"] < spec["high"], path, where, f"low {spec['low']} must be < high")
    if spec.get("log"):
        _require(spec["low"] > 0, path, f"{where}.low", "must be > 0 with log: true")
        _require("step" not in spec, path, where, "step and log: true do not combine")
    if "step" in spec:
        _require(float(spec["step"]) > 0, path, f"{where}.step", "must be > 0")
    return spec


def _suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    suggest = trial.suggest_float if kind == "float" else trial.suggest_int
    kwargs = {"log": bool(spec.get("log", False))}
    if "step" in spec:
        kwargs["step"] = spec["step"]
    return suggest(name, spec["low"], spec["high"], **kwargs)


def _contains(spec: dict[str, Any], value: Any) -> bool:
    """Whether `value` is one Optuna could suggest from `spec` (True is not the choice 1)."""
    if spec["type"] == "categorical":
        return any(
            choice == value and isinstance(choice, bool) == isinstance(value, bool)
            for choice in spec["choices"]
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if spec["type"] == "int" and float(value) != int(value):
        return False
    if not spec["low"] <= value <= spec["high"]:
        return False
    if "step" in spec:
        steps = (value - spec["low"]) / float(spec["step"])
        return abs(steps - round(steps)) < 1e-9
    return True


def _as_kind(spec: dict[str, Any], value: Any) -> Any:
    return {"int": int, "float": float}.get(spec["type"], lambda v: v)(value)


def _holds(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    if not when:
        return True
    for name, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if name not in values or values[name] not in allowed:
            return False
    return True


def _key(value: Any) -> str:
    """Case keys compare as strings: YAML reads `64:` as an int, a trial value may be one too."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _require(ok: bool, path: Path, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {key}: {problem}")
